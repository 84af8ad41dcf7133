"""What the agent reads: the system prompt, the rendered observation and the rendered tool output.

The observation shows the features a bedside clinician looks at first, each with its change over the
last 4 hours, plus the running treatment. Two styles, recorded in the agent's config (a model reads
the style it was trained on):
* ``compact`` (default): one line of values, units once in the system prompt, a terse tool output with
  the outcome score first. About half the tokens of ``verbose`` (measured with SmolLM2's tokenizer:
  system 233 -> ~130, observation 303 -> ~170, tool output 194 -> ~90), and every prompt token is paid
  for twice per decision at rollout time and again by the learner.
* ``guided`` (the presets' style): ``compact`` plus the Surviving Sepsis Campaign rule's dose for this decision
  and its four dose neighbours (``sepsis_rl/eval/baselines/guideline.py``) under the observation, and the
  tool output ranked best first. The agent proposes the guideline dose and two neighbours, the simulator
  scores them, it prescribes by the ranking: a 135M model cannot learn a clinician's state-to-dose map or
  compare three signed numbers from a few hundred traces, but it learns to copy from its context; the
  decision (which neighbour, or the guideline's own dose) is the world model's. Measured in truth on 400
  test patients (runs/cpu19): the world-model planner over the guideline dose and 2 random neighbours
  +0.072 survival vs the clinician (95% CI +0.040..+0.105), over the clinician's own dose and 2 neighbours
  +0.043, the guideline alone +0.065.
* ``terse`` (the presets' style since stop 23): ``guided`` in fewer tokens, the same information: no
  separators between a value and the next feature (SmolLM2's tokenizer spends a token on every comma
  and parenthesis, and one per digit), "Last F1V2", "Guideline F0V1 near ...", tool lines without
  commas, and a shorter system prompt. Over 600 logged test decisions (SmolLM2's tokenizer): prefilled
  per decision 326 -> 285 tokens (observation 209 -> 180, tool turn 118 -> 106; the system prompt comes
  from the prefix cache), context per generated token 565 -> 484 (decoding reads its whole KV cache).
* ``verbose``: one line per feature with its unit, the dose ranges of the running treatment, and the tool
  output with MAP / lactate / SOFA transitions and uncertainty (agents trained before the compact style).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sepsis_rl.agent.fallback import neighbours
from sepsis_rl.agent.grammar import render_action
from sepsis_rl.cohort.spec import N_BINS, CohortSpec

SYSTEM_PROMPT = """You are an ICU physician treating a patient with sepsis. Every 4 hours you choose \
an IV fluid dose and a vasopressor (norepinephrine) dose, written F<f>V<v> with bins 0 (none) to 4 (highest).
Follow the Surviving Sepsis Campaign: give early fluids when there is hypoperfusion (low MAP, high lactate); \
target a mean arterial pressure (MAP) of 65 mmHg; norepinephrine is the first-line vasopressor when MAP \
stays low despite fluids; reassess fluid responsiveness before more fluid; avoid fluid overload \
(rising balance, falling PaO2/FiO2); wean vasopressors when MAP is well above target.
{mode}"""

PSR_MODE = """First propose {k} different candidates as <propose>F?V?; F?V?; F?V?</propose>. A simulator then \
predicts each candidate's effect over the next hours; its "outcome" score is the expected reward (higher is better: survival, falling SOFA and lactate). Then prescribe one as <prescribe>F?V?</prescribe>."""

DIRECT_MODE = "Answer with one prescription as <prescribe>F?V?</prescribe>."

GUIDED_PSR_MODE = """The Guideline line gives the Surviving Sepsis Campaign rules' dose and its neighbours. Propose \
{k} different candidates, the guideline dose and {others} of its neighbours: <propose>F?V?; F?V?; F?V?</propose>. A \
simulator scores each and lists them best first. Then prescribe one: <prescribe>F?V?</prescribe>."""

PROMPT_STYLES = ("terse", "guided", "compact", "verbose")
GUIDED_STYLES = ("terse", "guided")  # the observation shows the guideline's dose; the tool output is ranked
N_NEIGHBOURS = 4  # dose neighbours shown beside the guideline dose (the proposal picks k - 1 of them)

