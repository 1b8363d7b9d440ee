"""batch_read behind a producer: one process appends, another reads in batches.

    python scripts/batch_read_pipe.py [--size 64KiB] [--budget 1MiB] [--count 60000] [--rounds 3] [--replay]

The producer ``append``s ``count`` entries of ``size`` bytes, one a call; the consumer,
started first, reads them with ``batch_read(topic, budget, timeout=None)`` from the moment
the first arrives. Prints, each round, the consumer's MB/s, its calls, how many of them
took the Python path (GroupReader._take_once: a batch that goes on into the next block, or
a first read) rather than hot.c's take, and the entries a call. Its own broker (NoFsync, 10
MiB blocks) in a temporary directory under ``--dir``.

``--replay``: the producer writes everything first, then the consumer reads the backlog (a
replay, or a consumer that fell behind): every batch is a full budget, and the caller holds
the previous one while the next is copied (hot.c STREAM_BATCH_AFTER is about this case).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import shutil
import tempfile
import time

import shmwal
from shmwal.bench.cli import _size
from shmwal.client import heap
from shmwal.client import read as read_module


def produce(data_dir: str, size: int, count: int) -> None:
    heap.settle()
    with shmwal.connect(data_dir) as client:
        payload = os.urandom(size)
        for _ in range(count):
            client.append("t", payload)


def consume(data_dir: str, budget: int, count: int, out) -> None:
    heap.settle()
    python_takes = 0
    take_once = read_module.GroupReader._take_once

    def counted(self, *args, **kwargs):
        nonlocal python_takes
        python_takes += 1
        return take_once(self, *args, **kwargs)

    read_module.GroupReader._take_once = counted
    with shmwal.connect(data_dir) as client:
        client.seek("t", 0, group="g")
        got = calls = 0
        start = None
        while got < count:
            # `batch` holds the previous batch while the next is read, as a caller's loop does.
            batch = client.batch_read("t", budget, group="g", timeout=None)
            if start is None:
                start = time.perf_counter()
            got += len(batch)
            calls += 1
        out.put((time.perf_counter() - start, calls, python_takes))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=_size, default=64 << 10)
    p.add_argument("--budget", type=_size, default=1 << 20)
    p.add_argument("--count", type=int, default=60_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dir", default="/tmp", help="where the data directory goes")
    p.add_argument("--replay", action="store_true", help="write everything, then read the backlog")
    args = p.parse_args()
    ctx = multiprocessing.get_context("fork")
    for r in range(args.rounds):
        data_dir = tempfile.mkdtemp(prefix="shmwal-batch-pipe-", dir=args.dir)
        try:
            with shmwal.Broker(data_dir, fsync=shmwal.NoFsync()):
                out = ctx.Queue()
                consumer = ctx.Process(target=consume, args=(data_dir, args.budget, args.count, out))
                producer = ctx.Process(target=produce, args=(data_dir, args.size, args.count))
                if args.replay:
                    with shmwal.connect(data_dir) as client:
                        client.seek("t", 0, group="g")   # the group keeps every block until read
                    producer.start()
                    producer.join()
                    consumer.start()
                else:
                    consumer.start()
                    time.sleep(0.3)   # reading, and waiting, before the first entry is written
                    producer.start()
                seconds, calls, python_takes = out.get(timeout=600)
                producer.join()
                consumer.join()
            print(f"round {r + 1}: {args.count * args.size / seconds / 1e6:8,.0f} MB/s, {calls:,} calls "
                  f"({python_takes:,} through Python), {args.count / calls:.1f} entries a call")
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
