"""What every learned baseline shares: one state encoding, one transition table, one checkpoint selector.

All learned baselines (WD3QNE, d3rlpy CQL/BCQ, RLlib BC/MARWIL, the estimated behaviour policy) see the same
observation, so differences between them are the algorithms', not the inputs':

    obs = [z-scored charted features of the current row (binary features as 0/1),
           time since admission (step / horizon),
           one-hot previous fluid bin (5), one-hot previous vasopressor bin (5)]   (zeros at admission)

The z-score statistics come from the train split only. The previous action is in the state because
vasopressors are titrated from the running dose (a clinician's and a guideline's next dose depends on it),
and the ``DecisionBatch`` contract hands it to every policy anyway.

Checkpoints are chosen on the validation split by a ``Selector(policy, val) -> float`` (higher is better).
The evaluate driver passes an OPE-based one; :func:`wis_selector` is the simple default: per-trajectory
weighted importance sampling (Precup et al. 2000) with the cohort's recorded behaviour propensities.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np

from sepsis_rl.cohort.spec import N_ACTIONS, N_BINS
from sepsis_rl.eval.logged import LoggedData
from sepsis_rl.eval.policy import DecisionBatch, Policy

Selector = Callable[[Policy, LoggedData], float]
SOFA_NAMES = ("SOFA", "sofa")


@dataclass(frozen=True)
class StateEncoder:
    """Train-split standardisation of the charted features plus time and previous action."""

    feature_names: tuple[str, ...]
    mean: np.ndarray  # [F]
    std: np.ndarray  # [F]
    horizon: float

    @classmethod
    def fit(cls, train: LoggedData) -> "StateEncoder":
        binary = set(train.spec.binary_names)
        mean = train.states.mean(axis=0)
        std = train.states.std(axis=0)
        is_bin = np.array([n in binary for n in train.feature_names])
        mean = np.where(is_bin, 0.0, mean)
        std = np.where(is_bin | (std < 1e-8), 1.0, std)
        return cls(train.feature_names, mean, std, float(train.steps.max() + 1))

    @property
    def dim(self) -> int:
        return len(self.feature_names) + 1 + 2 * N_BINS

    def encode(self, states: np.ndarray, steps: np.ndarray, last_action: np.ndarray) -> np.ndarray:
        """[R, F] charted rows, [R] steps, [R] previous joint action (-1 at admission) -> [R, dim] float32."""
        z = np.clip((np.asarray(states, dtype=np.float64) - self.mean) / self.std, -10.0, 10.0)
        last = np.asarray(last_action, dtype=np.int64)
        prev = np.zeros((len(last), 2 * N_BINS))
        has = last >= 0
        prev[np.flatnonzero(has), last[has] // N_BINS] = 1.0
        prev[np.flatnonzero(has), N_BINS + last[has] % N_BINS] = 1.0
        t = (np.asarray(steps, dtype=np.float64) / self.horizon)[:, None]
        return np.concatenate([z, t, prev], axis=1).astype(np.float32)

    def encode_batch(self, batch: DecisionBatch) -> np.ndarray:
        if tuple(batch.feature_names) != self.feature_names:
            raise ValueError("decision batch features differ from the features this baseline was trained on")
        return self.encode(batch.current, batch.steps, batch.last_action)

    def encode_rows(self, data: LoggedData) -> np.ndarray:
        return self.encode(data.states, data.steps, data.last_actions())


@dataclass(frozen=True)
class Transitions:
    """One logged transition per row: (obs, action, reward, next obs, done) plus the clinician's next action."""

    obs: np.ndarray  # [N, D] float32
    actions: np.ndarray  # [N] int64
    rewards: np.ndarray  # [N] float32
    next_obs: np.ndarray  # [N, D] float32, zeros on terminal rows (never read: masked by done)
    dones: np.ndarray  # [N] bool
    next_actions: np.ndarray  # [N] int64, the clinician's action at the next row, -1 on terminal rows
    episode_ids: np.ndarray  # [N] int64
    sofa: np.ndarray | None  # [N] raw SOFA of the current row, if the cohort charts one


