"""Ground-truth synthetic sepsis patients: the embedded default cohort and the judge of true policy value.

Each patient has hidden parameters (fixed over a stay) and a hidden physiological state that evolves
every 4 hours under the fluid and vasopressor doses given. What a clinician (or model) sees is a noisy
chart of 47 AI Clinician-style features rendered from that hidden state (``observe``). Everything is
vectorised over a batch of patients with numpy and deterministic given the random generator.

Hidden parameters (the heterogeneity)
    fluid responsiveness: responders (~65%) gain up to ~16 mmHg MAP from preload repletion,
      non-responders ~4 mmHg; only responders' tissue perfusion improves with volume.
    vasoplegia v in [0, 1]: loss of vascular tone, up to ~35 mmHg MAP at full inflammation;
      it also blunts the vasopressor response (Emax 40 mmHg x (1 - 0.5 v)).
    capillary leak, lung/kidney/liver/coagulation/brain susceptibility, infection resolution rate,
      age, weight, comorbidity (elixhauser), baseline labs.

Hidden state per step: intravascular volume (L vs euvolaemia), extravascular oedema (L),
inflammation, lactate, creatinine, bilirubin, AST/ALT, platelets, cerebral dysfunction, chloride,
haemoglobin, albumin, ventilation, cumulative input/output, the running dose, consecutive hypotensive
steps, and the catecholamine-made part of lactate.

Treatment effects per 4-hour step (direction; typical size on a hypotensive, hypovolaemic patient):
    fluids (mL/4h)  raise intravascular volume by (1 - leak) of the dose; the rest becomes oedema.
      MAP: Frank-Starling (steepest around -0.5 L, flat when very dry or full), scaled by the patient's
      responsiveness: measured +3.4 mmHg for 1.5 L in a hypovolaemic (< -1 L) responder vs +0.8 in a
      non-responder; lactate -0.42 vs -0.08 mmol/L over the same step. Dilute Hb and
      albumin, raise chloride (hyperchloraemic acidosis), raise urine output.
      Overload (oedema above 1 L, or volume above +1.5 L) lowers PaO2/FiO2 multiplicatively
      (exp(-s * excess), s ~ 0.15-0.4 per L) and leads to mechanical ventilation when P/F < 150
      (measured: 4 steps of 2 L vs none, mean P/F 154 vs 339, ventilated 42% vs 14%).
    vasopressors (norepinephrine-eq. mcg/kg/min) raise MAP by Emax * d / (d + 0.25)
      (~+11 mmHg at 0.14, ~+24 at 0.73 in a non-vasoplegic patient); raise HR slightly; doses above 0.3
      raise charted lactate (+1.6 mmol/L per mcg/kg/min above 0.3 per step: aerobic, catecholamine-driven,
      tracked apart as ``lac_cat`` so that the hazard does not read it as hypoperfusion); charted SOFA's
      cardiovascular component is 3 (dose <= 0.1) or 4 (> 0.1) while they run, as clinicians chart it.
    perfusion: tissue hypoperfusion is sigmoid((58 - MAP) / 3) (autoregulation holds flow above ~60-65
      mmHg: 0.09 at 65, 0.34 at 60, 0.73 at 55); it drives lactate, inflammation and kidney, liver and brain
      injury. No treatment: hypotension worsens all of these; inflammation otherwise resolves at a
      patient-specific rate.

Stay ends: death (per-step hazard, below), discharge, or the 20-step cap. Discharge rule
(``ready_for_discharge``): after >= 3 steps, illness SOFA <= 5, tissue lactate < 2.2 and an off-drug MAP >= 65
(the patient no longer needs a vasopressor: a running dose is weaned on the way out, so it neither blocks
discharge nor follows the patient); ready stays leave with p = 0.3 per step. Survivors of the stay may still
die after it (90-day outcome) with a probability that rises with their illness SOFA, tissue lactate and
oxygenation at discharge, so the whole trajectory matters.

Mortality (ground truth v3; each association held by tests/test_ground_truth.py on simulated populations).
The illness drives the hazard, not the bookkeeping of treatment. The per-step in-ICU hazard logit
(intercept -6.2; ~19% mortality under the clinicians) adds:
    illness SOFA  0.22 per point. SOFA with its cardiovascular points from the illness: the off-drug MAP and
        the norepinephrine dose that MAP 65 would need (``vaso_needed``), not the dose running. A drug's own
        SOFA points are not organ failure: dose 0 -> 0.04 at the same state and MAP moves the logit by
        <= 0.04 (v2: +0.66 through 3 cardiovascular points, x1.9 hazard per step).
    tissue lactate above 2  +0.35 per mmol/L; rising tissue lactate +0.6 per mmol/L within the step (up to 2).
        Nguyen et al., Crit Care Med 2004: < 10% lactate clearance at 6 h carries higher mortality.
        Catecholamine lactate is left out: the high-dose harm has its own term (below), counted once.
    MAP reached below 55  +0.9 * sigmoid((55 - MAP) / 3) (the treated MAP: this is what vasopressors buy).
    persistent hypotension  +0.45 per consecutive step ending with MAP < 65 (a step at 60-65 counts half; up to
        4). Varpula et al., Intensive Care Med 2005; Maheshwari et al., Intensive Care Med 2018: time below
        MAP 65 predicts death; the 65 trial (Lamontagne et al., JAMA 2020): permissive 60-65 in the elderly was
        not worse, so the 60-65 band weighs half.
    hypoxaemic respiratory failure  +0.7 * sigmoid((100 - P/F) / 25). Berlin definition (ARDS Definition
        Task Force, JAMA 2012): mortality 27% / 32% / 45% for mild / moderate / severe ARDS; monotone here,
        steeper above mild (low P/F also marks the sickest, most inflamed patients).
    fluid overload, counted once  its pulmonary harm through P/F (respiratory SOFA and the Berlin term: the
        physiology of oedema in the lungs), its non-pulmonary harm as +0.35 per L of cumulative balance beyond
        +5 L (saturating at +8 L) per step in the ICU; the post-ICU logit adds no balance term (v2 stacked
        both). Boyd et al., Crit Care Med 2011 (VASST); Sakr et al., Crit Care Med 2017 (ICON): a positive
        cumulative balance is independently associated with mortality (~1.5-2x for the top quartile);
        CLASSIC and CLOVERS (NEJM 2022, 2023): restrictive vs liberal fluids ~2 L apart are null.
    high-dose vasopressor  +1.6 per mcg/kg/min above 0.25 (arrhythmia, ischaemia). Brown et al., Chest 2013:
        > 1 mcg/kg/min norepinephrine-equivalent carried ~80% mortality.
    needless vasoconstriction  +1.0 * dose * sigmoid((MAP - 85) / 4): scales with the dose (0.04 at MAP 95:
        +0.03; 0.3 at MAP 95: +0.28). SEPSISPAM (Asfar et al., NEJM 2014): MAP 80-85 vs 65-70 brought more
        atrial fibrillation and no survival difference; CENSER (Permpikul et al., AJRCCM 2019): early low-dose
        norepinephrine on top of fluids improved shock control without mortality harm.
Consequences (``sepsis-rl cohort sanity``, README cohort, 1,500 test patients): adding the lowest vasopressor
bin to a fluid bin never costs survival (+0.00..+0.17 by admission-MAP band); F3V3 is not below F3V0 or F0V3;
the same clinicians aiming at MAP 82 lose 3.7 points and at 60 lose 1.4; no treatment kills 99% of patients
admitted with MAP < 55 and is within 5 points of the clinicians for MAP >= 70; no constant regimen beats the
clinicians (overall or in any admission-MAP band, paired CI); maximal fluid and vasopressor for the whole stay
(F4V4, ~30 L and 0.7 mcg/kg/min over 80 h) is 41 points below them but not 30 below no treatment.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from sepsis_rl.cohort.features import AI_CLINICIAN_FEATURE_NAMES
from sepsis_rl.cohort.sofa import sirs_count, sofa_score
from sepsis_rl.cohort.spec import ActionBins, split_action

# Fixed dose bins of the synthetic cohort (the behaviour policy samples a dose uniformly inside a bin).
SYNTH_FLUID_BINS = ActionBins("fluid", "mL/4h", (250.0, 500.0, 1000.0), (0.0, 125.0, 375.0, 750.0, 1500.0))
SYNTH_VASO_BINS = ActionBins(
    "vasopressor", "mcg/kg/min norepinephrine-equivalent", (0.08, 0.2, 0.45), (0.0, 0.04, 0.14, 0.325, 0.725)
)
HIGH_DOSE_HARM = 1.6  # hazard logit per mcg/kg/min above 0.25 (Brown 2013: > 1 mcg/kg/min ~80% mortality)
VASOCONSTRICTION_HARM = 1.0  # hazard logit per mcg/kg/min run at MAP far above target (SEPSISPAM; 65 trial)
HYPOPERFUSION_MAP = 58.0  # MAP (mmHg) at which half of tissue perfusion is lost
FLUID_TOP = 2000.0  # upper end of the top fluid bin when sampling doses
VASO_TOP = 1.0

PARAM_NAMES = (
    "age", "gender", "weight", "readmit", "elix", "resp_gain", "vasoplegia", "leak", "lung_base",
    "lung_sens", "lung_inj", "kidney_sens", "liver_sens", "coag_sens", "brain_sens", "resolve",
    "worsen", "creat_base", "bili_base", "plt_base", "hb_base", "alb_base", "cl_base", "na_base",
    "k_base", "mg_base", "ca_base", "glu_base", "wbc_base", "wbc_sign", "temp_sign", "ast_base",
    "bun_ratio", "pulse_pressure", "frailty",
)
STATE_NAMES = (
    "vol", "oedema", "infl", "lac", "creat", "bili", "ast", "plt", "brain", "cl", "hb", "alb", "vent",
    "input_total", "output_total", "urine", "vaso", "t", "hypo_run", "lac_cat",
)


@dataclass(frozen=True)
class SimulatorConfig:
    """Knobs of the ground-truth simulator; defaults give ~19% mortality under the clinician policy."""

    max_steps: int = 20
    responder_fraction: float = 0.65
    hazard_intercept: float = -6.2
    post_icu_intercept: float = -3.9
    discharge_prob: float = 0.3
    observation_noise: float = 1.0  # scale of charting noise (0 = noiseless charts)


@dataclass
class PatientBatch:
    """Hidden parameters ``p`` and hidden state ``x`` of a batch of patients (arrays of length n)."""

    p: dict[str, np.ndarray]
    x: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.x["vol"])

    def take(self, idx: np.ndarray) -> "PatientBatch":
        return PatientBatch({k: v[idx] for k, v in self.p.items()}, {k: v[idx] for k, v in self.x.items()})

    def copy(self) -> "PatientBatch":
        return PatientBatch({k: v.copy() for k, v in self.p.items()}, {k: v.copy() for k, v in self.x.items()})

    def to_table(self) -> pa.Table:
        cols = {f"p_{k}": v for k, v in self.p.items()} | {f"x_{k}": v for k, v in self.x.items()}
        return pa.table({k: np.asarray(v, dtype=np.float64) for k, v in cols.items()})

    @classmethod
    def from_table(cls, table: pa.Table) -> "PatientBatch":
        get = lambda name: table.column(name).to_numpy().astype(np.float64)  # noqa: E731
        return cls({k: get(f"p_{k}") for k in PARAM_NAMES}, {k: get(f"x_{k}") for k in STATE_NAMES})


@dataclass
class StepOutcome:
    """Result of one 4-hour step for a batch: new state and how each stay ended (if it did)."""

    batch: PatientBatch
    died: np.ndarray  # died during the step (in the ICU)
    discharged: np.ndarray  # left the ICU alive at the end of the step
    post_icu_death: np.ndarray  # for discharged (or capped) stays: died within the outcome window
    done: np.ndarray  # the stay ended with this step
    # the probabilities the ending draws used (for exact expectations, e.g. the oracle planner)
    p_died: np.ndarray | None = None  # in-ICU death this step
    p_leave: np.ndarray | None = None  # leaving alive this step (discharge or the cap), given no death
    p_post: np.ndarray | None = None  # death after leaving, given leaving


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _beta(rng: np.random.Generator, a: float, b: float, n: int) -> np.ndarray:
    return rng.beta(a, b, n)


@dataclass
class SepsisSimulator:
    """Vectorised ground-truth patient dynamics; see the module docstring for the physiology."""

    config: SimulatorConfig = field(default_factory=SimulatorConfig)

    feature_names: tuple[str, ...] = AI_CLINICIAN_FEATURE_NAMES

    # ----------------------------------------------------------------------------------------- admission
    def sample_patients(self, n: int, rng: np.random.Generator) -> PatientBatch:
        """New septic patients at ICU admission (step 0), before any treatment in the ICU."""
        cfg = self.config
        age = np.clip(rng.normal(66, 15, n), 18, 95)
        elix = np.clip(rng.poisson(2.5, n), 0, 12).astype(np.float64)
        responder = rng.random(n) < cfg.responder_fraction
        p = {
            "age": age,
            "gender": (rng.random(n) < 0.45).astype(np.float64),
            "weight": np.clip(rng.normal(80, 18, n), 40, 180),
            "readmit": (rng.random(n) < 0.1).astype(np.float64),
            "elix": elix,
            "resp_gain": np.where(responder, rng.normal(16, 3, n), rng.normal(4, 1.5, n)).clip(0.5, 26),
            "vasoplegia": _beta(rng, 2.0, 3.0, n),
            "leak": rng.uniform(0.25, 0.6, n),
            "lung_base": rng.uniform(300, 480, n),
            "lung_sens": rng.uniform(0.15, 0.4, n),
            # pulmonary source (~30%): direct lung injury, so ARDS of every Berlin grade occurs at admission
            "lung_inj": np.where(rng.random(n) < 0.3, _beta(rng, 5.0, 2.0, n), _beta(rng, 1.5, 3.0, n)),
            "kidney_sens": rng.lognormal(0, 0.4, n),
            "liver_sens": rng.lognormal(0, 0.5, n),
            "coag_sens": rng.lognormal(0, 0.5, n),
            "brain_sens": rng.lognormal(0, 0.4, n),
            "resolve": rng.uniform(0.04, 0.16, n),
            "worsen": rng.uniform(0.15, 0.35, n),
            "creat_base": np.clip(rng.lognormal(np.log(0.9), 0.25, n) + 0.08 * elix, 0.4, 4),
            "bili_base": np.clip(rng.lognormal(np.log(0.6), 0.4, n), 0.1, 5),
            "plt_base": np.clip(rng.normal(230, 60, n), 60, 500),
            "hb_base": np.clip(rng.normal(11.5, 1.6, n), 6, 17),
            "alb_base": np.clip(rng.normal(3.3, 0.5, n), 1.5, 5),
            "cl_base": rng.normal(104, 3, n),
            "na_base": rng.normal(139, 3, n),
            "k_base": rng.normal(4.1, 0.4, n),
            "mg_base": rng.normal(2.0, 0.2, n),
            "ca_base": rng.normal(8.6, 0.5, n),
            "glu_base": rng.normal(125, 20, n),
            "wbc_base": rng.normal(8, 2, n).clip(3, 15),
            "wbc_sign": np.where(rng.random(n) < 0.12, -1.0, 1.0),
            "temp_sign": np.where(rng.random(n) < 0.12, -1.0, 1.0),
            "ast_base": rng.lognormal(np.log(30), 0.3, n),
            "bun_ratio": rng.uniform(12, 22, n),
            "pulse_pressure": rng.normal(48, 8, n).clip(25, 80),
            "frailty": 0.03 * (age - 65) + 0.12 * elix + rng.normal(0, 0.3, n),
        }
        infl = rng.uniform(0.5, 1.4, n)
        vol = -rng.uniform(0.3, 3.0, n)
        x = {
            "vol": vol,
            "oedema": rng.uniform(0, 1.0, n),
            "infl": infl,
            "lac": np.clip(rng.lognormal(np.log(2.2), 0.45, n) + 0.8 * (infl - 0.9), 0.6, 12),
            "creat": p["creat_base"] * (1 + 0.6 * infl * p["kidney_sens"] * rng.uniform(0.2, 1, n)),
            "bili": p["bili_base"] * (1 + 0.5 * infl * p["liver_sens"] * rng.uniform(0, 1, n)),
            "ast": p["ast_base"] * (1 + infl * p["liver_sens"] * rng.uniform(0, 2, n)),
            "plt": np.clip(p["plt_base"] * (1 - 0.3 * infl * p["coag_sens"] * rng.uniform(0, 1, n)), 10, 600),
            "brain": np.clip(rng.uniform(0, 2.5, n) * infl * p["brain_sens"], 0, 10),
            "cl": p["cl_base"].copy(),
            "hb": p["hb_base"].copy(),
            "alb": p["alb_base"] - 0.3 * infl,
            "vent": (rng.random(n) < 0.25).astype(np.float64),
            "input_total": rng.uniform(0, 1500, n),
            "output_total": rng.uniform(50, 600, n),
            "urine": rng.uniform(40, 300, n),
            "vaso": np.zeros(n),
            "t": np.zeros(n),
            "hypo_run": np.zeros(n),  # consecutive steps that ended with MAP < 65 mmHg
            "lac_cat": np.zeros(n),  # the part of lactate that catecholamines made (aerobic, not hypoperfusion)
        }
        return PatientBatch(p, x)

    # -------------------------------------------------------------------------------------- physiology
    @staticmethod
    def preload(vol: np.ndarray) -> np.ndarray:
        """Frank-Starling preload factor in (0, 1): ~0.05 at -2 L, 0.5 at -0.5 L, ~0.9 at euvolaemia."""
        return 0.5 * (1 + np.tanh((vol + 0.5) / 1.0))

    def mean_arterial_pressure(self, b: PatientBatch, vaso: np.ndarray | None = None) -> np.ndarray:
        """Noise-free MAP (mmHg) given hidden state and the running vasopressor dose."""
        p, x = b.p, b.x
        d = x["vaso"] if vaso is None else vaso
        tone_loss = 35.0 * p["vasoplegia"] * np.minimum(x["infl"], 1.5)
        preload_term = p["resp_gain"] * (self.preload(x["vol"]) - 0.9)
        emax = 40.0 * (1 - 0.5 * p["vasoplegia"])
        age_term = 0.1 * (p["age"] - 65)
        return 88.0 + age_term - tone_loss + preload_term + emax * d / (d + 0.25)

    def pf_ratio(self, b: PatientBatch) -> np.ndarray:
        p, x = b.p, b.x
        excess = np.maximum(x["oedema"] - 1.0, 0) + 0.5 * np.maximum(x["vol"] - 1.5, 0)
        injury = 1 - 0.5 * np.minimum(x["infl"], 1.5) * p["lung_inj"]
        return np.clip(p["lung_base"] * np.exp(-p["lung_sens"] * excess) * injury, 40, 600)

    def gcs(self, b: PatientBatch) -> np.ndarray:
        return np.clip(15 - b.x["brain"] - 3 * b.x["vent"], 3, 15)

    def true_sofa(self, b: PatientBatch) -> np.ndarray:
        x = b.x
        return sofa_score(
            self.pf_ratio(b), x["vent"], x["plt"], x["bili"], self.mean_arterial_pressure(b), x["vaso"],
            np.round(self.gcs(b)), x["creat"], x["urine"],
        )

    def vaso_needed(self, b: PatientBatch) -> np.ndarray:
        """Norepinephrine-eq. dose (mcg/kg/min) that would hold MAP 65 from the off-drug MAP: the patient's
        cardiovascular illness whatever is running (refractory shock, beyond the drug's Emax, reads 2.0)."""
        gap = 65.0 - self.mean_arterial_pressure(b, np.zeros(len(b)))
        emax = 40.0 * (1 - 0.5 * b.p["vasoplegia"])
        frac = np.clip(gap, 0, None) / emax
        return np.where(frac >= 0.889, 2.0, 0.25 * frac / np.maximum(1 - frac, 1e-9))

    def illness_sofa(self, b: PatientBatch) -> np.ndarray:
        """SOFA with its cardiovascular points from the illness (off-drug MAP, the dose that MAP 65 would
        need), not from the running dose: a drug's own SOFA points are not organ failure. The hazard and
        the discharge rule read this; the chart shows SOFA as clinicians chart it (``true_sofa``)."""
        x = b.x
        return sofa_score(
            self.pf_ratio(b), x["vent"], x["plt"], x["bili"], self.mean_arterial_pressure(b, np.zeros(len(b))),
            self.vaso_needed(b), np.round(self.gcs(b)), x["creat"], x["urine"],
        )

    @staticmethod
    def tissue_lactate(x: dict[str, np.ndarray]) -> np.ndarray:
        """Lactate less what catecholamines made: the hypoperfusion signal the hazard reads (the high-dose
        harm already has its own term, so catecholamine lactate is not counted a second time)."""
        return np.maximum(x["lac"] - x["lac_cat"], 0.4)

    def step(
        self, b: PatientBatch, fluid_ml: np.ndarray, vaso_dose: np.ndarray, rng: np.random.Generator
    ) -> StepOutcome:
        """Advance every patient by 4 hours under the given doses (arrays of length n)."""
        cfg = self.config
        n = len(b)
        p, x0 = b.p, b.x
        x = {k: v.copy() for k, v in x0.items()}
        f = np.clip(np.asarray(fluid_ml, dtype=np.float64), 0, None) / 1000.0
        d = np.clip(np.asarray(vaso_dose, dtype=np.float64), 0, None)
        infl = x["infl"]
        # the dose acts within the step: fluid enters the circulation (less what leaks), the infusion runs
        leak_frac = np.clip(p["leak"] * infl, 0, 0.85)
        x["vol"] = x["vol"] + f * (1 - leak_frac)
        x["oedema"] = x["oedema"] + f * leak_frac
        x["vaso"] = d
        mapv = self.mean_arterial_pressure(PatientBatch(p, x)) + rng.normal(0, 2.0, n)
        hypo = sigmoid((HYPOPERFUSION_MAP - mapv) / 3.0)  # autoregulation holds flow above ~60-65 mmHg
        perf = 1.0 - hypo
        resp_frac = np.clip(p["resp_gain"] / 16.0, 0, 1.2)
        flow_deficit = resp_frac * (1 - self.preload(x["vol"]))
        liver_fn = 1.0 / (1.0 + 0.3 * np.maximum(x["bili"] - 1.0, 0))
        kidney_fn = np.clip(p["creat_base"] / x["creat"], 0.05, 1.2)

        # losses over the step: urine, capillary leak, reabsorption of oedema as inflammation settles
        urine_ml = kidney_fn * (0.4 + 0.6 * perf) * np.clip(250 + 120 * (x["vol"] + 0.5), 30, 900)
        urine_ml = np.clip(urine_ml * rng.lognormal(0, 0.15, n), 0, 2000)
        shift = 0.1 * infl
        reabsorb = 0.08 * x["oedema"] * (1 - np.minimum(infl, 1.0))
        hydro = 0.3 * np.maximum(x["vol"] - 1.5, 0)
        x["vol"] = np.clip(x["vol"] - (urine_ml / 1000 - 0.1) - shift + reabsorb - hydro, -4, 6)
        x["oedema"] = np.clip(x["oedema"] + shift - reabsorb + hydro - 0.03 * x["oedema"], 0, 15)
        x["input_total"] = x["input_total"] + f * 1000
        x["output_total"] = x["output_total"] + urine_ml
        x["urine"] = urine_ml

        # infection course, perfusion-dependent
        x["infl"] = np.clip(
            infl * (1 - p["resolve"] * (0.4 + 0.6 * perf)) + p["worsen"] * hypo * 0.8 + rng.normal(0, 0.03, n), 0, 2
        )
        # lactate: hypoperfusion and flow deficit produce, perfusion and liver clear, high-dose vaso adds
        # (tracked apart in lac_cat, cleared at the same rate, so the hazard can leave it out)
        clear = 0.45 * perf * liver_fn
        x["lac_cat"] = x["lac_cat"] * (1 - clear) + 1.6 * np.maximum(d - 0.3, 0)
        x["lac"] = np.clip(
            x["lac"]
            + 1.5 * hypo * (0.5 + infl)
            + 0.6 * flow_deficit * infl
            + 1.6 * np.maximum(d - 0.3, 0)
            - clear * (x["lac"] - 1.0)
            + rng.normal(0, 0.12, n),
            0.4, 25,
        )
        x["lac_cat"] = np.clip(x["lac_cat"], 0, np.maximum(x["lac"] - 0.4, 0))
        # organs
        ks, ls, cs, bs = p["kidney_sens"], p["liver_sens"], p["coag_sens"], p["brain_sens"]
        x["creat"] = np.clip(
            x["creat"] + (0.3 * hypo + 0.05 * infl) * ks - 0.12 * (x["creat"] - p["creat_base"]) * perf, 0.3, 12
        )
        x["bili"] = np.clip(x["bili"] + 0.35 * (hypo + 0.3 * infl) * ls - 0.06 * (x["bili"] - p["bili_base"]), 0.1, 30)
        x["ast"] = np.clip(x["ast"] + 300 * hypo**2 * ls - 0.3 * (x["ast"] - p["ast_base"]), 5, 8000)
        x["plt"] = np.clip(x["plt"] - 10 * infl * cs + 0.08 * (p["plt_base"] - x["plt"]), 5, 700)
        x["brain"] = np.clip(0.7 * x["brain"] + 0.3 * (6 * hypo + 3 * np.maximum(infl - 0.5, 0) * bs), 0, 12)
        x["cl"] = x["cl"] + 1.5 * f - 0.2 * (x["cl"] - p["cl_base"])
        x["hb"] = np.clip(x["hb"] * (1 - 0.04 * f) + 0.05 * (p["hb_base"] - x["hb"]), 4, 20)
        x["alb"] = np.clip(x["alb"] - 0.05 * infl - 0.08 * f + 0.03 * (p["alb_base"] - x["alb"]), 1.0, 5.5)
        pf = self.pf_ratio(PatientBatch(p, x))
        intubate = (x["vent"] < 0.5) & ((pf < 150) | (self.gcs(PatientBatch(p, x)) < 8)) & (rng.random(n) < 0.5)
        extubate = (x["vent"] > 0.5) & (pf > 280) & (x["brain"] < 5) & (rng.random(n) < 0.3)
        x["vent"] = np.where(intubate, 1.0, np.where(extubate, 0.0, x["vent"]))
        x["t"] = x["t"] + 1

        nb = PatientBatch(p, x)
        sofa = self.illness_sofa(nb)
        new_map = self.mean_arterial_pressure(nb)
        x["hypo_run"] = np.where(new_map < 65, x["hypo_run"] + np.where(new_map < 60, 1.0, 0.5), 0.0)
        lac_before = self.tissue_lactate(x0)
        hazard = sigmoid(cfg.hazard_intercept + self.death_logit(nb, sofa, new_map, lac_before, d))
        died = rng.random(n) < hazard
        stable = self.ready_for_discharge(nb, sofa)
        discharged = ~died & stable & (rng.random(n) < cfg.discharge_prob)
        capped = ~died & ~discharged & (x["t"] >= cfg.max_steps)
        leaving = discharged | capped
        p_post = sigmoid(cfg.post_icu_intercept + self.post_icu_logit(nb, sofa))
        post_death = leaving & (rng.random(n) < p_post)
        p_leave = np.where(x["t"] >= cfg.max_steps, 1.0, stable * cfg.discharge_prob)
        return StepOutcome(nb, died, discharged, post_death, died | leaving, hazard, p_leave, p_post)

    # ------------------------------------------------------------------------------------- mortality
    def ready_for_discharge(self, b: PatientBatch, illness_sofa: np.ndarray) -> np.ndarray:
        """The team's discharge rule, read from the illness after >= 3 steps: illness SOFA <= 5, tissue
        lactate < 2.2 and an off-drug MAP >= 65 (the patient no longer needs a vasopressor; a running dose is
        weaned on the way out, so it neither blocks discharge nor follows the patient). Ready stays leave
        with probability ``discharge_prob`` per step."""
        off_drug = self.mean_arterial_pressure(b, np.zeros(len(b)))
        return (illness_sofa <= 5) & (self.tissue_lactate(b.x) < 2.2) & (off_drug >= 65) & (b.x["t"] >= 3)

    def death_logit(self, b: PatientBatch, sofa: np.ndarray, mapv: np.ndarray, lac_before: np.ndarray,
                    vaso_dose: np.ndarray) -> np.ndarray:
        """In-ICU death hazard of a 4-hour step (logit, without the intercept); see the module docstring.

        ``sofa`` is the illness SOFA (``illness_sofa``), ``mapv`` the MAP reached, ``lac_before`` the tissue
        lactate at the start of the step and ``vaso_dose`` the running dose."""
        p, x = b.p, b.x
        lac = self.tissue_lactate(x)
        balance_l = (x["input_total"] - x["output_total"]) / 1000.0
        return (
            0.22 * sofa + 0.35 * np.maximum(lac - 2, 0) + 0.9 * sigmoid((55 - mapv) / 3) + p["frailty"]
            + 0.7 * sigmoid((100 - self.pf_ratio(b)) / 25)  # hypoxaemic respiratory failure (Berlin)
            + 0.35 * np.clip(balance_l - 5.0, 0, 3)  # sustained fluid overload, non-pulmonary (saturates)
            + 0.45 * np.minimum(x["hypo_run"], 4)  # persistent hypotension
            + 0.6 * np.clip(lac - lac_before, 0, 2)  # rising (tissue) lactate
            + HIGH_DOSE_HARM * np.maximum(vaso_dose - 0.25, 0)  # high-dose vasopressor toxicity
            + VASOCONSTRICTION_HARM * vaso_dose * sigmoid((mapv - 85) / 4)  # needless vasoconstriction
        )

    def post_icu_logit(self, b: PatientBatch, sofa: np.ndarray) -> np.ndarray:
        """Death after leaving the ICU (outcome window), from the illness at discharge (logit, no intercept).
        Fluid overload is not in it: its harm is counted once, in the ICU (see the module docstring)."""
        p = b.p
        return (
            0.2 * sofa + 0.4 * np.maximum(self.tissue_lactate(b.x) - 2, 0) + p["frailty"]
            + 0.9 * sigmoid((150 - self.pf_ratio(b)) / 25)
        )

    def step_actions(self, b: PatientBatch, actions: np.ndarray, rng: np.random.Generator) -> StepOutcome:
        """Step with joint action ids 0..24 at the bins' representative doses."""
        fb, vb = split_action(np.asarray(actions, dtype=np.int64))
        if np.any((fb < 0) | (fb > 4) | (vb < 0) | (vb > 4)):
            raise ValueError("actions must be joint action ids in 0..24")
        fluid = np.asarray(SYNTH_FLUID_BINS.representative)[fb]
        vaso = np.asarray(SYNTH_VASO_BINS.representative)[vb]
        return self.step(b, fluid, vaso, rng)

    # ------------------------------------------------------------------------------------ observation
    def observe(self, b: PatientBatch, rng: np.random.Generator) -> np.ndarray:
        """Charted features [n, 47] in ``feature_names`` order (real units, with measurement noise)."""
        p, x = b.p, b.x
        n = len(b)
        s = self.config.observation_noise

        def noisy(v: np.ndarray, sd: float | np.ndarray) -> np.ndarray:
            return v + s * rng.normal(0, 1, n) * sd

        mapv = noisy(self.mean_arterial_pressure(b), 3.0)
        pp = p["pulse_pressure"] + 5 * np.minimum(x["infl"], 1.5) * (1 - p["vasoplegia"])
        sbp = mapv + 2 / 3 * pp
        dbp = mapv - 1 / 3 * pp
        hr = noisy(72 + 22 * x["infl"] + 0.7 * np.maximum(0, 70 - mapv) + 12 * x["vaso"] / (x["vaso"] + 0.3)
                   + 6 * np.maximum(-x["vol"] - 1, 0), 5.0)
        temp = noisy(37.0 + p["temp_sign"] * 1.3 * x["infl"], 0.3)
        pf = noisy(self.pf_ratio(b), 12.0).clip(30, 650)
        vent = x["vent"]
        fio2 = np.where(vent > 0.5, np.clip(0.3 + (300 - pf) / 400, 0.3, 1.0),
                        np.clip(0.21 + np.maximum(0, 300 - pf) / 600, 0.21, 0.6))
        pao2 = pf * fio2
        spo2 = np.clip(noisy(100 / (1 + 23400 / (pao2**3 + 150 * pao2)), 1.0), 60, 100)
        lac = np.clip(x["lac"] * (1 + s * rng.normal(0, 0.05, n)), 0.3, 30)
        be = noisy(-1.1 * (x["lac"] - 1) - 0.6 * (x["cl"] - 104) - 0.8 * np.maximum(x["creat"] - 1.5, 0), 1.0)
        hco3 = np.clip(24 + 0.9 * be, 5, 40)
        paco2 = np.clip(noisy(40 + 0.7 * (hco3 - 24) - 2 * x["infl"], 2.0), 15, 90)
        ph = np.clip(6.1 + np.log10(hco3 / (0.03 * paco2)), 6.8, 7.7)
        rr = np.where(vent > 0.5, noisy(np.full(n, 18.0), 2.0),
                      noisy(15 + 6 * x["infl"] + 1.5 * np.maximum(x["lac"] - 2, 0) + 6 * np.maximum(0, 1 - pf / 300), 2.5))
        wbc = np.clip(noisy(p["wbc_base"] + p["wbc_sign"] * np.where(p["wbc_sign"] > 0, 9, 5) * x["infl"], 1.0), 0.2, 60)
        creat = np.clip(x["creat"] * (1 + s * rng.normal(0, 0.04, n)), 0.2, 15)
        bili = np.clip(x["bili"] * (1 + s * rng.normal(0, 0.06, n)), 0.1, 40)
        plt = np.clip(noisy(x["plt"], 8.0), 2, 800)
        inr = np.clip(noisy(1.0 + 0.6 * np.maximum(0, 150 - x["plt"]) / 150 * p["coag_sens"]
                            + 0.2 * np.maximum(x["bili"] - 1.2, 0), 0.05), 0.8, 8)
        gcs = np.clip(np.round(noisy(self.gcs(b), 0.5)), 3, 15)
        urine = x["urine"]
        sofa = sofa_score(pf, vent, plt, bili, mapv, x["vaso"], gcs, creat, urine)
        cols = {
            "gender": p["gender"], "age": p["age"], "Weight_kg": p["weight"], "re_admission": p["readmit"],
            "elixhauser": p["elix"], "GCS": gcs, "HR": hr, "SysBP": sbp, "MeanBP": mapv, "DiaBP": dbp, "RR": rr,
            "SpO2": spo2, "Temp_C": temp, "FiO2_1": fio2,
            "Potassium": np.clip(noisy(p["k_base"] + 0.3 * np.maximum(x["creat"] - 1.2, 0) + 0.4 * (7.4 - ph), 0.2), 2, 8),
            "Sodium": noisy(p["na_base"] - 0.5 * np.maximum(x["input_total"] / 1000 - 3, 0), 1.5),
            "Chloride": noisy(x["cl"], 1.5),
            "Glucose": np.clip(noisy(p["glu_base"] + 40 * x["infl"], 15.0), 40, 600),
            "BUN": np.clip(noisy(p["bun_ratio"] * x["creat"], 3.0), 2, 200),
            "Creatinine": creat,
            "Magnesium": noisy(p["mg_base"], 0.1), "Calcium": noisy(p["ca_base"] - 0.3 * x["infl"], 0.2),
            "SGOT": np.clip(x["ast"] * (1 + s * rng.normal(0, 0.1, n)), 5, 10000),
            "SGPT": np.clip(0.8 * x["ast"] * (1 + s * rng.normal(0, 0.1, n)), 3, 10000),
            "Total_bili": bili, "Albumin": np.clip(noisy(x["alb"], 0.1), 0.8, 6),
            "Hb": np.clip(noisy(x["hb"], 0.3), 3, 20),
            "WBC_count": wbc, "Platelets_count": plt, "PTT": np.clip(30 + 12 * (inr - 1) + s * rng.normal(0, 2, n), 20, 150),
            "PT": 12.0 * inr, "INR": inr, "Arterial_pH": ph, "paO2": pao2, "paCO2": paco2, "Arterial_BE": be,
            "HCO3": hco3, "Arterial_lactate": lac, "mechvent": vent, "PaO2_FiO2": pf,
            "input_total": x["input_total"], "output_total": x["output_total"], "output_4hourly": urine,
            "cumulated_balance": x["input_total"] - x["output_total"],
            "SOFA": sofa.astype(np.float64), "SIRS": sirs_count(temp, hr, rr, paco2, wbc).astype(np.float64),
            "Shock_Index": hr / np.maximum(sbp, 1.0),
        }
        return np.stack([np.asarray(cols[name], dtype=np.float64) for name in self.feature_names], axis=1)
