"""The dynamics network: M ensemble members mapping (window, action) to next-state and ending heads.

Everything here works in model space (standardised features, normalised deltas). Two encoders share
the same heads: ``mlp`` reads the flattened window, ``gru`` runs a GRU over it (padding slots leave
the hidden state untouched) and adds the last state as a skip input. Outputs per member:

* ``delta_mean`` / ``delta_logvar`` [M, B, Dc]: Gaussian over the normalised change of each dynamic
  continuous feature (log-variance soft-clamped so the NLL cannot run away);
* ``binary_logits`` [M, B, Db]: next value of each binary feature;
* ``terminal_logits`` [M, B, 3]: the stay continues / ends this step in death / in survival.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from sepsis_rl.cohort.spec import N_ACTIONS, N_BINS
from world_model.layers import EnsembleGRUCell, EnsembleLinear, EnsembleMLP
from world_model.normalize import FeatureLayout

ACTION_FEATURES = N_ACTIONS + 2  # one-hot joint action + ordinal fluid and vasopressor bins


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the ensemble (dimensions come from the cohort's FeatureLayout)."""

    arch: Literal["mlp", "gru"] = "mlp"
    window: int = 4
    hidden: int = 256
    layers: int = 2
    gru_hidden: int = 128
    members: int = 5
    dropout: float = 0.0
    min_logvar: float = -6.0
    max_logvar: float = 3.0
    # time since admission as an input (discharge needs >= 3 steps, stays are capped): checkpoints from
    # before it was added load with False
    time_input: bool = False

    def __post_init__(self) -> None:
        if self.arch not in ("mlp", "gru"):
            raise ValueError(f"arch must be 'mlp' or 'gru', got {self.arch!r}")
        if self.members < 1 or self.window < 1 or self.hidden < 1 or self.layers < 1:
            raise ValueError(f"members, window, hidden and layers must be >= 1: {self}")


TIME_FEATURES = 2
TIME_CAP = 20.0  # steps; stays are capped at 20 decisions in the synthetic cohort


def time_features(time: torch.Tensor) -> torch.Tensor:
    """[..] decisions since admission -> [.., 2]: capped time scaled to [0, 1] and "at least 3 steps"."""
    t = time.to(torch.float32)
    return torch.stack([torch.clamp(t, 0, TIME_CAP) / TIME_CAP, (t >= 3).to(torch.float32)], dim=-1)


def action_features(action: torch.Tensor) -> torch.Tensor:
    """[..] joint actions -> [.., 27]: one-hot plus fluid and vasopressor bin scaled to [0, 1].

    The ordinal part lets the model share strength between neighbouring doses, which matters for
    rarely logged (counterfactual) actions.
    """
    onehot = F.one_hot(action, N_ACTIONS).to(torch.float32)
    fluid = (action // N_BINS).to(torch.float32) / (N_BINS - 1)
    vaso = (action % N_BINS).to(torch.float32) / (N_BINS - 1)
    return torch.cat([onehot, fluid[..., None], vaso[..., None]], dim=-1)


class DynamicsEnsemble(nn.Module):
    """All M members in one module; every parameter has the member axis first."""

    def __init__(self, config: ModelConfig, layout: FeatureLayout):
        super().__init__()
        self.config = config
        self.n_features = layout.n_features
        self.n_dynamic = len(layout.dynamic)
        self.n_binary = len(layout.binary)
        m, f, w = config.members, layout.n_features, config.window
        if config.arch == "mlp":
            trunk_in = w * (f + 1) + ACTION_FEATURES
        else:
            self.cell = EnsembleGRUCell(m, f + 1, config.gru_hidden)
            trunk_in = config.gru_hidden + f + ACTION_FEATURES
        trunk_in += TIME_FEATURES if config.time_input else 0
        self.trunk = EnsembleMLP(m, trunk_in, config.hidden, config.layers, config.dropout)
        out = 2 * self.n_dynamic + self.n_binary + 3
        self.head = EnsembleLinear(m, config.hidden, out, init_scale=0.1)

    def forward(self, window: torch.Tensor, mask: torch.Tensor, action: torch.Tensor,
                time: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """window [B, W, F] or [M, B, W, F] (model space), mask [(M,) B, W] bool, action [(M,) B] long,
        time [(M,) B] decisions since admission (required when the model takes time as an input)."""
        m = self.config.members
        if self.config.time_input and time is None:
            raise ValueError("this world model takes the time since admission as an input: pass time")
        if time is None:
            time = torch.zeros_like(action)
        if window.dim() == 3:  # one batch shared by all members
            window, mask, action, time = (t.unsqueeze(0).expand(m, *t.shape) for t in (window, mask, action, time))
        maskf = mask.to(window.dtype)
        a = action_features(action)
        if self.config.time_input:
            a = torch.cat([a, time_features(time)], dim=-1)
        if self.config.arch == "mlp":
            steps = torch.cat([window, maskf[..., None]], dim=-1)
            h = torch.cat([steps.flatten(2), a], dim=-1)
        else:
            h = self._encode_gru(window, maskf)
            h = torch.cat([h, window[:, :, -1, :], a], dim=-1)
        out = self.head(self.trunk(h))
        dc, db = self.n_dynamic, self.n_binary
        lo, hi = self.config.min_logvar, self.config.max_logvar
        raw_lv = out[..., dc : 2 * dc]
        logvar = hi - F.softplus(hi - raw_lv)
        logvar = lo + F.softplus(logvar - lo)
        return {
            "delta_mean": out[..., :dc],
            "delta_logvar": logvar,
            "binary_logits": out[..., 2 * dc : 2 * dc + db],
            "terminal_logits": out[..., 2 * dc + db :],
        }

    def _encode_gru(self, window: torch.Tensor, maskf: torch.Tensor) -> torch.Tensor:
        m, b, w, _ = window.shape
        h = window.new_zeros(m, b, self.config.gru_hidden)
        for t in range(w):
            keep = maskf[:, :, t, None]
            x = torch.cat([window[:, :, t], keep], dim=-1)
            h = keep * self.cell(x, h) + (1 - keep) * h
        return h

    def member_slice_(self, source: "DynamicsEnsemble", members: torch.Tensor) -> None:
        """Copy the parameters of the given member indices from ``source`` (per-member early stopping)."""
        with torch.no_grad():
            for p_dst, p_src in zip(self.parameters(), source.parameters()):
                p_dst[members] = p_src[members]
