"""Off-policy value estimators on logged trajectories: IS, WIS, PDIS, WPDIS, DR, WDR (numpy, our own).

Every estimator reads the same padded layout (:class:`Episodes`): E episodes x H steps of rewards, per-step
importance ratios rho_t = pi_e(a_t|s_t) / pi_b(a_t|s_t) and, for DR, the model's Q(s_t, a_t) and
V(s_t) = sum_a pi_e(a|s_t) Q(s_t, a). A stay that ended before step H continues in an absorbing state with
zero reward and ratio 1 (every policy takes the absorbing state's only action), so its cumulative weight is
frozen at its last value. That convention is what makes the per-step normaliser of the weighted estimators
correct for stays of different lengths: for the behaviour policy with exact propensities every ratio is 1
and WIS = WPDIS = WDR(Q=0) = the mean discounted return, exactly. Normalising each step over only the stays
still running breaks that identity (it over-weights late terminal rewards: the SepsisAgent paper's clinician
row, WPDIS 10.82 vs WIS 5.27).

Each estimator is written as a function of per-episode bootstrap *counts* (a [B, E] matrix; all ones is the
point estimate), so one vectorised call gives the value and >= 200 percentile-bootstrap resamples over
patients, with every normaliser recomputed inside each resample.

References:
- IS, WIS, PDIS, WPDIS: Precup, Sutton & Singh (2000), "Eligibility traces for off-policy policy
  evaluation"; Thomas (2015), "Safe reinforcement learning" (PhD thesis), ch. 3.
- DR: Jiang & Li (2016), "Doubly robust off-policy value evaluation for reinforcement learning".
- WDR: Thomas & Brunskill (2016), "Data-efficient off-policy policy evaluation for reinforcement learning".
- FQE (the DR model, :mod:`sepsis_rl.eval.fqe`): Le, Voloshin & Yue (2019), "Batch policy learning under
  constraints".
- ESS: Kish (1965), "Survey sampling": (sum w)^2 / sum w^2.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from sepsis_rl.cohort.spec import N_ACTIONS

DEFAULT_GAMMA = 0.99
DEFAULT_BOOTSTRAP = 200
ESTIMATORS = ("is", "wis", "pdis", "wpdis", "dr", "wdr")

if TYPE_CHECKING:  # only for annotations: plain arrays need no cohort code
    from sepsis_rl.eval.logged import LoggedData


@dataclass(frozen=True)
class Estimate:
    """A value estimate with its 95% percentile-bootstrap CI over patients and effective sample size."""

    value: float
    ci: tuple[float, float]
    ess: float

    def to_dict(self) -> dict:
        return {"value": _f(self.value), "ci": [_f(self.ci[0]), _f(self.ci[1])], "ess": _f(self.ess)}


def _f(x: float) -> float | None:
    """JSON-safe float: NaN (no support, e.g. every weight zero) becomes null."""
    return None if not np.isfinite(x) else float(x)


@dataclass
class Episodes:
    """Logged episodes padded to [E, H]; rows past a stay's end are the absorbing state (mask False)."""

    rewards: np.ndarray  # [E, H], 0 past the end
    ratios: np.ndarray  # [E, H], 1 past the end
    mask: np.ndarray  # [E, H] bool, True on real rows
    gamma: float
    q_logged: np.ndarray | None = None  # [E, H] Q(s_t, a_t), 0 past the end
    v_state: np.ndarray | None = None  # [E, H] V(s_t) under the target policy, 0 past the end

    @property
    def n_episodes(self) -> int:
        return self.rewards.shape[0]

    @property
    def discounts(self) -> np.ndarray:
        """[H] gamma^t."""
        return self.gamma ** np.arange(self.rewards.shape[1], dtype=np.float64)

    @property
    def weights(self) -> np.ndarray:
        """[E, H] cumulative ratios w_t = prod_{k<=t} rho_k (frozen after the end)."""
        return np.cumprod(self.ratios, axis=1)

    @property
    def prev_weights(self) -> np.ndarray:
        """[E, H] w_{t-1}, with w_{-1} = 1."""
        w = self.weights
        return np.concatenate([np.ones((w.shape[0], 1)), w[:, :-1]], axis=1)

    def returns(self) -> np.ndarray:
        """[E] discounted return of each logged episode."""
        return self.rewards @ self.discounts

    @classmethod
    def from_rows(
        cls,
        episode_index: np.ndarray,
        rewards: np.ndarray,
        behaviour_prob: np.ndarray,
        target_prob: np.ndarray,
        gamma: float = DEFAULT_GAMMA,
        q_logged: np.ndarray | None = None,
        v_state: np.ndarray | None = None,
    ) -> Episodes:
        """Pad per-row arrays (rows sorted by episode then step; ``episode_index`` 0..E-1 non-decreasing).

        ``behaviour_prob`` / ``target_prob``: probability each policy gives the *logged* action of the row.
        """
        ep = np.asarray(episode_index, dtype=np.int64)
        n = len(ep)
        for name, arr in (("rewards", rewards), ("behaviour_prob", behaviour_prob), ("target_prob", target_prob)):
            if len(arr) != n:
                raise ValueError(f"{name} has {len(arr)} rows, expected {n} (one per logged row)")
        if n == 0:
            raise ValueError("no logged rows to evaluate")
        if (np.diff(ep) < 0).any() or ep[0] != 0 or (np.diff(ep) > 1).any():
            raise ValueError("episode_index must be 0..E-1, non-decreasing (rows sorted by episode then step)")
        if not 0.0 < gamma <= 1.0:
            raise ValueError(f"gamma must be in (0, 1], got {gamma}")
        pb = np.asarray(behaviour_prob, dtype=np.float64)
        pe = np.asarray(target_prob, dtype=np.float64)
        bad = np.flatnonzero(~(pb > 0) | ~np.isfinite(pb) | (pb > 1 + 1e-9))
        if len(bad):
            raise ValueError(f"behaviour_prob must be in (0, 1]; row {int(bad[0])} has {pb[bad[0]]}")
        bad = np.flatnonzero(~np.isfinite(pe) | (pe < 0) | (pe > 1 + 1e-9))
        if len(bad):
            raise ValueError(f"target_prob must be in [0, 1]; row {int(bad[0])} has {pe[bad[0]]}")
        starts = np.flatnonzero(np.r_[True, ep[1:] != ep[:-1]])
        t = np.arange(n) - starts[ep]
        e_count, h = int(ep[-1]) + 1, int(t.max()) + 1

        def pad(values: np.ndarray, fill: float) -> np.ndarray:
            out = np.full((e_count, h), fill, dtype=np.float64)
            out[ep, t] = values
            return out

        mask = np.zeros((e_count, h), dtype=bool)
        mask[ep, t] = True
        return cls(
            rewards=pad(np.asarray(rewards, np.float64), 0.0),
            ratios=pad(pe / pb, 1.0),
            mask=mask,
            gamma=float(gamma),
            q_logged=None if q_logged is None else pad(np.asarray(q_logged, np.float64), 0.0),
            v_state=None if v_state is None else pad(np.asarray(v_state, np.float64), 0.0),
        )

    @classmethod
    def from_logged(
        cls,
        data: LoggedData,
        target_probs: np.ndarray,
        gamma: float = DEFAULT_GAMMA,
        q_values: np.ndarray | None = None,
    ) -> Episodes:
        """From a split's logged rows and the target policy's [N, 25] probabilities (and, for DR, [N, 25] Q)."""
        if data.behaviour_prob is None:
            raise ValueError("the cohort has no behaviour_prob column: estimate a behaviour policy first")
        probs = _check_matrix(target_probs, len(data), "target_probs")
        rows = np.arange(len(data))
        q_logged = v_state = None
        if q_values is not None:
            q = _check_matrix(q_values, len(data), "q_values", probs=False)
            q_logged, v_state = q[rows, data.actions], (probs * q).sum(axis=1)
        return cls.from_rows(data.episode_index(), data.rewards, data.behaviour_prob, probs[rows, data.actions],
                             gamma, q_logged, v_state)


