"""The in-model value: a policy played in the learned world model from the test patients' admission.

This is what a world-model-trained agent "believes"; it is labelled *in-model* everywhere and never a
headline where truth exists. Its gap to the true value measures how much a policy exploits world-model
error. Episodes pay the expected reward over the model's endings (``endings="expected"``) for up to 20
decisions, discounted like the other estimates.
"""

from __future__ import annotations

import numpy as np

from sepsis_rl.eval.policy import DecisionBatch, Policy, check_probs


def in_model_value(policy: Policy, model: object, admission: np.ndarray, episode_ids: np.ndarray, gamma: float,
                   max_steps: int = 20, seed: int = 0) -> np.ndarray:
    """[E] expected discounted return of each admission state [E, F] under ``policy`` in ``model``."""
    from world_model.simulation import SimulationConfig, WorldModelSimulator

    window = int(getattr(model, "window", 4))
    sim = WorldModelSimulator(model, SimulationConfig(max_steps=max_steps, endings="expected", seed=seed))  # type: ignore[arg-type]
    ids = np.asarray(episode_ids, dtype=np.int64)
    state = np.asarray(sim.reset(ids, admission[:, None, :]), dtype=np.float64)
    hist = np.repeat(state[:, None, :], window, axis=1)
    lengths, prev, ret = np.ones(len(ids), dtype=np.int64), np.full(len(ids), -1), np.zeros(len(ids))
    names = tuple(sim.names)
    policy.begin(ids)
    for t in range(max_steps):
        batch = DecisionBatch(ids, np.full(len(ids), t), hist, lengths, prev, names)
        probs = check_probs(policy.action_probs(batch), len(ids), policy.name)
        acts = probs.argmax(axis=1) if policy.deterministic else _draw(probs, seed, ids, t)
        res = sim.step(ids, acts)
        ret += gamma**t * res.reward
        hist = np.concatenate([hist[:, 1:], np.asarray(res.state, np.float64)[:, None]], axis=1)
        lengths, prev = np.minimum(lengths + 1, window), acts
    policy.end(ids)
    sim.release(ids)
    return ret


def _draw(probs: np.ndarray, seed: int, ids: np.ndarray, t: int) -> np.ndarray:
    from sepsis_rl.cohort.noise import keyed_uniforms, stream_seed

    u = keyed_uniforms(stream_seed(seed, "in-model-policy"), ids, np.full(len(ids), t), 1)[:, 0]
    cdf = np.cumsum(probs, axis=1)
    return np.minimum((cdf < (u * cdf[:, -1])[:, None]).sum(axis=1), probs.shape[1] - 1)
