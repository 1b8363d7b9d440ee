"""One side of tests/test_differential.py: runs the operations it is sent on a Client of its own.

Started as ``python differential_worker.py DATA_DIR`` with or without SHMWAL_PURE_PYTHON=1;
reads pickled (op, args) frames on stdin, answers each with a pickled result on stdout.
Payloads are made here from (seed, size), so both sides write the same bytes.
"""

from __future__ import annotations

import collections
import pickle
import random
import struct
import sys

import shmwal
from shmwal.client.hot import native

_LEN = struct.Struct("<I")
# Which Slot class each reserve got ("shmwal._hot.Slot" or client/reserve.py's): the test asks,
# so that a compiled worker that never took hot.c's slot cannot pass for a comparison.
SLOT_KINDS: collections.Counter = collections.Counter()


class Discard(Exception):
    """Raised inside a reserve block: the entry must not be published."""


def payload(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def kind(data) -> tuple:
    """What a caller can tell of ``data`` beyond its bytes: bytes, or a view and its shape."""
    if isinstance(data, memoryview):
        return ("memoryview", data.readonly, data.format, data.itemsize, data.ndim, data.nbytes)
    return (type(data).__name__,)


def entries(got) -> list:
    return [(e.topic, e.offset, bytes(e.data), kind(e.data)) for e in got]


def run(client, op: str, args: dict):
    if op == "path":
        return "compiled" if native is not None else "pure"
    if op == "append":
        return client.append(args["topic"], payload(args["seed"], args["size"]))
    if op == "batch_append":
        got = client.batch_append(args["topic"], [payload(args["seed"] + i, n) for i, n in enumerate(args["sizes"])])
        return (got.start, got.stop)
    if op == "reserve":
        return reserve(client, args)
    if op == "slot_kinds":
        return dict(SLOT_KINDS)
    if op == "read_next":
        e = client.read_next(args["topic"], group=args["group"], checkpoint=args["checkpoint"],
                             zero_copy=args["zero_copy"])
        return None if e is None else entries([e])[0]
    if op == "batch_read":
        return entries(client.batch_read(args["topic"], args["max_bytes"], group=args["group"],
                                         checkpoint=args["checkpoint"], zero_copy=args["zero_copy"]))
    if op == "batch_read_payloads":
        got = client.batch_read_payloads(args["topic"], args["max_bytes"], group=args["group"],
                                         checkpoint=args["checkpoint"], zero_copy=args["zero_copy"])
        return (got.first, [(bytes(d), kind(d)) for d in got.data])
    if op == "seek":
        client.seek(args["topic"], args["offset"], group=args["group"])
        return client.position(args["topic"], group=args["group"])
    if op == "position":
        return client.position(args["topic"], group=args["group"])
    if op == "state":
        # What both paths write into a topic's meta: its visibility, counters and groups (not
        # the broker's block bookkeeping, whose timing is its own).
        topics = client.stats()["topics"]
        return sorted(client.topics()), {
            name: (t["next_offset"], t["entries"], t["bytes"],
                   {g: (s["position"], s["skipped"]) for g, s in t["groups"].items()})
            for name, t in topics.items()}
    raise ValueError(op)


def reserve(client, args: dict):
    """One ``with client.reserve(...)``: filled, then maybe an inner append of the same topic
    (which must fail at once) and maybe discarded by an exception; returns what a caller sees."""
    data = payload(args["seed"], args["size"])
    slot = client.reserve(args["topic"], args["size"])
    SLOT_KINDS[f"{type(slot).__module__}.{type(slot).__name__}"] += 1
    inner = None
    try:
        with slot:
            if args.get("fill"):   # the parts back to back: bytes, a memoryview, a bytearray
                cut = args["seed"] % (len(data) + 1)
                slot.fill([data[:cut // 2], memoryview(data)[cut // 2:cut], bytearray(data[cut:])])
            else:
                slot.buffer[:] = data
            if args["inner"]:
                try:
                    if args["inner"] == "append":
                        client.append(args["topic"], b"inner")
                    elif args["inner"] == "reserve":
                        with client.reserve(args["topic"], 5) as nested:
                            nested.buffer[:] = b"inner"
                    else:
                        client.batch_append(args["topic"], [b"inner", b""])
                except shmwal.ShmwalError as exc:
                    inner = type(exc).__name__
            if args["discard"]:
                raise Discard
    except Discard:
        pass
    try:
        slot.buffer[:0]
        released = False
    except ValueError:
        released = True
    return (slot.offset, slot.nbytes, inner, released)


def main() -> None:
    client = shmwal.connect(sys.argv[1])
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        head = stdin.read(_LEN.size)
        if len(head) < _LEN.size:
            break
        op, args = pickle.loads(stdin.read(_LEN.unpack(head)[0]))
        try:
            result = ("ok", run(client, op, args))
        except shmwal.ShmwalError as exc:
            result = ("error", type(exc).__name__)
        data = pickle.dumps(result)
        stdout.write(_LEN.pack(len(data)) + data)
        stdout.flush()
    client.close()


if __name__ == "__main__":
    main()
