"""Helpers for the process-level tests: workers, a process group that is always
cleaned up, payloads a reader can check on its own, and a greedy model of
``batch_read``'s caps (API.md "Reading").

Worker functions live here (not in test modules) so that a "spawn" child can
import them by name.  Each worker returns a picklable value; ``Workers`` runs
it in a child, stores the value (or the child's traceback) in a file, and the
parent reads it back after joining.
"""

from __future__ import annotations

import gc
import itertools
import multiprocessing
import os
import pickle
import random
import struct
import time
import traceback
from multiprocessing import resource_tracker

import pytest

import shmwal

MAX_READ_ENTRIES = 2000          # API.md: batch_read never returns more
START_METHODS = ("fork", "spawn")


# ----------------------------------------------------------------------------- payloads

_TAG = struct.Struct("<II")      # writer tag, sequence number


def payload(tag: int, seq: int, pad: int = 0) -> bytes:
    """An entry that names its writer and sequence number; the padding is derived from both."""
    return _TAG.pack(tag, seq) + bytes([(tag * 31 + seq) % 251]) * pad


def parse_payload(data: bytes) -> tuple[int, int]:
    """(tag, seq) of a ``payload``; raises AssertionError if the bytes are not one."""
    assert len(data) >= _TAG.size, data[:32]
    tag, seq = _TAG.unpack_from(data)
    assert data == payload(tag, seq, len(data) - _TAG.size), f"payload of writer {tag} seq {seq} is damaged"
    return tag, seq


def every_call(client, topic: str) -> dict:
    """One call of each Client method on ``topic`` (a closed client must refuse them all)."""
    return {
        "append": lambda: client.append(topic, b"y"),
        "batch_append": lambda: client.batch_append(topic, [b"y"]),
        "read_next": lambda: client.read_next(topic),
        "batch_read": lambda: client.batch_read(topic, 10),
        "seek": lambda: client.seek(topic, 0),
        "position": lambda: client.position(topic),
        "topics": lambda: client.topics(),
        "stats": lambda: client.stats(),
    }


def expected_batches(sizes: list[int], max_bytes: int, start: int = 0) -> list[list[int]]:
    """Offsets of successive batch_read calls per API.md: entries in order while their
    payloads add up to at most ``max_bytes``, the first alone when it alone is larger,
    never more than 2,000."""
    out = []
    i = start
    while i < len(sizes):
        batch = [i]
        total = sizes[i]
        i += 1
        while i < len(sizes) and len(batch) < MAX_READ_ENTRIES and total + sizes[i] <= max_bytes:
            total += sizes[i]
            batch.append(i)
            i += 1
        out.append(batch)
    return out


# ----------------------------------------------------------------------------- processes

def stop_resource_tracker() -> None:
    """A "spawn" child starts multiprocessing's resource tracker, which would outlive the test
    (conftest fails a test that leaves processes); stop it once the test's children are gone."""
    resource_tracker._resource_tracker._stop()


@pytest.fixture(autouse=True)
def no_resource_tracker_left():
    """Import into a test module that starts "spawn" children (an autouse fixture there)."""
    yield
    gc.collect()  # finalizers of spawn-context semaphores talk to the tracker: let them run first
    stop_resource_tracker()


def _run(target, out_path, args) -> None:
    try:
        result = ("ok", target(*args))
        code = 0
    except BaseException:  # report everything, SystemExit included
        result = ("error", traceback.format_exc())
        code = 1
    tmp = out_path + ".tmp"
    with open(tmp, "wb") as f:
        pickle.dump(result, f)
    os.rename(tmp, out_path)
    os._exit(code)  # a fork child must not run the parent's atexit handlers


_flag_ids = itertools.count()


class FileFlag:
    """A one-way flag between processes, kept in a file: it pickles to its path, so it crosses
    fork and spawn alike and leaves no semaphore for multiprocessing's resource tracker."""

    def __init__(self, path: str):
        self.path = path

    def set(self) -> None:
        with open(self.path, "x"):
            pass

    def is_set(self) -> bool:
        return os.path.exists(self.path)

    def wait(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not self.is_set():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.002)
        return True


class Workers:
    """Child processes of one start method; killed and joined on exit whatever happens."""

    def __init__(self, method: str, directory: str):
        self.ctx = multiprocessing.get_context(method)
        self.directory = directory
        os.makedirs(directory, exist_ok=True)
        self.procs: list = []
        self.outs: list[str] = []

    def Event(self) -> "FileFlag":
        return FileFlag(os.path.join(self.directory, f"flag{next(_flag_ids)}.{os.getpid()}"))

    def start(self, target, *args):
        out = os.path.join(self.directory, f"worker{len(self.procs)}.{os.getpid()}.{time.monotonic_ns()}.pickle")
        proc = self.ctx.Process(target=_run, args=(target, out, args), daemon=True)
        proc.start()
        self.procs.append(proc)
        self.outs.append(out)
        return proc

    def result(self, proc, timeout: float = 30.0):
        """Join one worker within ``timeout`` and return its value (its traceback fails the test)."""
        proc.join(timeout)
        assert not proc.is_alive(), f"worker {proc.pid} still runs after {timeout} s"
        out = self.outs[self.procs.index(proc)]
        assert os.path.exists(out), f"worker {proc.pid} died without a result (exit code {proc.exitcode})"
        with open(out, "rb") as f:
            status, value = pickle.load(f)
        assert status == "ok", f"worker {proc.pid} failed:\n{value}"
        assert proc.exitcode == 0, proc.exitcode
        return value

    def results(self, timeout: float = 30.0) -> list:
        deadline = time.monotonic() + timeout
        return [self.result(p, max(0.0, deadline - time.monotonic())) for p in self.procs]

    def __enter__(self) -> "Workers":
        return self

    def __exit__(self, *exc) -> None:
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()
        for proc in self.procs:
            proc.join(10)


