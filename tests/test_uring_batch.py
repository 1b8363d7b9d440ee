"""batch_read through io_uring (io="uring"), through the mappings (io="mmap") and "auto".

Every test compares what a client reads with what was written, byte for byte,
and io_uring against mmap batch for batch.  Whether a read really went through
io_uring is counted (fixture ``fetches``) by wrapping ``UringFetcher.read`` (the
one place ``GroupReader._take_uring`` hands its plan to the ring) and
``GroupReader._take_uring`` itself (a batch it returned was served by the ring).

Block files live under pytest's tmp_path (a real disk here, not tmpfs), so the
cold-cache test can evict them with posix_fadvise(DONTNEED).
"""

from __future__ import annotations

import collections
import os
import random
import sys
import time

import pytest

import shmwal
from shmwal import uring
from shmwal.blocks import layout as L
from shmwal.blocks.chain import find_block, walk_to
from shmwal.blocks.meta import TopicMeta
from shmwal.client.read import GroupReader
from shmwal.uring.residency import evict_files as evict
from shmwal.uring.residency import files_resident_fraction as resident_share
from shmwal.uring import ring as ring_mod
from shmwal.uring.fetch import UringFetcher

from conftest import wait_until
from helpers import Workers, no_resource_tracker_left  # noqa: F401  (autouse fixture)

pytestmark = [
    pytest.mark.skipif(sys.platform != "linux", reason="io_uring is Linux-only"),
]

MODES = ("uring", "mmap", "auto")
BLOCK = 64 * 1024            # conftest's start_broker default


# What the kernel allows (probe() ignores SHMWAL_DISABLE_IO_URING, which only changes "auto").
needs_uring = pytest.mark.skipif(uring.probe() is not None,
                                 reason=f"io_uring unavailable: {uring.probe()}")


@pytest.fixture(autouse=True)
def io_uring_not_disabled(monkeypatch):
    """These tests say what "auto" does; the one about the variable sets it itself."""
    monkeypatch.delenv("SHMWAL_DISABLE_IO_URING", raising=False)


# ----------------------------------------------------------------------------- payloads

def gen_payload(tag: int, seq: int) -> bytes:
    """Writer ``tag``'s entry ``seq``: 0..5000 random bytes, now and then one larger than a block."""
    r = random.Random(tag * 1_000_003 + seq)
    if r.random() < 0.004:
        size = r.randrange(BLOCK + 1, 3 * BLOCK)
    else:
        size = r.randrange(0, 5001)
    return r.randbytes(size)


def write_backlog(client, topic: str, n: int, seed: int, tag: int = 0) -> list[bytes]:
    """Append ``n`` gen_payload entries as singles and batches of 1..50, plus one entry larger
    than a block and a run of tiny entries (so a batch can hit the 2,000-entry cap);
    returns the payloads by offset (the topic must be empty)."""
    rng = random.Random(seed)
    written: list[bytes] = []
    seq = 0
    big_at = n // 3
    tiny_at = 2 * n // 3
    while seq < n:
        if big_at is not None and seq >= big_at:
            item = random.Random(seed).randbytes(3 * BLOCK + 123)   # > a block: a jumbo block
            assert client.append(topic, item) == len(written)
            written.append(item)
            big_at = None
            continue
        if tiny_at is not None and seq >= tiny_at:
            items = [bytes([i % 251]) * (i % 7) for i in range(2500)]
            for chunk in (items[:2000], items[2000:]):
                r = client.batch_append(topic, chunk)
                assert r == range(len(written), len(written) + len(chunk))
                written.extend(chunk)
            tiny_at = None
            continue
        k = min(n - seq, 1 if rng.random() < 0.3 else rng.randint(1, 50))
        items = [gen_payload(tag, seq + i) for i in range(k)]
        if k == 1 and rng.random() < 0.5:
            assert client.append(topic, items[0]) == len(written)
        else:
            r = client.batch_append(topic, items)
            assert r == range(len(written), len(written) + k)
        written.extend(items)
        seq += k
    return written


