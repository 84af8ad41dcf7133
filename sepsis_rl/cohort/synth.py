"""Synthesis of the embedded default cohort, and ground-truth rollouts of any policy.

``synthesize`` plays the clinician behaviour policy against fresh simulated patients and returns a
cohort in the standard format, plus the hidden admission state of every patient (``ground_truth.parquet``
in the cohort folder) so that ``true_policy_value`` can later replay any policy from the very same
patients and report its true expected return.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from sepsis_rl.cohort.behaviour import ClinicianPolicy
from sepsis_rl.cohort.features import AI_CLINICIAN_FEATURES
from sepsis_rl.cohort.reward import RewardConfig, episode_rewards, intermediate_reward, terminal_reward
from sepsis_rl.cohort.simulator import (
    FLUID_TOP, SYNTH_FLUID_BINS, SYNTH_VASO_BINS, VASO_TOP, PatientBatch, SepsisSimulator, SimulatorConfig,
)
from sepsis_rl.cohort.spec import CohortSpec, split_action
from sepsis_rl.cohort.splits import split_episodes
from sepsis_rl.cohort.store import build_table, read_spec, write_cohort

GROUND_TRUTH_FILE = "ground_truth.parquet"
SIMULATOR_NAME = "sepsis-rl-synthetic-v1"

# policy(observed features [n, F], step [n], previous joint action [n] (-1 at admission)) -> actions [n]
Policy = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def synthetic_spec(seed: int, reward: RewardConfig, config: SimulatorConfig) -> CohortSpec:
    return CohortSpec(
        features=AI_CLINICIAN_FEATURES,
        fluid=SYNTH_FLUID_BINS,
        vaso=SYNTH_VASO_BINS,
        source="synthetic",
        reward=reward.to_dict(),
        simulator={"name": SIMULATOR_NAME, "seed": seed, "config": config.__dict__},
    )


def _dose_in_bin(bins_: np.ndarray, edges: tuple[float, ...], top: float, rng: np.random.Generator) -> np.ndarray:
    lows = np.array([0.0, 0.0, *edges])
    highs = np.array([0.0, *edges, top])
    u = rng.random(len(bins_))
    return np.where(bins_ == 0, 0.0, lows[bins_] + u * (highs[bins_] - lows[bins_]))


def synthesize(
    n_patients: int, seed: int, config: SimulatorConfig = SimulatorConfig(), progress: bool = True
) -> tuple[dict[str, np.ndarray], PatientBatch]:
    """Columns of a synthetic cohort (rows sorted by episode, step) and the patients at admission."""
    if n_patients < 1:
        raise ValueError(f"--patients must be >= 1, got {n_patients}")
    rng = np.random.default_rng(seed)
    sim = SepsisSimulator(config)
    policy = ClinicianPolicy(sim.feature_names)
    batch = sim.sample_patients(n_patients, rng)
    admission = batch.copy()
    style = policy.sample_styles(n_patients, rng)
    active = np.arange(n_patients)
    prev_vaso = np.zeros(n_patients, dtype=np.int64)
    chunks: list[dict[str, np.ndarray]] = []
    outcome = np.zeros(n_patients, dtype=np.int8)
    for t in tqdm(range(config.max_steps), desc="synthesising stays (4h steps)", disable=not progress):
        if active.size == 0:
            break
        obs = sim.observe(batch, rng)
        sub_style = type(style)(style.fluid_bias[active], style.map_target[active])
        probs = policy.probs(obs, np.full(active.size, t), prev_vaso[active], sub_style)
        actions = policy.sample(probs, rng)
        fb, vb = split_action(actions)
        fluid = _dose_in_bin(fb, SYNTH_FLUID_BINS.edges, FLUID_TOP, rng)
        vaso = _dose_in_bin(vb, SYNTH_VASO_BINS.edges, VASO_TOP, rng)
        out = sim.step(batch, fluid, vaso, rng)
        chunks.append({
            "episode_id": active.copy(), "step": np.full(active.size, t), "obs": obs,
            "action_fluid": fb, "action_vaso": vb, "fluid_ml": fluid, "vaso_dose": vaso,
            "behaviour_prob": probs[np.arange(active.size), actions], "done": out.done,
        })
        outcome[active[out.done]] = (out.died | out.post_icu_death)[out.done]
        prev_vaso[active] = vb
        keep = ~out.done
        active = active[keep]
        batch = out.batch.take(keep)
    cols = _assemble(chunks, outcome, sim.feature_names, RewardConfig())
    return cols, admission


def _assemble(
    chunks: list[dict[str, np.ndarray]], outcome: np.ndarray, names: tuple[str, ...], reward: RewardConfig
) -> dict[str, np.ndarray]:
    cat = {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
    order = np.lexsort((cat["step"], cat["episode_id"]))
    cat = {k: v[order] for k, v in cat.items()}
    obs = cat.pop("obs")
    cols: dict[str, np.ndarray] = {"episode_id": cat["episode_id"], "step": cat["step"]}
    cols.update({name: obs[:, i] for i, name in enumerate(names)})
    cols.update({k: cat[k] for k in ("action_fluid", "action_vaso", "fluid_ml", "vaso_dose", "done")})
    cols["outcome"] = outcome[cat["episode_id"]]
    cols["reward"] = episode_rewards(
        cols["episode_id"], cols["SOFA"], cols["Arterial_lactate"], cols["outcome"], reward
    )
    cols["behaviour_prob"] = cat["behaviour_prob"]
    return cols


def synthesize_cohort(
    out_dir: str | Path,
    n_patients: int,
    seed: int,
    config: SimulatorConfig = SimulatorConfig(),
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Synthesise, split by patient and write a cohort folder (atomically) with its ground truth."""
    cols, admission = synthesize(n_patients, seed, config, progress)
    spec = synthetic_spec(seed, RewardConfig(), config)
    ids = split_episodes(np.arange(n_patients), seed)
    ep = cols["episode_id"]
    splits = {name: build_table({k: v[np.isin(ep, chosen)] for k, v in cols.items()}, spec)
              for name, chosen in ids.items()}
    truth = admission.to_table().add_column(0, "episode_id", pa.array(np.arange(n_patients, dtype=np.int64)))

    def write_truth(tmp: Path) -> None:
        pq.write_table(truth, tmp / GROUND_TRUTH_FILE, compression="zstd")

    return write_cohort(out_dir, splits, spec, overwrite=overwrite, extra_writers=[write_truth])


