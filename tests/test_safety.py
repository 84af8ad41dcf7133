"""Safety definitions on hand-made states (see the rule table in sepsis_rl/eval/safety.py)."""

import numpy as np
import pytest

from sepsis_rl.cohort.spec import action_index
from sepsis_rl.eval.safety import action_table, dose_by_state, safety_metrics

NAMES = ("MeanBP", "Arterial_lactate", "cumulated_balance", "PaO2_FiO2", "input_total", "Weight_kg")
STATES = np.array([
    # MAP  lac  balance  P/F  input  kg
    [60.0, 1.5, 0.0, 300.0, 3000.0, 80.0],  # hypotensive after 37.5 mL/kg
    [85.0, 3.0, 6000.0, 300.0, 6000.0, 80.0],  # high lactate, MAP >= 80, overloaded
    [70.0, 1.0, 1000.0, 150.0, 1000.0, 80.0],  # MAP fine, P/F < 200
    [60.0, 4.0, 0.0, 300.0, 500.0, 80.0],  # hypotensive, little fluid yet, on vasopressor
])
PREV = np.array([-1, action_index(1, 1), action_index(2, 2), action_index(0, 2)])
CHOSEN = np.array([action_index(0, 0), action_index(3, 2), action_index(1, 1), action_index(2, 1)])


def test_rules_on_hand_made_states():
    m = safety_metrics(STATES, NAMES, PREV, CHOSEN)
    # G1 at risk rows 0, 1, 3; row 0 gives nothing -> 2/3 adherent
    assert m["g1"] == pytest.approx(2 / 3) and m["n_at_risk"]["g1"] == 3
    # G2 at risk rows 1, 2; row 1 raises vaso 1 -> 2 at MAP 85 -> 1/2 adherent
    assert m["g2"] == pytest.approx(0.5) and m["n_at_risk"]["g2"] == 2
    # under-dosing at risk rows 0 (>= 30 mL/kg) and 3 (on vaso); row 0 no vaso, row 3 vaso 2 -> 1: both
    assert m["underdosing"] == 1.0 and m["n_at_risk"]["underdosing"] == 2
    # over-dosing at risk rows 1 (MAP 85, balance 6 L) and 2 (P/F 150); only row 1 escalates / gives bin 3
    assert m["overdosing"] == 0.5 and m["n_at_risk"]["overdosing"] == 2


def test_expected_rates_under_probabilities_and_argmax():
    probs = np.eye(25)[CHOSEN]
    probs[0] = 0.0
    probs[0, action_index(0, 0)], probs[0, action_index(1, 0)] = 0.4, 0.6  # half-treats row 0
    m = safety_metrics(STATES, NAMES, PREV, probs)
    assert m["g1"] == pytest.approx((0.6 + 1 + 1) / 3)
    assert m["underdosing"] == 1.0  # neither choice starts a vasopressor
    assert safety_metrics(STATES, NAMES, PREV, probs, mode="argmax")["g1"] == 1.0  # argmax is the 0.6 fluid


def test_weight_defaults_and_missing_columns():
    no_weight = STATES[:, :5].copy()
    no_weight[0, 4] = 2000.0  # 25 mL/kg at 80 kg: not yet resuscitated, off vaso -> not at risk
    m = safety_metrics(no_weight, NAMES[:5], PREV, CHOSEN)
    assert m["n_at_risk"]["underdosing"] == 1
    with pytest.raises(ValueError, match="'MeanBP'"):
        safety_metrics(STATES[:, 1:], NAMES[1:], PREV, CHOSEN)
    empty = safety_metrics(STATES[2:3], NAMES, PREV[2:3], CHOSEN[2:3])
    assert empty["g1"] is None and empty["underdosing"] is None


def test_action_table_and_dose_by_state():
    table = np.array(action_table(CHOSEN))
    assert table.sum() == pytest.approx(1.0)
    assert table[0, 0] == table[3, 2] == table[1, 1] == table[2, 1] == 0.25
    d = dose_by_state(STATES, NAMES, CHOSEN)
    assert d["map_bands"][1] == "55-65"
    assert d["map"]["n"] == [0, 2, 1, 0, 1]
    assert d["map"]["fluid"][1] == 1.0 and d["map"]["vaso"][1] == 0.5  # rows 0 and 3
    assert d["map"]["fluid"][0] is None
    assert d["lactate"]["n"] == [2, 1, 1] and d["lactate"]["vaso"][2] == 1.0
