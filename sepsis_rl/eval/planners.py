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


CANDIDATE_MODES = ("all", "clinician3", "guideline3", "guideline5", "support")


def candidate_sets(batch: DecisionBatch, mode: str, proposer: Policy | None, support_cutoff: float = 0.05) -> np.ndarray:
    """[B, K] candidates: all 25 actions; the proposer's mode (the clinician's, or the guideline's: what the
    guided agent is shown) and two (``*3``) or four (``*5``) neighbours; or ``support``: every action the
    proposer (the behaviour policy) takes with probability >= ``support_cutoff`` in this state, padded
    with its most likely action (where the world model has seen data)."""
    if mode == "all":
        return np.tile(ALL, (len(batch), 1))
    if mode not in CANDIDATE_MODES or proposer is None:
        raise ValueError(f"candidates must be one of {CANDIDATE_MODES} (all but 'all' with a proposer), got {mode!r}")
    probs = proposer.action_probs(batch)
    modes = probs.argmax(axis=1)
    if mode == "support":
        return np.where(probs >= support_cutoff, ALL[None, :], modes[:, None])
    return np.array([default_candidates(int(a), int(mode[-1])) for a in modes], dtype=np.int64)


def choose(cands: np.ndarray, values: np.ndarray) -> np.ndarray:
    """The candidate with the highest value per row (ties: the first listed)."""
    return cands[np.arange(len(cands)), np.argmax(values, axis=1)]


class WorldModelPlanner(Policy):
    """Greedy in the world model's expected return over ``horizon`` steps.

    The candidate is given at the first step; later steps hold it, or follow ``continuation`` (a policy
    of the simulated state: a whole-stay objective). ``penalty`` > 0 is pessimism: the score is the
    expected return minus ``penalty`` times the ensemble's epistemic std of the forecast (MOPO-style), so
    actions where the world model is unsure (where clinicians rarely acted) must win by a margin.
    """

    deterministic = True

    def __init__(self, model: object, candidates: str = "all", horizon: int = 1, proposer: Policy | None = None,
                 name: str | None = None, penalty: float = 0.0, continuation: Policy | None = None,
                 support_cutoff: float = 0.05):
        from world_model.simulation import SimulationConfig, WorldModelSimulator

        self.sim = WorldModelSimulator(model, SimulationConfig(stochastic=False, max_steps=10**6))  # type: ignore[arg-type]
        self.mode, self.horizon, self.proposer = candidates, horizon, proposer
        self.penalty, self.continuation, self.support_cutoff = penalty, continuation, support_cutoff
        self.name = name or f"wm_planner{'' if candidates == 'all' else '_k3'}"

    def scores(self, batch: DecisionBatch) -> tuple[np.ndarray, np.ndarray]:
        """([B, K] candidates, [B, K] their planning scores)."""
        cands = candidate_sets(batch, self.mode, self.proposer, self.support_cutoff)
        ids = np.arange(len(batch), dtype=np.int64)
        self.sim.reset(ids, batch.history, batch.steps)
        follow = _continuation(self.continuation, batch, cands.shape[1]) if self.continuation else None
        res = self.sim.simulate(ids, cands, self.horizon, follow)
        self.sim.release(ids)
        return cands, res.expected_return - self.penalty * res.uncertainty

    def action_probs(self, batch: DecisionBatch) -> np.ndarray:
        cands, score = self.scores(batch)
        return one_hot(choose(cands, score))


def _continuation(policy: Policy, batch: DecisionBatch, k: int):  # type: ignore[no-untyped-def]
    """The world model's continuation callback: ``policy``'s most likely action on each simulated window,
    one step later each call (the forks of B patients x K candidates)."""
    calls = [0]
    ids = np.repeat(batch.episode_ids, k)
    steps = np.repeat(batch.steps, k)

    def follow(window: np.ndarray, last: np.ndarray) -> np.ndarray:
        calls[0] += 1
        fork = DecisionBatch(ids, steps + calls[0], window, np.full(len(ids), window.shape[1]), np.asarray(last),
                             batch.feature_names)
        return policy.action_probs(fork).argmax(axis=1)

    return follow


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
