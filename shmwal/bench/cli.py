"""``shmwal bench`` / ``python scripts/bench.py``: parse options, run the plan, report."""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import multiprocessing
import os
import platform
import sys
import tempfile

from . import plan, report
from .contenders import all_contenders
from .messages import MIN_SIZE
from .runner import run_plan


def _sizes(text: str) -> list[int]:
    units = {"": 1, "b": 1, "k": 1024, "kib": 1024, "m": 2**20, "mib": 2**20}
    sizes = []
    for part in text.split(","):
        part = part.strip().lower()
        digits = part.rstrip("bikm")
        unit = part[len(digits):]
        if not digits.isdigit() or unit not in units:
            raise argparse.ArgumentTypeError(f"bad size {part!r} (e.g. 100,4KiB,64KiB)")
        size = int(digits) * units[unit]
        if size < MIN_SIZE:
            raise argparse.ArgumentTypeError(f"size {size} is below the minimum of {MIN_SIZE} bytes")
        sizes.append(size)
    return sizes


def _kinds(text: str) -> list[str]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    unknown = set(kinds) - set(plan.KINDS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown scenario(s) {sorted(unknown)}; choose from {plan.KINDS}")
    return kinds


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="shmwal bench",
        description="Race shmwal against multiprocessing.Queue, faster-fifo and pyzmq, "
                    "checking that every message arrives exactly once. The peers are the "
                    "bench extra: pip install 'shmwal[bench]'.",
    )
    p.add_argument("--quick", action="store_true", help="small counts: the whole race in under a minute")
    p.add_argument("--only", choices=("all", "peers", "shmwal"), default="all",
                   help="race only the peers or only shmwal's rows (default: all)")
    p.add_argument("--contenders", default="", metavar="A,B",
                   help="only contenders whose name contains one of these substrings")
    p.add_argument("--sizes", type=_sizes, default=list(plan.DEFAULT_SIZES), metavar="100,4KiB,64KiB",
                   help="message sizes, comma-separated, in bytes or with a KiB/MiB suffix "
                        f"(default: {','.join(str(x) for x in plan.DEFAULT_SIZES)})")
    p.add_argument("--count", type=int, help="messages per run, for every size (default: by size)")
    p.add_argument("--latency-count", type=int, help="paced messages per latency run (default 2000; quick 200)")
    p.add_argument("--latency-period-us", type=int, default=1000, help="pacing of latency runs (default 1000)")
    p.add_argument("--scenarios", type=_kinds, default=list(plan.KINDS), metavar=",".join(plan.KINDS),
                   help=f"which scenarios to run, comma-separated, from {', '.join(plan.KINDS)} (default: all)")
    p.add_argument("--out", default="bench_out", help="directory for bench.json and bench.png (default: bench_out)")
    p.add_argument("--no-png", action="store_true", help="write no chart (bench.png needs matplotlib)")
    p.add_argument("--data-dir", default=tempfile.gettempdir(),
                   help="where each run makes its fresh shmwal data directory and zmq sockets "
                        "(default: the temp dir, a real disk, so fsync costs what it costs; /dev/shm: tmpfs)")
    p.add_argument("--consistency", default="strict",
                   help="shmwal delivery mode: strict | at-least-once:N (default strict, as the API)")
    p.add_argument("--repeat", type=int, help="runs per cell, median kept (default 3; quick 1): "
                                              "figures on a shared VM vary by 1.5x from run to run")
    p.add_argument("--timeout", type=float, help="seconds before a run is killed as TIMEOUT (default 120; quick 30)")
    # fork: children start in milliseconds and inherit the queues; spawn/forkserver also work
    # (every channel pickles) and are what a fork-unsafe library would need.
    p.add_argument("--start-method", choices=("fork", "spawn", "forkserver"), default="fork",
                   help="how the producer and consumer processes start (default: fork)")
    return p


def select_contenders(args) -> list:
    chosen = all_contenders(args.consistency)
    if args.only != "all":
        chosen = [c for c in chosen if (c.family == "peer") == (args.only == "peers")]
    if args.contenders:
        wanted = [w.strip() for w in args.contenders.split(",") if w.strip()]
        chosen = [c for c in chosen if any(w in c.name for w in wanted)]
    return chosen


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def metadata(args, argv, load_before) -> dict:
    return {
        # Other processes on a 2-CPU machine skew every figure, latency tails first.
        "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": list(argv),
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "start_method": args.start_method,
        "repeat": args.repeat if args.repeat is not None else (1 if args.quick else 3),
        "data_dir": args.data_dir,
        "shmwal_consistency": args.consistency,
        "versions": {d: _version(d) for d in ("shmwal", "faster-fifo", "pyzmq", "numpy", "matplotlib")},
        "clock": "CLOCK_MONOTONIC (time.monotonic_ns), shared by all processes",
        "mb": "10**6 bytes of payload",
    }


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser().parse_args(argv)
    budget = plan.Budget(quick=args.quick, count=args.count, latency_count=args.latency_count,
                         latency_period_us=args.latency_period_us)
    specs = plan.build(args.scenarios, args.sizes, budget)
    contenders = select_contenders(args)
    if not contenders:
        print("no contender selected", file=sys.stderr)
        return 2
    missing = {c.name: c.unavailable() for c in contenders}
    missing = {name: why for name, why in missing.items() if why}
    if missing:
        # Said first, and in the report: a race whose peers were all skipped is no race.
        print("shmwal bench: these contenders cannot run here and are skipped:", file=sys.stderr)
        for name, why in missing.items():
            print(f"  {name}: {why}", file=sys.stderr)
        if len(missing) == len(contenders):
            return 1
    timeout = args.timeout if args.timeout is not None else (30.0 if args.quick else 120.0)
    ctx = multiprocessing.get_context(args.start_method)
    print(f"shmwal bench: {len(specs)} scenarios x {len(contenders)} contenders, "
          f"start method {args.start_method}, data in {args.data_dir}", file=sys.stderr, flush=True)
    load_before = os.getloadavg()[0]
    repeat = args.repeat if args.repeat is not None else (1 if args.quick else 3)
    rows = run_plan(specs, contenders, ctx, args.data_dir, timeout, repeat)
    meta = metadata(args, argv, load_before)
    print(report.finish(rows, meta, args.out, png=not args.no_png))
    load = meta["load_average_1min"]
    print(f"load average (1 min) before/after: {load['before']:.2f} / {load['after']:.2f} "
          f"on {meta['cpus']} CPUs (anything else running skews the figures)")
    bad = [r for r in rows if r.status in report.BAD]
    if bad:
        print(f"\n{len(bad)} run(s) not ok: {sorted({r.status for r in bad})}", file=sys.stderr)
        return 1
    return 0
