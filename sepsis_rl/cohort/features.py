"""The default state feature set, in the AI Clinician style (Komorowski et al. 2018).

Names are the AI Clinician column names so that a MIMIC-IV extract in that layout imports onto the same
features as the synthetic cohort, and a world model or agent trained on one reads the other. The
per-step doses (``input_4hourly``, ``max_dose_vaso``) are *actions*, not state, and are kept out.
"""

from __future__ import annotations

from sepsis_rl.cohort.spec import FeatureSpec as F

AI_CLINICIAN_FEATURES: tuple[F, ...] = (
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

AI_CLINICIAN_FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in AI_CLINICIAN_FEATURES)

# Columns of an AI Clinician extract that are the per-step doses (the action), not state.
AI_CLINICIAN_FLUID_DOSE = "input_4hourly"
AI_CLINICIAN_VASO_DOSE = "max_dose_vaso"

# Names under which a lactate feature may appear in an imported spec (reward needs one).
LACTATE_ALIASES: tuple[str, ...] = ("Arterial_lactate", "lactate", "Lactate", "lactate_mmol_l")
SOFA_ALIASES: tuple[str, ...] = ("SOFA", "sofa")