def model_batches(sizes: list[int], max_bytes_seq, start: int = 0) -> list[list[int]]:
    """API.md's batch_read rule, one max_bytes per call: entries in order while their payloads
    add up to at most max_bytes, the first alone when it alone is larger, at most 2,000."""
    out = []
    i = start
    it = iter(max_bytes_seq)
    while i < len(sizes):
        max_bytes = next(it)
        batch = [i]
        total = sizes[i]
        i += 1
        while i < len(sizes) and len(batch) < L.MAX_READ_ENTRIES and total + sizes[i] <= max_bytes:
            total += sizes[i]
            batch.append(i)
            i += 1
        out.append(batch)
    return out


def max_bytes_sequence(seed: int, n: int = 100_000) -> list[int]:
    """Read sizes from 0 (one entry per call) to several blocks (a call spans blocks and files)."""
    rng = random.Random(seed)
    choices = []
    for _ in range(n):
        x = rng.random()
        if x < 0.1:
            choices.append(rng.randrange(0, 100))
        elif x < 0.5:
            choices.append(rng.randrange(100, 20_000))
        elif x < 0.8:
            choices.append(rng.randrange(20_000, 300_000))
        else:
            choices.append(rng.randrange(300_000, 3_000_000))
    return choices


def read_batches(client, topic: str, group: str, max_bytes_seq, **kw) -> list[list[tuple[int, bytes]]]:
    """batch_read with successive max_bytes until it returns []."""
    out = []
    for max_bytes in max_bytes_seq:
        entries = client.batch_read(topic, max_bytes, group=group, **kw)
        if not entries:
            return out
        for e in entries:
            assert e.topic == topic
        out.append([(e.offset, e.data) for e in entries])
    raise AssertionError("max_bytes sequence ran out before the topic did")


@pytest.fixture
def fetches(monkeypatch):
    """Counts of UringFetcher.read calls ("reads", and by the fetcher's mode), ranges and bytes
    planned, "served": batches that GroupReader._take_uring returned (not handed to _take), and
    "raised": CorruptEntry raised from _take_uring itself."""
    counts: collections.Counter = collections.Counter()
    original_read = UringFetcher.read
    original_take = GroupReader._take_uring

    def counting_read(self, files, plan, total):
        counts["reads"] += 1
        counts["ranges"] += len(plan)
        counts["bytes"] += total
        return original_read(self, files, plan, total)

    def counting_take(self, *args, **kwargs):
        try:
            taken = original_take(self, *args, **kwargs)
        except shmwal.CorruptEntry:
            counts["raised"] += 1
            raise
        counts["served"] += taken is not None
        return taken

    monkeypatch.setattr(UringFetcher, "read", counting_read)
    monkeypatch.setattr(GroupReader, "_take_uring", counting_take)
    return counts


def block_files(root: str) -> list[str]:
    directory = os.path.join(root, "blocks")
    return sorted(os.path.join(directory, n) for n in os.listdir(directory) if n.endswith(".blk"))


def backlog_for_every_mode(broker, n: int, seed: int) -> list[bytes]:
    """write_backlog to topic "t", and a group "g-<mode>" at 0 for each of MODES: every group
    exists before any reads, so no block is reclaimed under a group that comes later."""
    with shmwal.connect(broker.data_dir, key=broker.key, io="mmap") as writer:
        written = write_backlog(writer, "t", n, seed=seed)
        for mode in MODES:
            writer.seek("t", 0, group=f"g-{mode}")
    return written


# ----------------------------------------------------------------------------- identical entries

@needs_uring
@pytest.mark.timeout(120)
def test_modes_return_identical_batches_over_many_blocks_and_files(start_broker, fetches):
    broker = start_broker()
    written = backlog_for_every_mode(broker, 2500, seed=1)
    sizes = [len(p) for p in written]
    files = block_files(broker.root)
    assert len(files) >= 10, files                       # many blocks and files
    assert any(s > BLOCK for s in sizes)                 # an entry larger than a block

    seq = max_bytes_sequence(seed=2)
    expected_offsets = model_batches(sizes, seq)
    assert any(len(b) == L.MAX_READ_ENTRIES for b in expected_offsets)   # the cap is exercised
    results = {}
    for mode in MODES:
        fetches.clear()
        with shmwal.connect(broker.data_dir, key=broker.key, io=mode) as client:
            assert client.io == mode
            got = read_batches(client, "t", f"g-{mode}", seq)
        results[mode] = (got, fetches["reads"], fetches["served"])

    for mode, (got, _reads, _served) in results.items():
        assert [[o for o, _ in b] for b in got] == expected_offsets, f"{mode}: batch boundaries"
        assert [d for b in got for _, d in b] == written, f"{mode}: payloads"
    assert results["uring"][0] == results["mmap"][0] == results["auto"][0]
    # io="uring" served most batches through the ring (the first read of a group, which has
    # no hint yet, and entries larger than max_bytes go through the mapping).
    assert results["uring"][2] >= len(expected_offsets) // 2, (results["uring"], len(expected_offsets))
    assert results["mmap"][1] == results["mmap"][2] == 0
    assert results["auto"][1] == results["auto"][2] == 0   # all just written: resident, so mmap


