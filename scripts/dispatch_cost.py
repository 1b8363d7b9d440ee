"""What a per-entry call costs through the Dispatch (hot.c, dispatch.h) and through the Python method.

    python scripts/dispatch_cost.py [--size 100] [--count 500000] [--rounds 5]

One process, its own broker (NoFsync, in a temporary directory): each round appends
``count`` entries with ``client.append`` (the Dispatch) and as many with
``Client.append(client, ...)`` (the Python method it falls back on), then reads them back
with ``client.read_next`` and ``Client.read_next(client, ...)``, the two kinds alternating
first from round to round so that the machine's moods weigh on both.  Prints ns a call
(median and range over the rounds) and the ratio Python method / Dispatch.  Both take the
same compiled path underneath; the difference is the Python frame around it.
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


def appends(call, client, topic, data, count) -> float:
    start = time.perf_counter()
    if call is None:
        append = client.append
        for _ in range(count):
            append(topic, data)
    else:
        for _ in range(count):
            call(client, topic, data)
    return (time.perf_counter() - start) / count * 1e9


def reads(call, client, topic, count) -> float:
    start = time.perf_counter()
    if call is None:
        read_next = client.read_next
        for _ in range(count):
            read_next(topic, group="g")
    else:
        for _ in range(count):
            call(client, topic, group="g")
    return (time.perf_counter() - start) / count * 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=_size, default=100, help="entry size (default 100)")
    p.add_argument("--count", type=int, default=500_000, help="calls of each kind a round")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    if native is None:
        raise SystemExit("shmwal._hot is not built (or SHMWAL_PURE_PYTHON is set): no Dispatch to measure")
    data = bytes(args.size)
    directory = tempfile.mkdtemp(prefix="shmwal-dispatch-")
    broker = shmwal.Broker(directory, key="dispatch-cost", fsync=shmwal.NoFsync()).start()
    results = {name: [] for name in ("append dispatch", "append method", "read_next dispatch", "read_next method")}
    try:
        with shmwal.connect(directory, key="dispatch-cost") as client:
            client.append("warm-dispatch", data)
            client.append("warm-method", data)
            for round_ in range(args.rounds):
                kinds = [("dispatch", None, None, f"d{round_}"), ("method", Client.append, Client.read_next, f"m{round_}")]
                if round_ % 2:
                    kinds.reverse()
                for name, append, _, topic in kinds:
                    results[f"append {name}"].append(appends(append, client, topic, data, args.count))
                for name, _, read_next, topic in kinds:
                    results[f"read_next {name}"].append(reads(read_next, client, topic, args.count))
    finally:
        broker.stop()
        shutil.rmtree(directory, ignore_errors=True)
    print(f"{args.size}-byte entries, {args.count:,} calls of each kind a round, {args.rounds} rounds")
    for call in ("append", "read_next"):
        fast, slow = results[f"{call} dispatch"], results[f"{call} method"]
        for name, figures in (("Dispatch", fast), ("Python method", slow)):
            print(f"  {call:<10} {name:<14} {statistics.median(figures):6.0f} ns a call "
                  f"({min(figures):.0f}-{max(figures):.0f})")
        print(f"  {call:<10} method / Dispatch: {statistics.median(slow) / statistics.median(fast):.2f}x")


if __name__ == "__main__":
    main()
