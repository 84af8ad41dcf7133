"""An estimated behaviour (clinician) policy for cohorts that do not record ``behaviour_prob``.

Importance-sampling estimators divide by the clinicians' action probabilities; an imported cohort has only
the actions. This fits a classifier of the logged action on the train split (a small MLP, or multinomial
logistic regression with ``hidden=()``, on the shared baseline encoding), stops early on the validation
negative log-likelihood, then calibrates it on the validation split with temperature scaling (Guo et al.
2017: one scalar T dividing the logits, fitted by minimising validation NLL; it changes confidence, never the
ranking). Probabilities are floored at ``min_prob`` so no logged action gets weight 1/0.

Reported: accuracy, NLL and expected calibration error (ECE: the bin-weighted mean |accuracy - confidence|
over equal-width bins of the top-class probability, Naeini et al. 2015; 15 bins) before and after
calibration. The validation numbers are on the split T was fitted on (one parameter, so only mildly
optimistic); :func:`calibration_metrics` gives the same numbers on any other split (the report uses test).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from sepsis_rl.cohort.spec import N_ACTIONS
from sepsis_rl.eval.baselines.common import StateEncoder, policy_probs_on_rows
from sepsis_rl.eval.logged import LoggedData
from sepsis_rl.eval.policy import DecisionBatch, Policy


@dataclass(frozen=True)
class BehaviourConfig:
    hidden: tuple[int, ...] = (64, 64)  # () = multinomial logistic regression
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 512
    epochs: int = 30
    patience: int = 3  # epochs without a better validation NLL before stopping
    min_prob: float = 1e-4
    ece_bins: int = 15
    seed: int = 0
    threads: int = 1

    @classmethod
    def tiny(cls) -> "BehaviourConfig":
        return cls(hidden=(16,), epochs=5, batch_size=128, lr=3e-3)

    @classmethod
    def default(cls) -> "BehaviourConfig":
        return cls()


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """ECE of the top-class confidence: sum_b (n_b / n) |acc_b - conf_b| over equal-width bins of (0, 1]."""
    probs = np.asarray(probs, dtype=np.float64)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == np.asarray(labels)).astype(np.float64)
    bins = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    acc = np.bincount(bins, weights=correct, minlength=n_bins)
    cf = np.bincount(bins, weights=conf, minlength=n_bins)
    return float(np.abs(acc - cf).sum() / len(conf))


def _mlp(d_in: int, hidden: tuple[int, ...]) -> nn.Module:
    layers: list[nn.Module] = []
    for h in hidden:
        layers += [nn.Linear(d_in, h), nn.ReLU()]
        d_in = h
    return nn.Sequential(*layers, nn.Linear(d_in, N_ACTIONS))


class EstimatedBehaviourPolicy(Policy):
    """softmax(logits / T), floored at ``min_prob`` and renormalised."""

    name = "behaviour_estimate"

    def __init__(self, net: nn.Module, enc: StateEncoder, temperature: float, min_prob: float) -> None:
        self.net, self.enc, self.temperature, self.min_prob = net, enc, temperature, min_prob
        self.info: dict[str, object] = {}

    def logits(self, obs: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            return self.net(torch.from_numpy(obs))

    def probs_from_obs(self, obs: np.ndarray) -> np.ndarray:
        p = torch.softmax(self.logits(obs) / self.temperature, dim=-1).numpy().astype(np.float64)
        p = np.maximum(p, self.min_prob)
        return p / p.sum(axis=1, keepdims=True)

    def action_probs(self, batch: DecisionBatch) -> np.ndarray:
        return self.probs_from_obs(self.enc.encode_batch(batch))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """argmin_T NLL(softmax(logits / T)) over T > 0 (optimised in log T with L-BFGS)."""
    log_t = torch.zeros(1, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().exp().clamp(0.05, 20.0))


def calibration_metrics(policy: Policy, data: LoggedData, n_bins: int = 15) -> dict[str, float]:
    """Accuracy, NLL and ECE of a behaviour policy against the logged actions of ``data``."""
    p = policy_probs_on_rows(policy, data)
    return {"accuracy": float((p.argmax(axis=1) == data.actions).mean()),
            "nll": float(-np.log(p[np.arange(len(data)), data.actions]).mean()),
            "ece": expected_calibration_error(p, data.actions, n_bins), "n_rows": len(data)}


def estimate_behaviour(train: LoggedData, val: LoggedData,
                       cfg: BehaviourConfig | None = None) -> tuple[EstimatedBehaviourPolicy, dict[str, object]]:
    """Fit on train (early stopping on val NLL), temperature-scale on val; returns the policy and its metrics."""
    cfg = cfg or BehaviourConfig.default()
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        enc = StateEncoder.fit(train)
        x, y = torch.from_numpy(enc.encode_rows(train)), torch.from_numpy(train.actions.astype(np.int64))
        xv, yv = torch.from_numpy(enc.encode_rows(val)), torch.from_numpy(val.actions.astype(np.int64))
        net = _mlp(enc.dim, cfg.hidden)
        opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        best, best_state, stale, epochs = float("inf"), copy.deepcopy(net.state_dict()), 0, 0
        for epoch in range(cfg.epochs):
            order = torch.from_numpy(rng.permutation(len(x)))
            for lo in range(0, len(x), cfg.batch_size):
                idx = order[lo:lo + cfg.batch_size]
                loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            epochs = epoch + 1
            with torch.no_grad():
                nll = float(nn.functional.cross_entropy(net(xv), yv))
            if nll < best - 1e-4:
                best, best_state, stale = nll, copy.deepcopy(net.state_dict()), 0
            else:
                stale += 1
                if stale >= cfg.patience:
                    break
        net.load_state_dict(best_state)
        net.eval()
        with torch.no_grad():
            val_logits = net(xv)
        temperature = fit_temperature(val_logits, yv)
    finally:
        torch.set_num_threads(prev_threads)
    raw = EstimatedBehaviourPolicy(net, enc, 1.0, cfg.min_prob)
    policy = EstimatedBehaviourPolicy(net, enc, temperature, cfg.min_prob)
    metrics: dict[str, object] = {
        "train": calibration_metrics(policy, train, cfg.ece_bins),
        "val_uncalibrated": calibration_metrics(raw, val, cfg.ece_bins),
        "val": calibration_metrics(policy, val, cfg.ece_bins),
        "temperature": temperature, "epochs": epochs, "train_seconds": time.perf_counter() - t0,
        "config": asdict(cfg),
    }
    policy.info = metrics
    return policy, metrics
