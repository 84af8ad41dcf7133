"""Stage 3: world-model agentic RL (GRPO by default, PPO) with rollout workers, the simulator pool and the learner.

One iteration: rollout workers play G episodes from each of a few training start states (propose,
simulate, refine inside the world model) -> the learner scores the episodes' tokens (the behaviour
log-prob mismatch, and PPO's values) -> advantages (group-normalised returns, or GAE over decisions) ->
one pass of clipped policy-gradient updates -> weights to the engines -> learner vs engine log-prob
check after the sync -> every ``eval_every`` iterations, greedy episodes from fixed held-out start
states. Every ``checkpoint_every`` iterations a verified checkpoint (``checkpoints.py``: every rank's
model/optimizer/RNG state as weights_only tensors, iteration, history; the last K kept) lets a killed
run continue where it stopped.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm.auto import tqdm

from sepsis_rl.curriculum.checkpoints import CheckpointStore
from sepsis_rl.curriculum.config import PipelineConfig
from sepsis_rl.curriculum.run_dir import RunDir
from sepsis_rl.curriculum.supervised import learner_config
from sepsis_rl.learner.batch import Sample, assign_gae, assign_grpo_advantages, samples_from_episodes
from sepsis_rl.learner.group import LearnerGroup
from sepsis_rl.learner.losses import group_reward_stats, sampled_entropy, zero_variance_groups
from sepsis_rl.learner.weight_sync import behaviour_mismatch, logprob_mismatch, make_weight_sync
from sepsis_rl.rollout.psr import AgentConfig
from sepsis_rl.rollout.resilient import Job, WorkerSet
from sepsis_rl.rollout.starts import StartStates
from sepsis_rl.rollout.worker import (
    EPISODE_ID_STRIDE, EVAL_ID_BASE, ITERATION_ID_STRIDE, RolloutWorker, WorkerConfig, training_episode_offset,
)
from world_model.pool import PoolConfig, SimulatorPool
from world_model.simulation import SimulationConfig

log = logging.getLogger(__name__)
REFILL_SLOTS = 10  # an iteration's id range is cut into this many rounds (the first plus refills)


@dataclass
class RLInputs:
    init_model: str  # HF checkpoint the policy starts from (stage 2's output)
    cohort_dir: str
    world_model_dir: str
    out_model: str  # where the trained policy is exported
    local_cohort: str = ""  # the cohort as a local path for the driver (the locations above are for actors)

    def __post_init__(self) -> None:
        self.local_cohort = self.local_cohort or self.cohort_dir


def agent_config(cfg: PipelineConfig) -> AgentConfig:
    ro = cfg.rollout
    return AgentConfig(k=ro.k, horizon=ro.horizon, temperature=ro.temperature, prompt_style=ro.prompt_style)


def engine_options(cfg: PipelineConfig) -> dict[str, Any]:
    """vLLM engines on GPUs: the learner's dtype, and NCCL weight transfer when the sync uses it."""
    if cfg.rollout.engine != "vllm":
        return {}
    opts: dict[str, Any] = {"dtype": "bfloat16" if cfg.cluster.bf16 else "float32"}
    if cfg.cluster.weight_sync == "nccl":
        opts["weight_transfer"] = "nccl"
    return opts


