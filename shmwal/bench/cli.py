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
from .contenders import all_contenders, nats_contenders
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
    from ..cli.common import Parser   # a bad option: one line, exit 2, as every shmwal command
    p = Parser(
        prog="shmwal bench",
        description="Race shmwal against multiprocessing.Queue, faster-fifo, pyzmq and iceoryx2, "
                    "checking that every message arrives exactly once. The peers are the "
                    "bench extra: pip install 'shmwal[bench]'.",
    )
    p.add_argument("--quick", action="store_true", help="small counts: the whole race in under a minute")
    p.add_argument("--only", choices=("all", "peers", "shmwal"), default="all",
                   help="race only the peers or only shmwal's rows (default: all)")
    p.add_argument("--nats", action="store_true",
                   help="add the NATS JetStream rows: shmwal nats://, plain nats-py with the same acks, "
                        "and shmwal bridge (a local 3-node cluster per run; pip install 'shmwal[nats]' "
                        "and apt-get install nats-server)")
    p.add_argument("--contenders", default="", metavar="A,B",
                   help="only contenders whose name contains one of these substrings, or is exactly =NAME")
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
    p.add_argument("--consistency", default="strict", type=_consistency,
                   help="shmwal delivery mode: strict | at-least-once:N (default strict, as the API)")
    p.add_argument("--repeat", type=int, help="runs per cell, median kept (default 3; quick 1): "
                                              "figures on a shared VM vary by 1.5x from run to run")
    p.add_argument("--timeout", type=float, help="seconds before a run is killed as TIMEOUT (default 120; quick 30)")
    # fork: children start in milliseconds and inherit the queues; spawn/forkserver also work
    # (every channel pickles) and are what a fork-unsafe library would need.
    p.add_argument("--start-method", choices=("fork", "spawn", "forkserver"), default="fork",
                   help="how the producer and consumer processes start (default: fork)")
    p.add_argument("--read-batch-bytes", type=_size, metavar="SIZE",
                   help="shmwal's batch_read budget (max_bytes) per call, e.g. 64MiB "
                        "(default: 1 MiB, at most 1,000 messages)")
    p.add_argument("--retention-bytes", type=_byte_count, metavar="SIZE",
                   help="the shmwal brokers' Retention(bytes=...): consumed bytes kept for replay, e.g. 0 "
                        "(blocks reused as soon as read) (default: the broker's, 16 MiB)")
    return p


def _byte_count(text: str) -> int:
    """A size that may be 0 (``--retention-bytes 0``)."""
    if text.strip() == "0":
        return 0
    return _size(text)


def _size(text: str) -> int:
    (size,) = _sizes(text)
    return size


def _consistency(text: str) -> str:
    """--consistency, checked as the broker's command line checks it (kept as text: the
    contenders parse it in each run's processes)."""
    from ..server.main import consistency_arg

    consistency_arg(text)
    return text


def select_contenders(args) -> list:
    """``--contenders``: names containing one of the items, or exactly ``=name``."""
    chosen = all_contenders(args.consistency, args.read_batch_bytes, args.retention_bytes) + \
        (nats_contenders() if args.nats else [])
    if args.only != "all":
        chosen = [c for c in chosen if (c.family == "peer") == (args.only == "peers")]
    if args.contenders:
        wanted = [w.strip() for w in args.contenders.split(",") if w.strip()]
        chosen = [c for c in chosen if any(c.name == w[1:] if w.startswith("=") else w in c.name for w in wanted)]
    return chosen


def _size_arg(size: int) -> str:
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if size >= scale and size % scale == 0:
            return f"{size // scale}{unit}"
    return str(size)


def add_commands(rows, args, repeat: int) -> None:
    """Each row's ``command``: the bench run that measures its cell again, with the same
    counts and options, for this row's contender and every peer of the cell (its ratio's
    denominator), named exactly."""
    cells: dict[tuple, list[str]] = {}
    for r in rows:
        if r.status != "n/a":
            cells.setdefault((r.kind, r.size), [])
            if r.family == "peer" and r.contender not in cells[r.kind, r.size]:
                cells[r.kind, r.size].append(r.contender)
    common = [f"--repeat {repeat}", f"--consistency {args.consistency}", f"--start-method {args.start_method}",
              f"--data-dir {args.data_dir}"]
    if args.quick:
        common.insert(0, "--quick")
    if args.nats:
        common.insert(0, "--nats")   # else the NATS rows named in --contenders do not run
    if args.count is not None:
        common.append(f"--count {args.count}")
    if args.latency_count is not None:
        common.append(f"--latency-count {args.latency_count}")
    if args.latency_period_us != 1000:
        common.append(f"--latency-period-us {args.latency_period_us}")
    if args.read_batch_bytes is not None:
        common.append(f"--read-batch-bytes {_size_arg(args.read_batch_bytes)}")
    if args.retention_bytes is not None:
        common.append(f"--retention-bytes {_size_arg(args.retention_bytes)}")
    for r in rows:
        if r.status == "n/a":
            continue
        names = list(dict.fromkeys(cells[r.kind, r.size] + [r.contender]))
        r.command = (f"python -m shmwal bench --scenarios {r.kind} --sizes {_size_arg(r.size)} "
                     f"--contenders \"{','.join('=' + n for n in names)}\" {' '.join(common)}")


def _git_commit() -> str | None:
    """The commit of the shmwal source that ran (with '+dirty' if it had local changes), if it is a checkout."""
    import subprocess

    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10).stdout.strip()
        if not commit:
            return None
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no", "--", "."],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


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
        "versions": {d: _version(d) for d in ("shmwal", "faster-fifo", "pyzmq", "iceoryx2", "numpy", "matplotlib")},
        "shmwal_commit": _git_commit(),
        "read_batch_bytes": args.read_batch_bytes,
        "retention_bytes": args.retention_bytes,
        "command": "python -m shmwal bench " + " ".join(argv),
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
        every = [c.name for c in all_contenders() + nats_contenders()]
        print(f"shmwal bench: --contenders {args.contenders!r} (with --only {args.only}) selects no contender; "
              f"the names: {', '.join(every)}", file=sys.stderr)
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
    add_commands(rows, args, repeat)
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