@needs_uring
@pytest.mark.timeout(120)
def test_modes_agree_with_seeks_and_peeks(start_broker, fetches):
    """Random seeks (which void the hint), peeks (checkpoint=False) and reads, same on every path."""
    # Everything kept: a seek back below what every group has read lands where it asked, not
    # on whatever reclamation has left by the time the mode's turn comes.
    broker = start_broker(retention=shmwal.Retention(bytes=1 << 40))
    written = backlog_for_every_mode(broker, 1200, seed=3)
    n = len(written)
    outcomes = {}
    for mode in MODES:
        rng = random.Random(4)
        group = f"g-{mode}"
        log = []
        with shmwal.connect(broker.data_dir, key=broker.key, io=mode) as client:
            for _ in range(400):
                x = rng.random()
                max_bytes = rng.choice((0, 1, 3000, 50_000, 400_000, 2_000_000))
                if x < 0.1:
                    target = rng.randrange(-5, n + 20)
                    client.seek("t", target, group=group)
                    log.append(("seek", client.position("t", group=group)))
                elif x < 0.35:
                    peek = client.batch_read("t", max_bytes, group=group, checkpoint=False)
                    log.append(("peek", [(e.offset, e.data) for e in peek]))
                    assert client.batch_read("t", max_bytes, group=group, checkpoint=False) == peek
                else:
                    got = client.batch_read("t", max_bytes, group=group)
                    log.append(("read", [(e.offset, e.data) for e in got]))
                    for e in got:
                        assert e.data == written[e.offset]
        outcomes[mode] = log
    assert outcomes["uring"] == outcomes["mmap"] == outcomes["auto"]
    assert fetches["reads"] > 50 and fetches["served"] > 50


# ----------------------------------------------------------------------------- live tail

def _live_writer(client, topic: str, tag: int, n: int, seed: int, go) -> list[tuple[int, int, int]]:
    """Append gen_payload(tag, 0..n-1) as singles and batches of 1..50; return (first offset, count,
    first seq) of every call."""
    rng = random.Random(seed)
    assert go.wait(30), "never told to go"
    calls = []
    seq = 0
    while seq < n:
        k = min(n - seq, 1 if rng.random() < 0.4 else rng.randint(1, 50))
        items = [gen_payload(tag, seq + i) for i in range(k)]
        if k == 1 and rng.random() < 0.5:
            calls.append((client.append(topic, items[0]), 1, seq))
        else:
            r = client.batch_append(topic, items)
            assert len(r) == k
            calls.append((r.start, k, seq))
        seq += k
        if rng.random() < 0.05:
            os.sched_yield()
    return calls


def _read_live(client, topic: str, group: str, total: int, seed: int, limit: float = 60.0):
    """batch_read until ``total`` entries arrived; checks order and the max_bytes rule per batch."""
    rng = random.Random(seed)
    got: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + limit
    while len(got) < total:
        assert time.monotonic() < deadline, f"only {len(got)} of {total} entries within {limit} s"
        max_bytes = rng.choice((0, 2000, 20_000, 200_000, 1 << 20))
        entries = client.batch_read(topic, max_bytes, group=group, timeout=0.05)
        if not entries:
            continue
        assert len(entries) <= L.MAX_READ_ENTRIES
        assert len(entries) == 1 or sum(len(e.data) for e in entries) <= max_bytes
        for e in entries:
            assert e.offset == len(got), (e.offset, len(got))
            got.append((e.offset, e.data))
    assert client.batch_read(topic, 1 << 20, group=group) == []
    return got


