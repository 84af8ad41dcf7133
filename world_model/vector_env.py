"""Gymnasium vector-env adapter over the simulator pool, so standard RL libraries can train in the world model.

Observation: the current charted state (real units, float32, F features); action: Discrete(25) joint
fluid/vasopressor bins. Start states are drawn from the first step of a cohort split's stays. Ended
sub-environments reset on the next ``step`` (gymnasium's NEXT_STEP autoreset): that step ignores their
action and returns the new start state with reward 0.
"""

from __future__ import annotations

import itertools
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode

from sepsis_rl.cohort.spec import N_ACTIONS


_env_ids = itertools.count()


class WorldModelVectorEnv(gym.vector.VectorEnv):
    """``num_envs`` simulated patients stepped together through a ``SimulatorPool``."""

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP}

    def __init__(self, pool: Any, start_states: np.ndarray, num_envs: int, seed: int = 0):
        self.pool = pool
        self.start_states = np.asarray(start_states, dtype=np.float64)
        self.num_envs = num_envs
        n_features = self.start_states.shape[1]
        self.single_observation_space = gym.spaces.Box(-np.inf, np.inf, (n_features,), np.float32)
        self.single_action_space = gym.spaces.Discrete(N_ACTIONS)
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self._rng = np.random.default_rng(seed)
        # episode ids unique across envs in this process: env serial in the high bits
        self._base = (next(_env_ids) + 1) * 10**12 + (seed % 1000) * 10**9
        self._counter = itertools.count()
        self._ids = np.zeros(num_envs, dtype=np.int64)
        self._needs_reset = np.zeros(num_envs, dtype=bool)

    def _new_episodes(self, which: np.ndarray) -> np.ndarray:
        picks = self._rng.integers(0, len(self.start_states), len(which))
        ids = np.array([self._base + next(self._counter) for _ in which], dtype=np.int64)
        self._ids[which] = ids
        return self.pool.reset(ids, self.start_states[picks])

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        live = self._ids[self._ids > 0]
        if live.size:
            self.pool.release(live)
        obs = self._new_episodes(np.arange(self.num_envs))
        self._needs_reset[:] = False
        return obs.astype(np.float32), {}

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        actions = np.asarray(actions, dtype=np.int64).reshape(self.num_envs)
        obs = np.zeros((self.num_envs, self.single_observation_space.shape[0]), dtype=np.float32)
        reward = np.zeros(self.num_envs)
        term = np.zeros(self.num_envs, dtype=bool)
        trunc = np.zeros(self.num_envs, dtype=bool)
        restart = np.nonzero(self._needs_reset)[0]
        run = np.nonzero(~self._needs_reset)[0]
        if restart.size:
            self.pool.release(self._ids[restart])
            obs[restart] = self._new_episodes(restart)
        info: dict[str, Any] = {}
        if run.size:
            res = self.pool.step(self._ids[run], actions[run])
            obs[run] = res.state
            reward[run] = res.reward
            term[run] = res.died | res.discharged
            trunc[run] = res.truncated
            info = {"died": np.zeros(self.num_envs, bool), "p_death": np.zeros(self.num_envs)}
            info["died"][run] = res.died
            info["p_death"][run] = res.p_death
        self._needs_reset[:] = False
        self._needs_reset[run] = term[run] | trunc[run]
        return obs, reward, term, trunc, info

    def close_extras(self, **kwargs: Any) -> None:
        live = self._ids[self._ids > 0]
        if live.size:
            self.pool.release(live)
