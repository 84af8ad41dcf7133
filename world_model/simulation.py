"""Live simulated patients driven by the Clinical World Model, in one process.

This is the engine inside each simulator shard (and what benchmarks call "in-process"): it keeps every
live episode's observed history, steps many episodes in one batched forward pass, and forks patients to
roll candidate prescriptions forward for the agent's ``simulate`` tool.

Randomness is keyed by (seed, episode id, step), never by call order, so an episode replayed from its
recorded actions on a fresh shard reproduces exactly the same trajectory (this is how a dead shard's
episodes are rebuilt), and the pool's results equal in-process results for the same seeds.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from sepsis_rl.cohort.features import LACTATE_ALIASES, SOFA_ALIASES
from sepsis_rl.cohort.noise import keyed_uniforms, normal_from_uniform as _normal_from_uniform
from sepsis_rl.cohort.reward import RewardConfig, intermediate_reward, terminal_reward
from sepsis_rl.cohort.spec import N_ACTIONS
from world_model.learned_reward import LearnedReward, reward_column


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
    # "sample": death/discharge drawn each step (the episode ends there). "expected": no ending is drawn;
    # the patient goes on to max_steps and each step pays alive * (p_death R_death + p_discharge R_discharge
    # + p_stay r_intermediate), alive being the probability of no ending so far. Same expected return,
    # without the variance of the ending draws: a held-out mean over 8 patients stops hinging on one death.
    endings: str = "sample"
    seed: int = 0
    # None: the cohort's own reward, from the world model's spec (its formula coefficients, or the reward learned
    # from its reward column: world_model/learned_reward.py); a RewardConfig overrides it
    reward: RewardConfig | None = None

    def __post_init__(self) -> None:
        if self.endings not in ("sample", "expected"):
            raise ValueError(f"endings must be 'sample' or 'expected', got {self.endings!r}")


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
    death_mass: np.ndarray  # probability that the patient dies at this step (= died when endings are sampled)

    def take(self, idx: np.ndarray) -> "StepResult":
        return StepResult(**{k: v[idx] for k, v in self.__dict__.items()})


@dataclass
class SimulationResult:
    """Candidate roll-outs: per episode b, candidate k and horizon step h."""

    candidates: np.ndarray  # [B, K] joint actions
    map: np.ndarray  # [B, K, H] mmHg (nan if the cohort has no MeanBP)
    lactate: np.ndarray  # [B, K, H] mmol/L
    sofa: np.ndarray  # [B, K, H]
    risk_of_death: np.ndarray  # [B, K] P(death within the horizon), nothing accrued after a predicted discharge
    uncertainty: np.ndarray  # [B, K] mean epistemic spread over the horizon
    expected_return: np.ndarray  # [B, K] expected cohort reward over the horizon (the RL reward, expected endings)
    risk_of_discharge: np.ndarray  # [B, K] P(discharged alive within the horizon)

    def take(self, idx: np.ndarray) -> "SimulationResult":
        return SimulationResult(**{k: v[idx] for k, v in self.__dict__.items()})


# a continuation policy for ``simulate``: (simulated windows [N, W, F], last actions [N]) -> next actions [N]
Continuation = Callable[[np.ndarray, np.ndarray], np.ndarray]


def cohort_reward(model: Any, override: RewardConfig | None = None) -> RewardConfig | LearnedReward:
    """The reward the simulator pays: ``override``, else the cohort's own (formula coefficients from the spec, or
    the fit of its reward column). A reward column without a fit is refused: paying the default formula instead
    would train the agent on a reward the cohort never defined."""
    if override is not None:
        return override
    spec = getattr(model, "spec", None)
    column = reward_column(spec)
    if column is not None:
        learned = getattr(model, "learned_reward", None)
        if learned is None:
            raise ValueError(f"the cohort's reward is its column {column!r} but this world model carries no learned "
                             "reward for it (retrain it with this version: world_model/learned_reward.py)")
        return learned
    if spec is None or not spec.reward:
        return RewardConfig()
    known = {f.name for f in fields(RewardConfig)}
    return RewardConfig(**{k: float(v) for k, v in spec.reward.items() if k in known})


def _index(names: Sequence[str], options: Sequence[str]) -> int | None:
    return next((list(names).index(o) for o in options if o in names), None)


class WorldModelSimulator:
    """Episodes simulated in a world model: ``reset``, ``step``, ``simulate`` on batches of episode ids."""

    def __init__(self, model: Dynamics, config: SimulationConfig = SimulationConfig()):
        self.model = model
        self.config = config
        self.names = list(model.feature_names)
        self.n_features = len(self.names)
        # live episodes in preallocated arrays (slot per episode) so a step is vectorised end to end
        self._slot: dict[int, int] = {}
        self._free: list[int] = []
        self._hist = np.zeros((0, model.window, self.n_features))  # last W states, left-padded with the first
        self._steps = np.zeros(0, dtype=np.int64)
        self._t0 = np.zeros(0, dtype=np.int64)  # decisions since admission at reset (the world model's time input)
        self._key = np.zeros(0, dtype=np.int64)  # noise key per slot (default: the episode id)
        self._done = np.zeros(0, dtype=bool)
        self._alive = np.zeros(0)  # P(no ending yet), used when endings are "expected"
        self._actions: dict[int, list[int]] = {}
        self._i_map = _index(self.names, ("MeanBP",))
        self._i_lac = _index(self.names, LACTATE_ALIASES)
        self._i_sofa = _index(self.names, SOFA_ALIASES)
        self._scale = np.asarray(getattr(model, "feature_scale", np.ones(self.n_features)), dtype=np.float64)
        self.reward = cohort_reward(model, config.reward)

    # ------------------------------------------------------------------------------------ validation
    @property
    def live_episodes(self) -> int:
        return len(self._slot)

    def slots(self, episode_ids: np.ndarray, live: bool = True) -> np.ndarray:
        """Storage slots of ``episode_ids``; unknown, repeated or (if ``live``) ended episodes raise."""
        ids = np.asarray(episode_ids, dtype=np.int64).reshape(-1)
        slots = np.fromiter((self._slot.get(int(e), -1) for e in ids), dtype=np.int64, count=len(ids))
        if (slots < 0).any():
            raise KeyError(f"unknown episode id {int(ids[np.argmax(slots < 0)])} (reset it first)")
        if len(np.unique(slots)) != len(slots):
            raise ValueError("an episode id appears twice in one request")
        if live and self._done[slots].any():
            raise ValueError(f"episode {int(ids[np.argmax(self._done[slots])])} has ended; reset it to start again")
        return slots

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
    def reset(self, episode_ids: np.ndarray, history: np.ndarray, start_steps: np.ndarray | None = None,
              noise_keys: np.ndarray | None = None) -> np.ndarray:
        """Start (or restart) episodes from observed histories [B, T, F]; returns the current states [B, F].

        ``start_steps`` [B]: decisions since admission of each history's newest state (default: the number
        of charted states given minus one, right when histories start at admission). ``noise_keys`` [B]:
        what keys each episode's transition noise (default: its id). Episodes that share a key and a start
        meet the same noise, so their returns differ only by their actions: GRPO's group members share one."""
        h = self.check_history(history)
        ids = np.asarray(episode_ids, dtype=np.int64).reshape(-1)
        if len(ids) != len(h):
            raise ValueError(f"{len(ids)} episode ids for {len(h)} start histories")
        if len(np.unique(ids)) != len(ids):
            raise ValueError("an episode id appears twice in one reset")
        w = self.model.window
        padded = h[:, -w:] if h.shape[1] >= w else np.concatenate([np.repeat(h[:, :1], w - h.shape[1], axis=1), h], axis=1)
        self.release(ids)
        slots = self._allocate(len(ids))
        for eid, slot in zip(ids.tolist(), slots.tolist()):
            self._slot[eid] = slot
            self._actions[eid] = []
        self._hist[slots] = padded
        self._steps[slots] = 0
        self._t0[slots] = (np.full(len(ids), h.shape[1] - 1) if start_steps is None
                           else np.asarray(start_steps, dtype=np.int64).reshape(-1))
        self._done[slots] = False
        self._alive[slots] = 1.0
        keys = ids if noise_keys is None else np.asarray(noise_keys, dtype=np.int64).reshape(-1)
        if len(keys) != len(ids):
            raise ValueError(f"{len(keys)} noise keys for {len(ids)} episodes")
        self._key[slots] = keys
        return h[:, -1, :].astype(np.float32)

    def _allocate(self, n: int) -> np.ndarray:
        while len(self._free) < n:
            cap = len(self._steps)
            grow = max(n, cap, 64)
            self._hist = np.concatenate([self._hist, np.zeros((grow, *self._hist.shape[1:]))])
            self._steps = np.concatenate([self._steps, np.zeros(grow, dtype=np.int64)])
            self._t0 = np.concatenate([self._t0, np.zeros(grow, dtype=np.int64)])
            self._key = np.concatenate([self._key, np.zeros(grow, dtype=np.int64)])
            self._done = np.concatenate([self._done, np.zeros(grow, dtype=bool)])
            self._alive = np.concatenate([self._alive, np.zeros(grow)])
            self._free.extend(range(cap + grow - 1, cap - 1, -1))
        return np.array([self._free.pop() for _ in range(n)], dtype=np.int64)

    def release(self, episode_ids: np.ndarray) -> None:
        for eid in np.asarray(episode_ids).reshape(-1).tolist():
            slot = self._slot.pop(eid, None)
            self._actions.pop(eid, None)
            if slot is not None:
                self._free.append(slot)

    def step(self, episode_ids: np.ndarray, actions: np.ndarray) -> StepResult:
        ids = np.asarray(episode_ids, dtype=np.int64).reshape(-1)
        slots = self.slots(ids)
        acts = self.check_actions(actions, (len(ids),))
        window = self._hist[slots]
        pred = self._predict(window, acts, self._t0[slots] + self._steps[slots])
        u = keyed_uniforms(self.config.seed, self._key[slots], self._steps[slots], 1 + self.n_features)
        nxt = np.array(pred["mean"], dtype=np.float64)
        if self.config.stochastic:
            nxt = nxt + pred["std"] * _normal_from_uniform(u[:, 1:])
            for i in getattr(self.model, "binary_index", []):  # binary features: draw from their probability
                nxt[:, i] = (u[:, 1 + i] < pred["mean"][:, i]).astype(np.float64)
        nxt = self._tidy(nxt, window[:, -1, :])
        p_death, p_dis = pred["p_death"], pred["p_discharge"]
        cur = window[:, -1, :]
        if self.config.endings == "expected":
            died = discharged = np.zeros(len(ids), dtype=bool)
            alive = self._alive[slots]
            reward, death_mass = self._expected_reward(alive, p_death, p_dis, self._shaping(cur, nxt))
            self._alive[slots] = alive * np.clip(1.0 - p_death - p_dis, 0.0, 1.0)
        else:
            if self.config.stochastic:
                died = u[:, 0] < p_death
                discharged = ~died & (u[:, 0] < p_death + p_dis)
            else:
                died = p_death > 0.5
                discharged = ~died & (p_dis > 0.5)
            reward = np.where(died | discharged, self._terminal(died), self._shaping(cur, nxt))
            death_mass = died.astype(np.float64)
        steps = self._steps[slots] + 1
        truncated = ~died & ~discharged & (steps >= self.config.max_steps)
        done = died | discharged | truncated
        self._hist[slots] = np.concatenate([window[:, 1:], nxt[:, None, :]], axis=1)
        self._steps[slots] = steps
        self._done[slots] = done
        for eid, act in zip(ids.tolist(), acts.tolist()):
            self._actions[eid].append(act)
        unc = (pred["epistemic_std"] / self._scale).mean(axis=1)
        return StepResult(nxt.astype(np.float32), reward, done, died, discharged, truncated, p_death, unc, death_mass)

    def simulate(self, episode_ids: np.ndarray, candidates: np.ndarray, horizon: int,
                 continuation: Continuation | None = None) -> SimulationResult:
        """Fork each patient once per candidate and roll it forward ``horizon`` steps on the mean path.

        The candidate is given at the first step; later steps repeat it, or follow ``continuation`` (a
        policy of the simulated window and the last action). Each step pays the expected reward over the
        world model's endings, the same quantity RL is trained on: alive * (p_death R_death + p_discharge
        R_discharge + p_stay r_intermediate). A patient predicted discharged (or dead) stops accruing
        anything, so death risk is P(death before discharge within the horizon).
        """
        if not 1 <= int(horizon) <= 32:
            raise ValueError(f"horizon must be in 1..32, got {horizon}")
        ids = np.asarray(episode_ids, dtype=np.int64).reshape(-1)
        slots = self.slots(ids, live=False)
        cands = np.asarray(candidates)
        if cands.ndim != 2 or cands.shape[0] != len(ids):
            raise ValueError(f"candidates must be [B, K] with B = {len(ids)}, got {cands.shape}")
        cands = self.check_actions(cands, cands.shape)
        b, k = cands.shape
        window = np.repeat(self._hist[slots], k, axis=0)
        now = np.repeat(self._t0[slots] + self._steps[slots], k)
        acts = cands.reshape(-1)
        traj = np.zeros((b * k, horizon, self.n_features))
        alive, unc = np.ones(b * k), np.zeros(b * k)
        ret, dead, gone = np.zeros(b * k), np.zeros(b * k), np.zeros(b * k)
        for h in range(horizon):
            if h > 0 and continuation is not None:
                acts = self.check_actions(continuation(window, acts), (b * k,))
            pred = self._predict(window, acts, now + h)
            nxt = self._tidy(pred["mean"], window[:, -1, :])
            traj[:, h] = nxt
            p_death, p_dis = pred["p_death"], pred["p_discharge"]
            r, death_mass = self._expected_reward(alive, p_death, p_dis, self._shaping(window[:, -1, :], nxt))
            ret, dead, gone = ret + r, dead + death_mass, gone + alive * p_dis
            alive = alive * np.clip(1.0 - p_death - p_dis, 0.0, 1.0)
            unc += (pred["epistemic_std"] / self._scale).mean(axis=1) / horizon
            window = np.concatenate([window[:, 1:], nxt[:, None, :]], axis=1)
        pick = lambda i: traj[:, :, i].reshape(b, k, horizon) if i is not None else np.full((b, k, horizon), np.nan)  # noqa: E731
        return SimulationResult(cands, pick(self._i_map), pick(self._i_lac), pick(self._i_sofa), dead.reshape(b, k),
                                unc.reshape(b, k), ret.reshape(b, k), gone.reshape(b, k))

    def history(self, episode_id: int) -> tuple[np.ndarray, list[int], int, bool]:
        """(last W states, actions so far, steps taken, ended) of one episode."""
        slot = int(self.slots(np.array([episode_id]), live=False)[0])
        return self._hist[slot].copy(), list(self._actions[int(episode_id)]), int(self._steps[slot]), bool(self._done[slot])

    # ----------------------------------------------------------------------------------------- helpers
    def _predict(self, window: np.ndarray, actions: np.ndarray, time: np.ndarray) -> dict[str, np.ndarray]:
        """The model's prediction, with the time since admission for models that take it."""
        if getattr(getattr(self.model, "config", None), "time_input", False):
            return self.model.predict(window, actions, time=time)  # type: ignore[call-arg]
        return self.model.predict(window, actions)

    def _expected_reward(self, alive: np.ndarray, p_death: np.ndarray, p_dis: np.ndarray,
                         intermediate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(alive * E[this step's reward over the ending draw], alive * p_death)."""
        r_death, r_dis = self._terminal(np.ones(len(alive), dtype=bool)), self._terminal(np.zeros(len(alive), dtype=bool))
        p_stay = np.clip(1.0 - p_death - p_dis, 0.0, 1.0)
        return alive * (p_death * r_death + p_dis * r_dis + p_stay * intermediate), alive * p_death

    def _terminal(self, died: np.ndarray) -> np.ndarray:
        if isinstance(self.reward, LearnedReward):
            return self.reward.terminal(died)
        return terminal_reward(died, self.reward)

    def _shaping(self, cur: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        if isinstance(self.reward, LearnedReward):
            return self.reward.shaping(cur, nxt)
        if self._i_sofa is None or self._i_lac is None:
            return np.zeros(len(cur))
        s, l = self._i_sofa, self._i_lac
        return intermediate_reward(np.round(cur[:, s]), np.round(nxt[:, s]), cur[:, l], nxt[:, l], self.reward)

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
