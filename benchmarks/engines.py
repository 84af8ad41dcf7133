"""Engine benchmark: generated tokens/s of the transformers engine vs the vLLM engine. Prints JSON.

    python benchmarks/engines.py [--model default|DIR] [--batches 1 8] [--new-tokens 64] [--repeats 3]

Same prompts (chat-formatted ICU observations of ~200 tokens), same sampling (temperature 1, pure
temperature sampling, fixed seed), fp32, through the engine contract (``generate``). Each engine is
warmed up at every batch size first; the figure is the median over ``--repeats`` runs of tokens
produced / wall time (rows may stop early at EOS: the token counts are reported). The engines run one
after the other, so they never compete for the cores. vLLM needs ``bash .ci/vllm_env`` on CPU.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import time


def prompts(tokenizer, n: int) -> list[list[int]]:
    out = []
    for i in range(n):
        obs = (
            f"ICU sepsis patient {i + 1}, hour {4 * (i + 2)} of the stay. Vitals: heart rate {96 + 3 * i} /min, "
            f"mean arterial pressure {58 + i} mmHg, systolic {88 + 2 * i} mmHg, respiratory rate {24 + i % 5} /min, "
            f"SpO2 {93 - i % 4} %, temperature {38.4 + 0.1 * i:.1f} C. Labs: lactate {4.2 - 0.2 * i:.1f} mmol/L, "
            f"creatinine {1.8 + 0.1 * i:.1f} mg/dL, bilirubin {1.2 + 0.05 * i:.2f} mg/dL, platelets {140 - 5 * i} x10^9/L, "
            f"white cells {15.5 + 0.3 * i:.1f} x10^9/L, pH 7.{31 + i % 6}, PaO2/FiO2 {250 - 10 * i}. "
            f"Fluid balance +{1200 + 150 * i} mL over 24 h, urine output {25 + 5 * i} mL/h, SOFA {8 + i % 4}. "
            f"Current norepinephrine {0.05 * (i % 4):.2f} mcg/kg/min. Trend over the last 8 hours: MAP falling, "
            "lactate not clearing. Propose three candidate fluid and vasopressor doses, explain the expected "
            "haemodynamic response of each and the risks of fluid overload, then prescribe one."
        )
        ids = tokenizer.apply_chat_template([{"role": "user", "content": obs}], add_generation_prompt=True,
                                            tokenize=True, return_dict=False)
        out.append(list(ids))
    return out


def bench(engine, all_prompts: list[list[int]], batches: list[int], new_tokens: int, repeats: int) -> dict:
    from sepsis_rl.rollout.engine import SamplingParams

    results = {}
    for bs in batches:
        batch = all_prompts[:bs]
        engine.generate(batch, SamplingParams(max_new_tokens=8, temperature=1.0, seed=0))  # warm-up
        runs = []
        for r in range(repeats):
            t0 = time.perf_counter()
            gens = engine.generate(batch, SamplingParams(max_new_tokens=new_tokens, temperature=1.0, seed=r))
            dt = time.perf_counter() - t0
            runs.append((sum(len(g.token_ids) for g in gens), dt))
        rates = [n / dt for n, dt in runs]
        results[str(bs)] = {
            "tokens_per_s": round(statistics.median(rates), 1),
            "tokens_per_s_runs": [round(x, 1) for x in rates],
            "tokens_per_run": [n for n, _ in runs],
            "seconds_per_run": [round(dt, 2) for _, dt in runs],
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of the transformers engine")
    parser.add_argument("--engines", nargs="+", default=["transformers", "vllm"], choices=["transformers", "vllm"])
    parser.add_argument("--vllm-in-process", action="store_true", help="vLLM engine core in this process")
    parser.add_argument("--vllm-compile", action="store_true", help="let vLLM compile (enforce_eager=False)")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")  # stdout is for the JSON

    import torch

    from sepsis_rl.models import resolve_base_model

    model = resolve_base_model(args.model)
    torch.set_num_threads(args.threads)
    report: dict = {"model": model, "dtype": "float32", "new_tokens": args.new_tokens, "repeats": args.repeats,
                    "cpus": os.cpu_count(), "machine": platform.machine(), "engines": {}}
    for kind in args.engines:
        t0 = time.perf_counter()
        if kind == "transformers":
            from sepsis_rl.rollout.transformers_engine import TransformersEngine

            engine = TransformersEngine(model, dtype=torch.float32)
            info = {"threads": args.threads}
        else:
            from sepsis_rl.rollout.vllm_engine import VLLMEngine

            engine = VLLMEngine(model, dtype="float32", kv_cache_memory_bytes=1 << 30, max_model_len=2048,
                                in_process=True if args.vllm_in_process else None,
                                enforce_eager=not args.vllm_compile)
            import vllm

            info = {"version": vllm.__version__, "in_process": engine.in_process, "enforce_eager": not args.vllm_compile,
                    "reserved_cpus": os.environ.get("VLLM_CPU_NUM_OF_RESERVED_CPU")}
        startup = time.perf_counter() - t0
        ps = prompts(engine.tokenizer, max(args.batches))
        report["prompt_tokens"] = [len(p) for p in ps]
        report["engines"][kind] = {"startup_s": round(startup, 1), **info,
                                   "batch": bench(engine, ps, args.batches, args.new_tokens, args.repeats)}
        if hasattr(engine, "close"):
            engine.close()
        del engine
        gc.collect()
    if {"transformers", "vllm"} <= set(report["engines"]):
        report["vllm_speedup"] = {
            bs: round(report["engines"]["vllm"]["batch"][bs]["tokens_per_s"]
                      / report["engines"]["transformers"]["batch"][bs]["tokens_per_s"], 2)
            for bs in report["engines"]["vllm"]["batch"]
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":  # vLLM starts processes: keep the guard
    main()
