"""Live simulated patients driven by the Clinical World Model, in one process.

This is the engine inside each simulator shard (and what benchmarks call "in-process"): it keeps every
live episode's observed history, steps many episodes in one batched forward pass, and forks patients to
roll candidate prescriptions forward for the agent's ``simulate`` tool.

Randomness is keyed by (seed, episode id, step), never by call order, so an episode replayed from its
recorded actions on a fresh shard reproduces exactly the same trajectory (this is how a dead shard's
episodes are rebuilt), and the pool's results equal in-process results for the same seeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence

import numpy as np

from sepsis_rl.cohort.features import LACTATE_ALIASES, SOFA_ALIASES
from sepsis_rl.cohort.reward import RewardConfig, intermediate_reward, terminal_reward
from sepsis_rl.cohort.spec import N_ACTIONS


class Dynamics(Protocol):
    """What the simulator needs of a world model (``world_model.model`` ensembles provide it)."""

    feature_names: Sequence[str]
    window: int

    def predict(self, history: np.ndarray, action: np.ndarray) -> dict[str, np.ndarray]:
        """history [B, T, F] real units, action [B] in 0..24 -> mean, std, epistemic_std [B, F]; p_death, p_discharge [B]."""
        ...


@dataclass(frozen=True)
class SimulationConfig:
    """How simulated episodes run."""

    max_steps: int = 20  # horizon cap of an episode (decisions), counted from its reset
    stochastic: bool = True  # sample next states and endings; False = mean path, endings by p > 0.5
    seed: int = 0
    reward: RewardConfig = field(default_factory=RewardConfig)


@dataclass
class StepResult:
    """One step of a batch of episodes (arrays of length B)."""

    state: np.ndarray  # [B, F] next observed state, real units
    reward: np.ndarray
    done: np.ndarray
    died: np.ndarray
    discharged: np.ndarray
    truncated: np.ndarray  # reached max_steps alive
    p_death: np.ndarray
    uncertainty: np.ndarray  # mean epistemic std over features, in units of the features' spread

    def take(self, idx: np.ndarray) -> "StepResult":
        return StepResult(**{k: v[idx] for k, v in self.__dict__.items()})


@dataclass
class SimulationResult:
    """Candidate roll-outs: per episode b, candidate k and horizon step h."""

    candidates: np.ndarray  # [B, K] joint actions
    map: np.ndarray  # [B, K, H] mmHg (nan if the cohort has no MeanBP)
    lactate: np.ndarray  # [B, K, H] mmol/L
    sofa: np.ndarray  # [B, K, H]
    risk_of_death: np.ndarray  # [B, K] P(death within the horizon)
    uncertainty: np.ndarray  # [B, K] mean epistemic spread over the horizon

    def take(self, idx: np.ndarray) -> "SimulationResult":
        return SimulationResult(**{k: v[idx] for k, v in self.__dict__.items()})


@dataclass
class _Episode:
    states: list[np.ndarray]
    actions: list[int]
    steps: int = 0
    done: bool = False


def _index(names: Sequence[str], options: Sequence[str]) -> int | None:
    return next((list(names).index(o) for o in options if o in names), None)


class WorldModelSimulator:
    """Episodes simulated in a world model: ``reset``, ``step``, ``simulate`` on batches of episode ids."""

    def __init__(self, model: Dynamics, config: SimulationConfig = SimulationConfig()):
        self.model = model
        self.config = config
        self.names = list(model.feature_names)
        self.n_features = len(self.names)
        self.episodes: dict[int, _Episode] = {}
        self._i_map = _index(self.names, ("MeanBP",))
        self._i_lac = _index(self.names, LACTATE_ALIASES)
        self._i_sofa = _index(self.names, SOFA_ALIASES)
        self._scale = np.asarray(getattr(model, "feature_scale", np.ones(self.n_features)), dtype=np.float64)

    # ------------------------------------------------------------------------------------ validation
    def check_ids(self, episode_ids: np.ndarray, live: bool = True) -> np.ndarray:
        ids = np.asarray(episode_ids, dtype=np.int64).reshape(-1)
        for eid in ids:
            ep = self.episodes.get(int(eid))
            if ep is None:
                raise KeyError(f"unknown episode id {int(eid)} (reset it first)")
            if live and ep.done:
                raise ValueError(f"episode {int(eid)} has ended; reset it to start again")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("an episode id appears twice in one request")
        return ids

    @staticmethod
    def check_actions(actions: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        a = np.asarray(actions)
        if a.shape != shape:
            raise ValueError(f"actions have shape {a.shape}, expected {shape}")
        if not np.issubdtype(a.dtype, np.integer) or np.any((a < 0) | (a >= N_ACTIONS)):
            raise ValueError(f"actions must be integers in 0..{N_ACTIONS - 1}, got {a.ravel()[:8].tolist()}")
        return a.astype(np.int64)

    def check_history(self, history: np.ndarray) -> np.ndarray:
        h = np.asarray(history, dtype=np.float64)
        if h.ndim == 2:
            h = h[:, None, :]
        if h.ndim != 3 or h.shape[2] != self.n_features:
            raise ValueError(f"start states must be [B, F] or [B, T, F] with F = {self.n_features}, got {h.shape}")
        if not np.isfinite(h).all():
            raise ValueError("start states contain NaN or infinite values")
        return h

    # ------------------------------------------------------------------------------------------ API
    def reset(self, episode_ids: np.ndarray, history: np.ndarray) -> np.ndarray:
        """Start (or restart) episodes from observed histories [B, T, F]; returns the current states [B, F]."""
        h = self.check_history(history)
        ids = np.asarray(episode_ids, dtype=np.int64).reshape(-1)
        if len(ids) != len(h):
            raise ValueError(f"{len(ids)} episode ids for {len(h)} start histories")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("an episode id appears twice in one reset")
        for eid, hist in zip(ids, h):
            self.episodes[int(eid)] = _Episode(states=list(hist[-self.model.window :]), actions=[])
        return h[:, -1, :].astype(np.float32)

    def release(self, episode_ids: np.ndarray) -> None:
        for eid in np.asarray(episode_ids).reshape(-1):
            self.episodes.pop(int(eid), None)

    def step(self, episode_ids: np.ndarray, actions: np.ndarray) -> StepResult:
        ids = self.check_ids(episode_ids)
        acts = self.check_actions(actions, (len(ids),))
        eps = [self.episodes[int(e)] for e in ids]
        window = self._windows(eps)
        pred = self.model.predict(window, acts)
        u = self._uniforms(ids, [e.steps for e in eps], 1 + self.n_features)
        nxt = np.array(pred["mean"], dtype=np.float64)
        if self.config.stochastic:
            nxt = nxt + pred["std"] * _normal_from_uniform(u[:, 1:])
            for i in getattr(self.model, "binary_index", []):  # binary features: draw from their probability
                nxt[:, i] = (u[:, 1 + i] < pred["mean"][:, i]).astype(np.float64)
        nxt = self._tidy(nxt, window[:, -1, :])
        p_death, p_dis = pred["p_death"], pred["p_discharge"]
        if self.config.stochastic:
            died = u[:, 0] < p_death
            discharged = ~died & (u[:, 0] < p_death + p_dis)
        else:
            died = p_death > 0.5
            discharged = ~died & (p_dis > 0.5)
        steps = np.array([e.steps + 1 for e in eps])
        truncated = ~died & ~discharged & (steps >= self.config.max_steps)
        ended = died | discharged
        done = ended | truncated
        cur = window[:, -1, :]
        reward = np.where(ended, terminal_reward(died, self.config.reward), self._shaping(cur, nxt))
        for e, a, s, d in zip(eps, acts, nxt, done):
            e.states = (e.states + [s])[-self.model.window :]
            e.actions.append(int(a))
            e.steps += 1
            e.done = bool(d)
        unc = (pred["epistemic_std"] / self._scale).mean(axis=1)
        return StepResult(nxt.astype(np.float32), reward, done, died, discharged, truncated, p_death, unc)

    def simulate(self, episode_ids: np.ndarray, candidates: np.ndarray, horizon: int) -> SimulationResult:
        """Fork each patient once per candidate and hold that prescription for ``horizon`` steps (mean path)."""
        if not 1 <= int(horizon) <= 32:
            raise ValueError(f"horizon must be in 1..32, got {horizon}")
        ids = self.check_ids(episode_ids, live=False)
        cands = np.asarray(candidates)
        if cands.ndim != 2 or cands.shape[0] != len(ids):
            raise ValueError(f"candidates must be [B, K] with B = {len(ids)}, got {cands.shape}")
        cands = self.check_actions(cands, cands.shape)
        b, k = cands.shape
        window = np.repeat(self._windows([self.episodes[int(e)] for e in ids]), k, axis=0)
        acts = cands.reshape(-1)
        traj = np.zeros((b * k, horizon, self.n_features))
        alive = np.ones(b * k)
        unc = np.zeros(b * k)
        for h in range(horizon):
            pred = self.model.predict(window, acts)
            nxt = self._tidy(pred["mean"], window[:, -1, :])
            traj[:, h] = nxt
            alive = alive * (1 - pred["p_death"])
            unc += (pred["epistemic_std"] / self._scale).mean(axis=1) / horizon
            window = np.concatenate([window[:, 1:], nxt[:, None, :]], axis=1)
        pick = lambda i: traj[:, :, i].reshape(b, k, horizon) if i is not None else np.full((b, k, horizon), np.nan)  # noqa: E731
        return SimulationResult(cands, pick(self._i_map), pick(self._i_lac), pick(self._i_sofa),
                                (1 - alive).reshape(b, k), unc.reshape(b, k))

    def history(self, episode_id: int) -> tuple[np.ndarray, list[int], int, bool]:
        ep = self.episodes[int(episode_id)]
        return np.stack(ep.states), list(ep.actions), ep.steps, ep.done

    # ----------------------------------------------------------------------------------------- helpers
    def _windows(self, eps: list[_Episode]) -> np.ndarray:
        """Last ``window`` states of each episode, left-padded with the oldest one: [B, W, F]."""
        w = self.model.window
        out = np.empty((len(eps), w, self.n_features))
        for i, e in enumerate(eps):
            s = e.states[-w:]
            out[i] = np.stack([s[0]] * (w - len(s)) + s)
        return out

    def _uniforms(self, ids: np.ndarray, steps: list[int], n: int) -> np.ndarray:
        seed = self.config.seed
        return np.stack([np.random.default_rng([seed, int(e), int(t)]).random(n) for e, t in zip(ids, steps)])

    def _shaping(self, cur: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        if self._i_sofa is None or self._i_lac is None:
            return np.zeros(len(cur))
        s, l = self._i_sofa, self._i_lac
        return intermediate_reward(np.round(cur[:, s]), np.round(nxt[:, s]), cur[:, l], nxt[:, l], self.config.reward)

    def _tidy(self, nxt: np.ndarray, cur: np.ndarray) -> np.ndarray:
        """Keep predictions physical: static features carried, binary ones 0/1, SOFA an integer in 0..24."""
        nxt = np.array(nxt, dtype=np.float64)
        for i in getattr(self.model, "static_index", []):
            nxt[:, i] = cur[:, i]
        for i in getattr(self.model, "binary_index", []):
            nxt[:, i] = (nxt[:, i] > 0.5).astype(np.float64)
        if self._i_sofa is not None:
            nxt[:, self._i_sofa] = np.clip(np.round(nxt[:, self._i_sofa]), 0, 24)
        return nxt


def _normal_from_uniform(u: np.ndarray) -> np.ndarray:
    """Standard normal draws from uniforms (Box-Muller on pairs), so draws depend only on the keyed stream."""
    u = np.clip(u, 1e-12, 1 - 1e-12)
    n = u.shape[1]
    half = (n + 1) // 2
    a = np.concatenate([u, u[:, :1]], axis=1) if n % 2 else u
    r = np.sqrt(-2 * np.log(a[:, :half]))
    theta = 2 * np.pi * a[:, half : 2 * half]
    return np.concatenate([r * np.cos(theta), r * np.sin(theta)], axis=1)[:, :n]
