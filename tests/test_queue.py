"""shmwal.Queue against multiprocessing.Queue's behaviours.

The queue cases port what CPython's Lib/test/_test_multiprocessing.py checks of
``multiprocessing.Queue`` (_TestQueue: test_put, test_get, test_fork, test_qsize,
test_timeout, test_closed_queue_put_get_exceptions, and the many-producer /
many-consumer pattern of its examples), with real processes under every start
method, plus objects with large buffers.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import multiprocessing.forkserver
import os
import pickle
import queue
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import shmwal
from shmwal import objects
from shmwal.client.hot import native
from conftest import ipc_leftovers, wait_until
from drill_helpers import flip_byte, locate_entries
from helpers import Workers, no_resource_tracker_left  # noqa: F401  (an autouse fixture)
import queue_workers as W

METHODS = ("fork", "spawn", "forkserver")


@pytest.fixture(autouse=True)
def no_forkserver_left():
    yield
    multiprocessing.forkserver._forkserver._stop()


@pytest.fixture
def make_queue(broker):
    """Queues on the test's broker (a running broker is used as it is)."""
    made = []

    def make(name="q", maxsize=0, **kw):
        q = shmwal.Queue(name, maxsize, data_dir=broker.data_dir, **kw)
        made.append(q)
        return q

    yield make
    for q in made:
        q.close()


# ------------------------------------------------------------------ single process

def test_put_on_a_full_queue_raises_full_and_a_getter_in_another_process_gets_all(make_queue, tmp_path):
    q = make_queue(maxsize=6)
    q.put(1)
    q.put(2, True)
    q.put(3, True, None)
    q.put(4, False)
    q.put(5, False, None)
    q.put_nowait(6)
    assert (q.empty(), q.full(), q.qsize()) == (False, True, 6)
    for call in (lambda: q.put(7, False), lambda: q.put(7, False, None), lambda: q.put_nowait(7),
                 lambda: q.put(7, False, 10)):
        with pytest.raises(queue.Full):
            call()
    started = time.monotonic()
    with pytest.raises(queue.Full):
        q.put(7, True, 0.2)
    assert time.monotonic() - started >= 0.2   # it waited out its timeout (a lower bound only)
    out = make_queue("out")
    workers = Workers("spawn", str(tmp_path / "w"))
    workers.result(workers.start(W.get_n_into, q, 6, out), 60)
    assert out.get(timeout=10) == [1, 2, 3, 4, 5, 6]
    assert (q.empty(), q.full(), q.qsize()) == (True, False, 0)


def test_get_variants_and_empty(make_queue, tmp_path):
    q = make_queue()
    workers = Workers("spawn", str(tmp_path / "w"))
    workers.result(workers.start(W.put_range, q, 1, 6), 60)
    assert q.qsize() == 5
    assert q.get() == 1
    assert q.get(True) == 2
    assert q.get(True, None) == 3
    assert q.get(False) == 4
    assert q.get_nowait() == 5
    assert q.empty()
    for call in (lambda: q.get(False), lambda: q.get(False, None), lambda: q.get_nowait(),
                 lambda: q.get(False, 10)):
        with pytest.raises(queue.Empty):
            call()
    started = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(True, 0.2)
    assert time.monotonic() - started >= 0.2
    with pytest.raises(queue.Empty):
        q.get(True, -1)   # as multiprocessing: a negative timeout waits no time
    q.put("x", True, 10**400)   # huge: for ever (timeouts.py), not an OverflowError
    assert q.get(True, float("inf")) == "x"


def test_qsize_counts_put_minus_got(make_queue):
    q = make_queue()
    assert q.qsize() == 0
    q.put(1)
    assert q.qsize() == 1
    q.put(5)
    assert q.qsize() == 2
    assert q.get() == 1
    assert q.qsize() == 1
    assert q.get() == 5
    assert q.qsize() == 0


