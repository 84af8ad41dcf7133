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
from sepsis_rl.learner.batch import assign_gae, assign_grpo_advantages, samples_from_episodes
from sepsis_rl.learner.group import LearnerGroup
from sepsis_rl.learner.weight_sync import behaviour_mismatch, logprob_mismatch, make_weight_sync
from sepsis_rl.rollout.psr import AgentConfig
from sepsis_rl.rollout.resilient import Job, WorkerSet
from sepsis_rl.rollout.starts import StartStates
from sepsis_rl.rollout.worker import (
    EPISODE_ID_STRIDE, EVAL_ID_BASE, RolloutWorker, WorkerConfig, training_episode_offset,
)
from world_model.pool import PoolConfig, SimulatorPool
from world_model.simulation import SimulationConfig

log = logging.getLogger(__name__)


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


def rollout_jobs(n_workers: int, groups: int, group_size: int, seed: int, iteration: int, batch: int) -> list[Job]:
    """One iteration's rollouts as batch-sized jobs: worker w plays its share of the ``groups`` start states.

    Episode ids are (worker, iteration, index): a worker restarted mid-run, or a resumed run, never reuses
    an id, and with it the simulator's keyed noise. Jobs are the workers' own batches (``batch`` episodes),
    so splitting changes nothing in what is played.
    """
    shares = [groups // n_workers + (i < groups % n_workers) for i in range(n_workers)]
    jobs = []
    for w, g in enumerate(shares):
        n = g * group_size
        if n == 0:
            continue
        first = training_episode_offset(iteration, n)
        for lo in range(0, n, batch):
            jobs.append(Job(w, "run", (n, group_size, seed * 100003 + iteration),
                            {"slot": w, "first_id": first, "part": (lo, min(lo + batch, n))}))
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
    def rollouts(self, iteration: int) -> tuple[pa.Table, float]:
        rl = self.cfg.rl
        t0 = time.perf_counter()
        self.worker_set.timeout_s = self.learner.timeout * 4
        jobs = rollout_jobs(len(self.workers), rl.groups_per_iteration, rl.group_size, self.cfg.seed, iteration,
                            self.cfg.rollout.batch_episodes)
        return pa.concat_tables(self.worker_set.run(jobs)), time.perf_counter() - t0

    def evaluate(self) -> dict[str, float]:
        """Greedy (by default) episodes from the fixed held-out starts, split over the workers."""
        rl = self.cfg.rl
        parts = np.array_split(self.eval_idx, len(self.workers))
        jobs = [Job(w, "evaluate", (p, self.cfg.heldout_split, self.cfg.seed, rl.eval_temperature))
                for w, p in enumerate(parts) if len(p)]
        self.worker_set.timeout_s = self.learner.timeout * 4
        return episode_stats(pa.concat_tables(self.worker_set.run(jobs)), "heldout_")

    def iterate(self, iteration: int) -> dict[str, Any]:
        rl = self.cfg.rl
        table, rollout_s = self.rollouts(iteration)
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
            assign_grpo_advantages(samples, table)
        update = self.learner.train(samples, rl.algorithm)
        sync = self.sync.sync(self.learner, self.workers)
        after = logprob_mismatch(self.learner, self.workers[0], samples[: rl.mismatch_samples])
        n_workers = len(self.workers)
        gen_s = float(np.sum(table.column("generate_s").to_numpy())) / n_workers
        sim_s = float(np.sum(table.column("simulate_s").to_numpy())) / n_workers
        rec: dict[str, Any] = {
            "iteration": iteration + 1, **episode_stats(table, "train_"),
            "loss": update["loss"], "policy_loss": update.get("policy_loss"), "kl": update.get("kl"),
            "value_loss": update.get("value_loss"), "clip_frac": update.get("clip_frac"), "grad_norm": update.get("grad_norm"),
            "trained_tokens": update["tokens"], "tokens_per_s": update["tokens_per_s"],
            "behaviour_logprob_mismatch": before["mean_abs"], "logprob_mismatch_after_sync": after["mean_abs"],
            "logprob_mismatch_after_sync_max": after["max_abs"],
            "time": {"rollout_s": rollout_s, "generate_s": gen_s, "simulate_s": sim_s, "score_s": score_s,
                     "update_s": update["wall_s"], "sync_s": sync["sync_s"]},
        }
        if (iteration + 1) % rl.eval_every == 0 or iteration + 1 == rl.iterations:
            rec.update(self.evaluate())
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
        with tqdm(total=rl.iterations, initial=start, desc=f"rl ({rl.algorithm}): iterations", unit="it") as bar:
            for it in range(start, rl.iterations):
                rec = self.iterate(it)
                history.append(rec)
                self.run.log("rl", **rec)
                self.learner.workers[0].report.remote(_gauges(rec))
                bar.update(1)
                bar.set_postfix(ret=f"{rec['train_mean_return']:.2f}", held=f"{rec.get('heldout_mean_return', float('nan')):.2f}")
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


def _gauges(rec: dict[str, Any]) -> dict[str, float]:
    keys = ("loss", "kl", "tokens_per_s", "train_mean_return", "heldout_mean_return", "logprob_mismatch_after_sync",
            "behaviour_logprob_mismatch")
    out = {k: float(rec[k]) for k in keys if rec.get(k) is not None and np.isfinite(rec[k])}
    out.update({f"{k}": float(v) for k, v in rec["time"].items()})
    return out


def summarise(history: list[dict[str, Any]]) -> dict[str, Any]:
    iters = [h for h in history if h["iteration"] > 0]
    return {
        "iterations": len(iters),
        "heldout_mean_return": [h.get("heldout_mean_return") for h in history],
        "heldout_mean_cohort_return": [h.get("heldout_mean_cohort_return") for h in history],
        "heldout_iteration": [h["iteration"] for h in history],
        "train_mean_return": [h["train_mean_return"] for h in iters],
        "parse_failure_rate": [h["train_parse_failure_rate"] for h in iters],
        "logprob_mismatch_after_sync": [h["logprob_mismatch_after_sync"] for h in iters],
        "behaviour_logprob_mismatch": [h["behaviour_logprob_mismatch"] for h in iters],
        "time_per_iteration": [h["time"] for h in iters],
        "history": history,
    }
