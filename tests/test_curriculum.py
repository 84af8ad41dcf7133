"""Stage 1 and 2 data builders: masks, token layout identical to rollouts, candidate rule; config loading."""

import numpy as np
import pytest
from transformers import AutoTokenizer

from sepsis_rl.agent.grammar import parse_prescription, parse_proposal, render_action
from sepsis_rl.cohort.store import read_spec
from sepsis_rl.curriculum.cohort_rows import CohortRows
from sepsis_rl.curriculum.config import PRESETS, ConfigError, load_config
from sepsis_rl.curriculum.dynamics_sft import dynamics_samples
from sepsis_rl.curriculum.psr_traces import alternative_candidates, majority_rate, psr_traces
from sepsis_rl.rollout.psr import AgentConfig, PSRAgent
from world_model.simulation import SimulationConfig, WorldModelSimulator


@pytest.fixture(scope="module")
def rows(tiny_world):
    return CohortRows.load(tiny_world[0], "train")


def test_cohort_rows_history_and_previous(rows):
    i = next(i for i in range(len(rows.step)) if rows.step[i] == 2)
    prev, last = rows.previous(i)
    assert np.array_equal(prev, rows.states[i - 1]) and last == rows.action[i - 1]
    h = rows.history(i, 5)  # 3 real states, front-padded with the first
    assert h.shape == (5, rows.states.shape[1])
    assert np.array_equal(h[0], rows.states[i - 2]) and np.array_equal(h[2], rows.states[i - 2]) and np.array_equal(h[-1], rows.states[i])
    first = next(i for i in range(len(rows.step)) if rows.step[i] == 0)
    assert rows.previous(first) == (None, None)