COMPACT_SYSTEM = """ICU sepsis physician. Every 4 h choose IV fluid and norepinephrine doses, written F<f>V<v>, \
bins 0 (none) to 4 (highest). Surviving Sepsis Campaign: fluids for hypoperfusion (low MAP, high lactate); \
target MAP 65; norepinephrine when MAP stays low; avoid fluid overload; wean vasopressors when MAP is high.
Units: MAP, SBP mmHg; lactate mmol/L; urine, fluid balance mL; (+/-) is the change over 4 h.
{mode}"""

COMPACT_PSR_MODE = """Propose {k} different candidates: <propose>F?V?; F?V?; F?V?</propose>. A simulator scores \
each; higher outcome is better. Then prescribe one: <prescribe>F?V?</prescribe>."""

TERSE_SYSTEM = """ICU sepsis physician. Every 4 h choose IV fluid and norepinephrine doses F<f>V<v>, bins 0 \
(none) to 4 (highest). Surviving Sepsis Campaign: fluids for hypoperfusion, target MAP 65, norepinephrine when MAP \
stays low, avoid fluid overload. Each value is followed by its change over 4 h (MAP, SBP mmHg; lactate mmol/L; \
urine, balance mL).
{mode}"""

TERSE_PSR_MODE = """Propose {k} different candidates, the Guideline dose and {others} of its neighbours: \
<propose>F?V?; F?V?; F?V?</propose>. A simulator lists them best outcome first. Prescribe one: <prescribe>F?V?</prescribe>."""

# labels of the compact observation (shorter where SmolLM2's tokenizer splits the verbose one)
COMPACT_LABELS = {"Creatinine": "Creat", "Urine 4h": "Urine", "PaO2/FiO2": "P/F", "Ventilated": "Vent",
                  "Fluid balance": "Balance", "Platelets": "Plt", "Bilirubin": "Bili"}


def check_style(style: str) -> str:
    if style not in PROMPT_STYLES:
        raise ValueError(f"prompt style must be one of {', '.join(PROMPT_STYLES)}, got {style!r}")
    return style

# (feature, label, decimals), in the order a clinician reads them; missing ones are skipped
BEDSIDE_FEATURES: tuple[tuple[str, str, int], ...] = (
    ("MeanBP", "MAP", 0), ("HR", "HR", 0), ("SysBP", "SBP", 0), ("RR", "RR", 0), ("SpO2", "SpO2", 0),
    ("Temp_C", "Temp", 1), ("GCS", "GCS", 0), ("Arterial_lactate", "Lactate", 1), ("SOFA", "SOFA", 0),
    ("Creatinine", "Creatinine", 1), ("output_4hourly", "Urine 4h", 0), ("PaO2_FiO2", "PaO2/FiO2", 0),
    ("mechvent", "Ventilated", 0), ("cumulated_balance", "Fluid balance", 0), ("Platelets_count", "Platelets", 0),
    ("Total_bili", "Bilirubin", 1), ("Arterial_pH", "pH", 2),
)


def system_prompt(k: int, use_simulator: bool = True, style: str = "compact") -> str:
    if check_style(style) == "terse":
        return TERSE_SYSTEM.format(mode=TERSE_PSR_MODE.format(k=k, others=k - 1) if use_simulator else DIRECT_MODE)
    if style == "guided":
        return COMPACT_SYSTEM.format(mode=GUIDED_PSR_MODE.format(k=k, others=k - 1) if use_simulator else DIRECT_MODE)
    if style == "compact":
        return COMPACT_SYSTEM.format(mode=COMPACT_PSR_MODE.format(k=k) if use_simulator else DIRECT_MODE)
    return SYSTEM_PROMPT.format(mode=PSR_MODE.format(k=k) if use_simulator else DIRECT_MODE)


def dose_text(spec: CohortSpec, action: int) -> str:
    """Human-readable dose ranges of a joint action, from the cohort's bin edges."""
    f, v = divmod(int(action), N_BINS)
    return f"fluid {_range(spec.fluid.bin_range(f))} {spec.fluid.unit}, vasopressor {_range(spec.vaso.bin_range(v))} {spec.vaso.unit}"


def _range(r: tuple[float, float]) -> str:
    lo, hi = r
    if hi == 0:
        return "none"
    return f">{lo:g}" if not np.isfinite(hi) else f"{lo:g}-{hi:g}"


