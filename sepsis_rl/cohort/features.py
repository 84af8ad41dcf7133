"""The default state feature set, in the AI Clinician style (Komorowski et al. 2018).

Names are the AI Clinician column names so that a MIMIC-IV extract in that layout imports onto the same
features as the synthetic cohort, and a world model or agent trained on one reads the other. The
per-step doses (``input_4hourly``, ``max_dose_vaso``) are *actions*, not state, and are kept out.
"""

from __future__ import annotations

from dataclasses import replace

from sepsis_rl.cohort.spec import FeatureSpec as F

_AI_CLINICIAN_BASE: tuple[F, ...] = (
    # demographics (static over a stay)
    F("gender", "0=male/1=female", "binary", static=True),
    F("age", "years", static=True, normal_low=18, normal_high=90),
    F("Weight_kg", "kg", static=True, normal_low=50, normal_high=100),
    F("re_admission", "0/1", "binary", static=True),
    F("elixhauser", "score", static=True, normal_low=0, normal_high=4),
    # vitals
    F("GCS", "points", normal_low=15, normal_high=15, sofa=True),
    F("HR", "beats/min", normal_low=60, normal_high=100),
    F("SysBP", "mmHg", normal_low=100, normal_high=140),
    F("MeanBP", "mmHg", normal_low=70, normal_high=100, sofa=True),
    F("DiaBP", "mmHg", normal_low=60, normal_high=90),
    F("RR", "breaths/min", normal_low=12, normal_high=20),
    F("SpO2", "%", normal_low=94, normal_high=100),
    F("Temp_C", "degC", normal_low=36.0, normal_high=38.0),
    F("FiO2_1", "fraction", normal_low=0.21, normal_high=0.21),
    # labs
    F("Potassium", "mmol/L", normal_low=3.5, normal_high=5.0),
    F("Sodium", "mmol/L", normal_low=135, normal_high=145),
    F("Chloride", "mmol/L", normal_low=98, normal_high=107),
    F("Glucose", "mg/dL", normal_low=70, normal_high=140),
    F("BUN", "mg/dL", normal_low=7, normal_high=20),
    F("Creatinine", "mg/dL", normal_low=0.6, normal_high=1.2, sofa=True),
    F("Magnesium", "mg/dL", normal_low=1.7, normal_high=2.2),
    F("Calcium", "mg/dL", normal_low=8.5, normal_high=10.5),
    F("SGOT", "U/L", normal_low=10, normal_high=40),
    F("SGPT", "U/L", normal_low=7, normal_high=56),
    F("Total_bili", "mg/dL", normal_low=0.1, normal_high=1.2, sofa=True),
    F("Albumin", "g/dL", normal_low=3.5, normal_high=5.0),
    F("Hb", "g/dL", normal_low=12, normal_high=17),
    F("WBC_count", "10^3/uL", normal_low=4, normal_high=12),
    F("Platelets_count", "10^3/uL", normal_low=150, normal_high=400, sofa=True),
    F("PTT", "s", normal_low=25, normal_high=35),
    F("PT", "s", normal_low=11, normal_high=13.5),
    F("INR", "ratio", normal_low=0.8, normal_high=1.2),
    F("Arterial_pH", "pH", normal_low=7.35, normal_high=7.45),
    F("paO2", "mmHg", normal_low=75, normal_high=100),
    F("paCO2", "mmHg", normal_low=35, normal_high=45),
    F("Arterial_BE", "mmol/L", normal_low=-2, normal_high=2),
    F("HCO3", "mmol/L", normal_low=22, normal_high=28),
    F("Arterial_lactate", "mmol/L", normal_low=0.5, normal_high=2.0),
    # ventilation
    F("mechvent", "0/1", "binary", sofa=True),
    F("PaO2_FiO2", "mmHg", normal_low=400, normal_high=500, sofa=True),
    # fluid balance (cumulative since admission; 4-hourly output)
    F("input_total", "mL", normal_low=0, normal_high=5000),
    F("output_total", "mL", normal_low=0, normal_high=5000),
    F("output_4hourly", "mL/4h", normal_low=200, normal_high=800, sofa=True),
    F("cumulated_balance", "mL", normal_low=-1000, normal_high=2000),
    # scores
    F("SOFA", "points", normal_low=0, normal_high=1),
    F("SIRS", "criteria", normal_low=0, normal_high=1),
    F("Shock_Index", "HR/SysBP", normal_low=0.5, normal_high=0.7),
)

