"""The learner's math against values computed by hand on tiny tensors."""

import math

import numpy as np
import pyarrow as pa
import pytest
import torch

from sepsis_rl.learner.batch import Sample, assign_gae, assign_grpo_advantages, collate, micro_batches, samples_from_episodes
from sepsis_rl.learner.losses import (
    aggregate, clipped_policy_loss, clipped_value_loss, gae, group_advantages, group_reward_stats, kl_penalty,
    sampled_entropy, sft_loss, token_logprobs, zero_variance_groups,
)
from sepsis_rl.rollout.episodes import EPISODE_SCHEMA


def test_token_logprobs_shift_and_temperature():
    # vocabulary of 2; logits at position 0 are (0, ln 3): p(token 1) = 3/4; at T=2: softmax(0, ln3/2) -> sqrt3/(1+sqrt3)
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0]]])
    tokens = torch.tensor([[0, 1]])
    assert token_logprobs(logits, tokens).item() == pytest.approx(math.log(0.75))
    assert token_logprobs(logits, tokens, 2.0).item() == pytest.approx(math.log(math.sqrt(3) / (1 + math.sqrt(3))))


def test_aggregate_token_mean_vs_seq_mean():
    values = torch.tensor([[1.0, 2.0, 3.0], [10.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert aggregate(values, mask, "token-mean").item() == pytest.approx((1 + 2 + 3 + 10) / 4)
    assert aggregate(values, mask, "seq-mean").item() == pytest.approx((2.0 + 10.0) / 2)
    # a fully masked row (padding micro-batch) counts for nothing in either mode
    assert aggregate(values, torch.zeros_like(mask), "seq-mean").item() == 0.0
    with pytest.raises(ValueError, match="aggregation"):
        aggregate(values, mask, "sum")  # type: ignore[arg-type]


def test_sft_loss_ignores_masked_tokens():
    logits = torch.tensor([[[0.0, math.log(3.0)], [math.log(3.0), 0.0], [0.0, 0.0]]])
    tokens = torch.tensor([[0, 1, 1]])
    # position 0 predicts token 1 with p=3/4; position 1 predicts token 1 with p=1/4 (masked out)
    assert sft_loss(logits, tokens, torch.tensor([[1.0, 0.0]])).item() == pytest.approx(-math.log(0.75))
    assert sft_loss(logits, tokens, torch.tensor([[1.0, 1.0]])).item() == pytest.approx((-math.log(0.75) - math.log(0.25)) / 2)


def test_group_advantages_by_hand():
    returns = np.array([1.0, 3.0, 5.0, 5.0, 2.0])
    groups = np.array([0, 0, 1, 1, 2])
    adv = group_advantages(returns, groups, eps=0.0 + 1e-12)
    # group 0: mean 2, std 1 -> (-1, +1); group 1: equal returns -> 0; a single episode -> 0
    assert adv == pytest.approx([-1.0, 1.0, 0.0, 0.0, 0.0], abs=1e-9)
    assert group_advantages(returns, groups, normalize_std=False) == pytest.approx([-1.0, 1.0, 0.0, 0.0, 0.0])


def test_group_diagnostics_and_dynamic_sampling_by_hand():
    returns = np.array([1.0, 3.0, 5.0, 5.0, 2.0, 4.0, 4.0])
    groups = np.array([0, 0, 1, 1, 2, 3, 3])
    assert zero_variance_groups(returns, groups).tolist() == [1, 2, 3]  # a lone episode compares nothing
    stats = group_reward_stats(returns, groups)
    assert stats["group_reward_std"] == pytest.approx((1.0 + 0 + 0 + 0) / 4)
    assert stats["zero_variance_group_frac"] == 0.75 and stats["groups"] == 4
    # Dr. GRPO (no std division) keeps the return scale: a group twice as spread gets twice the advantage
    wide = group_advantages(np.array([0.0, 4.0, 1.0, 3.0]), np.array([0, 0, 1, 1]), normalize_std=False)
    assert wide.tolist() == [-2.0, 2.0, -1.0, 1.0]


def test_sampled_entropy_by_hand():
    # two generated tokens at log p = -1 and -3, a prompt token (mask 0) ignored: (1 + 3) / 2
    assert sampled_entropy([[-9.0, -1.0], [-3.0]], [[0, 1], [1]]) == pytest.approx(2.0)
    assert sampled_entropy([[0.0, 0.0]], [[1, 1]]) == 0.0  # a deterministic policy


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])
    d = math.log(2.0)  # log(pi/ref)
    assert kl_penalty(logp, ref, "k1").item() == pytest.approx(d)
    assert kl_penalty(logp, ref, "k2").item() == pytest.approx(0.5 * d * d)
    assert kl_penalty(logp, ref, "k3").item() == pytest.approx(0.5 + d - 1.0)  # ref/pi - log(ref/pi) - 1
    assert kl_penalty(ref, ref, "k3").item() == 0.0
    with pytest.raises(ValueError, match="estimator"):
        kl_penalty(logp, ref, "k4")  # type: ignore[arg-type]


def test_clipped_policy_loss_by_hand():
    # ratios 1.5 and 0.5 with advantage +1: min(1.5, 1.2) = 1.2 (clipped), min(0.5, 0.8) = 0.5 (unclipped)
    logp = torch.log(torch.tensor([[1.5, 0.5]]))
    behaviour = torch.zeros(1, 2)
    mask = torch.ones(1, 2)
    loss, stats = clipped_policy_loss(logp, behaviour, torch.tensor([1.0]), mask, clip_eps=0.2)
    assert loss.item() == pytest.approx(-(1.2 + 0.5) / 2)
    assert stats["clip_frac"].item() == pytest.approx(0.5)
    # negative advantage: min(-1.5, -1.2) = -1.5 (unclipped), min(-0.5, -0.8) = -0.8 (clipped)
    loss, _ = clipped_policy_loss(logp, behaviour, torch.tensor([-1.0]), mask, clip_eps=0.2)
    assert loss.item() == pytest.approx((1.5 + 0.8) / 2)
    # the gradient through a clipped token is zero; through the unclipped one it is -A * ratio / n
    lp = logp.clone().requires_grad_(True)
    clipped_policy_loss(lp, behaviour, torch.tensor([1.0]), mask, clip_eps=0.2)[0].backward()
    assert lp.grad.flatten().tolist() == pytest.approx([0.0, -0.5 / 2])


def test_gae_by_hand():
    rewards, values = np.array([1.0, 0.0, 2.0]), np.array([0.5, 1.0, 1.5])
    gamma, lam = 0.9, 0.5
    d2 = 2.0 - 1.5  # terminal: no bootstrap
    d1 = 0.0 + 0.9 * 1.5 - 1.0
    d0 = 1.0 + 0.9 * 1.0 - 0.5
    a2 = d2
    a1 = d1 + 0.45 * a2
    a0 = d0 + 0.45 * a1
    adv, targets = gae(rewards, values, gamma, lam)
    assert adv == pytest.approx([a0, a1, a2])
    assert targets == pytest.approx([a0 + 0.5, a1 + 1.0, a2 + 1.5])
    # truncated episode: bootstrap from the value after the last decision
    adv_t, _ = gae(rewards, values, gamma, lam, bootstrap=2.0)
    assert adv_t[2] == pytest.approx(2.0 + 0.9 * 2.0 - 1.5)
    # gamma = lam = 1: advantages are returns-to-go minus values
    adv1, _ = gae(rewards, values, 1.0, 1.0)
    assert adv1 == pytest.approx([3.0 - 0.5, 2.0 - 1.0, 2.0 - 1.5])


def test_clipped_value_loss_by_hand():
    values, old, targets = torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.0]), torch.tensor([2.0, 0.1])
    # first: unclipped (1-2)^2 = 1, clipped old+0.2=0.7 -> (0.7-2)^2 = 1.69 -> max 1.69; second: 0.01 both
    assert clipped_value_loss(values, old, targets, clip=0.2).item() == pytest.approx(0.5 * (1.69 + 0.01) / 2)


