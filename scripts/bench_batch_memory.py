"""Batch reads of large entries against read_next, per byte, in one process (issue 13).

    python scripts/bench_batch_memory.py [--size 65536] [--count 3000] [--budgets 1MiB,8MiB,64MiB]

Writes ``count`` entries of ``size`` bytes to a fresh broker (data in /dev/shm), then reads
them all again and again through one group: read_next, and batch_read with each budget,
twice each. Prints MB/s of wall and of CPU time (the CPU figure is the steadier one on a
shared VM) and minor page faults per MB read: a batch whose bytes objects' memory went
back to the kernel when the previous batch was freed faults every page in again (about
244 per MB); client/heap.py keeps it, so only the first batch of a size faults.
``SHMWAL_KEEP_MALLOC=1`` shows the figures without it.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import shmwal  # noqa: E402
from shmwal.bench.cli import _size  # noqa: E402


def faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=_size, default=65536)
    p.add_argument("--count", type=int, default=3000)
    p.add_argument("--budgets", default="1MiB,8MiB,64MiB")
    args = p.parse_args()
    budgets = [_size(b) for b in args.budgets.split(",")]
    root = tempfile.mkdtemp(prefix="shmwal-batchmem-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    try:
        with shmwal.Broker(root, fsync=shmwal.NoFsync()):
            client = shmwal.connect(root)
            payload = os.urandom(args.size)
            for _ in range(0, args.count, 100):
                client.batch_append("t", [payload] * 100)
            for label, budget in [("read_next", 0)] + [(f"batch {b >> 20} MiB" if b >= 1 << 20 else f"batch {b} B", b)
                                                       for b in budgets]:
                for _ in range(2):
                    client.seek("t", 0, group="g")
                    got, f0, c0, t0 = 0, faults(), time.process_time(), time.perf_counter()
                    if budget == 0:
                        while (e := client.read_next("t", group="g")) is not None:
                            got += len(e.data)
                    else:
                        while batch := client.batch_read("t", budget, group="g"):
                            got += sum(len(e.data) for e in batch)
                    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                    print(f"{args.size:>8} B  {label:<14} {got / wall / 1e6:8.0f} MB/s wall  {got / cpu / 1e6:8.0f} MB/s cpu"
                          f"  {(faults() - f0) / (got / 1e6):7.1f} faults/MB", flush=True)
            client.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
