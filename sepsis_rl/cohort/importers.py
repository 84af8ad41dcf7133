"""Importers of real sepsis extracts into the cohort format.

``ai-clinician``: a MIMIC sepsis extract in the AI Clinician layout (one row per 4-hour block per ICU
stay: ``icustayid``, ``bloc``, the 47 state columns, ``input_4hourly``/``max_dose_vaso`` doses and
``mortality_90d``). ``generic``: any CSV/Parquet plus a YAML spec (see ``GENERIC_SPEC_KEYS``).

Both go through one path: read, validate every required column (first bad row reported, nothing
written), split by episode, bin doses by the training split's quartiles of non-zero doses, compute the
reward, write atomically.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from sepsis_rl.cohort.actions import FLUID_UNIT, VASO_UNIT, quartile_bins, representative_doses
from sepsis_rl.cohort.features import (
    AI_CLINICIAN_FEATURES, AI_CLINICIAN_FLUID_DOSE, AI_CLINICIAN_VASO_DOSE, LACTATE_ALIASES, SOFA_ALIASES,
)
from sepsis_rl.cohort.reward import RewardConfig, episode_rewards
from sepsis_rl.cohort.spec import ActionBins, CohortSpec, FeatureSpec
from sepsis_rl.cohort.splits import split_episodes
from sepsis_rl.cohort.store import build_table, write_cohort
from sepsis_rl.cohort.validation import (
    CohortInputError, Located, check_binary, check_bins, check_episode_structure, check_nonnegative, check_range,
    integer_column, numeric_column, require_columns,
)

log = logging.getLogger(__name__)

GENERIC_SPEC_KEYS = ("episode_column", "step_column", "features", "action", "outcome_column", "reward_column")
GENERIC_REQUIRED_KEYS = ("episode_column", "step_column", "features", "action", "outcome_column")
FEATURE_KEYS = ("column", "unit", "kind", "static")
OPTIONAL_FEATURE_KEYS = ("range",)  # [low, high] of physiologically possible values
ACTION_BIN_KEYS = ("fluid_bin_column", "vaso_bin_column")
ACTION_DOSE_KEYS = ("fluid_dose_column", "vaso_dose_column")


@dataclass(frozen=True)
class ImportMapping:
    """How the columns of an input table map onto the cohort format."""

    source: str
    episode_column: str
    step_column: str
    features: tuple[FeatureSpec, ...]
    outcome_column: str
    fluid_column: str
    vaso_column: str
    action_is_binned: bool
    reward_column: str | None = None

    def role_columns(self) -> dict[str, str]:
        """Columns with a role other than state feature: none of them may also be declared a feature."""
        roles = {self.episode_column: "episode", self.step_column: "step", self.outcome_column: "outcome",
                 self.fluid_column: "fluid action", self.vaso_column: "vasopressor action"}
        if self.reward_column:
            roles[self.reward_column] = "reward"
        return roles

    @property
    def required_columns(self) -> list[str]:
        cols = [self.episode_column, self.step_column, *(f.name for f in self.features),
                self.fluid_column, self.vaso_column, self.outcome_column]
        return cols + ([self.reward_column] if self.reward_column else [])


def read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise CohortInputError(f"{path}: no such file")
    suffix = "".join(path.suffixes[-2:]).lower()
    try:
        if suffix.endswith(".parquet") or suffix.endswith(".pq"):
            return pd.read_parquet(path)
        sep = "\t" if ".tsv" in suffix else ","
        return pd.read_csv(path, sep=sep, low_memory=False)
    except CohortInputError:
        raise
    except Exception as e:  # parser errors of pandas/pyarrow: re-phrase with the file name
        raise CohortInputError(f"{path}: cannot read as CSV or Parquet: {e}") from e


# --------------------------------------------------------------------------------- mapping per format
def ai_clinician_mapping() -> ImportMapping:
    return ImportMapping(
        source="ai-clinician", episode_column="icustayid", step_column="bloc",
        features=AI_CLINICIAN_FEATURES, outcome_column="mortality_90d",
        fluid_column=AI_CLINICIAN_FLUID_DOSE, vaso_column=AI_CLINICIAN_VASO_DOSE, action_is_binned=False,
    )


def generic_mapping(spec_path: Path) -> ImportMapping:
    """Parse and check a generic import spec (YAML); errors name the spec file and the key."""
    if not spec_path.is_file():
        raise CohortInputError(f"{spec_path}: no such spec file")
    try:
        raw = yaml.safe_load(spec_path.read_text())
    except yaml.YAMLError as e:
        raise CohortInputError(f"{spec_path}: not valid YAML: {e}") from e
    loc = f"{spec_path}"
    if not isinstance(raw, dict):
        raise CohortInputError(f"{loc}: the spec must be a mapping with keys {', '.join(GENERIC_SPEC_KEYS)}")
    unknown = [k for k in raw if k not in GENERIC_SPEC_KEYS]
    if unknown:
        raise CohortInputError(f"{loc}: unknown key {unknown[0]!r} (allowed: {', '.join(GENERIC_SPEC_KEYS)})")
    for key in GENERIC_REQUIRED_KEYS:
        if key not in raw:
            raise CohortInputError(f"{loc}: missing key {key!r}")
    for key in ("episode_column", "step_column", "outcome_column"):
        _expect_str(raw[key], f"{loc}: key {key!r}")
    reward_column = raw.get("reward_column")
    if reward_column is not None:
        _expect_str(reward_column, f"{loc}: key 'reward_column'")
    features = _parse_features(raw["features"], loc)
    action = raw["action"]
    if not isinstance(action, dict):
        raise CohortInputError(f"{loc}: key 'action' must be a mapping")
    keys = tuple(sorted(action))
    if keys == tuple(sorted(ACTION_BIN_KEYS)):
        binned, fluid, vaso = True, action["fluid_bin_column"], action["vaso_bin_column"]
    elif keys == tuple(sorted(ACTION_DOSE_KEYS)):
        binned, fluid, vaso = False, action["fluid_dose_column"], action["vaso_dose_column"]
    else:
        raise CohortInputError(
            f"{loc}: key 'action' must have exactly {{fluid_bin_column, vaso_bin_column}} or "
            f"{{fluid_dose_column, vaso_dose_column}}, got {{{', '.join(keys)}}}"
        )
    _expect_str(fluid, f"{loc}: action fluid column")
    _expect_str(vaso, f"{loc}: action vasopressor column")
    names = [f.name for f in features]
    if reward_column is None and not (set(names) & set(SOFA_ALIASES) and set(names) & set(LACTATE_ALIASES)):
        raise CohortInputError(
            f"{loc}: no 'reward_column', so the features must include SOFA (one of {', '.join(SOFA_ALIASES)}) "
            f"and lactate in mmol/L (one of {', '.join(LACTATE_ALIASES)}) to compute the reward"
        )
    mapping = ImportMapping(
        source="generic", episode_column=raw["episode_column"], step_column=raw["step_column"],
        features=features, outcome_column=raw["outcome_column"], fluid_column=fluid, vaso_column=vaso,
        action_is_binned=binned, reward_column=reward_column,
    )
    check_roles(mapping, loc)
    return mapping


def _expect_str(value: Any, where: str) -> None:
    if not isinstance(value, str) or not value:
        raise CohortInputError(f"{where} must be a non-empty column name, got {value!r}")


def _parse_features(raw: Any, loc: str) -> tuple[FeatureSpec, ...]:
    if not isinstance(raw, list) or not raw:
        raise CohortInputError(f"{loc}: key 'features' must be a non-empty list of {{{', '.join(FEATURE_KEYS)}}}")
    out: list[FeatureSpec] = []
    for i, item in enumerate(raw):
        where = f"{loc}: features[{i}]"
        if not isinstance(item, dict) or sorted(set(item) - set(OPTIONAL_FEATURE_KEYS)) != sorted(FEATURE_KEYS):
            got = sorted(item) if isinstance(item, dict) else type(item).__name__
            raise CohortInputError(f"{where} must have the keys {', '.join(FEATURE_KEYS)} "
                                   f"(and optionally {', '.join(OPTIONAL_FEATURE_KEYS)}), got {got}")
        _expect_str(item["column"], f"{where}.column")
        if item["kind"] not in ("continuous", "binary"):
            raise CohortInputError(f"{where}.kind must be 'continuous' or 'binary', got {item['kind']!r}")
        if not isinstance(item["static"], bool):
            raise CohortInputError(f"{where}.static must be true or false, got {item['static']!r}")
        lo, hi = _parse_range(item.get("range"), f"{where}.range")
        out.append(FeatureSpec(item["column"], str(item["unit"]), item["kind"], static=item["static"],
                               plausible_low=lo, plausible_high=hi))
    dup = [n for n in {f.name for f in out} if sum(f.name == n for f in out) > 1]
    if dup:
        raise CohortInputError(f"{loc}: feature column {dup[0]!r} is listed twice")
    return tuple(out)


def _parse_range(raw: Any, where: str) -> tuple[float | None, float | None]:
    """``range: [low, high]`` (either may be null for unbounded); absent = no range check."""
    if raw is None:
        return None, None
    ok = isinstance(raw, list) and len(raw) == 2 and all(
        v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)) for v in raw)
    if not ok:
        raise CohortInputError(f"{where} must be [low, high] (numbers, or null for unbounded), got {raw!r}")
    lo, hi = raw
    if lo is not None and hi is not None and not lo < hi:
        raise CohortInputError(f"{where} [{lo}, {hi}] is empty (low must be < high)")
    return lo, hi


def check_roles(mapping: ImportMapping, where: str) -> None:
    """Outcome, episode, step, action and reward columns are not state: as features they would leak or alias."""
    roles = mapping.role_columns()
    reserved = {c: "cohort" for c in ("episode_id", "step", "action_fluid", "action_vaso", "fluid_ml", "vaso_dose",
                                       "reward", "done", "outcome", "behaviour_prob", "source_episode_id")}
    for f in mapping.features:
        if f.name in roles:
            raise CohortInputError(f"{where}: feature {f.name!r} is the {roles[f.name]} column and cannot be a state feature")
        if f.name in reserved:
            raise CohortInputError(f"{where}: feature {f.name!r} clashes with the cohort format's own {f.name!r} column")


# ----------------------------------------------------------------------------------- the shared path
def import_table(
    df: pd.DataFrame, path: Path, mapping: ImportMapping, seed: int = 0, clip_implausible: bool = False,
) -> tuple[dict, CohortSpec]:
    """Validate ``df`` and convert it to split tables + spec. Raises CohortInputError on bad input.

    Values outside a feature's plausible range are errors, or with ``clip_implausible`` clipped to it;
    the clipped counts per column go into ``spec.extra["clipped_implausible"]`` (the import report).
    """
    loc = Located(path)
    if df.empty:
        raise loc.fail("the file has no rows")
    require_columns(df, mapping.required_columns, loc)
    episodes, source_ids = _episode_ids(df, mapping.episode_column, loc)
    steps = integer_column(df, mapping.step_column, loc)
    outcome = numeric_column(df, mapping.outcome_column, loc)
    features = {}
    for f in mapping.features:
        values = numeric_column(df, f.name, loc)
        if f.kind == "binary":
            check_binary(values, f.name, loc)
        features[f.name] = values
    fluid = numeric_column(df, mapping.fluid_column, loc)
    vaso = numeric_column(df, mapping.vaso_column, loc)
    for col, values in ((mapping.fluid_column, fluid), (mapping.vaso_column, vaso)):
        if mapping.action_is_binned:
            check_bins(values, col, loc)
        else:
            check_nonnegative(values, col, loc)
    reward = numeric_column(df, mapping.reward_column, loc) if mapping.reward_column else None
    order = check_episode_structure(
        episodes, steps, outcome, loc, mapping.episode_column, mapping.step_column, mapping.outcome_column
    )
    if mapping.source == "ai-clinician":
        features["age"] = _age_in_years(features["age"])
    clipped: dict[str, int] = {}
    for f in mapping.features:
        features[f.name], n = check_range(features[f.name], f, loc, clip_implausible)
        if n:
            clipped[f.name] = n
            log.warning("%s: clipped %d implausible value(s) of %r to [%g, %g]", path, n, f.name, *f.plausible_range)

    # sort by (episode, step) and renumber steps from 0
    episodes, steps, outcome = episodes[order], steps[order], outcome[order]
    features = {k: v[order] for k, v in features.items()}
    fluid, vaso = fluid[order], vaso[order]
    first = np.r_[True, episodes[1:] != episodes[:-1]]
    start = np.maximum.accumulate(np.where(first, np.arange(len(steps)), 0))
    steps = np.arange(len(steps)) - start
    done = np.r_[episodes[1:] != episodes[:-1], True]

    split_ids = split_episodes(episodes, seed)
    empty = [name for name, ids in split_ids.items() if len(ids) == 0]
    if empty:
        raise loc.fail(f"{len(np.unique(episodes))} patient(s) cannot give every split (train, val, test) at least "
                       f"one patient: split {empty[0]!r} would be empty (need at least 3 patients)")
    fluid_bins, vaso_bins, fluid_dose, vaso_dose = _actions(
        mapping, fluid, vaso, np.isin(episodes, split_ids["train"])
    )
    reward_cfg = RewardConfig()
    if reward is None:
        names = [f.name for f in mapping.features]
        sofa = features[next(n for n in SOFA_ALIASES if n in names)]
        lac = features[next(n for n in LACTATE_ALIASES if n in names)]
        reward = episode_rewards(episodes, sofa, lac, outcome, reward_cfg)
    else:
        reward = reward[order]
    spec = CohortSpec(
        features=mapping.features, fluid=fluid_bins, vaso=vaso_bins, source=mapping.source,
        reward=reward_cfg.to_dict() if mapping.reward_column is None else {"column": mapping.reward_column},
        extra={"input_file": str(path), "episode_column": mapping.episode_column,
               **({"clipped_implausible": clipped} if clipped else {})},
    )
    cols = {"episode_id": episodes, "step": steps, **features,
            "action_fluid": fluid_bins.to_bin(fluid_dose) if not mapping.action_is_binned else fluid.astype(np.int8),
            "action_vaso": vaso_bins.to_bin(vaso_dose) if not mapping.action_is_binned else vaso.astype(np.int8),
            "fluid_ml": fluid_dose, "vaso_dose": vaso_dose, "reward": reward, "done": done,
            "outcome": outcome.astype(np.int8)}
    if source_ids is not None:
        cols["source_episode_id"] = source_ids[order]
    tables = {name: build_table({k: v[np.isin(episodes, ids)] for k, v in cols.items()}, spec)
              for name, ids in split_ids.items()}
    return tables, spec


def _episode_ids(df: pd.DataFrame, column: str, loc: Located) -> tuple[np.ndarray, np.ndarray | None]:
    """Integer episode ids, and the original ids when they are not integers (e.g. 'stay-17')."""
    raw = df[column]
    if raw.isna().any():
        row = int(np.argmax(raw.isna().to_numpy()))
        raise loc.fail("required value is missing", column=column, row=row)
    numeric = pd.to_numeric(raw, errors="coerce")
    if numeric.notna().all() and (numeric == np.round(numeric)).all():
        return numeric.to_numpy().astype(np.int64), None
    codes, _ = pd.factorize(raw.astype(str))
    return codes.astype(np.int64), raw.astype(str).to_numpy()


def _age_in_years(age: np.ndarray) -> np.ndarray:
    """The MIMIC-III AI Clinician extract stores age in days; MIMIC-IV ones in years."""
    if np.median(age) > 150:
        log.info("age looks like days (median %.0f): converting to years", np.median(age))
        return age / 365.25
    return age


def _actions(
    mapping: ImportMapping, fluid: np.ndarray, vaso: np.ndarray, train: np.ndarray
) -> tuple[ActionBins, ActionBins, np.ndarray, np.ndarray]:
    """Bins (edges from training doses) and the dose columns of the cohort."""
    if mapping.action_is_binned:
        # doses are unknown: edges are the bin ids themselves, representative dose = bin id
        ident = lambda drug, unit: ActionBins(drug, unit, (1.5, 2.5, 3.5), (0.0, 1.0, 2.0, 3.0, 4.0))  # noqa: E731
        return (ident("fluid", "bin"), ident("vasopressor", "bin"),
                np.full(len(fluid), np.nan), np.full(len(vaso), np.nan))
    try:
        fb = quartile_bins("fluid", FLUID_UNIT, fluid[train])
        vb = quartile_bins("vasopressor", VASO_UNIT, vaso[train])
    except ValueError as e:
        raise CohortInputError(str(e)) from e
    return fb, vb, fluid, vaso


def import_cohort(
    fmt: str, input_path: str | Path, out_dir: str | Path, spec_path: str | Path | None = None,
    seed: int = 0, overwrite: bool = False, clip_implausible: bool = False,
) -> Path:
    """Import a file into a cohort folder. Nothing is written unless the whole file is valid."""
    path = Path(input_path)
    if fmt == "ai-clinician":
        if spec_path is not None:
            raise CohortInputError("--spec is only for --format generic")
        mapping = ai_clinician_mapping()
    elif fmt == "generic":
        if spec_path is None:
            raise CohortInputError("--format generic needs --spec SPEC.yaml")
        mapping = generic_mapping(Path(spec_path))
    else:
        raise CohortInputError(f"unknown --format {fmt!r} (choose ai-clinician or generic)")
    df = read_table(path)
    tables, spec = import_table(df, path, mapping, seed, clip_implausible)
    return write_cohort(out_dir, tables, spec, overwrite=overwrite)


__all__ = ["import_cohort", "import_table", "generic_mapping", "ai_clinician_mapping", "representative_doses"]
