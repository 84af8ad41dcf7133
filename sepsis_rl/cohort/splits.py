"""Patient-level train/val/test splits: no patient's steps ever straddle two splits."""

from __future__ import annotations

import numpy as np

DEFAULT_FRACTIONS: tuple[float, float, float] = (0.7, 0.15, 0.15)


def split_episodes(
    episode_ids: np.ndarray, seed: int, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
) -> dict[str, np.ndarray]:
    """Assign unique episode ids to train/val/test by a seeded shuffle; each split gets >= 1 if possible."""
    if abs(sum(fractions) - 1.0) > 1e-9 or min(fractions) < 0:
        raise ValueError(f"split fractions must be >= 0 and sum to 1, got {fractions}")
    ids = np.unique(np.asarray(episode_ids))
    rng = np.random.default_rng(seed)
    shuffled = ids[rng.permutation(len(ids))]
    n = len(ids)
    n_val = int(round(fractions[1] * n))
    n_test = int(round(fractions[2] * n))
    if n >= 3:
        n_val, n_test = max(n_val, 1), max(n_test, 1)
    n_train = n - n_val - n_test
    return {
        "train": np.sort(shuffled[:n_train]),
        "val": np.sort(shuffled[n_train : n_train + n_val]),
        "test": np.sort(shuffled[n_train + n_val :]),
    }
