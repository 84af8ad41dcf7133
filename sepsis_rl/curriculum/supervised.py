"""Stages 1 and 2 share one loop: masked cross-entropy on the learner group, with held-out NLL before and after."""

from __future__ import annotations

import random
import time
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from sepsis_rl.curriculum.config import ClusterSetup
from sepsis_rl.curriculum.run_dir import RunDir
from sepsis_rl.learner.batch import Sample
from sepsis_rl.learner.config import LearnerConfig
from sepsis_rl.learner.group import LearnerGroup

STEPS_PER_CALL = 4  # optimizer steps per call into the learner group: the progress bar's granularity


def learner_config(cluster: ClusterSetup, model_path: str, algorithm: str, lr: float, micro_batch: int,
                   grad_accum: int, seed: int, **extra: Any) -> LearnerConfig:
    return LearnerConfig(
        model_path=model_path, algorithm=algorithm, num_workers=cluster.learner_workers, zero_stage=cluster.zero_stage,
        lr=lr, micro_batch=micro_batch, grad_accum=grad_accum, bf16=cluster.bf16, cpus_per_worker=cluster.learner_cpus,
        gpus_per_worker=cluster.learner_gpus, placement=cluster.learner_placement, threads=cluster.threads, seed=seed,
        gradient_checkpointing=cluster.gradient_checkpointing, **extra,
    )


def heldout_nll(group: LearnerGroup, samples: list[Sample]) -> float:
    """Mean negative log-likelihood per target token (temperature 1)."""
    lps = [lp for lp, _ in group.evaluate(samples)]
    tokens = np.concatenate([np.asarray(lp) for lp in lps if lp]) if lps else np.zeros(1)
    return float(-tokens.mean())


def train_supervised(group: LearnerGroup, train: list[Sample], heldout: list[Sample], epochs: int, seed: int,
                     run: RunDir, stage: str) -> dict[str, Any]:
    cfg = group.cfg
    per_call = cfg.micro_batch * cfg.steps_per_update * STEPS_PER_CALL
    nll_before = heldout_nll(group, heldout) if heldout else float("nan")
    t0 = time.perf_counter()
    losses: list[float] = []
    tokens = 0
    rng = random.Random(seed)
    steps_total = epochs * -(-len(train) // (cfg.micro_batch * cfg.steps_per_update))
    with tqdm(total=steps_total, desc=f"{stage}: training", unit="step") as bar:
        for epoch in range(epochs):
            order = train[:]
            rng.shuffle(order)
            for lo in range(0, len(order), per_call):
                m = group.train(order[lo:lo + per_call], "sft")
                losses += m["losses"]
                tokens += m["tokens"]
                bar.update(len(m["losses"]))
                bar.set_postfix(loss=f"{m['losses'][-1]:.3f}")
                run.log(stage, epoch=epoch, step=len(losses), loss=m["losses"][-1], tokens_per_s=m["tokens_per_s"])
    train_s = time.perf_counter() - t0
    nll_after = heldout_nll(group, heldout) if heldout else float("nan")
    k = max(1, len(losses) // 10)
    return {
        "samples": len(train), "steps": len(losses), "loss_start": float(np.mean(losses[:k])),
        "loss_end": float(np.mean(losses[-k:])), "loss_curve": losses, "heldout_nll_start": nll_before,
        "heldout_nll_end": nll_after, "trained_tokens": tokens, "tokens_per_s": tokens / max(train_s, 1e-9),
    }
