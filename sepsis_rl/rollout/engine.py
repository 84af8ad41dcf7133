"""The one interface of generation engines (transformers on CPU/GPU, vLLM on GPU or CPU).

Rollout workers and the learner's weight sync only ever see this contract: prompts in as token ids,
completions out as token ids with the log-probability the engine *sampled* each token with (the
behaviour log-probabilities the RL losses need), and ``load_weights`` to receive new policy weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Protocol, Sequence

import torch


@dataclass(frozen=True)
class SamplingParams:
    """Pure temperature sampling (no top-k/top-p), so behaviour log-probabilities are exact."""

    max_new_tokens: int = 64
    temperature: float = 1.0  # 0 = greedy
    seed: int | None = None
    stop: tuple[str, ...] = ()  # the completion ends right after the first stop string

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")


@dataclass
class Generation:
    """One completion: its tokens, their sampling log-probabilities, the text, why it stopped."""

    token_ids: list[int]
    logprobs: list[float]
    text: str
    finish_reason: str  # "stop" (stop string or EOS) or "length"
    extra: dict = field(default_factory=dict)


class GenerationEngine(Protocol):
    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[Generation]: ...

    def load_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None: ...
