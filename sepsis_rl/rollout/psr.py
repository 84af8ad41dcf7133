"""Propose-simulate-refine episodes, played in lockstep for a batch of simulated patients.

Per decision, for all live episodes at once: one ``generate`` for the proposals, one ``simulate`` for
every candidate of every patient, one ``generate`` for the prescriptions, one ``step`` of the simulator.
Token bookkeeping is exact: the prescription is generated as a continuation of the very token ids of
prompt + proposal + tool output (never re-tokenised text), so behaviour log-probabilities refer to the
sequence the learner will score.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from sepsis_rl.agent.fallback import Fallback, default_candidates, fallback_prescription
from sepsis_rl.agent.grammar import PRESCRIBE_CLOSE, PROPOSE_CLOSE, parse_prescription, parse_proposal
from sepsis_rl.agent.prompts import ObservationRenderer, render_result, system_prompt
from sepsis_rl.agent.shaping import SafetyRules, ShapingConfig
from sepsis_rl.cohort.features import LACTATE_ALIASES, SOFA_ALIASES
from sepsis_rl.cohort.spec import CohortSpec
from sepsis_rl.rollout.engine import GenerationEngine, SamplingParams
from sepsis_rl.rollout.episodes import EpisodeRecord, Segment


class Simulator(Protocol):
    """``WorldModelSimulator`` in-process or ``SimulatorPool`` across shards: same calls."""

    def reset(self, episode_ids: np.ndarray, history: np.ndarray, start_steps: np.ndarray | None = None,
              noise_keys: np.ndarray | None = None) -> np.ndarray: ...
    def step(self, episode_ids: np.ndarray, actions: np.ndarray) -> Any: ...
    def simulate(self, episode_ids: np.ndarray, candidates: np.ndarray, horizon: int) -> Any: ...
    def release(self, episode_ids: np.ndarray) -> None: ...


# Chunking a decision batch to the engine's KV cache (``PSRAgent.decide``): the share of the cache a chunk
# may fill (the rest absorbs the estimate's error), the tool block's token allowance (the guided tool
# output of 3 candidates and its chat-template turn: ~120 tokens) and the seed stride between chunks
KV_BUDGET_SHARE = 0.75
TOOL_TOKEN_ALLOWANCE = 160
CHUNK_SEED_STRIDE = 1_000_003


def decision_chunks(prompt_lengths: list[int], budget: int | None, extra: int) -> list[np.ndarray]:
    """Consecutive index ranges whose decisions (prompt + ``extra`` tokens each) fit ``budget`` tokens;
    one range when unbounded; a single decision over the budget still gets a chunk of its own."""
    n = len(prompt_lengths)
    if budget is None or n == 0:
        return [np.arange(n)]
    chunks, start, used = [], 0, 0
    for i, length in enumerate(prompt_lengths):
        need = length + extra
        if i > start and used + need > budget:
            chunks.append(np.arange(start, i))
            start, used = i, 0
        used += need
    chunks.append(np.arange(start, n))
    return chunks


@dataclass(frozen=True)
class AgentConfig:
    k: int = 3  # candidates per proposal
    horizon: int = 4  # simulated 4-hour steps per candidate
    use_simulator: bool = True  # False: decide without tool calls
    # an unparseable prescription: the simulated candidate with the best outcome score (the tool's own
    # advice; with a failed proposal too, the candidates are then the documented defaults). REPEAT_LAST
    # kept "no treatment" at a first decision, which cost failing agents survival for a format slip.
    fallback: Fallback = Fallback.BEST_CANDIDATE
    prompt_style: str = "guided"  # see sepsis_rl.agent.prompts; an agent reads the style it was trained on
    temperature: float = 1.0
    proposal_tokens: int = 48
    prescription_tokens: int = 16
    shaping: ShapingConfig = ShapingConfig()


class PSRAgent:
    """Turns states into token-exact decisions with an engine and a simulator."""

    def __init__(self, engine: GenerationEngine, tokenizer: Any, spec: CohortSpec, config: AgentConfig = AgentConfig()):
        self.engine, self.tok, self.spec, self.cfg = engine, tokenizer, spec, config
        self.renderer = ObservationRenderer(spec, config.prompt_style)
        self.safety = SafetyRules(spec.feature_names, config.shaping)
        self.system = system_prompt(config.k, config.use_simulator, config.prompt_style)
        names = spec.feature_names
        self._idx = {key: next((names.index(n) for n in opts if n in names), None)
                     for key, opts in (("map", ("MeanBP",)), ("lac", LACTATE_ALIASES), ("sofa", SOFA_ALIASES))}

    def _encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False).input_ids)

    def _chat(self, messages: list[dict], generation_prompt: bool = True) -> str:
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def _tool_block(self, observation: str, proposal: str, tool: str) -> str:
        """Template text between the assistant's proposal and its next turn (the tool output as a user turn)."""
        base = [{"role": "system", "content": self.system}, {"role": "user", "content": observation}]
        prefix = self._chat(base) + proposal
        full = self._chat(base + [{"role": "assistant", "content": proposal}, {"role": "user", "content": tool}])
        if full.startswith(prefix):
            return full[len(prefix):]
        return f"<|im_end|>\n<|im_start|>user\n{tool}<|im_end|>\n<|im_start|>assistant\n"

    def prompt_ids(self, observation: str) -> list[int]:
        return self._encode(self._chat([{"role": "system", "content": self.system}, {"role": "user", "content": observation}]))

    def teacher_segment(self, observation: str, prescription: str, proposal: str = "", tool_output: str = "") -> Segment:
        """The segment a decision with these texts produces, token for token as in ``decide`` (for BC)."""
        prompt = self.prompt_ids(observation)
        seg = Segment(prompt_length=len(prompt))
        seg.add(prompt, generated=False)
        if self.cfg.use_simulator:
            seg.add(self._encode(proposal), generated=True)
            seg.add(self._encode(self._tool_block(observation, proposal, tool_output)), generated=False)
        seg.add(self._encode(prescription), generated=True)
        return seg

    def tool_output(self, result: Any, i: int, candidates: list[int], state: np.ndarray) -> str:
        """What the simulate tool shows for patient ``i`` of ``result``, in this agent's prompt style."""
        return render_result(result, i, candidates, self._current(state), self.cfg.prompt_style)

    def _current(self, state: np.ndarray) -> tuple[float, float, float]:
        return tuple(float(state[i]) if i is not None else float("nan") for i in self._idx.values())  # type: ignore[return-value]

    def decide(self, sim: Simulator, ids: np.ndarray, states: np.ndarray, prev_states: list[np.ndarray | None],
               last_actions: list[int | None], steps: list[int], records: list[EpisodeRecord], seed: int) -> np.ndarray:
        """One decision for every episode in ``ids``; appends segments/decisions to ``records``; returns actions.

        Large batches are decided in chunks whose tokens fit the engine's KV cache: a batch that overflows
        it evicts the proposal prompts' cached prefixes before the prescription call, which then prefills
        every prompt a second time (measured on a 2 GiB CPU cache: 200 patients at once 1.04 decisions/s)."""
        rendered = [self.renderer.render_with_anchor(s, p, t, a) for s, p, t, a in zip(states, prev_states, steps, last_actions)]
        obs_texts = [text for text, _ in rendered]
        # the documented candidates of a failed proposal sit around the guideline's dose (guided style) or the running one
        anchors = [g if g is not None else a for (_, g), a in zip(rendered, last_actions)]
        prompts = [self.prompt_ids(o) for o in obs_texts]
        actions = np.zeros(len(ids), dtype=np.int64)
        for c, part in enumerate(decision_chunks([len(p) for p in prompts], self._token_budget(), self.decision_tokens)):
            pick = list(part)
            actions[part] = self._decide(sim, np.asarray(ids)[part], [states[i] for i in pick], [last_actions[i] for i in pick],
                                         [steps[i] for i in pick], [records[i] for i in pick],
                                         None if seed is None else seed + CHUNK_SEED_STRIDE * c,
                                         [obs_texts[i] for i in pick], [anchors[i] for i in pick], [prompts[i] for i in pick])
        return actions

    @property
    def decision_tokens(self) -> int:
        """KV tokens a decision adds beyond its prompt: proposal, tool block (allowance), prescription."""
        return self.cfg.proposal_tokens + TOOL_TOKEN_ALLOWANCE + self.cfg.prescription_tokens

    def _token_budget(self) -> int | None:
        """Tokens one chunk of decisions may hold in the engine's KV cache (None: unbounded)."""
        capacity = getattr(self.engine, "kv_capacity_tokens", None)
        return None if capacity is None else int(KV_BUDGET_SHARE * capacity)

    def _decide(self, sim: Simulator, ids: np.ndarray, states: list[np.ndarray], last_actions: list[int | None],
                steps: list[int], records: list[EpisodeRecord], seed: int | None, obs_texts: list[str],
                anchors: list[int | None], prompts: list[list[int]]) -> np.ndarray:
        cfg = self.cfg
        segments = [Segment(prompt_length=len(p)) for p in prompts]
        for seg, p in zip(segments, prompts):
            seg.add(p, generated=False)
        decisions = [{"step": t, "candidates": [], "candidate_risk": [], "candidate_return": [], "proposal_failure": "", "prescription_failure": "",
                      "proposal_text": "", "prescription_text": "", "observation": o, "tool_output": ""}
                     for t, o in zip(steps, obs_texts)]
        risks: list[np.ndarray | None] = [None] * len(ids)
        cands: list[list[int]] = [[] for _ in ids]
        if cfg.use_simulator:
            t0 = time.perf_counter()
            props = self.engine.generate(prompts, SamplingParams(cfg.proposal_tokens, cfg.temperature, seed, (PROPOSE_CLOSE,)))
            gen_s = time.perf_counter() - t0
            for i, g in enumerate(props):
                parsed = parse_proposal(g.text, cfg.k)
                cands[i] = list(parsed.actions) if parsed.ok else default_candidates(anchors[i], cfg.k)
                decisions[i].update(proposal_text=g.text, proposal_failure=parsed.failure.value if parsed.failure else "",
                                    candidates=cands[i])
                segments[i].add(g.token_ids, generated=True, logprobs=g.logprobs)
            t0 = time.perf_counter()
            sim_res = sim.simulate(ids, np.array(cands, dtype=np.int64), cfg.horizon)
            sim_s = time.perf_counter() - t0
            for i in range(len(ids)):
                tool = self.tool_output(sim_res, i, cands[i], states[i])
                risks[i] = -sim_res.expected_return[i]  # the best-candidate fallback takes the lowest "risk"
                decisions[i].update(tool_output=tool, candidate_risk=[float(r) for r in sim_res.risk_of_death[i]],
                                    candidate_return=[float(r) for r in sim_res.expected_return[i]])
                segments[i].add(self._encode(self._tool_block(obs_texts[i], decisions[i]["proposal_text"], tool)), False)
            for r in records:
                r.simulate_s += sim_s / len(records)
                r.generate_s += gen_s / len(records)
        t0 = time.perf_counter()
        rx = self.engine.generate([s.tokens for s in segments],
                                  SamplingParams(cfg.prescription_tokens, cfg.temperature, None if seed is None else seed + 1,
                                                 (PRESCRIBE_CLOSE,)))
        gen_s = time.perf_counter() - t0
        actions = np.zeros(len(ids), dtype=np.int64)
        for i, g in enumerate(rx):
            parsed = parse_prescription(g.text)
            actions[i] = parsed.actions[0] if parsed.ok else fallback_prescription(cfg.fallback, last_actions[i], cands[i], risks[i])
            violations = self.safety.violations(states[i], int(actions[i]), last_actions[i])
            failures = int(not parsed.ok) + int(bool(decisions[i]["proposal_failure"]))
            decisions[i].update(prescription_text=g.text, action=int(actions[i]),
                                prescription_failure=parsed.failure.value if parsed.failure else "",
                                violations=violations, shaping=self.safety.shaping(violations, failures))
            segments[i].add(g.token_ids, generated=True, logprobs=g.logprobs)
            records[i].segments.append(segments[i])
            records[i].decisions.append(decisions[i])
            records[i].generate_s += gen_s / len(ids)
        return actions


