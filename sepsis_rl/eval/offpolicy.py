"""One call for a policy's off-policy estimates on a logged split: FQE, then IS/WIS/PDIS/WPDIS/DR/WDR.

The evaluate driver computes the policy's [N, 25] probabilities at every logged row once and hands them
here; FQE is fitted on the same rows (its Q-model is DR's model), and every estimator shares the same
patient resamples so their CIs are comparable.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from sepsis_rl.eval.fqe import FQEConfig, fit_fqe_logged, fqe_value_logged
from sepsis_rl.eval.logged import LoggedData
from sepsis_rl.eval.ope import DEFAULT_BOOTSTRAP, DEFAULT_GAMMA, Episodes, Estimate, all_estimates


@dataclass
class OPEConfig:
    gamma: float = DEFAULT_GAMMA
    n_boot: int = DEFAULT_BOOTSTRAP
    seed: int = 0
    fqe: FQEConfig = field(default_factory=FQEConfig)
    use_fqe: bool = True  # False: IS-family only (no DR/WDR/FQE), for a quick look


def off_policy_estimates(
    data: LoggedData,
    target_probs: np.ndarray,
    cfg: OPEConfig | None = None,
    fqe_data: tuple[LoggedData, np.ndarray] | None = None,
) -> dict[str, Estimate]:
    """{"is", "wis", "pdis", "wpdis", ["dr", "wdr", "fqe"]} -> Estimate for one policy on one logged split.

    ``fqe_data`` = (another split, the policy's probabilities there) fits FQE on that split instead (e.g.
    train: more data, and a Q-model independent of the evaluation stays keeps DR's correction honest); FQE's
    value is still taken at the evaluation split's admission states.
    """
    cfg = cfg or OPEConfig()
    q_values = None
    out: dict[str, Estimate] = {}
    if cfg.use_fqe:
        fqe_cfg = FQEConfig(**{**cfg.fqe.__dict__, "gamma": cfg.gamma})
        fit_data, fit_probs = fqe_data if fqe_data is not None else (data, target_probs)
        model = fit_fqe_logged(fit_data, fit_probs, fqe_cfg)
        q_values = model.q_values(data.states, data.steps)
        out["fqe"] = fqe_value_logged(model, data, target_probs, cfg.n_boot, cfg.seed)
    ep = Episodes.from_logged(data, target_probs, cfg.gamma, q_values)
    return {**all_estimates(ep, cfg.n_boot, cfg.seed), **out}