@dataclass
class GroundTruth:
    """The hidden admission state of a synthetic cohort's patients, for true-value rollouts."""

    simulator: SepsisSimulator
    episode_ids: np.ndarray
    admission: PatientBatch

    @classmethod
    def load(cls, cohort_dir: str | Path) -> "GroundTruth":
        spec = read_spec(cohort_dir)
        path = Path(cohort_dir) / GROUND_TRUTH_FILE
        if spec.simulator is None or spec.simulator.get("name") != SIMULATOR_NAME or not path.is_file():
            raise ValueError(f"{cohort_dir}: not a synthetic cohort with a ground-truth simulator")
        table = pq.read_table(path)
        config = SimulatorConfig(**spec.simulator.get("config", {}))
        return cls(SepsisSimulator(config), table.column("episode_id").to_numpy(), PatientBatch.from_table(table))

    def patients(self, episode_ids: np.ndarray) -> PatientBatch:
        episode_ids = np.asarray(episode_ids)
        pos = np.minimum(np.searchsorted(self.episode_ids, episode_ids), len(self.episode_ids) - 1)
        unknown = self.episode_ids[pos] != episode_ids
        if unknown.any():
            raise KeyError(f"episode id {episode_ids[unknown][0]} is not in this cohort's ground truth")
        return self.admission.take(pos)


@dataclass
class RolloutResult:
    returns: np.ndarray  # undiscounted (or discounted, see gamma) return per rollout
    lengths: np.ndarray
    died: np.ndarray

    @property
    def mean_return(self) -> float:
        return float(self.returns.mean())

    @property
    def mortality(self) -> float:
        return float(self.died.mean())


def rollout_policy(
    sim: SepsisSimulator,
    policy: Policy,
    start: PatientBatch,
    rng: np.random.Generator,
    reward: RewardConfig = RewardConfig(),
    gamma: float = 1.0,
) -> RolloutResult:
    """Play ``policy`` from ``start`` until every stay ends; rewards as in the cohort (charted SOFA, lactate)."""
    n = len(start)
    batch = start.copy()
    active = np.arange(n)
    returns = np.zeros(n)
    lengths = np.zeros(n, dtype=np.int64)
    died = np.zeros(n, dtype=bool)
    prev = np.full(n, -1, dtype=np.int64)
    obs = sim.observe(batch, rng)
    for t in range(sim.config.max_steps):
        if active.size == 0:
            break
        actions = np.asarray(policy(obs, np.full(active.size, t), prev[active]), dtype=np.int64)
        out = sim.step_actions(batch, actions, rng)
        nxt = sim.observe(out.batch, rng)
        sofa_i, lac_i = sim.feature_names.index("SOFA"), sim.feature_names.index("Arterial_lactate")
        r = np.where(
            out.done,
            terminal_reward(out.died | out.post_icu_death, reward),
            intermediate_reward(obs[:, sofa_i], nxt[:, sofa_i], obs[:, lac_i], nxt[:, lac_i], reward),
        )
        returns[active] += (gamma**t) * r
        lengths[active] += 1
        died[active[out.done]] = (out.died | out.post_icu_death)[out.done]
        prev[active] = actions
        keep = ~out.done
        active, batch, obs = active[keep], out.batch.take(keep), nxt[keep]
    return RolloutResult(returns, lengths, died)


def true_policy_value(
    cohort_dir: str | Path, policy: Policy, split: str = "test", repeats: int = 10, seed: int = 0,
    reward: RewardConfig = RewardConfig(), gamma: float = 1.0,
) -> RolloutResult:
    """Monte-Carlo true value of ``policy`` from the admission states of a split's patients."""
    from sepsis_rl.cohort.store import read_split

    truth = GroundTruth.load(cohort_dir)
    ids = np.unique(read_split(cohort_dir, split).column("episode_id").to_numpy())
    start = truth.patients(np.tile(ids, repeats))
    return rollout_policy(truth.simulator, policy, start, np.random.default_rng(seed), reward, gamma)
