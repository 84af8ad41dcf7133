"""Logged decisions of a cohort split, with what the curriculum's text builders need around each one."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sepsis_rl.cohort.spec import CohortSpec, action_index
from sepsis_rl.cohort.store import read_split, read_spec, table_features


@dataclass
class CohortRows:
    spec: CohortSpec
    states: np.ndarray  # [N, F] real units, rows sorted by (episode, step)
    episode: np.ndarray
    step: np.ndarray
    action: np.ndarray  # joint action 0..24 the clinician took at the row

    @classmethod
    def load(cls, cohort_dir: str, split: str) -> "CohortRows":
        spec = read_spec(cohort_dir)
        table = read_split(cohort_dir, split, spec)
        ep, st = table.column("episode_id").to_numpy(), table.column("step").to_numpy()
        order = np.lexsort((st, ep))
        act = action_index(table.column("action_fluid").to_numpy(), table.column("action_vaso").to_numpy())
        return cls(spec, table_features(table, spec)[order].astype(np.float64), ep[order], st[order], np.asarray(act)[order])

    def has_previous(self, i: int) -> bool:
        return i > 0 and self.episode[i - 1] == self.episode[i]

    def has_next(self, i: int) -> bool:
        return i + 1 < len(self.episode) and self.episode[i + 1] == self.episode[i]

    def previous(self, i: int) -> tuple[np.ndarray | None, int | None]:
        """The state 4 h earlier and the action then taken (None at the first step)."""
        if not self.has_previous(i):
            return None, None
        return self.states[i - 1], int(self.action[i - 1])

    def history(self, i: int, window: int) -> np.ndarray:
        """[window, F] states up to row i, padded at the front with the first state (as the simulator does)."""
        lo = i
        while lo > 0 and self.episode[lo - 1] == self.episode[i] and i - lo + 1 < window:
            lo -= 1
        h = self.states[lo:i + 1]
        return np.concatenate([np.repeat(h[:1], window - len(h), axis=0), h]) if len(h) < window else h

    def sample(self, n: int, rng: np.random.Generator, need_next: bool = False) -> np.ndarray:
        pool = np.flatnonzero([self.has_next(i) for i in range(len(self.episode))]) if need_next else np.arange(len(self.episode))
        return rng.choice(pool, size=min(n, len(pool)), replace=False)