@needs_uring
@pytest.mark.timeout(180)
@pytest.mark.parametrize("writers", [1, 3])
@pytest.mark.parametrize("mode", MODES)
def test_live_tail_with_concurrent_writer_processes(start_broker, fetches, tmp_path, mode, writers):
    broker = start_broker()
    per_writer = 1500 if writers == 1 else 700
    with shmwal.connect(broker.data_dir, key=broker.key, io=mode) as reader, \
            shmwal.connect(broker.data_dir, key=broker.key, io="mmap") as wclient, \
            Workers("fork", str(tmp_path / "w")) as workers:
        go = workers.Event()
        assert reader.batch_read("t", 1000, group="live", timeout=0.01) == []   # joins at 0
        procs = [workers.start(_live_writer, wclient, "t", tag, per_writer, 100 + tag, go)
                 for tag in range(writers)]
        go.set()
        got = _read_live(reader, "t", "live", writers * per_writer, seed=5)
        calls = [workers.result(p, 60) for p in procs]

    expected: dict[int, bytes] = {}
    for tag, writer_calls in enumerate(calls):
        seqs = []
        for first, count, first_seq in writer_calls:
            for i in range(count):
                expected[first + i] = gen_payload(tag, first_seq + i)
            seqs.extend(range(first_seq, first_seq + count))
        assert seqs == list(range(per_writer))
    assert sorted(expected) == list(range(writers * per_writer))
    assert [o for o, _ in got] == list(range(writers * per_writer))
    bad = [o for o, d in got if d != expected[o]]
    assert not bad, f"{len(bad)} entries differ, first at {bad[0]}"
    if mode == "uring":
        assert fetches["served"] > 0
    elif mode == "mmap":
        assert fetches["reads"] == fetches["served"] == 0


@needs_uring
@pytest.mark.timeout(120)
def test_reader_process_forked_after_using_the_ring(start_broker, tmp_path, fetches):
    """A ring cannot cross fork(): a child that inherited a used io="uring" client builds its own."""
    broker = start_broker()
    with shmwal.connect(broker.data_dir, key=broker.key, io="mmap") as writer:
        written = write_backlog(writer, "t", 600, seed=6)
        writer.seek("t", 0, group="child")   # exists before "parent" reads: no block goes under it
    with shmwal.connect(broker.data_dir, key=broker.key, io="uring") as client, \
            Workers("fork", str(tmp_path / "w")) as workers:
        head = [[(e.offset, e.data) for e in client.batch_read("t", 100_000, group="parent")]
                for _ in range(5)]
        assert fetches["reads"] > 0
        proc = workers.start(_child_reads, client, "t")
        child_got, child_fetches = workers.result(proc, 60)
        rest = read_batches(client, "t", "parent", [150_000] * 10_000)
    assert child_fetches > 0
    assert [d for _, d in child_got] == written
    assert [d for b in head + rest for _, d in b] == written


def _child_reads(client, topic):
    fetcher = client._io_uring
    assert fetcher is not None and fetcher._pid != os.getpid()
    start = _fetch_count_in_child()
    got = []
    while True:
        entries = client.batch_read(topic, 200_000, group="child")
        if not entries:
            break
        got.extend((e.offset, e.data) for e in entries)
    assert fetcher._pid == os.getpid()        # its own ring, made in this process
    return got, _fetch_count_in_child() - start


def _fetch_count_in_child() -> int:
    # The fixture's counting wrapper (and its Counter, a closure cell) came through fork.
    for cell in UringFetcher.read.__closure__:
        if isinstance(cell.cell_contents, collections.Counter):
            return cell.cell_contents["reads"]
    raise AssertionError("the counting wrapper is not installed")


# ----------------------------------------------------------------------------- which path

@needs_uring
@pytest.mark.timeout(60)
def test_io_uring_mode_really_uses_the_ring(start_broker, fetches):
    broker = start_broker()
    with shmwal.connect(broker.data_dir, key=broker.key, io="mmap") as writer:
        written = write_backlog(writer, "t", 400, seed=7)
    with shmwal.connect(broker.data_dir, key=broker.key, io="uring") as client:
        assert isinstance(client._io_uring, UringFetcher)
        got = read_batches(client, "t", "g", [256 * 1024] * 10_000)
        assert client._io_uring._ring is not None and not client._io_uring._ring.closed
    assert [d for b in got for _, d in b] == written
    # Every batch after the first (no hint yet) that does not start with an entry larger than
    # max_bytes comes through the ring.
    assert fetches["served"] >= len(got) - 3, (dict(fetches), len(got))
    assert fetches["bytes"] >= sum(map(len, written)) // 2


