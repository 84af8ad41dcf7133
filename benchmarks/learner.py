"""Learner benchmark: trained tokens/s with 1 and 2 DeepSpeed ranks; one GRPO iteration's time split. Prints JSON.

    python benchmarks/learner.py [--model default|tiny|DIR] [--samples 16] [--tokens 512] [--run RUN_DIR]

Part 1 trains GRPO steps on fixed synthetic segments (same samples, same order) with 1 rank (2 threads)
and with 2 ranks (1 thread each) on this machine, after one warm-up pass each. Part 2 (with ``--run``, a
run directory whose ``bc`` stage is done) plays two GRPO iterations of that run's configuration and
reports each iteration's rollout (generate / simulate), score, update and sync seconds.
"""

from __future__ import annotations

import argparse
import json
import tempfile

import numpy as np
import ray

from sepsis_rl.learner.batch import Sample
from sepsis_rl.learner.config import LearnerConfig
from sepsis_rl.learner.group import LearnerGroup
from sepsis_rl.models import build_tiny_model, resolve_base_model


def samples(n: int, length: int, prompt: int, seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    return [Sample(rng.integers(0, 20000, length).tolist(), [0] * prompt + [1] * (length - prompt),
                   [0.0] * prompt + (-rng.random(length - prompt) - 1).tolist(), advantage=float(rng.normal()))
            for _ in range(n)]


def tokens_per_s(model: str, workers: int, threads: int, data: list[Sample], zero: int) -> dict[str, float]:
    cfg = LearnerConfig(model_path=model, algorithm="grpo", num_workers=workers, zero_stage=zero, micro_batch=2,
                        grad_accum=max(1, 2 // workers), cpus_per_worker=1.0, threads=threads, lr=1e-6)
    group = LearnerGroup(cfg)
    try:
        group.train(data[: 2 * cfg.steps_per_update], "grpo")  # warm-up: allocator, optimizer state
        m = group.train(data, "grpo")
        return {"workers": workers, "threads_per_worker": threads, "tokens": m["tokens"], "seconds": m["wall_s"],
                "tokens_per_s": m["tokens_per_s"], "tokens_per_s_per_worker": m["tokens_per_s"] / workers}
    finally:
        group.shutdown()


def iteration_split(run_dir: str, iterations: int) -> list[dict]:
    import yaml

    from sepsis_rl.curriculum.config import PipelineConfig, _build
    from sepsis_rl.curriculum.rl_stage import RLInputs, RLStage
    from sepsis_rl.curriculum.run_dir import RunDir

    run = RunDir(run_dir)
    cfg: PipelineConfig = _build(PipelineConfig, yaml.safe_load(run.path("config.yaml").read_text()), "", run_dir)
    scratch = tempfile.mkdtemp(prefix="bench-rl-")
    stage = RLStage(cfg, RunDir(scratch), RLInputs(run.output("bc"), run.output("cohort"), run.output("world_model"),
                                                    f"{scratch}/model"))
    try:
        return [{"iteration": it + 1, **stage.iterate(it)["time"]} for it in range(iterations)]
    finally:
        stage.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help="default, tiny or a model directory")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=512, help="tokens per sample (a PSR decision is ~550)")
    ap.add_argument("--zero", type=int, default=2)
    ap.add_argument("--run", help="a pipeline run directory with the bc stage done: adds the GRPO iteration split")
    ap.add_argument("--iterations", type=int, default=2)
    args = ap.parse_args()
    model = resolve_base_model("default")
    if args.model == "tiny":
        model = str(build_tiny_model(model, tempfile.mkdtemp(prefix="tiny-")))
    elif args.model != "default":
        model = resolve_base_model(args.model)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    data = samples(args.samples, args.tokens, args.tokens // 2)
    one = tokens_per_s(model, 1, 2, data, args.zero)
    two = tokens_per_s(model, 2, 1, data, args.zero)
    out = {"model": model, "zero_stage": args.zero, "samples": args.samples, "tokens_per_sample": args.tokens,
           "one_worker": one, "two_workers": two, "scaling_2_vs_1": two["tokens_per_s"] / one["tokens_per_s"]}
    if args.run:
        out["grpo_iterations"] = iteration_split(args.run, args.iterations)
    ray.shutdown()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