# Physiologically *possible* values (low, high, why) of each continuous AI Clinician feature. An import
# rejects values outside (or clips them with --clip-implausible): they are unit mix-ups or typing errors,
# not sick patients. Deliberately wide: the sickest surviving patient must pass, and so must every value
# the synthetic simulator can produce. Where the AI Clinician's own outlier filter (Komorowski et al. 2018,
# supplementary code) is cited, our bound is at or beyond its cut-off.
PLAUSIBLE_RANGES: dict[str, tuple[float, float, str]] = {
    "age": (0, 125, "oldest verified human lived to 122 years"),
    "Weight_kg": (1, 650, "heaviest recorded human ~635 kg"),
    "elixhauser": (-20, 90, "van Walraven-weighted Elixhauser ranges -19..89; unweighted counts 0..31"),
    "GCS": (3, 15, "the Glasgow Coma Scale is defined on 3..15"),
    "HR": (0, 350, "0 = asystole; AI Clinician drops HR > 250; ventricular rates rarely exceed 300"),
    "SysBP": (0, 350, "AI Clinician drops SysBP > 300 mmHg"),
    "MeanBP": (0, 300, "AI Clinician drops MeanBP > 200 mmHg; MAP cannot exceed systolic"),
    "DiaBP": (0, 300, "AI Clinician drops DiaBP > 200 mmHg"),
    "RR": (0, 100, "AI Clinician drops RR > 80 breaths/min"),
    "SpO2": (0, 100, "a saturation is a percentage"),
    "Temp_C": (10, 47, "survived accidental hypothermia 13.7 degC; highest survived fever 46.5 degC"),
    "FiO2_1": (0.2, 1.0, "inspired O2 fraction: room air 0.21 to pure oxygen 1.0"),
    "Potassium": (0.5, 15, "AI Clinician drops K > 15 mmol/L"),
    "Sodium": (80, 200, "AI Clinician keeps 95..178; survived extremes lie within 80..200 mmol/L"),
    "Chloride": (50, 200, "AI Clinician drops Cl > 200 mmol/L"),
    "Glucose": (1, 3000, "record survived hyperglycaemia ~2650 mg/dL; 0 is not a measurable glucose"),
    "BUN": (0, 350, "severe uraemia reaches ~300 mg/dL"),
    "Creatinine": (0, 40, "end-stage renal failure stays below ~25 mg/dL; 40 leaves headroom"),
    "Magnesium": (0, 20, "AI Clinician drops Mg > 10 mg/dL; fatal hypermagnesaemia ~ 15-20 mg/dL"),
    "Calcium": (0, 25, "AI Clinician drops Ca > 20 mg/dL"),
    "SGOT": (0, 50000, "AST in fulminant hepatic failure can exceed 10,000 U/L"),
    "SGPT": (0, 50000, "ALT in fulminant hepatic failure can exceed 10,000 U/L"),
    "Total_bili": (0, 100, "AI Clinician drops bilirubin > 100 mg/dL"),
    "Albumin": (0, 10, "serum albumin above 6 g/dL is not physiological; 10 leaves room for lab quirks"),
    "Hb": (0, 25, "AI Clinician drops Hb > 20 g/dL; polycythaemia stays below 25"),
    "WBC_count": (0, 1000, "hyperleukocytosis in leukaemia reaches a few hundred 10^3/uL; AI Clinician drops > 500"),
    "Platelets_count": (0, 3000, "AI Clinician drops platelets > 2000 10^3/uL"),
    "PTT": (0, 300, "coagulometers report clotting times up to ~300 s"),
    "PT": (0, 300, "coagulometers report clotting times up to ~300 s"),
    "INR": (0, 30, "AI Clinician drops INR > 20"),
    "Arterial_pH": (6.0, 8.0, "survived acidaemia ~6.3; AI Clinician keeps 6.7..8"),
    "paO2": (0, 800, "breathing 100% O2 at sea level caps PaO2 near 700 mmHg; AI Clinician drops > 700"),
    "paCO2": (0, 250, "AI Clinician drops PaCO2 > 200 mmHg"),
    "Arterial_BE": (-50, 50, "AI Clinician drops base excess < -50 mmol/L"),
    "HCO3": (0, 100, "bicarbonate beyond 60 mmol/L is exceptional"),
    "Arterial_lactate": (0, 40, "AI Clinician drops lactate > 30 mmol/L"),
    "PaO2_FiO2": (0, 4000, "PaO2 <= 800 mmHg over FiO2 >= 0.2"),
    "input_total": (0, 200_000, "cumulative fluids since admission; 200 L is beyond any ICU stay"),
    "output_total": (0, 200_000, "cumulative output since admission; 200 L is beyond any ICU stay"),
    "output_4hourly": (0, 12_000, "output per 4 h; AI Clinician drops > 12,000 mL"),
    "cumulated_balance": (-200_000, 200_000, "input_total - output_total"),
    "SOFA": (0, 24, "SOFA is defined on 0..24"),
    "SIRS": (0, 4, "SIRS counts 4 criteria"),
    "Shock_Index": (0, 50, "HR / SysBP: HR <= 350 over SysBP >= 7 mmHg"),
}

AI_CLINICIAN_FEATURES: tuple[F, ...] = tuple(
    replace(f, plausible_low=PLAUSIBLE_RANGES[f.name][0], plausible_high=PLAUSIBLE_RANGES[f.name][1])
    if f.name in PLAUSIBLE_RANGES else f
    for f in _AI_CLINICIAN_BASE
)

AI_CLINICIAN_FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in AI_CLINICIAN_FEATURES)

# Columns of an AI Clinician extract that are the per-step doses (the action), not state.
AI_CLINICIAN_FLUID_DOSE = "input_4hourly"
AI_CLINICIAN_VASO_DOSE = "max_dose_vaso"

# Names under which a lactate feature may appear in an imported spec (reward needs one).
LACTATE_ALIASES: tuple[str, ...] = ("Arterial_lactate", "lactate", "Lactate", "lactate_mmol_l")
SOFA_ALIASES: tuple[str, ...] = ("SOFA", "sofa")