# ----------------------------------------------------------------------------- workers

def produce(client, topic: str, tag: int, n_entries: int, seed: int, max_batch: int = 20,
            max_pad: int = 300, go=None) -> list[tuple[int, int, int]]:
    """Append ``n_entries`` entries (singles and batches mixed); return (first_offset, count, first_seq)
    for every call, as the calls returned them."""
    rng = random.Random(seed)
    if go is not None:
        assert go.wait(30), "never told to go"
    calls = []
    seq = 0
    while seq < n_entries:
        if rng.random() < 0.5:
            offset = client.append(topic, payload(tag, seq, rng.randrange(max_pad)))
            assert isinstance(offset, int)
            calls.append((offset, 1, seq))
            seq += 1
        else:
            k = min(rng.randint(1, max_batch), n_entries - seq)
            offsets = client.batch_append(topic, [payload(tag, seq + i, rng.randrange(max_pad)) for i in range(k)])
            assert isinstance(offsets, range) and offsets.step == 1 and len(offsets) == k, offsets
            calls.append((offsets.start, k, seq))
            seq += k
    return calls


def consume(client, topic: str, group: str, ready, done, seed: int, max_bytes: int = 2000,
            limit: float = 60.0, zero_copy: bool = False) -> list[tuple[int, bytes]]:
    """Read ``topic`` for ``group`` (read_next, batch_read and batch_read_payloads mixed) until
    ``done`` is set and nothing is left; return (offset, data) of every entry received, in the
    order received. ``zero_copy``: every read is, and each view is copied once received."""
    rng = random.Random(seed)
    got = []
    first = client.read_next(topic, group=group, timeout=0.01)  # joins the group before `ready`
    if first is not None:
        got.append((first.offset, bytes(first.data)))
    ready.set()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        way = rng.random()
        if way < 0.4:
            entry = client.read_next(topic, group=group, timeout=0.05, zero_copy=zero_copy)
            entries = [] if entry is None else [entry]
        elif way < 0.7:
            entries = client.batch_read(topic, max_bytes, group=group, timeout=0.05, zero_copy=zero_copy)
        else:
            first, data = client.batch_read_payloads(topic, max_bytes, group=group, timeout=0.05,
                                                     zero_copy=zero_copy)
            entries = [shmwal.Entry(topic, first + i, d) for i, d in enumerate(data)]
        for entry in entries:
            assert entry.topic == topic
            assert (type(entry.data) is memoryview) == zero_copy
            got.append((entry.offset, bytes(entry.data)))
        if not entries and done.is_set():
            return got
    raise AssertionError(f"consumer of {group} not told to stop within {limit} s ({len(got)} entries)")


def wait_for_entry(client, topic: str, group: str, ready):
    """Join ``group``, signal ``ready``, then block in read_next(timeout=None).
    Returns ("entry", monotonic time, offset, data) or ("unavailable", monotonic time)."""
    assert client.read_next(topic, group=group, timeout=0.01) is None
    ready.set()
    try:
        entry = client.read_next(topic, group=group, timeout=None)
    except shmwal.BrokerUnavailable:
        return ("unavailable", time.monotonic())
    return ("entry", time.monotonic(), entry.offset, entry.data)


def use_client(client, topic: str, tag: int, n: int) -> dict:
    """What a worker does with a Client it was given: append, read, introspect."""
    offsets = [client.append(topic, payload(tag, i, 10)) for i in range(n)]
    batch = client.batch_append(topic, [payload(tag, n + i, 3) for i in range(n)])
    entries = client.batch_read(topic, 10**9, group=f"worker{tag}", checkpoint=False)
    return {
        "offsets": offsets,
        "batch": (batch.start, batch.stop),
        "read": [(e.offset, e.data) for e in entries],
        "topics": client.topics(),
        "stats_next": client.stats()["topics"][topic]["next_offset"] >= offsets[-1] + 1,
        "pid": os.getpid(),
    }


def use_pickled_client(blob: bytes, topic: str, tag: int, n: int) -> dict:
    """``use_client`` with a Client that reached this process as pickled bytes."""
    client = pickle.loads(blob)
    assert isinstance(client, shmwal.Client)
    try:
        return use_client(client, topic, tag, n)
    finally:
        client.close()


def append_until_unavailable(client, topic: str, tag: int, limit: float = 30.0) -> dict:
    """Append (singles and batches) until the broker goes away; return every call that returned
    and when BrokerUnavailable was first raised."""
    rng = random.Random(tag)
    calls = []
    seq = 0
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            if rng.random() < 0.5:
                data = payload(tag, seq, rng.randrange(200))
                calls.append((client.append(topic, data), 1, seq))
                seq += 1
            else:
                k = rng.randint(2, 15)
                r = client.batch_append(topic, [payload(tag, seq + i, rng.randrange(200)) for i in range(k)])
                assert len(r) == k
                calls.append((r.start, k, seq))
                seq += k
        except shmwal.BrokerUnavailable:
            return {"calls": calls, "unavailable_at": time.monotonic()}
    raise AssertionError("the broker never became unavailable")


def connect(broker, **kw):
    """A client of ``broker``'s data directory and key."""
    return shmwal.connect(broker.data_dir, key=broker.key, **kw)


def read_all(client, topic, group="check", max_bytes=10**9):
    """Every entry from the group's cursor on, through checkpointed batch reads."""
    out = []
    while True:
        batch = client.batch_read(topic, max_bytes, group=group)
        if not batch:
            return out
        out.extend(batch)
