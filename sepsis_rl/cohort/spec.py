"""Feature spec and cohort spec: the metadata that travels with every cohort.

A cohort is only meaningful together with what its columns are (units, kind, normal ranges, which
features are static and which feed SOFA) and how its action bins map to doses. Both are stored in the
Parquet schema metadata and in ``cohort.json`` so a file read alone, or the folder read as a whole,
describes itself.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

FeatureKind = Literal["continuous", "binary"]
N_BINS = 5
N_ACTIONS = N_BINS * N_BINS
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class FeatureSpec:
    """One state feature: its column name, unit and how models should treat it."""

    name: str
    unit: str
    kind: FeatureKind = "continuous"
    static: bool = False
    normal_low: float | None = None
    normal_high: float | None = None
    sofa: bool = False
    description: str = ""
    # Physiologically *possible* values (not normal ones): the importer rejects (or clips) values outside.
    # None = unbounded on that side; cohort.json files written before ranges existed load with both None.
    plausible_low: float | None = None
    plausible_high: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ("continuous", "binary"):
            raise ValueError(f"feature {self.name!r}: kind must be 'continuous' or 'binary', got {self.kind!r}")
        lo, hi = self.plausible_low, self.plausible_high
        if lo is not None and hi is not None and not lo < hi:
            raise ValueError(f"feature {self.name!r}: plausible range [{lo}, {hi}] is empty")

    @property
    def plausible_range(self) -> tuple[float, float]:
        """(low, high) with missing bounds as -inf/+inf; binary features are always [0, 1]."""
        if self.kind == "binary":
            return (0.0, 1.0)
        lo = float("-inf") if self.plausible_low is None else float(self.plausible_low)
        hi = float("inf") if self.plausible_high is None else float(self.plausible_high)
        return (lo, hi)


@dataclass(frozen=True)
class ActionBins:
    """Dose bin edges of one drug. Bin 0 = no drug; bins 1-4 split non-zero doses at ``edges``.

    ``representative`` is the dose a bin stands for when a policy's bin must become a prescription
    (the median training dose within the bin, 0 for bin 0).
    """

    drug: str
    unit: str
    edges: tuple[float, float, float]
    representative: tuple[float, float, float, float, float]

    def to_bin(self, doses: "Any") -> "Any":
        """Bin doses (numpy array): 0 for dose <= 0, else 1 + number of edges strictly below dose."""
        import numpy as np

        d = np.asarray(doses, dtype=np.float64)
        bins = 1 + np.searchsorted(np.asarray(self.edges), d, side="left")
        return np.where(d <= 0, 0, bins).astype(np.int8)

    def bin_range(self, b: int) -> tuple[float, float]:
        """Dose interval (low, high] of bin ``b``; the top bin is open-ended (inf)."""
        if b == 0:
            return (0.0, 0.0)
        lows = (0.0, *self.edges)
        highs = (*self.edges, float("inf"))
        return (lows[b - 1], highs[b - 1])


@dataclass(frozen=True)
class CohortSpec:
    """Everything a consumer needs to interpret a cohort's columns."""

    features: tuple[FeatureSpec, ...]
    fluid: ActionBins
    vaso: ActionBins
    source: str
    reward: dict[str, Any] = field(default_factory=dict)
    simulator: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    version: int = SCHEMA_VERSION

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def static_names(self) -> list[str]:
        return [f.name for f in self.features if f.static]

    @property
    def binary_names(self) -> list[str]:
        return [f.name for f in self.features if f.kind == "binary"]

    def feature(self, name: str) -> FeatureSpec:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(f"cohort has no feature {name!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CohortSpec":
        version = int(d.get("version", SCHEMA_VERSION))
        if version != SCHEMA_VERSION:
            raise ValueError(f"cohort spec version {version} is not supported (this build reads {SCHEMA_VERSION})")
        return cls(
            features=tuple(FeatureSpec(**f) for f in d["features"]),
            fluid=_bins_from_dict(d["fluid"]),
            vaso=_bins_from_dict(d["vaso"]),
            source=d["source"],
            reward=dict(d.get("reward", {})),
            simulator=d.get("simulator"),
            extra=dict(d.get("extra", {})),
            version=version,
        )

    @classmethod
    def from_json(cls, text: str) -> "CohortSpec":
        return cls.from_dict(json.loads(text))


def _bins_from_dict(d: dict[str, Any]) -> ActionBins:
    return ActionBins(
        drug=d["drug"], unit=d["unit"], edges=tuple(d["edges"]), representative=tuple(d["representative"])
    )


def action_index(fluid_bin: "Any", vaso_bin: "Any") -> "Any":
    """Joint action id 0..24 = 5 * fluid bin + vasopressor bin (the AI Clinician convention)."""
    return fluid_bin * N_BINS + vaso_bin


def split_action(action: "Any") -> tuple["Any", "Any"]:
    """Inverse of :func:`action_index`: (fluid bin, vasopressor bin)."""
    return action // N_BINS, action % N_BINS
