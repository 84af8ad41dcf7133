"""Counter-based keyed randomness: draws that depend only on (seed, stream, stay, step, draw index).

Common random numbers for the ground truth: two policies played on the same patient meet the same
simulator draws at every step, whatever the other patients do and in whatever batch composition, so
their difference is paired; the simulator's noise and a policy's own randomness live on separate streams.
The hash is splitmix64 (Steele et al. 2014), vectorised in numpy: no generator per patient.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def keyed_uniforms(seed: int, episode_ids: np.ndarray, steps: np.ndarray, n: int, start: int = 0) -> np.ndarray:
    """Uniforms in [0, 1), shape [B, n]: draw ``start + j`` of (seed, episode id, step), for j < n."""
    with np.errstate(over="ignore"):
        ids = np.asarray(episode_ids).astype(np.uint64)
        key = _splitmix64(_splitmix64(ids) ^ np.uint64(seed & 0xFFFFFFFFFFFFFFFF))
        key = _splitmix64(key ^ (np.asarray(steps).astype(np.uint64) * np.uint64(0x632BE59BD9B4E019)))
        idx = np.arange(start, start + n, dtype=np.uint64)
        x = _splitmix64(key[:, None] + idx[None, :] * np.uint64(0xD1B54A32D192ED03))
    return (x >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def normal_from_uniform(u: np.ndarray) -> np.ndarray:
    """Standard normal draws from uniforms (Box-Muller on pairs), so draws depend only on the keyed stream."""
    u = np.clip(u, 1e-12, 1 - 1e-12)
    n = u.shape[1]
    half = (n + 1) // 2
    a = np.concatenate([u, u[:, :1]], axis=1) if n % 2 else u
    r = np.sqrt(-2 * np.log(a[:, :half]))
    theta = 2 * np.pi * a[:, half : 2 * half]
    return np.concatenate([r * np.cos(theta), r * np.sin(theta)], axis=1)[:, :n]


def stream_seed(seed: int, stream: str) -> int:
    """A 64-bit seed for a named stream ("dynamics", "chart", "policy", ...) of a base seed."""
    h = np.uint64(seed & 0xFFFFFFFFFFFFFFFF)
    with np.errstate(over="ignore"):
        for ch in stream.encode():
            h = _splitmix64(h ^ np.uint64(ch))
    return int(h)


class KeyedNoise:
    """The subset of ``numpy.random.Generator`` the simulator uses, keyed by (stream seed, stay, step).

    Each call takes the next draw indices, so the k-th call at a step always gets the same numbers for a
    stay: the simulator's calls are in a fixed order that does not depend on the data.
    """

    def __init__(self, seed: int, episode_ids: np.ndarray, steps: np.ndarray | int):
        self.seed = seed
        self.ids = np.asarray(episode_ids, dtype=np.int64).reshape(-1)
        self.steps = np.broadcast_to(np.asarray(steps, dtype=np.int64), self.ids.shape)
        self._next = 0

    def _u(self, size: int | None) -> np.ndarray:
        n = len(self.ids)
        if size is not None and size != n:
            raise ValueError(f"keyed noise for {n} stays asked for {size} draws")
        u = keyed_uniforms(self.seed, self.ids, self.steps, 1, start=self._next)[:, 0]
        self._next += 1
        return u

    def random(self, size: int | None = None) -> np.ndarray:
        return self._u(size)

    def normal(self, loc: float | np.ndarray = 0.0, scale: float | np.ndarray = 1.0, size: int | None = None) -> np.ndarray:
        u1, u2 = self._u(size), self._u(size)
        z = np.sqrt(-2 * np.log(np.clip(u1, 1e-12, 1.0))) * np.cos(2 * np.pi * u2)
        return loc + scale * z

    def lognormal(self, mean: float = 0.0, sigma: float = 1.0, size: int | None = None) -> np.ndarray:
        return np.exp(self.normal(mean, sigma, size))

    def uniform(self, low: float = 0.0, high: float = 1.0, size: int | None = None) -> np.ndarray:
        return low + (high - low) * self._u(size)
