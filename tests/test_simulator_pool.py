"""World-model simulation: in-process engine, Ray shard pool (equality, batching, shard death), vector env."""

import functools

import numpy as np
import pytest
import ray

from sepsis_rl.rollout.starts import StartStates
from world_model.pool import in_memory_model
from world_model.simulation import SimulationConfig, WorldModelSimulator

ACTIONS = [np.array([0, 5, 10, 24, 3, 7]), np.array([12, 12, 1, 2, 6, 9]), np.array([4, 20, 0, 0, 11, 13])]


@pytest.fixture(scope="module")
def world(tiny_world):
    cohort, model = tiny_world
    return model, StartStates.from_cohort(cohort, "test")


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def reference_run(model, starts, seed=1):
    sim = WorldModelSimulator(model, SimulationConfig(seed=seed))
    ids = np.arange(100, 106)
    sim.reset(ids, starts.states[:6])
    out = []
    for a in ACTIONS:
        live = [i for i, e in enumerate(ids) if not sim.history(int(e))[3]]
        out.append(sim.step(ids[live], a[live]))
    return out


def test_in_process_step_and_rewards(world):
    model, starts = world
    sim = WorldModelSimulator(model, SimulationConfig(seed=0, max_steps=2))
    ids = np.arange(10)
    s0 = sim.reset(ids, starts.states[:10])
    assert s0.shape == (10, len(model.feature_names))
    r1 = sim.step(ids, np.zeros(10, dtype=int))
    live = ids[~r1.done]
    r2 = sim.step(live, np.full(len(live), 12))
    assert r2.done.all()  # max_steps = 2
    assert (r2.truncated | r2.died | r2.discharged).all()
    ended = r2.died | r2.discharged
    assert np.all(np.abs(r2.reward[ended]) == 15.0)
    # static features are carried, binary ones are 0/1
    assert np.allclose(r1.state[:, model.static_index], s0[:, model.static_index])
    assert set(np.unique(r1.state[:, model.binary_index])) <= {0.0, 1.0}


def test_same_seed_same_trajectory_and_simulate_is_batched(world):
    model, starts = world
    a, b = reference_run(model, starts), reference_run(model, starts)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.state, y.state)
    sim = WorldModelSimulator(model, SimulationConfig(seed=0))
    ids = np.arange(4)
    sim.reset(ids, starts.states[:4])
    res = sim.simulate(ids, np.array([[0, 12, 24]] * 4), horizon=3)
    assert res.map.shape == (4, 3, 3) and res.risk_of_death.shape == (4, 3)
    assert ((res.risk_of_death >= 0) & (res.risk_of_death <= 1)).all()
    # simulate does not advance the episodes
    assert all(sim.history(i)[2] == 0 for i in range(4))


def test_a_shared_noise_key_makes_returns_differ_by_the_actions_alone(world, ray_cluster):
    """GRPO's group members share the noise: same start, same key, same action -> the same next state; another
    key draws other noise. Through the shard pool too, including a shard's replay after it died."""
    from world_model.pool import PoolConfig, SimulatorPool

    model, starts = world
    start = np.repeat(starts.states[:1], 4, axis=0)
    ids, keys = np.arange(20, 24), np.array([7, 7, 7, 8])
    sim = WorldModelSimulator(model, SimulationConfig(seed=3))
    sim.reset(ids, start, noise_keys=keys)
    same = sim.step(ids, np.array([12, 12, 0, 12]))
    np.testing.assert_array_equal(same.state[0], same.state[1])  # shared key, same action
    assert not np.array_equal(same.state[0], same.state[3])  # another key: other noise
    sim.reset(ids, start)  # default: keyed by the episode id, as before
    assert not np.array_equal(sim.step(ids, np.full(4, 12)).state[0], same.state[1])
    with pytest.raises(ValueError, match="noise keys"):
        sim.reset(ids, start, noise_keys=keys[:2])
    pool = SimulatorPool(model_factory=functools.partial(in_memory_model, model), sim_config=SimulationConfig(seed=3),
                         config=PoolConfig(num_shards=2, num_cpus_per_shard=0.25, call_timeout_s=60))
    try:
        pool.reset(ids, start, noise_keys=keys)
        ray.kill(pool.shards[0], no_restart=True)  # its replacement must replay the episodes with their keys
        res = pool.step(ids, np.array([12, 12, 0, 12]))
    finally:
        pool.shutdown()
    np.testing.assert_allclose(res.state, same.state, rtol=1e-4, atol=1e-3)


