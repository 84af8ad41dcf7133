"""Generation engines' dtypes: the names a config may give, and what ``"auto"`` means on this machine.

Kept free of torch and vLLM imports so configs validate without loading an engine.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

DTYPES = ("auto", "float32", "bfloat16")


def cpu_has_native_bf16(cpuinfo: str | None = None) -> bool:
    """Whether this CPU multiplies bf16 in hardware (AVX512-BF16 or AMX-BF16 in /proc/cpuinfo's flags).

    Without them bf16 is emulated in software (unmeasured here), so ``"auto"`` keeps fp32 there.
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return bool({"avx512_bf16", "amx_bf16"} & set(flags))


def resolve_dtype(dtype: str, on_cpu: bool, cpuinfo: str | None = None) -> str:
    """The engine's weight and activation dtype. ``"auto"``: bf16 on GPUs and on CPUs with native bf16
    arithmetic, else fp32. Measured on the cpu preset's agent (2 cores, AVX512-BF16): the same greedy text
    as fp32 on every decision checked, 1.7x the decisions/s (README "Agent and rollouts")."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if dtype != "auto":
        return dtype
    return "bfloat16" if not on_cpu or cpu_has_native_bf16(cpuinfo) else "float32"


def engine_dtype_options(engine: str, dtype: str) -> dict[str, Any]:
    """The ``make_engine`` options that set ``dtype`` on engine kind ``engine``: vLLM resolves ``"auto"``
    itself (bf16 where native); the transformers engine stays fp32 unless bf16 is asked for (its CPU bf16
    speed is unmeasured)."""
    if engine == "vllm":
        return {"dtype": dtype}
    if dtype != "bfloat16":
        return {}
    import torch

    return {"dtype": torch.bfloat16}
