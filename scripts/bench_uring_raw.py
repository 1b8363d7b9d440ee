#!/usr/bin/env python3
"""Raw read paths against one big file: io_uring vs pread/preadv vs mmap.

    python scripts/bench_uring_raw.py [--mb 1024] [--dir /tmp] [--budget 0.15]

Random ranges (256 B / 4 KiB / 64 KiB; offsets aligned to min(size, 4 KiB))
in batches of 1..1024, page cache warm and cold, each path copying into the
same page-aligned ReadArena (``pread`` returns fresh bytes instead). Each
cell is the median, over its batches, of microseconds per range: this VM
stalls now and then, and a mean lets one stall own a cell.

* ``uring``     Ring.read_ranges, one call per batch
* ``preadv``    os.preadv into the arena, one call per range
* ``pread``     os.pread, one call per range
* ``mmap``      memoryview slice copy out of a read-only mmap
* ``mmap+WN``   the same after madvise(MADV_WILLNEED) on every range of the batch

Cold means: before every timed batch the file is evicted with
posix_fadvise(DONTNEED) (it was fsynced, so every page is clean and mmaps are
closed, since mapped pages are not evicted), and ``resident_fraction`` checks
it went cold. Kernel readahead stays at its defaults. Prints microseconds per
range (lower is better). Every path's first batch in a cell is checked
against os.pread.
"""

from __future__ import annotations

import argparse
import mmap
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shmwal.uring import ReadArena, Ring, probe, resident_fraction  # noqa: E402

PAGE = mmap.PAGESIZE
METHODS = ("uring", "preadv", "pread", "mmap", "mmap+WN")


def make_file(path: Path, mb: int) -> None:
    block = bytearray(os.urandom(1 << 20))
    with open(path, "wb") as f:
        for i in range(mb):
            block[:8] = i.to_bytes(8, "little")  # no two MiB alike
            f.write(block)
        f.flush()
        os.fsync(f.fileno())


def evict(fd: int) -> None:
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def warm_up(fd: int, size: int) -> None:
    chunk = 8 << 20
    for off in range(0, size, chunk):
        if not os.pread(fd, chunk, off):
            break


def random_batch(rng: random.Random, file_size: int, size: int, batch: int) -> list:
    align = min(size, PAGE)
    slots = (file_size - size) // align
    return [(rng.randrange(slots) * align, i * size) for i in range(batch)]


def run_batch(method: str, fd: int, ring: Ring, arena: ReadArena, mm, batch, size: int):
    """One timed batch; returns (seconds, bytes-or-None for checking)."""
    view = arena.view(len(batch) * size)
    if method == "uring":
        reqs = [(fd, off, size, boff) for off, boff in batch]
        t = time.perf_counter()
        ring.read_ranges(reqs, arena)
        return time.perf_counter() - t, None
    if method == "preadv":
        t = time.perf_counter()
        for off, boff in batch:
            if os.preadv(fd, [view[boff:boff + size]], off) != size:
                raise OSError("short preadv")
        return time.perf_counter() - t, None
    if method == "pread":
        t = time.perf_counter()
        out = [os.pread(fd, size, off) for off, _ in batch]
        dt = time.perf_counter() - t
        if any(len(b) != size for b in out):
            raise OSError("short pread")
        return dt, out
    src = memoryview(mm)
    try:
        t = time.perf_counter()
        if method == "mmap+WN":
            for off, _ in batch:
                start = off - off % PAGE
                mm.madvise(mmap.MADV_WILLNEED, start, off + size - start)
        for off, boff in batch:
            view[boff:boff + size] = src[off:off + size]
        return time.perf_counter() - t, None
    finally:
        src.release()


def check(method, fd, arena, batch, size, out) -> None:
    got = out if out is not None else [bytes(arena.view(b + size)[b:b + size]) for _, b in batch]
    for (off, _), data in zip(batch, got):
        if data != os.pread(fd, size, off):
            raise AssertionError(f"{method}: wrong bytes at offset {off}")


