"""Validation of imported tables: one clear line naming the file, the column and the first bad row.

Rows are reported 1-based as data rows; for CSV files the line number (header = line 1) is added so the
user can jump straight to it in an editor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from sepsis_rl.cohort.spec import FeatureSpec


class CohortInputError(ValueError):
    """Bad user input (file or spec). The CLI prints the message and exits with code 2."""


@dataclass(frozen=True)
class Located:
    """Where an input table came from, to phrase errors."""

    path: Path

    @property
    def is_csv(self) -> bool:
        return self.path.suffix.lower() in (".csv", ".gz", ".tsv")

    def where(self, column: str | None = None, row: int | None = None) -> str:
        parts = [str(self.path)]
        if column is not None:
            parts.append(f"column {column!r}")
        if row is not None:
            line = f" (line {row + 2})" if self.is_csv else ""
            parts.append(f"row {row + 1}{line}")
        return ": ".join([parts[0], ", ".join(parts[1:])]) if len(parts) > 1 else parts[0]

    def fail(self, message: str, column: str | None = None, row: int | None = None) -> CohortInputError:
        return CohortInputError(f"{self.where(column, row)}: {message}")


def require_columns(df: pd.DataFrame, columns: Sequence[str], loc: Located) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        more = f" (and {len(missing) - 1} more: {', '.join(missing[1:4])}{'...' if len(missing) > 4 else ''})" if len(missing) > 1 else ""
        raise loc.fail(f"missing column{more}", column=missing[0])


def numeric_column(df: pd.DataFrame, column: str, loc: Located, required: bool = True) -> np.ndarray:
    """The column as float64; non-numeric entries and (if required) missing ones raise with their row."""
    raw = df[column]
    if pd.api.types.is_numeric_dtype(raw.dtype) and not pd.api.types.is_bool_dtype(raw.dtype):
        values = raw.astype(np.float64)
        bad = np.zeros(len(raw), dtype=bool)
    else:
        values = pd.to_numeric(raw, errors="coerce")
        suspect = values.isna() & raw.notna()
        bad = suspect & (raw.astype(str).str.strip() != "") if suspect.any() else suspect
        bad = np.asarray(bad, dtype=bool)
    if bad.any():
        row = int(np.argmax(bad))
        raise loc.fail(f"non-numeric value {str(raw.iloc[row])!r}", column=column, row=row)
    arr = np.asarray(values, dtype=np.float64)
    if required and np.isnan(arr).any():
        row = int(np.argmax(np.isnan(arr)))
        raise loc.fail("required value is missing", column=column, row=row)
    if np.isinf(arr).any():
        row = int(np.argmax(np.isinf(arr)))
        raise loc.fail("value is infinite", column=column, row=row)
    return arr


def integer_column(df: pd.DataFrame, column: str, loc: Located) -> np.ndarray:
    arr = numeric_column(df, column, loc)
    frac = arr != np.round(arr)
    if frac.any():
        row = int(np.argmax(frac))
        raise loc.fail(f"expected an integer, got {arr[row]!r}", column=column, row=row)
    return arr.astype(np.int64)


def check_bins(values: np.ndarray, column: str, loc: Located) -> None:
    """Bins are the integers 0..4; a fractional bin (2.5) is an error, never truncated to 2."""
    bad = (values < 0) | (values > 4) | (values != np.round(values))
    if bad.any():
        row = int(np.argmax(bad))
        what = "is not a whole bin" if values[row] != np.round(values[row]) else "is outside 0..4"
        raise loc.fail(f"action bin {values[row]:g} {what} (bins are the integers 0..4)", column=column, row=row)


def check_range(values: np.ndarray, feature: FeatureSpec, loc: Located, clip: bool) -> tuple[np.ndarray, int]:
    """Values outside the feature's plausible range: an error at the first such row, or (``clip``) clipped.

    Returns the (possibly clipped) values and how many were clipped.
    """
    lo, hi = feature.plausible_range
    bad = (values < lo) | (values > hi)
    if not bad.any():
        return values, 0
    if not clip:
        row = int(np.argmax(bad))
        raise loc.fail(
            f"value {values[row]:g} {feature.unit} is outside the plausible range [{lo:g}, {hi:g}] "
            f"(fix the data or its unit, or pass --clip-implausible)", column=feature.name, row=row,
        )
    return np.clip(values, lo, hi), int(bad.sum())


def check_nonnegative(values: np.ndarray, column: str, loc: Located) -> None:
    bad = values < 0
    if bad.any():
        row = int(np.argmax(bad))
        raise loc.fail(f"dose {values[row]} is negative", column=column, row=row)


def check_binary(values: np.ndarray, column: str, loc: Located) -> None:
    bad = ~np.isin(values, (0.0, 1.0))
    if bad.any():
        row = int(np.argmax(bad))
        raise loc.fail(f"binary feature must be 0 or 1, got {values[row]}", column=column, row=row)


def check_episode_structure(
    episodes: np.ndarray, steps: np.ndarray, outcome: np.ndarray, loc: Located,
    episode_column: str, step_column: str, outcome_column: str,
) -> np.ndarray:
    """Check (episode, step) uniqueness, contiguous steps and a constant outcome per episode.

    Returns the row order that sorts the table by (episode, step).
    """
    order = np.lexsort((steps, episodes))
    e, s, o = episodes[order], steps[order], outcome[order]
    same = e[1:] == e[:-1]
    dup = same & (s[1:] == s[:-1])
    if dup.any():
        row = int(order[1:][dup].min())
        raise loc.fail(f"duplicate (episode, step) = ({episodes[row]}, {steps[row]})", column=step_column, row=row)
    gap = same & (s[1:] != s[:-1] + 1)
    if gap.any():
        # A gap joins two rows; the one later in the file is where reading top-down first goes wrong
        # (a deleted row: the row after it; an out-of-order step such as a stray -1: that row itself).
        before, after = order[:-1][gap], order[1:][gap]
        culprit = np.maximum(before, after)
        k = int(np.argmin(culprit))
        row, other = int(culprit[k]), int(before[k] if culprit[k] == after[k] else after[k])
        raise loc.fail(
            f"steps of episode {episodes[row]} are not contiguous (sorted, step {steps[int(before[k])]} is followed by "
            f"step {steps[int(after[k])]}; the other row is {loc.where(row=other).split(': ', 1)[1]})",
            column=step_column, row=row,
        )
    changed = same & (o[1:] != o[:-1])
    if changed.any():
        row = int(order[1:][changed].min())
        raise loc.fail(f"outcome changes within episode {episodes[row]}", column=outcome_column, row=row)
    bad_outcome = ~np.isin(outcome, (0.0, 1.0))
    if bad_outcome.any():
        row = int(np.argmax(bad_outcome))
        raise loc.fail(f"outcome must be 0 (survived) or 1 (died), got {outcome[row]}", column=outcome_column, row=row)
    return order
