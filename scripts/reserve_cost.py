"""What a zero-copy write costs against an append, per entry, in one process (issue 13).

    python scripts/reserve_cost.py [--sizes 100,4KiB,64KiB] [--fill assign,pread] [--runs 5] [--entries 20000]
    SHMWAL_PURE_PYTHON=1 python scripts/reserve_cost.py     # the pure-Python path

One NoFsync broker with its data in /dev/shm, one topic per row. A group that never reads
is moved to the end after each chunk (untimed), so the broker takes the blocks back and
hands them out again with their pages in: without it every 4 KiB written is a fresh tmpfs
page, and faulting those in costs more than the writes themselves (the faults column, per
entry, says whether a row ran with blocks reused; warm-up runs until it does). Each run
times ``client.append(t, data)`` and ``with client.reserve(t, n) as s: s.buffer[:] = data``
over the same number of entries on the same topic, in chunks that take turns (which goes
first alternates), so both meet the same load and the same blocks. The time is this
process's CPU time (time.process_time): on a shared machine it moves less than wall time
with the load of others, and no other process works on the way (the broker only hands
out blocks). Prints microseconds per entry, the median of the runs, and the
ratio reserve/append of each run as median [min..max]: quote the ratio.

Two ways to make the entry, each a row:
- ``assign``: ``data`` is a bytes object. Both sides copy it once (append into the block;
  reserve by the slice assignment) and hash it once: the same work, so the ratio shows what
  a slot costs beyond an append.
- ``pread``: the data comes from a file (tmpfs; a socket's ``recv_into`` is alike). append
  needs it in memory first (``os.preadv`` into a reused bytearray, then the append copies
  it); reserve reads it straight into ``slot.buffer``: one copy fewer, the one zero-copy
  writes exist to save.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import shmwal  # noqa: E402
from shmwal.bench.cli import _size  # noqa: E402
from shmwal.client.hot import native  # noqa: E402


CHUNKS = 10   # turns per run: append and reserve alternate this often
END = 2**62   # seek() past the end goes to the end
WARM_RUNS = 20


def faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def consume(client, topic: str) -> None:
    """Everything written so far is consumed: the broker may reuse its blocks."""
    client.seek(topic, END, group="done")


def time_append(client, topic: str, fill, count: int) -> float:
    append = client.append
    t0 = time.process_time()
    if isinstance(fill, bytes):
        for _ in range(count):
            append(topic, fill)
    else:
        fd, scratch = fill
        for _ in range(count):
            os.preadv(fd, [scratch], 0)
            append(topic, scratch)
    return time.process_time() - t0


def time_reserve(client, topic: str, fill, count: int) -> float:
    reserve = client.reserve
    t0 = time.process_time()
    if isinstance(fill, bytes):
        nbytes = len(fill)
        for _ in range(count):
            with reserve(topic, nbytes) as slot:
                slot.buffer[:] = fill
    else:
        fd, scratch = fill
        nbytes = len(scratch)
        for _ in range(count):
            with reserve(topic, nbytes) as slot:
                os.preadv(fd, [slot.buffer], 0)
    return time.process_time() - t0


def one_run(client, topic: str, fill, count: int) -> tuple[float, float]:
    """(append, reserve) microseconds per entry over ``count`` entries each."""
    per_chunk = max(1, count // CHUNKS)
    spent = {time_append: 0.0, time_reserve: 0.0}
    for chunk in range(CHUNKS):
        order = (time_append, time_reserve) if chunk % 2 == 0 else (time_reserve, time_append)
        for timer in order:
            spent[timer] += timer(client, topic, fill, per_chunk)
            consume(client, topic)
    n = per_chunk * CHUNKS
    return spent[time_append] / n * 1e6, spent[time_reserve] / n * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="100,4KiB,64KiB")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--fill", default="assign,pread", help="assign, pread or both (see above)")
    p.add_argument("--entries", type=int, default=20000,
                   help="entries per run at 100 B; fewer at larger sizes (about 40 MiB a run at most)")
    args = p.parse_args()
    sizes = [_size(s) for s in args.sizes.split(",")]
    root = tempfile.mkdtemp(prefix="shmwal-reserve-cost-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    print(f"path: {'compiled' if native is not None else 'pure Python'}; {args.runs} runs; CPU us per entry "
          f"(median), ratio reserve/append median [min..max] over the runs")
    try:
        # bytes=0: what was written goes as soon as it can, so the data dir stays small.
        with shmwal.Broker(root, fsync=shmwal.NoFsync(), retention=shmwal.Retention(bytes=0)):
            client = shmwal.connect(root)
            for size in sizes:
                data = os.urandom(size)
                source = os.path.join(root, f"source-{size}")
                with open(source, "wb") as f:
                    f.write(data)
                fd = os.open(source, os.O_RDONLY)
                try:
                    for how, fill in (("assign", data), ("pread", (fd, bytearray(size)))):
                        if how not in args.fill:
                            continue
                        topic = f"size-{size}-{how}"
                        count = max(200, min(args.entries, (40 << 20) // max(size, 1)))
                        client.seek(topic, 0, group="done")
                        for _ in range(WARM_RUNS):   # until blocks come back with their pages in
                            before = faults()
                            one_run(client, topic, fill, count // 4)
                            if faults() - before < count // 200:
                                break
                        appends, reserves = [], []
                        before = faults()
                        for _ in range(args.runs):
                            a, r = one_run(client, topic, fill, count)
                            appends.append(a)
                            reserves.append(r)
                        faulted = (faults() - before) / (2 * count * args.runs)
                        ratios = [r / a for r, a in zip(reserves, appends)]
                        print(f"{size:>8} B {how:<6} x {count:>6}: append {statistics.median(appends):7.2f} us  "
                              f"reserve {statistics.median(reserves):7.2f} us  "
                              f"ratio {statistics.median(ratios):.2f} [{min(ratios):.2f}..{max(ratios):.2f}]  "
                              f"faults {faulted:.2f}",
                              flush=True)
                finally:
                    os.close(fd)
            client.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
