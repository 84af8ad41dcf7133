"""BC and MARWIL from RLlib 2.60 on the new API stack, reading the cohort through Ray Data.

- BC: maximum likelihood of the logged action (RLlib's ``BC``: MARWIL with beta = 0).
- MARWIL (Wang et al. 2018): likelihood weighted by exp(beta * A / c), A the advantage from a learned value
  function, c a running norm of A (RLlib's ``MARWIL``).

Data path: the logged rows become transitions in RLlib's offline column contract (``eps_id, obs, actions,
rewards, new_obs, terminateds, truncateds``), written to Parquet by :func:`write_transitions` (the one
converter), and read by RLlib's ``OfflineData`` through Ray Data. RLlib's pre-learner turns each row into a
one-step episode, so MARWIL's advantages are one-step: A = r + gamma V(s') - V(s) on non-terminal rows and
r - V(s) on a stay's last row (``terminateds``), not Monte-Carlo returns of the whole stay.

Workarounds measured on 2-CPU machines (DESIGN.md section 6): RLlib's Parquet reading deadlocks unless the data
is materialised (``materialize_data=True``), Ray Data's datasource v2 is off, and the pre-learner map runs as
one actor on half a CPU (``map_batches_kwargs={"concurrency": 1, "num_cpus": 0.5}``).

The trained RLModule is rebuilt from the config's module spec and the learner's weights; the policy's
probabilities are the softmax of its ``action_dist_inputs`` logits (BC and MARWIL are stochastic policies).
Each ``algo.train()`` runs ``iters_per_eval`` updates; after each, the selector scores the module on the
validation split and the best module state is kept. Without a running Ray, the first call starts a local one
(``num_cpus``) and leaves it up for the process (the caller owns ``ray.shutdown()``).
"""

from __future__ import annotations

import copy
import gc
import logging
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from sepsis_rl.cohort.spec import N_ACTIONS
from sepsis_rl.eval.baselines.common import SelectionLog, Selector, StateEncoder, transitions, wis_selector
from sepsis_rl.eval.logged import LoggedData
from sepsis_rl.eval.policy import DecisionBatch, Policy

Algo = Literal["bc", "marwil"]
TRANSITION_COLUMNS = ("eps_id", "obs", "actions", "rewards", "new_obs", "terminateds", "truncateds")


@dataclass(frozen=True)
class RLlibConfig:
    hidden: tuple[int, ...] = (128, 128)
    lr: float = 1e-4
    gamma: float = 0.99
    batch_size: int = 256
    steps: int = 3_000  # learner updates in total
    iters_per_eval: int = 300  # updates per algo.train() call, each followed by a validation score
    marwil_beta: float = 1.0
    marwil_vf_coeff: float = 1.0
    num_cpus: int = 2  # for ray.init when no Ray is running yet
    seed: int = 0

    @classmethod
    def tiny(cls) -> "RLlibConfig":
        return cls(hidden=(32,), steps=20, iters_per_eval=10, batch_size=64, lr=1e-3)

    @classmethod
    def default(cls) -> "RLlibConfig":
        return cls()


def transition_table(data: LoggedData, enc: StateEncoder) -> pa.Table:
    """The logged rows in RLlib's offline transition columns (terminal rows: new_obs = obs, terminated)."""
    tr = transitions(data, enc)
    new_obs = np.where(tr.dones[:, None], tr.obs, tr.next_obs)
    d = tr.obs.shape[1]

    def as_list(x: np.ndarray) -> pa.Array:
        return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1), pa.float32()), d)

    return pa.table({
        "eps_id": pa.array(tr.episode_ids.astype(str)),
        "obs": as_list(tr.obs),
        "actions": pa.array(tr.actions, pa.int64()),
        "rewards": pa.array(tr.rewards, pa.float32()),
        "new_obs": as_list(new_obs),
        "terminateds": pa.array(tr.dones, pa.bool_()),
        "truncateds": pa.array(np.zeros(len(tr.dones), bool), pa.bool_()),
    })


def write_transitions(data: LoggedData, enc: StateEncoder, out_dir: str | Path) -> Path:
    """Write the transitions as one Parquet file under ``out_dir``; returns its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "transitions.parquet"
    pq.write_table(transition_table(data, enc), path)
    return path


class RLModulePolicy(Policy):
    """softmax of a trained RLModule's action logits at the encoded decision."""

    def __init__(self, module: Any, enc: StateEncoder, name: str) -> None:
        self.module, self.enc, self.name = module, enc, name
        self.info: dict[str, object] = {}

    def action_probs(self, batch: DecisionBatch) -> np.ndarray:
        with torch.no_grad():
            out = self.module.forward_inference({"obs": torch.from_numpy(self.enc.encode_batch(batch))})
            return torch.softmax(out["action_dist_inputs"].double(), dim=-1).numpy()


