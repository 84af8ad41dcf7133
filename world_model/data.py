"""Training windows from a cohort split: (last W states, action) -> next state, and how the stay ends.

Rows of a split are sorted by (episode, step). Row ``i`` becomes one example: the window of the last
``W`` charted states ending at row ``i`` (left-padded by repeating the stay's first state, with a mask
saying which slots are real), the joint action given at row ``i``, the next row of the same stay as the
target state, and a terminal label: the stay continues, or ends with this step in death or survival
(``outcome`` of the stay's last row; it includes deaths after ICU discharge, which is what the
synthetic cohort and the RL reward count as dying).

Windows keep real-unit rows plus index arrays rather than materialised [N, W, F] copies, so the same
object serves training (in model space) and evaluation (in real units) without duplicating memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from sepsis_rl.cohort.spec import CohortSpec, action_index
from sepsis_rl.cohort.store import table_features
from sepsis_rl.cohort.validation import CohortInputError
from world_model.normalize import FeatureLayout, Normalizer

TERM_CONTINUE, TERM_DEATH, TERM_DISCHARGE = 0, 1, 2
TERMINAL_CLASSES = ("continue", "death", "discharge")


@dataclass(frozen=True)
class DataConfig:
    """How examples are built and standardised."""

    window: int = 4
    log_transform: bool = True  # log1p heavy-tailed positive features before standardising
    skew_threshold: float = 2.0

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")


@dataclass
class Windows:
    """One example per cohort row; see the module docstring."""

    x: np.ndarray  # [N, F] real units, float64
    hist_idx: np.ndarray  # [N, W] row of each window slot (padding repeats the stay's first row)
    mask: np.ndarray  # [N, W] True where the slot is a real charted step
    next_idx: np.ndarray  # [N] row of the next state, -1 on a stay's last row
    action: np.ndarray  # [N] joint action 0..24
    terminal: np.ndarray  # [N] TERM_CONTINUE / TERM_DEATH / TERM_DISCHARGE
    episode_id: np.ndarray  # [N]
    step: np.ndarray  # [N]
    outcome: np.ndarray  # [N] 1 = died (constant per stay)

    def __len__(self) -> int:
        return len(self.action)

    @property
    def window(self) -> int:
        return self.hist_idx.shape[1]

    @property
    def has_next(self) -> np.ndarray:
        return self.next_idx >= 0

    def history(self, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        """Real-unit windows [n, W, F] of the given examples."""
        return self.x[self.hist_idx[rows]]

    def next_state(self, rows: np.ndarray) -> np.ndarray:
        """Real-unit next states [n, F]; only meaningful where ``has_next``."""
        return self.x[np.maximum(self.next_idx[rows], 0)]

    def last_rows(self) -> np.ndarray:
        """Row index of every stay's last row (one per episode, in episode order)."""
        return np.nonzero(~self.has_next)[0]


def make_windows(table: pa.Table, spec: CohortSpec, window: int = 4) -> Windows:
    """Build the examples of one split (rows must be sorted by episode, step, as the store writes them)."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    x = table_features(table, spec).astype(np.float64)
    ep = table.column("episode_id").to_numpy().astype(np.int64)
    step = table.column("step").to_numpy().astype(np.int64)
    _check_rows(x, ep, step, spec)
    n = len(ep)
    rows = np.arange(n)
    first = np.ones(n, dtype=bool)
    first[1:] = ep[1:] != ep[:-1]
    last = np.ones(n, dtype=bool)
    last[:-1] = first[1:]
    start = np.maximum.accumulate(np.where(first, rows, 0)) if n else rows
    offsets = np.arange(window - 1, -1, -1)  # slot k looks back W-1-k rows
    back = rows[:, None] - offsets[None, :]
    mask = back >= start[:, None]
    hist_idx = np.where(mask, back, start[:, None])
    outcome = table.column("outcome").to_numpy().astype(np.int64)
    terminal = np.where(last, np.where(outcome == 1, TERM_DEATH, TERM_DISCHARGE), TERM_CONTINUE)
    action = action_index(
        table.column("action_fluid").to_numpy().astype(np.int64), table.column("action_vaso").to_numpy().astype(np.int64)
    )
    return Windows(x, hist_idx, mask, np.where(last, -1, rows + 1), action, terminal, ep, step, outcome)


def fit_normalizer(train: Windows, layout: FeatureLayout, config: DataConfig) -> Normalizer:
    """Standardisation stats from the training split (feature stats over all rows, deltas over transitions)."""
    has = train.has_next
    return Normalizer.fit(
        np.concatenate([train.x[has], train.x[~has]]), train.x[train.next_idx[has]], layout,
        log_transform=config.log_transform, skew_threshold=config.skew_threshold,
    )


def _check_rows(x: np.ndarray, ep: np.ndarray, step: np.ndarray, spec: CohortSpec) -> None:
    if len(ep) and np.any(np.diff(ep) < 0):
        raise CohortInputError("cohort rows are not sorted by episode_id (read cohorts with sepsis_rl.cohort.store)")
    same = ep[1:] == ep[:-1]
    if np.any(same & (step[1:] != step[:-1] + 1)):
        raise CohortInputError("cohort steps are not contiguous within an episode")
    bad = ~np.isfinite(x)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise CohortInputError(f"feature {spec.feature_names[col]!r} is NaN or infinite at row {row}")
