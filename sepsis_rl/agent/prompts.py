"""What the agent reads: the system prompt, the rendered observation and the rendered tool output.

The observation is compact on purpose (a 135M-parameter model has a short attention span and every
token costs rollout time): the features a bedside clinician looks at first, each with its unit and its
change over the last 4 hours, plus the running treatment.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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

# (feature, label, decimals), in the order a clinician reads them; missing ones are skipped
BEDSIDE_FEATURES: tuple[tuple[str, str, int], ...] = (
    ("MeanBP", "MAP", 0), ("HR", "HR", 0), ("SysBP", "SBP", 0), ("RR", "RR", 0), ("SpO2", "SpO2", 0),
    ("Temp_C", "Temp", 1), ("GCS", "GCS", 0), ("Arterial_lactate", "Lactate", 1), ("SOFA", "SOFA", 0),
    ("Creatinine", "Creatinine", 1), ("output_4hourly", "Urine 4h", 0), ("PaO2_FiO2", "PaO2/FiO2", 0),
    ("mechvent", "Ventilated", 0), ("cumulated_balance", "Fluid balance", 0), ("Platelets_count", "Platelets", 0),
    ("Total_bili", "Bilirubin", 1), ("Arterial_pH", "pH", 2),
)


def system_prompt(k: int, use_simulator: bool = True) -> str:
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

    def rows(self) -> list[tuple[int, str, str, int]]:
        names = self.spec.feature_names
        chosen = [(names.index(f), label, self.spec.feature(f).unit, d) for f, label, d in BEDSIDE_FEATURES if f in names]
        if len(chosen) < 4:  # an imported cohort with other names: show its dynamic features
            chosen = [(i, f.name, f.unit, 2) for i, f in enumerate(self.spec.features) if not f.static][:17]
        return chosen

    def render(self, state: np.ndarray, previous: np.ndarray | None, step: int, last_action: int | None) -> str:
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
        return "\n".join(lines)

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
    discharge: np.ndarray | None = None,
) -> str:
    """Tool output: per candidate, what ranks it first (the expected outcome score: the RL reward expected
    over the horizon; the world model's one-step expected return ranks the 25 actions like the truth,
    its death risk alone does not), then death and discharge risk, MAP / lactate / SOFA at the end of the
    horizon and the ensemble's uncertainty.

    ``map_``, ``lactate``, ``sofa`` are [K, H]; ``risk``, ``uncertainty``, ``expected_return``, ``discharge`` are [K].
    """
    h = map_.shape[1]
    cur_map, cur_lac, cur_sofa = current
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


def render_result(result: "object", i: int, candidates: list[int], current: tuple[float, float, float]) -> str:
    """``render_simulation`` for patient ``i`` of a ``SimulationResult`` (one place decides what is shown)."""
    r = result
    return render_simulation(candidates, r.map[i], r.lactate[i], r.sofa[i], r.risk_of_death[i],  # type: ignore[attr-defined]
                             r.uncertainty[i], current, getattr(r, "expected_return", None)[i],  # type: ignore[attr-defined,index]
                             getattr(r, "risk_of_discharge", None)[i])  # type: ignore[index]
