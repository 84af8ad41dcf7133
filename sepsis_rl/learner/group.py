"""``LearnerGroup``: N DeepSpeed ranks as Ray actors in one placement group, driven as one learner.

Data parallelism is explicit: an update's micro-batches are dealt round-robin (micro-batch j goes to
rank j mod N), so optimizer step s always averages the same micro-batches whatever N is: 2 ranks with
``grad_accum=1`` follow 1 rank with ``grad_accum=2`` step for step.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from sepsis_rl.learner.batch import Sample, micro_batches
from sepsis_rl.learner.config import LearnerConfig
from sepsis_rl.learner.worker import LearnerWorker


class LearnerFailure(RuntimeError):
    """A learner rank died; the group's state is lost past the last checkpoint."""


class LearnerGroup:
    def __init__(self, config: LearnerConfig, timeout_s: float = 600.0):
        self.cfg, self.timeout = config, timeout_s
        bundle: dict[str, float] = {"CPU": config.cpus_per_worker}
        if config.gpus_per_worker:
            bundle["GPU"] = config.gpus_per_worker
        self.pg = placement_group([dict(bundle) for _ in range(config.num_workers)], strategy=config.placement)
        try:
            ray.get(self.pg.ready(), timeout=timeout_s)
        except ray.exceptions.GetTimeoutError as e:
            raise RuntimeError(f"the cluster cannot place {config.num_workers} learner workers of {bundle}") from e
        self.workers = [
            LearnerWorker.options(
                num_cpus=config.cpus_per_worker, num_gpus=config.gpus_per_worker,
                scheduling_strategy=PlacementGroupSchedulingStrategy(self.pg, placement_group_bundle_index=i),
            ).remote(i, config.num_workers, config)
            for i in range(config.num_workers)
        ]
        addr, port = ray.get(self.workers[0].address.remote(), timeout=timeout_s)
        self._all("setup", addr, port)

    def _all(self, method: str, *args: Any, per_rank: list[tuple] | None = None) -> list[Any]:
        """Call ``method`` on every rank. A dead rank fails the call at once: its peers would otherwise wait
        in a collective until the timeout. The group is then unusable (resume from the last checkpoint)."""
        calls = [getattr(w, method).remote(*(per_rank[i] if per_rank else args)) for i, w in enumerate(self.workers)]
        pending, deadline = list(calls), time.monotonic() + self.timeout
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=max(deadline - time.monotonic(), 0.0))
            if not done:
                raise ray.exceptions.GetTimeoutError(f"learner {method!r} did not finish within {self.timeout:.0f}s")
            try:
                ray.get(done[0])
            except ray.exceptions.RayActorError as e:
                rank = calls.index(done[0])
                for w in self.workers:  # peers are blocked in a collective with the dead rank
                    ray.kill(w, no_restart=True)
                raise LearnerFailure(f"learner rank {rank} died during {method!r} ({type(e).__name__}); "
                                     "the run continues from its last checkpoint with --resume") from None
        return ray.get(calls)

    def _deal(self, samples: list[Sample], multiple_of: int) -> list[list[list[Sample]]]:
        batches = micro_batches(samples, self.cfg.micro_batch, multiple_of)
        n = self.cfg.num_workers
        return [batches[r::n] for r in range(n)]

    def train(self, samples: list[Sample], kind: str) -> dict[str, Any]:
        """One pass over ``samples`` (``kind``: sft, grpo or ppo); returns metrics averaged over ranks."""
        t0 = time.perf_counter()
        shares = self._deal(samples, self.cfg.steps_per_update)
        results = self._all("train", per_rank=[(s, kind) for s in shares])
        out: dict[str, Any] = {}
        for k in results[0]:
            if k == "losses":  # per optimizer step, the mean over ranks of each rank's micro-batch losses
                per_rank = np.array([r["losses"] for r in results])
                out["losses"] = per_rank.mean(axis=0).reshape(-1, self.cfg.grad_accum).mean(axis=1).tolist()
            elif k == "tokens":
                out[k] = int(sum(r[k] for r in results))
            else:
                out[k] = float(np.mean([r[k] for r in results if k in r]))
        wall = time.perf_counter() - t0
        out.update(wall_s=wall, tokens_per_s=out["tokens"] / wall)
        return out

    def evaluate(self, samples: list[Sample]) -> list[tuple[list[float], float]]:
        """Learner log-probs (of loss-masked tokens) and values for ``samples``, in order."""
        n = self.cfg.num_workers
        batches = micro_batches(samples, self.cfg.micro_batch, n)
        results = self._all("evaluate", per_rank=[(batches[r::n],) for r in range(n)])
        flat: list[tuple[list[float], float]] = []
        for j in range(len(batches)):  # undo the round-robin deal
            r, pos = j % n, j // n
            offset = sum(len(b) for b in batches[r::n][:pos])
            flat += results[r][offset:offset + len(batches[j])]
        return flat[: len(samples)]

    def state_dict_ref(self) -> Any:
        """ObjectRef of the full LM weights (gathered on rank 0)."""
        refs = self._all("state_dict_ref")
        return refs[0][0]

    def export(self, out_dir: str) -> None:
        self._all("export", out_dir)

    def save(self, location: str) -> list[dict[str, Any]]:
        """Every rank writes its state under ``location``; returns each file's name, size and SHA-256."""
        return self._all("save", location)

    def load(self, location: str) -> None:
        self._all("load", location)

    def shutdown(self) -> None:
        try:
            self._all("shutdown")
        finally:
            for w in self.workers:
                ray.kill(w)
            remove_placement_group(self.pg)