def rollout_jobs(n_workers: int, groups: int, group_size: int, seed: int, iteration: int, batch: int,
                 refill: int = 0, shared_group_noise: bool = False) -> list[Job]:
    """One iteration's rollouts as batch-sized jobs: worker w plays its share of the ``groups`` start states.

    Episode ids are (worker, iteration, refill round, index): a worker restarted mid-run, or a resumed run,
    never reuses an id, and with it the simulator's keyed noise. Round ``refill`` > 0 replaces dropped
    groups (dynamic sampling) with new start states and ids. Jobs are the workers' own batches
    (``batch`` episodes), so splitting changes nothing in what is played.
    """
    shares = [groups // n_workers + (i < groups % n_workers) for i in range(n_workers)]
    jobs = []
    for w, g in enumerate(shares):
        n = g * group_size
        if n == 0:
            continue
        first = training_episode_offset(iteration, n * (refill + 1)) + refill * ITERATION_ID_STRIDE // REFILL_SLOTS
        if n > ITERATION_ID_STRIDE // REFILL_SLOTS or refill >= REFILL_SLOTS:
            raise ValueError(f"{n} episodes per worker in refill round {refill}: beyond the episode id space")
        run_seed = seed * 100003 + iteration + 7919 * refill
        for lo in range(0, n, batch):
            jobs.append(Job(w, "run", (n, group_size, run_seed),
                            {"slot": w, "first_id": first, "part": (lo, min(lo + batch, n)),
                             "shared_group_noise": shared_group_noise}))
    return jobs


def eval_starts(cfg: PipelineConfig, cohort_dir: str, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Fixed held-out start states: (indices into the split's start states, the states)."""
    starts = StartStates.from_cohort(cohort_dir, cfg.heldout_split)
    idx = np.sort(np.random.default_rng(cfg.seed + 17).choice(len(starts.states), size=min(n, len(starts.states)), replace=False))
    return idx, starts.states[idx]


class RLStage:
    def __init__(self, cfg: PipelineConfig, run: RunDir, inputs: RLInputs):
        self.cfg, self.run, self.inputs = cfg, run, inputs
        rl, ro, cl = cfg.rl, cfg.rollout, cfg.cluster
        self.pool = SimulatorPool(inputs.world_model_dir, SimulationConfig(max_steps=rl.max_steps, seed=cfg.seed, endings=rl.endings),
                                  PoolConfig(num_shards=cl.simulator_shards, num_cpus_per_shard=cl.simulator_cpus,
                                             resources=tuple(sorted(cl.simulator_resources.items()))))
        wcfg = WorkerConfig(model_path=inputs.init_model, cohort_dir=inputs.cohort_dir, split="train", engine=ro.engine,
                            agent=agent_config(cfg), batch_episodes=ro.batch_episodes, threads=cl.threads,
                            engine_options=engine_options(cfg))
        make = lambda i: RolloutWorker.options(  # noqa: E731
            num_cpus=ro.cpus_per_worker, num_gpus=ro.gpus_per_worker).remote(i, wcfg, self.pool)
        self.worker_set = WorkerSet(make, ro.workers, prepare=self._prepare_restarted)
        self.learner = LearnerGroup(learner_config(
            cl, inputs.init_model, rl.algorithm, rl.lr, rl.micro_batch, rl.grad_accum, cfg.seed, temperature=ro.temperature,
            clip_eps=rl.clip_eps, kl_coef=rl.kl_coef, kl_estimator=rl.kl_estimator, loss_agg=rl.loss_agg, gamma=rl.gamma,
            lam=rl.lam))
        self.sync = make_weight_sync(cl.weight_sync)
        self.checkpoints = CheckpointStore(run.uri("rl", "checkpoints"), keep=rl.keep_checkpoints)
        self.eval_idx, _ = eval_starts(cfg, inputs.local_cohort, rl.eval_states)

    @property
    def workers(self) -> list[Any]:
        return self.worker_set.handles

    def _prepare_restarted(self, worker: Any) -> None:
        """A restarted rollout worker gets the learner's current weights before it plays anything."""
        if self.cfg.cluster.weight_sync != "object_store":
            raise RuntimeError("a rollout worker died; NCCL weight sync cannot re-admit a restarted engine: "
                               "continue the run with --resume")
        self.sync.sync(self.learner, [worker])

    # ----------------------------------------------------------------------------- one iteration
    def rollouts(self, iteration: int, groups: int | None = None, refill: int = 0) -> tuple[pa.Table, float]:
        rl = self.cfg.rl
        t0 = time.perf_counter()
        self.worker_set.timeout_s = self.learner.timeout * 4
        jobs = rollout_jobs(len(self.workers), groups or rl.groups_per_iteration, rl.group_size, self.cfg.seed, iteration,
                            self.cfg.rollout.batch_episodes, refill, rl.shared_group_noise and rl.algorithm == "grpo")
        return pa.concat_tables(self.worker_set.run(jobs)), time.perf_counter() - t0

    def sampled_groups(self, iteration: int) -> tuple[pa.Table, pa.Table, float, dict[str, float]]:
        """One iteration's episodes: (all played, those to train on, seconds, group diagnostics). GRPO with
        dynamic sampling drops the groups whose returns are all equal and plays as many fresh groups in
        their place, up to ``refill_rounds`` times."""
        rl = self.cfg.rl
        table, seconds = self.rollouts(iteration)
        first = group_reward_stats(table.column("return").to_numpy(), table.column("group_id").to_numpy())
        diag = {**first, "groups_dropped": 0.0, "groups_refilled": 0.0}
        if rl.algorithm != "grpo" or not rl.dynamic_sampling:
            return table, table, seconds, diag
        played, kept = [table], self._drop_flat_groups(table)
        for round_ in range(1, rl.refill_rounds + 1):
            missing = rl.groups_per_iteration - len(np.unique(kept.column("group_id").to_numpy()))
            if missing <= 0:
                break
            extra, dt = self.rollouts(iteration, missing, round_)
            seconds += dt
            diag["groups_refilled"] += missing
            played.append(extra)
            kept = pa.concat_tables([kept, self._drop_flat_groups(extra)])
        diag["groups_dropped"] = float(first["groups"] + diag["groups_refilled"]
                                       - len(np.unique(kept.column("group_id").to_numpy())))
        return pa.concat_tables(played), kept, seconds, diag

    @staticmethod
    def _drop_flat_groups(table: pa.Table) -> pa.Table:
        flat = zero_variance_groups(table.column("return").to_numpy(), table.column("group_id").to_numpy())
        keep = ~np.isin(table.column("group_id").to_numpy(), flat)
        return table.filter(pa.array(keep))

    def evaluate(self) -> dict[str, Any]:
        """Greedy (by default) episodes from the fixed held-out starts, split over the workers; with their
        first decisions (the same start states every time), so any two evaluations can be compared."""
        rl = self.cfg.rl
        parts = np.array_split(self.eval_idx, len(self.workers))
        jobs = [Job(w, "evaluate", (p, self.cfg.heldout_split, self.cfg.seed, rl.eval_temperature))
                for w, p in enumerate(parts) if len(p)]
        self.worker_set.timeout_s = self.learner.timeout * 4
        table = pa.concat_tables(self.worker_set.run(jobs))
        first = [int(d[0]["action"]) if d else -1 for d in table.column("decisions").to_pylist()]
        return {**episode_stats(table, "heldout_"), "heldout_first_actions": first}

    def iterate(self, iteration: int, reference_actions: list[int] | None = None) -> dict[str, Any]:
        rl = self.cfg.rl
        played, table, rollout_s, groups = self.sampled_groups(iteration)
        rec: dict[str, Any] = {"iteration": iteration + 1, **episode_stats(played, "train_"), **groups,
                               "entropy": sampled_entropy(_flat(played, "logprobs"), _flat(played, "loss_mask"))}
        if table.num_rows == 0:  # every group's returns were equal, refills included: nothing to learn from
            log.warning("RL iteration %d: every group had zero reward variance; no update", iteration + 1)
            rec.update(skipped_update=True, time={"rollout_s": rollout_s, **_played_seconds(played, len(self.workers)),
                                                  "score_s": 0.0, "update_s": 0.0, "sync_s": 0.0})
            return self._maybe_evaluate(rec, iteration, reference_actions)
        samples = samples_from_episodes(table)
        t0 = time.perf_counter()
        scored = self.learner.evaluate(samples)
        score_s = time.perf_counter() - t0
        before = behaviour_mismatch(samples, [lp for lp, _ in scored])
        if rl.algorithm == "ppo":
            for s, (_, v) in zip(samples, scored):
                s.old_value = v
            assign_gae(samples, table, rl.gamma, rl.lam)
        else:
            assign_grpo_advantages(samples, table, rl.advantage_std)
        update = self.learner.train(samples, rl.algorithm)
        rec["kl_to_previous"] = self._kl_to_previous(samples[: rl.kl_samples], [lp for lp, _ in scored])
        sync = self.sync.sync(self.learner, self.workers)
        after = logprob_mismatch(self.learner, self.workers[0], samples[: rl.mismatch_samples])
        rec.update({
            "loss": update["loss"], "policy_loss": update.get("policy_loss"), "kl": update.get("kl"),
            "value_loss": update.get("value_loss"), "clip_frac": update.get("clip_frac"), "grad_norm": update.get("grad_norm"),
            "trained_tokens": update["tokens"], "tokens_per_s": update["tokens_per_s"],
            "behaviour_logprob_mismatch": before["mean_abs"], "logprob_mismatch_after_sync": after["mean_abs"],
            "logprob_mismatch_after_sync_max": after["max_abs"],
            "time": {"rollout_s": rollout_s, **_played_seconds(played, len(self.workers)), "score_s": score_s,
                     "update_s": update["wall_s"], "sync_s": sync["sync_s"]},
        })
        return self._maybe_evaluate(rec, iteration, reference_actions)

    def _kl_to_previous(self, samples: list[Sample], before: list[list[float]]) -> float | None:
        """KL(previous || updated) per generated token on ``samples`` (k3 on the tokens the previous policy
        sampled): how far one update moved the policy where it acts."""
        if not samples:
            return None
        after = [lp for lp, _ in self.learner.evaluate(samples)]
        ratios = np.concatenate([np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
                                 for a, b in zip(after, before) if len(a)])
        return float(np.mean(np.exp(ratios) - ratios - 1.0)) if ratios.size else None

    def _maybe_evaluate(self, rec: dict[str, Any], iteration: int, reference_actions: list[int] | None) -> dict[str, Any]:
        rl = self.cfg.rl
        if (iteration + 1) % rl.eval_every == 0 or iteration + 1 == rl.iterations:
            rec.update(self.evaluate())
            if reference_actions is not None:
                rec["heldout_decisions_changed"] = changed_fraction(reference_actions, rec["heldout_first_actions"])
        return rec

    # ----------------------------------------------------------------------------------- driver
    def save(self, iteration: int, history: list[dict[str, Any]]) -> None:
        client = {"iteration": iteration, "history": history, "config": self.cfg.to_dict()}
        self.checkpoints.save(iteration, self.learner.save, client)

    def run_all(self) -> dict[str, Any]:
        rl = self.cfg.rl
        start, history = 0, []
        resumed = self.checkpoints.resume(self.learner.load)
        if resumed:
            where, client = resumed
            start, history = int(client["iteration"]), list(client["history"])
            self.sync.sync(self.learner, self.workers)  # the engines start from the checkpoint's weights
            log.info("resumed RL from %s at iteration %d", where, start)
            self.run.log("rl", event="resumed", iteration=start, checkpoint=self.run.relative(where))
        if start == 0:
            base = {"iteration": 0, **self.evaluate()}
            history.append(base)
            self.run.log("rl", **base)
        reference = history[0].get("heldout_first_actions")  # the stage-2 (BC) policy's greedy decisions
        with tqdm(total=rl.iterations, initial=start, desc=f"rl ({rl.algorithm}): iterations", unit="it") as bar:
            for it in range(start, rl.iterations):
                rec = self.iterate(it, reference)
                history.append(rec)
                self.run.log("rl", **rec)
                self.learner.workers[0].report.remote(_gauges(rec))
                bar.update(1)
                bar.set_postfix(ret=f"{rec.get('train_mean_return', float('nan')):.2f}",
                                held=f"{rec.get('heldout_mean_return', float('nan')):.2f}",
                                changed=f"{rec.get('heldout_decisions_changed', float('nan')):.2f}")
                if (it + 1) % rl.checkpoint_every == 0 or it + 1 == rl.iterations:
                    self.save(it + 1, history)
        self.learner.export(self.inputs.out_model)
        return summarise(history)

    def baselines(self) -> dict[str, dict[str, float]]:
        """Clinician and random policies from the agent's held-out starts, with the agent's episode ids (paired noise)."""
        from sepsis_rl.cohort.store import read_spec
        from sepsis_rl.curriculum.baselines import clinician_policy, play_policy, random_policy

        names = read_spec(self.inputs.local_cohort).feature_names
        idx, states = eval_starts(self.cfg, self.inputs.local_cohort, self.cfg.rl.eval_states)
        parts = np.array_split(np.arange(len(idx)), len(self.workers))
        ids = np.concatenate([EVAL_ID_BASE + w * EPISODE_ID_STRIDE + np.arange(len(p)) for w, p in enumerate(parts)])
        out = {"random": play_policy(self.pool, random_policy(self.cfg.seed), states, ids)}
        try:
            out["clinician"] = play_policy(self.pool, clinician_policy(names, len(ids), self.cfg.seed), states, ids)
        except ValueError as e:  # an imported cohort without the synthetic behaviour policy's features
            log.warning("no clinician baseline in the world model: %s", e)
        return out

    def shutdown(self) -> None:
        self.learner.shutdown()
        self.worker_set.kill_all()
        self.pool.shutdown()


def episode_stats(table: pa.Table, prefix: str) -> dict[str, float]:
    if table.num_rows == 0:
        return {}
    decisions = int(np.sum(table.column("length").to_numpy()))
    per = 2 if table.column("use_simulator")[0].as_py() else 1
    return {
        f"{prefix}mean_return": float(np.mean(table.column("return").to_numpy())),
        f"{prefix}mean_cohort_return": float(np.mean(table.column("cohort_return").to_numpy())),
        f"{prefix}mortality": float(np.mean(table.column("death_probability").to_numpy())),
        f"{prefix}parse_failure_rate": float(np.sum(table.column("parse_failures").to_numpy())) / max(per * decisions, 1),
        f"{prefix}episodes": table.num_rows, f"{prefix}decisions": decisions,
    }


def _played_seconds(table: pa.Table, n_workers: int) -> dict[str, float]:
    """Generation and simulation seconds of the played episodes, per worker (they play in parallel)."""
    return {f"{k}_s": float(np.sum(table.column(f"{k}_s").to_numpy())) / n_workers for k in ("generate", "simulate")}


def _flat(table: pa.Table, column: str) -> list[list[Any]]:
    """Per-segment lists of a [episode][segment][token] column, all episodes together."""
    return [seg for ep in table.column(column).to_pylist() for seg in ep]


def changed_fraction(reference: list[int], now: list[int]) -> float:
    """Fraction of the fixed held-out states whose greedy decision differs from the reference policy's."""
    if len(reference) != len(now) or not reference:
        raise ValueError(f"held-out decisions to compare: {len(reference)} reference, {len(now)} now")
    return float(np.mean(np.asarray(reference) != np.asarray(now)))


GAUGES = ("loss", "kl", "kl_to_previous", "clip_frac", "entropy", "group_reward_std", "zero_variance_group_frac",
          "groups_refilled", "heldout_decisions_changed", "tokens_per_s", "train_mean_return", "heldout_mean_return",
          "logprob_mismatch_after_sync", "behaviour_logprob_mismatch")


def _gauges(rec: dict[str, Any]) -> dict[str, float]:
    out = {k: float(rec[k]) for k in GAUGES if rec.get(k) is not None and np.isfinite(rec[k])}
    out.update({f"{k}": float(v) for k, v in rec["time"].items()})
    return out


def summarise(history: list[dict[str, Any]]) -> dict[str, Any]:
    iters = [h for h in history if h["iteration"] > 0]
    series = lambda key: [h.get(key) for h in iters]  # noqa: E731
    return {
        "iterations": len(iters),
        "heldout_mean_return": [h.get("heldout_mean_return") for h in history],
        "heldout_mean_cohort_return": [h.get("heldout_mean_cohort_return") for h in history],
        "heldout_iteration": [h["iteration"] for h in history],
        "heldout_decisions_changed": [h.get("heldout_decisions_changed") for h in history],
        **{k: series(k) for k in ("train_mean_return", "kl", "kl_to_previous", "clip_frac", "entropy", "group_reward_std",
                                  "zero_variance_group_frac", "groups_dropped", "groups_refilled", "grad_norm")},
        "parse_failure_rate": series("train_parse_failure_rate"),
        "logprob_mismatch_after_sync": series("logprob_mismatch_after_sync"),
        "behaviour_logprob_mismatch": series("behaviour_logprob_mismatch"),
        "time_per_iteration": [h["time"] for h in iters],
        "history": history,
    }
