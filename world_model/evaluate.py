"""Evaluation of a world model on a cohort split; produces the ``metrics.json`` report.

State errors are MAE of the dynamic continuous features in linear z-score units (train mean/std), so
1.0 means "off by one population standard deviation", comparable across features and models.

Outcome choice (several are possible, so it is spelled out): ``outcome_auroc``/``auprc``/``ece`` score
each stay by the model's risk at its last logged row, ``p_death / (p_death + p_discharge)``: the
probability that the stay ended in death given that it ended there. Given the whole logged trajectory,
including the fact that it went on until that row, this is the model's posterior probability of death
(it is also how a simulated stay's ending is decided). ``outcome_auroc_cumulative`` (and ``_auprc``,
``_ece``) aggregate the per-step hazards instead, ``1 - prod_t (1 - p_death_t)`` over the stay's rows;
that ignores the evidence that the patient survived every earlier step, so long stays of survivors
accumulate risk, and it is reported for comparison only.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sepsis_rl.cohort.store import read_cohort
from sepsis_rl.cohort.validation import CohortInputError
from world_model import metrics as M
from world_model.counterfactual import simulate_branches
from world_model.data import TERM_DEATH, Windows, make_windows
from world_model.model import WorldModel


@dataclass(frozen=True)
class EvalConfig:
    split: str = "test"
    horizons: int = 4  # open-loop horizons 1..H
    counterfactual: bool = True  # only for synthetic cohorts with ground truth
    cf_patients: int | None = None  # fresh patients to simulate (default: the split's count, at most 2000)
    seed: int = 0
    ece_bins: int = 10


def evaluate_world_model(model: WorldModel, cohort_dir: str | os.PathLike, config: EvalConfig = EvalConfig()) -> dict:
    """All metrics of ``model`` on ``cohort_dir``'s split (see the module docstring)."""
    if not Path(cohort_dir).is_dir():
        raise FileNotFoundError(f"cohort folder {cohort_dir} does not exist")
    cohort = read_cohort(cohort_dir, splits=(config.split,))
    if cohort.spec.feature_names != model.feature_names:
        raise CohortInputError(f"{cohort_dir}: the cohort's features differ from the model's "
                               f"({len(cohort.spec.feature_names)} vs {len(model.feature_names)} features)")
    w = make_windows(cohort.table(config.split), cohort.spec, model.window)
    if not w.has_next.any():
        raise CohortInputError(f"{cohort_dir}: split {config.split!r} has no transitions to evaluate")
    pred = model.predict(w.history(), w.action, mask=w.mask, time=w.step)
    out: dict = {"split": config.split, "rows": len(w), "episodes": int((~w.has_next).sum())}
    out.update(one_step(model, w, pred))
    out.update(outcomes(w, pred, config.ece_bins))
    out.update(open_loop(model, w, config.horizons))
    if config.counterfactual:
        out.update(counterfactual(model, cohort_dir, cohort.spec, config, n_default=out["episodes"]))
        from world_model.action_ranking import action_ranking

        out.update(action_ranking(model, cohort_dir, seed=config.seed))
    out["model"] = {"arch": model.config.arch, "members": model.config.members, "window": model.window}
    return out


def _z(model: WorldModel, x: np.ndarray) -> np.ndarray:
    return model.normalizer.zscore(x)[..., list(model.layout.dynamic)]


def one_step(model: WorldModel, w: Windows, pred: dict) -> dict:
    rows = np.nonzero(w.has_next)[0]
    y = _z(model, w.next_state(rows))
    err = np.abs(_z(model, pred["mean"][rows]) - y)
    persist = np.abs(_z(model, w.x[rows]) - y)
    names = model.layout.dynamic_names()
    res = {
        "state_mae": float(err.mean()),
        "persistence_mae": float(persist.mean()),
        "state_mae_per_feature": {n: float(v) for n, v in zip(names, err.mean(axis=0))},
        "persistence_mae_per_feature": {n: float(v) for n, v in zip(names, persist.mean(axis=0))},
    }
    res["state_mae_reduction_vs_persistence"] = 1 - res["state_mae"] / res["persistence_mae"]
    if model.layout.binary and not np.isnan(pred["p_vent"]).all():
        vent = model.layout.binary[model._vent]  # type: ignore[index]
        truth = w.next_state(rows)[:, vent]
        res["vent_auroc"] = _nan_none(M.auroc(truth, pred["p_vent"][rows]))
        off = w.x[rows, vent] < 0.5
        res["vent_onset_auroc"] = _nan_none(M.auroc(truth[off], pred["p_vent"][rows][off]))
    return res


