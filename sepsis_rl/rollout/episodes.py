"""The one episode contract from rollout to learner: an Arrow table, one row per episode.

A decision is one short exchange (observation -> proposal -> tool output -> prescription); its tokens
form one *segment*: ``tokens`` (the prompt included), ``loss_mask`` (1 exactly on tokens the policy
generated), ``logprobs`` (behaviour log-probabilities, 0 where the mask is 0). Segments are independent
contexts, so prompts stay short; the learner trains on every segment with its episode's advantage.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

DECISION_TYPE = pa.struct([
    ("step", pa.int32()),
    ("candidates", pa.list_(pa.int8())),
    ("candidate_risk", pa.list_(pa.float32())),
    ("candidate_return", pa.list_(pa.float32())),  # expected outcome score the tool showed per candidate
    ("action", pa.int8()),
    ("proposal_failure", pa.string()),  # "" when the proposal parsed
    ("prescription_failure", pa.string()),
    ("proposal_text", pa.string()),
    ("prescription_text", pa.string()),
    ("observation", pa.string()),
    ("tool_output", pa.string()),
    ("violations", pa.list_(pa.string())),  # safety rules the prescription broke (agent/shaping.py)
    ("shaping", pa.float32()),  # safety + format reward added to the cohort reward of this step
])

EPISODE_SCHEMA = pa.schema([
    ("episode_id", pa.int64()),
    ("group_id", pa.int64()),  # episodes started from the same state share a group (GRPO)
    ("start_index", pa.int64()),  # row of the start state in the start-state set
    ("use_simulator", pa.bool_()),
    ("tokens", pa.list_(pa.list_(pa.int32()))),  # [segment][token]
    ("loss_mask", pa.list_(pa.list_(pa.int8()))),
    ("logprobs", pa.list_(pa.list_(pa.float32()))),
    ("prompt_lengths", pa.list_(pa.int32())),
    ("decisions", pa.list_(DECISION_TYPE)),
    ("rewards", pa.list_(pa.float32())),  # per step: cohort reward + shaping (what RL optimises)
    ("return", pa.float64()),
    ("cohort_return", pa.float64()),  # the cohort reward alone (comparable with other policies)
    ("length", pa.int32()),
    ("died", pa.bool_()),
    ("death_probability", pa.float64()),  # P(death within the episode): = died with sampled endings
    ("discharged", pa.bool_()),
    ("truncated", pa.bool_()),
    ("parse_failures", pa.int32()),
    ("generated_tokens", pa.int64()),
    ("generate_s", pa.float64()),
    ("simulate_s", pa.float64()),
])


@dataclass
class Segment:
    tokens: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    prompt_length: int = 0

    def add(self, tokens: list[int], generated: bool, logprobs: list[float] | None = None) -> None:
        self.tokens += list(tokens)
        self.loss_mask += [1 if generated else 0] * len(tokens)
        self.logprobs += list(logprobs) if generated and logprobs is not None else [0.0] * len(tokens)


@dataclass
class EpisodeRecord:
    episode_id: int
    group_id: int
    start_index: int
    use_simulator: bool
    segments: list[Segment] = field(default_factory=list)
    decisions: list[dict] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    cohort_rewards: list[float] = field(default_factory=list)
    died: bool = False
    death_probability: float = 0.0
    discharged: bool = False
    truncated: bool = False
    generate_s: float = 0.0
    simulate_s: float = 0.0

    @property
    def parse_failures(self) -> int:
        return sum(bool(d["proposal_failure"]) + bool(d["prescription_failure"]) for d in self.decisions)

    def to_row(self) -> dict:
        return {
            "episode_id": self.episode_id, "group_id": self.group_id, "start_index": self.start_index,
            "use_simulator": self.use_simulator,
            "tokens": [s.tokens for s in self.segments], "loss_mask": [s.loss_mask for s in self.segments],
            "logprobs": [s.logprobs for s in self.segments], "prompt_lengths": [s.prompt_length for s in self.segments],
            "decisions": self.decisions, "rewards": self.rewards, "return": float(np.sum(self.rewards)),
            "cohort_return": float(np.sum(self.cohort_rewards)),
            "length": len(self.rewards), "died": self.died, "death_probability": self.death_probability, "discharged": self.discharged, "truncated": self.truncated,
            "parse_failures": self.parse_failures,
            "generated_tokens": int(sum(sum(s.loss_mask) for s in self.segments)),
            "generate_s": self.generate_s, "simulate_s": self.simulate_s,
        }


def episodes_to_table(records: list[EpisodeRecord]) -> pa.Table:
    return pa.Table.from_pylist([r.to_row() for r in records], schema=EPISODE_SCHEMA)
