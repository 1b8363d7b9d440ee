"""How fast one core hashes memory that is not in the caches (the README's "memory speed").

    python scripts/memory_speed.py [--rounds 3]

hot.c's checksum (xxh3 as zero-copy reads check entries: from 32 KiB the prefetching loop of
fused_xxh3.h where the CPU has AVX2, else xxHash's dispatch) over 1 MiB slices of a
256 MiB buffer written long before: a single core reading DRAM while it hashes, the bound of
a consumer checking entries its producer stored past the caches. Median and each round.
What that costs end to end: scripts/queue_cost.py (1 MiB arrays) and scripts/append_cost.py
(64 KiB entries), each side's CPU time.
"""

from __future__ import annotations

import argparse
import statistics
import time

from shmwal.client.hot import native

MIB = 1 << 20


def cold_hash_gbs() -> float:
    ring = bytearray(b"\1") * (256 * MIB)   # every page written now, hashed much later
    view = memoryview(ring)
    start = time.perf_counter()
    for at in range(0, len(ring), MIB):
        native.xxh3_64(view[at:at + MIB])
    return len(ring) / (time.perf_counter() - start) / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    if native is None:
        raise SystemExit("the compiled path (shmwal._hot) is not built, or SHMWAL_PURE_PYTHON is set")
    rounds = [cold_hash_gbs() for _ in range(args.rounds)]
    print(f"xxh3 of memory not in the caches: {statistics.median(rounds):.1f} GB/s "
          f"(rounds: {', '.join(f'{g:.1f}' for g in rounds)})")


if __name__ == "__main__":
    main()