def test_unbounded_queue_is_never_full(make_queue):
    q = make_queue(maxsize=0)
    for i in range(3000):
        q.put_nowait(i)
    assert not q.full() and q.qsize() == 3000


def test_closed_queue_refuses_put_and_get_and_join_thread_needs_close(make_queue):
    q = make_queue()
    q.put(1)
    with pytest.raises(AssertionError):
        q.join_thread()
    q.close()
    with pytest.raises(ValueError, match="is closed"):
        q.put("foo")
    with pytest.raises(ValueError, match="is closed"):
        q.get()
    q.join_thread()
    q.cancel_join_thread()
    assert make_queue().get(timeout=5) == 1   # the items stay; only that object is closed


def test_bad_arguments_raise_typed_errors(make_queue):
    with pytest.raises(shmwal.InvalidTopic):
        make_queue("../etc")
    with pytest.raises(shmwal.InvalidTopic):
        make_queue("ok", group="a/b")
    with pytest.raises(TypeError):
        make_queue("ok", maxsize="3")
    q = make_queue()
    with pytest.raises(TypeError):
        q.get(True, "1")
    with pytest.raises(TypeError):
        q.put(1, True, "1")
    with pytest.raises(ValueError):
        q.put(1, True, float("nan"))
    with pytest.raises(TypeError, match="pickle"):
        q.put(threading.Lock())   # pickle's own error, at put (not later in a feeder thread)
    assert q.qsize() == 0   # nothing was written by the calls that raised
    # A bad timeout raises before anything is read, also with items there and get's fast
    # path ready (after a get).
    for i in range(3):
        q.put(i)
    assert q.get(timeout=5) == 0
    with pytest.raises(TypeError):
        q.get(True, "1")
    with pytest.raises(ValueError):
        q.get(True, float("nan"))
    assert q.qsize() == 2 and q.get(timeout=5) == 1 and q.get(False) == 2


def test_fifo_and_groups_each_see_everything(make_queue):
    a, b = make_queue(group="a"), make_queue(group="b")
    items = [{"n": i, "s": "x" * (i % 7)} for i in range(500)]
    for item in items:
        a.put(item)
    assert [a.get(timeout=5) for _ in items] == items
    assert [b.get(timeout=5) for _ in items] == items   # another group: publish/subscribe


@pytest.mark.parametrize("obj", [
    np.arange(12, dtype=np.int32).reshape(3, 4),
    np.asfortranarray(np.arange(12.0).reshape(3, 4)),
    np.zeros((0, 5), dtype=np.uint8),
    np.arange(2**18, dtype=np.float64),                       # 2 MiB, zero-copy read on the way out
    np.array([(1, 2.5), (3, 4.5)], dtype=[("a", "<i4"), ("b", "<f8")]),
    b"\x00\xff" * (2**17),                                    # a large top-level bytes
    bytearray(b"abc") * 100_000,
    {"arrays": [np.ones((64, 64)), np.full(7, 3, dtype=np.int8)], "blob": b"z" * 200_000},
])
def test_objects_with_large_buffers_round_trip_with_type_dtype_and_shape(make_queue, obj):
    q = make_queue()
    q.put(obj)
    q.put("after")   # the next item after a large one still reads right
    got = q.get(timeout=5)
    assert q.get(timeout=5) == "after"
    assert type(got) is type(obj)
    if isinstance(obj, np.ndarray):
        assert (got.dtype, got.shape) == (obj.dtype, obj.shape)
        assert np.array_equal(got, obj)
        assert got.flags.writeable and got.flags.f_contiguous == obj.flags.f_contiguous
        got[...] = 0 if got.dtype.names is None else got   # owns writable memory
    elif isinstance(obj, dict):
        assert [a.tolist() for a in got["arrays"]] == [a.tolist() for a in obj["arrays"]]
        assert got["arrays"][1].dtype == np.int8 and got["blob"] == obj["blob"]
    else:
        assert got == obj


