"""Learner -> rollout engines after every update, behind one ``sync`` call, plus the check that it worked.

- ``ObjectStoreSync`` (CPU, any cluster): rank 0 gathers the LM's weights, puts them once in the Ray
  object store, and every rollout worker loads them from there (one copy per node, zero-copy reads).
- ``NcclBroadcastSync`` (GPUs with vLLM): vLLM's own trainer-side NCCL weight transfer
  (``learner/nccl_sync.py``): rank 0 and the engines' workers form one NCCL group and the weights are
  broadcast GPU to GPU in packed buffers; the engines receive in place (``VLLMEngine`` built with
  ``weight_transfer="nccl"``). It refuses to start without CUDA.

``logprob_mismatch`` is the check: the learner's and an engine's log-probabilities of the same tokens
after a sync. A mismatch that grows is the classic silent bug of RL-for-LLM systems (stale or wrongly
named weights, a different temperature, a dtype drift), so it is measured and logged every iteration.
"""

from __future__ import annotations

import time
from typing import Any, Protocol, Sequence

import numpy as np
import ray

from sepsis_rl.learner.batch import Sample
from sepsis_rl.learner.group import LearnerGroup


class WeightSync(Protocol):
    def sync(self, learner: LearnerGroup, rollout_workers: Sequence[Any]) -> dict[str, float]: ...


class ObjectStoreSync:
    def sync(self, learner: LearnerGroup, rollout_workers: Sequence[Any]) -> dict[str, float]:
        t0 = time.perf_counter()
        ref = learner.state_dict_ref()
        ray.get([w.load_weights.remote(ref) for w in rollout_workers], timeout=learner.timeout)
        return {"sync_s": time.perf_counter() - t0}


class NcclBroadcastSync:
    """GPU path: vLLM's NCCL weight transfer; learner rank 0 broadcasts, every engine receives in place."""

    def __init__(self) -> None:
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("NCCL weight sync needs CUDA GPUs; on CPU set weight_sync: object_store")
        self._ready = False

    def sync(self, learner: LearnerGroup, rollout_workers: Sequence[Any]) -> dict[str, float]:
        t0 = time.perf_counter()
        if not self._ready:
            host, port = ray.get(learner.workers[0].address.remote(), timeout=learner.timeout)
            learner._all("init_nccl_sync", host, port, 1 + len(rollout_workers), list(rollout_workers))
            self._ready = True
        learner._all("send_weights")
        return {"sync_s": time.perf_counter() - t0}


def make_weight_sync(kind: str) -> WeightSync:
    if kind == "object_store":
        return ObjectStoreSync()
    if kind == "nccl":
        return NcclBroadcastSync()
    raise ValueError(f"unknown weight_sync {kind!r} (object_store or nccl)")


def behaviour_mismatch(samples: Sequence[Sample], learner_logprobs: Sequence[list[float]]) -> dict[str, float]:
    """Learner vs the behaviour log-probs the engine sampled with (same weights: before the update)."""
    diffs = [np.asarray(lp) - np.asarray([b for b, m in zip(s.behaviour_logprobs or [], s.loss_mask) if m][: len(lp)])
             for s, lp in zip(samples, learner_logprobs) if len(lp)]
    return _summarise(diffs)


def logprob_mismatch(learner: LearnerGroup, rollout_worker: Any, samples: Sequence[Sample]) -> dict[str, float]:
    """After a sync: learner vs engine teacher-forced log-probs of the same generated tokens."""
    ours = [lp for lp, _ in learner.evaluate(list(samples))]
    theirs = ray.get(rollout_worker.score.remote([s.tokens for s in samples]), timeout=learner.timeout)
    diffs = []
    for s, a, b in zip(samples, ours, theirs):
        sel = np.asarray(s.loss_mask[1:], dtype=bool)
        if sel.any():
            diffs.append(np.asarray(a) - np.asarray(b)[sel])
    return _summarise(diffs)


def _summarise(diffs: list[np.ndarray]) -> dict[str, float]:
    if not diffs:
        return {"mean_abs": float("nan"), "max_abs": float("nan"), "tokens": 0}
    d = np.concatenate(diffs)
    return {"mean_abs": float(np.abs(d).mean()), "max_abs": float(np.abs(d).max()), "tokens": int(d.size)}
