"""How fast hot.c copies and checksums a large payload, one pass (fused) against piece by piece.

    python scripts/copy_speed.py [--size 1MiB] [--rounds 3] [--count 300]

Three jobs, each as shmwal does them, on memory laid out as blocks are (a 48 MiB ring,
well past this VM's 32 MiB L3, so that it is not in the caches when it comes round again):

* write: a payload in the caches (a producer's array) into the ring with streaming stores,
  its checksum taken on the way (append, Slot.fill);
* read: a payload from the ring into a buffer in the caches, checked on the way (read_next);
* checksum: of a payload in the ring, copying nothing (zero-copy reads).

Each iteration runs both kernels on their own slots of the ring, in alternating order, so
that whatever else the machine does weighs on both alike; the figure is us per MiB (the
median iteration), the ratio fused / piecewise. The fused kernel (shmwal/_native/fused_xxh3.h)
needs AVX2; without it both columns are the piece-wise kernel.
"""

from __future__ import annotations

import argparse
import statistics
import time

from shmwal.bench.cli import _size
from shmwal.client.hot import native

RING = 48 << 20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=_size, default=1 << 20, help="payload size (default 1MiB)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--count", type=int, default=300, help="iterations a round")
    args = p.parse_args()
    if native is None:
        raise SystemExit("shmwal._hot is not built (or SHMWAL_PURE_PYTHON is set)")
    size = args.size
    stride = -(-(size + 48) // 64) * 64 + 64
    slots = RING // stride
    if slots < 8:
        raise SystemExit("--size too large for the ring")
    ring = bytearray(RING)
    ring[:] = bytes(range(256)) * (RING // 256)   # every page faulted in and written once
    view = memoryview(ring)
    hot = bytearray(size)
    hot[:] = bytes(range(256)) * (size // 256) + bytes(size % 256)
    fused_available = native.fused(True)

    def at(slot: int) -> memoryview:
        start = slot % slots * stride + 48   # 16-aligned, not 32 (as a one-entry record's payload)
        return view[start:start + size]

    def one(job: str, fused: bool, slot: int) -> float:
        native.fused(fused)
        target = at(slot)
        start = time.perf_counter()
        if job == "write":
            native.copy_checksum([hot], slot, True, target)
        elif job == "read":
            native.copy_checksum([target], slot, False, hot)
        else:
            native.xxh3_64(target, slot)
        return time.perf_counter() - start

    try:
        for r in range(args.rounds):
            cells = []
            for job in ("write", "read", "checksum"):
                times = {True: [], False: []}
                slot = 0
                for i in range(args.count):
                    for fused in ((True, False) if i % 2 else (False, True)):
                        times[fused].append(one(job, fused, slot))
                        slot += 1
                per_mib = {k: statistics.median(v) * 1e6 * (1 << 20) / size for k, v in times.items()}
                cells.append(f"{job} {per_mib[True]:6.1f} / {per_mib[False]:6.1f} us/MiB "
                             f"({per_mib[True] / per_mib[False]:.2f}x)")
            print(f"round {r + 1}, fused / piecewise{'' if fused_available else ' (no AVX2: both piecewise)'}: "
                  + ", ".join(cells))
    finally:
        native.fused(fused_available)


if __name__ == "__main__":
    main()
