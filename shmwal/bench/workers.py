"""The code that runs in the producer and consumer processes.

Protocol with the parent, over each child's own pipe: ("ready", None) once its endpoint is
open, then it waits for the shared ``go`` event (so no process is still starting up when the
clock starts), then ("done", result) or ("error", traceback). The parent never reads a clock
of its own: the producers report when they sent their first message and the consumers when
they received their last data message, both on CLOCK_MONOTONIC.

The hot loops do the same small bookkeeping for every contender (a ``len()``, a clock read
and the message's first 16 bytes kept: a slice per message, or for batched receivers of small
messages one join a batch, see ``PrefixStore``); decoding and checking happen after the clock
stops.

Every producer and consumer first puts malloc where a long-running process ends up
(client/heap.py ``settle``): a forked child inherits its parent's malloc thresholds, and
the 1 MiB array rows of every queue that allocates per message moved 10x with what the
bench's own process had freed before (a run of only those rows against the full race).
"""

from __future__ import annotations

import time
import traceback
from operator import itemgetter

import numpy as np

from ..client import heap
from . import check, objects
from .messages import HEADER, HEADER_LEN, STAMPED, STAMPED_LEN, TOKEN_LEN, clock_ns, filler

GO_TIMEOUT = 120.0   # a child never waits for the start signal longer than this
JOIN_MAX = 1024      # batched consumers join messages up to this size (_receive_batched)


def producer_main(channel, spec, index, batched, conn, go):
    heap.settle()   # every contender's processes start with the same malloc thresholds
    tx = None
    try:
        tx = channel.sender(index)
        conn.send(("ready", None))
        if not go.wait(GO_TIMEOUT):
            raise TimeoutError("no start signal")
        if spec.kind == "objects":
            t_first = _send_objects(tx, spec, index)
        elif spec.kind == "latency":
            t_first = _send_paced(tx, spec, index)
        elif batched:
            t_first = _send_batched(tx, spec, index)
        else:
            t_first = _send_each(tx, spec, index)
        tx.finish()
        conn.send(("done", {"t_first": t_first}))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    finally:
        if tx is not None:
            tx.close()
        conn.close()


def consumer_main(channel, spec, index, batched, conn, go):
    heap.settle()
    rx = None
    try:
        rx = channel.receiver(index)
        # Before the start: its pages are touched now, not on the clock.
        store = PrefixStore(spec.sent) if batched and spec.size <= JOIN_MAX else None
        conn.send(("ready", None))
        if not go.wait(GO_TIMEOUT):
            raise TimeoutError("no start signal")
        if spec.kind == "objects":
            result = _receive_objects(rx, spec)
        elif spec.kind == "latency":
            result = _receive_stamped(rx, spec)
        elif batched:
            result = _receive_batched(rx, spec, store)
        else:
            result = _receive_each(rx, spec)
        rx.close()   # may flush a passed-on baton: before we report done
        rx = None
        conn.send(("done", result))
    except BaseException:
        conn.send(("error", traceback.format_exc()))
    finally:
        if rx is not None:
            rx.close()
        conn.close()


# ---------------------------------------------------------------- producers

def _send_each(tx, spec, index) -> int:
    buf = filler(spec.size)
    pack, send = HEADER.pack_into, tx.send
    t_first = clock_ns()
    for seq in range(spec.per_producer):
        pack(buf, 0, index, seq)
        send(buf)
    return t_first


def _send_batched(tx, spec, index) -> int:
    """Batches are views into one buffer whose sequence numbers numpy stamps at once:
    a per-message ``pack_into`` here cost more than some contenders' whole send."""
    size, batch, n = spec.size, tx.batch, spec.per_producer
    block = bytearray(bytes(filler(size)) * batch)     # every contender copies on send
    whole = memoryview(block)
    pool = [whole[i * size:(i + 1) * size] for i in range(batch)]
    producer_words = np.ndarray((batch,), dtype="<u8", buffer=block, offset=0, strides=(size,))
    seq_words = np.ndarray((batch,), dtype="<u8", buffer=block, offset=8, strides=(size,))
    producer_words[:] = index
    steps = np.arange(batch, dtype=np.uint64)
    send_many = tx.send_many
    t_first = clock_ns()
    for start in range(0, n, batch):
        np.add(steps, start, out=seq_words)
        send_many(pool if n - start >= batch else pool[: n - start])
    return t_first


def _send_objects(tx, spec, index) -> int:
    obj = objects.make(spec.item, index)
    stamp, send = objects.stamp, tx.send_obj
    t_first = clock_ns()
    for seq in range(spec.per_producer):
        stamp(obj, seq)
        send(obj)
    return t_first


def _send_paced(tx, spec, index) -> int:
    """One message every period_ns, each stamped just before it is sent."""
    buf = filler(spec.size)
    pack, send = STAMPED.pack_into, tx.send
    t_first = clock_ns()
    for seq in range(spec.per_producer):
        wait = t_first + seq * spec.period_ns - clock_ns()
        if wait > 0:
            time.sleep(wait / 1e9)   # sleep, not spin: two cores, and the consumer needs one
        pack(buf, 0, index, seq, clock_ns())
        send(buf)
    return t_first