def test_dynamics_samples_train_only_on_the_answer(rows, tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    for style, unit, lines in (("verbose", "mmHg", 17), ("compact", "", 1)):
        samples = dynamics_samples(rows, tok, 4, seed=0, style=style)
        assert len(samples) == 4
        for s in samples:
            answer = tok.decode([t for t, m in zip(s.tokens, s.loss_mask) if m])
            prompt = tok.decode([t for t, m in zip(s.tokens, s.loss_mask) if not m])
            assert answer.startswith("MAP ") and unit in answer and answer.rstrip().endswith("<|im_end|>")
            assert len(answer.strip().splitlines()) == lines and ("mmHg" in answer) == (style == "verbose")
            assert "Treatment for the next 4 h: F" in prompt and "MAP" in prompt
            assert s.loss_mask == sorted(s.loss_mask)  # the answer is one block at the end


def test_alternative_candidates_rule():
    rng = np.random.default_rng(0)
    for action in (0, 7, 24):
        for k in (2, 3, 4):
            c = alternative_candidates(action, k, rng)
            assert len(c) == k == len(set(c)) and action in c and all(0 <= a < 25 for a in c)
    positions = [alternative_candidates(12, 3, rng).index(12) for _ in range(300)]
    assert set(positions) == {0, 1, 2}  # the prescribed one is not always first
    # "first": the anchor, one fluid bin up, one vasopressor bin down, or up from none (F2V2 -> F3V2, F2V1; F0V0 -> F1V0, F0V1)
    assert alternative_candidates(12, 3, rng, "first") == [12, 17, 11]
    assert alternative_candidates(0, 3, rng, "first") == [0, 5, 1]
    with pytest.raises(ValueError, match="candidate rule"):
        alternative_candidates(0, 3, rng, "best")


def test_psr_traces_match_the_rollout_layout(rows, tiny_world, tiny_model_dir):
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    spec = read_spec(tiny_world[0])
    agent = PSRAgent(None, tok, spec, AgentConfig(k=3, horizon=2))
    model = tiny_world[1]
    sim = WorldModelSimulator(model, SimulationConfig(seed=0))
    samples = psr_traces(rows, agent, sim, model.window, 6, seed=0)
    assert len(samples) == 6 and sim.live_episodes == 0
    for s in samples:
        spans, cur = [], []
        for t, m in zip(s.tokens, s.loss_mask):  # contiguous generated spans: proposal, then prescription
            if m:
                cur.append(t)
            elif cur:
                spans.append(cur)
                cur = []
        spans.append(cur)
        proposal, prescription = (tok.decode(x) for x in spans)
        cands = parse_proposal(proposal, 3)
        chosen = parse_prescription(prescription)
        assert cands.ok and chosen.ok and chosen.actions[0] in cands.actions
        assert "<simulation" in tok.decode([t for t, m in zip(s.tokens, s.loss_mask) if not m])
        # the value is read at the last prompt token: right before the first generated token
        assert s.loss_mask[s.value_index] == 0 and s.loss_mask[s.value_index + 1] == 1
    assert 0 < majority_rate(rows, rows)["majority_rate"] < 1


def test_presets_load_and_bad_keys_are_named(tmp_path):
    for name in PRESETS:
        cfg = load_config(name)
        assert cfg.name == name
    assert load_config("tiny", {"rl.iterations": 5}).rl.iterations == 5
    bad = tmp_path / "x.yaml"
    bad.write_text("cluster: {learner_worker: 2}\n")
    with pytest.raises(ConfigError, match="unknown key cluster.learner_worker"):
        load_config(str(bad))
    bad.write_text("rl: {algorithm: dqn}\n")
    with pytest.raises(ConfigError, match="grpo or ppo"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="not a preset"):
        load_config("nope")
    assert load_config("tiny", {"evaluate.engine": "vllm"}).evaluate.engine == "vllm"
    with pytest.raises(ConfigError, match="evaluate.engine must be"):
        load_config("tiny", {"evaluate.engine": "onnx"})
    assert load_config("cpu").bc.candidates == "first" and load_config("gpu").evaluate.llm_gpus == 1.0
    with pytest.raises(ConfigError, match="bc.candidates must be"):
        load_config("tiny", {"bc.candidates": "all"})
    with pytest.raises(ConfigError, match="evaluate.llm_cpus"):
        load_config("tiny", {"evaluate.llm_cpus": -1.0})
    assert load_config("cpu").evaluate.llm_dtype == "auto" and load_config("cpu").evaluate.stage_ope is False
    with pytest.raises(ConfigError, match="evaluate.llm_dtype must be one of auto, float32, bfloat16, got 'fp16'"):
        load_config("tiny", {"evaluate.llm_dtype": "fp16"})


class _ScriptedEngine:
    """Writes the same proposal and prescription for every patient (what a format-only model does)."""

    def __init__(self, tok, proposal: str, prescription: str):
        self.tok, self.texts = tok, {"</propose>": proposal, "</prescribe>": prescription}

    def generate(self, prompts, params):
        from sepsis_rl.rollout.engine import Generation

        text = self.texts[params.stop[0]]
        ids = self.tok(text, add_special_tokens=False).input_ids
        return [Generation(list(ids), [0.0] * len(ids), text, "stop") for _ in prompts]


def test_heldout_decisions_measure_tool_use_by_hand(rows, tiny_world, tiny_model_dir):
    from sepsis_rl.curriculum.psr_traces import heldout_decisions, prescription_by_simulation

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    spec, model = read_spec(tiny_world[0]), tiny_world[1]
    sim = WorldModelSimulator(model, SimulationConfig(seed=0, stochastic=False))  # the same outcome scores twice
    cands = [0, 5, 6]  # F0V0, F1V0, F1V1, always
    agent = PSRAgent(_ScriptedEngine(tok, "<propose>F0V0; F1V0; F1V1</propose>", "<prescribe>F1V0</prescribe>"),
                     tok, spec, AgentConfig(k=3, horizon=1))
    m = heldout_decisions(rows, agent, sim, model.window, 8, seed=0)
    # recompute by hand what the tool showed for the same 8 states and how often F1V0 was its best candidate
    idx = rows.sample(8, np.random.default_rng(1))
    ids = np.arange(8)
    sim.reset(ids, np.stack([rows.history(int(i), model.window) for i in idx]), rows.step[idx])
    res = sim.simulate(ids, np.array([cands] * 8), 1)
    sim.release(ids)
    best = [prescription_by_simulation(cands, res.expected_return[j]) for j in range(8)]
    assert m["parsed_proposals"] == 8 and m["parse_failure_rate"] == 0.0
    assert m["follows_score"] == pytest.approx(np.mean([b == 5 for b in best]))
    assert m["proposal_recall"] == pytest.approx(np.mean([int(rows.action[i]) in cands for i in idx]))
    anchors = [agent.renderer.anchor(rows.states[i], int(rows.step[i]), rows.previous(int(i))[1]) for i in idx]
    assert m["anchor_recall"] == pytest.approx(np.mean([a in cands for a in anchors]))  # the guideline's dose proposed
    assert m["accuracy"] == pytest.approx(np.mean(rows.action[idx] == 5))


def test_guided_traces_propose_around_the_guideline_and_prescribe_the_top_ranked(rows, tiny_world, tiny_model_dir):
    """Stage-2 traces in the guided style: the guideline's dose (shown in the observation) is always proposed,
    with two of the four neighbours listed beside it, and the prescription is the first line of the ranked tool
    output, which is the candidate with the best shown outcome score."""
    import re

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    spec, model = read_spec(tiny_world[0]), tiny_world[1]
    agent = PSRAgent(None, tok, spec, AgentConfig(k=3, horizon=1, prompt_style="guided"))
    sim = WorldModelSimulator(model, SimulationConfig(seed=0))
    samples = psr_traces(rows, agent, sim, model.window, 8, seed=1)
    first = psr_traces(rows, agent, sim, model.window, 8, seed=1, candidates="first")
    for s in first:  # the "first" rule copies the guideline line: its dose, then its first two neighbours
        text = tok.decode(s.tokens)
        guideline, near = re.search(r"Guideline: (F\dV\d); neighbours: ([F\dV, ]+)\.", text).groups()
        assert f"<propose>{guideline}; {'; '.join(near.split(', ')[:2])}</propose>" in text
    for s in samples:
        generated = [tok.decode([t for t, m in zip(s.tokens, s.loss_mask) if m])]
        text = tok.decode(s.tokens)
        guideline, near = re.search(r"Guideline: (F\dV\d); neighbours: ([F\dV, ]+)\.", text).groups()
        proposal = parse_proposal(text[text.rindex("<propose>"):text.rindex("</propose>") + 10], 3)
        assert proposal.ok and render_action(proposal.actions[0]) in generated[0]
        shown = [render_action(a) for a in proposal.actions]
        assert guideline in shown and all(a == guideline or a in near.split(", ") for a in shown)
        ranked = re.findall(r"\n(F\dV\d): outcome ([+-]\d+\.\d)", text[text.index("<simulation"):])
        scores = [float(v) for _, v in ranked]
        assert scores == sorted(scores, reverse=True) and sorted(a for a, _ in ranked) == sorted(shown)
        assert parse_prescription(text[text.rindex("<prescribe>"):text.rindex("</prescribe>") + 12]).actions[0] == proposal.actions[shown.index(ranked[0][0])]


def test_guideline_planner_candidates_are_the_guided_agents_anchor(rows, tiny_world):
    """``wm_planner_gl3`` (the guided agent's procedure done by code) builds its candidates around the very dose
    the guided observation shows."""
    from sepsis_rl.agent.fallback import default_candidates
    from sepsis_rl.agent.prompts import ObservationRenderer
    from sepsis_rl.eval.baselines.guideline import GuidelinePolicy
    from sepsis_rl.eval.planners import candidate_sets
    from sepsis_rl.eval.policy import DecisionBatch

    spec = read_spec(tiny_world[0])
    idx = np.arange(0, 60, 7)
    lasts = [rows.previous(int(i))[1] for i in idx]
    batch = DecisionBatch(idx.astype(np.int64), rows.step[idx].astype(np.int64), rows.states[idx][:, None, :],
                          np.ones(len(idx), dtype=np.int64), np.array([-1 if a is None else a for a in lasts]),
                          tuple(spec.feature_names))
    cands = candidate_sets(batch, "guideline3", GuidelinePolicy(spec))
    r = ObservationRenderer(spec, "guided")
    for row, i, last in zip(cands, idx, lasts):
        assert list(row) == default_candidates(r.anchor(rows.states[i], int(rows.step[i]), last), 3)
    with pytest.raises(ValueError, match="guideline3"):
        candidate_sets(batch, "guideline3", None)


class _GuidedTeacher:
    """Proposes the guideline dose and its first two neighbours as the observation shows them and
    prescribes the first line of the ranked tool output; records each call's batch and token count."""

    def __init__(self, tok, kv_capacity_tokens=None):
        self.tok, self.kv_capacity_tokens, self.calls = tok, kv_capacity_tokens, []

    def generate(self, prompts, params):
        import re

        from sepsis_rl.rollout.engine import Generation

        self.calls.append((params.stop[0], len(prompts), sum(len(p) for p in prompts)))
        out = []
        for p in prompts:
            text = self.tok.decode(p)
            if params.stop[0] == "</propose>":
                g, n1, n2 = re.findall(r"Guideline: (F\dV\d); neighbours: (F\dV\d), (F\dV\d)", text)[-1]
                reply = f"<propose>{g}; {n1}; {n2}</propose>"
            else:
                reply = f"<prescribe>{re.findall(r'F[0-4]V[0-4]', text.rsplit('</propose>', 1)[1])[0]}</prescribe>"
            ids = self.tok(reply, add_special_tokens=False).input_ids
            out.append(Generation(list(ids), [0.0] * len(ids), reply, "stop"))
        return out


def test_decision_chunks_by_hand():
    from sepsis_rl.rollout.psr import decision_chunks

    chunks = decision_chunks([10, 20, 30, 5, 100], budget=50, extra=5)  # needs 15, 25, 35, 10, 105
    assert [c.tolist() for c in chunks] == [[0, 1], [2, 3], [4]]  # 15+25=40; 35+10=45; 105 alone (over budget)
    assert [c.tolist() for c in decision_chunks([10, 20], None, 5)] == [[0, 1]]
    assert [c.tolist() for c in decision_chunks([], 50, 5)] == [[]]


def test_decide_in_kv_sized_chunks_gives_the_same_decisions(rows, tiny_world, tiny_model_dir):
    """A batch bigger than the engine's KV cache is decided chunk by chunk, each chunk's tokens within
    the budget, with exactly the decisions (and records) of one unbounded batch."""
    from sepsis_rl.rollout.episodes import EpisodeRecord
    from sepsis_rl.rollout.psr import KV_BUDGET_SHARE

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    spec, model = read_spec(tiny_world[0]), tiny_world[1]
    idx = rows.sample(10, np.random.default_rng(3))
    prev = [rows.previous(int(i)) for i in idx]
    results = []
    for capacity in (None, 3000):
        engine = _GuidedTeacher(tok, capacity)
        agent = PSRAgent(engine, tok, spec, AgentConfig(k=3, horizon=1, temperature=0.0, prompt_style="guided"))
        sim = WorldModelSimulator(model, SimulationConfig(seed=0, stochastic=False))
        ids = np.arange(len(idx))
        sim.reset(ids, np.stack([rows.history(int(i), model.window) for i in idx]), rows.step[idx])
        records = [EpisodeRecord(int(e), int(e), 0, True) for e in ids]
        acts = agent.decide(sim, ids, rows.states[idx], [p for p, _ in prev], [a for _, a in prev],
                            [int(s) for s in rows.step[idx]], records, 0)
        results.append((acts, [r.decisions[-1]["tool_output"] for r in records], engine.calls, agent, records))
    (whole, tools, calls, _, _), (chunked, chunk_tools, chunk_calls, agent, records) = results
    assert len(calls) == 2 and calls[0][1] == 10  # one proposal and one prescription call
    proposals = [c for c in chunk_calls if c[0] == "</propose>"]
    assert len(proposals) > 1 and sum(n for _, n, _ in proposals) == 10
    assert all(tokens + n * agent.decision_tokens <= KV_BUDGET_SHARE * 3000 for _, n, tokens in proposals)
    assert np.array_equal(whole, chunked) and tools == chunk_tools
    from sepsis_rl.curriculum.psr_traces import prescription_by_simulation

    for j, (i, (_, last)) in enumerate(zip(idx, prev)):  # guideline proposed first, the best-scored one prescribed
        d = records[j].decisions[-1]
        assert d["candidates"][0] == agent.renderer.anchor(rows.states[i], int(rows.step[i]), last)
        assert chunked[j] == prescription_by_simulation(d["candidates"], np.array(d["candidate_return"]))
