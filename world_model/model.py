"""``WorldModel``: the trained ensemble behind a real-units ``predict`` API with strict input checks.

``predict(history [B, T, F], action [B])`` works in the cohort's real units so callers (the simulator
shards, the agent's tools, evaluation) never touch normalisation. Windows longer than the model's W
are cut to the last W states; shorter ones are left-padded with their first state. Padding is also
recognised in windows that callers padded themselves: a leading run of states identical to their
successor cannot occur in noisy charts, so it is treated as padding (pass ``mask`` to be explicit).

The ensemble's spread gives the epistemic uncertainty (std of the members' means, real units); the
members' average predicted noise gives the aleatoric ``std`` (delta method through ``log1p``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from sepsis_rl.cohort.spec import N_ACTIONS, CohortSpec
from world_model.data import TERM_CONTINUE, TERM_DEATH, TERM_DISCHARGE
from world_model.learned_reward import LearnedReward
from world_model.network import DynamicsEnsemble, ModelConfig
from world_model.normalize import FeatureLayout, Normalizer

VENT_NAMES = ("mechvent", "vent", "mechanical_ventilation")
CHUNK = 8192


class WorldModel:
    """A trained dynamics ensemble plus everything needed to read and write real units."""

    def __init__(self, net: DynamicsEnsemble, config: ModelConfig, layout: FeatureLayout,
                 normalizer: Normalizer, spec: CohortSpec | None = None):
        self.net = net.eval()
        self.config = config
        self.layout = layout
        self.normalizer = normalizer
        self.spec = spec
        self.learned_reward: LearnedReward | None = None  # set for cohorts that bring their own reward column
        self.feature_names: list[str] = list(layout.names)
        self.window = config.window
        self.static_index = list(layout.static)
        self.binary_index = list(layout.binary)
        self.feature_scale = np.asarray(normalizer.raw_std)
        binary_names = [layout.names[i] for i in layout.binary]
        self._vent = next((binary_names.index(n) for n in VENT_NAMES if n in binary_names), None)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    # ----------------------------------------------------------------------------------- validation
    def check_inputs(self, history: object, action: object, mask: object = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Validated (history [B, W, F] float64, action [B] int64, mask [B, W] bool); raises ValueError."""
        h = np.asarray(history, dtype=np.float64) if not isinstance(history, np.ndarray) else history.astype(np.float64)
        if h.ndim != 3:
            raise ValueError(f"history must be [batch, time, features], got an array with shape {h.shape}")
        b, t, f = h.shape
        if f != self.n_features:
            raise ValueError(f"history has {f} features, the model expects {self.n_features} ({_names(self.feature_names)})")
        if t < 1:
            raise ValueError("history must contain at least one state per patient")
        if not np.isfinite(h).all():
            bi, ti, fi = np.argwhere(~np.isfinite(h))[0]
            raise ValueError(f"history contains NaN or infinite values (first: patient {bi}, time {ti}, "
                             f"feature {self.feature_names[fi]!r})")
        a = np.asarray(action)
        if a.shape != (b,):
            raise ValueError(f"action must have shape ({b},) to match history's batch, got {a.shape}")
        if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
            raise ValueError(f"action must be integer joint action ids 0..{N_ACTIONS - 1}, got dtype {a.dtype}")
        if np.issubdtype(a.dtype, np.floating) and not (np.isfinite(a).all() and (a == np.round(a)).all()):
            raise ValueError("action must be integer joint action ids, got non-integer values")
        if b and (a.min() < 0 or a.max() >= N_ACTIONS):
            bad = a[(a < 0) | (a >= N_ACTIONS)][0]
            raise ValueError(f"action {bad} is outside 0..{N_ACTIONS - 1} (joint action = 5 * fluid bin + vaso bin)")
        m = _infer_mask(h) if mask is None else np.asarray(mask, dtype=bool)
        if m.shape != (b, t):
            raise ValueError(f"mask must have shape {(b, t)}, got {m.shape}")
        h, m = _fit_window(h, m, self.window)
        return h, a.astype(np.int64), m

    # ----------------------------------------------------------------------------------- prediction
    def predict(self, history: object, action: object, mask: object = None, time: object = None) -> dict[str, np.ndarray]:
        """Next-state distribution and how the stay ends, for each patient of the batch.

        Returns (arrays, real units): ``mean`` [B, F] (binary features as probabilities, static carried),
        ``std`` [B, F] aleatoric, ``epistemic_std`` [B, F], ``p_binary`` [B, Db], ``p_vent`` [B] (nan if
        the cohort has no ventilation feature), ``p_death``, ``p_discharge``, ``p_continue`` [B] and
        ``p_death_epistemic_std`` [B].

        ``time`` [B]: decisions since admission of the newest state. Models trained with time as an input
        need it; when omitted it is taken as the number of real states in the window minus one, a lower
        bound that is exact only for stays shorter than the window.
        """
        h, a, m = self.check_inputs(history, action, mask)
        t = self._check_time(time, m)
        parts = [self._predict_chunk(h[i : i + CHUNK], a[i : i + CHUNK], m[i : i + CHUNK], t[i : i + CHUNK])
                 for i in range(0, max(len(a), 1), CHUNK)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def _check_time(self, time: object, mask: np.ndarray) -> np.ndarray:
        if time is None:
            return mask.sum(axis=1).astype(np.int64) - 1
        t = np.asarray(time)
        if t.shape != (len(mask),) or not np.isfinite(t.astype(np.float64)).all() or (t < 0).any():
            raise ValueError(f"time must be [{len(mask)}] non-negative decision counts, got shape {t.shape}")
        return t.astype(np.int64)

    def _predict_chunk(self, h: np.ndarray, a: np.ndarray, m: np.ndarray, t: np.ndarray) -> dict[str, np.ndarray]:
        norm, lay = self.normalizer, self.layout
        dyn, binary = list(lay.dynamic), list(lay.binary)
        z = norm.encode(h)
        with torch.no_grad():
            out = self.net(torch.from_numpy(z.astype(np.float32)), torch.from_numpy(m), torch.from_numpy(a),
                           torch.from_numpy(t))
        out = {k: v.double().numpy() for k, v in out.items()}
        d_mean, d_std = np.asarray(norm.delta_mean), np.asarray(norm.delta_std)
        z_last = z[:, -1, :]
        zm = np.repeat(z_last[None], self.config.members, axis=0)  # [M, B, F]
        zm[..., dyn] += out["delta_mean"] * d_std + d_mean
        zm[..., binary] = _sigmoid(out["binary_logits"])
        real = norm.decode(zm)
        real[..., lay.static] = h[None, :, -1, lay.static]
        var_z = (np.exp(out["delta_logvar"]) * d_std**2).mean(axis=0)
        std = np.zeros(h[:, -1].shape)
        std[:, dyn] = np.sqrt(var_z) * norm.real_per_model_unit(zm.mean(axis=0))[:, dyn]
        probs = _softmax(out["terminal_logits"])  # [M, B, 3]
        p_bin = real[..., binary].mean(axis=0)
        return {
            "mean": real.mean(axis=0),
            "std": std,
            "epistemic_std": real.std(axis=0),
            "p_binary": p_bin,
            "p_vent": p_bin[:, self._vent] if self._vent is not None else np.full(len(a), np.nan),
            "p_death": probs[..., TERM_DEATH].mean(axis=0),
            "p_discharge": probs[..., TERM_DISCHARGE].mean(axis=0),
            "p_continue": probs[..., TERM_CONTINUE].mean(axis=0),
            "p_death_epistemic_std": probs[..., TERM_DEATH].std(axis=0),
        }


def _infer_mask(h: np.ndarray) -> np.ndarray:
    """Slots of a leading run of states identical to their successor are padding."""
    b, t, _ = h.shape
    mask = np.ones((b, t), dtype=bool)
    if t > 1:
        same = np.all(h[:, 1:] == h[:, :-1], axis=2)
        mask[:, :-1] = ~np.logical_and.accumulate(same, axis=1)
    return mask


def _fit_window(h: np.ndarray, m: np.ndarray, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut to the last ``w`` slots, or left-pad with the first state (masked out)."""
    t = h.shape[1]
    if t >= w:
        return h[:, t - w :], m[:, t - w :]
    pad = w - t
    h = np.concatenate([np.repeat(h[:, :1], pad, axis=1), h], axis=1)
    m = np.concatenate([np.zeros((len(m), pad), dtype=bool), m], axis=1)
    return h, m


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _names(names: Sequence[str]) -> str:
    return ", ".join(names[:5]) + (f", ... {len(names) - 5} more" if len(names) > 5 else "")
