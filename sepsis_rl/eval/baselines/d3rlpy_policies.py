"""Discrete CQL and BCQ from d3rlpy 2.8.0 (pinned: 2.8.1 pins gymnasium 1.0.0, which conflicts with RLlib's).

- CQL (Kumar et al. 2020), d3rlpy's ``DiscreteCQL``: double DQN plus alpha * (logsumexp_a Q(s, a) - Q(s, a_data)),
  which pushes down the values of actions the clinicians did not take.
- BCQ (Fujimoto et al. 2019, discrete version), d3rlpy's ``DiscreteBCQ``: Q-learning restricted to actions whose
  imitation probability is at least ``action_flexibility`` times the most likely action's.

The dataset is the shared baseline encoding (``common.StateEncoder``) of every logged row, with the
cohort's rewards (terminal reward on the last row) and ``terminals`` on each stay's last row; d3rlpy derives
next states from the following row of the same stay. Training runs in epochs of ``eval_every`` steps; after
each, the selector scores the (epsilon-softened) greedy policy on the validation split and the best
epoch's parameters are kept (in memory). The returned policy is greedy over d3rlpy's ``predict``.
"""

from __future__ import annotations

import io
import logging
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from sepsis_rl.cohort.spec import N_ACTIONS
from sepsis_rl.eval.baselines.common import SelectionLog, Selector, StateEncoder, soften, wis_selector
from sepsis_rl.eval.logged import LoggedData
from sepsis_rl.eval.policy import DecisionBatch, Policy, one_hot

Algo = Literal["cql", "bcq"]


@dataclass(frozen=True)
class D3rlpyConfig:
    hidden: tuple[int, ...] = (128, 128)
    lr: float = 1e-4
    gamma: float = 0.99
    batch_size: int = 256
    steps: int = 10_000
    eval_every: int = 1_000
    target_update_interval: int = 500
    cql_alpha: float = 1.0
    bcq_action_flexibility: float = 0.3
    bcq_beta: float = 0.5
    epsilon: float = 0.0
    select_epsilon: float = 0.1
    seed: int = 0
    threads: int = 1
    extra: dict[str, Any] = field(default_factory=dict)  # passed through to the d3rlpy algorithm config

    @classmethod
    def tiny(cls) -> "D3rlpyConfig":
        return cls(hidden=(32,), steps=60, eval_every=30, batch_size=64, target_update_interval=20, lr=1e-3)

    @classmethod
    def default(cls) -> "D3rlpyConfig":
        return cls()


def _d3rlpy() -> Any:
    with warnings.catch_warnings():  # d3rlpy 2.8 imports the old gym package, which warns about NumPy 2
        warnings.simplefilter("ignore")
        import d3rlpy
    import structlog  # d3rlpy logs every epoch through structlog at INFO; keep warnings only

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    return d3rlpy


def make_dataset(data: LoggedData, enc: StateEncoder) -> Any:
    """d3rlpy MDPDataset of the logged rows (discrete actions 0..24, terminal on each stay's last row)."""
    d3 = _d3rlpy()
    return d3.dataset.MDPDataset(
        observations=enc.encode_rows(data), actions=data.actions.astype(np.int64).reshape(-1, 1),
        rewards=data.rewards.astype(np.float32).reshape(-1, 1), terminals=data.dones.astype(np.float32),
        action_space=d3.constants.ActionSpace.DISCRETE, action_size=N_ACTIONS)


def _make_algo(name: Algo, cfg: D3rlpyConfig) -> Any:
    d3 = _d3rlpy()
    common = dict(learning_rate=cfg.lr, gamma=cfg.gamma, batch_size=cfg.batch_size,
                  target_update_interval=cfg.target_update_interval,
                  encoder_factory=d3.models.VectorEncoderFactory(hidden_units=list(cfg.hidden)), **cfg.extra)
    if name == "cql":
        return d3.algos.DiscreteCQLConfig(alpha=cfg.cql_alpha, **common).create(device=False)
    if name == "bcq":
        return d3.algos.DiscreteBCQConfig(action_flexibility=cfg.bcq_action_flexibility, beta=cfg.bcq_beta,
                                          **common).create(device=False)
    raise ValueError(f"unknown d3rlpy baseline {name!r} (cql, bcq)")


class D3rlpyPolicy(Policy):
    """Greedy action of a trained d3rlpy algorithm (one-hot), softened with epsilon if asked."""

    def __init__(self, algo: Any, enc: StateEncoder, name: str, epsilon: float = 0.0) -> None:
        self.algo, self.enc, self.name, self.epsilon = algo, enc, name, epsilon
        self.deterministic = epsilon == 0.0
        self.info: dict[str, object] = {}

    def action_probs(self, batch: DecisionBatch) -> np.ndarray:
        actions = self.algo.predict(self.enc.encode_batch(batch))
        return soften(one_hot(np.asarray(actions).reshape(-1)), self.epsilon)

    def with_epsilon(self, epsilon: float) -> "D3rlpyPolicy":
        p = D3rlpyPolicy(self.algo, self.enc, self.name, epsilon)
        p.info = self.info
        return p


def _params(algo: Any) -> bytes:
    buf = io.BytesIO()
    algo.impl.save_model(buf)
    return buf.getvalue()


def train_d3rlpy(name: Algo, train: LoggedData, val: LoggedData, cfg: D3rlpyConfig | None = None,
                 selector: Selector | None = None) -> D3rlpyPolicy:
    """Train d3rlpy's discrete ``cql`` or ``bcq`` on ``train``; keep the epoch the selector scores best on ``val``."""
    cfg = cfg or D3rlpyConfig.default()
    selector = selector or wis_selector
    d3 = _d3rlpy()
    t0 = time.perf_counter()
    d3.seed(cfg.seed)
    prev_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        enc = StateEncoder.fit(train)
        dataset = make_dataset(train, enc)
        algo = _make_algo(name, cfg)
        log = SelectionLog()
        fitter = algo.fitter(dataset, n_steps=cfg.steps, n_steps_per_epoch=cfg.eval_every, show_progress=False,
                             logger_adapter=d3.logging.NoopAdapterFactory(), save_interval=10**9)
        last: dict[str, float] = {}
        for epoch, metrics in fitter:
            last = {k: float(v) for k, v in metrics.items()}
            value = selector(D3rlpyPolicy(algo, enc, name, cfg.select_epsilon), val)
            log.offer(epoch * cfg.eval_every, value, lambda: _params(algo))
        algo.impl.load_model(io.BytesIO(log.best_state))  # type: ignore[arg-type]
    finally:
        torch.set_num_threads(prev_threads)
    policy = D3rlpyPolicy(algo, enc, name, cfg.epsilon)
    policy.info = {**log.info(), "train_seconds": time.perf_counter() - t0, "final_metrics": last,
                   "config": asdict(cfg)}
    return policy
