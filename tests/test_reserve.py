"""client.reserve(topic, nbytes): zero-copy writes (API.md "Zero-copy writes", issue 13).

The contract on one client, bad input, other writers waiting in other processes, and
SIGKILL drills with real processes killed inside the ``with`` block, on the compiled
and the pure-Python path (child processes run both; the whole file also runs under
SHMWAL_PURE_PYTHON=1 in .ci/run).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest

import shmwal
from shmwal.blocks import layout as L
from drill_helpers import (Deadline, MetaView, decode_payload, kill_inside_lock, meta_path,
                           payloads_digest, poll, read_report, report_size)
from helpers import connect, read_all

HERE = os.path.dirname(os.path.abspath(__file__))
BLOCK = 64 * 1024   # the start_broker fixture's block size


def _next_offset(client, topic):
    return client.stats()["topics"].get(topic, {}).get("next_offset", 0)


# ----------------------------------------------------------------------------- contract

def test_reserve_publishes_when_the_block_ends(client):
    client.append("t", b"before")
    with client.reserve("t", 10) as slot:
        assert slot.offset is None
        assert isinstance(slot.buffer, memoryview) and not slot.buffer.readonly
        assert slot.buffer.nbytes == 10
        slot.buffer[:] = b"0123456789"
        assert client.read_next("t", group="peek", checkpoint=False).offset == 0
        assert client.batch_read("t", 1 << 20, group="seen") == [shmwal.Entry("t", 0, b"before")]
    assert slot.offset == 1
    with pytest.raises(ValueError):
        slot.buffer[0]
    with pytest.raises(ValueError):
        slot.buffer[0] = 1
    assert client.batch_read("t", 1 << 20, group="seen") == [shmwal.Entry("t", 1, b"0123456789")]
    assert client.append("t", b"after") == 2


def test_reserve_that_raises_publishes_nothing_and_keeps_offsets_gapless(client):
    client.append("t", b"a")
    with pytest.raises(KeyError):
        with client.reserve("t", 100) as slot:
            slot.buffer[:] = b"x" * 100
            raise KeyError("no")
    assert slot.offset is None
    with pytest.raises(ValueError):
        slot.buffer[0]
    assert client.batch_read("t", 1 << 20, group="g", timeout=0) == [shmwal.Entry("t", 0, b"a")]
    assert client.append("t", b"b") == 1
    with client.reserve("t", 1) as slot:
        slot.buffer[0] = 0x63
    assert slot.offset == 2
    assert [(e.offset, e.data) for e in read_all(client, "t")] == [(0, b"a"), (1, b"b"), (2, b"c")]


@pytest.mark.parametrize("sizes", [
    [0],                                      # an empty entry
    [BLOCK - 400, 300, BLOCK - 1000],        # larger than what remains of the block
    [5 * BLOCK, 17, 3 * BLOCK + 5],          # jumbo: larger than a block
], ids=["empty", "next-block", "jumbo"])
def test_reserve_sizes(client, sizes):
    written = []
    for i, n in enumerate(sizes):
        payload = bytes([(i * 7 + k) % 251 for k in range(min(n, 251))]) * (n // 251 + 1)
        payload = payload[:n]
        with client.reserve("t", n) as slot:
            slot.buffer[:] = payload
        assert slot.offset == i
        written.append(payload)
    assert [e.data for e in read_all(client, "t")] == written


def test_reserve_an_entry_a_new_topic_starts_with(client):
    assert "fresh" not in client.topics()
    with client.reserve("fresh", 3) as slot:
        slot.buffer[:] = b"abc"
    assert "fresh" in client.topics()
    assert client.read_next("fresh") == shmwal.Entry("fresh", 0, b"abc")


def test_reserve_aborted_after_moving_to_a_new_block(client):
    client.append("t", b"x" * (BLOCK - 2000))
    with pytest.raises(RuntimeError):
        with client.reserve("t", 5000) as slot:   # does not fit the first block
            slot.buffer[:] = b"y" * 5000
            raise RuntimeError
    assert client.append("t", b"z" * 10) == 1
    with client.reserve("t", 4 * BLOCK) as slot:
        slot.buffer[:] = b"w" * (4 * BLOCK)
    assert slot.offset == 2
    assert [(e.offset, len(e.data), e.data[:1]) for e in read_all(client, "t")] == \
        [(0, BLOCK - 2000, b"x"), (1, 10, b"z"), (2, 4 * BLOCK, b"w")]


@pytest.mark.parametrize("then", ["reserve", "append", "batch_append"])
def test_the_first_reserve_of_a_topic_aborted_leaves_it_writable(client, then):
    """The abort sends the tail back to 'no block': the next write of any kind gets a block,
    (once a stale limit let it write into the old one at the file's start and then crash)."""
    with pytest.raises(RuntimeError):
        with client.reserve("t", 434) as slot:
            raise RuntimeError
    if then == "reserve":
        with client.reserve("t", 1) as slot:
            slot.buffer[:] = b"x"
        assert slot.offset == 0
    elif then == "append":
        assert client.append("t", b"x") == 0
    else:
        assert client.batch_append("t", [b"x"]) == range(0, 1)
    assert [(e.offset, e.data) for e in read_all(client, "t")] == [(0, b"x")]
    assert client.stats()["topics"]["t"]["damaged"] == 0
    assert "t" in client.topics()


def test_numpy_arrays_in_and_out_without_copies(client):
    """numpy.frombuffer over slot.buffer to write, and over a zero-copy read's data to read."""
    values = np.arange(1000, dtype="<f8") * 1.5
    with client.reserve("arrays", values.nbytes) as slot:
        np.frombuffer(slot.buffer, dtype="<f8")[:] = values
    (entry,) = client.batch_read("arrays", 1 << 20, zero_copy=True)
    assert isinstance(entry.data, memoryview) and entry.data.readonly
    back = np.frombuffer(entry.data, dtype="<f8")
    assert not back.flags.writeable and not back.flags.owndata
    np.testing.assert_array_equal(back, values)
    matrix = np.arange(12, dtype=np.int32).reshape(3, 4)
    with client.reserve("arrays", matrix.nbytes) as slot:
        np.frombuffer(slot.buffer, dtype=np.int32).reshape(3, 4)[:] = matrix
    entry = client.read_next("arrays", zero_copy=True)
    np.testing.assert_array_equal(np.frombuffer(entry.data, dtype=np.int32).reshape(3, 4), matrix)
    assert client.read_next("arrays", group="copies", checkpoint=False).data == values.tobytes()


def _pieces(data: bytes, cuts) -> list:
    """``data`` cut at ``cuts``, as bytes, bytearray, memoryview and numpy parts in turn."""
    bounds = [0, *sorted(cuts), len(data)]
    kinds = (bytes, bytearray, memoryview, lambda b: np.frombuffer(b, dtype=np.uint8))
    return [kinds[i % 4](data[a:b]) for i, (a, b) in enumerate(zip(bounds, bounds[1:]))]


@pytest.mark.parametrize("size, cuts", [
    (0, []), (1, []), (10, [3, 3, 7]), (5000, [1, 4097]), ((32 << 10) - 1, [9]),
    # From hot.c's STREAM_MIN (32 KiB): streaming stores, the head copied up to 16-byte alignment.
    (32 << 10, []), ((32 << 10) + 21, [16, (32 << 10) + 1]),
    ((1 << 20) + 13, [7, 100]), ((1 << 20) + 13, [(1 << 20) + 5]), (3 << 20, [1, 2, 3, 8192 * 5 + 1]),
])
def test_fill_writes_the_parts_back_to_back(start_broker, size, cuts, copy_kernel):
    broker = start_broker(block_size=8 << 20)
    data = random.Random(size).randbytes(size)
    with connect(broker) as client:
        client.create_group("t", "pure")   # read by the other path below: it holds every block
        client.append("t", b"x" * 3)   # the next payload starts 8-aligned, not 16-aligned
        with client.reserve("t", size) as slot:
            slot.fill(_pieces(data, cuts))
            with pytest.raises(ValueError):
                slot.buffer[:0]   # released: nothing writes past the checksum fill took
        assert slot.offset == 1
        with client.reserve("t", size) as again:   # the same again, in place in the block
            again.fill(_pieces(data, cuts))
        assert again.offset == 2
        got = [(e.offset, e.data) for e in read_all(client, "t")]
        assert got == [(0, b"xxx"), (1, data), (2, data)]
        # The other path checks the checksums fill took (xxhash in Python): same entries.
        out = subprocess.run([sys.executable, "-c", PURE_READ, broker.data_dir, broker.key or ""], capture_output=True, timeout=60,
                             env={**os.environ, "SHMWAL_PURE_PYTHON": "1"})
        assert out.returncode == 0, out.stderr.decode()
        assert out.stdout.decode().split() == ["0", "3", "1", str(size), "2", str(size), str(zlib.crc32(data))]


PURE_READ = """
import sys, zlib, shmwal
with shmwal.connect(sys.argv[1], key=sys.argv[2] or None) as c:
    got = c.batch_read("t", 1 << 30, group="pure")
    print(*[f"{e.offset} {len(e.data)}" for e in got], zlib.crc32(got[-1].data))
"""


def test_fill_refuses_bad_parts_and_changes_nothing(client):
    client.append("t", b"a")
    with client.reserve("t", 6) as slot:
        with pytest.raises(TypeError):
            slot.fill(b"abcdef")   # not a list of parts
        with pytest.raises(TypeError):
            slot.fill(part for part in (b"abc", b"def"))   # a list or a tuple, not any iterable
        with pytest.raises(TypeError):
            slot.fill([b"abc", 123])
        with pytest.raises(TypeError):
            slot.fill([b"abc", np.arange(6, dtype=np.uint8)[::2]])   # not contiguous
        released = memoryview(b"def")
        released.release()
        with pytest.raises(TypeError):
            slot.fill([b"abc", released])
        with pytest.raises(ValueError):
            slot.fill([b"abc", b"de"])   # 5 bytes for 6
        slot.buffer[:] = b"zzzzzz"   # still open and writable after each refusal
        slot.fill([b"abc", np.zeros((0, 3)), np.array(ord("d"), dtype=np.uint8), b"ef"])   # empty, 0-d
        with pytest.raises(RuntimeError):
            slot.fill([b"abc", b"def"])   # once
    with pytest.raises(RuntimeError):
        slot.fill([b"abc", b"def"])   # after the block
    with client.reserve("t", 3) as kept:
        kept.fill([b"xyz"])
    with pytest.raises(KeyError):
        with client.reserve("t", 2) as dropped:   # an exception discards: fill published nothing
            dropped.fill([b"no"])
            raise KeyError
    assert [e.data for e in read_all(client, "t")] == [b"a", b"abcdef", b"xyz"]


def test_fill_of_an_entry_that_opens_a_new_block(client):
    """The general path (a slot whose entry needs the next block) fills as the fast one does."""
    client.append("t", b"a" * (BLOCK - 2000))
    data = random.Random(7).randbytes(5000)
    with client.reserve("t", len(data)) as slot:
        slot.fill([data[:100], data[100:]])
    assert [e.data for e in read_all(client, "t")] == [b"a" * (BLOCK - 2000), data]


def test_a_slot_is_entered_once(client):
    slot = client.reserve("t", 4)
    with slot:
        slot.buffer[:] = b"abcd"
    with pytest.raises(RuntimeError):
        with slot:
            pass
    assert slot.offset == 0
    assert _next_offset(client, "t") == 1


def test_another_append_of_the_same_thread_inside_the_block_fails_and_does_not_hang(client):
    with client.reserve("t", 2) as slot:
        slot.buffer[:] = b"ok"
        with pytest.raises(shmwal.ShmwalError):
            client.append("t", b"inner")
        with pytest.raises(shmwal.ShmwalError):
            client.batch_append("t", [b"inner"])
    assert slot.offset == 0
    assert [e.data for e in read_all(client, "t")] == [b"ok"]


def test_a_writer_thread_of_the_same_process_waits_for_the_block(client):
    """Another thread's append waits (with the GIL released, or the block could never end)
    and lands after the reserved entry."""
    client.append("t", b"first")
    got = []
    with client.reserve("t", 3) as slot:
        writer = threading.Thread(target=lambda: got.append(client.append("t", b"third")))
        writer.start()
        writer.join(0.3)
        assert writer.is_alive() and got == []   # still waiting for the block
        slot.buffer[:] = b"two"
    writer.join(30)
    assert not writer.is_alive()
    assert slot.offset == 1 and got == [2]
    assert [(e.offset, e.data) for e in read_all(client, "t")] == [(0, b"first"), (1, b"two"), (2, b"third")]


def test_threads_of_one_process_reserve_and_append_one_topic(client):
    """Slots and appends from four threads, across many blocks (the slot's block moves happen
    while other threads wait for the mutex with the GIL released): every published entry at
    its offset, offsets gapless, nothing of a discarded slot."""
    written, lock = {}, threading.Lock()

    def work(seed):
        rng = random.Random(seed)
        for _ in range(400):
            data = rng.randbytes(rng.choice([0, 10, 500, 5000, 30000, BLOCK + 100]))
            if rng.random() < 0.5:
                offset = client.append("t", data)
            else:
                try:
                    with client.reserve("t", len(data)) as slot:
                        slot.buffer[:] = data
                        if rng.random() < 0.1:
                            raise LookupError
                except LookupError:
                    assert slot.offset is None
                    continue
                offset = slot.offset
            with lock:
                written[offset] = data

    threads = [threading.Thread(target=work, args=(seed,)) for seed in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(100)
    assert not any(t.is_alive() for t in threads)
    entries = read_all(client, "t")
    assert [e.offset for e in entries] == list(range(len(written)))
    assert {e.offset: e.data for e in entries} == written


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("topic, nbytes, error", [
    ("t", -1, ValueError),
    ("t", L.MAX_ENTRY + 1, shmwal.EntryTooLarge),
    ("t", 2**70, shmwal.EntryTooLarge),
    ("t", 4.0, TypeError),
    ("t", "4", TypeError),
    ("t", True, TypeError),
    ("t", None, TypeError),
    ("", 4, shmwal.InvalidTopic),
    (".hidden", 4, shmwal.InvalidTopic),
    ("a/b", 4, shmwal.InvalidTopic),
    ("x" * 256, 4, shmwal.InvalidTopic),
    (b"t", 4, shmwal.InvalidTopic),
    (None, 4, shmwal.InvalidTopic),
])
def test_bad_input_raises_typed_errors_and_changes_nothing(client, topic, nbytes, error):
    client.append("t", b"first")
    before = (client.topics(), _next_offset(client, "t"), sorted(os.listdir(client._root)))
    with pytest.raises(error):
        client.reserve(topic, nbytes)
    assert (client.topics(), _next_offset(client, "t"), sorted(os.listdir(client._root))) == before
    assert client.append("t", b"still works") == 1


# ----------------------------------------------------------------------------- other processes

_HOLDER = r"""
import os, sys, time
import shmwal
data_dir, key, topic, nbytes, ready = sys.argv[1], sys.argv[2] or None, sys.argv[3], int(sys.argv[4]), sys.argv[5]
client = shmwal.connect(data_dir, key=key)
with client.reserve(topic, nbytes) as slot:
    slot.buffer[:nbytes // 2] = b"\xee" * (nbytes // 2)
    with open(ready + ".tmp", "w") as f:
        f.write(f"{os.getpid()} {type(slot).__module__}")
    os.rename(ready + ".tmp", ready)   # whole, once it exists
    if sys.argv[6] == "hold":
        time.sleep(600)       # SIGKILLed in here
    while not os.path.exists(ready + ".go"):
        time.sleep(0.005)
    slot.buffer[nbytes // 2:] = b"\xee" * (nbytes - nbytes // 2)
print(slot.offset)
"""


def _env(pure: bool) -> dict:
    env = dict(os.environ)
    if pure:
        env["SHMWAL_PURE_PYTHON"] = "1"
    else:
        env.pop("SHMWAL_PURE_PYTHON", None)
    return env


def _holder(broker, topic, nbytes, ready, how, pure):
    return subprocess.Popen([sys.executable, "-c", _HOLDER, broker.data_dir, broker.key or "", topic,
                             str(nbytes), str(ready), how],
                            env=_env(pure), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _ready(ready, pure) -> int:
    """The holder's pid, once it is inside its block; and it runs the path it was given."""
    pid, slot_module = ready.read_text().split()
    assert slot_module == ("shmwal.client.reserve" if pure else "shmwal._hot")
    return int(pid)


def _reap(proc):
    if proc.poll() is None:
        proc.kill()
    return proc.communicate(timeout=30)


@pytest.mark.parametrize("pure", [False, True], ids=["compiled", "pure"])
def test_other_writers_in_other_processes_wait_for_the_block(broker, tmp_path, pure):
    ready = tmp_path / "ready"
    holder = _holder(broker, "t", 1000, ready, "wait", pure)
    try:
        assert poll(ready.exists, 30), _reap(holder)
        _ready(ready, pure)
        with connect(broker) as client:
            client.append("x", b"another topic is not held")   # only the topic's writers wait
            waiter = subprocess.Popen(
                [sys.executable, "-c", "import shmwal,sys; c = shmwal.connect(sys.argv[1], key=sys.argv[2] or None);"
                 "print(c.append('t', b'second'), c.batch_append('t', [b'third', b'fourth']).start)",
                 broker.data_dir, broker.key or ""], env=_env(not pure), stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, text=True)
            try:
                assert poll(lambda: MetaView(meta_path(broker.root, "t")).writer_mutex_owner() != 0, 5)
                time.sleep(0.3)
                assert waiter.poll() is None, _reap(waiter)   # still waiting for the slot
                (tmp_path / "ready.go").touch()
                out, err = holder.communicate(timeout=30)
                assert holder.returncode == 0, err
                assert out.split() == ["0"]
                out, err = waiter.communicate(timeout=30)
                assert waiter.returncode == 0, err
                assert out.split() == ["1", "2"]
            finally:
                _reap(waiter)
            assert [(e.offset, e.data) for e in read_all(client, "t")] == \
                [(0, b"\xee" * 1000), (1, b"second"), (2, b"third"), (3, b"fourth")]
    finally:
        _reap(holder)


@pytest.mark.parametrize("nbytes", [1000, BLOCK - 500, 3 * BLOCK], ids=["fits", "next-block", "jumbo"])
@pytest.mark.parametrize("pure", [False, True], ids=["compiled", "pure"])
def test_sigkill_inside_the_block_publishes_nothing_and_leaves_no_lock(broker, tmp_path, pure, nbytes):
    with connect(broker) as client:
        client.append("t", b"a" * 1000)
        ready = tmp_path / "ready"
        holder = _holder(broker, "t", nbytes, ready, "hold", pure)
        try:
            assert poll(ready.exists, 30), _reap(holder)
            pid = _ready(ready, pure)
            meta = MetaView(meta_path(broker.root, "t"))
            assert meta.writer_mutex_owner() == pid   # killed inside the block, holding the mutex
            os.kill(pid, signal.SIGKILL)
            holder.wait(30)
        finally:
            _reap(holder)
        assert holder.returncode == -signal.SIGKILL
        assert client.batch_read("t", 1 << 30, group="g") == [shmwal.Entry("t", 0, b"a" * 1000)]
        # The next writer (another process, the other path) takes the lock and the offset.
        other = subprocess.run(
            [sys.executable, "-c", "import shmwal,sys; c = shmwal.connect(sys.argv[1], key=sys.argv[2] or None);"
             "s = c.reserve('t', 5)\nwith s: s.buffer[:] = b'after'\nprint(s.offset, c.append('t', b'x'))",
             broker.data_dir, broker.key or ""], env=_env(not pure), capture_output=True, text=True, timeout=60)
        assert other.returncode == 0, other.stderr
        assert other.stdout.split() == ["1", "2"]
        assert meta.writer_mutex_owner() == 0
        assert [(e.offset, e.data) for e in client.batch_read("t", 1 << 30, group="g")] == [(1, b"after"), (2, b"x")]
        meta.close()


# ----------------------------------------------------------------------------- drill

WRITERS = 3
KILLS = 12
PROGRESS_WITHIN = 10.0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_drill_writers_killed_inside_reserve_blocks(broker, tmp_path):
    """Three writer processes (compiled and pure Python) reserve, append and batch_append one
    topic; the holder of the writer mutex (mostly inside a reserve block) is SIGKILLed again
    and again and replaced.  The topic must hold offsets 0..N-1, each an intact payload, every
    returned call's payloads at its offsets, every batch whole; survivors go on each time."""
    topic = "drill-reserve"
    stop = tmp_path / "stop"
    procs = {}       # writer -> (Popen, incarnation)
    reports = {w: str(tmp_path / f"w{w}.log") for w in range(WRITERS)}
    seed = [0]

    def start(writer, incarnation):
        seed[0] += 1
        p = subprocess.Popen([sys.executable, os.path.join(HERE, "reserve_worker.py"), broker.data_dir,
                              broker.key or "", topic, str(writer), str(incarnation), reports[writer],
                              str(stop), str(seed[0])],
                             env=_env(writer == 0), stderr=subprocess.PIPE, text=True)
        procs[writer] = (p, incarnation)

    for w in range(WRITERS):
        start(w, 0)
    killed = 0
    try:
        assert poll(lambda: all(report_size(r) > 200 for r in reports.values()), 60), \
            {w: p.poll() for w, (p, _) in procs.items()}
        while not os.path.exists(meta_path(broker.root, topic)):
            time.sleep(0.01)
        meta = MetaView(meta_path(broker.root, topic))
        deadline = Deadline(200)
        while killed < KILLS and not deadline.expired():
            victims = {p.pid: w for w, (p, _) in procs.items() if p.poll() is None}
            writer = kill_inside_lock(meta.writer_mutex_owner, victims)
            if writer is None:
                continue
            killed += 1
            p, incarnation = procs[writer]
            p.wait(30)
            sizes = {w: report_size(reports[w]) for w in procs if w != writer}
            start(writer, incarnation + 1)
            assert poll(lambda: all(report_size(reports[w]) > sizes[w] for w in sizes), PROGRESS_WITHIN), \
                f"survivors stalled after kill {killed}"
        assert killed == KILLS
        stop.touch()
        for w, (p, _) in procs.items():
            _, err = p.communicate(timeout=60)
            assert p.returncode == 0, err
        meta.close()
    finally:
        stop.touch()
        for p, _ in procs.values():
            _reap(p)
    with connect(broker) as client:
        entries = read_all(client, topic)
    assert [e.offset for e in entries] == list(range(len(entries)))
    ids = [decode_payload(e.data) for e in entries]        # every entry whole and intact
    kinds = set()
    for w, path in reports.items():
        for line in read_report(path):
            kind, *rest = line.split()
            if kind in "RAB":
                first, count, digest = int(rest[0]), int(rest[1]), rest[2]
                assert payloads_digest([e.data for e in entries[first:first + count]]) == digest, line
                kinds.add(kind)
            elif kind == "S":
                kinds.add(rest[1])
    assert kinds >= {"R", "A", "B", "pure", "native"}
    # Batches whole and contiguous; discarded or killed reserves left nothing.
    i = 0
    while i < len(ids):
        count = ids[i].count
        assert [x.index for x in ids[i:i + count]] == list(range(count))
        assert len({(x.writer, x.incarnation, x.seq) for x in ids[i:i + count]}) == 1
        i += count