def test_bad_inputs_raise_clear_errors(world):
    model, starts = world
    sim = WorldModelSimulator(model, SimulationConfig())
    with pytest.raises(ValueError, match="F = 47"):
        sim.reset(np.arange(2), np.zeros((2, 5)))
    bad = starts.states[:2].copy()
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        sim.reset(np.arange(2), bad)
    sim.reset(np.arange(2), starts.states[:2])
    with pytest.raises(KeyError, match="unknown episode id 7"):
        sim.step(np.array([7]), np.array([0]))
    with pytest.raises(ValueError, match="0..24"):
        sim.step(np.arange(2), np.array([0, 25]))
    with pytest.raises(ValueError, match="horizon"):
        sim.simulate(np.arange(2), np.array([[0], [1]]), horizon=0)


def test_pool_equals_in_process_and_survives_a_dead_shard(world, ray_cluster):
    from world_model.pool import PoolConfig, SimulatorPool

    model, starts = world
    expected = reference_run(model, starts)
    factory = functools.partial(in_memory_model, model)
    pool = SimulatorPool(model_factory=factory, sim_config=SimulationConfig(seed=1),
                         config=PoolConfig(num_shards=2, num_cpus_per_shard=0.5, call_timeout_s=60))
    ids = np.arange(100, 106)
    pool.reset(ids, starts.states[:6])
    alive = np.ones(6, dtype=bool)
    for t, (a, exp) in enumerate(zip(ACTIONS, expected)):
        if t == 1:  # kill a shard mid-episode: the pool restarts it and replays its episodes
            ray.kill(pool.shards[0], no_restart=True)
        res = pool.step(ids[alive], a[alive])
        np.testing.assert_allclose(res.state, exp.state, rtol=1e-4, atol=1e-3)  # float32 batch-size noise
        np.testing.assert_allclose(res.reward, exp.reward, rtol=1e-4, atol=1e-3)
        alive[np.nonzero(alive)[0][res.done]] = False
    sim = pool.simulate(ids[:2], np.array([[0, 24], [12, 3]]), horizon=2)
    assert sim.map.shape == (2, 2, 2)
    pool.release(ids)
    pool.shutdown()


def test_shard_merges_concurrent_requests(world, ray_cluster):
    from world_model.shard import SimulatorShard

    model, starts = world
    shard = SimulatorShard.options(num_cpus=0.5, max_concurrency=16).remote(
        functools.partial(in_memory_model, model), SimulationConfig(), 0, 0.2, 4096, 1)
    ray.get(shard.reset.remote(np.arange(8), starts.states[:8]), timeout=60)
    refs = [shard.step.remote(np.array([i]), np.array([i])) for i in range(8)]
    results = ray.get(refs, timeout=60)
    assert [r.state.shape for r in results] == [(1, 47)] * 8
    stats = ray.get(shard.stats.remote(), timeout=60)
    assert stats["step_requests"] == 8 and stats["step_batches"] < 8
    with pytest.raises(Exception, match="unknown episode id 99"):
        ray.get(shard.step.remote(np.array([99]), np.array([0])), timeout=60)
    ray.kill(shard)


def test_vector_env_over_the_pool(world, ray_cluster):
    from world_model.pool import PoolConfig, SimulatorPool
    from world_model.vector_env import WorldModelVectorEnv

    model, starts = world
    pool = SimulatorPool(model_factory=functools.partial(in_memory_model, model),
                         sim_config=SimulationConfig(seed=0, max_steps=3),
                         config=PoolConfig(num_shards=1, num_cpus_per_shard=0.5, call_timeout_s=60))
    env = WorldModelVectorEnv(pool, starts.states, num_envs=4, seed=0)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (4, 47) and env.single_action_space.n == 25
    ended = 0
    for _ in range(5):
        obs, rew, term, trunc, _ = env.step(env.action_space.sample())
        assert obs.shape == (4, 47) and np.isfinite(obs).all()
        ended += int((term | trunc).sum())
    assert ended >= 4  # max_steps = 3: every env ended at least once and was reset
    env.close()
    pool.shutdown()


def test_keyed_uniforms_depend_only_on_the_key():
    from world_model.simulation import keyed_uniforms

    ids, steps = np.array([5, 9, 123456789012]), np.array([0, 3, 7])
    u = keyed_uniforms(1, ids, steps, 6)
    assert u.shape == (3, 6) and ((u >= 0) & (u < 1)).all()
    np.testing.assert_array_equal(keyed_uniforms(1, ids[[2, 0]], steps[[2, 0]], 6), u[[2, 0]])  # batch order
    assert not np.array_equal(keyed_uniforms(2, ids, steps, 6), u)  # the seed matters
    assert not np.array_equal(keyed_uniforms(1, ids, steps + 1, 6), u)  # the step matters
    big = keyed_uniforms(0, np.arange(20000), np.zeros(20000), 1)
    assert abs(big.mean() - 0.5) < 0.01 and abs(big.std() - (1 / 12) ** 0.5) < 0.01
