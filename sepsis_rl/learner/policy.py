"""The trained module: a causal LM, plus a scalar value head for PPO (one linear layer on the last hidden state).

Keeping the head inside one ``nn.Module`` lets DeepSpeed shard, step and checkpoint policy and value
together; export takes the LM alone, so later tools see a plain HF checkpoint.

The forward pass computes vocabulary logits only at the positions that carry loss (the generated
tokens: ~15% of a PSR decision's context). The LM head is ~20% of a 135M model's FLOPs and its
[tokens x vocabulary] logits dominate activation memory, so this is the learner's cheapest large win.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
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
        lm = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        if getattr(getattr(lm, "hf_quantizer", None), "quantization_config", None) is not None and \
                getattr(lm.hf_quantizer.quantization_config, "quant_method", None) == "gguf":
            # transformers dequantizes GGUF on load: the weights are plain; drop the marker so export works
            lm.hf_quantizer, lm.is_quantized = None, False
            if hasattr(lm.config, "quantization_config"):
                del lm.config.quantization_config
        return cls(lm, value_head)

    def forward(self, tokens: torch.Tensor, attention_mask: torch.Tensor, mask: torch.Tensor,
                temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(log-probs [B, L-1] of token t+1 at position t where ``mask`` [B, L-1] > 0, else 0; values [B, L] or None).

        Log-probs are under softmax(logits / temperature), the distribution the engines sample from.
        """
        hidden = self.lm.get_decoder()(input_ids=tokens, attention_mask=attention_mask, use_cache=False).last_hidden_state
        sel = mask > 0
        logits = self.lm.get_output_embeddings()(hidden[:, :-1][sel]).float()
        logp = F.log_softmax(logits / (temperature if temperature > 0 else 1.0), dim=-1)
        picked = logp.gather(-1, tokens[:, 1:][sel].unsqueeze(-1)).squeeze(-1)
        out = torch.zeros(mask.shape, dtype=picked.dtype, device=picked.device).masked_scatter(sel, picked)
        values = None
        if self.value_head is not None:
            values = self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)
        return out, values

    def lm_state_dict(self) -> dict[str, torch.Tensor]:
        """The LM's weights under the names the generation engines (and HF) use, each in its own storage.

        DeepSpeed ZeRO turns parameters into views of one flat buffer; pickling a view (``ray.put``) writes
        its whole storage, so without the copy a 135M model's 272 tensors serialised to ~150 GB.
        """
        return {k: v.detach().to("cpu", copy=True) for k, v in self.lm.state_dict().items()}
