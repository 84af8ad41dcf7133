"""Rollout workers whose death costs a retry, not a run.

Work is cut into jobs small enough to lose (one batch of episodes each) and every job names the worker
*slot* whose seeds and episode ids it uses, so its episodes are the same whichever worker plays them.
When a worker dies, the jobs it had not finished fail with ``RayActorError``; the slot gets a fresh
worker (prepared, e.g. given the current policy weights, before it takes work) and those jobs are
submitted again with the same arguments. Jobs that finished before the death keep their results (Ray
stores a finished call's result with the caller, not in the worker).

A worker that cannot even be constructed, or a job that raises (a bug or bad input, not a death), is
not retried: the error propagates at once, and the CLI prints the cause's own line, not a retry count.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import ray
from ray.exceptions import RayActorError

log = logging.getLogger(__name__)


class RolloutFailure(RuntimeError):
    """Rollout workers kept dying (more restarts than allowed), or the work timed out."""


@dataclass(frozen=True)
class Job:
    slot: int  # the worker slot whose seeds/ids the job uses, and the worker that runs it
    method: str  # RolloutWorker method: "run" or "evaluate"
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)


class WorkerSet:
    """``n`` rollout workers (Ray actors) made by ``make(slot)``; ``prepare(handle)`` readies a restarted one.

    ``max_restarts``: worker restarts allowed within one ``run`` call before it gives up.
    """

    def __init__(self, make: Callable[[int], Any], n: int, prepare: Callable[[Any], None] | None = None,
                 max_restarts: int = 3, timeout_s: float = 3600.0):
        self.make, self.prepare = make, prepare
        self.max_restarts, self.timeout_s = max_restarts, timeout_s
        self.handles: list[Any] = [make(i) for i in range(n)]
        self.restarts = 0

    def __len__(self) -> int:
        return len(self.handles)

    def check_ready(self, timeout_s: float = 600.0) -> None:
        """Wait until every worker is constructed (a worker killed meanwhile is replaced); a construction
        error is raised as itself."""
        self.restarts = 0
        refs = [h.ping.remote() for h in self.handles]
        for slot, (handle, ref) in enumerate(zip(list(self.handles), refs)):
            try:
                _get([ref], timeout_s)
            except RayActorError as e:
                if getattr(e, "actor_init_failed", False):
                    raise
                self._replace(slot, handle, e)

    def run(self, jobs: list[Job], on_result: Callable[["WorkerSet", int], None] | None = None) -> list[Any]:
        """Results of ``jobs`` in order; a job whose worker died is re-run on the slot's restarted worker.

        ``on_result(self, k)`` is called when job ``k`` has finished (fault-injection tests kill workers there).
        """
        results: list[Any] = [None] * len(jobs)
        self.restarts = 0  # the restart budget is per call (e.g. per RL iteration), not per run
        pending: dict[Any, tuple[int, Any]] = {}  # ref -> (job index, handle it went to)
        for k, job in enumerate(jobs):
            pending[self._submit(job)] = (k, self.handles[job.slot])
        deadline = time.monotonic() + self.timeout_s
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=max(deadline - time.monotonic(), 0.0))
            if not ready:
                raise RolloutFailure(f"{len(pending)} rollout job(s) did not finish within {self.timeout_s:.0f}s")
            ref = ready[0]
            k, handle = pending.pop(ref)
            try:
                results[k] = _get([ref], 0)[0]
                if on_result is not None:
                    on_result(self, k)
            except RayActorError as e:
                if getattr(e, "actor_init_failed", False):
                    raise
                self._replace(jobs[k].slot, handle, e)
                pending[self._submit(jobs[k])] = (k, self.handles[jobs[k].slot])
        return results

    def _submit(self, job: Job) -> Any:
        return getattr(self.handles[job.slot], job.method).remote(*job.args, **job.kwargs)

    def _replace(self, slot: int, dead: Any, cause: BaseException) -> None:
        """A fresh, prepared worker for ``slot`` unless one already replaced ``dead`` (its other jobs fail too)."""
        if self.handles[slot] is not dead:
            return
        while True:
            if self.restarts >= self.max_restarts:
                raise RolloutFailure(f"rollout workers died {self.restarts + 1} times; last: {type(cause).__name__}")
            self.restarts += 1
            log.warning("rollout worker %d died (%s): restarting it and re-running its unfinished episodes",
                        slot, type(cause).__name__)
            try:
                ray.kill(dead, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                pass
            fresh = self.make(slot)
            try:
                _get([fresh.ping.remote()], 600.0)
                if self.prepare is not None:
                    self.prepare(fresh)
            except RayActorError as e:  # the replacement died too: try again within the budget
                if getattr(e, "actor_init_failed", False):
                    raise
                dead, cause = fresh, e
                continue
            self.handles[slot] = fresh
            return

    def kill_all(self) -> None:
        for h in self.handles:
            try:
                ray.kill(h, no_restart=True)
            except Exception:  # noqa: BLE001
                pass


def _get(refs: list[Any], timeout_s: float) -> list[Any]:
    """``ray.get``. An actor's exception arrives as Ray's wrapper, which is also an instance of the
    exception's own class (so ``except CohortInputError`` catches it; the CLI prints the cause's line)."""
    return ray.get(refs, timeout=timeout_s or None)
