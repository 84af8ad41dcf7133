"""The DeepSpeed learner as Ray actors on CPU (gloo): data-parallel equivalence, weight sync, checkpoint/resume."""

import functools

import numpy as np
import pytest
import ray

from sepsis_rl.learner.batch import Sample
from sepsis_rl.learner.config import LearnerConfig
from sepsis_rl.learner.group import LearnerGroup
from sepsis_rl.learner.weight_sync import ObjectStoreSync, logprob_mismatch, make_weight_sync
from sepsis_rl.rollout.psr import AgentConfig
from sepsis_rl.rollout.worker import RolloutWorker, WorkerConfig
from world_model.pool import PoolConfig, SimulatorPool, in_memory_model
from world_model.simulation import SimulationConfig


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _samples(n=8, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        length = int(rng.integers(12, 20))
        tokens = rng.integers(0, 2000, length).tolist()
        mask = [0] * 6 + [1] * (length - 6)
        lps = [0.0] * 6 + (-rng.random(length - 6) - 5).tolist()
        out.append(Sample(tokens, mask, lps, advantage=float(rng.normal())))
    return out


def _config(model, **kw):
    base = dict(model_path=model, algorithm="grpo", zero_stage=2, lr=1e-3, micro_batch=2, cpus_per_worker=0.5, threads=1,
                kl_coef=0.1)
    base.update(kw)
    return LearnerConfig(**base)


def test_two_ranks_follow_one_rank_with_double_accumulation(ray_cluster, tiny_model_dir):
    samples = _samples()
    trajectories = {}
    for workers, accum in ((1, 2), (2, 1)):
        group = LearnerGroup(_config(tiny_model_dir, num_workers=workers, grad_accum=accum), timeout_s=300)
        try:
            losses = []
            for _ in range(3):  # 3 passes x 2 optimizer steps: the weights move, so later losses test the updates
                m = group.train(samples, "grpo")
                losses += m["losses"]
                assert m["tokens"] == sum(len(s.tokens) for s in samples)
            trajectories[workers] = losses
        finally:
            group.shutdown()
    assert len(trajectories[1]) == 6
    assert trajectories[2] == pytest.approx(trajectories[1], rel=1e-4, abs=1e-5)
    assert trajectories[1][-1] != pytest.approx(trajectories[1][0], abs=1e-4)  # training did change the policy


def test_weight_sync_makes_engine_logprobs_match_and_checkpoint_resumes(ray_cluster, tiny_model_dir, tiny_world, tmp_path):
    cohort, model = tiny_world
    group = LearnerGroup(_config(tiny_model_dir, algorithm="sft", zero_stage=1, lr=5e-3), timeout_s=300)
    pool = SimulatorPool(model_factory=functools.partial(in_memory_model, model), sim_config=SimulationConfig(max_steps=2),
                         config=PoolConfig(num_shards=1, num_cpus_per_shard=0.25))
    worker = RolloutWorker.options(num_cpus=0.5).remote(0, WorkerConfig(tiny_model_dir, cohort, agent=AgentConfig()), pool)
    try:
        probe = _samples(3, seed=1)
        assert logprob_mismatch(group, worker, probe)["mean_abs"] < 1e-4  # same initial weights
        group.train(_samples(), "sft")
        stale = logprob_mismatch(group, worker, probe)
        assert stale["mean_abs"] > 1e-3  # the learner moved, the engine did not
        make_weight_sync("object_store").sync(group, [worker])
        synced = logprob_mismatch(group, worker, probe)
        assert synced["mean_abs"] < 1e-4 and synced["tokens"] == sum(sum(s.loss_mask[1:]) for s in probe)
        # ZeRO keeps parameters as views of one flat buffer: the published weights must not carry it along
        # (pickling a view writes its whole storage, once per tensor: 150 GB for a 135M model)
        published = ray.get(group.state_dict_ref())
        assert all(t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in published.values())

        # checkpoint, train on: a group restored from the checkpoint repeats exactly the same step
        records = group.save(str(tmp_path / "ckpt"))  # each rank's state, weights_only-loadable
        assert [r["file"] for r in records] == [f"rank{i}.pt" for i in range(len(group.workers))]
        expected = group.train(_samples(seed=3), "sft")["losses"]
    finally:
        group.shutdown()
        ray.kill(worker)
        pool.shutdown()
    restored = LearnerGroup(_config(tiny_model_dir, algorithm="sft", zero_stage=1, lr=5e-3), timeout_s=300)
    try:
        restored.load(str(tmp_path / "ckpt"))
        assert restored.train(_samples(seed=3), "sft")["losses"] == pytest.approx(expected, rel=1e-5)
    finally:
        restored.shutdown()


def test_nccl_sync_refuses_cpu_and_unknown_kind():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(RuntimeError, match="CUDA"):
        make_weight_sync("nccl")
    with pytest.raises(ValueError, match="object_store"):
        make_weight_sync("carrier-pigeon")
    assert isinstance(make_weight_sync("object_store"), ObjectStoreSync)


def test_learner_config_rejects_bad_values():
    with pytest.raises(ValueError, match="algorithm"):
        LearnerConfig(algorithm="dpo")
    with pytest.raises(ValueError, match="zero_stage"):
        LearnerConfig(zero_stage=4)
    with pytest.raises(ValueError, match="bf16 needs GPUs"):
        LearnerConfig(bf16=True)
    cfg = LearnerConfig(num_workers=2, micro_batch=3, grad_accum=4).deepspeed_config()
    assert cfg["train_batch_size"] == 24 and cfg["optimizer"]["params"]["torch_adam"] is True


def test_ppo_value_head_moves_towards_its_targets_within_the_clip(ray_cluster, tiny_model_dir):
    group = LearnerGroup(_config(tiny_model_dir, algorithm="ppo", kl_coef=0.0, lr=1e-3, zero_stage=1), timeout_s=300)
    try:
        samples = _samples(4)
        for s in samples:
            s.advantage, s.value_index, s.value_target = 0.0, 5, 1.0
        history = []
        for _ in range(3):  # each round: PPO's value pass sets old values, then one update
            values = [v for _, v in group.evaluate(samples)]
            history.append(float(np.mean(values)))
            for s, v in zip(samples, values):
                s.old_value = v
            m = group.train(samples, "ppo")
            assert m["value_loss"] > 0
        history.append(float(np.mean([v for _, v in group.evaluate(samples)])))
    finally:
        group.shutdown()
    assert history[0] == 0.0  # zero-initialised head
    assert all(b > a for a, b in zip(history, history[1:])) and history[-1] < 1.0, history  # towards the target
