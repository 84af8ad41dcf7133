"""The one policy contract every evaluated policy implements (clinician, rules, planners, offline RL, LLMs).

A policy sees what a clinician sees at a decision: the patient's charted history (real units, the
cohort's feature order), the previous action and the time since admission, plus the stay's identity so
it may keep per-stay state (a clinician's style, an LLM's conversation). It answers with a probability
vector over the 25 joint actions (index = 5 * fluid bin + vasopressor bin); deterministic policies return
one-hot rows. Off-policy estimators need the probabilities; ground-truth rollouts sample from them with
the policy's own keyed randomness (never the simulator's), so policies stay comparable.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from sepsis_rl.cohort.spec import N_ACTIONS


@dataclass
class DecisionBatch:
    """B decisions, one per stay. ``history`` is left-padded by repeating each stay's first row."""

    episode_ids: np.ndarray  # [B] int64, the stay's identity (stable across a stay's decisions)
    steps: np.ndarray  # [B] int64, decision index since admission (0 = admission)
    history: np.ndarray  # [B, T, F] float64 charted features, oldest first, real units
    lengths: np.ndarray  # [B] int64, real rows in ``history`` (1..T); rows before T - length are padding
    last_action: np.ndarray  # [B] int64 joint action of the previous step, -1 at admission
    feature_names: tuple[str, ...]

    def __post_init__(self) -> None:
        b = len(self.episode_ids)
        if self.history.ndim != 3 or self.history.shape[0] != b or self.history.shape[2] != len(self.feature_names):
            raise ValueError(f"history must be [B={b}, T, F={len(self.feature_names)}], got {self.history.shape}")
        for name in ("steps", "lengths", "last_action"):
            if len(getattr(self, name)) != b:
                raise ValueError(f"{name} has {len(getattr(self, name))} rows, expected {b}")

    def __len__(self) -> int:
        return len(self.episode_ids)

    @property
    def current(self) -> np.ndarray:
        """[B, F] the newest charted row of each stay."""
        return self.history[:, -1, :]

    def column(self, name: str) -> np.ndarray:
        """[B] the newest value of one feature, by name."""
        return self.current[:, self.feature_names.index(name)]

    def take(self, idx: np.ndarray) -> "DecisionBatch":
        return DecisionBatch(self.episode_ids[idx], self.steps[idx], self.history[idx], self.lengths[idx],
                             self.last_action[idx], self.feature_names)


class Policy(ABC):
    """A treatment policy over the 25 joint actions."""

    name: str = "policy"
    deterministic: bool = False
    # True: probabilities depend on earlier calls for the same stay, so a batch may hold each stay once and
    # stays must be presented in order; False (every policy here): any rows, in any batch
    stateful: bool = False

    @abstractmethod
    def action_probs(self, batch: DecisionBatch) -> np.ndarray:
        """[B, 25] probabilities, rows summing to 1."""

    def begin(self, episode_ids: np.ndarray) -> None:
        """New stays start (ground-truth rollouts call this at admission); reset per-stay state here."""

    def end(self, episode_ids: np.ndarray) -> None:
        """Stays ended; per-stay state may be dropped."""


def one_hot(actions: np.ndarray) -> np.ndarray:
    """[B] joint actions -> [B, 25] one-hot probability rows (deterministic policies)."""
    a = np.asarray(actions, dtype=np.int64)
    out = np.zeros((len(a), N_ACTIONS))
    out[np.arange(len(a)), a] = 1.0
    return out


def check_probs(probs: np.ndarray, n: int, who: str) -> np.ndarray:
    """Validate a policy's answer: [n, 25], finite, non-negative, rows summing to 1 (renormalised to 1e-6)."""
    p = np.asarray(probs, dtype=np.float64)
    if p.shape != (n, N_ACTIONS):
        raise ValueError(f"policy {who!r} returned probabilities of shape {p.shape}, expected ({n}, {N_ACTIONS})")
    if not np.isfinite(p).all() or (p < 0).any():
        raise ValueError(f"policy {who!r} returned negative or non-finite probabilities")
    s = p.sum(axis=1, keepdims=True)
    if np.abs(s - 1).max() > 1e-4:
        raise ValueError(f"policy {who!r} returned rows summing to {float(s.min()):.4f}..{float(s.max()):.4f}, not 1")
    return p / s
