"""The strict text grammar of the propose-simulate-refine protocol, and its never-raising parser.

An action is written ``F<f>V<v>`` (fluid bin f, vasopressor bin v, each 0..4; joint id = 5 f + v).

    proposal      := [free text] "<propose>" action ("; " action){K-1} "</propose>"
    prescription  := [free text] "<prescribe>" action "</prescribe>"

Free text (a short rationale) may precede the tag; nothing but whitespace may follow the closing tag,
and exactly one block must be present. Anything else is a parse failure of a named kind, so failures
can be counted per kind and replaced by a defined fallback instead of crashing a rollout worker.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum

from sepsis_rl.cohort.spec import N_BINS

ACTION_RE = re.compile(r"F([0-9])V([0-9])")
PROPOSE_OPEN, PROPOSE_CLOSE = "<propose>", "</propose>"
PRESCRIBE_OPEN, PRESCRIBE_CLOSE = "<prescribe>", "</prescribe>"


class ParseFailure(str, Enum):
    MISSING_TAG = "missing_tag"
    UNCLOSED_TAG = "unclosed_tag"
    MULTIPLE_BLOCKS = "multiple_blocks"
    TRAILING_TEXT = "trailing_text"
    MALFORMED_ACTION = "malformed_action"
    BIN_OUT_OF_RANGE = "bin_out_of_range"
    WRONG_COUNT = "wrong_count"
    DUPLICATE_CANDIDATE = "duplicate_candidate"


@dataclass(frozen=True)
class Parsed:
    """A parse result: ``actions`` on success, ``failure`` (and a detail) otherwise."""

    actions: tuple[int, ...] = ()
    failure: ParseFailure | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.failure is None


def render_action(action: int) -> str:
    if not 0 <= int(action) < N_BINS * N_BINS:
        raise ValueError(f"action must be in 0..24, got {action}")
    return f"F{int(action) // N_BINS}V{int(action) % N_BINS}"


def render_proposal(actions: list[int] | tuple[int, ...]) -> str:
    return PROPOSE_OPEN + "; ".join(render_action(a) for a in actions) + PROPOSE_CLOSE


def render_prescription(action: int) -> str:
    return PRESCRIBE_OPEN + render_action(action) + PRESCRIBE_CLOSE


def _block(text: str, open_tag: str, close_tag: str) -> tuple[str | None, Parsed | None]:
    """The inside of the single ``open_tag ... close_tag`` block of ``text``, or a failure."""
    n_open = text.count(open_tag)
    if n_open == 0:
        return None, Parsed(failure=ParseFailure.MISSING_TAG, detail=f"no {open_tag}")
    if n_open > 1 or text.count(close_tag) > 1:
        return None, Parsed(failure=ParseFailure.MULTIPLE_BLOCKS, detail=f"{n_open} {open_tag} blocks")
    start = text.index(open_tag) + len(open_tag)
    end = text.find(close_tag, start)
    if end < 0:
        return None, Parsed(failure=ParseFailure.UNCLOSED_TAG, detail=f"no {close_tag} after {open_tag}")
    if text[end + len(close_tag) :].strip():
        return None, Parsed(failure=ParseFailure.TRAILING_TEXT, detail="text after the closing tag")
    return text[start:end], None


def _action(item: str) -> tuple[int | None, Parsed | None]:
    m = ACTION_RE.fullmatch(item.strip())
    if m is None:
        return None, Parsed(failure=ParseFailure.MALFORMED_ACTION, detail=f"not F<f>V<v>: {item.strip()[:30]!r}")
    f, v = int(m.group(1)), int(m.group(2))
    if f >= N_BINS or v >= N_BINS:
        return None, Parsed(failure=ParseFailure.BIN_OUT_OF_RANGE, detail=f"{item.strip()} has a bin above 4")
    return f * N_BINS + v, None


def parse_proposal(text: str, k: int) -> Parsed:
    """Parse exactly ``k`` distinct candidate actions."""
    inner, fail = _block(text, PROPOSE_OPEN, PROPOSE_CLOSE)
    if fail:
        return fail
    items = [s for s in inner.split(";")] if inner.strip() else []
    actions = []
    for item in items:
        a, fail = _action(item)
        if fail:
            return fail
        actions.append(a)
    if len(actions) != k:
        return Parsed(failure=ParseFailure.WRONG_COUNT, detail=f"{len(actions)} candidates, expected {k}")
    if len(set(actions)) != len(actions):
        return Parsed(failure=ParseFailure.DUPLICATE_CANDIDATE, detail="a candidate is repeated")
    return Parsed(actions=tuple(actions))


def parse_prescription(text: str) -> Parsed:
    inner, fail = _block(text, PRESCRIBE_OPEN, PRESCRIBE_CLOSE)
    if fail:
        return fail
    a, fail = _action(inner)
    return fail if fail else Parsed(actions=(a,))


@dataclass
class ParseStats:
    """Counts of parse attempts and failures by kind (what the dashboard's failure rate is made of)."""

    attempts: int = 0
    failures: Counter = field(default_factory=Counter)

    def record(self, parsed: Parsed) -> Parsed:
        self.attempts += 1
        if not parsed.ok:
            self.failures[parsed.failure.value] += 1
        return parsed

    @property
    def failure_rate(self) -> float:
        return sum(self.failures.values()) / self.attempts if self.attempts else 0.0
