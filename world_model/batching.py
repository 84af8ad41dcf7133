"""Request micro-batching for async Ray actors.

Concurrent callers (rollout workers, the serving app) each send a few patients; the world model is
fastest on one large batch. ``MicroBatcher`` queues requests for at most ``max_wait_s`` (or until
``max_batch`` rows are waiting), runs the batched function once on all of them, and hands each caller
its own slice of the result.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Sequence, TypeVar

Req = TypeVar("Req")
Res = TypeVar("Res")


@dataclass
class MicroBatcher(Generic[Req, Res]):
    """Collects requests and calls ``run(requests) -> results`` (same length, same order) once per batch."""

    run: Callable[[Sequence[Req]], Sequence[Res]]
    size_of: Callable[[Req], int]
    max_wait_s: float = 0.001  # 0: merge only what is already queued (one event-loop turn)
    max_batch: int = 4096
    on_batch: Callable[[int, int], Any] | None = None  # (rows, requests) for metrics
    _pending: list[tuple[Req, asyncio.Future]] = field(default_factory=list)
    _rows: int = 0
    _timer: asyncio.Task | None = None

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    async def submit(self, request: Req) -> Res:
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending.append((request, fut))
        self._rows += self.size_of(request)
        if self._rows >= self.max_batch:
            self._flush()
        elif self._timer is None:
            self._timer = asyncio.create_task(self._flush_later())
        return await fut

    async def _flush_later(self) -> None:
        await asyncio.sleep(self.max_wait_s)
        self._timer = None
        self._flush()

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        batch, self._pending, rows, self._rows = self._pending, [], self._rows, 0
        if not batch:
            return
        if self.on_batch is not None:
            self.on_batch(rows, len(batch))
        try:
            results = self.run([req for req, _ in batch])
        except Exception as e:  # every caller of the failed batch sees the error, none hangs
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(e)
            return
        for (_, fut), res in zip(batch, results):
            if not fut.done():
                fut.set_result(res)
