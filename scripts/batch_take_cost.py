"""What a batch_read call costs: hot.c's take through the Dispatch, against the Python take.

    python scripts/batch_take_cost.py [--size 100] [--entries 1,10,100] [--count 200000] [--rounds 5] [--zero-copy]

One process, its own broker (NoFsync, in a temporary directory). Each round writes
``count`` entries of ``size`` bytes to three topics and reads each back with
``batch_read(topic, entries * size)`` (batches of ``entries`` entries) three ways:

* ``dispatch``: ``client.batch_read``, hot.c serving the batch (dispatch.h, take_entries);
* ``method``: ``Client.batch_read(client, ...)``, the Python method, calling the same take;
* ``python``: the Python method with the reader's compiled take off (GroupReader._take_once,
  its per-block decode in C): batch_read before the compiled take.

The three take turns, 10,000 entries at a time, so that the machine's moods weigh on all
alike. Prints us a call and ns an entry (median and range over the rounds) and each way's
ratio to ``python``. ``--zero-copy``: every way reads with ``zero_copy=True``.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time

import shmwal
from shmwal.bench.cli import _size
from shmwal.client.facade import Client
from shmwal.client.hot import native

WAYS = ("dispatch", "method", "python")
SLICE = 10_000   # entries each way reads before the next takes its turn


def caller(way: str, client, topic: str, zero_copy: bool):
    """``batch_read(topic, budget)`` the way ``way`` makes it, its reader made (an RPC to the
    broker, ~3 ms) before the clock runs."""
    Client.batch_read(client, topic, 0, checkpoint=False)   # the reader
    if way == "dispatch":
        read = client.batch_read
        return lambda topic, budget: read(topic, budget, zero_copy=zero_copy)
    if way == "python":
        client._readers[topic, "default"].hot_take = None
    method = Client.batch_read
    return lambda topic, budget: method(client, topic, budget, zero_copy=zero_copy)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=_size, default=100, help="entry size (default 100)")
    p.add_argument("--entries", default="1,10,100", help="entries a batch, comma-separated (default 1,10,100)")
    p.add_argument("--count", type=int, default=200_000, help="entries read each way a round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--zero-copy", action="store_true", help="read with zero_copy=True")
    args = p.parse_args()
    if native is None:
        raise SystemExit("shmwal._hot is not built (or SHMWAL_PURE_PYTHON is set)")
    data = b"x" * args.size
    directory = tempfile.mkdtemp(prefix="shmwal-batch-take-")
    try:
        with shmwal.Broker(directory, fsync=shmwal.NoFsync(), retention=shmwal.Retention(bytes=1 << 40)), \
                shmwal.connect(directory) as client:
            for entries in (int(n) for n in args.entries.split(",")):
                budget = entries * args.size
                per_call = {way: [] for way in WAYS}
                per_entry = {way: [] for way in WAYS}
                for r in range(args.rounds):
                    topics = {way: f"r{r}-{entries}-{way}" for way in WAYS}
                    for topic in topics.values():
                        for _ in range(0, args.count, 1000):
                            client.batch_append(topic, [data] * 1000)
                    calls = {way: caller(way, client, topics[way], args.zero_copy) for way in WAYS}
                    seconds = dict.fromkeys(WAYS, 0.0)
                    made = dict.fromkeys(WAYS, 0)
                    # In slices, the ways taking turns: a slow moment of the machine weighs
                    # on all three alike.
                    for start in range(0, args.count, SLICE):
                        for way in WAYS[start // SLICE % 3:] + WAYS[:start // SLICE % 3]:
                            call, topic = calls[way], topics[way]
                            got = 0
                            begin = time.perf_counter()
                            while got < min(SLICE, args.count - start):
                                got += len(call(topic, budget))
                                made[way] += 1
                            seconds[way] += time.perf_counter() - begin
                    for way in WAYS:
                        per_call[way].append(seconds[way] / made[way] * 1e6)
                        per_entry[way].append(seconds[way] / args.count * 1e9)
                how = ", zero-copy" if args.zero_copy else ""
                print(f"{args.size} B entries, batches of {entries} ({budget} B budget){how}, {args.rounds} rounds:")
                base = statistics.median(per_call["python"])
                for way in WAYS:
                    call_us, entry_ns = per_call[way], per_entry[way]
                    print(f"  {way:>8}: {statistics.median(call_us):7.2f} us a call ({min(call_us):.2f}-{max(call_us):.2f}),"
                          f" {statistics.median(entry_ns):7.0f} ns an entry;"
                          f" python / {way} {base / statistics.median(call_us):.2f}x")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
