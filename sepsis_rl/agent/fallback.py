"""Defined replacements for unparseable agent output (counted and flagged, never raised in a worker)."""

from __future__ import annotations

from enum import Enum

import numpy as np

from sepsis_rl.cohort.spec import N_ACTIONS

NO_TREATMENT = 0


class Fallback(str, Enum):
    REPEAT_LAST = "repeat_last"  # keep the running prescription (no treatment at the first decision)
    BEST_CANDIDATE = "best_candidate"  # the simulated candidate with the best expected outcome (lowest -return)


def default_candidates(last_action: int | None, k: int) -> list[int]:
    """Candidates used when a proposal cannot be parsed: the running prescription and its neighbours.

    The rule is documented so a replaced proposal is still a sensible set, escalating and de-escalating
    alike: keep, one fluid bin up, one vasopressor bin down, one vasopressor bin up, one fluid bin down,
    no treatment, ... deduplicated, in range.
    """
    base = NO_TREATMENT if last_action is None else int(last_action)
    f, v = divmod(base, 5)
    order = [(f, v), (f + 1, v), (f, v - 1), (f, v + 1), (f - 1, v), (0, 0), (2, 0), (1, 1), (2, 2)]
    out: list[int] = []
    for ff, vv in order:
        a = ff * 5 + vv
        if 0 <= ff < 5 and 0 <= vv < 5 and a not in out:
            out.append(a)
    a = 0
    while len(out) < k:  # any k <= 25 is satisfiable
        if a not in out:
            out.append(a)
        a += 1
    return out[:k]


def neighbours(action: int, n: int = 4) -> list[int]:
    """The first ``n`` dose neighbours of ``action`` in ``default_candidates`` order (up and down in either drug first)."""
    return [a for a in default_candidates(int(action), n + 6) if a != int(action)][:n]


def fallback_prescription(
    kind: Fallback, last_action: int | None, candidates: list[int] | None = None, risks: np.ndarray | None = None
) -> int:
    if kind is Fallback.BEST_CANDIDATE and candidates and risks is not None and len(risks) == len(candidates):
        return int(candidates[int(np.argmin(risks))])
    return NO_TREATMENT if last_action is None else int(last_action) % N_ACTIONS
