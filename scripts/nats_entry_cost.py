"""What one nats:// entry costs, per call, against plain nats-py (issue 14's per-entry rows).

    python scripts/nats_entry_cost.py [--entries 1000] [--rounds 2]

One 3-node JetStream cluster on 127.0.0.1 (replicas 3). Per round, in this one process: N
awaited publishes with plain nats-py, then N ``fetch(1)`` + ``ack_sync`` reads; N
``client.append`` calls, then N ``read_next`` calls StrictlyAtOnce with claims, and on a
second topic the same with ``claims=False``. Each is timed alone (wall) and charged the
CPU time this process spent meanwhile (getrusage): the client's own work per call, which on
a machine whose cores the servers share is what the race's per-entry rows move with.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import time
import uuid

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import nats  # noqa: E402

import shmwal  # noqa: E402
from shmwal.nats import names  # noqa: E402
from shmwal.nats.client import parse_servers  # noqa: E402
from shmwal.nats.cluster import Cluster, scratch_parent  # noqa: E402

PAYLOAD = b"x" * 100


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(fn, n: int) -> tuple[float, float]:
    """(wall, cpu) seconds of n calls of fn."""
    wall, used = time.perf_counter(), cpu()
    for _ in range(n):
        fn()
    return time.perf_counter() - wall, cpu() - used


def plain(url: str, key: str, n: int) -> tuple:
    async def run():
        nc = await nats.connect(servers=parse_servers(url))
        try:
            js = nc.jetstream()
            ns = names.namespace(key)
            subject = names.subject(ns, "t")
            wall, used = time.perf_counter(), cpu()
            for _ in range(n):
                await js.publish(subject, PAYLOAD)
            publish = (time.perf_counter() - wall, cpu() - used)
            sub = await js.pull_subscribe(subject, durable="g", stream=names.stream_name(ns, "t"))
            wall, used = time.perf_counter(), cpu()
            for _ in range(n):
                for msg in await sub.fetch(1, timeout=5):
                    await msg.ack_sync(timeout=30)
            return publish, (time.perf_counter() - wall, cpu() - used)
        finally:
            await nc.close()

    with shmwal.connect(url, key=key) as client:   # the stream, with shmwal's settings
        client.create_group("t", "setup")
    return asyncio.run(run())


def ours(url: str, key: str, n: int, claims: bool) -> tuple:
    with shmwal.connect(url, key=key, timeout=30, claims=claims) as client:
        client.create_group("t", "g")
        publish = timed(lambda: client.append("t", PAYLOAD), n)
        read = timed(lambda: client.read_next("t", group="g", timeout=5), n)
        return publish, read


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    n = args.entries

    def per_call(pair) -> str:
        wall, used = pair
        return f"{wall / n * 1e6:6.0f} us wall {used / n * 1e6:5.0f} us cpu"

    with Cluster(3, parent=scratch_parent()) as cluster:
        for r in range(args.rounds):
            keys = ["cost" + uuid.uuid4().hex[:8] for _ in range(3)]
            p = plain(cluster.url, keys[0], n)
            strict = ours(cluster.url, keys[1], n, claims=True)
            loose = ours(cluster.url, keys[2], n, claims=False)
            print(f"round {r}  publish  plain {per_call(p[0])} | ours {per_call(strict[0])}")
            print(f"round {r}  read     plain {per_call(p[1])} | ours strict {per_call(strict[1])}"
                  f" | claims=False {per_call(loose[1])}")


if __name__ == "__main__":
    main()
