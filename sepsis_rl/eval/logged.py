"""Logged trajectories of a cohort split as arrays: what off-policy estimators and offline RL read.

One row per decision (episode, step), sorted by episode then step, exactly as the cohort stores them:
``reward[i]`` is the reward of the transition from row i (the terminal reward on a stay's last row), so an
episode's return is the (discounted) sum of its rows' rewards. ``decisions()`` turns rows into the
``DecisionBatch`` every policy answers, with each row's charted history (nothing after the row), so a
policy is asked exactly what a clinician saw at that moment — never a later state.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from sepsis_rl.cohort.spec import CohortSpec, action_index
from sepsis_rl.cohort.store import read_spec, read_split, table_features
from sepsis_rl.eval.policy import DecisionBatch


@dataclass
class LoggedData:
    """Per-row arrays of one split (N rows, E episodes)."""

    spec: CohortSpec
    episode_ids: np.ndarray  # [N] int64
    steps: np.ndarray  # [N] int64
    states: np.ndarray  # [N, F] charted features, real units
    actions: np.ndarray  # [N] joint action 0..24
    rewards: np.ndarray  # [N]
    dones: np.ndarray  # [N] bool, True on each stay's last row
    outcome: np.ndarray  # [N] 1 = died
    behaviour_prob: np.ndarray | None  # [N] probability the logging policy gave the logged action, if known

    @classmethod
    def from_cohort(cls, cohort_dir: str | Path, split: str = "test", max_episodes: int | None = None) -> "LoggedData":
        spec = read_spec(cohort_dir)
        table = read_split(cohort_dir, split, spec)
        ep = table.column("episode_id").to_numpy().astype(np.int64)
        keep = np.ones(len(ep), dtype=bool)
        if max_episodes is not None:
            chosen = np.unique(ep)[:max_episodes]
            keep = np.isin(ep, chosen)
        col = lambda name: table.column(name).to_numpy()[keep]  # noqa: E731
        names = set(table.column_names)
        data = cls(
            spec=spec,
            episode_ids=ep[keep],
            steps=col("step").astype(np.int64),
            states=table_features(table, spec)[keep].astype(np.float64),
            actions=action_index(col("action_fluid").astype(np.int64), col("action_vaso").astype(np.int64)),
            rewards=col("reward").astype(np.float64),
            dones=col("done").astype(bool),
            outcome=col("outcome").astype(np.int64),
            behaviour_prob=col("behaviour_prob").astype(np.float64) if "behaviour_prob" in names else None,
        )
        data.check_sorted()
        return data

    def __len__(self) -> int:
        return len(self.episode_ids)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(self.spec.feature_names)

    def check_sorted(self) -> None:
        order = np.lexsort((self.steps, self.episode_ids))
        if not np.array_equal(order, np.arange(len(order))):
            raise ValueError("logged rows must be sorted by episode then step")

    def episode_starts(self) -> np.ndarray:
        """Row index where each episode begins (length E)."""
        return np.flatnonzero(np.r_[True, self.episode_ids[1:] != self.episode_ids[:-1]])

    def episode_index(self) -> np.ndarray:
        """[N] 0..E-1: which episode each row belongs to."""
        return np.cumsum(np.r_[True, self.episode_ids[1:] != self.episode_ids[:-1]]) - 1

    def returns(self, gamma: float = 1.0) -> np.ndarray:
        """[E] (discounted) return of each logged episode."""
        disc = self.rewards * gamma ** (self.steps - self.steps[self.episode_starts()][self.episode_index()])
        return np.bincount(self.episode_index(), weights=disc)

    def last_actions(self) -> np.ndarray:
        """[N] the previous row's action within the stay, -1 on a stay's first row."""
        prev = np.r_[-1, self.actions[:-1]]
        prev[self.episode_starts()] = -1
        return prev

    def histories(self, rows: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
        """([R, window, F] histories ending at ``rows``, left-padded with the stay's first row; [R] lengths)."""
        rows = np.asarray(rows, dtype=np.int64)
        first = self.episode_starts()[self.episode_index()[rows]]
        offsets = np.arange(-window + 1, 1)
        idx = np.maximum(rows[:, None] + offsets[None, :], first[:, None])
        return self.states[idx], np.minimum(rows - first + 1, window)

    def decisions(self, rows: np.ndarray, window: int = 4) -> DecisionBatch:
        """The decision a policy faces at each of ``rows``."""
        rows = np.asarray(rows, dtype=np.int64)
        hist, lengths = self.histories(rows, window)
        return DecisionBatch(self.episode_ids[rows], self.steps[rows], hist, lengths, self.last_actions()[rows],
                             self.feature_names)

    def batches(self, batch_size: int = 4096, window: int = 4) -> Iterator[tuple[np.ndarray, DecisionBatch]]:
        """All rows in order, as (row indices, DecisionBatch) chunks."""
        for lo in range(0, len(self), batch_size):
            rows = np.arange(lo, min(lo + batch_size, len(self)))
            yield rows, self.decisions(rows, window)