def _algo_config(name: Algo, parquet: Path, obs_dim: int, cfg: RLlibConfig) -> Any:
    import gymnasium as gym
    from ray.rllib.algorithms.bc import BCConfig
    from ray.rllib.algorithms.marwil import MARWILConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    if name not in ("bc", "marwil"):
        raise ValueError(f"unknown RLlib baseline {name!r} (bc, marwil)")
    base = BCConfig() if name == "bc" else MARWILConfig()
    conf = (
        base.environment(observation_space=gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32),
                         action_space=gym.spaces.Discrete(N_ACTIONS))
        .offline_data(input_=[str(parquet)], materialize_data=True,
                      map_batches_kwargs={"concurrency": 1, "num_cpus": 0.5},
                      dataset_num_iters_per_learner=cfg.iters_per_eval)
        .training(train_batch_size_per_learner=cfg.batch_size, lr=cfg.lr, gamma=cfg.gamma)
        .learners(num_learners=0)
        .env_runners(num_env_runners=0)
        .rl_module(model_config=DefaultModelConfig(fcnet_hiddens=list(cfg.hidden), fcnet_activation="relu"))
        .debugging(seed=cfg.seed, log_level="ERROR")
    )
    if name == "marwil":
        conf = conf.training(beta=cfg.marwil_beta, vf_coeff=cfg.marwil_vf_coeff)
    return conf


def _close_data_iterators(algo: Any) -> None:
    """Stop the learner's Ray Data epoch iterator (its streaming executor thread outlives ``algo.stop()`` in RLlib
    2.60; a later ``ray.shutdown()`` under that thread ends the process). Private attributes of the pinned RLlib."""
    learner = getattr(algo.learner_group, "_learner", None)
    epoch_iter = getattr(getattr(learner, "iterator", None), "_epoch_iterator", None)
    if hasattr(epoch_iter, "close"):
        epoch_iter.close()
    if learner is not None:
        learner.iterator = None


def train_rllib(name: Algo, train: LoggedData, val: LoggedData, cfg: RLlibConfig | None = None,
                selector: Selector | None = None) -> RLModulePolicy:
    """Train RLlib's ``bc`` or ``marwil`` on ``train`` (via Parquet + Ray Data); keep the best-on-``val`` module."""
    import ray
    from ray.rllib.core import DEFAULT_MODULE_ID

    cfg = cfg or RLlibConfig.default()
    selector = selector or wis_selector
    t0 = time.perf_counter()
    enc = StateEncoder.fit(train)
    tmp = Path(tempfile.mkdtemp(prefix=f"sepsis_rl_{name}_"))
    if not ray.is_initialized():
        # Kept running for the rest of the process: later calls reuse it, and a Ray shut down under any data
        # thread still running ends the process ("core worker has already been shutdown"). Caller owns shutdown.
        ray.init(address="local", num_cpus=cfg.num_cpus, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
    ctx = ray.data.DataContext.get_current()
    old_v2 = getattr(ctx, "use_datasource_v2", None)
    ctx.use_datasource_v2 = False
    algo = None
    try:
        parquet = write_transitions(train, enc, tmp)
        conf = _algo_config(name, parquet, enc.dim, cfg)
        algo = conf.build_algo()
        module = conf.get_rl_module_spec().build()
        module.eval()
        log = SelectionLog()
        n_iters = max(1, -(-cfg.steps // cfg.iters_per_eval))
        last: dict[str, float] = {}
        for it in range(1, n_iters + 1):
            result = algo.train()
            last = {k: float(v) for k, v in result.get("learners", {}).get(DEFAULT_MODULE_ID, {}).items()
                    if k.endswith("loss") and np.isscalar(v)}
            module.set_state(algo.learner_group.get_weights()[DEFAULT_MODULE_ID])
            value = selector(RLModulePolicy(module, enc, name), val)
            log.offer(it * cfg.iters_per_eval, value, lambda: copy.deepcopy(module.get_state()))
        module.set_state(log.best_state)  # type: ignore[arg-type]
    finally:
        if algo is not None:
            _close_data_iterators(algo)
            algo.stop()
            del algo
            gc.collect()
        if old_v2 is not None:
            ctx.use_datasource_v2 = old_v2
        shutil.rmtree(tmp, ignore_errors=True)
    policy = RLModulePolicy(module, enc, name)
    policy.info = {**log.info(), "train_seconds": time.perf_counter() - t0, "final_losses": last,
                   "config": asdict(cfg)}
    return policy
