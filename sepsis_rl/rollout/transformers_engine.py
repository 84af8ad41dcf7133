"""``TransformersEngine``: batched sampling with a KV cache via transformers, on CPU or GPU; the reference engine."""

from __future__ import annotations

from typing import Mapping, Sequence

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, StoppingCriteria, StoppingCriteriaList

from sepsis_rl.rollout.engine import Generation, SamplingParams


class TransformersEngine:
    def __init__(self, model_path: str, device: str = "cpu", dtype: torch.dtype = torch.float32):
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype).to(device).eval()
        self.device = device

    # ------------------------------------------------------------------------------------ weights
    @torch.no_grad()
    def load_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Replace the policy weights in place (names as in the model's own state_dict)."""
        missing, unexpected = self.model.load_state_dict(dict(state_dict), strict=False)
        missing = [m for m in missing if not m.endswith("lm_head.weight")]  # tied to the embeddings
        if missing or unexpected:
            raise KeyError(f"weight names do not match the model: missing {missing[:3]}, unexpected {unexpected[:3]}")

    # --------------------------------------------------------------------------------- generation
    def _left_pad(self, prompts: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(p) for p in prompts)
        pad = self.tokenizer.pad_token_id
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
            mask[i, width - len(p):] = 1
        return ids.to(self.device), mask.to(self.device)

    @torch.no_grad()
    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[Generation]:
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("generate needs at least one non-empty prompt")
        if params.seed is not None:
            torch.manual_seed(params.seed)
        ids, mask = self._left_pad(prompts)
        greedy = params.temperature == 0
        config = GenerationConfig(
            max_new_tokens=params.max_new_tokens, do_sample=not greedy,
            temperature=None if greedy else params.temperature, top_k=None if greedy else 0,
            top_p=None if greedy else 1.0,
            eos_token_id=self.tokenizer.eos_token_id, pad_token_id=self.tokenizer.pad_token_id,
            return_dict_in_generate=True, output_logits=True,
        )
        stopping = StoppingCriteriaList([_StopOnText(self.tokenizer, params.stop, ids.shape[1])]) if params.stop else None
        out = self.model.generate(
            input_ids=ids, attention_mask=mask, generation_config=config, stopping_criteria=stopping,
        )
        new = out.sequences[:, ids.shape[1]:]
        logits = torch.stack(out.logits, dim=1).float()  # [B, T, V] raw logits
        logp = torch.log_softmax(logits / (params.temperature or 1.0), dim=-1)
        chosen = logp.gather(-1, new.unsqueeze(-1)).squeeze(-1)
        return [self._finish(new[i].tolist(), chosen[i].tolist(), params) for i in range(len(prompts))]

    def _finish(self, tokens: list[int], logprobs: list[float], params: SamplingParams) -> Generation:
        """Cut a row at its EOS (kept) or right after its first stop string; the rest is batch padding."""
        eos = self.tokenizer.eos_token_id
        end, reason = len(tokens), "length"
        if eos in tokens:
            end, reason = tokens.index(eos) + 1, "stop"
        if params.stop:
            for j in range(1, end + 1):
                text = self.tokenizer.decode(tokens[:j])
                if any(s in text for s in params.stop):
                    end, reason = j, "stop"
                    break
        kept = tokens[:end]
        return Generation(kept, logprobs[:end], self.tokenizer.decode(kept, skip_special_tokens=True), reason)

    @torch.no_grad()
    def score(self, prompt: Sequence[int], completion: Sequence[int], temperature: float = 1.0) -> list[float]:
        """Log-probabilities of ``completion`` after ``prompt`` by one teacher-forced forward pass."""
        full = torch.tensor([list(prompt) + list(completion)], device=self.device)
        logits = self.model(full).logits[0, len(prompt) - 1 : -1].float()
        logp = torch.log_softmax(logits / (temperature or 1.0), dim=-1)
        return logp.gather(-1, torch.tensor(list(completion), device=self.device).unsqueeze(-1)).squeeze(-1).tolist()

    @torch.no_grad()
    def score_tokens(self, sequences: Sequence[Sequence[int]], temperature: float = 1.0) -> list[list[float]]:
        """For each sequence, log p(token t | tokens < t) for t = 1..L-1 (teacher forcing, one padded batch)."""
        width = max(len(s) for s in sequences)
        ids = torch.full((len(sequences), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, s in enumerate(sequences):
            ids[i, : len(s)] = torch.tensor(list(s))
            mask[i, : len(s)] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        logits = self.model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        logp = torch.log_softmax(logits / (temperature or 1.0), dim=-1).gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        return [logp[i, : len(s) - 1].tolist() for i, s in enumerate(sequences)]


class _StopOnText(StoppingCriteria):
    """Stops a row once its *generated* text contains a stop string (the prompt never counts, as in vLLM)."""

    def __init__(self, tokenizer, stops: tuple[str, ...], prompt_width: int):
        self.tokenizer, self.stops, self.width = tokenizer, stops, prompt_width

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kwargs) -> torch.Tensor:
        texts = self.tokenizer.batch_decode(input_ids[:, self.width:])
        return torch.tensor([any(s in t for s in self.stops) for t in texts], device=input_ids.device)