def play_episodes(agent: PSRAgent, sim: Simulator, start_states: np.ndarray, episode_ids: np.ndarray,
                  group_ids: np.ndarray, start_index: np.ndarray, seed: int = 0,
                  shared_group_noise: bool = False) -> list[EpisodeRecord]:
    """Play whole episodes from ``start_states`` [B, F] (or [B, T, F]) until each ends; batched per decision.

    ``shared_group_noise``: a group's episodes meet the same simulator noise (keyed by the group id), so
    their returns differ by their decisions alone: what GRPO's group comparison needs.
    """
    ids = np.asarray(episode_ids, dtype=np.int64)
    records = [EpisodeRecord(int(e), int(g), int(s), agent.cfg.use_simulator) for e, g, s in zip(ids, group_ids, start_index)]
    keys = np.asarray(group_ids, dtype=np.int64) if shared_group_noise else None
    states = np.asarray(sim.reset(ids, start_states, None, keys), dtype=np.float64)
    prev: list[np.ndarray | None] = [None] * len(ids)
    last: list[int | None] = [None] * len(ids)
    live = np.arange(len(ids))
    t = 0
    while live.size:
        acts = agent.decide(sim, ids[live], states[live], [prev[i] for i in live], [last[i] for i in live],
                            [t] * live.size, [records[i] for i in live], seed + 1000 * t)
        t0 = time.perf_counter()
        res = sim.step(ids[live], acts)
        dt = time.perf_counter() - t0
        for j, i in enumerate(live):
            rec = records[i]
            rec.cohort_rewards.append(float(res.reward[j]))
            rec.rewards.append(float(res.reward[j]) + rec.decisions[-1]["shaping"])
            rec.simulate_s += dt / live.size
            rec.died, rec.discharged, rec.truncated = bool(res.died[j]), bool(res.discharged[j]), bool(res.truncated[j])
            rec.death_probability += float(res.death_mass[j])
            prev[i], last[i] = states[i].copy(), int(acts[j])
            states[i] = res.state[j]
        live = live[~np.asarray(res.done, dtype=bool)]
        t += 1
    sim.release(ids)
    return records
