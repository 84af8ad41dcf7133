"""Fault suite: a dead rollout worker, learner rank or simulator shard loses nothing.

Each case kills a real Ray actor mid-work and compares with an undisturbed run at the same seed: the
run finishes (or resumes) to the same result.
"""

import argparse
import functools
import threading
import time

import numpy as np
import pytest
import ray

from sepsis_rl.rollout.psr import AgentConfig
from sepsis_rl.rollout.resilient import WorkerSet
from sepsis_rl.rollout.starts import StartStates
from sepsis_rl.rollout.worker import EPISODE_ID_STRIDE, ITERATION_ID_STRIDE, RolloutWorker, WorkerConfig
from world_model.pool import PoolConfig, SimulatorPool, in_memory_model
from world_model.simulation import SimulationConfig


@pytest.fixture(scope="module")
def ray_cluster():
    # 3 logical CPUs (on the 2 real ones): two rollout workers at 1 CPU each plus a shard must fit at once
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def world_model_dir(tiny_world, tmp_path_factory):
    from world_model.checkpoint import save_world_model

    return str(save_world_model(tiny_world[1], tmp_path_factory.mktemp("wm") / "model"))


def _rollout_args(tiny_world, tiny_model_dir, world_model_dir, out):
    return argparse.Namespace(
        model=tiny_model_dir, world_model=world_model_dir, cohort=tiny_world[0], split="test", episodes=4, workers=2,
        shards=1, engine="transformers", k=2, horizon=2, no_simulator=False, temperature=1.0, max_steps=2, seed=3,
        batch_episodes=1, out=str(out), proposal_tokens=10, prescription_tokens=6)


def _essence(table):
    """What must not change when a worker dies: which episodes, from where, which actions, what return."""
    rows = table.to_pylist()
    return [(r["episode_id"], r["group_id"], r["start_index"], [d["action"] for d in r["decisions"]],
             round(r["return"], 4)) for r in rows]


def test_rollout_survives_a_killed_worker(ray_cluster, tiny_world, tiny_model_dir, world_model_dir, tmp_path):
    from sepsis_rl.rollout.launch import run_rollout

    args = _rollout_args(tiny_world, tiny_model_dir, world_model_dir, tmp_path / "e.parquet")
    undisturbed = run_rollout(args)
    killed: list[int] = []

    def kill_after_first_batch(workers: WorkerSet, k: int) -> None:
        # jobs 2, 3 are worker 1's two batches: kill it once the first is done, the second unfinished
        if not killed and k == 2:
            killed.append(k)
            ray.kill(workers.handles[1], no_restart=True)

    survived = run_rollout(args, on_result=kill_after_first_batch)
    assert killed, "the fault was never injected"
    assert survived.num_rows == undisturbed.num_rows == 4
    assert _essence(survived) == _essence(undisturbed)
    assert len(set(survived.column("episode_id").to_pylist())) == 4


def test_restarted_worker_is_prepared_and_ids_never_repeat(ray_cluster, tiny_world, tiny_model_dir):
    """RL's rollout phase: a restart is readied (weights) before it takes work; ids depend on the iteration."""
    from sepsis_rl.curriculum.rl_stage import rollout_jobs as rl_jobs

    cohort, model = tiny_world
    pool = SimulatorPool(model_factory=functools.partial(in_memory_model, model), sim_config=SimulationConfig(seed=0, max_steps=2),
                         config=PoolConfig(num_shards=1, num_cpus_per_shard=0.25, call_timeout_s=120))
    cfg = WorkerConfig(model_path=tiny_model_dir, cohort_dir=cohort, split="train",
                       agent=AgentConfig(k=2, horizon=2, proposal_tokens=10, prescription_tokens=6), batch_episodes=2)
    prepared: list[int] = []
    make = lambda i: RolloutWorker.options(num_cpus=1).remote(i, cfg, pool)  # noqa: E731
    workers = WorkerSet(make, 2, prepare=lambda h: prepared.append(ray.get(h.ping.remote(), timeout=60)))
    try:
        jobs0 = rl_jobs(n_workers=2, groups=4, group_size=2, seed=5, iteration=0, batch=2)  # 2 batches per worker
        first = workers.run(jobs0, on_result=lambda ws, k: ray.kill(ws.handles[0], no_restart=True) if k == 0 and not prepared else None)
        assert prepared == [0] and workers.restarts == 1
        # worker 0 is now a fresh process, like every worker of a resumed run: its ids must still move on
        later = workers.run(rl_jobs(n_workers=2, groups=4, group_size=2, seed=5, iteration=1, batch=2))
    finally:
        workers.kill_all()
        pool.shutdown()
    ids0 = [i for t in first for i in t.column("episode_id").to_pylist()]
    ids1 = [i for t in later for i in t.column("episode_id").to_pylist()]
    assert len(ids0) == len(ids1) == 8 and not set(ids0) & set(ids1)
    for it, ids in ((0, ids0), (1, ids1)):  # (worker, iteration, index), whatever process played them
        assert ids == [w * EPISODE_ID_STRIDE + it * ITERATION_ID_STRIDE + i for w in (0, 1) for i in range(4)]