def _check_matrix(m: np.ndarray, n: int, name: str, probs: bool = True) -> np.ndarray:
    m = np.asarray(m, dtype=np.float64)
    if m.shape != (n, N_ACTIONS):
        raise ValueError(f"{name} must be [{n}, {N_ACTIONS}], got {list(m.shape)}")
    if not np.isfinite(m).all():
        raise ValueError(f"{name} has non-finite values (row {int(np.flatnonzero(~np.isfinite(m).all(1))[0])})")
    if probs and ((m < 0).any() or np.abs(m.sum(axis=1) - 1).max() > 1e-4):
        raise ValueError(f"{name} rows must be probabilities summing to 1")
    return m


# ---- ESS and bootstrap ---------------------------------------------------------------------------------

def kish_ess(weights: np.ndarray) -> float:
    """Kish's effective sample size (sum w)^2 / sum w^2: n for equal weights, 1 if one weight dominates, 0 if all 0."""
    w = np.asarray(weights, dtype=np.float64)
    s2 = float((w * w).sum())
    return float(w.sum()) ** 2 / s2 if s2 > 0 else 0.0


def per_step_ess(ep: Episodes) -> float:
    """ESS of per-decision estimators: the Kish ESS of the step-t weights over all E stays, averaged over steps."""
    w = ep.weights
    return float(np.mean([kish_ess(w[:, t]) for t in range(w.shape[1])]))