@pytest.mark.timeout(60)
def test_auto_reads_resident_data_through_the_mapping(start_broker, fetches):
    broker = start_broker()
    with shmwal.connect(broker.data_dir, key=broker.key, io="mmap") as writer:
        written = write_backlog(writer, "t", 800, seed=8)
    files = block_files(broker.root)
    with shmwal.connect(broker.data_dir, key=broker.key, io="auto") as client:
        assert client._io_uring is None
        # Warm: just written. The spares ahead of the writer are faulted in by a low-priority
        # broker thread (server/provisioning.py), which a loaded machine may hold back a while.
        assert wait_until(lambda: resident_share(files) > 0.9, 10), resident_share(files)
        got = read_batches(client, "t", "g", [1 << 20] * 10_000)
    assert [d for b in got for _, d in b] == written
    assert fetches["reads"] == 0, dict(fetches)


def cold_backlog(start_broker):
    """A backlog whose block files are out of the page cache, behind a freshly started broker.

    The group "g" has read a little first: its slot holds a read hint (a group's
    very first read goes through the mapping on every path).  The broker keeps
    the files it touches mapped, and mapped pages are not evicted: it is
    stopped, the files evicted, and a new one started (recovery reads only
    the tail block).
    """
    broker = start_broker()
    payloads = [random.Random(i).randbytes(3000 + i % 2000) for i in range(2500)]
    with shmwal.connect(broker.data_dir, key=broker.key, io="mmap") as client:
        for i in range(0, len(payloads), 25):
            client.batch_append("t", payloads[i:i + 25])
        head = [[(e.offset, e.data) for e in client.batch_read("t", 1, group="g")] for _ in range(3)]
    broker.stop()
    files = block_files(broker.root)
    assert len(files) > 10
    evict(files)
    cold = resident_share(files)
    assert cold < 0.05, f"block files still {cold:.0%} resident after DONTNEED"
    broker = start_broker()
    assert resident_share(files) < 0.1
    return broker, payloads, head


@pytest.mark.timeout(120)
def test_auto_reads_a_cold_backlog_through_the_mapping(start_broker, fetches):
    """A consumer catching up on a cold backlog after a restart.

    "auto" is the faster path, and scripts/bench_uring.py measured the mapping
    ahead of io_uring on cold sequential backlogs too (README): so "auto" reads
    it through the mapping, and gets every entry.
    """
    broker, payloads, head = cold_backlog(start_broker)
    with shmwal.connect(broker.data_dir, key=broker.key, io="auto") as client:
        assert client._io_uring is None
        rest = read_batches(client, "t", "g", [1 << 20] * 10_000)
    assert fetches["reads"] == 0, dict(fetches)
    got = head + rest
    assert [d for b in got for _, d in b] == payloads
    assert [o for b in got for o, _ in b] == list(range(len(payloads)))


@needs_uring
@pytest.mark.timeout(120)
def test_uring_reads_a_cold_backlog_through_the_ring(start_broker, fetches):
    """The same cold backlog with io="uring": fetched through the ring, entries identical."""
    broker, payloads, head = cold_backlog(start_broker)
    with shmwal.connect(broker.data_dir, key=broker.key, io="uring") as client:
        # A broker voids every group's read hint at start (a hint is not trusted across a
        # crash: server/metacheck.py), so the first read after it walks to the cursor through
        # the mapping; from the hint that read leaves, the next batch goes through the ring.
        first = client.batch_read("t", 1 << 20, group="g")
        fetches.clear()
        second = client.batch_read("t", 1 << 20, group="g")
        assert fetches["reads"] == 1 and fetches["served"] == 1, dict(fetches)
        rest = read_batches(client, "t", "g", [1 << 20] * 10_000)
    got = head + [[(e.offset, e.data) for e in first], [(e.offset, e.data) for e in second]] + rest
    assert [d for b in got for _, d in b] == payloads
    assert [o for b in got for o, _ in b] == list(range(len(payloads)))


