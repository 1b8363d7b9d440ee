"""What a nats:// batch read costs against plain nats-py with the same acks, reader alone (issue 14).

    python scripts/nats_read_cost.py [--entries 10000] [--rounds 3] [--size 100] [--batch 1000]

One 3-node JetStream cluster on 127.0.0.1 (replicas 3), one topic filled with ``--entries``
entries before any read, then each reader drains it through a fresh group of its own, in
turns per round: plain nats-py awaiting every ack (``fetch`` then ``ack_sync`` each, as the
bench's "nats-py plain batch"), shmwal StrictlyAtOnce with claims, StrictlyAtOnce
``claims=False``, plain nats-py not awaiting its acks, shmwal AtLeastOnce. The bench's
throughput rows also time the producer and share the CPU with it; this times the reads
only, so a change to the read path shows here first.

Prints msgs/s and the nats-servers' CPU time per entry read (from /proc: what the server
did for the reader), and per round the ratio of read times ours/plain (above 1: ours slower)
for each pair with the same acknowledgement settings. On a shared machine quote the
ratios of one round, not rates from different runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import shmwal  # noqa: E402
from shmwal.nats import names  # noqa: E402
from shmwal.nats.client import parse_servers  # noqa: E402
from shmwal.nats.cluster import Cluster, scratch_parent  # noqa: E402

TOPIC = "t"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids) -> float:
    """User + system CPU time of these processes so far."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


def read_ours(url, key, group, args, consistency, claims=True) -> None:
    with shmwal.connect(url, key=key, timeout=30, consistency=consistency, claims=claims) as client:
        got = 0
        while got < args.entries:
            got += len(client.batch_read(TOPIC, args.size * args.batch, group=group, timeout=5))


def read_plain(url, key, group, args, awaited) -> None:
    import nats

    ns = names.namespace(key)

    async def drain():
        nc = await nats.connect(servers=parse_servers(url))
        try:
            sub = await nc.jetstream(timeout=30).pull_subscribe(
                names.subject(ns, TOPIC), durable=group, stream=names.stream_name(ns, TOPIC))
            got = 0
            while got < args.entries:
                msgs = await sub.fetch(args.batch, timeout=5)
                if awaited:
                    await asyncio.gather(*(m.ack_sync(timeout=30) for m in msgs))
                else:
                    for m in msgs:
                        await m.ack()
                got += len(msgs)
        finally:
            await nc.close()

    asyncio.run(drain())


READERS = {
    "plain, awaited acks": lambda *a: read_plain(*a, awaited=True),
    "ours strict, claims": lambda *a: read_ours(*a, shmwal.StrictlyAtOnce()),
    "ours strict, claims=False": lambda *a: read_ours(*a, shmwal.StrictlyAtOnce(), claims=False),
    "plain, unawaited acks": lambda *a: read_plain(*a, awaited=False),
    "ours AtLeastOnce": lambda *a: read_ours(*a, shmwal.AtLeastOnce()),
}
PAIRS = (("ours strict, claims", "plain, awaited acks"),
         ("ours strict, claims=False", "plain, awaited acks"),
         ("ours AtLeastOnce", "plain, unawaited acks"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--entries", type=int, default=10_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--size", type=int, default=100, help="bytes an entry")
    p.add_argument("--batch", type=int, default=1000, help="entries a read (ours: size x batch bytes)")
    args = p.parse_args()
    with Cluster(3, parent=scratch_parent()) as cluster:
        key = f"cost-{uuid.uuid4().hex[:8]}"
        with shmwal.connect(cluster.url, key=key, timeout=30) as writer:
            for start in range(0, args.entries, args.batch):
                writer.batch_append(TOPIC, [bytes(args.size)] * min(args.batch, args.entries - start))
        for round_ in range(args.rounds):
            rates = {}
            for n, (name, read) in enumerate(READERS.items()):
                before = cpu_seconds(cluster.pids)
                t0 = time.perf_counter()
                read(cluster.url, key, f"r{round_}-{n}", args)
                elapsed = time.perf_counter() - t0
                server_us = (cpu_seconds(cluster.pids) - before) / args.entries * 1e6
                rates[name] = args.entries / elapsed
                print(f"round {round_}  {name:27s} {rates[name]:9,.0f} msgs/s   server CPU {server_us:5.0f} us/entry",
                      flush=True)
            print(f"round {round_}  time ours/plain: " + ", ".join(
                f"{ours.replace('ours ', '')} {rates[plain] / rates[ours]:.2f}" for ours, plain in PAIRS), flush=True)


if __name__ == "__main__":
    main()
