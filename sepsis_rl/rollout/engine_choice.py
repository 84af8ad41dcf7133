"""Which generation engine ``"auto"`` means on this machine: vLLM where it is installed, else transformers.

One default for serving, evaluation and rollouts. vLLM's prefix cache makes the agent's decisions ~3x faster
than transformers on CPU too (README "Agent and rollouts"), and `bash .ci/vllm_env` (the README's setup)
installs its CPU build; a plain `pip install -e .` has no vLLM and gets transformers. Kept free of engine
imports: it only asks whether the package is there.
"""

from __future__ import annotations

import importlib.util
import logging

ENGINES = ("transformers", "vllm")
ENGINE_CHOICES = ("auto", *ENGINES)

log = logging.getLogger(__name__)


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def resolve_engine(kind: str, installed: bool | None = None) -> str:
    """``kind`` itself, or for ``"auto"`` vLLM when installed (``installed`` overrides the check) else
    transformers. An explicit ``"vllm"`` without vLLM fails here, in one line, before any model loads."""
    if kind not in ENGINE_CHOICES:
        raise ValueError(f"engine must be one of {', '.join(ENGINE_CHOICES)}, got {kind!r}")
    have_vllm = vllm_installed() if installed is None else installed
    if kind == "auto":
        chosen = "vllm" if have_vllm else "transformers"
        log.info("engine auto -> %s (%s)", chosen, "vLLM is installed" if have_vllm else "vLLM is not installed")
        return chosen
    if kind == "vllm" and not have_vllm:
        raise ValueError("engine vllm: vLLM is not installed (on CPU: bash .ci/vllm_env; on GPUs: pip install -e '.[gpu]')")
    return kind
