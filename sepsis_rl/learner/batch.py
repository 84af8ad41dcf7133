"""From the episode table (the rollout -> learner contract) to padded training tensors.

One *sample* is one decision segment (its own context: prompt, proposal, tool output, prescription).
GRPO gives every segment its episode's group-normalised return; PPO gives each segment the GAE
advantage of its decision. SFT/BC samples are the same structure with no advantage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from sepsis_rl.learner.losses import gae, group_advantages


@dataclass
class Sample:
    tokens: list[int]
    loss_mask: list[int]  # 1 on policy-generated (or SFT target) tokens
    behaviour_logprobs: list[float] | None = None  # per token, 0 where loss_mask is 0
    advantage: float = 0.0
    episode: int = -1  # row in the episode table
    decision: int = -1  # decision index within the episode
    value_index: int = 0  # token position whose hidden state gives V(state) (end of the prompt)
    old_value: float = 0.0
    value_target: float = 0.0

    @property
    def generated(self) -> int:
        return int(sum(self.loss_mask))


def samples_from_episodes(table: pa.Table) -> list[Sample]:
    """Every decision segment of every episode, advantage not yet set."""
    cols = {n: table.column(n).to_pylist() for n in ("tokens", "loss_mask", "logprobs", "prompt_lengths")}
    out = []
    for e in range(table.num_rows):
        for d, (toks, mask, lps, plen) in enumerate(zip(cols["tokens"][e], cols["loss_mask"][e], cols["logprobs"][e],
                                                         cols["prompt_lengths"][e])):
            out.append(Sample(list(toks), list(mask), list(lps), episode=e, decision=d, value_index=max(int(plen) - 1, 0)))
    return out


def assign_grpo_advantages(samples: list[Sample], table: pa.Table, normalize_std: bool = True) -> np.ndarray:
    """Group-normalised episode returns, copied onto each episode's segments; returns the per-episode values."""
    adv = group_advantages(table.column("return").to_numpy(), table.column("group_id").to_numpy(), normalize_std)
    for s in samples:
        s.advantage = float(adv[s.episode])
    return adv


def assign_gae(samples: list[Sample], table: pa.Table, gamma: float, lam: float, normalize: bool = True) -> None:
    """PPO: per-decision GAE from the segments' ``old_value`` (filled by the learner's value pass)."""
    by_episode: dict[int, list[Sample]] = {}
    for s in samples:
        by_episode.setdefault(s.episode, []).append(s)
    rewards = table.column("rewards").to_pylist()
    truncated = table.column("truncated").to_pylist()
    for e, segs in by_episode.items():
        segs.sort(key=lambda s: s.decision)
        values = np.array([s.old_value for s in segs])
        bootstrap = values[-1] if truncated[e] else 0.0  # no next-state value is recorded: reuse the last one
        adv, targets = gae(np.asarray(rewards[e][: len(segs)]), values, gamma, lam, bootstrap)
        for s, a, t in zip(segs, adv, targets):
            s.advantage, s.value_target = float(a), float(t)
    if normalize and samples:
        a = np.array([s.advantage for s in samples])
        a = (a - a.mean()) / (a.std() + 1e-6)
        for s, v in zip(samples, a):
            s.advantage = float(v)


def collate(samples: list[Sample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded tensors; per-token fields are shifted to score token t+1 at position t."""
    width = max(len(s.tokens) for s in samples)
    n = len(samples)
    tokens = torch.full((n, width), pad_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.float32)
    behaviour = torch.zeros((n, width), dtype=torch.float32)
    for i, s in enumerate(samples):
        k = len(s.tokens)
        tokens[i, :k] = torch.tensor(s.tokens)
        attention[i, :k] = 1
        mask[i, :k] = torch.tensor(s.loss_mask, dtype=torch.float32)
        if s.behaviour_logprobs is not None:
            behaviour[i, :k] = torch.tensor(s.behaviour_logprobs, dtype=torch.float32)
    return {
        "tokens": tokens, "attention_mask": attention, "mask": mask[:, 1:], "behaviour_logprobs": behaviour[:, 1:],
        "advantages": torch.tensor([s.advantage for s in samples], dtype=torch.float32),
        "value_index": torch.tensor([s.value_index for s in samples], dtype=torch.long),
        "old_values": torch.tensor([s.old_value for s in samples], dtype=torch.float32),
        "value_targets": torch.tensor([s.value_target for s in samples], dtype=torch.float32),
    }


def micro_batches(samples: list[Sample], size: int, multiple_of: int) -> list[list[Sample]]:
    """Cut into micro-batches of ``size``; pad the count up to a multiple with fully masked copies.

    Every rank must run the same number of micro-batches (the gradient all-reduce is collective), and
    an optimizer step spans ``multiple_of`` of them; padding copies carry no loss and no gradient.
    """
    if not samples:
        raise ValueError("no samples to train on")
    batches = [samples[i:i + size] for i in range(0, len(samples), size)]
    while len(batches) % multiple_of:
        ghost = samples[0]
        batches.append([Sample(ghost.tokens, [0] * len(ghost.tokens), ghost.behaviour_logprobs)])
    return batches
