"""Training of the dynamics ensemble on a cohort's train split, early-stopped on its val split.

All M members train in the same batched forward/backward pass, each on its own bootstrap resample of
the training rows (different data order and initialisation make the members disagree where data is
thin, which is the epistemic uncertainty). Each member keeps its own best weights (per-member early
stopping); training ends when no member has improved for ``patience`` epochs, at ``epochs``, or at the
wall-clock cap. Windows are gathered from index arrays on the fly, so memory stays O(rows x F).
"""

from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sepsis_rl.cohort.store import read_cohort
from sepsis_rl.cohort.validation import CohortInputError
from world_model.data import Windows, fit_normalizer, make_windows
from world_model.learned_reward import LearnedReward, reward_column
from world_model.losses import member_losses
from world_model.model import WorldModel
from world_model.network import DynamicsEnsemble
from world_model.normalize import FeatureLayout, Normalizer
from world_model.presets import Preset, TrainConfig

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    model: WorldModel
    history: list[dict] = field(default_factory=list)  # one entry per epoch
    best_epoch: list[int] = field(default_factory=list)  # per member
    seconds: float = 0.0
    stopped: str = "epochs"  # "epochs" | "early" | "time"

    def summary(self) -> dict:
        last = self.history[-1] if self.history else {}
        return {"seconds": round(self.seconds, 2), "epochs": len(self.history), "stopped": self.stopped,
                "best_epoch": self.best_epoch, "final": last}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CohortInputError("device 'cuda' requested but no CUDA GPU is available (use preset cpu)")
    return torch.device(name)


def to_tensors(w: Windows, norm: Normalizer, layout: FeatureLayout, device: torch.device) -> dict[str, torch.Tensor]:
    """Model-space tensors of a split: states once, windows as indices."""
    z = norm.encode(w.x)
    has = w.has_next
    nxt = z[np.maximum(w.next_idx, 0)]
    dyn, binary = list(layout.dynamic), list(layout.binary)
    delta = (nxt[:, dyn] - z[:, dyn] - np.asarray(norm.delta_mean)) / np.asarray(norm.delta_std)
    delta[~has] = 0.0
    t = {
        "z": z.astype(np.float32), "hist_idx": w.hist_idx, "mask": w.mask, "action": w.action, "time": w.step,
        "delta": delta.astype(np.float32), "binary": np.where(has[:, None], nxt[:, binary], 0).astype(np.float32),
        "has_next": has, "terminal": w.terminal,
    }
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in t.items()}


def gather(t: dict[str, torch.Tensor], idx: torch.Tensor) -> dict[str, torch.Tensor]:
    """Batch [M, B, ...] for row indices ``idx`` [M, B]."""
    out = {k: t[k][idx] for k in ("mask", "action", "time", "delta", "binary", "has_next", "terminal")}
    out["window"] = t["z"][t["hist_idx"][idx]]
    return out


def evaluate_loss(net: DynamicsEnsemble, t: dict[str, torch.Tensor], preset: Preset, chunk: int = 8192) -> dict[str, np.ndarray]:
    """Per-member losses over a whole split (every member sees every row)."""
    m = net.config.members
    n = len(t["action"])
    n_next = max(int(t["has_next"].sum()), 1)
    sums: dict[str, np.ndarray] = {}
    with torch.no_grad():
        for i in range(0, n, chunk):
            rows = torch.arange(i, min(i + chunk, n), device=t["z"].device)
            b = gather(t, rows[None].expand(m, -1))
            out = net(b["window"], b["mask"], b["action"], b["time"])
            parts = {k: v * len(rows) / n for k, v in member_losses(out, b, preset.loss).items()}
            err = (out["delta_mean"] - b["delta"]).abs().mean(dim=2) * b["has_next"]
            parts["mae"] = err.sum(dim=1) / n_next  # normalised-delta units
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v.cpu().numpy()
    return sums


