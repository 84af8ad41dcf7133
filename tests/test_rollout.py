"""PSR episodes: exact token bookkeeping, returns, parse-failure accounting; 2 Ray workers on a 2-shard pool."""

import functools

import numpy as np
import pyarrow as pa
import pytest
import ray

from sepsis_rl.cohort.store import read_spec
from sepsis_rl.rollout.episodes import EPISODE_SCHEMA, episodes_to_table
from sepsis_rl.rollout.psr import AgentConfig, PSRAgent, play_episodes
from sepsis_rl.rollout.starts import StartStates
from sepsis_rl.rollout.transformers_engine import TransformersEngine
from world_model.simulation import SimulationConfig, WorldModelSimulator


@pytest.fixture(scope="module")
def setup(tiny_world, tiny_model_dir):
    cohort, model = tiny_world
    engine = TransformersEngine(tiny_model_dir)
    return cohort, model, engine


def play(setup, use_simulator=True, n=3, max_steps=3):
    cohort, model, engine = setup
    spec = read_spec(cohort)
    agent = PSRAgent(engine, engine.tokenizer, spec, AgentConfig(use_simulator=use_simulator, proposal_tokens=12,
                                                                 prescription_tokens=6))
    sim = WorldModelSimulator(model, SimulationConfig(seed=0, max_steps=max_steps))
    starts = StartStates.from_cohort(cohort, "test")
    return play_episodes(agent, sim, starts.states[:n], np.arange(n), np.zeros(n, dtype=int), np.arange(n), seed=0), engine


def test_episode_bookkeeping_is_exact(setup):
    records, engine = play(setup)
    table = episodes_to_table(records)
    assert table.schema.equals(EPISODE_SCHEMA) and table.num_rows == 3
    for ep in table.to_pylist():
        assert ep["length"] == len(ep["decisions"]) == len(ep["tokens"]) == len(ep["rewards"]) <= 3
        assert ep["return"] == pytest.approx(sum(ep["rewards"]))
        # what RL optimises = the cohort reward + the documented safety/format shaping, per step
        assert ep["return"] == pytest.approx(ep["cohort_return"] + sum(d["shaping"] for d in ep["decisions"]), abs=1e-4)
        assert all(d["shaping"] <= -1.0 * bool(d["proposal_failure"] or d["prescription_failure"]) for d in ep["decisions"])
        assert ep["died"] or ep["discharged"] or ep["truncated"]
        generated = 0
        for tokens, mask, logp, plen, d in zip(ep["tokens"], ep["loss_mask"], ep["logprobs"], ep["prompt_lengths"], ep["decisions"]):
            assert len(tokens) == len(mask) == len(logp)
            assert not any(mask[:plen])  # the prompt is never trained on
            # the masked-in tokens are exactly the two generations, in order
            gen = [t for t, m in zip(tokens, mask) if m]
            text = engine.tokenizer.decode(gen, skip_special_tokens=True)
            assert text == d["proposal_text"] + d["prescription_text"]
            # behaviour log-probs only where generated, and they are real log-probabilities
            assert all(lp == 0.0 for lp, m in zip(logp, mask) if not m)
            assert all(lp <= 0.0 for lp, m in zip(logp, mask) if m)
            # tool output tokens are in the sequence but masked out
            assert d["tool_output"].splitlines()[0] in engine.tokenizer.decode(tokens)
            generated += sum(mask)
        assert ep["generated_tokens"] == generated
        # an untrained random model cannot follow the grammar: failures are counted, fallbacks used
        assert ep["parse_failures"] == sum(bool(d["proposal_failure"]) + bool(d["prescription_failure"]) for d in ep["decisions"])
        assert all(0 <= d["action"] <= 24 and len(d["candidates"]) == 3 for d in ep["decisions"])
        # an unparseable prescription falls back to the candidate the tool scored best (AgentConfig default)
        for d in ep["decisions"]:
            if d["prescription_failure"]:
                assert d["action"] == d["candidates"][int(np.argmax(d["candidate_return"]))]


def test_behaviour_logprobs_match_rescoring(setup):
    records, engine = play(setup, n=1, max_steps=1)
    seg = records[0].segments[0]
    # rescore the whole sequence by teacher forcing: generated positions must match what sampling logged
    plen = seg.prompt_length
    scored = engine.score(seg.tokens[:plen], seg.tokens[plen:])
    for lp, s, m in zip(seg.logprobs[plen:], scored, seg.loss_mask[plen:]):
        if m:
            assert lp == pytest.approx(s, abs=1e-3)


def test_no_simulator_mode_has_one_generation_per_decision(setup):
    records, _ = play(setup, use_simulator=False, n=2, max_steps=2)
    for r in records:
        for d in r.decisions:
            assert d["proposal_text"] == "" and d["tool_output"] == "" and d["candidates"] == []


def test_two_workers_against_two_shard_pool(tiny_world, tiny_model_dir):
    from sepsis_rl.rollout.worker import RolloutWorker, WorkerConfig
    from world_model.pool import PoolConfig, SimulatorPool, in_memory_model

    cohort, model = tiny_world
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        pool = SimulatorPool(model_factory=functools.partial(in_memory_model, model),
                             sim_config=SimulationConfig(seed=0, max_steps=2),
                             config=PoolConfig(num_shards=2, num_cpus_per_shard=0.25, call_timeout_s=120))
        cfg = WorkerConfig(model_path=tiny_model_dir, cohort_dir=cohort, split="test",
                           agent=AgentConfig(proposal_tokens=10, prescription_tokens=6), batch_episodes=4)
        workers = [RolloutWorker.options(num_cpus=0.5).remote(i, cfg, pool) for i in range(2)]
        tables = ray.get([w.run.remote(4, 2, 0) for w in workers], timeout=300)
        table = pa.concat_tables(tables)
        assert table.num_rows == 8
        ids = table.column("episode_id").to_pylist()
        assert len(set(ids)) == 8  # unique across workers
        groups = table.group_by("group_id").aggregate([("episode_id", "count")])
        assert set(groups.column("episode_id_count").to_pylist()) == {2}  # GRPO groups of 2
        starts = table.group_by("group_id").aggregate([("start_index", "count_distinct")])
        assert set(starts.column("start_index_count_distinct").to_pylist()) == {1}
        assert all(s["n"] >= 1 for s in [{"n": x} for x in table.column("length").to_pylist()])
        pool.shutdown()
    finally:
        ray.shutdown()
