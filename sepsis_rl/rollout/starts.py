"""Start states of simulated episodes: the first charted state of each stay of a cohort split."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sepsis_rl.cohort.store import read_split, read_spec


@dataclass
class StartStates:
    states: np.ndarray  # [N, F] real units
    episode_ids: np.ndarray  # the cohort stays they come from

    @classmethod
    def from_cohort(cls, cohort_dir: str, split: str = "train") -> "StartStates":
        spec = read_spec(cohort_dir)
        table = read_split(cohort_dir, split, spec)
        first = table.filter(table.column("step").to_numpy() == 0)
        if first.num_rows == 0:
            raise ValueError(f"{cohort_dir}: split {split!r} has no stays")
        states = np.stack([first.column(n).to_numpy() for n in spec.feature_names], axis=1).astype(np.float64)
        return cls(states, first.column("episode_id").to_numpy())

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        return rng.integers(0, len(self.states), n)
