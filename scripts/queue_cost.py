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
import multiprocessing
import resource
import shutil
import tempfile
import time

import numpy as np

import shmwal
from shmwal.client import heap

DICT = {"producer": 0, "seq": 0, "symbol": "SHMW", "price": 101.25, "qty": 300, "side": "buy",
        "tags": ["bench", "objects"]}


def _cost(start: float, count: int) -> str:
    wall = time.perf_counter() - start
    used = resource.getrusage(resource.RUSAGE_SELF)
    cpu = used.ru_utime + used.ru_stime
    return f"wall {wall / count * 1e6:7.1f} us/item, cpu {cpu / count * 1e6:7.1f} us/item, {count / wall:9,.0f} items/s"


def produce(data_dir: str, item: str, count: int, out) -> None:
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
    out.put(("producer", _cost(start, count)))


def consume(data_dir: str, count: int, out) -> None:
    heap.settle()
    q = shmwal.Queue("cost", data_dir=data_dir)
    q.get(timeout=60)   # the clock starts at the first item
    start = time.perf_counter()
    for _ in range(count - 1):
        q.get(timeout=60)
    out.put(("consumer", _cost(start, count - 1)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--item", choices=("array", "dict"), default="array")
    p.add_argument("--count", type=int, default=None, help="items a round (default: 4,000 arrays, 300,000 dicts)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dir", default="/tmp", help="where the data directory goes")
    args = p.parse_args()
    count = args.count or (4000 if args.item == "array" else 300_000)
    ctx = multiprocessing.get_context("fork")
    for r in range(args.rounds):
        data_dir = tempfile.mkdtemp(prefix="shmwal-queue-cost-", dir=args.dir)
        try:
            with shmwal.Broker(data_dir, fsync=shmwal.NoFsync()):
                shmwal.Queue("cost", data_dir=data_dir).qsize()   # the group exists before any put
                out = ctx.Queue()
                procs = [ctx.Process(target=consume, args=(data_dir, count, out)),
                         ctx.Process(target=produce, args=(data_dir, args.item, count, out))]
                for proc in procs:
                    proc.start()
                results = dict(out.get(timeout=600) for _ in procs)
                for proc in procs:
                    proc.join()
            print(f"round {r + 1}, {count} {args.item}s: producer {results['producer']}")
            print(f"{'':>{len(str(r + 1)) + len(str(count)) + len(args.item) + 11}}consumer {results['consumer']}")
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