# ----------------------------------------------------------------------------- reclaimed files

def held_deleted(files) -> tuple[int, int]:
    """(mappings, descriptors) a client's BlockFiles still holds of block files that are gone."""
    maps = sum(not os.path.exists(files.path(f)) for f in files.mapped())
    fds = sum(not os.path.exists(files.path(f)) for f in list(files._fds))
    return maps, fds


@pytest.mark.timeout(90)
@pytest.mark.parametrize("mode", ["mmap", pytest.param("uring", marks=needs_uring)])
def test_reader_lets_go_of_reclaimed_block_files(start_broker, fetches, mode):
    """A deleted block file's disk space is freed only once no process maps it or holds it open
    (files.py): a reader catching up on a backlog must let go of the files it read past,
    whichever path read them."""
    broker = start_broker()
    payload = os.urandom(1000)
    with shmwal.connect(broker.data_dir, key=broker.key, io="mmap") as writer:
        for _ in range(600):
            writer.batch_append("t", [payload] * 5)            # 3,000 entries: ~48 blocks, ~12 files
    files_before = len(block_files(broker.root))
    with shmwal.connect(broker.data_dir, key=broker.key, io=mode) as reader:
        def read(n):
            got = 0
            while got < n:                                      # full batches, never at the tail
                got += len(reader.batch_read("t", 20_000, group="g"))
            return got
        read(1)                                                 # the group's first read sets its hint
        read(1500)
        # Only this group reads the topic: the files it read past are reclaimed and deleted.
        assert wait_until(lambda: len(block_files(broker.root)) <= files_before - 4, 20)
        time.sleep(1.2)                                          # BlockFiles.SWEEP_EVERY
        fetches.clear()
        read(300)                                                # across several more blocks
        held = held_deleted(reader._files)
    if mode == "uring":
        assert fetches["served"] == 15, dict(fetches)           # all through the ring
    assert held == (0, 0), f"io={mode!r} reader still maps / holds open {held} deleted block files"


# ----------------------------------------------------------------------------- fallbacks

@pytest.mark.timeout(60)
def test_disable_env_makes_auto_mean_mmap(start_broker, monkeypatch, fetches):
    monkeypatch.setenv("SHMWAL_DISABLE_IO_URING", "1")
    broker = start_broker()
    with shmwal.connect(broker.data_dir, key=broker.key, io="auto") as client:
        assert client._io_uring is None
        assert client.io == "auto"
        written = write_backlog(client, "t", 200, seed=9)
        got = read_batches(client, "t", "g", [100_000] * 10_000)
    assert [d for b in got for _, d in b] == written
    assert fetches["reads"] == 0
    for value in ("0", "", "off"):
        monkeypatch.setenv("SHMWAL_DISABLE_IO_URING", value)
        with shmwal.connect(broker.data_dir, key=broker.key, io="auto") as client:
            assert client._io_uring is None   # "auto" reads through the mapping (see client._make_fetcher)


def test_mmap_mode_never_builds_a_fetcher(start_broker):
    broker = start_broker()
    with shmwal.connect(broker.data_dir, key=broker.key, io="mmap") as client:
        assert client._io_uring is None


@pytest.mark.timeout(60)
def test_uring_refused_by_the_kernel(start_broker, monkeypatch, fetches):
    refuse = lambda: "io_uring_setup failed: EPERM (test)"  # noqa: E731
    monkeypatch.setattr(uring, "probe", refuse)
    monkeypatch.setattr(ring_mod, "probe", refuse)
    broker = start_broker()
    with pytest.raises(shmwal.ShmwalError, match=r"EPERM \(test\)") as info:
        shmwal.connect(broker.data_dir, key=broker.key, io="uring")
    assert "uring" in str(info.value)
    # "auto" falls back to the mapping quietly, and reads the same.
    with shmwal.connect(broker.data_dir, key=broker.key, io="auto") as client:
        assert client._io_uring is None
        written = write_backlog(client, "t", 150, seed=10)
        got = read_batches(client, "t", "g", [50_000] * 10_000)
    assert [d for b in got for _, d in b] == written
    assert fetches["reads"] == 0


