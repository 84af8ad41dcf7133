"""Training objective of the dynamics ensemble, one value per member.

* dynamic continuous features: beta-NLL (Seitzer et al., 2022) of the normalised delta. Plain Gaussian
  NLL lets a member "explain away" hard features with a large variance and fit their mean poorly;
  weighting each term by the (detached) predicted variance to the power ``beta`` keeps the mean fit
  close to MSE's while still learning calibrated variances. ``beta = 0`` is the plain NLL.
* binary features: cross-entropy of the next value, on transitions only.
* endings: 3-way cross-entropy (continue / death / survival) on every row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class LossConfig:
    beta: float = 0.5
    binary_weight: float = 1.0
    terminal_weight: float = 1.0


def member_losses(out: dict[str, torch.Tensor], batch: dict[str, torch.Tensor], cfg: LossConfig) -> dict[str, torch.Tensor]:
    """Per-member losses [M] (``total`` and its parts); batch tensors are [M, B, ...]."""
    has = batch["has_next"].to(out["delta_mean"].dtype)  # [M, B]
    n_next = has.sum(dim=1).clamp_min(1.0)
    mu, lv = out["delta_mean"], out["delta_logvar"]
    nll = 0.5 * (lv + (batch["delta"] - mu) ** 2 * torch.exp(-lv) + math.log(2 * math.pi))
    if cfg.beta > 0:
        nll = nll * torch.exp(lv.detach() * cfg.beta)
    state = (nll.mean(dim=2) * has).sum(dim=1) / n_next
    if out["binary_logits"].shape[-1]:
        bce = F.binary_cross_entropy_with_logits(out["binary_logits"], batch["binary"], reduction="none")
        binary = (bce.mean(dim=2) * has).sum(dim=1) / n_next
    else:
        binary = torch.zeros_like(state)
    logits = out["terminal_logits"]
    term = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["terminal"].reshape(-1), reduction="none")
    terminal = term.view(logits.shape[:2]).mean(dim=1)
    total = state + cfg.binary_weight * binary + cfg.terminal_weight * terminal
    return {"total": total, "state": state, "binary": binary, "terminal": terminal}
