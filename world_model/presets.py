"""Named training presets: one place that says how big a model is and how long it may train.

``tiny``  seconds on a laptop core: for tests and smoke runs, not for use.
``cpu``   the default: a 5-member ensemble that trains on 10,000 synthetic patients within a few
          minutes on 2 cores (hard cap ``max_minutes``), and meets the accuracy targets.
``gpu``   wider and deeper, larger batches and a longer budget, on CUDA when available.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from sepsis_rl.curriculum.config import ConfigError
from world_model.data import DataConfig
from world_model.losses import LossConfig
from world_model.network import ModelConfig

DEFAULT_ARCH: Literal["mlp", "gru"] = "mlp"
PRESET_NAMES = ("tiny", "cpu", "gpu")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation: AdamW, bootstrap per member, per-member early stopping on the validation loss."""

    epochs: int = 40
    batch_size: int = 512
    lr: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 4  # epochs without validation improvement before a member stops improving
    min_delta: float = 1e-4
    max_minutes: float = 10.0  # wall-clock cap; the best weights so far are kept
    bootstrap: bool = True  # each member trains on its own resample of the training rows
    seed: int = 0
    device: str = "cpu"  # "cpu", "cuda" or "auto"
    threads: int | None = None  # torch intra-op threads (None: all cores)
    progress: bool = True

    def __post_init__(self) -> None:
        checks = (("epochs", self.epochs >= 1, ">= 1"), ("batch_size", self.batch_size >= 1, ">= 1"),
                  ("lr", self.lr > 0, "> 0"), ("weight_decay", self.weight_decay >= 0, ">= 0"),
                  ("patience", self.patience >= 1, ">= 1"), ("min_delta", self.min_delta >= 0, ">= 0"),
                  ("max_minutes", self.max_minutes > 0, "> 0"),
                  ("device", self.device in ("cpu", "cuda", "auto"), "one of cpu, cuda, auto"),
                  ("threads", self.threads is None or self.threads >= 1, ">= 1 or None"))
        for key, ok, meaning in checks:
            if not ok:  # NaN fails every comparison, so it is refused too
                raise ConfigError(f"world-model train.{key} must be {meaning}, got {getattr(self, key)!r}")


@dataclass(frozen=True)
class Preset:
    name: str
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    loss: LossConfig = field(default_factory=LossConfig)


_PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        "tiny",
        model=ModelConfig(hidden=64, layers=2, gru_hidden=32, members=2, time_input=True),
        train=TrainConfig(epochs=20, batch_size=128, lr=3e-3, patience=3, max_minutes=0.5),
    ),
    "cpu": Preset(
        "cpu",
        model=ModelConfig(hidden=256, layers=2, gru_hidden=128, members=5, time_input=True),
        train=TrainConfig(epochs=40, batch_size=512, lr=2e-3, patience=4, max_minutes=10.0),
    ),
    "gpu": Preset(
        "gpu",
        model=ModelConfig(hidden=512, layers=3, gru_hidden=256, members=5, time_input=True),
        train=TrainConfig(epochs=100, batch_size=2048, lr=2e-3, patience=6, max_minutes=30.0, device="auto"),
    ),
}


def get_preset(name: str = "cpu", arch: str | None = None, seed: int | None = None, **train_overrides) -> Preset:
    """A named preset, optionally with another architecture, seed or training fields."""
    if name not in _PRESETS:
        raise ConfigError(f"unknown world-model preset {name!r} (choose from {', '.join(PRESET_NAMES)})")
    p = _PRESETS[name]
    try:
        model = replace(p.model, arch=arch or DEFAULT_ARCH)
        train = replace(p.train, **({"seed": seed} if seed is not None else {}), **train_overrides)
    except TypeError as e:  # an unknown override key
        raise ConfigError(f"world-model preset {name!r}: {e}") from None
    return replace(p, model=model, train=train)
