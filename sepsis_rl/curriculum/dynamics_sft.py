"""Stage 1 data: patient-dynamics text pairs, (state, treatment) -> the charted state 4 hours later.

The model reads the same rendered observation the agent reads, plus a treatment, and writes the key
bedside values of the next state. Learning this first gives the LLM the cause-and-effect the later
stages reason with (paper: "patient-dynamics SFT"). Only the answer tokens carry loss.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from sepsis_rl.agent.grammar import render_action
from sepsis_rl.agent.prompts import COMPACT_LABELS, ObservationRenderer, dose_text
from sepsis_rl.curriculum.cohort_rows import CohortRows
from sepsis_rl.learner.batch import Sample

DYNAMICS_SYSTEM = ("You are a clinical simulator. Given an ICU patient with sepsis and the treatment for the next "
                   "4 hours, predict the patient's state 4 hours later.")


def render_next_state(renderer: ObservationRenderer, state: np.ndarray) -> str:
    """The answer: the bedside rows of the renderer: values and units, one per line (verbose); values on one
    line (compact, guided; terse without the commas)."""
    if renderer.compact:
        return (" " if renderer.style == "terse" else ", ").join(f"{COMPACT_LABELS.get(label, label)} {state[i]:.{dec}f}" for i, label, _, dec in renderer.rows())
    return "\n".join(f"{label} {state[i]:.{dec}f} {unit}" for i, label, unit, dec in renderer.rows())


def dynamics_samples(rows: CohortRows, tokenizer: Any, n: int, seed: int, style: str = "compact") -> list[Sample]:
    """``n`` (observation, treatment) -> next-state samples, rendered in the agent's prompt ``style``."""
    renderer = ObservationRenderer(rows.spec, style)
    out = []
    for i in rows.sample(n, np.random.default_rng(seed), need_next=True):
        prev, last = rows.previous(int(i))
        obs = renderer.render(rows.states[i], prev, int(rows.step[i]), last)
        a = int(rows.action[i])
        user = f"{obs}\nTreatment for the next 4 h: {render_action(a)} ({dose_text(rows.spec, a)}). Predict the state at hour {4 * (int(rows.step[i]) + 1)}."
        messages = [{"role": "system", "content": DYNAMICS_SYSTEM}, {"role": "user", "content": user}]
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages + [{"role": "assistant", "content": render_next_state(renderer, rows.states[i + 1])}],
                                             tokenize=False)
        p_ids = tokenizer(prompt, add_special_tokens=False).input_ids
        f_ids = tokenizer(full, add_special_tokens=False).input_ids
        if f_ids[: len(p_ids)] != p_ids:  # the template must extend the prompt; otherwise mask by length
            raise ValueError("the chat template does not extend the generation prompt: cannot mask the answer")
        answer = f_ids[len(p_ids):]
        while answer and tokenizer.decode(answer[-1:]).strip() == "":  # trailing newline after the end token
            answer = answer[:-1]
        out.append(Sample(p_ids + answer, [0] * len(p_ids) + [1] * len(answer)))
    return out
