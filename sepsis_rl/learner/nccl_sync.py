"""GPU only: the learner side of vLLM's NCCL weight transfer, over rollout workers that are Ray actors.

vLLM (>= 0.32) ships the protocol: a trainer engine (``NCCLTrainerWeightTransferEngine``) that, on the
sending rank, drives the inference side through a *client* (init / start / update / finish) while it
broadcasts every parameter. Here the client fans those calls out to the rollout workers (each owning
one ``VLLMEngine`` with tensor parallel size 1, so engine i sits at NCCL rank 1 + i), and the weight
source gathers ZeRO-3 shards parameter by parameter (a collective every learner rank joins).
Imported only when ``weight_sync: nccl`` is configured; needs CUDA and vLLM.
"""

from __future__ import annotations

from typing import Any, Iterator

import ray
import torch

RPC_TIMEOUT_S = 600.0


class RolloutFanOut:
    """``VLLMWeightSyncClient`` over rollout-worker actors: each call runs on every engine, in parallel."""

    def __init__(self, workers: list[Any]):
        self.workers = workers

    def _all(self, method: str, per_worker: list[tuple] | None = None) -> None:
        calls = [w.engine_call.remote(method, *(per_worker[i] if per_worker else ())) for i, w in enumerate(self.workers)]
        ray.get(calls, timeout=RPC_TIMEOUT_S)

    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        self._all("init_weight_transfer_engine", [({**init_info, "rank_offset": 1 + i},) for i in range(len(self.workers))])

    def start_weight_update(self) -> None:
        self._all("start_weight_update")

    def update_weights(self, update_info: dict[str, Any]) -> None:
        self._all("update_weights", [(update_info,)] * len(self.workers))

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self._all("finish_weight_update")


def trainer_engine(lm: torch.nn.Module, rank: int, host: str, port: int, world_size: int, workers: list[Any],
                   zero3: bool) -> Any:
    from vllm.distributed.weight_transfer.base import ModuleSource, ParamMeta, WeightSource
    from vllm.distributed.weight_transfer.nccl_engine import NCCLTrainerInitInfo, NCCLTrainerWeightTransferEngine

    class ZeroThreeSource(WeightSource):
        """Full parameters gathered from ZeRO-3 shards one at a time (every rank iterates, rank 0 sends)."""

        def metadata(self) -> list[Any]:
            return [ParamMeta(name=n, dtype=p.dtype, shape=tuple(getattr(p, "ds_shape", p.shape)))
                    for n, p in lm.named_parameters()]

        def __iter__(self) -> Iterator[tuple[str, torch.Tensor]]:
            import deepspeed

            for name, p in lm.named_parameters():
                with deepspeed.zero.GatheredParameters([p]):
                    yield name, p.data

    source = ZeroThreeSource() if zero3 else ModuleSource(lm)
    info = NCCLTrainerInitInfo(master_address=host, master_port=port, world_size=world_size, rank=rank)
    return NCCLTrainerWeightTransferEngine.trainer_init(info, client=RolloutFanOut(workers), source=source)
