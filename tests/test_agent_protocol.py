"""The PSR text protocol: round trips, every malformed-output kind, fallbacks and rendering."""

import numpy as np
import pytest

from sepsis_rl.agent.fallback import Fallback, default_candidates, fallback_prescription
from sepsis_rl.agent.grammar import (
    ParseFailure, ParseStats, parse_prescription, parse_proposal, render_action, render_prescription,
    render_proposal,
)
from sepsis_rl.agent.prompts import ObservationRenderer, render_simulation, system_prompt
from sepsis_rl.cohort.features import AI_CLINICIAN_FEATURE_NAMES
from sepsis_rl.cohort.reward import RewardConfig
from sepsis_rl.cohort.simulator import SimulatorConfig
from sepsis_rl.cohort.synth import synthetic_spec


@pytest.mark.parametrize("action", range(25))
def test_prescription_round_trip(action):
    assert parse_prescription(render_prescription(action)).actions == (action,)
    assert parse_prescription("MAP is low, so: " + render_prescription(action) + "\n").actions == (action,)


def test_proposal_round_trip():
    for cands in ([0, 7, 24], [12], [3, 4, 5, 6, 7]):
        assert parse_proposal(render_proposal(cands), len(cands)).actions == tuple(cands)
    assert render_action(11) == "F2V1"


@pytest.mark.parametrize(
    "text, kind",
    [
        ("F2V1", ParseFailure.MISSING_TAG),
        ("<prescribe>F2V1", ParseFailure.UNCLOSED_TAG),
        ("<prescribe>F2V1</prescribe><prescribe>F0V0</prescribe>", ParseFailure.MULTIPLE_BLOCKS),
        ("<prescribe>F2V1</prescribe> and then more", ParseFailure.TRAILING_TEXT),
        ("<prescribe>fluids 2</prescribe>", ParseFailure.MALFORMED_ACTION),
        ("<prescribe>F2V1F3V3</prescribe>", ParseFailure.MALFORMED_ACTION),
        ("<prescribe>F7V1</prescribe>", ParseFailure.BIN_OUT_OF_RANGE),
        ("<prescribe></prescribe>", ParseFailure.MALFORMED_ACTION),
    ],
)
def test_malformed_prescriptions(text, kind):
    parsed = parse_prescription(text)
    assert not parsed.ok and parsed.failure == kind and parsed.actions == ()


@pytest.mark.parametrize(
    "text, kind",
    [
        ("I would give fluids", ParseFailure.MISSING_TAG),
        ("<propose>F1V0; F2V0; F3V0", ParseFailure.UNCLOSED_TAG),
        ("<propose>F1V0; F2V0</propose>", ParseFailure.WRONG_COUNT),
        ("<propose>F1V0; F2V0; F3V0; F4V0</propose>", ParseFailure.WRONG_COUNT),
        ("<propose></propose>", ParseFailure.WRONG_COUNT),
        ("<propose>F1V0; F1V0; F3V0</propose>", ParseFailure.DUPLICATE_CANDIDATE),
        ("<propose>F1V0, F2V0, F3V0</propose>", ParseFailure.MALFORMED_ACTION),
        ("<propose>F1V0; F2V9; F3V0</propose>", ParseFailure.BIN_OUT_OF_RANGE),
        ("<propose>F1V0; F2V0; F3V0</propose> done", ParseFailure.TRAILING_TEXT),
        ("<propose>F1V0; F2V0; F3V0</propose></propose>", ParseFailure.MULTIPLE_BLOCKS),
    ],
)
def test_malformed_proposals(text, kind):
    parsed = parse_proposal(text, k=3)
    assert parsed.failure == kind, parsed


def test_parse_stats_count_failures_by_kind():
    stats = ParseStats()
    stats.record(parse_prescription("<prescribe>F1V1</prescribe>"))
    stats.record(parse_prescription("nothing"))
    stats.record(parse_prescription("<prescribe>F9V9</prescribe>"))
    stats.record(parse_prescription("nope"))
    assert stats.attempts == 4 and stats.failure_rate == 0.75
    assert stats.failures == {"missing_tag": 2, "bin_out_of_range": 1}


def test_fallbacks():
    assert fallback_prescription(Fallback.REPEAT_LAST, None) == 0
    assert fallback_prescription(Fallback.REPEAT_LAST, 13) == 13
    assert fallback_prescription(Fallback.BEST_CANDIDATE, 13, [1, 2, 3], np.array([0.3, 0.1, 0.2])) == 2
    # without simulation results the best-candidate fallback degrades to repeating the last action
    assert fallback_prescription(Fallback.BEST_CANDIDATE, 13, [1, 2, 3], None) == 13
    assert default_candidates(None, 3) == [0, 5, 1]
    assert default_candidates(24, 3) == [24, 23, 19]
    for last in (None, 0, 12, 24):
        c = default_candidates(last, 25)
        assert sorted(c) == list(range(25))


