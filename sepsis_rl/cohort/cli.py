"""``sepsis-rl cohort synth | import | describe | sanity``."""

from __future__ import annotations

import argparse
import json
import time

from sepsis_rl.cohort.validation import CohortInputError


def register(sub: argparse._SubParsersAction) -> None:
    cohort = sub.add_parser("cohort", help="synthesise, import and describe sepsis cohorts")
    csub = cohort.add_subparsers(dest="cohort_command", required=True)

    synth = csub.add_parser("synth", help="synthesise the ground-truth synthetic cohort")
    synth.add_argument("--patients", type=int, default=10000, help="number of ICU stays (default 10000)")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--out", required=True, help="cohort folder to create")
    synth.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    synth.set_defaults(func=_synth)

    imp = csub.add_parser("import", help="import a real extract (AI Clinician layout or CSV/Parquet + spec)")
    imp.add_argument("--format", required=True, choices=("ai-clinician", "generic"))
    imp.add_argument("--input", required=True, help="CSV or Parquet file")
    imp.add_argument("--spec", help="YAML spec (generic format only)")
    imp.add_argument("--out", required=True, help="cohort folder to create")
    imp.add_argument("--seed", type=int, default=0, help="seed of the patient-level split")
    imp.add_argument("--overwrite", action="store_true")
    imp.add_argument("--clip-implausible", action="store_true",
                     help="clip values outside a feature's plausible range (counted in the report) instead of failing")
    imp.set_defaults(func=_import)

    desc = csub.add_parser("describe", help="summarise a cohort folder")
    desc.add_argument("dir")
    desc.add_argument("--json", action="store_true", help="print JSON instead of a table")
    desc.set_defaults(func=_describe)

    sanity = csub.add_parser("sanity", help="the clinical sanity table: true value of constant regimens, clinician, "
                             "random and no treatment (synthetic cohorts)")
    sanity.add_argument("dir")
    sanity.add_argument("--patients", type=int, default=None, help="test patients to use (default: all)")
    sanity.add_argument("--repeats", type=int, default=1, help="rollouts per patient (default 1)")
    sanity.add_argument("--seed", type=int, default=None, help="truth seed (default: derived from the cohort seed)")
    sanity.add_argument("--json", action="store_true", help="print JSON instead of a Markdown table")
    sanity.set_defaults(func=_sanity)


def _synth(args: argparse.Namespace) -> int:
    from sepsis_rl.cohort.synth import synthesize_cohort

    from sepsis_rl.errors import check_writable

    if args.patients < 3:
        raise CohortInputError(f"--patients must be >= 3 (every split needs a patient), got {args.patients}")
    check_writable(args.out, "cohort folder")
    t0 = time.perf_counter()
    out = synthesize_cohort(args.out, args.patients, args.seed, overwrite=args.overwrite)
    print(f"wrote synthetic cohort of {args.patients} patients to {out} in {time.perf_counter() - t0:.1f}s")
    return 0


def _import(args: argparse.Namespace) -> int:
    from sepsis_rl.cohort.importers import import_cohort

    t0 = time.perf_counter()
    from sepsis_rl.cohort.store import read_spec
    from sepsis_rl.errors import check_writable

    check_writable(args.out, "cohort folder")
    out = import_cohort(args.format, args.input, args.out, args.spec, seed=args.seed, overwrite=args.overwrite,
                        clip_implausible=args.clip_implausible)
    print(f"imported {args.input} ({args.format}) into {out} in {time.perf_counter() - t0:.1f}s")
    clipped = read_spec(out).extra.get("clipped_implausible", {})
    if clipped:
        print(f"clipped {sum(clipped.values())} implausible value(s) to their feature's range: "
              + ", ".join(f"{k} {v}" for k, v in clipped.items()))
    return 0


def _describe(args: argparse.Namespace) -> int:
    from sepsis_rl.cohort.describe import describe_cohort, format_summary

    summary = describe_cohort(args.dir)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def _sanity(args: argparse.Namespace) -> int:
    from sepsis_rl.cohort.sanity import render_markdown, sanity_table
    from sepsis_rl.cohort.store import read_spec

    if args.patients is not None and args.patients < 2:
        raise CohortInputError(f"--patients must be >= 2 (confidence intervals), got {args.patients}")
    if args.repeats < 1:
        raise CohortInputError(f"--repeats must be >= 1, got {args.repeats}")
    read_spec(args.dir)  # a missing or malformed folder fails here with its one-line message
    try:
        table = sanity_table(args.dir, args.patients, args.repeats, args.seed)
    except ValueError as e:
        raise CohortInputError(str(e)) from None
    print(json.dumps(table, indent=2) if args.json else render_markdown(table))
    return 0
