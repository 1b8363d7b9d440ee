"""What one large entry costs each side of a topic, in CPU time (issue 13's 64 KiB rows).

    python scripts/append_cost.py [--size 64KiB] [--rounds 3] [--dir /tmp]

One producer process appends ``4 GB / size`` entries (a buffer restamped each time, as the
race's producers do) while one consumer process takes them with ``read_next``; each reports
its wall time, its CPU time (getrusage) per entry and MB/s. NoFsync, the broker's defaults.
On this project's VM, 64 KiB entries: 6.4-6.7 us of producer CPU an entry with appends
streaming into the block (hot.c copy_hashing, from 32 KiB), 9.4-10.1 before.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import shutil
import tempfile
import time

import shmwal
from shmwal.client import heap


def _size(text: str) -> int:
    units = {"kib": 1 << 10, "mib": 1 << 20}
    for suffix, factor in units.items():
        if text.lower().endswith(suffix):
            return int(text[:-len(suffix)]) * factor
    return int(text)


def _cost(start: float, count: int, size: int) -> str:
    wall = time.perf_counter() - start
    used = resource.getrusage(resource.RUSAGE_SELF)
    cpu = used.ru_utime + used.ru_stime
    return (f"wall {wall / count * 1e6:6.2f} us/entry, cpu {cpu / count * 1e6:6.2f} us/entry, "
            f"{count * size / wall / 1e6:7,.0f} MB/s")


def produce(data_dir: str, size: int, count: int, out) -> None:
    heap.settle()
    with shmwal.connect(data_dir) as client:
        buf = bytearray(size)
        start = time.perf_counter()
        for seq in range(count):
            buf[0:8] = seq.to_bytes(8, "little")
            client.append("cost", buf)
        out.put(("producer", _cost(start, count, size)))


def consume(data_dir: str, size: int, count: int, out) -> None:
    heap.settle()
    with shmwal.connect(data_dir) as client:
        client.read_next("cost", timeout=60)   # the clock starts at the first entry
        start = time.perf_counter()
        for _ in range(count - 1):
            client.read_next("cost", timeout=60)
        out.put(("consumer", _cost(start, count - 1, size)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=_size, default=64 << 10, help="entry size, e.g. 64KiB (default)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--dir", default="/tmp", help="where the data directory goes")
    args = p.parse_args()
    count = max(1000, int(4e9 // args.size))
    ctx = multiprocessing.get_context("fork")
    for r in range(args.rounds):
        data_dir = tempfile.mkdtemp(prefix="shmwal-append-cost-", dir=args.dir)
        try:
            with shmwal.Broker(data_dir, fsync=shmwal.NoFsync()):
                with shmwal.connect(data_dir) as client:
                    client.create_group("cost", "default")   # exists before any append
                out = ctx.Queue()
                procs = [ctx.Process(target=consume, args=(data_dir, args.size, count, out)),
                         ctx.Process(target=produce, args=(data_dir, args.size, count, out))]
                for proc in procs:
                    proc.start()
                results = dict(out.get(timeout=600) for _ in procs)
                for proc in procs:
                    proc.join()
            print(f"round {r + 1}, {count} x {args.size} B: producer {results['producer']}")
            print(f"{'':>{len(str(r + 1)) + len(str(count)) + len(str(args.size)) + 13}}consumer {results['consumer']}")
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