@pytest.fixture
def big_queue(start_broker):
    """Queues on a broker of 8 MiB blocks: the compiled get serves a large item only from the
    block it read last (its own block, with the broker fixture's 64 KiB ones), and the tests
    that take this are about it."""
    broker = start_broker(block_size=8 << 20)
    made = []

    def make(name="q"):
        made.append(shmwal.Queue(name, data_dir=broker.data_dir, key=broker.key))
        return made[-1]

    make.broker = broker
    yield make
    for q in made:
        q.close()


def test_arrays_after_a_large_item_are_aligned_writable_and_apart(big_queue):
    """A large item's buffers come back in memory of their own, each ALIGN-aligned within the
    entry ("A" items): the compiled get hands out slices of one bytearray it copied the entry
    into (hot.c next_writable), the pure one copies each buffer; either way numpy sees
    aligned, writable arrays that share nothing with the mapped block or with each other."""
    q = big_queue()
    odd = np.arange(13, dtype=np.uint8)          # a buffer whose length leaves the next unaligned
    for seq in range(3):                          # the first get goes the long way, the rest hot
        q.put({"seq": seq, "a": np.full(2**17, seq, dtype=np.float64), "odd": odd,
               "c": np.arange(1000, dtype=np.complex128)})
    for seq in range(3):
        got = q.get(timeout=5)
        assert got["seq"] == seq
        for name in ("a", "odd", "c"):
            arr = got[name]
            assert arr.flags.aligned and arr.flags.writeable, (seq, name)
            assert arr.ctypes.data % 16 == 0, (seq, name, arr.ctypes.data % 64)
        assert np.array_equal(got["a"], np.full(2**17, seq, dtype=np.float64))
        assert np.array_equal(got["odd"], odd) and np.array_equal(got["c"], np.arange(1000, dtype=np.complex128))
        got["a"][:] = -1                           # writing one array leaves the others alone
        assert np.array_equal(got["odd"], odd) and got["c"][999] == 999


@pytest.mark.timeout(60)
def test_a_getter_waiting_after_a_large_item_takes_the_next_in_one_pass(big_queue):
    """After a large item, a get that has to wait takes what comes through hot.c's one pass
    (copied and checked together), not the long way's zero-copy read and copy (two passes);
    its timeout holds."""
    q = big_queue()
    first = np.arange(2**17, dtype=np.uint64)
    q.put(first)
    assert np.array_equal(q.get(timeout=5), first)   # the long way, once: get now expects large items
    client = q._client
    long_way = []
    read_next = client.read_next
    client.read_next = lambda *args, **kwargs: long_way.append(kwargs) or read_next(*args, **kwargs)
    try:
        for k in range(3):
            putter = multiprocessing.get_context("fork").Process(target=W.put_later, args=(q, first * (k + 2), 0.2))
            putter.start()
            got = q.get(timeout=30)
            putter.join(10)
            assert putter.exitcode == 0
            assert np.array_equal(got, first * (k + 2)) and got.flags.writeable
        started = time.monotonic()
        with pytest.raises(queue.Empty):
            q.get(timeout=0.3)
        assert 0.3 <= time.monotonic() - started < 5
        if native is not None:   # the pure path has no one-pass read: it goes the long way
            assert long_way == []
        with pytest.raises(queue.Empty):
            q.get(block=False)
    finally:
        del client.read_next


def test_items_written_before_aligned_buffers_still_come_back(big_queue):
    """"B" items (buffers back to back, as the queue wrote them before "A"): still read, by
    the long get and by the compiled one after a large item."""
    q = big_queue("legacy")
    arrays = [np.arange(2**16, dtype=np.int64) * k for k in (1, 2, 3)]
    with shmwal.connect(big_queue.broker.data_dir, key=big_queue.broker.key) as client:
        for a in arrays:
            buffers = []
            stream = pickle.dumps(a, protocol=5, buffer_callback=buffers.append)
            raw = buffers[0].raw()
            head = objects.HEAD.pack(objects.TAG_BUFFERS, 1, len(stream)) + raw.nbytes.to_bytes(8, "little")
            client.append("legacy", head + stream + bytes(raw))
    for a in arrays:
        got = q.get(timeout=5)
        assert got.dtype == a.dtype and np.array_equal(got, a) and got.flags.writeable