def train_world_model(cohort_dir: str | os.PathLike, preset: Preset) -> TrainResult:
    """Train on ``cohort_dir``'s train split with early stopping on val; see the module docstring."""
    cfg: TrainConfig = preset.train
    if not Path(cohort_dir).is_dir():
        raise FileNotFoundError(f"cohort folder {cohort_dir} does not exist")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    cohort = read_cohort(cohort_dir, splits=("train", "val"))
    spec = cohort.spec
    layout = FeatureLayout.from_spec(spec)
    if not layout.dynamic:
        raise CohortInputError(f"{cohort_dir}: the cohort has no dynamic continuous features to model")
    w = preset.model.window
    train_w, val_w = make_windows(cohort.table("train"), spec, w), make_windows(cohort.table("val"), spec, w)
    if int(train_w.has_next.sum()) < 2 or len(val_w) < 1:
        raise CohortInputError(f"{cohort_dir}: too few rows to train a world model (train {len(train_w)}, val {len(val_w)})")
    norm = fit_normalizer(train_w, layout, preset.data)
    tr, va = to_tensors(train_w, norm, layout, device), to_tensors(val_w, norm, layout, device)

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    net = DynamicsEnsemble(preset.model, layout).to(device)
    best = copy.deepcopy(net)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=1)
    m, n = preset.model.members, len(train_w)
    rows = rng.integers(0, n, (m, n)) if cfg.bootstrap else np.tile(np.arange(n), (m, 1))
    steps = max(1, n // cfg.batch_size)
    best_loss, bad = np.full(m, np.inf), np.zeros(m, dtype=int)
    result = TrainResult(model=None, best_epoch=[0] * m)  # type: ignore[arg-type]
    t0 = time.perf_counter()
    bar = tqdm(total=cfg.epochs * steps, desc=f"world model ({preset.model.arch}, {m} members)",
               disable=not cfg.progress, unit="step")
    for epoch in range(1, cfg.epochs + 1):
        net.train()
        order = torch.from_numpy(np.take_along_axis(rows, rng.permuted(np.tile(np.arange(n), (m, 1)), axis=1), 1)).to(device)
        running = 0.0
        for s in range(steps):
            b = gather(tr, order[:, s * cfg.batch_size : (s + 1) * cfg.batch_size])
            loss = member_losses(net(b["window"], b["mask"], b["action"], b["time"]), b, preset.loss)["total"].sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running += float(loss.detach()) / m
            bar.update(1)
        net.eval()
        val = evaluate_loss(net, va, preset)
        improved = val["total"] < best_loss - cfg.min_delta
        if improved.any():
            best.member_slice_(net, torch.from_numpy(np.nonzero(improved)[0]).to(device))
        best_loss = np.where(improved, val["total"], best_loss)
        bad = np.where(improved, 0, bad + 1)
        result.best_epoch = [epoch if imp else be for imp, be in zip(improved, result.best_epoch)]
        sched.step(float(val["total"].mean()))
        entry = {"epoch": epoch, "train_loss": running / steps, "lr": opt.param_groups[0]["lr"],
                 **{f"val_{k}": float(v.mean()) for k, v in val.items()}, "seconds": time.perf_counter() - t0}
        result.history.append(entry)
        bar.set_postfix(train=f"{entry['train_loss']:.3f}", val=f"{entry['val_total']:.3f}", mae=f"{entry['val_mae']:.3f}")
        log.debug("epoch %s: %s", epoch, entry)
        if (bad >= cfg.patience).all():
            result.stopped = "early"
            break
        if time.perf_counter() - t0 > cfg.max_minutes * 60:
            result.stopped = "time"
            break
    bar.close()
    result.seconds = time.perf_counter() - t0
    result.model = WorldModel(best.cpu().eval(), preset.model, layout, norm, spec)
    if reward_column(spec) is not None:
        result.model.learned_reward = LearnedReward.fit(cohort.table("train"), cohort.table("val"), spec)
        log.info("learned the cohort's reward column %r for simulation: val R^2 %.3f", reward_column(spec),
                 result.model.learned_reward.val_r2 or float("nan"))
    return result
