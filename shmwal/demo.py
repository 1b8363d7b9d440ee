"""The demo: a broker, producer processes, and consumers in two groups.

Three producers append to one topic (one per entry, two in batches); two
consumers share the group "workers" (a work queue: each entry to one of
them) and one consumer reads as "audit" (publish/subscribe: it sees every
entry).  Progress is printed while it runs; at the end each group's entries
are checked: every entry exactly once, payloads intact.

The workers' pids are printed at the start: ``kill -9`` any of them while it
runs.  The demo still ends, and the summary checks that every entry written
was read once per group (a killed producer's entries up to its death; a
killed consumer's work goes to the other one of its group).
"""

from __future__ import annotations

import errno
import multiprocessing as mp
import os
import shutil
import struct
import sys
import tempfile
import time

import numpy as np

import shmwal

TOPIC = "orders"
_ID = struct.Struct("<II")   # producer, sequence: the first 8 bytes of every payload


def payload(producer: int, seq: int, size: int) -> bytes:
    body = bytes([(producer * 31 + seq) & 0xFF]) * (size - _ID.size)
    return _ID.pack(producer, seq) + body


def produce(client, producer: int, count: int, size: int, batch: int, start) -> None:
    client.topics()          # connected before the start line: the clock measures the log, not start-up
    start.ready()
    waits = 0
    if batch <= 1:
        append = client.append
        for seq in range(count):
            data = payload(producer, seq, size)
            try:
                append(TOPIC, data)
            except OSError as exc:
                waits += _wait_for_room(exc, client.append, TOPIC, data)
    else:
        for first in range(0, count, batch):
            items = [payload(producer, seq, size) for seq in range(first, min(count, first + batch))]
            try:
                client.batch_append(TOPIC, items)
            except OSError as exc:
                waits += _wait_for_room(exc, client.batch_append, TOPIC, items)
    if waits:
        print(f"  producer-{producer} waited {waits:,} times for the consumers to free space "
              f"(the disk was full of entries not read yet)", flush=True)


def _wait_for_room(exc: OSError, call, *args) -> int:
    """Retry an append that met a full disk until it fits; how many times it waited.

    Unread entries are never dropped, so on a small filesystem (a container's
    64 MiB /dev/shm) producers faster than the slowest group fill it; a call
    that raised wrote nothing, and space comes back as groups read on.
    """
    waits = 0
    while True:
        if exc.errno != errno.ENOSPC:
            raise exc
        waits += 1
        time.sleep(0.02)
        try:
            call(*args)
            return waits
        except OSError as again:
            exc = again


def consume(client, group: int, total, out: str, start) -> None:
    """Read until the group has taken all ``total.value`` entries; save what this process got.

    ``total`` is shared: the main process lowers it to what was written when a producer dies."""
    client.topics()
    start.ready()
    ids = []
    bad = 0
    while True:
        entries = client.batch_read(TOPIC, 256 * 1024, group=group, timeout=0.2)
        for entry in entries:
            producer, seq = _ID.unpack_from(entry.data)
            if entry.data != payload(producer, seq, len(entry.data)):
                bad += 1
            ids.append(producer << 32 | seq)
        if not entries and client.position(TOPIC, group=group) >= total.value:
            break
    np.save(out, np.array(ids, dtype=np.uint64))
    if bad:
        print(f"  {group}: {bad} payloads did not match", flush=True)


def main(argv=None) -> int:
    from .cli.common import Parser, positive_int   # a bad option: one line, exit 2, as every shmwal command
    parser = Parser(prog="shmwal demo", description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=positive_int, default=300_000, help="entries per producer (default: 300000)")
    parser.add_argument("--size", type=int, default=100, help="payload bytes of each entry (default: 100)")
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="where the demo's broker keeps its files (default: a temporary directory, "
                             "removed at the end)")
    parser.add_argument("--key", default=None, metavar="KEY",
                        help="namespace inside the data directory (default: 'default')")
    args = parser.parse_args(argv)
    if args.size < _ID.size:
        parser.error(f"--size must be at least {_ID.size}")
    scratch = args.data_dir is None
    data_dir = tempfile.mkdtemp(prefix="shmwal-demo-") if scratch else args.data_dir
    # What each consumer got goes elsewhere: the data directory may be a small /dev/shm.
    results = tempfile.mkdtemp(prefix="shmwal-demo-results-")
    ctx = mp.get_context("spawn")
    producers = [(0, 1), (1, 100), (2, 1000)]           # (producer id, batch size)
    groups = {"workers": 2, "audit": 1}
    total = args.entries * len(producers)
    print(f"shmwal demo: {len(producers)} producers x {args.entries:,} entries of {args.size} B -> "
          f"topic {TOPIC!r}; groups: workers (2 consumers, work queue), audit (1 consumer)")
    print(f"data directory: {data_dir}")
    workers = []
    ok = False
    try:
        with shmwal.Broker(data_dir, key=args.key, fsync=shmwal.FsyncEvery(milliseconds=200)) as broker:
            client = shmwal.connect(data_dir, key=args.key)
            outs = {}
            start = StartLine(ctx)
            target = ctx.Value("q", total, lock=False)   # entries the consumers wait for
            for group, n in groups.items():
                for i in range(n):
                    out = os.path.join(results, f"{group}-{i}.npy")
                    outs.setdefault(group, []).append(out)
                    workers.append(ctx.Process(target=consume, args=(client, group, target, out, start),
                                               name=f"{group}-{i}"))
            for producer, batch in producers:
                workers.append(ctx.Process(target=produce, args=(client, producer, args.entries, args.size, batch,
                                                                 start), name=f"producer-{producer}"))
            for w in workers:
                w.start()
            print(f"starting {len(workers)} worker processes (kill -9 any of them, the demo carries on): "
                  + ", ".join(f"{w.name} {w.pid}" for w in workers), flush=True)
            start.release(workers, within=120)   # every worker is up and connected: the clock starts now
            started = time.perf_counter()
            last_line = 0.0
            producing = workers[-len(producers):]
            lowered = False
            while any(w.is_alive() for w in workers):
                time.sleep(0.05)
                if not lowered and not any(p.is_alive() for p in producing) \
                        and any(p.exitcode != 0 for p in producing):
                    # A producer died: the consumers wait for what was written, not for `total`.
                    target.value = client.stats()["topics"][TOPIC]["next_offset"]
                    lowered = True
                if time.perf_counter() - last_line >= 0.5:
                    last_line = time.perf_counter()
                    _progress(client, total, time.perf_counter() - started)
            elapsed = time.perf_counter() - started
            _progress(client, total, elapsed)
            failed = [w.name for w in workers if w.exitcode != 0]
            stats = client.stats()["topics"][TOPIC]
            client.close()
            ok = _summary(outs, producers, args.entries, total, elapsed, stats, failed)
            print(f"broker pid {broker.pid} stopping cleanly")
    finally:
        for w in workers:
            if w.is_alive():
                w.kill()
            w.join()
        shutil.rmtree(results, ignore_errors=True)
        if scratch:
            shutil.rmtree(data_dir, ignore_errors=True)
    return 0 if ok else 1