def test_simulate_survives_a_shard_killed_mid_call(ray_cluster, tiny_world):
    """A shard dies while a ``simulate`` call is in flight: the pool restarts it, replays, and answers the same."""
    cohort, model = tiny_world
    starts = StartStates.from_cohort(cohort, "test")
    n = 160  # 80 patients x 25 candidates x 16 steps per shard: the call lasts long enough to be killed inside
    ids = np.arange(200, 200 + n)
    cands = np.tile(np.arange(25)[None, :], (n, 1))

    def simulate(pool, kill: bool):
        pool.reset(ids, starts.states[np.arange(n) % len(starts.states)])
        pool.step(ids, np.arange(n) % 25)
        if not kill:
            return pool.simulate(ids, cands, horizon=16)
        box = {}
        t = threading.Thread(target=lambda: box.update(res=pool.simulate(ids, cands, horizon=16)))
        t.start()
        time.sleep(0.1)  # the call is running in both shards
        victim = pool.shards[1]
        ray.kill(victim, no_restart=True)
        t.join(timeout=120)
        assert pool.shards[1] is not victim, "the shard died after the call: no replay was exercised"
        return box["res"]

    from world_model.simulation import WorldModelSimulator

    undisturbed = simulate(WorldModelSimulator(model, SimulationConfig(seed=4)), kill=False)  # in-process reference
    pool = SimulatorPool(model_factory=functools.partial(in_memory_model, model), sim_config=SimulationConfig(seed=4),
                         config=PoolConfig(num_shards=2, num_cpus_per_shard=0.25, call_timeout_s=120))
    try:
        results = [undisturbed, simulate(pool, kill=True)]
    finally:
        pool.shutdown()
    a, b = results
    for field, value in a.__dict__.items():
        np.testing.assert_allclose(getattr(b, field), value, rtol=1e-4, atol=1e-3, err_msg=field)


def test_learner_rank_killed_mid_update_fails_fast_and_resumes_to_the_same_step(ray_cluster, tiny_model_dir, tmp_path):
    """Kill rank 1 of 2 during ``train``: the group fails at once (not at the timeout), and a group restored from
    the last checkpoint repeats the update exactly as the undisturbed run did."""
    from sepsis_rl.learner.batch import Sample
    from sepsis_rl.learner.config import LearnerConfig
    from sepsis_rl.learner.group import LearnerFailure, LearnerGroup

    def samples(seed):
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(96):  # an update long enough (seconds) to be killed inside
            n = int(rng.integers(12, 20))
            out.append(Sample(rng.integers(0, 2000, n).tolist(), [0] * 6 + [1] * (n - 6),
                              [0.0] * 6 + (-rng.random(n - 6) - 5).tolist(), advantage=float(rng.normal())))
        return out

    cfg = LearnerConfig(model_path=tiny_model_dir, algorithm="sft", zero_stage=1, lr=5e-3, micro_batch=2,
                        cpus_per_worker=0.5, threads=1, num_workers=2)
    group = LearnerGroup(cfg, timeout_s=300)
    try:
        group.train(samples(1), "sft")
        group.save(str(tmp_path / "ckpt"))  # each rank's model + optimizer state (client state lives beside it)
        expected = group.train(samples(2), "sft")["losses"]  # the undisturbed next update
        box: dict = {}

        def update():
            try:
                group.train(samples(2), "sft")
            except Exception as e:  # noqa: BLE001
                box["error"] = e

        t = threading.Thread(target=update)
        t.start()
        time.sleep(0.5)
        t0 = time.monotonic()
        ray.kill(group.workers[1], no_restart=True)
        t.join(timeout=120)
        assert isinstance(box.get("error"), LearnerFailure) and "rank 1" in str(box["error"])
        assert time.monotonic() - t0 < 60  # not the 300 s timeout
    finally:
        from ray.util.placement_group import remove_placement_group

        for w in group.workers:
            ray.kill(w, no_restart=True)
        remove_placement_group(group.pg)
    restored = LearnerGroup(cfg, timeout_s=300)
    try:
        restored.load(str(tmp_path / "ckpt"))
        assert restored.train(samples(2), "sft")["losses"] == pytest.approx(expected, rel=1e-5)
    finally:
        restored.shutdown()