def test_observation_and_tool_rendering():
    spec = synthetic_spec(0, RewardConfig(), SimulatorConfig())
    state = np.zeros(len(AI_CLINICIAN_FEATURE_NAMES))
    names = list(AI_CLINICIAN_FEATURE_NAMES)
    state[names.index("MeanBP")], state[names.index("Arterial_lactate")], state[names.index("age")] = 58, 4.2, 71
    prev = state.copy()
    prev[names.index("MeanBP")] = 62
    text = ObservationRenderer(spec, "verbose").render(state, prev, step=2, last_action=11)
    assert "Hour 8" in text and "MAP 58 mmHg (-4)" in text and "Lactate 4.2 mmol/L (+0.0)" in text
    assert "F2V1 (fluid 250-500 mL/4h, vasopressor 0-0.08 mcg/kg/min" in text and "71 y" in text
    args = ([11, 0], np.array([[60, 66.4]] * 2), np.array([[4, 3.04]] * 2), np.array([[9, 8]] * 2),
            np.array([0.12, 0.3]), np.array([0.2, 0.25]), (58, 4.2, 9), np.array([2.34, -1.0]), np.array([0.2, 0.05]))
    tool = render_simulation(*args, style="verbose")
    assert ("F2V1: outcome +2.3, death risk 12%, discharge 20%, MAP 58->66 mmHg, lactate 4.2->3.0 mmol/L, SOFA 9->8, "
            "uncertainty 0.20") in tool
    for style in ("compact", "verbose"):
        assert "<propose>" in system_prompt(3, style=style) and "<propose>" not in system_prompt(3, False, style)
    # compact (the default): one line of values with 4-hour changes, the running treatment, a terse tool output
    text = ObservationRenderer(spec).render(state, prev, step=2, last_action=11)
    assert text.startswith("Hour 8. 71 y") and "MAP 58 (-4), " in text and "Lactate 4.2 (+0.0)" in text
    assert text.endswith("Last 4 h: F2V1.") and len(text.splitlines()) == 3
    assert "mmol/L" in system_prompt(3) and "higher outcome is better" in system_prompt(3)
    tool = render_simulation(*args)
    assert tool.splitlines()[1:3] == ["F2V1: outcome +2.3, death 12%, MAP 66, lactate 3.0, SOFA 8",
                                      "F0V0: outcome -1.0, death 30%, MAP 66, lactate 3.0, SOFA 8"]
    with pytest.raises(ValueError, match="prompt style"):
        ObservationRenderer(spec, "chatty")


def test_safety_rules_and_shaping_by_hand():
    from sepsis_rl.agent.shaping import SafetyRules, ShapingConfig

    names = ["MeanBP", "cumulated_balance", "PaO2_FiO2"]
    rules = SafetyRules(names, ShapingConfig(safety_penalty=2.0, format_penalty=0.5))
    calm = np.array([85.0, 1000.0, 300.0])
    assert rules.violations(calm, action=1, last_action=0) == ["vaso_escalation_high_map"]  # V0 -> V1 at MAP 85
    assert rules.violations(calm, action=1, last_action=1) == []  # keeping the dose is not escalating
    assert rules.violations(np.array([60.0, 1000.0, 300.0]), action=2, last_action=None) == []  # MAP low: allowed
    overloaded = np.array([70.0, 6000.0, 300.0])
    assert rules.violations(overloaded, action=15, last_action=None) == ["fluid_in_overload"]  # F3V0
    assert rules.violations(overloaded, action=10, last_action=None) == []  # F2 is under the large-fluid bin
    assert rules.violations(np.array([90.0, 0.0, 150.0]), action=16, last_action=0) == [
        "vaso_escalation_high_map", "fluid_in_overload"]
    assert rules.shaping(["a", "b"], parse_failures=1) == pytest.approx(-2.0 * 2 - 0.5)
    # a cohort without these features: the rules are skipped, never guessed
    assert SafetyRules(["HR"]).violations(np.array([80.0]), action=24, last_action=0) == []