def transitions(data: LoggedData, enc: StateEncoder) -> Transitions:
    """The logged rows as transitions; the next row of a stay is the next state (cohorts store every step)."""
    obs = enc.encode_rows(data)
    nxt = np.zeros_like(obs)
    cont = np.flatnonzero(~data.dones)
    if len(cont) and (data.episode_ids[cont + 1] != data.episode_ids[cont]).any():
        raise ValueError("a stay ends without done=True on its last row")
    nxt[cont] = obs[cont + 1]
    next_actions = np.full(len(data), -1, dtype=np.int64)
    next_actions[cont] = data.actions[cont + 1]
    sofa_name = next((n for n in SOFA_NAMES if n in data.feature_names), None)
    sofa = data.states[:, data.feature_names.index(sofa_name)] if sofa_name else None
    return Transitions(obs, data.actions.astype(np.int64), data.rewards.astype(np.float32), nxt, data.dones.copy(),
                       next_actions, data.episode_ids, sofa)


def soften(probs: np.ndarray, epsilon: float) -> np.ndarray:
    """Mix with the uniform distribution: (1 - eps) * p + eps / 25 (every action keeps support for OPE)."""
    if not 0.0 <= epsilon <= 1.0:
        raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
    return (1.0 - epsilon) * probs + epsilon / N_ACTIONS


def policy_probs_on_rows(policy: Policy, data: LoggedData, batch_size: int = 8192) -> np.ndarray:
    """[N, 25] the policy's probabilities at every logged row (what it would do in the clinicians' situations)."""
    out = np.empty((len(data), N_ACTIONS))
    for rows, batch in data.batches(batch_size):
        out[rows] = policy.action_probs(batch)
    return out


def wis_selector(policy: Policy, data: LoggedData, gamma: float = 0.99) -> float:
    """Per-trajectory WIS of ``policy`` on ``data`` with the recorded behaviour propensities (higher is better).

    WIS = sum_i w_i G_i / sum_i w_i, w_i = prod_t pi(a_t|s_t) / mu(a_t|s_t) (Precup, Sutton & Singh 2000).
    Returns -inf when no trajectory has positive weight (a greedy policy that never agrees with a whole logged
    stay): such a checkpoint cannot be scored and must not be chosen over one that can.
    """
    if data.behaviour_prob is None:
        raise ValueError("the validation split has no behaviour_prob column; estimate one "
                         "(behaviour_estimate) and attach it with with_propensities(), or pass another selector")
    pi = policy_probs_on_rows(policy, data)[np.arange(len(data)), data.actions]
    log_ratio = np.log(np.maximum(pi, 1e-300)) - np.log(data.behaviour_prob)
    log_ratio[pi <= 0] = -np.inf
    ep = data.episode_index()
    log_w = np.bincount(ep, weights=np.where(np.isfinite(log_ratio), log_ratio, 0.0))
    log_w[np.bincount(ep, weights=~np.isfinite(log_ratio)) > 0] = -np.inf
    if not np.isfinite(log_w).any():
        return float("-inf")
    w = np.exp(log_w - log_w[np.isfinite(log_w)].max())
    return float(np.sum(w * data.returns(gamma)) / np.sum(w))


def with_propensities(data: LoggedData, behaviour: Policy) -> LoggedData:
    """``data`` with ``behaviour_prob`` taken from an (estimated) behaviour policy, for cohorts without one."""
    p = policy_probs_on_rows(behaviour, data)[np.arange(len(data)), data.actions]
    return replace(data, behaviour_prob=np.maximum(p, 1e-12))


class SelectionLog:
    """Keeps the best-scoring checkpoint seen during training (ties keep the earlier one)."""

    def __init__(self) -> None:
        self.history: list[tuple[int, float]] = []
        self.best_step = -1
        self.best_value = float("-inf")
        self.best_state: object = None

    def offer(self, step: int, value: float, state: Callable[[], object]) -> bool:
        value = float(value) if np.isfinite(value) or value == float("-inf") else float("-inf")  # NaN: unscorable
        self.history.append((step, value))
        if self.best_state is None or value > self.best_value:
            self.best_step, self.best_value, self.best_state = step, float(value), state()
            return True
        return False

    def info(self) -> dict[str, object]:
        return {"selected_step": self.best_step, "val_selection_value": self.best_value,
                "val_history": [list(h) for h in self.history]}
