"""What to run: the scenarios of one benchmark run, as plain data.

A ``RunSpec`` is one cell of the race (a scenario at one message size); every contender
runs every spec it supports, back to back, so that all figures of a spec come from the
same minutes on the same machine (this VM's speed drifts from minute to minute).
"""

from __future__ import annotations

from dataclasses import dataclass

KINDS = ("throughput", "latency", "scaling", "objects")
# "objects": pickled Python objects, 1 producer -> 1 consumer, through the queues that take
# objects (bench/objects.py): a small dict, and a 1 MiB numpy array. Row size = bytes a payload.
OBJECT_ITEMS = ("dict", "array")
DEFAULT_SIZES = (100, 4096, 65536)
SCALING_PRODUCERS = (1, 2, 4)
SCALING_CONSUMERS = (2, 4)


@dataclass(frozen=True)
class RunSpec:
    kind: str                      # "throughput" | "latency" | "scaling"
    size: int                      # bytes per message
    per_producer: int              # messages each producer sends
    producers: int = 1
    consumers: int = 1
    separate_groups: bool = False  # each consumer its own group: each must get everything
    period_ns: int = 0             # latency: one message every period_ns
    warmup: int = 0                # latency: first messages left out of the statistics
    item: str = ""                 # objects: "dict" | "array" (bench/objects.py)

    @property
    def sent(self) -> int:
        return self.per_producer * self.producers

    @property
    def delivered(self) -> int:
        """Messages the consumers receive in all: every group gets every message."""
        return self.sent * (self.consumers if self.separate_groups else 1)

    @property
    def scenario(self) -> str:
        shape = f"{self.producers}p->{self.consumers}c"
        if self.item:
            shape += f" {self.item}"
        if self.consumers > 1:
            shape += " groups" if self.separate_groups else " work"
        return shape


@dataclass(frozen=True)
class Budget:
    """How many messages to send: --quick makes everything small."""

    quick: bool = False
    count: int | None = None          # --count: messages per run for every size
    latency_count: int | None = None  # --latency-count
    latency_period_us: int = 1000

    def count_for(self, size: int) -> int:
        if self.count is not None:
            return self.count
        # Full: capped at ~4 GB per run (64 KiB -> ~61k: 1.3 GB runs lasted 0.1 s for the
        # fastest, and repeats spread by 45%) and at 200k messages, or 1M below 1 KiB (the
        # fastest then run ~0.1-0.3 s, long against set-up). Quick: well under a second each.
        if self.quick:
            cap, floor, budget = 20_000, 2_000, 200e6
        else:
            cap, floor, budget = (1_000_000 if size < 1024 else 200_000), 10_000, 4e9
        return min(cap, max(floor, int(budget // size)))

    def objects_count(self, item: str) -> int:
        """Objects a run: 1 MiB arrays are ~1/100 as many as dicts (--count); a full run moves
        4,000 arrays, 4 GB, the budget of the throughput rows. At 2,000 (2 GB) a run measured
        its start as much as its steady state: shmwal.Queue's repeats spread +-28% and ran
        1.6-1.8x faster-fifo, where runs of 8,000 ran 2.0x, 4% apart."""
        if self.count is not None:
            return self.count if item == "dict" else max(10, self.count // 100)
        if item == "dict":
            return 20_000 if self.quick else 200_000
        return 200 if self.quick else 4_000

    def latency_messages(self) -> tuple[int, int]:
        """(measured, warmup): warmup covers connection set-up and cold caches."""
        n = self.latency_count if self.latency_count is not None else (200 if self.quick else 2000)
        return n, max(1, n // 20)


def build(kinds, sizes, budget: Budget) -> list[RunSpec]:
    specs: list[RunSpec] = []
    if "throughput" in kinds:
        specs += [RunSpec("throughput", size, budget.count_for(size)) for size in sizes]
    if "latency" in kinds:
        n, warmup = budget.latency_messages()
        period = budget.latency_period_us * 1000
        specs += [RunSpec("latency", size, n + warmup, period_ns=period, warmup=warmup) for size in sizes]
    if "scaling" in kinds:
        size = min(sizes)
        total = budget.count_for(size)
        specs += [RunSpec("scaling", size, total // p, producers=p) for p in SCALING_PRODUCERS]
        specs += [RunSpec("scaling", size, total, consumers=c) for c in SCALING_CONSUMERS]
        specs += [RunSpec("scaling", size, total, consumers=c, separate_groups=True) for c in SCALING_CONSUMERS]
    if "objects" in kinds:
        from .objects import payload_bytes
        specs += [RunSpec("objects", payload_bytes(item), budget.objects_count(item), item=item)
                  for item in OBJECT_ITEMS]
    return specs