def measure(method, cold, fd, file_size, ring, arena, size, batch_n, budget, rng):
    spent, batches, worst_residency = 0.0, 0, 0.0
    per_range = []
    wall_end = time.monotonic() + 3 * budget
    mm = None
    while True:
        batch = random_batch(rng, file_size, size, batch_n)
        if cold:
            if mm is not None:
                mm.close()
                mm = None
            evict(fd)
            if batches == 0:  # checked once per cell: a full mincore walk costs ~1 ms/GiB
                worst_residency = max(worst_residency, resident_fraction(fd, 0, file_size))
        if method.startswith("mmap") and mm is None:
            mm = mmap.mmap(fd, file_size, access=mmap.ACCESS_READ)
        dt, out = run_batch(method, fd, ring, arena, mm, batch, size)
        if batches == 0:
            check(method, fd, arena, batch, size, out)
        spent += dt
        per_range.append(dt / batch_n)
        batches += 1
        if spent >= budget or time.monotonic() >= wall_end or batches >= 5000:
            break
    if mm is not None:
        mm.close()
    return statistics.median(per_range) * 1e6, worst_residency


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=int, default=1024, help="file size in MiB (default 1024)")
    ap.add_argument("--dir", default="/tmp", help="directory on a real disk (not tmpfs)")
    ap.add_argument("--sizes", default="256,4096,65536")
    ap.add_argument("--batches", default="1,16,128,1024")
    ap.add_argument("--entries", type=int, default=256, help="ring entries")
    ap.add_argument("--budget", type=float, default=0.15, help="timed seconds per cell")
    ap.add_argument("--keep", action="store_true", help="keep the data file")
    args = ap.parse_args()
    reason = probe()
    if reason:
        sys.exit(f"io_uring unavailable: {reason}")
    sizes = [int(s) for s in args.sizes.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    path = Path(args.dir) / f"shmwal-bench-uring-{os.getpid()}.dat"
    t0 = time.monotonic()
    make_file(path, args.mb)
    print(f"# {args.mb} MiB file in {args.dir} written in {time.monotonic() - t0:.1f} s; "
          f"ring entries {args.entries}; {os.cpu_count()} CPUs; {os.uname().release}")
    fd = os.open(path, os.O_RDONLY)
    file_size = os.fstat(fd).st_size
    rng = random.Random(42)
    rows = []
    try:
        with Ring(args.entries) as ring, ReadArena(max(sizes) * max(batches)) as arena:
            for cold in (False, True):
                if not cold:
                    warm_up(fd, file_size)
                    res = resident_fraction(fd, 0, file_size)
                    print(f"# warm: {res:.1%} of the file resident before the warm runs")
                for size in sizes:
                    for batch_n in batches:
                        row, worst = [], 0.0
                        for method in METHODS:
                            us, residency = measure(method, cold, fd, file_size, ring, arena,
                                                    size, batch_n, args.budget, rng)
                            row.append(us)
                            worst = max(worst, residency)
                        rows.append(("cold" if cold else "warm", size, batch_n, row, worst))
                if not cold:
                    res = resident_fraction(fd, 0, file_size)
                    print(f"# warm: {res:.1%} still resident after the warm runs")
    finally:
        os.close(fd)
        if not args.keep:
            path.unlink()
    print()
    print("# median microseconds per range (lower is better); 'vs best' = best other path / uring")
    head = f"{'cache':5} {'size':>6} {'batch':>5} | " + " ".join(f"{m:>8}" for m in METHODS)
    print(head + " |  vs best  resident")
    print("-" * len(head) + "-+-------------------")
    for cache, size, batch_n, row, worst in rows:
        best_other = min(row[1:])
        cells = " ".join(f"{us:8.2f}" for us in row)
        resident = f"{worst:7.2%}" if cache == "cold" else ""
        print(f"{cache:5} {size:>6} {batch_n:>5} | {cells} | {best_other / row[0]:6.2f}x  {resident}")
    print(f"# total {time.monotonic() - t0:.1f} s")


if __name__ == "__main__":
    main()
