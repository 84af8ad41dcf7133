"""One generation engine kept between the LLM policies an evaluation actor plays in turn.

The curriculum's checkpoints (base model, SFT, BC, the agent) share architecture and tokenizer, so the
second and later policies reuse the running engine with their weights loaded in place
(``engine.load_weights``, which also drops the prefix cache) instead of starting one: on 2 CPU cores a
vLLM engine takes ~31 s to import and start (runs/cpu23's stage rows), a weight swap ~2 s. Checkpoints
that differ in anything the engine was built from (``model_signature``) never share an engine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# config.json keys that name or describe a checkpoint without changing the network the engine builds
NON_STRUCTURAL_KEYS = ("_name_or_path", "_model_name_or_path", "transformers_version", "dtype", "torch_dtype")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json")


def model_signature(model_path: str | Path) -> str:
    """A digest of what an engine is built from: the network's config and the tokenizer's files.

    Two checkpoints with the same signature differ only in their weights, so one engine serves both."""
    root = Path(model_path)
    config_file = root / "config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"{root}: no config.json (not a model folder)")
    config = {k: v for k, v in json.loads(config_file.read_text()).items() if k not in NON_STRUCTURAL_KEYS}
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    for name in TOKENIZER_FILES:
        f = root / name
        h.update(name.encode() + (f.read_bytes() if f.is_file() else b"<absent>"))
    return h.hexdigest()[:16]


def read_weights(model_path: str | Path) -> dict[str, Any]:
    """The checkpoint's tensors by name (every ``*.safetensors`` shard of the folder)."""
    from safetensors.torch import load_file

    shards = sorted(Path(model_path).glob("*.safetensors"))
    if not shards:
        raise FileNotFoundError(f"{model_path}: no *.safetensors weights to load into the running engine")
    weights: dict[str, Any] = {}
    for shard in shards:
        weights.update(load_file(str(shard)))
    return weights


class EngineSlot:
    """Hands out one engine per process: built on first use, re-weighted for later checkpoints.

    Only one policy uses the slot's engine at a time (an evaluation actor plays its policies in turn);
    a checkpoint with another signature, engine kind or options is refused, never silently rebuilt
    (a second vLLM engine in the same process does not start cleanly)."""

    def __init__(self) -> None:
        self.engine: Any | None = None
        self.key: tuple | None = None
        self.model_path: str | None = None
        self.swaps = 0

    def get(self, kind: str, model_path: str, **options: Any) -> Any:
        from sepsis_rl.rollout.worker import make_engine

        key = (kind, tuple(sorted(options.items())), model_signature(model_path))
        if self.engine is None:
            self.engine, self.key, self.model_path = make_engine(kind, model_path, **options), key, str(model_path)
            return self.engine
        if key != self.key:
            raise ValueError(f"{model_path}: this engine slot serves another checkpoint kind ({self.key[0]}, "
                             f"options {dict(self.key[1])}, signature {self.key[2]}); got {key[0]}, {dict(key[1])}, {key[2]}")
        if str(model_path) != self.model_path:
            t0 = time.perf_counter()
            self.engine.load_weights(read_weights(model_path))
            self.model_path, self.swaps = str(model_path), self.swaps + 1
            log.info("engine re-weighted with %s in %.1f s", model_path, time.perf_counter() - t0)
        return self.engine

    def close(self) -> None:
        if self.engine is not None and hasattr(self.engine, "close"):
            self.engine.close()
        self.engine = self.key = self.model_path = None