def test_bogus_io_mode_is_a_value_error(data_dir):
    with pytest.raises(ValueError, match="io"):
        shmwal.connect(data_dir, io="bogus")
    for bad in ("URING", "", None):
        with pytest.raises(ValueError):
            shmwal.connect(data_dir, io=bad)


# ----------------------------------------------------------------------------- corruption

def flip_payload_byte(root: str, topic: str, offset: int) -> None:
    """Flip one byte in the middle of entry ``offset``'s payload, in its block file."""
    meta = TopicMeta(os.path.join(root, "topics", topic, "meta"), topic)
    try:
        block = find_block(meta, offset, meta.get(L.H_FIRST_BLOCK), meta.get(L.H_PUBLISHED_BLOCKS))
        file_id, file_offset, capacity, first = meta.chain(block)
        path = os.path.join(root, "blocks", L.block_file_name(file_id))
        fd = os.open(path, os.O_RDWR)
        try:
            buf = os.pread(fd, capacity, file_offset)
            pos, record = walk_to(buf, 0, capacity, first, offset)
            index = offset - record.first_offset
            # the layout: header, count table entries, then the payloads back to back
            start = pos + L.RECORD_HEADER_SIZE + record.count * L.TABLE_ENTRY_SIZE + sum(record.lengths[:index])
            assert start == record.starts[index]
            length = record.lengths[index]
            assert length > 0
            at = file_offset + start + length // 2
            (old,) = os.pread(fd, 1, at)
            os.pwrite(fd, bytes([old ^ 0x5A]), at)
        finally:
            os.close(fd)
    finally:
        meta.close()


def _drive_with_corruption(client, topic: str, group: str, max_bytes: int, fetches):
    """Read everything; on CorruptEntry check the cursor stays, that it raises again, step over it."""
    events = []
    while True:
        before = fetches["raised"]
        try:
            entries = client.batch_read(topic, max_bytes, group=group)
        except shmwal.CorruptEntry as exc:
            through_ring = fetches["raised"] > before
            assert exc.topic == topic
            assert client.position(topic, group=group) == exc.offset
            with pytest.raises(shmwal.CorruptEntry) as again:
                client.batch_read(topic, max_bytes, group=group)
            assert again.value.offset == exc.offset
            events.append(("corrupt", exc.offset, str(exc), through_ring))
            client.seek(topic, exc.offset + 1, group=group)
            continue
        if not entries:
            return events
        events.append(("batch", [(e.offset, e.data) for e in entries]))


@needs_uring
@pytest.mark.timeout(60)
def test_corrupt_entry_is_raised_the_same_way_on_both_paths(start_broker, fetches):
    broker = start_broker()
    payloads = [random.Random(i).randbytes(1000) for i in range(130)]
    with shmwal.connect(broker.data_dir, key=broker.key, io="mmap") as writer:
        for p in payloads[:60]:
            writer.append("t", p)
        writer.batch_append("t", payloads[60:90])          # one multi-entry record
        for p in payloads[90:]:
            writer.append("t", p)
        for mode in MODES:   # every group exists before any reads: no block is reclaimed under a later one
            writer.seek("t", 0, group=f"g-{mode}")
    bad = (40, 75)      # a one-entry record, and the middle of the batch's record
    for offset in bad:
        flip_payload_byte(broker.root, "t", offset)

    outcomes = {}
    for mode in MODES:
        with shmwal.connect(broker.data_dir, key=broker.key, io=mode) as client:
            outcomes[mode] = _drive_with_corruption(client, "t", f"g-{mode}", 2500, fetches)
    strip = lambda events: [e[:3] for e in events]  # noqa: E731
    assert strip(outcomes["uring"]) == strip(outcomes["mmap"]) == strip(outcomes["auto"])
    corrupt = [e for e in outcomes["uring"] if e[0] == "corrupt"]
    assert [e[1] for e in corrupt] == list(bad)
    assert all(e[3] for e in corrupt), "io='uring' should have raised from the io_uring path"
    assert not any(e[3] for e in outcomes["mmap"] if e[0] == "corrupt")
    good = [(o, d) for e in outcomes["mmap"] if e[0] == "batch" for o, d in e[1]]
    assert good == [(i, p) for i, p in enumerate(payloads) if i not in bad]
