"""The trained module: a causal LM, plus a scalar value head for PPO (one linear layer on the last hidden state).

Keeping the head inside one ``nn.Module`` lets DeepSpeed shard, step and checkpoint policy and value
together; export takes the LM alone, so later tools see a plain HF checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoModelForCausalLM


class PolicyModel(nn.Module):
    def __init__(self, lm: nn.Module, value_head: bool = False):
        super().__init__()
        self.lm = lm
        hidden = lm.config.hidden_size
        self.value_head = nn.Linear(hidden, 1) if value_head else None
        if self.value_head is not None:
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)

    @classmethod
    def from_pretrained(cls, path: str, value_head: bool = False, dtype: torch.dtype = torch.float32) -> "PolicyModel":
        return cls(AutoModelForCausalLM.from_pretrained(path, dtype=dtype), value_head)

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(logits [B, L, V], values [B, L] or None)."""
        out = self.lm(input_ids=tokens, attention_mask=attention_mask, output_hidden_states=self.value_head is not None,
                      use_cache=False)
        if self.value_head is None:
            return out.logits, None
        return out.logits, self.value_head(out.hidden_states[-1].to(self.value_head.weight.dtype)).squeeze(-1)

    def lm_state_dict(self) -> dict[str, torch.Tensor]:
        """The LM's weights under the names the generation engines (and HF) use."""
        return {k: v.detach().cpu() for k, v in self.lm.state_dict().items()}