@dataclass(frozen=True)
class ObservationRenderer:
    """Renders a charted state (real units) with trends for one decision."""

    spec: CohortSpec
    style: str = "compact"
    _rule: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if check_style(self.style) in GUIDED_STYLES:
            from sepsis_rl.eval.baselines.guideline import REQUIRED, GuidelinePolicy

            missing = [n for n in REQUIRED if n not in self.spec.feature_names]
            if missing:
                raise ValueError(f"prompt style {self.style!r} shows the guideline's dose, which needs the features {missing} "
                                 "that this cohort does not chart; use prompt_style 'compact'")
            object.__setattr__(self, "_rule", GuidelinePolicy(self.spec))

    @property
    def compact(self) -> bool:
        """One line of values (compact, guided, terse) rather than one line per feature (verbose)."""
        return self.style != "verbose"

    def anchor(self, state: np.ndarray, step: int, last_action: int | None) -> int | None:
        """The guideline's dose for this decision (guided style: what the proposal is built around), else None."""
        if self._rule is None:
            return None
        from sepsis_rl.eval.policy import DecisionBatch

        batch = DecisionBatch(np.zeros(1, dtype=np.int64), np.array([step], dtype=np.int64),
                              np.asarray(state, dtype=np.float64)[None, None, :], np.ones(1, dtype=np.int64),
                              np.array([-1 if last_action is None else int(last_action)], dtype=np.int64),
                              tuple(self.spec.feature_names))
        return int(self._rule.actions(batch)[0])

    def rows(self) -> list[tuple[int, str, str, int]]:
        names = self.spec.feature_names
        chosen = [(names.index(f), label, self.spec.feature(f).unit, d) for f, label, d in BEDSIDE_FEATURES if f in names]
        if len(chosen) < 4:  # an imported cohort with other names: show its dynamic features
            chosen = [(i, f.name, f.unit, 2) for i, f in enumerate(self.spec.features) if not f.static][:17]
        return chosen

    def render(self, state: np.ndarray, previous: np.ndarray | None, step: int, last_action: int | None) -> str:
        return self.render_with_anchor(state, previous, step, last_action)[0]

    def render_with_anchor(self, state: np.ndarray, previous: np.ndarray | None, step: int,
                           last_action: int | None) -> tuple[str, int | None]:
        """The observation and the guideline dose it shows (None unless guided): one rule evaluation for both."""
        if self.compact:
            text = self._compact(state, previous, step, last_action)
            g = self.anchor(state, step, last_action)
            if g is None:
                return text, None
            near = [render_action(a) for a in neighbours(g, N_NEIGHBOURS)]
            if self.style == "terse":
                return f"{text}\nGuideline {render_action(g)} near {' '.join(near)}", g
            return f"{text}\nGuideline: {render_action(g)}; neighbours: {', '.join(near)}.", g
        lines = [f"Hour {4 * step} of the ICU stay (decision {step + 1})."]
        lines.append(self._patient_line(state))
        for i, label, unit, dec in self.rows():
            val = f"{state[i]:.{dec}f}"
            trend = ""
            if previous is not None:
                delta = state[i] - previous[i]
                trend = f" ({'+' if delta >= 0 else '-'}{abs(delta):.{dec}f})"
            lines.append(f"{label} {val} {unit}{trend}")
        if last_action is None:
            lines.append("Last 4 h: no treatment recorded yet.")
        else:
            lines.append(f"Last 4 h: {render_action(last_action)} ({dose_text(self.spec, last_action)}).")
        return "\n".join(lines), None

    def _compact(self, state: np.ndarray, previous: np.ndarray | None, step: int, last_action: int | None) -> str:
        """One line of values with their 4-hour changes: "MAP 77 (+4), HR 84 (-1), ..." (compact, guided), or
        without the separators, "MAP 77 +4 HR 84 -1 ..." (terse: a token saved per comma and parenthesis)."""
        terse = self.style == "terse"
        items = []
        for i, label, _, dec in self.rows():
            item = f"{COMPACT_LABELS.get(label, label)} {state[i]:.{dec}f}"
            if previous is not None and label != "Ventilated":
                delta = state[i] - previous[i]
                change = f"{'+' if delta >= 0 else '-'}{abs(delta):.{dec}f}"
                item += f" {change}" if terse else f" ({change})"
            items.append(item)
        head = f"Hour {4 * step}. {self._patient_line(state)[len('Patient: '):]}\n"
        if terse:
            return head + " ".join(items) + f"\nLast {'none' if last_action is None else render_action(last_action)}"
        return head + ", ".join(items) + f"\nLast 4 h: {'none yet' if last_action is None else render_action(last_action)}."

    def _patient_line(self, state: np.ndarray) -> str:
        names = self.spec.feature_names
        parts = []
        if "age" in names:
            parts.append(f"{state[names.index('age')]:.0f} y")
        if "gender" in names:
            parts.append("female" if state[names.index("gender")] > 0.5 else "male")
        if "Weight_kg" in names:
            parts.append(f"{state[names.index('Weight_kg')]:.0f} kg")
        return "Patient: " + (", ".join(parts) if parts else "adult") + "."


