"""Engine contract on the transformers engine: greedy determinism, exact behaviour log-probs, stops, weights."""

import math

import pytest
import torch

from sepsis_rl.rollout.engine import SamplingParams
from sepsis_rl.rollout.transformers_engine import TransformersEngine


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    torch.set_num_threads(2)
    return TransformersEngine(tiny_model_dir)


def prompts(engine):
    tok = engine.tokenizer
    return [tok("MAP 58 mmHg, lactate 4.2").input_ids, tok("Hour 8 of the ICU stay. Propose").input_ids[:5]]


def test_greedy_is_deterministic_and_batch_equals_single(engine):
    ps = prompts(engine)
    params = SamplingParams(max_new_tokens=12, temperature=0)
    batch = engine.generate(ps, params)
    again = engine.generate(ps, params)
    assert [g.token_ids for g in batch] == [g.token_ids for g in again]
    for p, g in zip(ps, batch):  # left padding must not change a row's output
        single = engine.generate([p], params)[0]
        assert single.token_ids == g.token_ids
        assert single.logprobs == pytest.approx(g.logprobs, abs=1e-4)


def test_sampled_logprobs_match_teacher_forcing(engine):
    ps = prompts(engine)
    params = SamplingParams(max_new_tokens=10, temperature=0.8, seed=3)
    for p, g in zip(ps, engine.generate(ps, params)):
        assert len(g.token_ids) == len(g.logprobs) > 0
        assert all(lp <= 0 for lp in g.logprobs)
        assert engine.score(p, g.token_ids, temperature=0.8) == pytest.approx(g.logprobs, abs=1e-4)


def test_seed_reproduces_samples(engine):
    ps = prompts(engine)
    a = engine.generate(ps, SamplingParams(max_new_tokens=8, temperature=1.0, seed=7))
    b = engine.generate(ps, SamplingParams(max_new_tokens=8, temperature=1.0, seed=7))
    assert [g.token_ids for g in a] == [g.token_ids for g in b]


def test_stop_string_cuts_the_completion(engine):
    ps = prompts(engine)
    g = engine.generate(ps[:1], SamplingParams(max_new_tokens=12, temperature=0))[0]
    assert g.finish_reason in ("length", "stop")
    # a clean piece of the greedy text itself as stop string: the completion must end right after it
    tok = engine.tokenizer
    k = next(k for k in range(2, len(g.token_ids)) if tok.decode(g.token_ids[:k]).strip() and "\ufffd" not in tok.decode(g.token_ids[:k]))
    stop = tok.decode(g.token_ids[:k]).strip()
    cut = engine.generate(ps[:1], SamplingParams(max_new_tokens=12, temperature=0, stop=(stop,)))[0]
    assert cut.finish_reason == "stop" and len(cut.token_ids) <= k and stop in tok.decode(cut.token_ids)
    assert cut.token_ids == g.token_ids[: len(cut.token_ids)]


def test_load_weights_changes_output_as_expected(engine, tiny_model_dir):
    ps = prompts(engine)
    params = SamplingParams(max_new_tokens=6, temperature=0)
    before = engine.generate(ps, params)
    original = {k: v.clone() for k, v in engine.model.state_dict().items()}
    new = {k: v.clone() for k, v in original.items()}
    new["model.norm.weight"] = torch.zeros_like(new["model.norm.weight"])  # hidden -> 0 before the head
    engine.load_weights(new)
    out = engine.generate(ps, params)
    # all logits equal -> greedy picks token 0 everywhere, log-prob = -log(V)
    vocab = engine.model.config.vocab_size
    assert all(t == 0 for g in out for t in g.token_ids)
    assert out[0].logprobs[0] == pytest.approx(-math.log(vocab), abs=1e-4)
    engine.load_weights(original)
    assert [g.token_ids for g in engine.generate(ps, params)] == [g.token_ids for g in before]
    with pytest.raises(KeyError):
        engine.load_weights({"not.a.weight": torch.zeros(1)})