def _episodes() -> pa.Table:
    seg = lambda n_prompt, gen: ([7] * n_prompt + [8] * gen, [0] * n_prompt + [1] * gen,  # noqa: E731
                                 [0.0] * n_prompt + [-0.5] * gen)
    rows = []
    for e, (ret, group, rewards) in enumerate([(1.0, 0, [1.0]), (3.0, 0, [1.0, 2.0]), (0.0, 2, [0.0])]):
        segs = [seg(3, 2) for _ in rewards]
        rows.append({"episode_id": e, "group_id": group, "start_index": 0, "use_simulator": True,
                     "tokens": [s[0] for s in segs], "loss_mask": [s[1] for s in segs], "logprobs": [s[2] for s in segs],
                     "prompt_lengths": [3] * len(segs), "decisions": [], "rewards": rewards, "return": ret,
                     "cohort_return": ret, "length": len(rewards), "died": False, "discharged": True, "truncated": False,
                     "parse_failures": 0, "generated_tokens": 2 * len(segs), "generate_s": 0.0, "simulate_s": 0.0})
    return pa.Table.from_pylist(rows, schema=EPISODE_SCHEMA)


def test_episode_table_to_samples_and_advantages():
    table = _episodes()
    samples = samples_from_episodes(table)
    assert [(s.episode, s.decision) for s in samples] == [(0, 0), (1, 0), (1, 1), (2, 0)]
    assert all(s.value_index == 2 for s in samples)
    adv = assign_grpo_advantages(samples, table)
    assert adv[:2] == pytest.approx([-1.0, 1.0], abs=1e-5) and adv[2] == 0.0
    assert [s.advantage for s in samples] == pytest.approx([-1.0, 1.0, 1.0, 0.0], abs=1e-5)
    for s, v in zip(samples, [0.5, 1.0, 1.5, 0.0]):
        s.old_value = v
    assign_gae(samples, table, gamma=1.0, lam=1.0, normalize=False)
    # episode 1: returns-to-go 3, 2 minus values 1.0, 1.5
    assert [s.advantage for s in samples] == pytest.approx([0.5, 2.0, 0.5, 0.0])
    assert [s.value_target for s in samples] == pytest.approx([1.0, 3.0, 2.0, 0.0])


def test_collate_shifts_and_pads():
    b = collate([Sample([1, 2, 3], [0, 1, 1], [0.0, -0.1, -0.2], advantage=2.0), Sample([4, 5], [0, 1], [0.0, -0.3])], pad_id=0)
    assert b["tokens"].tolist() == [[1, 2, 3], [4, 5, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert b["mask"].tolist() == [[1.0, 1.0], [1.0, 0.0]]
    assert b["behaviour_logprobs"].flatten().tolist() == pytest.approx([-0.1, -0.2, -0.3, 0.0])
    assert b["advantages"].tolist() == [2.0, 0.0]


def test_micro_batches_pad_with_lossless_copies():
    samples = [Sample([1, 2], [0, 1]) for _ in range(5)]
    batches = micro_batches(samples, size=2, multiple_of=4)
    assert [len(b) for b in batches] == [2, 2, 1, 1]
    assert sum(batches[-1][0].loss_mask) == 0
    with pytest.raises(ValueError):
        micro_batches([], 2, 1)
