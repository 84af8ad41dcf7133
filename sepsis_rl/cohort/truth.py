"""The fair truth API: any set of policies played on the same synthetic patients with common random numbers.

Every policy plays the same patients from their hidden admission state in the ground-truth simulator,
for whole stays (up to the 20-step cap, real terminal outcome). Randomness is keyed, never drawn from a
shared generator (``sepsis_rl.cohort.noise``):

* the simulator's dynamics and charting noise by (seed, stay, step) on their own streams, so two policies
  meet the same draws and their difference is paired;
* the policy's action draw (inverse CDF of its probabilities) and the dose inside the chosen bin by
  (seed, stay, step) on separate streams: policies answer probabilities, the runner samples.

A policy receives the stay's identity (``DecisionBatch.episode_ids`` = rollout id) and its charted history,
so it can keep per-stay state. Repeat ``r`` of patient ``p`` has rollout id ``p + r * REPEAT_STRIDE``; the
cohort's own logged stays are repeat 0 of the cohort seed, which is how ``synthesize`` makes the cohort:
the clinician played here with the cohort's seed reproduces the logged test stays exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from sepsis_rl.cohort.noise import KeyedNoise, keyed_uniforms, stream_seed
from sepsis_rl.cohort.reward import RewardConfig, intermediate_reward, terminal_reward
from sepsis_rl.cohort.simulator import FLUID_TOP, SYNTH_FLUID_BINS, SYNTH_VASO_BINS, VASO_TOP, PatientBatch, SepsisSimulator
from sepsis_rl.cohort.spec import split_action
from sepsis_rl.eval.policy import DecisionBatch, Policy, check_probs

REPEAT_STRIDE = 10**7


@dataclass(frozen=True)
class Streams:
    """Seeds of the independent random streams of one truth run."""

    dynamics: int
    chart: int
    policy: int
    dose: int

    @classmethod
    def of(cls, seed: int) -> "Streams":
        return cls(*(stream_seed(seed, s) for s in ("dynamics", "chart", "policy", "dose")))


@dataclass
class Trajectories:
    """One policy's true rollouts: per-rollout summaries and every decision row (for safety metrics)."""

    rollout_ids: np.ndarray  # [R]
    patient_ids: np.ndarray  # [R]
    returns: np.ndarray  # [R] discounted with ``gamma``
    undiscounted: np.ndarray  # [R]
    survived: np.ndarray  # [R] bool: alive at the end of the outcome window
    lengths: np.ndarray  # [R] decisions taken
    gamma: float
    # decision rows, sorted by rollout then step
    row_rollout: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    row_step: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    row_state: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    row_action: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    row_prev_action: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    row_prob: np.ndarray = field(default_factory=lambda: np.zeros(0))  # probability of the drawn action
    row_fluid_ml: np.ndarray = field(default_factory=lambda: np.zeros(0))
    row_vaso_dose: np.ndarray = field(default_factory=lambda: np.zeros(0))
    row_done: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    row_reward: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def mortality(self) -> float:
        return float(1.0 - self.survived.mean())

    def per_patient(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(patient ids, mean of ``values`` over each patient's repeats), patients sorted."""
        pids, inv = np.unique(self.patient_ids, return_inverse=True)
        return pids, np.bincount(inv, weights=values) / np.bincount(inv)


def rollout_ids(patient_ids: np.ndarray, repeats: int) -> tuple[np.ndarray, np.ndarray]:
    """(rollout ids, patient of each rollout) for ``repeats`` repeats of every patient."""
    pids = np.asarray(patient_ids, dtype=np.int64)
    if pids.size and (pids.min() < 0 or pids.max() >= REPEAT_STRIDE):
        raise ValueError(f"patient ids must be in 0..{REPEAT_STRIDE - 1} for keyed truth rollouts")
    rep = np.repeat(np.arange(repeats, dtype=np.int64), len(pids))
    pat = np.tile(pids, repeats)
    return pat + rep * REPEAT_STRIDE, pat


def dose_in_bin(bins_: np.ndarray, edges: tuple[float, ...], top: float, u: np.ndarray) -> np.ndarray:
    """A dose drawn uniformly inside each bin (0 for bin 0), from uniforms ``u``."""
    lows = np.array([0.0, 0.0, *edges])
    highs = np.array([0.0, *edges, top])
    return np.where(bins_ == 0, 0.0, lows[bins_] + u * (highs[bins_] - lows[bins_]))


def _push(hist: np.ndarray, lengths: np.ndarray, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([hist[:, 1:], obs[:, None, :]], axis=1), np.minimum(lengths + 1, hist.shape[1])


def play(
    sim: SepsisSimulator,
    policy: Policy,
    start: PatientBatch,
    ids: np.ndarray,
    seed: int,
    gamma: float = 1.0,
    window: int = 4,
    reward: RewardConfig = RewardConfig(),
    patient_ids: np.ndarray | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> Trajectories:
    """Play ``policy`` on patients ``start`` (rollout ids ``ids``) until every stay ends."""
    ids = np.asarray(ids, dtype=np.int64)
    n, st = len(ids), Streams.of(seed)
    names = sim.feature_names
    sofa_i, lac_i = names.index("SOFA"), names.index("Arterial_lactate")
    batch, active = start.copy(), np.arange(n)
    obs = sim.observe(batch, KeyedNoise(st.chart, ids, 0))
    hist, lengths = np.repeat(obs[:, None, :], window, axis=1), np.ones(n, dtype=np.int64)
    prev = np.full(n, -1, dtype=np.int64)
    ret, undisc = np.zeros(n), np.zeros(n)
    survived, steps = np.ones(n, dtype=bool), np.zeros(n, dtype=np.int64)
    rows: list[dict[str, np.ndarray]] = []
    policy.begin(ids)
    for t in range(sim.config.max_steps):
        if active.size == 0:
            break
        a_ids = ids[active]
        decision = DecisionBatch(a_ids, np.full(active.size, t), hist, lengths, prev[active], tuple(names))
        if hasattr(policy, "see_truth"):  # only oracles and probes read the hidden state; LLM agents never do
            policy.see_truth(batch, decision)
        probs = check_probs(policy.action_probs(decision), active.size, policy.name)
        u = keyed_uniforms(st.policy, a_ids, np.full(active.size, t), 3)
        cdf = np.cumsum(probs, axis=1)
        actions = np.minimum((cdf < (u[:, 0] * cdf[:, -1])[:, None]).sum(axis=1), probs.shape[1] - 1)
        fb, vb = split_action(actions)
        fluid = dose_in_bin(fb, SYNTH_FLUID_BINS.edges, FLUID_TOP, u[:, 1])
        vaso = dose_in_bin(vb, SYNTH_VASO_BINS.edges, VASO_TOP, u[:, 2])
        out = sim.step(batch, fluid, vaso, KeyedNoise(st.dynamics, a_ids, t))
        nxt = sim.observe(out.batch, KeyedNoise(st.chart, a_ids, t + 1))
        dead = out.died | out.post_icu_death
        r = np.where(out.done, terminal_reward(dead, reward),
                     intermediate_reward(obs[:, sofa_i], nxt[:, sofa_i], obs[:, lac_i], nxt[:, lac_i], reward))
        ret[active] += gamma**t * r
        undisc[active] += r
        steps[active] += 1
        survived[active[out.done]] = ~dead[out.done]
        rows.append({"rollout": a_ids, "step": np.full(active.size, t), "state": obs, "action": actions,
                     "prev": prev[active], "prob": probs[np.arange(active.size), actions], "fluid": fluid,
                     "vaso": vaso, "done": out.done, "reward": r})
        prev[active] = actions
        keep = ~out.done
        if (~keep).any():
            policy.end(a_ids[~keep])
        hist, lengths = _push(hist, lengths, nxt)
        active, batch, obs = active[keep], out.batch.take(keep), nxt[keep]
        hist, lengths = hist[keep], lengths[keep]
        if on_step is not None:
            on_step(t, int(active.size))
    return _collect(ids, ids if patient_ids is None else np.asarray(patient_ids), ret, undisc, survived, steps, gamma, rows)


def _collect(ids, pids, ret, undisc, survived, steps, gamma, rows) -> Trajectories:  # type: ignore[no-untyped-def]
    cat = {k: np.concatenate([r[k] for r in rows]) for k in rows[0]} if rows else {}
    traj = Trajectories(ids, pids, ret, undisc, survived, steps, gamma)
    if cat:
        order = np.lexsort((cat["step"], cat["rollout"]))
        traj.row_rollout, traj.row_step = cat["rollout"][order], cat["step"][order]
        traj.row_state, traj.row_action, traj.row_prev_action = cat["state"][order], cat["action"][order], cat["prev"][order]
        traj.row_prob, traj.row_fluid_ml, traj.row_vaso_dose = cat["prob"][order], cat["fluid"][order], cat["vaso"][order]
        traj.row_done, traj.row_reward = cat["done"][order], cat["reward"][order]
    return traj


Z95 = 1.959963984540054


def mean_ci(per_patient: np.ndarray) -> tuple[float, tuple[float, float]]:
    """Mean and normal-approximation 95% CI over patients (each patient's mean over its repeats)."""
    x = np.asarray(per_patient, dtype=np.float64)
    m = float(x.mean())
    half = Z95 * float(x.std(ddof=1)) / np.sqrt(len(x)) if len(x) > 1 else float("nan")
    return m, (m - half, m + half)


def true_summary(traj: Trajectories, reference: Trajectories | None = None) -> dict[str, object]:
    """Report entry of one policy's truth: return and survival with 95% CIs over patients, and the paired
    difference to ``reference`` (same patients, common random numbers) with its CI."""
    pids, ret = traj.per_patient(traj.returns)
    _, surv = traj.per_patient(traj.survived.astype(np.float64))
    r, r_ci = mean_ci(ret)
    s, s_ci = mean_ci(surv)
    out: dict[str, object] = {"return": r, "return_ci": list(r_ci), "survival": s, "survival_ci": list(s_ci),
                              "return_undiscounted": float(traj.per_patient(traj.undiscounted)[1].mean()),
                              "n_patients": int(len(pids)), "n_rollouts": int(len(traj.returns)), "gamma": traj.gamma}
    if reference is not None:
        ref_pids, ref_ret = reference.per_patient(reference.returns)
        _, ref_surv = reference.per_patient(reference.survived.astype(np.float64))
        if not np.array_equal(ref_pids, pids):
            raise ValueError("paired differences need the same patients in both policies' rollouts")
        d, d_ci = mean_ci(ret - ref_ret)
        ds, ds_ci = mean_ci(surv - ref_surv)
        out.update(diff_return_vs_clinician=d, diff_return_ci=list(d_ci), diff_survival_vs_clinician=ds,
                   diff_survival_ci=list(ds_ci))
    return out


def true_action_values(sim: SepsisSimulator, batch: PatientBatch, actions: np.ndarray, samples: int = 16,
                       seed: int = 0, reward: RewardConfig = RewardConfig()) -> np.ndarray:
    """One-step true expected reward [B, A] of each of ``actions`` (joint ids) from hidden states ``batch``, at
    the bins' representative doses. The endings enter by their exact probabilities (death, leaving alive,
    death after leaving), the continuous dynamics and charting noise by ``samples`` draws: far less Monte
    Carlo noise than drawing the endings. The oracle behind the true-simulator planner and
    ``action_rank_spearman``."""
    n, acts = len(batch), np.asarray(actions, dtype=np.int64)
    names = sim.feature_names
    sofa_i, lac_i = names.index("SOFA"), names.index("Arterial_lactate")
    rep = np.repeat(np.arange(n), len(acts) * samples)
    big = batch.take(rep)
    a = np.tile(np.repeat(acts, samples), n)
    keys = np.arange(len(rep), dtype=np.int64)
    obs = sim.observe(big, KeyedNoise(stream_seed(seed, "oracle-chart0"), keys, 0))
    out = sim.step_actions(big, a, KeyedNoise(stream_seed(seed, "oracle-dynamics"), keys, 0))
    nxt = sim.observe(out.batch, KeyedNoise(stream_seed(seed, "oracle-chart1"), keys, 0))
    r_die = terminal_reward(np.ones(len(rep), dtype=bool), reward)
    r_live = terminal_reward(np.zeros(len(rep), dtype=bool), reward)
    stay = intermediate_reward(obs[:, sofa_i], nxt[:, sofa_i], obs[:, lac_i], nxt[:, lac_i], reward)
    h, q, post = out.p_died, out.p_leave, out.p_post
    r = h * r_die + (1 - h) * (q * (post * r_die + (1 - post) * r_live) + (1 - q) * stay)
    return r.reshape(n, len(acts), samples).mean(axis=2)
