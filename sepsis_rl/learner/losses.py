"""The learner's math, one small function per idea: log-probs, SFT, GRPO, PPO (GAE, clipped value loss), KL.

Tensor conventions: ``logits`` [B, L, V] over ``tokens`` [B, L]; every per-token quantity below is
*shifted* ([B, L-1]): position t scores token t+1. ``mask`` is 1 on tokens the policy generated (SFT:
on the target tokens), 0 on prompt, tool output and padding.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

Aggregation = Literal["token-mean", "seq-mean"]
KLEstimator = Literal["k1", "k2", "k3"]


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(token[t+1] | tokens[..t]) under softmax(logits / temperature): [B, L-1].

    The temperature must be the one the rollout engine sampled with, so the ratio against the
    behaviour log-probabilities is an importance ratio of the same distribution.
    """
    scaled = logits[:, :-1].float() / (temperature if temperature > 0 else 1.0)
    return torch.gather(F.log_softmax(scaled, dim=-1), -1, tokens[:, 1:].unsqueeze(-1)).squeeze(-1)


def aggregate(values: torch.Tensor, mask: torch.Tensor, how: Aggregation = "token-mean") -> torch.Tensor:
    """Mean of ``values`` over masked tokens: all tokens equally (token-mean) or each sequence equally (seq-mean)."""
    mask = mask.to(values.dtype)
    if how == "token-mean":
        return (values * mask).sum() / mask.sum().clamp(min=1.0)
    if how == "seq-mean":
        per_seq = (values * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        has = (mask.sum(-1) > 0).to(values.dtype)
        return (per_seq * has).sum() / has.sum().clamp(min=1.0)
    raise ValueError(f"unknown loss aggregation {how!r} (token-mean or seq-mean)")


def sft_loss(logits: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor, how: Aggregation = "token-mean") -> torch.Tensor:
    """Masked next-token cross-entropy (stages 1 and 2): tool outputs and prompts carry no loss."""
    return aggregate(-token_logprobs(logits, tokens), mask, how)


def group_advantages(returns: np.ndarray, group_ids: np.ndarray, normalize_std: bool = True, eps: float = 1e-6) -> np.ndarray:
    """GRPO: each episode's return minus its group's mean, divided by the group's std (population std).

    A group whose episodes all got the same return gives zero advantage: nothing to learn from it.
    """
    returns = np.asarray(returns, dtype=np.float64)
    out = np.zeros_like(returns)
    for g in np.unique(group_ids):
        idx = np.flatnonzero(group_ids == g)
        centred = returns[idx] - returns[idx].mean()
        out[idx] = centred / (returns[idx].std() + eps) if normalize_std else centred
    return out


def zero_variance_groups(returns: np.ndarray, group_ids: np.ndarray, tol: float = 1e-9) -> np.ndarray:
    """Group ids whose episodes all got the same return (within ``tol``): no action was better than another,
    so their advantages are zero and only dilute the batch (DAPO's dynamic sampling drops them)."""
    returns = np.asarray(returns, dtype=np.float64)
    return np.array([g for g in np.unique(group_ids) if np.ptp(returns[group_ids == g]) <= tol], dtype=np.int64)


def group_reward_stats(returns: np.ndarray, group_ids: np.ndarray, tol: float = 1e-9) -> dict[str, float]:
    """What the group comparison had to learn from: mean within-group std of the returns, the fraction of
    groups with zero variance, and the number of groups."""
    returns = np.asarray(returns, dtype=np.float64)
    groups = np.unique(group_ids)
    stds = [returns[group_ids == g].std() for g in groups]
    zero = len(zero_variance_groups(returns, group_ids, tol))
    return {"group_reward_std": float(np.mean(stds)) if stds else 0.0,
            "zero_variance_group_frac": zero / max(len(groups), 1), "groups": float(len(groups))}


def sampled_entropy(logprobs: list[list[float]], masks: list[list[int]]) -> float:
    """Monte-Carlo entropy per generated token: the mean of -log p over tokens sampled from the policy
    (an unbiased estimate of the policy's entropy at the states it visited; 0 when it is deterministic)."""
    total, n = 0.0, 0
    for lps, mask in zip(logprobs, masks):
        for lp, m in zip(lps, mask):
            if m:
                total, n = total - lp, n + 1
    return total / max(n, 1)


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: KLEstimator = "k3") -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from samples of the policy (Schulman's k1, k2, k3)."""
    log_ratio = logp - ref_logp
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":  # unbiased and always >= 0
        return torch.exp(-log_ratio) + log_ratio - 1.0
    raise ValueError(f"unknown KL estimator {estimator!r} (k1, k2 or k3)")


def clipped_policy_loss(
    logp: torch.Tensor, behaviour_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
    clip_eps: float = 0.2, how: Aggregation = "token-mean",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO-clip surrogate: -min(r A, clip(r, 1-eps, 1+eps) A), r = exp(logp - behaviour_logp).

    ``advantages`` is per token ([B, L-1]) or per sequence ([B], broadcast over its tokens).
    """
    if advantages.dim() == 1:
        advantages = advantages.unsqueeze(-1).expand_as(logp)
    ratio = torch.exp(logp - behaviour_logp)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
    loss = aggregate(-torch.minimum(unclipped, clipped), mask, how)
    with torch.no_grad():
        m = mask.to(logp.dtype)
        stats = {
            "clip_frac": aggregate((clipped < unclipped).to(logp.dtype), m, "token-mean"),
            "ratio_mean": aggregate(ratio, m, "token-mean"),
        }
    return loss, stats


def gae(rewards: np.ndarray, values: np.ndarray, gamma: float = 1.0, lam: float = 0.95, bootstrap: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Generalised advantage estimation over one episode's decisions: (advantages, value targets).

    ``values[t]`` is V(state before decision t); ``bootstrap`` is V after the last decision (0 when the
    episode ended by death/discharge, the value of the next state when the horizon truncated it).
    """
    rewards, values = np.asarray(rewards, dtype=np.float64), np.asarray(values, dtype=np.float64)
    adv = np.zeros_like(rewards)
    running = 0.0
    for t in range(len(rewards) - 1, -1, -1):
        nxt = values[t + 1] if t + 1 < len(rewards) else bootstrap
        delta = rewards[t] + gamma * nxt - values[t]
        running = delta + gamma * lam * running
        adv[t] = running
    return adv, adv + values


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, targets: torch.Tensor, clip: float = 0.2) -> torch.Tensor:
    """0.5 * max((V - R)^2, (old + clip(V - old, -c, c) - R)^2), averaged over decisions."""
    clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    return 0.5 * torch.maximum((values - targets) ** 2, (clipped - targets) ** 2).mean()