def render_simulation(
    candidates: list[int], map_: np.ndarray, lactate: np.ndarray, sofa: np.ndarray, risk: np.ndarray,
    uncertainty: np.ndarray, current: tuple[float, float, float], expected_return: np.ndarray | None = None,
    discharge: np.ndarray | None = None, style: str = "compact",
) -> str:
    """Tool output: per candidate, what ranks it first (the expected outcome score: the RL reward expected
    over the horizon; the world model's one-step expected return ranks the 25 actions like the truth,
    its death risk alone does not), then death and discharge risk, MAP / lactate / SOFA at the end of the
    horizon and the ensemble's uncertainty.

    ``map_``, ``lactate``, ``sofa`` are [K, H]; ``risk``, ``uncertainty``, ``expected_return``, ``discharge`` are [K].
    """
    h = map_.shape[1]
    cur_map, cur_lac, cur_sofa = current
    if check_style(style) != "verbose":
        order = np.arange(len(candidates))
        if style in GUIDED_STYLES and expected_return is not None:  # ranked best first (ties: the order proposed)
            order = np.argsort(-np.round(np.asarray(expected_return), 1), kind="stable")
        return _compact_simulation([candidates[k] for k in order], map_[order], lactate[order], sofa[order], risk[order],
                                   None if expected_return is None else np.asarray(expected_return)[order], h,
                                   sep=" " if style == "terse" else ", ")
    lines = [f"<simulation hours=\"{4 * h}\">"]
    for k, a in enumerate(candidates):
        head = f"{render_action(a)}: "
        if expected_return is not None:
            head += f"outcome {expected_return[k]:+.1f}, "
        tail = f", discharge {100 * discharge[k]:.0f}%" if discharge is not None else ""
        lines.append(
            f"{head}death risk {100 * risk[k]:.0f}%{tail}, MAP {cur_map:.0f}->{map_[k, -1]:.0f} mmHg, "
            f"lactate {cur_lac:.1f}->{lactate[k, -1]:.1f} mmol/L, SOFA {cur_sofa:.0f}->{sofa[k, -1]:.0f}, "
            f"uncertainty {uncertainty[k]:.2f}"
        )
    lines.append("</simulation>")
    return "\n".join(lines)


def _compact_simulation(candidates: list[int], map_: np.ndarray, lactate: np.ndarray, sofa: np.ndarray,
                        risk: np.ndarray, expected_return: np.ndarray | None, h: int, sep: str = ", ") -> str:
    """One line per candidate: outcome score (what ranks them), death risk, MAP / lactate / SOFA after ``h`` steps
    (``sep`` between the items: ", ", or " " in the terse style)."""
    lines = [f"<simulation hours=\"{4 * h}\">"]
    head = ": " if sep == ", " else " "
    for k, a in enumerate(candidates):
        items = [f"outcome {expected_return[k]:+.1f}"] if expected_return is not None else []
        items += [f"death {100 * risk[k]:.0f}%", f"MAP {map_[k, -1]:.0f}", f"lactate {lactate[k, -1]:.1f}", f"SOFA {sofa[k, -1]:.0f}"]
        lines.append(render_action(a) + head + sep.join(items))
    lines.append("</simulation>")
    return "\n".join(lines)


def render_result(result: "object", i: int, candidates: list[int], current: tuple[float, float, float],
                  style: str = "compact") -> str:
    """``render_simulation`` for patient ``i`` of a ``SimulationResult`` (one place decides what is shown)."""
    r = result
    return render_simulation(candidates, r.map[i], r.lactate[i], r.sofa[i], r.risk_of_death[i],  # type: ignore[attr-defined]
                             r.uncertainty[i], current, getattr(r, "expected_return", None)[i],  # type: ignore[attr-defined,index]
                             getattr(r, "risk_of_discharge", None)[i], style)  # type: ignore[index]
