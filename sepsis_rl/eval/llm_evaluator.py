"""LLM policies evaluated in turn by long-lived Ray actors, each keeping one engine between policies.

A fresh Ray task per LLM policy paid a whole engine start each time (~31 s on 2 cores: importing vLLM,
starting its engine processes), for checkpoints that differ only in their weights. An
``LLMEvaluator`` actor plays its policies one after another on one engine, re-weighted in place
(``EngineSlot``). ``LLMQueue`` hands the LLM policies to at most ``slots`` actors at once, checkpoints
of one model signature per actor (a second vLLM engine in the same process does not start cleanly).
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from sepsis_rl.eval.engine_slot import EngineSlot

log = logging.getLogger(__name__)


class LLMEvaluator:
    """One engine slot; ``evaluate`` is ``evaluate_one`` with that slot (one policy at a time)."""

    def __init__(self) -> None:
        self.slot = EngineSlot()

    def evaluate(self, name: str, sources: Any, cfg: Any) -> dict[str, Any]:
        from sepsis_rl.eval.evaluate import evaluate_one

        out = evaluate_one(name, sources, cfg, engines=self.slot)
        out["engine_swaps"] = self.slot.swaps  # 0 for the policy that started the engine
        return out

    def close(self) -> None:
        self.slot.close()


def group_by_signature(names: list[str], model_of: Callable[[str], str]) -> list[list[str]]:
    """``names`` in groups whose checkpoints can share one engine, each group in the given order. A name
    whose checkpoint cannot be read here gets a group of its own: its actor then reports the real error
    as that policy's failure, and the other policies are evaluated."""
    from sepsis_rl.eval.engine_slot import model_signature

    groups: dict[str, list[str]] = {}
    for n in names:
        try:
            key = model_signature(model_of(n))
        except Exception as e:  # noqa: BLE001 - reported by the policy's own evaluation
            log.warning("%s: no model signature (%s); evaluated on an engine of its own", n, e)
            key = f"unreadable:{n}"
        groups.setdefault(key, []).append(n)
    return list(groups.values())


class LLMQueue:
    """Runs groups of LLM policies on at most ``slots`` ``LLMEvaluator`` actors, one policy per actor at a time.

    An actor serves one group (one model signature) and takes that group's next policy when it finishes
    one; several actors may share a group (GPU clusters: one engine per GPU). ``start`` / ``next_for``
    return ``{ref: name}`` of newly submitted calls; the caller waits on them with its other refs and
    reports each finished one back through ``next_for``."""

    def __init__(self, groups: list[list[str]], sources: Any, cfg: Any, slots: int, resources: dict[str, float]):
        self.groups = [list(g) for g in groups if g]  # names not yet submitted, shared by the group's actors
        self.sources, self.cfg, self.slots, self.resources = sources, cfg, max(1, slots), resources
        self.in_flight: dict[Any, tuple[Any, list[str]]] = {}  # ref -> (its actor, its group's remaining names)

    @property
    def done(self) -> bool:
        return not any(self.groups) and not self.in_flight

    def unsubmitted(self) -> list[str]:
        """Policies not handed to an actor yet (what a stalled evaluation never reached)."""
        return [n for g in self.groups for n in g]

    def start(self) -> dict[Any, str]:
        """Fill the free actor slots, each new actor with the group that has the most policies left."""
        import ray

        submitted: dict[Any, str] = {}
        while any(self.groups) and len(self.in_flight) < self.slots:
            group = max(self.groups, key=len)
            actor = ray.remote(max_restarts=0)(LLMEvaluator).options(**self.resources).remote()
            submitted.update(self._submit(actor, group))
        return submitted

    def next_for(self, ref: Any, actor_died: bool = False) -> dict[Any, str]:
        """After ``ref`` finished (or failed): its actor's next policy of the same group, or, when the group
        is done or the actor died (e.g. its engine was killed for memory), a fresh actor for what is left."""
        import ray

        actor, group = self.in_flight.pop(ref)
        if group and not actor_died:
            return self._submit(actor, group)
        if not actor_died:
            _close(actor)
        ray.kill(actor)  # frees its cores (and the engine's memory) for the next actor
        return self.start()

    def kill_all(self) -> None:
        """Stop every actor now (a stalled evaluation): no graceful engine shutdown."""
        import ray

        for actor, _ in self.in_flight.values():
            ray.kill(actor)
        self.in_flight.clear()

    def _submit(self, actor: Any, group: list[str]) -> dict[Any, str]:
        name = group.pop(0)
        ref = actor.evaluate.remote(name, self.sources, self.cfg)
        self.in_flight[ref] = (actor, group)
        return {ref: name}


def _close(actor: Any, timeout_s: float = 120.0) -> None:
    """Shut the actor's engine down (vLLM's engine processes too) before the actor is killed."""
    import ray

    try:
        ray.get(actor.close.remote(), timeout=timeout_s)
    except Exception as e:  # noqa: BLE001 - the kill that follows frees the resources regardless
        log.warning("closing an LLM evaluator's engine failed (%s); killing the actor", e)
