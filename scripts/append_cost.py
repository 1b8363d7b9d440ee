"""What one large entry costs each side of a topic, in CPU time (issue 13's 64 KiB rows).

    python scripts/append_cost.py [--size 64KiB] [--rounds 3] [--dir /tmp] [--reserve]

One producer process appends ``4 GB / size`` entries (a buffer restamped each time, as the
race's producers do) while one consumer process takes them with ``read_next``; each reports
its wall time, its CPU time (getrusage) per entry and MB/s. NoFsync, the broker's defaults.
``--reserve``: the race's "reserve zero-copy" row instead (``slot.fill`` of a reserved slot,
``read_next(..., zero_copy=True)``).
On this project's VM, 64 KiB entries: 6.4-6.7 us of producer CPU an entry with appends
streaming into the block (hot.c copy_hashing, from 32 KiB), 9.4-10.1 before.
"""

from __future__ import annotations

import argparse
import functools
import time

import shmwal
from pair_cost import common_arguments, cost, rounds
from shmwal.bench.cli import _size
from shmwal.client import heap


def produce(size: int, count: int, reserve: bool, data_dir: str, out) -> None:
    heap.settle()
    with shmwal.connect(data_dir) as client:
        buf = bytearray(size)
        start = time.perf_counter()
        if reserve:
            slot_for = client.reserve
            for seq in range(count):
                buf[0:8] = seq.to_bytes(8, "little")
                with slot_for("cost", size) as slot:
                    slot.fill((buf,))
        else:
            for seq in range(count):
                buf[0:8] = seq.to_bytes(8, "little")
                client.append("cost", buf)
        out.put(("producer", cost(start, count, "entry", size)))


def consume(size: int, count: int, zero_copy: bool, data_dir: str, out) -> None:
    heap.settle()
    with shmwal.connect(data_dir) as client:
        client.read_next("cost", timeout=60)   # the clock starts at the first entry
        start = time.perf_counter()
        for _ in range(count - 1):
            client.read_next("cost", timeout=60, zero_copy=zero_copy)
        out.put(("consumer", cost(start, count - 1, "entry", size)))


def _prepare(data_dir: str) -> None:
    with shmwal.connect(data_dir) as client:
        client.create_group("cost", "default")   # exists before any append


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=_size, default=64 << 10, help="entry size, e.g. 64KiB (default)")
    p.add_argument("--reserve", action="store_true",
                   help="write through client.reserve + slot.fill, read with zero_copy=True")
    common_arguments(p)
    args = p.parse_args()
    count = max(1000, int(4e9 // args.size))
    label = f"{count} x {args.size} B" + (", reserve + zero-copy reads" if args.reserve else "")
    rounds(args.rounds, label, count, args.dir, "shmwal-append-cost-", _prepare,
           functools.partial(produce, args.size, count, args.reserve),
           functools.partial(consume, args.size, count, args.reserve),
           args.piecewise)


if __name__ == "__main__":
    main()