# ---------------------------------------------------------------- consumers

def _per_producer(spec) -> list[int]:
    return [spec.per_producer] * spec.producers


def _result(heads: list, spec, t_last: int, stride: int = HEADER_LEN) -> dict:
    return {"t_last": t_last, "tally": check.tally(b"".join(heads), _per_producer(spec), stride)}


def _copying(append):
    """``append`` of a copy: for receivers whose messages are views of memory they reuse."""
    return lambda view: append(bytes(view))


def _receive_each(rx, spec) -> dict:
    heads: list = []
    keep, recv, on_token, clock = heads.append, rx.recv, rx.on_token, clock_ns
    if getattr(rx, "views", False):
        keep = _copying(keep)
    t_last = 0
    while True:
        msg = recv()
        if len(msg) == TOKEN_LEN:
            if on_token(msg):
                return _result(heads, spec, t_last)
            continue
        t_last = clock()
        keep(msg[:HEADER_LEN])


class PrefixStore:
    """The 16-byte prefixes of fixed-size messages, kept a batch at a time.

    A batch is joined (one copy of a few KiB) and numpy cuts its prefixes into an array
    made and touched before the clock starts. A 16-byte slice a message cost ~45 ns,
    as much as some contenders' whole receive, and the slices of a few million messages
    are hundreds of MB of fresh memory (the kernel zeroes each new page: ~30% of a
    batched consumer's time, measured). Messages it cannot place (another size, or more
    than were sent) are left to the caller, so the check still sees every prefix.
    """

    def __init__(self, capacity: int):
        self.rows = np.ones((capacity, HEADER_LEN), dtype=np.uint8)   # ones: touches the pages
        self.filled = 0

    def add(self, msgs, size: int) -> bool:
        n = len(msgs)
        if self.filled + n > len(self.rows):
            return False
        chunk = b"".join(msgs)
        if len(chunk) != size * n:
            return False
        self.rows[self.filled:self.filled + n] = np.frombuffer(chunk, dtype=np.uint8).reshape(n, size)[:, :HEADER_LEN]
        self.filled += n
        return True

    def heads(self) -> bytes:
        return self.rows[:self.filled].tobytes()


def _receive_batched(rx, spec, store: PrefixStore | None) -> dict:
    """Small messages go to ``store`` a batch at a time; larger ones keep a slice each (a
    join would copy every payload). The same for every batched contender."""
    heads: list = []
    size = spec.size
    recv_many, clock = rx.recv_many, clock_ns
    # Zero-copy buffers may be reused by the next read: keep copies of their prefixes.
    cut = (lambda m: bytes(m[:HEADER_LEN])) if getattr(rx, "views", False) else itemgetter(slice(0, HEADER_LEN))

    def keep(msgs):
        if store is None or not store.add(msgs, size):
            heads.extend(map(cut, msgs))

    t_last = 0
    while True:
        msgs = recv_many()
        if not msgs:
            continue
        t = clock()
        # Tokens come after all data (FIFO), so only a batch that ends in one holds any.
        if len(msgs[-1]) != TOKEN_LEN:
            t_last = t
            keep(msgs)
            continue
        data = [m for m in msgs if len(m) != TOKEN_LEN]
        if data:
            t_last = t
            keep(data)
        # Hand every token on (a baton dropped here would leave another consumer waiting).
        done = [rx.on_token(m) for m in msgs if len(m) == TOKEN_LEN]
        if any(done):
            if store is not None:
                heads.append(store.heads())
            return _result(heads, spec, t_last)


def _receive_objects(rx, spec) -> dict:
    """Each object as the queue unpickled it, checked and cut to its prefix (objects.prefix)
    as it comes: keeping them all would measure the allocator (200k dicts, 2 GB of arrays)."""
    heads: list = []
    keep, recv, on_token, clock = heads.append, rx.recv_obj, rx.on_token, clock_ns
    is_token, prefix = objects.is_token, objects.prefix
    t_last = 0
    while True:
        obj = recv()
        if is_token(obj):
            if on_token(obj):
                return _result(heads, spec, t_last)
            continue
        t_last = clock()
        keep(prefix(obj))


def _receive_stamped(rx, spec) -> dict:
    heads: list = []
    times: list = []
    keep, stamp, recv, clock = heads.append, times.append, rx.recv, clock_ns
    if getattr(rx, "views", False):
        keep = _copying(keep)
    while True:
        msg = recv()
        t = clock()
        if len(msg) == TOKEN_LEN:
            if rx.on_token(msg):
                break
            continue
        stamp(t)
        keep(msg[:STAMPED_LEN])
    result = _result(heads, spec, times[-1] if times else 0, STAMPED_LEN)
    words = np.frombuffer(b"".join(heads), dtype="<u8").reshape(-1, 3)
    measured = words[:, 1] >= spec.warmup
    sent_at = words[:, 2].astype(np.int64)
    result["latency_ns"] = (np.asarray(times, dtype=np.int64) - sent_at)[measured]
    return result