def test_a_damaged_large_item_raises_corrupt_entry_and_stays(big_queue):
    """The compiled get after a large item checks the checksum as it copies: a damaged item
    is not handed out, get raises CorruptEntry at its offset, and the cursor stays on it."""
    q = big_queue("damaged")
    items = [np.full(2**17, k, dtype=np.uint64) for k in range(3)]
    for item in items:
        q.put(item)
    for item in items[:2]:   # the second get is the first the compiled reader can serve
        assert np.array_equal(q.get(timeout=5), item)
    (loc,) = [e for e in locate_entries(big_queue.broker.root, "damaged") if e.offset == 2]
    flip_byte(loc.path, loc.payload_pos + loc.length // 2)
    for _ in range(2):
        with pytest.raises(shmwal.CorruptEntry) as info:
            q.get(timeout=5)
        assert (info.value.topic, info.value.offset) == ("damaged", 2)
    assert q.qsize() == 1


def _mixed_item(i: int):
    """Items of every shape objects.py writes, in an order that moves get between its
    fast path (small pickles) and the long one (after a large item: zero-copy)."""
    kind = i % 6
    if kind == 0:
        return {"i": i, "name": "small", "tags": ["a", "b"]}
    if kind == 1:
        return np.full(2**17, i, dtype=np.uint64)             # 1 MiB out of band
    if kind == 2:
        return b"%d" % i                                      # a small bytes (a pickle)
    if kind == 3:
        return bytes([i % 256]) * (2**16 + i)                 # a large top-level bytes ("R")
    if kind == 4:
        return list(range(i, i + 20_000))                     # a pickle of more than 64 KiB
    return f"item {i}"


def _same(got, want) -> bool:
    if isinstance(want, np.ndarray):
        return type(got) is np.ndarray and got.dtype == want.dtype and np.array_equal(got, want)
    return type(got) is type(want) and got == want


def test_a_mix_of_small_and_large_items_comes_back_exact_and_in_order(make_queue):
    q = make_queue()
    for i in range(60):            # all put, then all got
        q.put(_mixed_item(i))
    bad = [i for i in range(60) if not _same(q.get(timeout=5), _mixed_item(i))]
    for i in range(60, 120):       # each got as soon as it was put
        q.put(_mixed_item(i))
        if not _same(q.get(timeout=5), _mixed_item(i)):
            bad.append(i)
    assert bad == []
    with pytest.raises(queue.Empty):
        q.get_nowait()


@pytest.mark.timeout(60)
def test_a_queue_carries_on_across_a_killed_and_restarted_broker(start_broker, tmp_path):
    data_dir = str(tmp_path / "restart")
    broker = start_broker(data_dir)
    q = shmwal.Queue("q", data_dir=data_dir)
    try:
        for i in range(10):
            q.put({"n": i})
        assert [q.get(timeout=5)["n"] for _ in range(5)] == [0, 1, 2, 3, 4]
        os.kill(broker.pid, signal.SIGKILL)
        broker.stop()   # reaps the killed process
        got = []
        with pytest.raises(shmwal.BrokerUnavailable):
            for _ in range(100):
                # Until its watcher thread sees the death, the client reads on through the
                # mapped files (no broker on the data path): those items count too.
                try:
                    got.append(q.get(timeout=0.05)["n"])
                except queue.Empty:
                    pass
                time.sleep(0.05)
        start_broker(data_dir)
        while len(got) < 5:
            got.append(q.get(timeout=5)["n"])
        assert got == [5, 6, 7, 8, 9]
        q.put({"n": 10})
        assert q.get(timeout=5) == {"n": 10}
        with pytest.raises(queue.Empty):
            q.get_nowait()
    finally:
        q.close()


@pytest.mark.timeout(60)
def test_a_queue_writes_to_the_new_broker_after_its_directory_was_made_anew(start_broker, tmp_path):
    """put and get keep the handles their last call used: a client that reconnected to a
    broker on a fresh directory must not let them write into the old, deleted files."""
    data_dir = str(tmp_path / "anew")
    broker = start_broker(data_dir)
    q = shmwal.Queue("q", data_dir=data_dir)
    try:
        for i in range(3):
            q.put(i)
        assert q.get(timeout=5) == 0   # both fast paths now hold the first broker's handles
        broker.stop()
        shutil.rmtree(data_dir)
        start_broker(data_dir)
        with pytest.raises(queue.Empty):
            q.get(timeout=0.2)          # reconnects the Queue's client: its handles are dropped
        q.put("new")
        with shmwal.connect(data_dir) as client:
            entries = client.batch_read("q", 1 << 20, group="check")
        assert [pickle.loads(e.data) for e in entries] == ["new"]
        assert q.get(timeout=5) == "new"
    finally:
        q.close()


def test_a_queue_whose_group_is_deleted_reads_on_as_a_client_would(start_broker, tmp_path):
    broker = start_broker(str(tmp_path / "groups"), retention=shmwal.Retention())   # keeps what was read
    q = shmwal.Queue("q", data_dir=broker.data_dir)
    try:
        for i in range(10):
            q.put(i)
        assert [q.get(timeout=5) for _ in range(3)] == [0, 1, 2]
        with shmwal.connect(broker.data_dir) as client:
            client.delete_group("q", "default")
            assert client.position("q", group="default") == 0   # made again, it starts at the earliest
        assert [q.get(timeout=5) for _ in range(10)] == list(range(10))
        with pytest.raises(queue.Empty):
            q.get_nowait()
    finally:
        q.close()


def test_read_only_array_comes_back_read_only(make_queue):
    q = make_queue()
    a = np.arange(100_000)
    a.flags.writeable = False
    q.put(a)
    got = q.get(timeout=5)
    assert np.array_equal(got, a) and not got.flags.writeable


def test_entry_not_written_by_a_queue_is_a_clear_error(make_queue, broker):
    q = make_queue("foreign")
    with shmwal.connect(broker.data_dir) as client:
        client.append("foreign", b"not a pickle")
    with pytest.raises(pickle.UnpicklingError, match="not a shmwal.Queue item"):
        q.get(timeout=5)


class _Vanishing:
    """Pickled by reference to a module that getters cannot import (see the test below)."""

    def __init__(self, payload):
        self.payload = payload


@pytest.mark.timeout(60)
@pytest.mark.parametrize("big", [b"x" * 10, b"y" * 200_000, np.arange(25_000)],
                         ids=["small-pickle", "large-pickle", "out-of-band-buffers"])
def test_an_item_that_does_not_unpickle_is_handed_over_with_its_error(make_queue, broker, monkeypatch, big):
    """The getter took it (no other getter of the group will get it), so the error carries it:
    its offset and its bytes, which unpickle once the class can be imported again; the queue
    goes on with the next item. Small items go hot.c's next_object, large ones the bytearray
    read, the first of a group the long way: each is checked."""
    q = make_queue("vanish")
    module = type(sys)("shmwal_test_gone_module")
    module._Vanishing = _Vanishing
    monkeypatch.setattr(_Vanishing, "__module__", "shmwal_test_gone_module")
    monkeypatch.setitem(sys.modules, "shmwal_test_gone_module", module)   # importable to the putter
    for i in range(3):
        q.put("first" if i == 0 else _Vanishing((i, big)))
    q.put("after")
    monkeypatch.delitem(sys.modules, "shmwal_test_gone_module")   # and not to the getter
    with shmwal.connect(broker.data_dir) as client:
        client.create_group("vanish", "peek")   # keeps every item for the check below
    assert q.get(timeout=5) == "first"   # the long way; the fast paths from here on
    for offset in (1, 2):
        with pytest.raises(ModuleNotFoundError) as info:
            q.get(timeout=5)
        exc = info.value
        assert exc.shmwal_offset == offset
        assert any("did not unpickle here" in note for note in exc.__notes__)
        with shmwal.connect(broker.data_dir) as client:   # the bytes are the entry's, exactly
            client.seek("vanish", offset, group="peek")
            entry = client.read_next("vanish", group="peek")
            assert (entry.offset, exc.shmwal_item) == (offset, entry.data)
        monkeypatch.setitem(sys.modules, "shmwal_test_gone_module", module)
        again = shmwal.Queue.decode(exc.shmwal_item)
        assert again.payload[0] == offset and np.array_equal(np.asarray(again.payload[1]), np.asarray(big))
        monkeypatch.delitem(sys.modules, "shmwal_test_gone_module")
    assert q.get(timeout=5) == "after"
    assert q.qsize() == 0


@pytest.mark.timeout(60)
def test_a_foreign_entry_is_handed_over_with_its_error(make_queue, broker):
    q = make_queue("foreign2")
    q.put("first")
    assert q.get(timeout=5) == "first"
    with shmwal.connect(broker.data_dir) as client:
        client.append("foreign2", b"\x80\x05garbage")   # pickle's PROTO opcode first: loads tries it
        client.append("foreign2", b"neither")
    q.put("after")
    with pytest.raises(pickle.UnpicklingError) as info:
        q.get(timeout=5)
    assert (info.value.shmwal_offset, info.value.shmwal_item) == (1, b"\x80\x05garbage")
    with pytest.raises(pickle.UnpicklingError, match="not a shmwal.Queue item") as info:
        q.get(timeout=5)
    assert (info.value.shmwal_offset, info.value.shmwal_item) == (2, b"neither")
    assert q.get(timeout=5) == "after"


# ------------------------------------------------------------------ processes

@pytest.mark.parametrize("method", METHODS)
def test_items_put_by_parent_and_child_come_out_in_order(make_queue, tmp_path, method):
    # _TestQueue.test_fork: the parent puts 0..9, a child 10..19, the parent gets 0..19.
    q = make_queue()
    for i in range(10):
        q.put(i)
    workers = Workers(method, str(tmp_path / "w"))
    workers.result(workers.start(W.put_range, q, 10, 20), 60)
    assert [q.get(timeout=5) for _ in range(20)] == list(range(20))
    with pytest.raises(queue.Empty):
        q.get_nowait()


@pytest.mark.parametrize("method", METHODS)
def test_many_producers_and_consumers_each_item_once_in_each_producers_order(make_queue, tmp_path, method):
    q, out = make_queue(), make_queue("out")
    producers, consumers, per = 4, 4, 2500
    workers = Workers(method, str(tmp_path / "w"))
    cons = [workers.start(W.consume_until_none, q, out) for _ in range(consumers)]
    prods = [workers.start(W.put_range, q, 0, per, tag) for tag in range(producers)]
    for p in prods:
        workers.result(p, 120)
    for _ in range(consumers):
        q.put(None)
    for c in cons:
        workers.result(c, 120)
    got = [out.get(timeout=10) for _ in range(consumers)]
    flat = [item for part in got for item in part]
    assert sorted(flat) == sorted((tag, i) for tag in range(producers) for i in range(per))
    for part in got:   # FIFO: each consumer sees each producer's items in put order
        for tag in range(producers):
            seq = [i for t, i in part if t == tag]
            assert seq == sorted(seq)


@pytest.mark.parametrize("method", METHODS)
def test_arrays_through_a_worker_and_back(make_queue, tmp_path, method):
    tasks, results = make_queue("tasks"), make_queue("results")
    workers = Workers(method, str(tmp_path / "w"))
    proc = workers.start(W.echo_arrays, tasks, results)
    sent = [np.random.default_rng(i).random((i + 1, 1000)).astype(dt)
            for i, dt in enumerate([np.float64, np.float32, np.int16, np.uint8, np.int64])]
    sent.append(np.arange(2**17, dtype=np.float64))   # 1 MiB
    for a in sent:
        tasks.put(a)
    tasks.put(None)
    for a in sent:
        back, total = results.get(timeout=60)
        assert (back.dtype, back.shape) == (a.dtype, a.shape) and np.array_equal(back, a)
        assert total == pytest.approx(float(a.sum()) if a.size else 0.0)
        # API.md: writable, in memory of its own, aligned as numpy's own (another process wrote it).
        assert back.flags.writeable and back.flags.aligned and back.ctypes.data % 16 == 0
    workers.result(proc, 60)


@pytest.mark.parametrize("method", METHODS)
def test_queues_as_pool_initializer_arguments(make_queue, method):
    tasks, results = make_queue("tasks"), make_queue("results")
    for n in range(40):
        tasks.put(n)
    ctx = multiprocessing.get_context(method)
    with ctx.Pool(2, initializer=W.init_queues, initargs=(tasks, results)) as pool:
        pids = pool.map(W.square_from_initializer_queues, [10, 10, 10, 10], chunksize=1)
        pool.close()
        pool.join()
    assert len(pids) == 4
    assert sorted(results.get(timeout=10) for _ in range(40)) == [n * n for n in range(40)]
    assert results.empty()


@pytest.mark.parametrize("method", METHODS)
def test_queues_as_process_pool_executor_task_arguments(make_queue, method):
    # multiprocessing.Queue cannot be a task argument at all ("Queue objects should only be
    # shared between processes through inheritance"); shmwal.Queue pickles to its address.
    q_in, q_out = make_queue("in"), make_queue("out")
    for n in range(20):
        q_in.put(n)
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=multiprocessing.get_context(method)) as pool:
        taken = list(pool.map(W.square_task, [q_in] * 20, [q_out] * 20))
    assert sorted(taken) == list(range(20))
    assert sorted(q_out.get(timeout=10) for _ in range(20)) == [n * n for n in range(20)]