def test_guided_style_shows_the_guideline_dose_and_ranks_the_tool_output():
    from sepsis_rl.agent.fallback import neighbours

    spec = synthetic_spec(0, RewardConfig(), SimulatorConfig())
    names = list(AI_CLINICIAN_FEATURE_NAMES)
    state = np.zeros(len(names))
    for f, v in (("MeanBP", 58), ("Arterial_lactate", 4.2), ("PaO2_FiO2", 300), ("cumulated_balance", 1000), ("age", 71)):
        state[names.index(f)] = v
    r = ObservationRenderer(spec, "guided")
    # MAP 58 < 65 after admission: a 500 mL challenge (F3 of the guideline's rules); vasopressor one bin up from V1
    fluid = int(spec.fluid.to_bin(np.array([500.0]))[0])
    assert r.anchor(state, 2, last_action=11) == fluid * 5 + 2
    g = render_action(fluid * 5 + 2)
    text = r.render(state, None, step=2, last_action=11)
    assert text.splitlines()[-1] == f"Guideline: {g}; neighbours: {', '.join(render_action(a) for a in neighbours(fluid * 5 + 2))}."
    assert text.splitlines()[-2] == "Last 4 h: F2V1." and r.compact
    # MAP well above target with no vasopressor running and normal lactate: nothing
    state[names.index("MeanBP")], state[names.index("Arterial_lactate")] = 80, 1.0
    assert r.anchor(state, 3, last_action=0) == 0 and "Guideline: F0V0; neighbours: F1V0, F0V1, F2V0, F1V1." in r.render(state, None, 3, 0)
    assert ObservationRenderer(spec, "compact").anchor(state, 3, 0) is None
    assert neighbours(12) == [17, 11, 13, 7] and neighbours(24) == [23, 19, 0, 10]
    sp = system_prompt(3, style="guided")
    assert "the guideline dose and 2 of its neighbours" in sp and "best first" in sp
    # the tool output is ranked by the shown (rounded) outcome score, ties in the order proposed
    args = ([0, 11, 6], np.array([[60, 66.4]] * 3), np.array([[4, 3.04]] * 3), np.array([[9, 8]] * 3),
            np.array([0.3, 0.12, 0.2]), np.zeros(3), (58, 4.2, 9), np.array([-1.0, 2.34, 2.31]), None)
    lines = render_simulation(*args, style="guided").splitlines()
    assert [ln.split(":")[0] for ln in lines[1:4]] == ["F2V1", "F1V1", "F0V0"]
    assert lines[1] == "F2V1: outcome +2.3, death 12%, MAP 66, lactate 3.0, SOFA 8"
    assert [ln.split(":")[0] for ln in render_simulation(*args, style="compact").splitlines()[1:4]] == ["F0V0", "F2V1", "F1V1"]


def test_terse_style_shows_guideds_information_in_fewer_tokens(tiny_model_dir):
    """Every number of the guided observation and tool output is in the terse one, in the same order, and the
    guideline dose / ranking are the same; the tokenizer spends fewer tokens on it."""
    import re

    from transformers import AutoTokenizer

    from sepsis_rl.agent.fallback import neighbours

    spec = synthetic_spec(0, RewardConfig(), SimulatorConfig())
    names = list(AI_CLINICIAN_FEATURE_NAMES)
    rng = np.random.default_rng(0)
    prev = np.abs(rng.normal(50, 20, len(names)))
    state = prev + rng.normal(0, 5, len(names))
    for f, v in (("MeanBP", 58), ("Arterial_lactate", 4.2), ("PaO2_FiO2", 300), ("cumulated_balance", 1000), ("age", 71)):
        state[names.index(f)] = v
    guided, terse = ObservationRenderer(spec, "guided"), ObservationRenderer(spec, "terse")
    g_text, g_anchor = guided.render_with_anchor(state, prev, 2, 11)
    t_text, t_anchor = terse.render_with_anchor(state, prev, 2, 11)
    numbers = lambda s: re.findall(r"[+-]?\d+(?:\.\d+)?", s)  # noqa: E731
    assert t_anchor == g_anchor and numbers(t_text) == numbers(g_text.replace("Last 4 h:", "Last"))
    assert t_text.splitlines()[-2:] == ["Last F2V1", f"Guideline {render_action(g_anchor)} near "
                                        + " ".join(render_action(a) for a in neighbours(g_anchor))]
    assert "MAP 58 " in t_text and "," not in t_text.splitlines()[1] and "(" not in t_text
    assert terse.render(state, None, 0, None).splitlines()[-2] == "Last none"
    args = ([0, 11, 6], np.array([[60, 66.4]] * 3), np.array([[4, 3.04]] * 3), np.array([[9, 8]] * 3),
            np.array([0.3, 0.12, 0.2]), np.zeros(3), (58, 4.2, 9), np.array([-1.0, 2.34, 2.31]), None)
    g_tool, t_tool = render_simulation(*args, style="guided"), render_simulation(*args, style="terse")
    assert t_tool.splitlines()[1] == "F2V1 outcome +2.3 death 12% MAP 66 lactate 3.0 SOFA 8"
    assert numbers(t_tool) == numbers(g_tool)  # same candidates, same ranking, same values
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    n = lambda s: len(tok(s, add_special_tokens=False).input_ids)  # noqa: E731
    assert n(t_text) < n(g_text) - 20 and n(t_tool) < n(g_tool) - 10
    assert n(system_prompt(3, style="terse")) < n(system_prompt(3, style="guided")) - 30
    assert "the Guideline dose and 2 of its neighbours" in system_prompt(3, style="terse")
