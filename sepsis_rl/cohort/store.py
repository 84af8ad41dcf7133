"""The one reader/writer of cohorts on disk.

Layout of a cohort folder::

    DIR/cohort.json      the CohortSpec (features, action bins, reward, source, simulator)
    DIR/train.parquet    one row per (episode, 4-hour step), episodes split by patient
    DIR/val.parquet
    DIR/test.parquet
    DIR/<extra files>    e.g. the synthetic cohort's hidden patient parameters

Every Parquet file also carries the spec in its schema metadata, so a file read alone is
self-describing. Folders are written to a temporary sibling and renamed into place, so a failed or
killed command never leaves a partial cohort behind.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sepsis_rl.checkpoint import atomic_dir
from sepsis_rl.cohort.spec import CohortSpec

SPLITS: tuple[str, ...] = ("train", "val", "test")
SPEC_FILE = "cohort.json"
METADATA_KEY = b"sepsis_rl.cohort_spec"
BASE_COLUMNS: tuple[str, ...] = ("episode_id", "step")
TAIL_COLUMNS: tuple[str, ...] = (
    "action_fluid", "action_vaso", "fluid_ml", "vaso_dose", "reward", "done", "outcome",
)
OPTIONAL_COLUMNS: tuple[str, ...] = ("behaviour_prob",)


class CohortFormatError(ValueError):
    """A cohort folder or file that does not follow the format."""


@dataclass
class Cohort:
    """A cohort read from disk: its spec and one Arrow table per split."""

    path: Path
    spec: CohortSpec
    splits: dict[str, pa.Table]

    def table(self, split: str) -> pa.Table:
        if split not in self.splits:
            raise KeyError(f"cohort {self.path} has no split {split!r} (has {sorted(self.splits)})")
        return self.splits[split]

    def features(self, split: str) -> np.ndarray:
        """State features of a split as a float32 [rows, F] array in spec order."""
        return table_features(self.table(split), self.spec)


def table_features(table: pa.Table, spec: CohortSpec) -> np.ndarray:
    cols = [table.column(n).to_numpy(zero_copy_only=False) for n in spec.feature_names]
    return np.stack(cols, axis=1).astype(np.float32) if cols else np.zeros((table.num_rows, 0), np.float32)


def column_types(spec: CohortSpec) -> dict[str, pa.DataType]:
    """Arrow type of every column of the format, in column order."""
    types: dict[str, pa.DataType] = {"episode_id": pa.int64(), "step": pa.int32()}
    types.update({n: pa.float32() for n in spec.feature_names})
    types.update(
        {
            "action_fluid": pa.int8(), "action_vaso": pa.int8(),
            "fluid_ml": pa.float32(), "vaso_dose": pa.float32(),
            "reward": pa.float64(), "done": pa.bool_(), "outcome": pa.int8(),
            "behaviour_prob": pa.float64(),
        }
    )
    return types


def build_table(columns: dict[str, np.ndarray], spec: CohortSpec) -> pa.Table:
    """Arrow table in the format's column order and types, with the spec in the schema metadata.

    Columns beyond the format (e.g. ``source_episode_id``) are kept after the format's columns.
    """
    types = column_types(spec)
    missing = [c for c in (*BASE_COLUMNS, *spec.feature_names, *TAIL_COLUMNS) if c not in columns]
    if missing:
        raise CohortFormatError(f"cannot build cohort table: missing columns {missing}")
    arrays, names = [], []
    for name, typ in types.items():
        if name in columns:
            arrays.append(pa.array(np.asarray(columns[name]), type=typ))
            names.append(name)
    for name, values in columns.items():
        if name not in types:
            arrays.append(pa.array(values))
            names.append(name)
    table = pa.Table.from_arrays(arrays, names=names)
    return table.replace_schema_metadata({METADATA_KEY: spec.to_json().encode()})


def check_table(table: pa.Table, spec: CohortSpec, where: str) -> None:
    """Raise CohortFormatError if ``table`` lacks a column of the format or has it with another type."""
    types = column_types(spec)
    for name in (*BASE_COLUMNS, *spec.feature_names, *TAIL_COLUMNS):
        if name not in table.column_names:
            raise CohortFormatError(f"{where}: missing column {name!r}")
        if not table.schema.field(name).type.equals(types[name]):
            raise CohortFormatError(
                f"{where}: column {name!r} has type {table.schema.field(name).type}, expected {types[name]}"
            )


def write_cohort(
    out_dir: str | os.PathLike,
    splits: dict[str, pa.Table],
    spec: CohortSpec,
    overwrite: bool = False,
    extra_writers: Iterable[Callable[[Path], None]] = (),
) -> Path:
    """Write a cohort folder atomically; ``extra_writers`` add files (called with the temp folder)."""
    out = Path(out_dir)
    with atomic_dir(out, overwrite) as tmp:
        for name, table in splits.items():
            check_table(table, spec, f"split {name!r}")
            table = table.replace_schema_metadata({METADATA_KEY: spec.to_json().encode()})
            pq.write_table(table, tmp / f"{name}.parquet", compression="zstd")
        (tmp / SPEC_FILE).write_text(spec.to_json())
        for writer in extra_writers:
            writer(tmp)
    return out


def read_spec(cohort_dir: str | os.PathLike) -> CohortSpec:
    path = Path(cohort_dir) / SPEC_FILE
    if not path.is_file():
        raise CohortFormatError(f"{cohort_dir}: not a cohort folder (no {SPEC_FILE})")
    try:
        return CohortSpec.from_json(path.read_text())
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
        raise CohortFormatError(f"{path}: unreadable cohort spec: {e}") from e


def read_split(cohort_dir: str | os.PathLike, split: str, spec: CohortSpec | None = None) -> pa.Table:
    spec = spec or read_spec(cohort_dir)
    path = Path(cohort_dir) / f"{split}.parquet"
    if not path.is_file():
        raise CohortFormatError(f"{cohort_dir}: missing split file {path.name}")
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as e:  # truncated, corrupt or not Parquet at all
        raise CohortFormatError(f"{path}: corrupt or unreadable Parquet file: {' '.join(str(e).split())}") from None
    check_table(table, spec, str(path))
    return table


def read_cohort(cohort_dir: str | os.PathLike, splits: Iterable[str] = SPLITS) -> Cohort:
    spec = read_spec(cohort_dir)
    return Cohort(Path(cohort_dir), spec, {s: read_split(cohort_dir, s, spec) for s in splits})


def spec_of_file(path: str | os.PathLike) -> CohortSpec:
    """The spec embedded in one cohort Parquet file's schema metadata."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except (OSError, pa.ArrowException) as e:
        raise CohortFormatError(f"{path}: corrupt or unreadable Parquet file: {' '.join(str(e).split())}") from None
    if METADATA_KEY not in meta:
        raise CohortFormatError(f"{path}: no cohort spec in the Parquet schema metadata")
    return CohortSpec.from_json(meta[METADATA_KEY].decode())