def test_worker_killed_holding_an_item_loses_only_that_item(make_queue, tmp_path):
    """A getter SIGKILLed at any point: the others go on; every item it had not taken is processed.

    StrictlyAtOnce (and AtLeastOnce alike: a dead reader's cursor moves are already in the
    shared meta file): the item the killed worker had taken is not delivered again.
    """
    tasks, results = make_queue("tasks"), make_queue("results")
    workers = Workers("spawn", str(tmp_path / "w"))
    procs = [workers.start(W.hold_then_sleep, tasks, results) for _ in range(3)]
    for i in range(300):
        tasks.put(i)
    tasks.put(-1)
    for i in range(300, 600):
        tasks.put(i)
    seen = []
    while True:
        kind, value = results.get(timeout=60)
        if kind == "holding":
            os.kill(value, signal.SIGKILL)
            break
        seen.append(value)
    for _ in range(2):
        tasks.put(None)
    byes = 0
    while byes < 2:
        kind, value = results.get(timeout=60)
        if kind == "bye":
            byes += 1
        else:
            assert kind == "done"
            seen.append(value)
    assert sorted(seen) == list(range(600))   # each once; only -1, held by the dead worker, is gone
    for p in procs:
        p.join(30)
    assert sorted(p.exitcode for p in procs) == [-signal.SIGKILL, 0, 0]
    assert tasks.qsize() == 0
    tasks.put("still works")
    assert tasks.get(timeout=5) == "still works"


