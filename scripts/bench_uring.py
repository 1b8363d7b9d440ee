#!/usr/bin/env python3
"""batch_read of a large backlog: io="uring" against io="mmap" and io="auto", warm and cold.

    python scripts/bench_uring.py [--mb 256] [--dir /var/tmp] [--out bench_out/uring] [--quick]

For each entry size (256 B, 4 KiB, 64 KiB) a fresh broker in a fresh data
directory on a real disk (``--dir``; not /dev/shm: tmpfs is always resident)
gets a backlog of ``--mb`` MiB of payload.  Then every pass reads the whole
backlog with ``batch_read(topic, max_bytes=1 MiB)`` through its own consumer
group (primed with one one-entry read, so the group's read hint is valid and
io_uring can be used from the first timed call), in a fresh client:

* ``uring`` / ``mmap`` / ``auto``   batch_read with that ``io=``
* ``ring-raw``    the byte ranges the ``uring`` pass planned, read again with
                  ``Ring.read_ranges``, one call per batch, no decoding
* ``preadv-raw``  the same ranges with one ``os.preadv`` per range

The raw passes show what the I/O alone costs; the gap to ``uring`` is
decoding, checksums and building Entry objects in Python.

Page cache:
* ``warm``  every block file read right before the pass (resident >= 99 %, checked).
* ``cold``  broker stopped (it keeps block files mapped, and mapped pages are not
            evicted), ``os.sync()``, ``fsync`` + ``posix_fadvise(DONTNEED)`` on every
            block file, residency checked with ``shmwal.uring.resident_fraction``
            (printed), broker started again (recovery reads the tail block only).
Kernel readahead is left as configured (printed: it matters a lot for cold
sequential reads).

Reports payload MB/s and entries/s per cell, uring/mmap, what "auto" got, and
the share of batch_read calls that went through the ring (``ring%``).  Writes
``results.json``, ``results.md`` and ``bench_uring.png`` to ``--out``.  Single
This VM's speed (CPU and disk) wanders by 2x from one second to the next:
each cell runs ``--repeat`` times (default 7; rounds alternate the order of
the passes) and reports the median; "uring/mmap" is the median of the
per-round ratios (each round's uring and mmap passes ran back to back), with
their min..max.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import shmwal  # noqa: E402
from shmwal.uring import ReadArena, Ring, probe  # noqa: E402
from shmwal.uring.residency import evict_files as evict  # noqa: E402
from shmwal.uring.residency import files_resident_fraction as resident_share  # noqa: E402
from shmwal.uring.fetch import UringFetcher  # noqa: E402

MIB = 1 << 20
TOPIC = "backlog"
READ_MODES = ("uring", "mmap", "auto")
RAW = ("ring-raw", "preadv-raw")
ALL = READ_MODES + RAW

# ----------------------------------------------------------------------------- what the ring did

COUNTS: collections.Counter = collections.Counter()
PLANS: list | None = None        # while recording: [(total, [(file_path, position, length, at)])]
_original_read = UringFetcher.read


def _counting_read(self, files, plan, total):
    COUNTS["reads"] += 1
    if PLANS is not None:
        PLANS.append((total, [(files.path(file_id), pos, n, at) for _b, file_id, pos, n, at in plan]))
    return _original_read(self, files, plan, total)


UringFetcher.read = _counting_read


# ----------------------------------------------------------------------------- page cache

def block_files(root: str) -> list[str]:
    d = os.path.join(root, "blocks")
    return sorted(os.path.join(d, n) for n in os.listdir(d) if n.endswith(".blk"))


def warm(paths) -> float:
    chunk = 8 * MIB
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue   # the broker's prepared spare file, removed at its stop
        try:
            size = os.fstat(fd).st_size
            for off in range(0, size, chunk):
                os.pread(fd, chunk, off)
        finally:
            os.close(fd)
    return resident_share(paths)


def readahead_kb(path: str) -> str:
    """read_ahead_kb of the block device under ``path`` (best effort)."""
    try:
        dev = os.stat(path).st_dev
        sys_dev = f"/sys/dev/block/{os.major(dev)}:{os.minor(dev)}"
        for candidate in (sys_dev + "/queue/read_ahead_kb", sys_dev + "/../queue/read_ahead_kb"):
            if os.path.exists(candidate):
                return open(candidate).read().strip()
    except OSError:
        pass
    return "?"


# ----------------------------------------------------------------------------- one entry size

class Backlog:
    """A broker in a fresh directory with ``n`` entries of ``size`` bytes in one topic."""

    def __init__(self, base: str, size: int, mb: int, block_mb: int, blocks_per_file: int):
        self.size = size
        self.dir = tempfile.mkdtemp(prefix=f"e{size}-", dir=base)
        self.options = dict(block_size=block_mb * MIB, blocks_per_file=blocks_per_file,
                            fsync=shmwal.NoFsync())
        self.broker = shmwal.Broker(self.dir, **self.options).start()
        self.n = max(2, mb * MIB // size)
        self.groups: list[str] = []

    def write(self) -> float:
        # Batches of about 16 KiB (one-entry appends for entries of 16 KiB and up).
        per_call = max(1, min(2000, (16 << 10) // self.size))
        filler = os.urandom(self.size)[8:]
        t = time.perf_counter()
        with shmwal.connect(self.dir, io="mmap") as client:
            for start in range(0, self.n, per_call):
                stop = min(self.n, start + per_call)
                if per_call == 1:
                    client.append(TOPIC, start.to_bytes(8, "little") + filler)
                else:
                    client.batch_append(TOPIC, [i.to_bytes(8, "little") + filler for i in range(start, stop)])
            # Every pass gets its own group, primed with a one-entry read (its read hint is set),
            # and "anchor" never moves on, so no block is reclaimed under the passes.
            for group in self.groups + ["anchor"]:
                assert len(client.batch_read(TOPIC, 0, group=group)) == 1
        return time.perf_counter() - t

    @property
    def files(self) -> list[str]:
        return block_files(self.broker.root)

    def restart(self) -> None:
        self.broker.stop()
        self.broker = shmwal.Broker(self.dir, **self.options).start()

    def close(self) -> None:
        try:
            self.broker.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def read_pass(backlog: Backlog, mode: str, group: str, max_bytes: int, record: bool) -> dict:
    global PLANS
    COUNTS.clear()
    PLANS = [] if record else None
    size = backlog.size
    expect = 1                                         # offset 0 went to the priming read
    calls = 0
    with shmwal.connect(backlog.dir, io=mode) as client:
        read = client.batch_read
        t = time.perf_counter()
        while True:
            entries = read(TOPIC, max_bytes, group=group)
            if not entries:
                break
            calls += 1
            first, last = entries[0], entries[-1]
            if first.offset != expect or int.from_bytes(first.data[:8], "little") != first.offset \
                    or int.from_bytes(last.data[:8], "little") != last.offset or len(last.data) != size:
                raise AssertionError(f"{mode}: wrong entries at {first.offset}..{last.offset}")
            expect = last.offset + 1
        elapsed = time.perf_counter() - t
    if expect != backlog.n:
        raise AssertionError(f"{mode}: read {expect} of {backlog.n} entries")
    plans, PLANS = PLANS, None
    entries = backlog.n - 1
    return {"seconds": elapsed, "entries": entries, "bytes": entries * size, "calls": calls,
            "ring_calls": COUNTS["reads"], "plans": plans}


def raw_pass(kind: str, plans: list, entries: int, size: int) -> dict:
    fds: dict[str, int] = {}
    planned = 0
    try:
        for _total, plan in plans:
            for path, _pos, n, _at in plan:
                if path not in fds:
                    fds[path] = os.open(path, os.O_RDONLY)
                planned += n
        biggest = max(total for total, _ in plans)
        with Ring(256) as ring, ReadArena(biggest) as arena:
            arena.reserve(biggest)
            view = arena.view(biggest)
            t = time.perf_counter()
            if kind == "ring-raw":
                for _total, plan in plans:
                    ring.read_ranges([(fds[path], pos, n, at) for path, pos, n, at in plan], arena,
                                     allow_short=True)
            else:
                for _total, plan in plans:
                    for path, pos, n, at in plan:
                        got = os.preadv(fds[path], [view[at:at + n]], pos)
                        if got != n:
                            raise OSError(f"short preadv: {got} of {n}")
            elapsed = time.perf_counter() - t
            view.release()
    finally:
        for fd in fds.values():
            os.close(fd)
    return {"seconds": elapsed, "entries": entries, "bytes": entries * size, "calls": len(plans),
            "ring_calls": len(plans) if kind == "ring-raw" else 0, "planned_bytes": planned}


def run_size(args, base: str, size: int, log) -> list[dict]:
    backlog = Backlog(base, size, args.mb, args.block_mb, args.blocks_per_file)
    cells = []
    try:
        for cache in ("warm", "cold"):
            for rep in range(args.repeat):
                backlog.groups += [f"{cache}-{mode}-{rep}" for mode in READ_MODES]
        wrote = backlog.write()
        files = backlog.files
        log(f"## {size} B entries: {backlog.n:,} entries ({backlog.n * size / MIB:.0f} MiB payload) "
            f"in {len(files)} block files, written in {wrote:.1f} s")
        results: dict[tuple, list] = collections.defaultdict(list)
        plans = None
        for cache in ("warm", "cold"):
            for rep in range(args.repeat):
                # The first uring pass records the plans the raw passes replay; later rounds
                # run in the opposite order, so that drift of this VM's speed evens out.
                order = READ_MODES + RAW if rep % 2 == 0 else RAW[::-1] + READ_MODES[::-1]
                for mode in order:
                    if mode in RAW and plans is None:
                        continue
                    if cache == "warm":
                        resident_before = warm(files)
                        if resident_before < 0.99:
                            log(f"   warning: only {resident_before:.1%} resident after warming")
                    else:
                        backlog.broker.stop()      # its mappings pin the pages
                        evict(files)
                        resident_before = resident_share(files)
                        backlog.restart()
                        time.sleep(0.2)            # let the new broker settle (recovery, threads)
                        resident_start = resident_share(files)
                        if resident_before > 0.02:
                            log(f"   warning: {resident_before:.1%} still resident after DONTNEED")
                    if mode in RAW:
                        r = raw_pass(mode, plans, backlog.n - 1, size)
                    else:
                        r = read_pass(backlog, mode, f"{cache}-{mode}-{rep}", args.max_bytes,
                                      record=(mode == "uring" and plans is None))
                        recorded = r.pop("plans")
                        if recorded is not None:
                            plans = recorded
                    r["resident_before"] = resident_before
                    if cache == "cold":
                        r["resident_at_start"] = resident_start
                    results[cache, mode].append(r)
                    log(f"   {cache:4} {mode:10} {r['bytes'] / r['seconds'] / 1e6:9.1f} MB/s "
                        f"{r['entries'] / r['seconds']:12,.0f} entries/s  ring {r['ring_calls']}/{r['calls']}"
                        f"  resident before {resident_before:.1%}")
        for (cache, mode), runs in results.items():
            mid = statistics.median(r["seconds"] for r in runs)
            first = runs[0]
            cells.append({"size": size, "cache": cache, "mode": mode,
                          "entries": first["entries"], "bytes": first["bytes"], "calls": first["calls"],
                          "ring_calls": statistics.median(r["ring_calls"] for r in runs),
                          "mb_s": first["bytes"] / mid / 1e6, "entries_s": first["entries"] / mid,
                          "runs_mb_s": [r["bytes"] / r["seconds"] / 1e6 for r in runs],
                          "resident_before": max(r["resident_before"] for r in runs),
                          **({"resident_at_start": max(r["resident_at_start"] for r in runs)}
                             if cache == "cold" else {}),
                          **({"planned_bytes": first["planned_bytes"]} if "planned_bytes" in first else {})})
    finally:
        backlog.close()
    return cells


# ----------------------------------------------------------------------------- report

def table(cells: list[dict]) -> str:
    by = {(c["size"], c["cache"], c["mode"]): c for c in cells}
    sizes = sorted({c["size"] for c in cells})

    def ratio(u, m):
        rs = [a / b for a, b in zip(u["runs_mb_s"], m["runs_mb_s"])]
        return f"{statistics.median(rs):.2f}x ({min(rs):.2f}..{max(rs):.2f})"

    lines = [
        "| entry | cache | uring MB/s | mmap MB/s | auto MB/s | uring/mmap | auto/best | "
        "uring entries/s | mmap entries/s | auto entries/s | auto ring% | ring-raw MB/s | preadv-raw MB/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for size in sizes:
        for cache in ("warm", "cold"):
            u, m, a = (by.get((size, cache, k)) for k in READ_MODES)
            if not (u and m and a):
                continue
            rr, pr = by.get((size, cache, "ring-raw")), by.get((size, cache, "preadv-raw"))
            best = max(u["mb_s"], m["mb_s"])
            ring_share = a["ring_calls"] / a["calls"] if a["calls"] else 0.0
            lines.append(
                f"| {_size(size)} | {cache} | {u['mb_s']:.0f} | {m['mb_s']:.0f} | {a['mb_s']:.0f} | "
                f"{ratio(u, m)} | {a['mb_s'] / best:.2f} | {u['entries_s']:,.0f} | "
                f"{m['entries_s']:,.0f} | {a['entries_s']:,.0f} | {ring_share:.0%} | "
                f"{rr['mb_s'] if rr else float('nan'):.0f} | {pr['mb_s'] if pr else float('nan'):.0f} |")
    return "\n".join(lines)


def _size(n: int) -> str:
    return f"{n // 1024} KiB" if n >= 1024 else f"{n} B"


def chart(cells: list[dict], path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({c["size"] for c in cells})
    by = {(c["size"], c["cache"], c["mode"]): c for c in cells}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    width = 0.16
    colors = {"uring": "#d62728", "mmap": "#1f77b4", "auto": "#2ca02c",
              "ring-raw": "#ff9896", "preadv-raw": "#aec7e8"}
    for ax, cache in zip(axes, ("warm", "cold")):
        for k, mode in enumerate(ALL):
            xs, ys = [], []
            for i, size in enumerate(sizes):
                c = by.get((size, cache, mode))
                if c:
                    xs.append(i + (k - 2) * width)
                    ys.append(c["mb_s"])
            bars = ax.bar(xs, ys, width, label=mode, color=colors[mode],
                          hatch="//" if mode in RAW else None, edgecolor="white")
            if mode in READ_MODES:
                ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=1)
        ax.set_xticks(range(len(sizes)), [_size(s) for s in sizes])
        ax.set_title(f"page cache {cache}")
        ax.set_xlabel("entry size")
        ax.set_yscale("log")
        ax.grid(axis="y", alpha=0.3, which="both")
    axes[0].set_ylabel("payload MB/s (log)")
    axes[1].legend(fontsize=8, loc="upper left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------- main

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, default=256, help="payload MiB per entry size (default 256)")
    ap.add_argument("--dir", default="/var/tmp", help="a directory on a real disk (default /var/tmp)")
    ap.add_argument("--out", default="bench_out/uring", help="where results and chart go")
    ap.add_argument("--sizes", default="256,4096,65536")
    ap.add_argument("--max-bytes", type=int, default=MIB, help="batch_read max_bytes (default 1 MiB)")
    ap.add_argument("--block-mb", type=int, default=10, help="broker block size, MiB (default 10)")
    ap.add_argument("--blocks-per-file", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=7, help="runs per cell, median reported (default 7)")
    ap.add_argument("--quick", action="store_true", help="32 MiB per size (well under 40 s)")
    args = ap.parse_args()
    if args.quick:
        args.mb = min(args.mb, 32)
        args.repeat = min(args.repeat, 3)
    reason = probe()
    if reason:
        sys.exit(f"io_uring unavailable here: {reason}")
    if os.environ.get("SHMWAL_DISABLE_IO_URING"):
        sys.exit("SHMWAL_DISABLE_IO_URING is set: io='auto' would mean mmap; unset it")
    os.makedirs(args.dir, exist_ok=True)
    fs = os.statvfs(args.dir)
    with open("/proc/mounts") as f:
        mounts = [line.split() for line in f]
    target = os.path.realpath(args.dir)
    fstype = max((m for m in mounts if target == m[1] or target.startswith(m[1].rstrip("/") + "/")),
                 key=lambda m: len(m[1]))[2]
    if fstype in ("tmpfs", "ramfs"):
        sys.exit(f"{args.dir} is on {fstype}: always resident, nothing to evict; pick a disk directory")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base = tempfile.mkdtemp(prefix="shmwal-bench-uring-", dir=args.dir)
    lines: list[str] = []

    def log(msg: str) -> None:
        print(msg, flush=True)
        lines.append(msg)

    env = {"kernel": platform.release(), "cpus": os.cpu_count(), "python": platform.python_version(),
           "dir": args.dir, "fstype": fstype, "read_ahead_kb": readahead_kb(args.dir),
           "free_disk_gib": round(fs.f_bavail * fs.f_frsize / 2**30, 1)}
    log(f"# bench_uring: {args.mb} MiB per size, max_bytes {args.max_bytes}, blocks {args.block_mb} MiB "
        f"x {args.blocks_per_file}/file, {env}")
    t0 = time.monotonic()
    cells: list[dict] = []
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            cells += run_size(args, base, size, log)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    elapsed = time.monotonic() - t0
    md = table(cells)
    print()
    print(md)
    print(f"\n(total {elapsed:.0f} s)")
    title = (f"shmwal batch_read (max_bytes {args.max_bytes // 1024} KiB) of a {args.mb} MiB backlog: "
             f"io_uring vs mmap; kernel {env['kernel']}, readahead {env['read_ahead_kb']} KiB")
    (out / "results.json").write_text(json.dumps({"env": env, "args": vars(args), "seconds": elapsed,
                                                  "cells": cells, "log": lines}, indent=1))
    (out / "results.md").write_text(f"{title}\n\n{md}\n")
    chart(cells, out / "bench_uring.png", title)
    print(f"wrote {out / 'results.json'}, {out / 'results.md'}, {out / 'bench_uring.png'}")


if __name__ == "__main__":
    main()