def outcomes(w: Windows, pred: dict, bins: int) -> dict:
    ep_start = np.ones(len(w), dtype=bool)
    ep_start[1:] = w.episode_id[1:] != w.episode_id[:-1]
    group = np.cumsum(ep_start) - 1
    log_survive = np.bincount(group, weights=np.log1p(-np.clip(pred["p_death"], 0, 1 - 1e-12)))
    cumulative = 1 - np.exp(log_survive)
    last = w.last_rows()
    died = w.outcome[last]
    risk = pred["p_death"][last] / np.maximum(pred["p_death"][last] + pred["p_discharge"][last], 1e-12)
    return {
        "mortality": float(died.mean()),
        "outcome_auroc": _nan_none(M.auroc(died, risk)),
        "outcome_auprc": _nan_none(M.auprc(died, risk)),
        "outcome_ece": _nan_none(M.ece(died, risk, bins)),
        "outcome_mean_risk": float(risk.mean()),
        "outcome_auroc_cumulative": _nan_none(M.auroc(died, cumulative)),
        "outcome_auprc_cumulative": _nan_none(M.auprc(died, cumulative)),
        "outcome_ece_cumulative": _nan_none(M.ece(died, cumulative, bins)),
        "death_step_auroc": _nan_none(M.auroc(w.terminal == TERM_DEATH, pred["p_death"])),
    }


def open_loop(model: WorldModel, w: Windows, horizons: int) -> dict:
    """Feed the model's mean predictions back for H steps along the logged actions."""
    start = np.nonzero(w.has_next)[0]
    hist, mask, cur = w.history(start), w.mask[start].copy(), start
    mae, persist, count = {}, {}, {}
    for h in range(1, horizons + 1):
        if len(cur) == 0:
            break
        mean = model.predict(hist, w.action[cur], mask=mask, time=w.step[cur])["mean"]
        nxt = w.next_idx[cur]
        y = _z(model, w.x[nxt])
        mae[str(h)] = M.mae(_z(model, mean), y)
        persist[str(h)] = M.mae(_z(model, w.x[start]), y)
        count[str(h)] = len(cur)
        keep = w.next_idx[nxt] >= 0
        hist = np.concatenate([hist[:, 1:], mean[:, None]], axis=1)[keep]
        mask = np.concatenate([mask[:, 1:], np.ones((len(mask), 1), dtype=bool)], axis=1)[keep]
        start, cur = start[keep], nxt[keep]
    return {"open_loop_mae": mae, "open_loop_persistence_mae": persist, "open_loop_count": count}


def counterfactual(model: WorldModel, cohort_dir, spec, config: EvalConfig, n_default: int) -> dict:
    from sepsis_rl.cohort.synth import GroundTruth

    try:
        truth = GroundTruth.load(cohort_dir)
    except ValueError as e:
        return {"counterfactual_state_mae": None, "counterfactual_note": str(e)}
    n = config.cf_patients or min(max(n_default, 1), 2000)
    b = simulate_branches(truth.simulator, spec, n, model.window, seed=config.seed + 1_000_003)
    fact = model.predict(b.history, b.action, mask=b.mask, time=b.time)["mean"]
    cf = model.predict(b.history, b.cf_action, mask=b.mask, time=b.time)["mean"]
    cur = _z(model, b.history[:, -1])
    f, c, both = b.continues, b.cf_continues, b.continues & b.cf_continues
    true_effect = _z(model, b.cf_next_state[both]) - _z(model, b.next_state[both])
    pred_effect = _z(model, cf[both]) - _z(model, fact[both])
    names = model.layout.dynamic_names()
    per = np.abs(pred_effect - true_effect).mean(axis=0)
    return {
        "counterfactual_state_mae": M.mae(_z(model, cf[c]), _z(model, b.cf_next_state[c])),
        "counterfactual_persistence_mae": M.mae(cur[c], _z(model, b.cf_next_state[c])),
        "fresh_factual_state_mae": M.mae(_z(model, fact[f]), _z(model, b.next_state[f])),
        "fresh_factual_persistence_mae": M.mae(cur[f], _z(model, b.next_state[f])),
        "counterfactual_effect_mae": M.mae(pred_effect, true_effect),
        "counterfactual_zero_effect_mae": float(np.abs(true_effect).mean()),
        "counterfactual_effect_mae_per_feature": {k: float(v) for k, v in zip(names, per)},
        "counterfactual_transitions": int(c.sum()),
        "counterfactual_patients": n,
    }


def _nan_none(v: float) -> float | None:
    return None if np.isnan(v) else float(v)


def write_metrics(path: str | os.PathLike, metrics: dict) -> Path:
    """Write JSON atomically (temp file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(metrics, fh, indent=2)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


__all__ = ["EvalConfig", "evaluate_world_model", "write_metrics"]
