"""``LearnerWorker``: one DeepSpeed rank as a Ray actor (gloo + fp32 on CPU, NCCL + bf16 on GPU).

The group (``group.py``) starts N of these in a placement group, points them at rank 0's address, and
hands each rank the same number of micro-batches: every collective (gradient all-reduce, ZeRO-3 gathers)
then lines up. DeepSpeed is imported inside the actor, after its environment is set.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import ray
import torch

from sepsis_rl.learner.batch import Sample, collate
from sepsis_rl.learner.config import LearnerConfig
from sepsis_rl.learner.losses import aggregate, clipped_policy_loss, clipped_value_loss, kl_penalty


def release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc only).

    Micro-batches of varying length leave glibc's arenas fragmented: without this a CPU learner's RSS
    climbed past 20 GB within two GRPO iterations on the cpu preset, and Ray's memory monitor killed it.
    """
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def default_extensions_dir() -> str:
    """DeepSpeed compiles a small shared-memory comm op on first use (~25 s): cache it once per machine."""
    return str(Path(os.environ.get("SEPSIS_RL_CACHE", Path.home() / ".cache" / "sepsis-rl")) / "torch_extensions")


class LearnerWorkerImpl:
    def __init__(self, rank: int, world_size: int, config: LearnerConfig):
        self.rank, self.world, self.cfg = rank, world_size, config
        self.engine: Any = None
        self.ref: torch.nn.Module | None = None
        self.pad_id = 0
        self.updates = 0
        self._gauges: dict[str, Any] | None = None

    def address(self) -> tuple[str, int]:
        return ray.util.get_node_ip_address(), free_port()

    # ------------------------------------------------------------------------------------ setup
    def setup(self, master_addr: str, master_port: int) -> None:
        cfg = self.cfg
        os.environ.update({
            "MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port), "RANK": str(self.rank),
            "LOCAL_RANK": "0" if not cfg.on_gpu else os.environ.get("LOCAL_RANK", "0"),
            "WORLD_SIZE": str(self.world), "OMP_NUM_THREADS": str(cfg.threads),
        })
        if not cfg.on_gpu:
            os.environ["DS_ACCELERATOR"] = "cpu"
        os.environ.setdefault("TORCH_EXTENSIONS_DIR", default_extensions_dir())
        torch.set_num_threads(cfg.threads)
        torch.manual_seed(cfg.seed)
        import deepspeed
        from transformers import AutoTokenizer

        from sepsis_rl.learner.policy import PolicyModel

        deepspeed.init_distributed(dist_backend="nccl" if cfg.on_gpu else "gloo", verbose=False)
        from sepsis_rl import storage

        self.model_path = storage.local_copy(cfg.model_path)  # a URI run folder: downloaded once per node
        tok = AutoTokenizer.from_pretrained(self.model_path)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        dtype = torch.bfloat16 if cfg.bf16 else torch.float32
        model = PolicyModel.from_pretrained(self.model_path, value_head=cfg.algorithm == "ppo", dtype=dtype)
        if cfg.gradient_checkpointing:
            model.lm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.kl_coef > 0 and cfg.algorithm != "sft":
            self.ref = PolicyModel.from_pretrained(self.model_path, dtype=dtype).eval().requires_grad_(False)
        self.engine, *_ = deepspeed.initialize(model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
                                               config=cfg.deepspeed_config())
        if self.ref is not None:
            self.ref.to(self.engine.device)

    # --------------------------------------------------------------------------------- training
    def _batch(self, samples: list[Sample]) -> dict[str, torch.Tensor]:
        return {k: v.to(self.engine.device) for k, v in collate(samples, self.pad_id).items()}

    def _loss(self, b: dict[str, torch.Tensor], kind: str) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        temperature = 1.0 if kind == "sft" else cfg.temperature
        logp, values = self.engine(b["tokens"], b["attention_mask"], b["mask"], temperature)
        if kind == "sft":
            loss = aggregate(-logp, b["mask"], cfg.loss_agg)  # type: ignore[arg-type]
            return loss, {"loss": loss.item()}
        loss, stats = clipped_policy_loss(logp, b["behaviour_logprobs"], b["advantages"], b["mask"], cfg.clip_eps,
                                          cfg.loss_agg)  # type: ignore[arg-type]
        out = {"policy_loss": loss.item(), "clip_frac": stats["clip_frac"].item(), "ratio": stats["ratio_mean"].item()}
        if self.ref is not None:
            with torch.no_grad():
                ref_logp, _ = self.ref(b["tokens"], b["attention_mask"], b["mask"], cfg.temperature)
            kl = aggregate(kl_penalty(logp, ref_logp, cfg.kl_estimator), b["mask"], cfg.loss_agg)  # type: ignore[arg-type]
            loss = loss + cfg.kl_coef * kl
            out["kl"] = kl.item()
        if kind == "ppo":
            has = b["mask"].sum(-1) > 0
            v = values.gather(1, b["value_index"].unsqueeze(1)).squeeze(1).float()
            vloss = clipped_value_loss(v[has], b["old_values"][has], b["value_targets"][has], cfg.value_clip)
            loss = loss + cfg.value_coef * vloss
            out["value_loss"] = vloss.item()
        out["loss"] = loss.item()
        return loss, out

    def train(self, micro_batches: list[list[Sample]], kind: str) -> dict[str, float]:
        """Forward/backward every micro-batch; DeepSpeed steps the optimizer every ``grad_accum`` of them."""
        if len(micro_batches) % self.cfg.grad_accum:
            raise ValueError(f"{len(micro_batches)} micro-batches is not a multiple of grad_accum={self.cfg.grad_accum}")
        self.engine.train()
        t0 = time.perf_counter()
        logs: list[dict[str, float]] = []
        tokens = 0
        for i, mb in enumerate(micro_batches):
            b = self._batch(mb)
            loss, stats = self._loss(b, kind)
            self.engine.backward(loss)
            self.engine.step()
            tokens += int(b["attention_mask"].sum())
            if (i + 1) % self.cfg.grad_accum == 0:  # an optimizer step just happened
                stats["grad_norm"] = float(self.engine.get_global_grad_norm() or 0.0)
            logs.append(stats)
        self.updates += len(micro_batches) // self.cfg.grad_accum
        release_free_memory()
        keys = {k for s in logs for k in s}
        out = {k: float(np.mean([s[k] for s in logs if k in s])) for k in keys}
        out.update(tokens=tokens, seconds=time.perf_counter() - t0, losses=[s["loss"] for s in logs])  # type: ignore[dict-item]
        return out

    @torch.no_grad()
    def evaluate(self, micro_batches: list[list[Sample]]) -> list[tuple[list[float], float]]:
        """Per sample: log-probs of its loss-masked tokens (in order) and V(state) (0 without a value head)."""
        self.engine.eval()
        out = []
        for mb in micro_batches:
            b = self._batch(mb)
            logp, values = self.engine(b["tokens"], b["attention_mask"], b["mask"], self.cfg.temperature)
            v = values.gather(1, b["value_index"].unsqueeze(1)).squeeze(1) if values is not None else torch.zeros(len(mb))
            for i in range(len(mb)):
                sel = b["mask"][i] > 0
                out.append((logp[i][sel].float().cpu().tolist(), float(v[i])))
        release_free_memory()
        return out

    # ---------------------------------------------------------------------------------- weights
    def _full_lm_state(self) -> dict[str, torch.Tensor] | None:
        """Rank 0 gets the LM's full weights (ZeRO-3 gathers them from all ranks: every rank must call this)."""
        module = self.engine.module
        if self.cfg.zero_stage == 3:
            import deepspeed

            params = list(module.lm.parameters())
            with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                state = module.lm_state_dict() if self.rank == 0 else None
            return state
        return module.lm_state_dict() if self.rank == 0 else None

    def state_dict_ref(self) -> list[Any]:
        """[ObjectRef of the LM state dict] on rank 0 (wrapped in a list so Ray does not resolve it), [] elsewhere."""
        state = self._full_lm_state()
        return [ray.put(state)] if state is not None else []

    # ------------------------------------------------------- NCCL weight broadcast (GPU + vLLM only)
    def init_nccl_sync(self, host: str, port: int, world_size: int, rollout_workers: list[Any]) -> None:
        """Join vLLM's trainer-side NCCL weight transfer (rank 0 sends; the others join ZeRO-3 gathers)."""
        from sepsis_rl.learner.nccl_sync import trainer_engine

        self._sender = trainer_engine(self.engine.module.lm, self.rank, host, port, world_size, rollout_workers,
                                      zero3=self.cfg.zero_stage == 3)

    def send_weights(self) -> None:
        self._sender.send_weights()

    def export(self, out_dir: str) -> None:
        """Write the LM as a plain HF checkpoint (safetensors) with its tokenizer (rank 0 writes)."""
        state = self._full_lm_state()
        if self.rank != 0:
            return
        from transformers import AutoTokenizer

        from sepsis_rl import storage

        with storage.writing_dir(out_dir) as tmp:
            lm = self.engine.module.lm
            lm.save_pretrained(tmp, state_dict=state, safe_serialization=True)
            AutoTokenizer.from_pretrained(self.model_path).save_pretrained(tmp)

    # ------------------------------------------------------------------------------ checkpoints
    def save(self, location: str) -> dict[str, Any]:
        """Write this rank's state to ``location/rank<r>.pt`` (weights_only-loadable); returns its size and SHA-256."""
        import hashlib

        from sepsis_rl import storage
        from sepsis_rl.learner.state import dumps, engine_state, rng_state

        data = dumps({**engine_state(self.engine), "rng": rng_state(), "updates": self.updates})
        name = f"rank{self.rank}.pt"
        storage.write_bytes(storage.join(location, name), data)
        return {"file": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}

    def load(self, location: str) -> None:
        """Restore this rank from ``location/rank<r>.pt`` (every rank at once: ZeRO re-gathers the weights)."""
        from sepsis_rl import storage
        from sepsis_rl.learner.state import loads, restore_engine_state, set_rng_state

        state = loads(storage.read_bytes(storage.join(location, f"rank{self.rank}.pt")))
        restore_engine_state(self.engine, state)
        set_rng_state(state["rng"])
        self.updates = int(state["updates"])

    def report(self, metrics: dict[str, float]) -> None:
        """Publish iteration metrics to the Ray dashboard (``sepsis_rl/learner/metrics.py``)."""
        from sepsis_rl.learner.metrics import LearnerMetrics

        if self._gauges is None:
            self._gauges = LearnerMetrics()
        self._gauges.publish(metrics)

    def shutdown(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()


LearnerWorker = ray.remote(LearnerWorkerImpl)
