"""Evaluation benchmark, printing JSON: OPE time on synthetic transitions, policy decisions/s, LLM batches.

    PYTHONPATH=. python benchmarks/evaluate.py [--transitions 100000] [--threads 1] [--sections ope]
    python benchmarks/evaluate.py --sections llm_batch --run runs/cpu [--llm-patients 120]

``llm_batch``: the run's agent deciding for ``--llm-patients`` test patients at once (a truth rollout's
first step), on the vLLM engine, in three set-ups of one run: vLLM's CPU default prefix blocks (128
tokens) with the whole batch in one call per phase (what evaluation did), the same decided in chunks that
fit the KV cache, and chunks with 32-token blocks (the default now). Same greedy actions in all three.

Sections are independent functions returning a dict; ``policies`` is the hook for decisions/s per policy
family (clinician, rules, planners, offline RL, LLMs), filled in by the evaluate driver's owner.
"""

from __future__ import annotations

import os

os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout carries the JSON only (llm_batch)

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402


def synthetic_logged(n_transitions: int, seed: int = 0, n_features: int = 46):
    """Stays of 1-20 rows, a stochastic behaviour policy with exact propensities, sepsis-like reward scale."""
    from sepsis_rl.cohort.spec import N_ACTIONS
    from sepsis_rl.eval.logged import LoggedData

    rng = np.random.default_rng(seed)
    lens = rng.integers(1, 21, size=n_transitions // 5 + 10)
    lens = lens[: np.searchsorted(np.cumsum(lens), n_transitions, side="right")]
    lens = np.r_[lens, n_transitions - lens.sum()] if lens.sum() < n_transitions else lens
    ep = np.repeat(np.arange(len(lens)), lens)
    n = len(ep)
    dones = np.zeros(n, bool)
    dones[np.cumsum(lens) - 1] = True
    behaviour = rng.dirichlet(np.ones(N_ACTIONS), n)
    actions = (behaviour.cumsum(1) < rng.random(n)[:, None]).sum(1).clip(0, N_ACTIONS - 1)
    data = LoggedData(spec=None, episode_ids=ep, steps=np.arange(n) - np.r_[0, np.cumsum(lens)[:-1]][ep],
                      states=rng.normal(size=(n, n_features)), actions=actions,
                      rewards=rng.normal(0, 0.5, n) + dones * rng.choice([-15.0, 15.0], n), dones=dones,
                      outcome=np.zeros(n, np.int64), behaviour_prob=behaviour[np.arange(n), actions])
    target = rng.dirichlet(np.ones(N_ACTIONS), n)
    return data, target


def bench_ope(n_transitions: int, threads: int) -> dict:
    """Wall time of FQE (fit + V(s_0)), the six IS-family estimators with 200 bootstrap resamples, and both."""
    from sepsis_rl.eval.fqe import FQEConfig, fit_fqe_logged, fqe_value_logged
    from sepsis_rl.eval.ope import Episodes, all_estimates

    data, target = synthetic_logged(n_transitions)
    t0, c0 = time.perf_counter(), time.process_time()
    model = fit_fqe_logged(data, target, FQEConfig(threads=threads))
    q = model.q_values(data.states, data.steps)
    fqe = fqe_value_logged(model, data, target)
    t1, c1 = time.perf_counter(), time.process_time()
    est = all_estimates(Episodes.from_logged(data, target, 0.99, q), n_boot=200)
    t2 = time.perf_counter()
    cfg = FQEConfig()
    return {
        "transitions": len(data), "episodes": int(data.dones.sum()), "bootstrap_resamples": 200,
        "fqe": {"iterations": cfg.iterations, "hidden": cfg.hidden, "batch_size": cfg.batch_size,
                "threads": threads, "seconds": round(t1 - t0, 2), "cpu_seconds": round(c1 - c0, 2)},
        "is_family_seconds": round(t2 - t1, 2), "estimators": sorted(est) + ["fqe"],
        "total_seconds": round(t2 - t0, 2), "fqe_value": round(fqe.value, 4),
    }


def bench_policies(n_decisions: int, run_dir: str | None, cohort: str | None, world_model: str | None,
                   llm_decisions: int) -> dict:
    """Decisions/s of each policy family on the same logged test decisions (one process, one batch per
    family; LLM policies on fewer decisions: each costs two generations and a world-model simulation)."""
    import torch

    from sepsis_rl.eval.evaluate import EvalConfig, build_policy, policy_probs
    from sepsis_rl.eval.logged import LoggedData
    from sepsis_rl.eval.registry import Sources

    if run_dir is None and cohort is None:
        return {"skipped": "pass --run RUN_DIR or --cohort DIR (and --world-model) to time policies"}
    torch.set_num_threads(1)
    sources = Sources.from_run(run_dir) if run_dir else Sources(cohort=cohort, world_model=world_model)
    cfg = EvalConfig(baselines="tiny")
    from sepsis_rl.cohort.synth import GroundTruth

    try:
        truth = GroundTruth.load(sources.cohort)
    except ValueError:
        truth = None
    names = ["clinician", "random", "guideline", "wd3qne"]
    names += ["wm_planner", "wm_planner_k3"] if sources.world_model else []
    names += ["agent", "agent_no_sim"] if run_dir else []
    out: dict = {}
    for name in names:
        n = llm_decisions if name.startswith("agent") else n_decisions
        data = LoggedData.from_cohort(sources.cohort, "test")
        data = _first_rows(data, n)
        policy = build_policy(name, sources, cfg, truth)
        t0 = time.perf_counter()
        policy_probs(policy, data, cfg.window)
        dt = time.perf_counter() - t0
        out[name] = {"decisions": len(data), "seconds": round(dt, 3), "decisions_per_s": round(len(data) / dt, 2)}
    return out


def _first_rows(data, n: int):  # noqa: ANN001, ANN202
    """The first ``n`` rows' whole stays (policies see stays in order)."""
    import numpy as np

    ep = np.unique(data.episode_ids)
    keep = np.isin(data.episode_ids, ep[: max(1, int(np.searchsorted(np.cumsum(np.bincount(data.episode_index())), n)) + 1)])
    for k in ("episode_ids", "steps", "states", "actions", "rewards", "dones", "outcome"):
        setattr(data, k, getattr(data, k)[keep])
    if data.behaviour_prob is not None:
        data.behaviour_prob = data.behaviour_prob[keep]
    return data


def bench_llm_batch(run_dir: str | None, n_patients: int) -> dict:
    """Decisions/s of the agent on one large batch (see the module docstring); ratios over the first set-up."""
    from sepsis_rl.eval.logged import LoggedData
    from sepsis_rl.eval.registry import Sources
    from sepsis_rl.rollout.episodes import EpisodeRecord
    from sepsis_rl.rollout.psr import AgentConfig, PSRAgent
    from sepsis_rl.rollout.vllm_engine import VLLMEngine
    from world_model.checkpoint import load_world_model
    from world_model.simulation import SimulationConfig, WorldModelSimulator

    if run_dir is None:
        return {"skipped": "pass --run RUN_DIR (its agent, world model and cohort)"}
    from sepsis_rl.cohort.store import read_spec

    src = Sources.from_run(run_dir)
    spec = read_spec(src.cohort)
    data = LoggedData.from_cohort(src.cohort, "test", max_episodes=n_patients)
    batch = data.decisions(np.flatnonzero(data.steps == 0)[:n_patients], 4)
    sim = WorldModelSimulator(load_world_model(src.world_model), SimulationConfig(stochastic=False, max_steps=10**6))
    a = src.agent_cfg
    agent_cfg = AgentConfig(k=int(a.get("k", 3)), horizon=int(a.get("horizon", 1)), temperature=0.0,
                            prompt_style=str(a.get("prompt_style", "guided")))
    out: dict = {"patients": len(batch)}
    for name, block, chunked in (("block128_one_batch", 128, False), ("block128_chunked", 128, True),
                                 ("block32_chunked", 32, True)):
        engine = VLLMEngine(str(src.agent_model), block_size=block)
        capacity = engine.kv_capacity_tokens
        if not chunked:
            engine.kv_capacity_tokens = None  # PSRAgent.decide then sends the whole batch at once
        agent = PSRAgent(engine, engine.tokenizer, spec, agent_cfg)
        ids = np.arange(len(batch), dtype=np.int64)
        sim.reset(ids, batch.history, batch.steps)
        records = [EpisodeRecord(int(i), int(i), 0, agent_cfg.use_simulator) for i in ids]
        t0 = time.perf_counter()
        actions = agent.decide(sim, ids, batch.current, [None] * len(ids), [None] * len(ids), [0] * len(ids), records, 0)
        dt = time.perf_counter() - t0
        sim.release(ids)
        engine.close()
        out[name] = {"seconds": round(dt, 1), "decisions_per_s": round(len(ids) / dt, 3), "kv_capacity_tokens": capacity,
                     "actions_hash": int(np.sum(actions * (np.arange(len(actions)) + 1)))}
    base = out["block128_one_batch"]["decisions_per_s"]
    for name in ("block128_chunked", "block32_chunked"):
        out[name]["speedup"] = round(out[name]["decisions_per_s"] / base, 2)
    out["same_actions"] = len({out[n]["actions_hash"] for n in ("block128_one_batch", "block128_chunked", "block32_chunked")}) == 1
    return out


SECTIONS: dict[str, Callable[[argparse.Namespace], dict]] = {
    "ope": lambda a: bench_ope(a.transitions, a.threads),
    "policies": lambda a: bench_policies(a.decisions, a.run, a.cohort, a.world_model, a.llm_decisions),
    "llm_batch": lambda a: bench_llm_batch(a.run, a.llm_patients),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--transitions", type=int, default=100_000)
    ap.add_argument("--decisions", type=int, default=2_000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--run", help="run folder (LLM policies, its world model and cohort)")
    ap.add_argument("--cohort", help="cohort folder (without a run)")
    ap.add_argument("--world-model", help="world model folder (planners, without a run)")
    ap.add_argument("--llm-decisions", type=int, default=16)
    ap.add_argument("--llm-patients", type=int, default=120, help="patients of the llm_batch section's batch")
    ap.add_argument("--sections", default="ope", help=f"comma-separated, of {','.join(SECTIONS)}")
    args = ap.parse_args()
    out = {"machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                       "load_avg_1m": round(os.getloadavg()[0], 2)}}
    for name in args.sections.split(","):
        if name not in SECTIONS:
            raise SystemExit(f"unknown section {name!r}; choose from {', '.join(SECTIONS)}")
        out[name] = SECTIONS[name](args)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
