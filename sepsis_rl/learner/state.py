"""A learner rank's training state as plain tensors, loadable with ``torch.load(weights_only=True)``.

DeepSpeed's own ``save_checkpoint`` pickles its optimizer wrapper (``LossScaler`` objects, enums) and
loads it back with ``weights_only=False``: a tampered run folder would run code on ``--resume``. This
module saves only what resuming needs, as tensors, numbers, strings and lists, so loading it can never
call anything:

- ZeRO 1/2: this rank's fp32 master partition per parameter group and the base optimizer's state
  (AdamW moments and step). Restoring copies the partition back and re-gathers the bit16 weights on all
  ranks (``update_lp_params``, a collective: every rank restores together).
- ZeRO 3: this rank's flat fp32 partitions and the base optimizer's state, restored through DeepSpeed's
  own rigid loader (which copies fp32 into the bit16 partitions) with this engine's loss scaler.
- ZeRO 0 (plain torch optimizer): the module's state dict and the optimizer's.
- Every rank: its Python, NumPy and torch RNG states and its update count.
"""

from __future__ import annotations

import io
import random
from typing import Any

import numpy as np
import torch


class UnsupportedCheckpointError(ValueError):
    pass


def _numpy_rng() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)  # type: ignore[misc]
    return {"name": name, "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def rng_state() -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    return {"python": [version, list(internal), gauss], "numpy": _numpy_rng(), "torch": torch.get_rng_state()}


def set_rng_state(s: dict[str, Any]) -> None:
    version, internal, gauss = s["python"]
    random.setstate((version, tuple(internal), gauss))
    n = s["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(s["torch"])


def engine_state(engine: Any) -> dict[str, Any]:
    """This rank's share of the model and optimizer state (tensors on CPU)."""
    opt = engine.optimizer
    if hasattr(opt, "single_partition_of_fp32_groups"):  # ZeRO 1/2
        return {"kind": "zero12", "fp32": [t.detach().cpu().clone() for t in opt.single_partition_of_fp32_groups],
                "base": opt.optimizer.state_dict()}
    if hasattr(opt, "fp32_partitioned_groups_flat"):  # ZeRO 3
        return {"kind": "zero3", "fp32": [t.detach().cpu().clone() for t in opt.fp32_partitioned_groups_flat],
                "base": opt.state_dict()["optimizer_state_dict"]}
    if isinstance(opt, torch.optim.Optimizer):  # ZeRO 0, fp32
        return {"kind": "torch", "module": {k: v.detach().cpu() for k, v in engine.module.state_dict().items()},
                "base": opt.state_dict()}
    raise UnsupportedCheckpointError(f"checkpoints support ZeRO 0 in fp32 and ZeRO 1-3 (this learner's optimizer is "
                                     f"{type(opt).__name__})")


def restore_engine_state(engine: Any, state: dict[str, Any]) -> None:
    opt = engine.optimizer
    if state["kind"] == "zero12":
        if len(state["fp32"]) != len(opt.single_partition_of_fp32_groups):
            raise ValueError("the checkpoint's parameter groups do not match this learner")
        for saved, live in zip(state["fp32"], opt.single_partition_of_fp32_groups):
            if saved.shape != live.shape:
                raise ValueError(f"checkpoint partition of shape {tuple(saved.shape)} does not fit {tuple(live.shape)} "
                                 "(same model, ZeRO stage and number of ranks are needed)")
            live.data.copy_(saved.to(live.device))
        opt.optimizer.load_state_dict(state["base"])
        opt.update_lp_params()  # bit16 weights from the fp32 masters, gathered on every rank
        return
    if state["kind"] == "zero3":
        live = opt.state_dict()  # this engine's own loss scaler and partition metadata; only tensors come from the file
        opt._rigid_load_state_dict({**live, "optimizer_state_dict": state["base"], "fp32_flat_groups": state["fp32"]})
        return
    engine.module.load_state_dict(state["module"])
    opt.load_state_dict(state["base"])


def dumps(state: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def loads(data: bytes) -> dict[str, Any]:
    """Tensors and plain containers only: a pickle that names any other callable is refused, never run."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
