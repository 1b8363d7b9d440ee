"""What one item costs each side of a shmwal.Queue, in CPU time (issue 15's array target).

    python scripts/queue_cost.py [--item array|dict] [--count N] [--rounds 3] [--dir /tmp]

One producer process puts ``count`` items (the bench's small dict, or a 1 MiB numpy
array restamped each time) while one consumer process gets them, as the race's objects
scenario does; each reports its wall time and its CPU time (getrusage) per item. The side
whose CPU time is closest to the wall time bounds the pair. On this project's VM, 1 MiB
arrays: 105-146 us of CPU an item for the producer (slot.fill streaming the array into the
block with its xxh3 on the way, numpy's pickling), 108-130 us for the consumer (one pass
copying the entry out of the block and checking it); 145-216 and 120-169 before (commit
45c0b5a says what changed).
Both start with malloc settled as in the race (client/heap.py settle).
"""

from __future__ import annotations

import argparse
import functools
import os
import time

# As shmwal.bench does: numpy's OpenBLAS threads spin for ~0.1 s after import, taking a core
# of this 2-vCPU VM from the processes measured (seen in perf as blas_thread_server).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

import shmwal  # noqa: E402
from pair_cost import common_arguments, cost, rounds  # noqa: E402
from shmwal.client import heap  # noqa: E402

DICT = {"producer": 0, "seq": 0, "symbol": "SHMW", "price": 101.25, "qty": 300, "side": "buy",
        "tags": ["bench", "objects"]}


def produce(item: str, count: int, data_dir: str, out) -> None:
    heap.settle()
    q = shmwal.Queue("cost", data_dir=data_dir)
    obj = np.zeros(2**17, dtype=np.uint64) if item == "array" else dict(DICT)
    start = time.perf_counter()
    for seq in range(count):
        if item == "array":
            obj[1] = seq
        else:
            obj["seq"] = seq
        q.put(obj)
    out.put(("producer", cost(start, count, "item")))


def consume(count: int, data_dir: str, out) -> None:
    heap.settle()
    q = shmwal.Queue("cost", data_dir=data_dir)
    q.get(timeout=60)   # the clock starts at the first item
    start = time.perf_counter()
    for _ in range(count - 1):
        q.get(timeout=60)
    out.put(("consumer", cost(start, count - 1, "item")))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--item", choices=("array", "dict"), default="array")
    p.add_argument("--count", type=int, default=None, help="items a round (default: 4,000 arrays, 300,000 dicts)")
    common_arguments(p)
    args = p.parse_args()
    count = args.count or (4000 if args.item == "array" else 300_000)
    rounds(args.rounds, f"{count} {args.item}s", count, args.dir, "shmwal-queue-cost-",
           # The group exists before any put.
           lambda data_dir: shmwal.Queue("cost", data_dir=data_dir).qsize(),
           functools.partial(produce, args.item, count), functools.partial(consume, count), args.piecewise)


if __name__ == "__main__":
    main()