class StartLine:
    """Workers wait at it until every one is connected; unlike a Barrier, one killed on its
    way there does not hold up the others (nor break the line for them)."""

    def __init__(self, ctx):
        self._arrived = ctx.Semaphore(0)
        self._go = ctx.Event()

    def ready(self) -> None:
        """In a worker: connected; wait for the others."""
        self._arrived.release()
        self._go.wait()

    def release(self, workers, within: float) -> None:
        arrived = 0
        deadline = time.monotonic() + within
        while arrived + sum(not w.is_alive() for w in workers) < len(workers):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the workers were not all connected within {within} s")
            arrived += self._arrived.acquire(timeout=0.05)
        self._go.set()


def _progress(client, total: int, elapsed: float) -> None:
    topic = client.stats()["topics"].get(TOPIC)
    if topic is None:
        return
    written = topic["next_offset"]
    reads = "  ".join(f"{g} {s['position']:>9,}" for g, s in sorted(topic["groups"].items()))
    bar = "#" * int(30 * written / total)
    print(f"  {elapsed:5.1f}s [{bar:<30}] written {written:>9,}/{total:,}  read: {reads}", flush=True)


def _written(outs, producers, per_producer, failed) -> np.ndarray:
    """The ids every group must hold exactly once: all of each producer that finished, and for
    one that was killed the prefix some group read (a batch is all or nothing, and entries of
    one producer are published in order, so what it wrote is 0..k-1)."""
    ids = []
    for producer, _ in producers:
        count = per_producer
        if f"producer-{producer}" in failed:
            seen = [np.load(f) for files in outs.values() for f in files if os.path.exists(f)]
            mine = [a[(a >> np.uint64(32)) == producer] for a in seen]
            count = max((int((m & np.uint64(0xFFFFFFFF)).max()) + 1 for m in mine if m.size), default=0)
        ids.extend(producer << 32 | s for s in range(count))
    return np.sort(np.array(ids, dtype=np.uint64))


def _summary(outs, producers, per_producer, total, elapsed, stats, failed) -> bool:
    expected = _written(outs, producers, per_producer, failed)
    ok = not failed
    print(f"\nsummary after {elapsed:.2f} s:")
    print(f"  written: {stats['next_offset']:,} entries ({stats['next_offset'] / elapsed:,.0f} msgs/s end to end)")
    if expected.size != stats["next_offset"]:
        print(f"  MISMATCH: the producers' entries add up to {expected.size:,}, the topic holds "
              f"{stats['next_offset']:,}")
        ok = False
    for group, files in outs.items():
        got = [np.load(f) for f in files if os.path.exists(f)]
        ids = np.sort(np.concatenate(got)) if got else np.array([], dtype=np.uint64)
        exact = ids.size == expected.size and bool(np.array_equal(ids, expected))
        split = " + ".join(f"{g.size:,}" for g in got)
        verdict = "every entry exactly once" if exact else "MISMATCH"
        if not exact:
            dup = ids.size - np.unique(ids).size
            verdict += f" (got {ids.size:,}, duplicates {dup:,}, missing {np.setdiff1d(expected, ids).size:,})"
        print(f"  group {group:8s} read {ids.size:>9,} ({split}) — {verdict}")
        ok &= exact
    if failed:
        print(f"  processes that failed (killed?): {', '.join(failed)}; every entry written was checked "
              f"in every group that kept its consumers")
    print("  RESULT: " + ("OK" if ok else "FAILED"))
    return ok


if __name__ == "__main__":
    sys.exit(main())
