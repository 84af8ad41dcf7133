"""One engine for several LLM policies: signatures, in-place re-weighting, and the evaluation's actor slots."""

import json
import shutil

import pytest
import torch

from sepsis_rl.eval.engine_slot import EngineSlot, model_signature
from sepsis_rl.eval.evaluate import EvalConfig
from sepsis_rl.eval.llm_evaluator import group_by_signature
from sepsis_rl.eval.run import llm_slots
from sepsis_rl.rollout.engine import SamplingParams
from sepsis_rl.rollout.transformers_engine import TransformersEngine


@pytest.fixture(scope="module")
def two_checkpoints(tiny_model_dir, tmp_path_factory):
    """The tiny model and a copy with perturbed weights (same architecture and tokenizer)."""
    from transformers import AutoModelForCausalLM

    other = tmp_path_factory.mktemp("other") / "model"
    shutil.copytree(tiny_model_dir, other)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5 * torch.randn(p.shape, generator=gen))
    model.save_pretrained(other)
    return tiny_model_dir, str(other)


def _greedy(engine):
    tok = engine.tokenizer
    ps = [tok("MAP 58 mmHg, lactate 4.2").input_ids, tok("Hour 8 of the ICU stay").input_ids]
    return [g.token_ids for g in engine.generate(ps, SamplingParams(max_new_tokens=10, temperature=0))]


def test_signature_ignores_names_and_weights_but_not_architecture_or_tokenizer(two_checkpoints, tmp_path):
    a, b = two_checkpoints
    assert model_signature(a) == model_signature(b)  # weights differ, nothing else
    renamed = tmp_path / "renamed"
    shutil.copytree(a, renamed)
    cfg = json.loads((renamed / "config.json").read_text())
    (renamed / "config.json").write_text(json.dumps({**cfg, "_name_or_path": "elsewhere", "transformers_version": "0"}))
    assert model_signature(renamed) == model_signature(a)
    (renamed / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": cfg["num_hidden_layers"] + 1}))
    assert model_signature(renamed) != model_signature(a)
    (renamed / "config.json").write_text(json.dumps(cfg))
    (renamed / "tokenizer_config.json").write_text("{}")
    assert model_signature(renamed) != model_signature(a)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        model_signature(tmp_path)


def test_slot_reweights_its_engine_to_decide_as_a_fresh_one(two_checkpoints, tmp_path):
    a, b = two_checkpoints
    torch.set_num_threads(2)
    slot = EngineSlot()
    first = slot.get("transformers", a)
    on_a = _greedy(first)
    assert slot.get("transformers", b) is first and slot.swaps == 1  # same engine, b's weights
    assert _greedy(first) == _greedy(TransformersEngine(b)) != on_a
    assert slot.get("transformers", a) is first and _greedy(first) == on_a and slot.swaps == 2
    other_arch = tmp_path / "other_arch"
    shutil.copytree(a, other_arch)
    cfg = json.loads((other_arch / "config.json").read_text())
    (other_arch / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": cfg["num_hidden_layers"] + 1}))
    with pytest.raises(ValueError, match="serves another checkpoint"):
        slot.get("transformers", str(other_arch))
    with pytest.raises(ValueError, match="serves another checkpoint"):
        slot.get("transformers", a, dtype="bfloat16")  # other engine options: another engine
    slot.close()
    assert slot.engine is None


def test_llm_policies_grouped_by_signature_and_slots_per_resource(two_checkpoints, tmp_path):
    a, b = two_checkpoints
    other = tmp_path / "other"
    shutil.copytree(a, other)
    (other / "tokenizer_config.json").write_text("{}")
    model_of = {"agent": a, "after_bc": b, "after_sft": str(other), "base_llm_wm": a, "base_llm": str(tmp_path / "missing")}
    assert group_by_signature(["agent", "after_bc", "after_sft", "base_llm_wm", "base_llm"], model_of.__getitem__) == \
        [["agent", "after_bc", "base_llm_wm"], ["after_sft"], ["base_llm"]]  # unreadable: alone, fails in its actor
    assert llm_slots(EvalConfig(llm_cpus=2), {"CPU": 3.0}) == 1  # the cpu preset's pipeline: one engine at a time
    assert llm_slots(EvalConfig(llm_cpus=2), {"CPU": 1.0}) == 1  # never zero
    assert llm_slots(EvalConfig(llm_cpus=2, llm_gpus=1), {"CPU": 64.0, "GPU": 4.0}) == 4  # one engine per GPU


def test_queue_knows_what_it_never_submitted():
    """A stalled evaluation fails the LLM policies no actor was given yet (they must still get a result row)."""
    from sepsis_rl.eval.llm_evaluator import LLMQueue

    queue = LLMQueue([["agent", "after_bc"], [], ["after_sft"]], sources=None, cfg=None, slots=0, resources={})
    assert queue.slots == 1 and not queue.done and queue.unsubmitted() == ["agent", "after_bc", "after_sft"]
    assert LLMQueue([[], []], None, None, 1, {}).done
