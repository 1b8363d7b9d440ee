"""What a zero-copy write costs against an append, per entry, in one process (issue 13).

    python scripts/reserve_cost.py [--sizes 100,4KiB,64KiB] [--runs 5] [--entries 20000]
    SHMWAL_PURE_PYTHON=1 python scripts/reserve_cost.py     # the pure-Python path

One NoFsync broker with its data in /dev/shm, one topic per size, no reader. Each run
times ``client.append(t, data)`` and ``with client.reserve(t, n) as s: s.buffer[:] = data``
over the same number of entries on the same topic, in chunks that take turns (which goes
first alternates), so both meet the same load and the same blocks. The time is this
process's CPU time (time.process_time): on a shared machine it moves less than wall time
with the load of others, and no other process works on the way (no reader; the broker is
asked only for blocks). Prints microseconds per entry, the median of the runs, and the
ratio reserve/append of each run as median [min..max]: quote the ratio.

Both sides copy ``data`` once (append into the block; reserve by the slice assignment)
and hash it once, so at 64 KiB they do the same work; reserve saves its copy where the
producer makes its data in the slot (``readinto``, ``numpy.frombuffer(slot.buffer)``)
instead of in a bytes object first.
"""

from __future__ import annotations

import argparse
import os
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


def time_append(client, topic: str, data: bytes, count: int) -> float:
    append = client.append
    t0 = time.process_time()
    for _ in range(count):
        append(topic, data)
    return time.process_time() - t0


def time_reserve(client, topic: str, data: bytes, count: int) -> float:
    reserve = client.reserve
    nbytes = len(data)
    t0 = time.process_time()
    for _ in range(count):
        with reserve(topic, nbytes) as slot:
            slot.buffer[:] = data
    return time.process_time() - t0


def one_run(client, topic: str, data: bytes, count: int) -> tuple[float, float]:
    """(append, reserve) microseconds per entry over ``count`` entries each."""
    per_chunk = max(1, count // CHUNKS)
    spent = {time_append: 0.0, time_reserve: 0.0}
    for chunk in range(CHUNKS):
        order = (time_append, time_reserve) if chunk % 2 == 0 else (time_reserve, time_append)
        for timer in order:
            spent[timer] += timer(client, topic, data, per_chunk)
    n = per_chunk * CHUNKS
    return spent[time_append] / n * 1e6, spent[time_reserve] / n * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="100,4KiB,64KiB")
    p.add_argument("--runs", type=int, default=5)
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
                topic = f"size-{size}"
                data = os.urandom(size)
                count = max(200, min(args.entries, (40 << 20) // max(size, 1)))
                time_append(client, topic, data, min(count, 1000))    # warm: the topic, its first blocks
                time_reserve(client, topic, data, min(count, 1000))
                appends, reserves = [], []
                for _ in range(args.runs):
                    a, r = one_run(client, topic, data, count)
                    appends.append(a)
                    reserves.append(r)
                ratios = [r / a for r, a in zip(reserves, appends)]
                print(f"{size:>8} B x {count:>6}: append {statistics.median(appends):7.2f} us  "
                      f"reserve {statistics.median(reserves):7.2f} us  "
                      f"ratio {statistics.median(ratios):.2f} [{min(ratios):.2f}..{max(ratios):.2f}]", flush=True)
            client.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