PARENT_ONLY_MODULE = """
class Thing:
    def __init__(self, payload):
        self.payload = payload

    def __eq__(self, other):
        return type(other) is Thing and other.payload == self.payload
"""


@pytest.mark.timeout(120)
def test_a_worker_that_cannot_import_an_items_class_hands_the_item_back(make_queue, tmp_path, monkeypatch):
    """API.md: an item a getter took but cannot unpickle (its class does not import in the
    worker) raises there carrying its offset and bytes; no other getter gets it; the queue
    goes on. The class lives in a module only the parent imported (its file gone before the
    spawned worker starts); items small (hot.c's next_object) and large (the bytearray read)."""
    (tmp_path / "shmwal_parent_only.py").write_text(PARENT_ONLY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    import shmwal_parent_only
    monkeypatch.setitem(sys.modules, "shmwal_parent_only", shmwal_parent_only)
    q = make_queue("parent-only")
    items = ["first", shmwal_parent_only.Thing(b"s" * 10), shmwal_parent_only.Thing(b"L" * 200_000), "after"]
    for item in items:
        q.put(item)
    (tmp_path / "shmwal_parent_only.py").unlink()
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    workers = Workers("spawn", str(tmp_path / "w"))
    proc = workers.start(W.get_reporting_what_does_not_unpickle, q, 4)
    got = workers.result(proc, timeout=90)
    assert [g[0] for g in got] == ["item", "ModuleNotFoundError", "ModuleNotFoundError", "item"]
    assert (got[0][1], got[3][1]) == ("first", "after")
    for offset in (1, 2):
        _, carried_offset, item_bytes = got[offset]
        assert carried_offset == offset
        assert shmwal.Queue.decode(item_bytes) == items[offset]   # the parent can import the class
    assert q.qsize() == 0   # taken: nothing left for another getter of the group
    with pytest.raises(queue.Empty):
        q.get(timeout=0.2)


# ------------------------------------------------------------------ the embedded broker

EMBEDDED = textwrap.dedent("""
    import multiprocessing, os, sys
    import numpy as np
    import shmwal
    from shmwal.ipc import names

    def square(q_in, q_out):
        q_out.put(q_in.get(timeout=30) ** 2)

    if __name__ == "__main__":
        multiprocessing.set_start_method(sys.argv[1])
        q_in, q_out = shmwal.Queue("in"), shmwal.Queue("out")
        procs = [multiprocessing.Process(target=square, args=(q_in, q_out)) for _ in range(3)]
        for p in procs:
            p.start()
        for n in (2, 3, 4):
            q_in.put(np.int64(n))
        print(sorted(int(q_out.get(timeout=30)) for _ in range(3)))
        for p in procs:
            p.join()
        client = shmwal.connect(q_in.data_dir)
        print(q_in.data_dir, client.broker_pid, names.ipc_prefix(os.path.join(q_in.data_dir, "default")))
        client.close()
""")


@pytest.mark.parametrize("method", METHODS)
def test_first_queue_starts_a_broker_that_goes_with_its_process_and_its_files(tmp_path, method):
    script = tmp_path / "embedded.py"
    script.write_text(EMBEDDED)
    env = {k: v for k, v in os.environ.items() if k != "SHMWAL_DATA_DIR"}
    done = subprocess.run([sys.executable, str(script), method], capture_output=True, text=True,
                          timeout=90, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()
    assert first == "[4, 9, 16]"
    data_dir, broker_pid, prefix = second.split()
    assert not os.path.exists(data_dir)                                   # its temporary files went
    assert wait_until(lambda: not _alive(int(broker_pid)), 10)            # and its broker
    assert not [n for n in os.listdir("/dev/shm") if prefix.lstrip("/") in n]


def test_queue_with_a_data_dir_uses_the_running_broker_and_keeps_its_files(broker, make_queue):
    q = make_queue()
    q.put("kept")
    assert shmwal.connect(broker.data_dir).broker_pid == broker.pid
    assert not ipc_leftovers("/nonexistent")
    assert make_queue(group="another").get(timeout=5) == "kept"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
