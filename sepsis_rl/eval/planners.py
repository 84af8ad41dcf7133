"""Planner policies: the agent's ceiling with its own tool, and the oracle with the true simulator.

At each decision a planner scores candidate actions by their one-step (or H-step) expected return and
takes the best. ``WorldModelPlanner`` asks the learned world model exactly what the agent's tool shows
(``WorldModelSimulator.simulate``'s expected outcome score); with ``candidates="clinician3"`` it chooses,
like the agent, among a clinician-like proposal: the proposer's most likely action and two neighbours
(one fluid bin up, one vasopressor bin down: ``default_candidates``); ``candidates="guideline3"`` does the same
around the guideline's dose (the guided agent's procedure, done by code: its ceiling). ``TrueSimulatorPlanner`` scores the
same candidates with the ground-truth simulator from the patient's hidden state (an oracle no deployed
policy has: the ceiling of planning itself).
"""

from __future__ import annotations

import numpy as np

from sepsis_rl.agent.fallback import default_candidates
from sepsis_rl.cohort.simulator import PatientBatch, SepsisSimulator
from sepsis_rl.cohort.spec import N_ACTIONS
from sepsis_rl.cohort.truth import true_action_values
from sepsis_rl.eval.policy import DecisionBatch, Policy, one_hot

ALL = np.arange(N_ACTIONS)


def candidate_sets(batch: DecisionBatch, mode: str, proposer: Policy | None) -> np.ndarray:
    """[B, K] candidates: all 25 actions, or the proposer's mode (the clinician's, or the guideline's: what the
    guided agent is shown) and two neighbours."""
    if mode == "all":
        return np.tile(ALL, (len(batch), 1))
    if mode not in ("clinician3", "guideline3") or proposer is None:
        raise ValueError(f"candidates must be 'all', 'clinician3' or 'guideline3' (with a proposer), got {mode!r}")
    modes = proposer.action_probs(batch).argmax(axis=1)
    return np.array([default_candidates(int(a), 3) for a in modes], dtype=np.int64)


def choose(cands: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The candidate with the highest value per row (ties: the first listed)."""
    return cands[np.arange(len(cands)), np.argmax(values, axis=1)]


class WorldModelPlanner(Policy):
    """Greedy in the world model's expected return over ``horizon`` steps, holding the candidate."""

    deterministic = True

    def __init__(self, model: object, candidates: str = "all", horizon: int = 1, proposer: Policy | None = None,
                 name: str | None = None):
        from world_model.simulation import SimulationConfig, WorldModelSimulator

        self.sim = WorldModelSimulator(model, SimulationConfig(stochastic=False, max_steps=10**6))  # type: ignore[arg-type]
        self.mode, self.horizon, self.proposer = candidates, horizon, proposer
        self.name = name or f"wm_planner{'' if candidates == 'all' else '_k3'}"

    def action_probs(self, batch: DecisionBatch) -> np.ndarray:
        cands = candidate_sets(batch, self.mode, self.proposer)
        ids = np.arange(len(batch), dtype=np.int64)
        self.sim.reset(ids, batch.history, batch.steps)
        res = self.sim.simulate(ids, cands, self.horizon)
        self.sim.release(ids)
        return one_hot(choose(cands, res.expected_return))


class TrueSimulatorPlanner(Policy):
    """The oracle: one-step true expected reward from the hidden state (Monte Carlo over ``samples``)."""

    deterministic = True
    truth_only = True  # it reads hidden states: true rollouts only, no logged-data estimates

    def __init__(self, sim: SepsisSimulator, candidates: str = "all", proposer: Policy | None = None,
                 samples: int = 16, seed: int = 0, name: str | None = None):
        self.truth_sim, self.mode, self.proposer, self.samples, self.seed = sim, candidates, proposer, samples, seed
        self.name = name or f"oracle_planner{'' if candidates == 'all' else '_k3'}"
        self._hidden: PatientBatch | None = None

    def see_truth(self, hidden: PatientBatch, batch: DecisionBatch) -> None:
        self._hidden = hidden

    def action_probs(self, batch: DecisionBatch) -> np.ndarray:
        if self._hidden is None or len(self._hidden) != len(batch):
            raise RuntimeError("the true-simulator planner runs only inside ground-truth rollouts")
        cands = candidate_sets(batch, self.mode, self.proposer)
        q = true_action_values(self.truth_sim, self._hidden, ALL, self.samples, self.seed + int(batch.steps[0]))
        return one_hot(choose(cands, np.take_along_axis(q, cands, axis=1)))