def bootstrap_counts(n_episodes: int, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> np.ndarray:
    """[n_boot, E] how often each episode is drawn in each resample (patients resampled with replacement)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_episodes, size=(n_boot, n_episodes))
    flat = (idx + n_episodes * np.arange(n_boot)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * n_episodes).reshape(n_boot, n_episodes).astype(np.float64)


def _ratio(num: np.ndarray, den: np.ndarray, empty: float) -> np.ndarray:
    """num / den, ``empty`` where the denominator is 0 (no weight on any resampled stay)."""
    out = np.full(np.broadcast(num, den).shape, empty, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


def bootstrap(fn: Callable[[np.ndarray], np.ndarray], n_episodes: int, ess: float,
              n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0, level: float = 0.95) -> Estimate:
    """Point value fn(ones) and the percentile CI of fn over ``n_boot`` patient resamples."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    value = float(fn(np.ones((1, n_episodes)))[0])
    boots = fn(bootstrap_counts(n_episodes, n_boot, seed))
    boots = boots[np.isfinite(boots)]
    if len(boots) == 0:
        return Estimate(value, (float("nan"), float("nan")), ess)
    alpha = (1 - level) / 2
    lo, hi = np.quantile(boots, [alpha, 1 - alpha])
    return Estimate(value, (float(lo), float(hi)), ess)


def mean_estimate(values: np.ndarray, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> Estimate:
    """Mean of per-episode values (FQE's V(s_0), the world model's value, the logged return) with its CI; ESS = E."""
    v = np.asarray(values, dtype=np.float64)
    return bootstrap(lambda c: (c @ v) / c.sum(axis=1), len(v), float(len(v)), n_boot, seed)


# ---- the estimators, as functions of bootstrap counts C [B, E] -------------------------------------------

def _is_fn(ep: Episodes) -> Callable[[np.ndarray], np.ndarray]:
    contrib = ep.weights[:, -1] * ep.returns()
    return lambda c: (c @ contrib) / c.sum(axis=1)


def _wis_fn(ep: Episodes) -> Callable[[np.ndarray], np.ndarray]:
    w_final = ep.weights[:, -1]
    contrib = w_final * ep.returns()
    return lambda c: _ratio(c @ contrib, c @ w_final, float("nan"))


def _pdis_fn(ep: Episodes) -> Callable[[np.ndarray], np.ndarray]:
    contrib = (ep.weights * ep.rewards) @ ep.discounts
    return lambda c: (c @ contrib) / c.sum(axis=1)


def _wpdis_fn(ep: Episodes) -> Callable[[np.ndarray], np.ndarray]:
    w, wr, g = ep.weights, ep.weights * ep.rewards, ep.discounts
    # A step where every resampled weight is 0 adds nothing (no stay supports it); later steps then are 0 too.
    return lambda c: _ratio(c @ wr, c @ w, 0.0) @ g


def _require_model(ep: Episodes) -> tuple[np.ndarray, np.ndarray]:
    if ep.q_logged is None or ep.v_state is None:
        raise ValueError("DR and WDR need a Q-model: build Episodes with q_values (see sepsis_rl.eval.fqe)")
    return ep.q_logged, ep.v_state


def _dr_fn(ep: Episodes) -> Callable[[np.ndarray], np.ndarray]:
    q, v = _require_model(ep)
    w, w_prev, g = ep.weights, ep.prev_weights, ep.discounts
    contrib = (w * (ep.rewards - q) + w_prev * v) @ g
    return lambda c: (c @ contrib) / c.sum(axis=1)


def _wdr_fn(ep: Episodes) -> Callable[[np.ndarray], np.ndarray]:
    q, v = _require_model(ep)
    w, w_prev, g = ep.weights, ep.prev_weights, ep.discounts
    corr, base = w * (ep.rewards - q), w_prev * v

    def fn(c: np.ndarray) -> np.ndarray:
        return (_ratio(c @ corr, c @ w, 0.0) + _ratio(c @ base, c @ w_prev, 0.0)) @ g

    return fn


def importance_sampling(ep: Episodes, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> Estimate:
    """Per-trajectory IS (Precup 2000): mean_e W_e G_e with W_e = prod_t rho_t. Unbiased, high variance."""
    return bootstrap(_is_fn(ep), ep.n_episodes, kish_ess(ep.weights[:, -1]), n_boot, seed)


def weighted_importance_sampling(ep: Episodes, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> Estimate:
    """WIS (Precup 2000): sum_e W_e G_e / sum_e W_e. Biased but consistent; NaN if every weight is 0."""
    return bootstrap(_wis_fn(ep), ep.n_episodes, kish_ess(ep.weights[:, -1]), n_boot, seed)


def per_decision_is(ep: Episodes, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> Estimate:
    """PDIS (Precup 2000): mean_e sum_t gamma^t w_t r_t, the reward at t weighted only by ratios up to t."""
    return bootstrap(_pdis_fn(ep), ep.n_episodes, per_step_ess(ep), n_boot, seed)


def weighted_per_decision_is(ep: Episodes, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> Estimate:
    """WPDIS (Precup 2000; Thomas 2015 sec. 3.8): sum_t gamma^t sum_e w_et r_et / sum_e w_et.

    The step-t normaliser runs over all E stays, ended ones keeping their final weight (absorbing state);
    see the module docstring for why this, not "running stays only", is the consistent normaliser.
    """
    return bootstrap(_wpdis_fn(ep), ep.n_episodes, per_step_ess(ep), n_boot, seed)


def doubly_robust(ep: Episodes, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> Estimate:
    """DR (Jiang & Li 2016): mean_e sum_t gamma^t [w_t (r_t - Q(s_t,a_t)) + w_{t-1} V(s_t)], w_{-1} = 1.

    Unbiased if the ratios are exact, whatever the Q-model; low variance when the Q-model is good.
    """
    return bootstrap(_dr_fn(ep), ep.n_episodes, per_step_ess(ep), n_boot, seed)


def weighted_doubly_robust(ep: Episodes, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> Estimate:
    """WDR (Thomas & Brunskill 2016): DR with w_t and w_{t-1} replaced by their per-step normalised versions."""
    return bootstrap(_wdr_fn(ep), ep.n_episodes, per_step_ess(ep), n_boot, seed)


ESTIMATOR_FNS: dict[str, Callable[..., Estimate]] = {
    "is": importance_sampling,
    "wis": weighted_importance_sampling,
    "pdis": per_decision_is,
    "wpdis": weighted_per_decision_is,
    "dr": doubly_robust,
    "wdr": weighted_doubly_robust,
}


def all_estimates(ep: Episodes, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> dict[str, Estimate]:
    """Every importance-sampling estimator (DR and WDR only when ``ep`` carries a Q-model), same resamples."""
    names = [n for n in ESTIMATORS if n not in ("dr", "wdr") or ep.q_logged is not None]
    return {n: ESTIMATOR_FNS[n](ep, n_boot=n_boot, seed=seed) for n in names}
