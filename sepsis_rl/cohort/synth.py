"""Synthesis of the embedded default cohort, and ground-truth rollouts of any policy.

``synthesize`` plays the clinician behaviour policy against fresh simulated patients and returns a
cohort in the standard format, plus the hidden admission state of every patient (``ground_truth.parquet``
in the cohort folder) so that ``true_policy_value`` can later replay any policy from the very same
patients and report its true expected return.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from sepsis_rl.cohort.features import AI_CLINICIAN_FEATURES
from sepsis_rl.cohort.reward import RewardConfig, episode_rewards
from sepsis_rl.cohort.simulator import (
    SYNTH_FLUID_BINS, SYNTH_VASO_BINS, PatientBatch, SepsisSimulator, SimulatorConfig,
)
from sepsis_rl.cohort.spec import CohortSpec, split_action
from sepsis_rl.cohort.splits import split_episodes
from sepsis_rl.cohort.store import build_table, read_spec, write_cohort

if TYPE_CHECKING:
    from sepsis_rl.cohort.truth import Trajectories
    from sepsis_rl.eval.policy import Policy

GROUND_TRUTH_FILE = "ground_truth.parquet"
# v2: calibrated mortality, keyed (common) random numbers; v3: illness-driven hazard (a drug's own SOFA points,
# catecholamine lactate and the running dose are not organ failure), dose-scaled vasoconstriction harm, overload
# counted once, discharge read from the illness, a clinician that escalates vasopressors as the SSC says
SIMULATOR_NAME = "sepsis-rl-synthetic-v3"


def synthetic_spec(seed: int, reward: RewardConfig, config: SimulatorConfig) -> CohortSpec:
    return CohortSpec(
        features=AI_CLINICIAN_FEATURES,
        fluid=SYNTH_FLUID_BINS,
        vaso=SYNTH_VASO_BINS,
        source="synthetic",
        reward=reward.to_dict(),
        simulator={"name": SIMULATOR_NAME, "seed": seed, "config": config.__dict__},
    )


def synthesize(
    n_patients: int, seed: int, config: SimulatorConfig = SimulatorConfig(), progress: bool = True
) -> tuple[dict[str, np.ndarray], PatientBatch]:
    """Columns of a synthetic cohort (rows sorted by episode, step) and the patients at admission.

    The cohort is the clinician played in the fair truth engine with the cohort seed (repeat 0), so a
    truth rollout of the clinician with the same seed reproduces the logged stays exactly.
    """
    from sepsis_rl.cohort.truth import play
    from sepsis_rl.eval.policies import SyntheticClinician

    if n_patients < 1:
        raise ValueError(f"--patients must be >= 1, got {n_patients}")
    sim = SepsisSimulator(config)
    admission = sim.sample_patients(n_patients, np.random.default_rng(seed))
    ids = np.arange(n_patients, dtype=np.int64)
    bar = tqdm(total=config.max_steps, desc="synthesising stays (4h steps)", disable=not progress)
    traj = play(sim, SyntheticClinician(sim.feature_names, seed), admission, ids, seed, on_step=lambda t, n: bar.update())
    bar.close()
    fb, vb = split_action(traj.row_action)
    cols: dict[str, np.ndarray] = {"episode_id": traj.row_rollout, "step": traj.row_step}
    cols.update({name: traj.row_state[:, i] for i, name in enumerate(sim.feature_names)})
    cols.update({"action_fluid": fb, "action_vaso": vb, "fluid_ml": traj.row_fluid_ml, "vaso_dose": traj.row_vaso_dose,
                 "done": traj.row_done})
    cols["outcome"] = (~traj.survived).astype(np.int8)[traj.row_rollout]
    cols["reward"] = episode_rewards(cols["episode_id"], cols["SOFA"], cols["Arterial_lactate"], cols["outcome"], RewardConfig())
    cols["behaviour_prob"] = traj.row_prob
    return cols, admission


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
    cohort_seed: int = 0

    @classmethod
    def load(cls, cohort_dir: str | Path) -> "GroundTruth":
        spec = read_spec(cohort_dir)
        path = Path(cohort_dir) / GROUND_TRUTH_FILE
        if spec.simulator is None or not path.is_file():
            raise ValueError(f"{cohort_dir}: not a synthetic cohort with a ground-truth simulator")
        if spec.simulator.get("name") != SIMULATOR_NAME:
            raise ValueError(f"{cohort_dir}: made by simulator {spec.simulator.get('name')!r}, this version judges with "
                             f"{SIMULATOR_NAME!r}: re-synthesise the cohort (sepsis-rl cohort synth)")
        table = pq.read_table(path)
        config = SimulatorConfig(**spec.simulator.get("config", {}))
        return cls(SepsisSimulator(config), table.column("episode_id").to_numpy(), PatientBatch.from_table(table),
                   int(spec.simulator.get("seed", 0)))

    def patients(self, episode_ids: np.ndarray) -> PatientBatch:
        episode_ids = np.asarray(episode_ids)
        pos = np.minimum(np.searchsorted(self.episode_ids, episode_ids), len(self.episode_ids) - 1)
        unknown = self.episode_ids[pos] != episode_ids
        if unknown.any():
            raise KeyError(f"episode id {episode_ids[unknown][0]} is not in this cohort's ground truth")
        return self.admission.take(pos)


def true_policy_values(
    cohort_dir: str | Path,
    policies: dict[str, "Policy"],
    split: str = "test",
    repeats: int = 1,
    seed: int | None = None,
    gamma: float = 1.0,
    max_patients: int | None = None,
    window: int = 4,
) -> dict[str, "Trajectories"]:
    """Every policy's true rollouts on the same patients of ``split`` with common random numbers.

    ``seed`` defaults to a seed different from the cohort's (the cohort seed would replay the logged
    clinicians' very draws). A failing policy raises; callers that must go on catch per policy.
    """
    from sepsis_rl.cohort.store import read_split
    from sepsis_rl.cohort.truth import play, rollout_ids

    truth = GroundTruth.load(cohort_dir)
    patients = np.unique(read_split(cohort_dir, split).column("episode_id").to_numpy()).astype(np.int64)
    if max_patients is not None:
        patients = patients[:max_patients]
    ids, pids = rollout_ids(patients, repeats)
    seed = truth.cohort_seed + 1_000_003 if seed is None else seed
    start = truth.patients(pids)
    return {name: play(truth.simulator, pol, start, ids, seed, gamma=gamma, window=window, patient_ids=pids)
            for name, pol in policies.items()}
