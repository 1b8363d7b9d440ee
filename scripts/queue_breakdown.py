"""Where a shmwal.Queue item's time goes, for issue 15's object cells: two measurements.

    python scripts/queue_breakdown.py get [--count 200000] [--rounds 3]
    python scripts/queue_breakdown.py start [--rounds 3] [--head-bytes N] [--dir /tmp]

``get``: one process, no producer running: ``count`` small dicts (the race's) are put, then
``q.get()`` is timed over them and ``pickle.loads`` of the same item's pickle alone; the
difference is what the queue adds to unpickling (a dict's get is bound by the unpickling,
which every peer pays too).

``start``: a fresh broker and topic a round (NoFsync, the Queue's block geometry, data on
``--dir``), a consumer process getting and a producer process putting 400 1 MiB arrays;
prints the first 20 puts in ms and the median put in us. The first puts write into fresh
blocks whose pages are faulted in for the first time (the broker's first blocks, on ext4 or
tmpfs); ``--head-bytes`` sets how much of each new block the writer populates itself before
going on (``client/populate.py`` HEAD_BYTES; the rest is the populate thread's).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import pickle
import shutil
import statistics
import tempfile
import time

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")   # as queue_cost.py says why

import numpy as np  # noqa: E402

import shmwal  # noqa: E402
from shmwal import embedded  # noqa: E402
from shmwal.client import heap  # noqa: E402

DICT = {"producer": 0, "seq": 0, "symbol": "SHMW", "price": 101.25, "qty": 300, "side": "buy",
        "tags": ["bench", "objects"]}
ARRAYS = 400


def get_cost(count: int, rounds: int) -> None:
    directory = tempfile.mkdtemp(prefix="shmwal-queue-breakdown-")
    try:
        with shmwal.Broker(directory, fsync=shmwal.NoFsync(), retention=shmwal.Retention(bytes=1 << 40)):
            q = shmwal.Queue("t", data_dir=directory)
            item = dict(DICT)
            pickled = pickle.dumps(item, protocol=5)
            for r in range(rounds):
                for seq in range(count):
                    item["seq"] = seq
                    q.put(item)
                start = time.perf_counter()
                for _ in range(count):
                    q.get()
                get_us = (time.perf_counter() - start) / count * 1e6
                start = time.perf_counter()
                for _ in range(count):
                    pickle.loads(pickled)
                loads_us = (time.perf_counter() - start) / count * 1e6
                print(f"round {r + 1}: get {get_us:.2f} us, pickle.loads alone {loads_us:.2f} us "
                      f"({len(pickled)}-byte pickle): the queue's share {get_us - loads_us:.2f} us")
            q.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _produce(data_dir: str, key: str, head_bytes, go, out) -> None:
    heap.settle()
    if head_bytes is not None:
        from shmwal.client import populate
        populate.HEAD_BYTES = head_bytes
    q = shmwal.Queue("t", data_dir=data_dir, key=key)
    array = np.zeros(1 << 17, dtype=np.float64)   # 1 MiB
    go.wait()
    stamps = [time.perf_counter()]
    for seq in range(ARRAYS):
        array[0] = seq
        q.put(array)
        stamps.append(time.perf_counter())
    out.put([(b - a) * 1e3 for a, b in zip(stamps, stamps[1:])])


def _consume(data_dir: str, key: str) -> None:
    heap.settle()
    q = shmwal.Queue("t", data_dir=data_dir, key=key)
    for _ in range(ARRAYS):
        q.get(timeout=60)


def start_cost(rounds: int, head_bytes, where: str) -> None:
    ctx = multiprocessing.get_context("fork")
    for r in range(rounds):
        directory = tempfile.mkdtemp(prefix="shmwal-queue-breakdown-", dir=where)
        key = f"breakdown-{os.getpid()}-{r}"
        try:
            with shmwal.Broker(directory, key=key, fsync=shmwal.NoFsync(), block_size=embedded.BLOCK_SIZE,
                               blocks_per_file=embedded.BLOCKS_PER_FILE):
                shmwal.Queue("t", data_dir=directory, key=key).qsize()   # the group, before any put
                go, out = ctx.Event(), ctx.Queue()
                procs = [ctx.Process(target=_consume, args=(directory, key)),
                         ctx.Process(target=_produce, args=(directory, key, head_bytes, go, out))]
                for proc in procs:
                    proc.start()
                time.sleep(0.5)   # both connected and imported before the first put
                go.set()
                puts = out.get(timeout=120)
                for proc in procs:
                    proc.join(60)
            print(f"round {r + 1}: first 20 puts (ms) " + " ".join(f"{ms:.1f}" for ms in puts[:20])
                  + f"; median put {statistics.median(puts) * 1e3:.0f} us, all {sum(puts):.0f} ms")
        finally:
            shutil.rmtree(directory, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=("get", "start"))
    p.add_argument("--count", type=int, default=200_000, help="get: dicts a round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--head-bytes", type=int, default=None, help="start: populate.HEAD_BYTES in the producer")
    p.add_argument("--dir", default="/tmp", help="start: where the data directory goes")
    args = p.parse_args()
    if args.what == "get":
        get_cost(args.count, args.rounds)
    else:
        start_cost(args.rounds, args.head_bytes, args.dir)


if __name__ == "__main__":
    main()
