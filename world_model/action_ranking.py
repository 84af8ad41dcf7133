"""Does the world model rank treatments like the truth? (synthetic cohorts with a ground truth only)

On clinician-visited states (the clinician replayed in the ground-truth simulator, so each state's hidden
physiology is known), compare, per state, the world model's one-step expected return of all 25 actions
(the agent tool's outcome score) with the true one-step expected reward (Monte Carlo from the hidden
state). Reports the median Spearman correlation of the two rankings, the same for the tool's death risk
(negated), and the true regret of acting on the world model's best action.
"""

from __future__ import annotations

import os

import numpy as np

from sepsis_rl.cohort.simulator import PatientBatch
from sepsis_rl.cohort.spec import N_ACTIONS
from sepsis_rl.eval.policy import DecisionBatch, Policy

ALL = np.arange(N_ACTIONS)


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each row of ``a`` with the same row of ``b`` (average ranks for ties)."""
    def ranks(x: np.ndarray) -> np.ndarray:
        order = np.argsort(x, axis=1, kind="stable")
        r = np.empty_like(x, dtype=np.float64)
        np.put_along_axis(r, order, np.arange(x.shape[1], dtype=np.float64)[None].repeat(len(x), 0), axis=1)
        for i in range(len(x)):  # average ties (rare with continuous values)
            vals, inv, counts = np.unique(x[i], return_inverse=True, return_counts=True)
            if (counts > 1).any():
                r[i] = (np.bincount(inv, weights=r[i]) / counts)[inv]
        return r

    ra, rb = ranks(a), ranks(b)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    den = np.sqrt((ra**2).sum(axis=1) * (rb**2).sum(axis=1))
    return np.where(den > 0, (ra * rb).sum(axis=1) / np.where(den > 0, den, 1), 0.0)


class _Probe(Policy):
    """Acts as ``inner`` and keeps up to ``per_step`` (hidden state, decision) pairs per step."""

    name = "probe"

    def __init__(self, inner: Policy, per_step: int):
        self.inner, self.per_step = inner, per_step
        self.kept: list[tuple[PatientBatch, DecisionBatch]] = []

    def see_truth(self, hidden: PatientBatch, batch: DecisionBatch) -> None:
        idx = np.arange(min(self.per_step, len(batch)))
        self.kept.append((hidden.take(idx), batch.take(idx)))

    def action_probs(self, batch: DecisionBatch) -> np.ndarray:
        return self.inner.action_probs(batch)


def action_ranking(model: object, cohort_dir: str | os.PathLike, states: int = 400, samples: int = 64,
                   seed: int = 0) -> dict[str, float | int | str]:
    from sepsis_rl.cohort.store import read_split
    from sepsis_rl.cohort.synth import GroundTruth
    from sepsis_rl.cohort.truth import play, true_action_values
    from sepsis_rl.eval.policies import SyntheticClinician
    from world_model.simulation import SimulationConfig, WorldModelSimulator

    try:
        truth = GroundTruth.load(cohort_dir)
    except ValueError as e:
        return {"action_rank_note": str(e)}
    pids = np.unique(read_split(cohort_dir, "test").column("episode_id").to_numpy()).astype(np.int64)[:states]
    probe = _Probe(SyntheticClinician(truth.simulator.feature_names, truth.cohort_seed), per_step=max(states // 8, 1))
    play(truth.simulator, probe, truth.patients(pids), pids, seed + 7, window=model.window)  # type: ignore[attr-defined]
    hidden = [h for h, _ in probe.kept]
    decisions = [d for _, d in probe.kept]
    q_true = np.concatenate([true_action_values(truth.simulator, h, ALL, samples, seed + i) for i, h in enumerate(hidden)])
    sim = WorldModelSimulator(model, SimulationConfig(stochastic=False, max_steps=10**6))  # type: ignore[arg-type]
    wm_ret, wm_risk = [], []
    for d in decisions:
        ids = np.arange(len(d), dtype=np.int64)
        sim.reset(ids, d.history, d.steps)
        res = sim.simulate(ids, np.tile(ALL, (len(d), 1)), 1)
        sim.release(ids)
        wm_ret.append(res.expected_return)
        wm_risk.append(res.risk_of_death)
    ret, risk = np.concatenate(wm_ret), np.concatenate(wm_risk)
    rows = np.arange(len(q_true))
    regret = q_true.max(axis=1) - q_true[rows, ret.argmax(axis=1)]
    return {
        "action_rank_spearman": float(np.median(spearman_rows(ret, q_true))),
        "action_rank_spearman_death_risk": float(np.median(spearman_rows(-risk, q_true))),
        "wm_best_action_true_regret": float(regret.mean()),
        "wm_best_action_is_true_best": float((ret.argmax(axis=1) == q_true.argmax(axis=1)).mean()),
        "action_rank_states": int(len(q_true)),
        "action_rank_true_samples": samples,
    }
