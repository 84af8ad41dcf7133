"""Ensemble-batched layers: M independent networks evaluated as one batched matmul.

Training and querying M small members one after another would cost M Python round trips and M small
matmuls; stacking their weights ([M, in, out]) runs the whole ensemble in one ``baddbmm`` per layer,
which is what makes a 5-member ensemble affordable on two CPU cores. Inputs are [M, B, ...].
"""

from __future__ import annotations

import math

import torch
from torch import nn


class EnsembleLinear(nn.Module):
    """M independent affine maps; x [M, B, in] -> [M, B, out]. Init as ``nn.Linear`` (per member)."""

    def __init__(self, members: int, in_features: int, out_features: int, init_scale: float = 1.0):
        super().__init__()
        bound = init_scale / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(members, in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, 1, out_features).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleMLP(nn.Module):
    """Stack of EnsembleLinear + SiLU (+ LayerNorm-free, the inputs are already standardised)."""

    def __init__(self, members: int, in_features: int, hidden: int, layers: int, dropout: float = 0.0):
        super().__init__()
        dims = [in_features] + [hidden] * layers
        self.layers = nn.ModuleList(EnsembleLinear(members, a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out_features = dims[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = self.dropout(nn.functional.silu(layer(x)))
        return x


class EnsembleGRUCell(nn.Module):
    """A GRU cell per member (gates r, z, candidate n as in ``nn.GRUCell``); x [M, B, in], h [M, B, H]."""

    def __init__(self, members: int, in_features: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.x2h = EnsembleLinear(members, in_features, 3 * hidden)
        self.h2h = EnsembleLinear(members, hidden, 3 * hidden)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        xr, xz, xn = self.x2h(x).chunk(3, dim=-1)
        hr, hz, hn = self.h2h(h).chunk(3, dim=-1)
        r = torch.sigmoid(xr + hr)
        z = torch.sigmoid(xz + hz)
        n = torch.tanh(xn + r * hn)
        return (1 - z) * n + z * h
