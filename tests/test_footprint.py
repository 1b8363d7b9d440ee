"""Files grow with the data (issue 12, footprint).

Block files are sparse: a block takes space only once the broker hands it
out, a topic's first block is small (layout.block_capacity), and a freed
block gives its space back.  Sizes here are allocated bytes (st_blocks * 512,
what ``du`` shows), never apparent sizes.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import shmwal
from shmwal.blocks import layout as L
from shmwal.blocks.allocator import BlockAllocator
from shmwal.blocks.files import allocated_bytes
from shmwal.server.provisioning import SPARE_BLOCKS
from shmwal.server.verify import open_topics, topic_stats

from drill_helpers import MetaView, poll

KiB, MiB = 1024, 1024 * 1024


def du(path: str) -> int:
    """Allocated bytes of everything under ``path`` (du's count, st_blocks * 512)."""
    total = os.lstat(path).st_blocks * 512
    for parent, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                total += os.lstat(os.path.join(parent, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


# ----------------------------------------------------------------------------- the allocator alone

def test_the_first_block_is_small_and_the_rest_full():
    assert [L.block_capacity(i, 10 * MiB) for i in range(4)] == [64 * KiB, 10 * MiB, 10 * MiB, 10 * MiB]
    assert L.block_capacity(0, 16 * KiB) == 16 * KiB          # never more than block_size
    assert L.block_capacity(10**9, 10 * MiB) == 10 * MiB


def test_a_block_takes_space_when_handed_out_and_gives_it_back_when_freed(tmp_path):
    allocator = BlockAllocator(str(tmp_path), 2 * MiB, 4)
    path = lambda file_id: os.path.join(str(tmp_path), L.block_file_name(file_id))  # noqa: E731
    first = allocator.alloc(L.BLOCK_HEADER_SIZE, "t", chain_index=0)
    assert first[2] == 64 * KiB
    assert os.path.getsize(path(first[0])) == 8 * MiB                 # full size, so mappings never fault
    assert allocated_bytes(path(first[0])) == 64 * KiB
    second = allocator.alloc(L.BLOCK_HEADER_SIZE, "t", chain_index=1)
    full = allocator.alloc(L.BLOCK_HEADER_SIZE, "t")                    # no chain index: a full block
    assert (second[0], second[1], second[2]) == (first[0], 2 * MiB, 2 * MiB)
    assert full[1:] == (4 * MiB, 2 * MiB)
    assert allocated_bytes(path(first[0])) == 64 * KiB + 2 * MiB + 2 * MiB
    big = allocator.alloc(300 * KiB, "t", chain_index=0)              # one entry needs more than the first block gives
    assert big[2] == 300 * KiB
    assert allocated_bytes(path(first[0])) == 64 * KiB + 2 * MiB + 2 * MiB + 300 * KiB
    allocator.free(*second[:2])
    assert allocated_bytes(path(first[0])) == 64 * KiB + 2 * MiB + 2 * MiB + 300 * KiB   # a grace first
    allocator.release_due(float("inf"))
    assert allocated_bytes(path(first[0])) == 64 * KiB + 2 * MiB + 300 * KiB
    allocator.free(*full[:2], release_space=False)                     # a zero-copy view still reads it
    allocator.release_due(float("inf"))
    assert allocated_bytes(path(first[0])) == 64 * KiB + 2 * MiB + 300 * KiB


def test_an_offered_block_keeps_its_space_until_it_expires(tmp_path):
    allocator = BlockAllocator(str(tmp_path), 64 * KiB, 4)
    file_id, offset, capacity = allocator.alloc(100, "t")
    allocator.offer("t", file_id, offset)
    assert allocator.reusable_bytes("t") == 64 * KiB
    path = os.path.join(str(tmp_path), L.block_file_name(file_id))
    assert allocated_bytes(path) == 64 * KiB
    allocator.expire(0.0)
    allocator.release_due(float("inf"))
    assert allocated_bytes(path) == 0 and allocator.reusable_bytes("t") == 0
    assert allocator.deletable() == []                                   # still the file handing out blocks


def test_recovery_releases_what_no_chain_holds_but_a_pinned_blocks_bytes(tmpfs):
    directory = tmpfs("16m")   # tmpfs: st_blocks counts data pages only, so sizes compare exactly
    before = BlockAllocator(directory, 1 * MiB, 4)
    small = before.alloc(100, "t", chain_index=0)                     # 64 KiB in a 1 MiB slot
    kept, pinned, lost = (before.alloc(100, "t") for _ in range(3))
    path = os.path.join(directory, L.block_file_name(small[0]))
    with open(path, "r+b") as f:                                       # a zero-copy view's pin
        f.seek(pinned[1] + L.B_PINS)
        f.write((1).to_bytes(8, "little"))
    assert allocated_bytes(path) == 64 * KiB + 3 * MiB
    after = BlockAllocator(directory, 1 * MiB, 4)                      # a restarted broker's
    for file_id, offset, capacity in (small, kept):
        after.adopt(file_id, offset, capacity)                         # what the chains still hold
    after.open_first_file()   # a file to carve from, none of it handed out yet: not released
    assert after.release_unclaimed() == (1 * MiB - 64 * KiB) + 1 * MiB
    assert allocated_bytes(path) == 64 * KiB + 3 * MiB                 # nothing before the grace
    after.release_due(float("inf"))
    assert allocated_bytes(path) == 64 * KiB + 2 * MiB                 # "lost" went; the pinned block stays


def test_a_full_disk_is_enospc_naming_the_directory_and_the_bytes_and_hands_out_nothing(tmpfs):
    mnt = tmpfs("1m")
    allocator = BlockAllocator(mnt, 2 * MiB, 4)
    with pytest.raises(OSError) as caught:
        allocator.alloc(100, "orders", chain_index=9)
    assert caught.value.errno == errno.ENOSPC
    message = str(caught.value)
    assert mnt in message and "orders" in message and f"{2 * MiB:,} bytes" in message
    assert allocator.live[allocator._current] == {}
    assert du(mnt) == 0                                                  # a failed fallocate keeps nothing
    assert allocator.alloc(100, "orders", chain_index=0) == (allocator._current, 0, 64 * KiB)
    with pytest.raises(OSError) as caught:                               # a jumbo block: its file goes again
        allocator.alloc(3 * MiB, "orders")
    assert caught.value.errno == errno.ENOSPC and f"{3 * MiB:,} bytes" in str(caught.value)
    assert sorted(os.listdir(mnt)) == [L.block_file_name(allocator._current)]


# ----------------------------------------------------------------------------- a real broker

PATHS = {"compiled": {}, "pure": {"SHMWAL_PURE_PYTHON": "1"}}


def run_client(code: str, path: str, timeout: float = 120) -> str:
    """Run ``code`` (``import shmwal`` done) in a fresh process on the compiled or pure path; its output."""
    done = subprocess.run([sys.executable, "-c", "import shmwal\n" + textwrap.dedent(code)],
                          env={**os.environ, **PATHS[path]}, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


# A busy topic (it goes through its small first block, gets spares ahead and reuses
# consumed blocks: 20,000 entries of 2,000 B, read as they come) and a quiet one beside it
# (one small block). Prints how many blocks the broker handed out again.
BUSY_AND_QUIET = """
client = shmwal.connect({data_dir!r})
client.append("quiet", b"q")
item = bytes(2000)
for round in range(40):
    client.batch_append("busy", [item] * 500)
    got = 0
    while got < 500:
        got += len(client.batch_read("busy", 1 << 20, group="g"))
print(client.stats()["blocks_reused"])
"""


def block_files_bytes(root: str) -> int:
    blocks = os.path.join(root, "blocks")
    return sum(allocated_bytes(os.path.join(blocks, name)) for name in os.listdir(blocks))


def offline_stats(root: str) -> dict:
    topics = open_topics(root)
    try:
        return {name: dict(topic_stats(meta), allocated=meta.get(L.H_ALLOCATED_BLOCKS),
                           published=meta.get(L.H_PUBLISHED_BLOCKS)) for name, meta in topics.items()}
    finally:
        for meta in topics.values():
            meta.close()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.timeout(120)
def test_a_topic_of_ten_small_entries_takes_under_1_MiB_while_running_and_after_stop(tmp_path, path):
    data_dir = str(tmp_path / "data")
    broker = shmwal.Broker(data_dir).start()            # the API's defaults: 10 MiB blocks, 100 a file
    try:
        out = run_client(f"""
            client = shmwal.connect({data_dir!r})
            for i in range(10):
                client.append("t", b"entry-%04d" % i)
            print(client.stats()["topics"]["t"]["disk_bytes"])
        """, path)
        running = du(data_dir)
        assert running < 1 * MiB, running
        meta_path = os.path.join(broker.root, "topics", "t", "meta")
        # disk_bytes is exact: the meta file's blocks and the one small block, nothing else of the files
        assert int(out) == allocated_bytes(meta_path) + block_files_bytes(broker.root)
        assert block_files_bytes(broker.root) == L.FIRST_BLOCK_SIZE
    finally:
        broker.stop()
    stopped = du(data_dir)
    assert stopped < 1 * MiB, stopped
    with shmwal.Broker(data_dir), shmwal.connect(data_dir) as client:   # what was kept is all there
        assert [e.data for e in client.batch_read("t", 1 << 20)] == [b"entry-%04d" % i for i in range(10)]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.timeout(180)
def test_a_stopped_broker_leaves_only_the_blocks_its_chains_keep(tmpfs, path):
    # On tmpfs st_blocks counts data pages only (ext4 adds extent-tree blocks once a
    # file has many holes), so what the files take can be compared exactly.
    data_dir = os.path.join(tmpfs("64m"), "data")
    broker = shmwal.Broker(data_dir, block_size=1 * MiB, blocks_per_file=8).start()
    try:
        run_client(BUSY_AND_QUIET.format(data_dir=data_dir), path)
    finally:
        broker.stop()
    stats = offline_stats(broker.root)
    busy, quiet = stats["busy"], stats["quiet"]
    assert busy["allocated"] == busy["published"] and quiet["allocated"] == quiet["published"], stats  # no spares
    meta_bytes = sum(allocated_bytes(os.path.join(broker.root, "topics", t, "meta")) for t in stats)
    # Every allocated byte of the block files belongs to a block a chain still holds.
    assert block_files_bytes(broker.root) == busy["disk_bytes"] + quiet["disk_bytes"] - meta_bytes
    assert quiet["disk_bytes"] - allocated_bytes(os.path.join(broker.root, "topics", "quiet", "meta")) \
        == L.FIRST_BLOCK_SIZE
    assert busy["entries"] * 2000 >= busy["disk_bytes"] - 2 * MiB    # consumed blocks went (all but what is kept)
    with shmwal.Broker(data_dir, block_size=1 * MiB, blocks_per_file=8), shmwal.connect(data_dir) as client:
        assert client.append("busy", b"after") == 20_000               # a restarted broker carries on
        assert client.read_next("busy", group="g").data == b"after"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.timeout(180)
def test_a_broker_killed_with_blocks_outside_its_chains_gives_their_space_back_when_restarted(tmpfs, path):
    data_dir = os.path.join(tmpfs("64m"), "data")
    broker = shmwal.Broker(data_dir, block_size=1 * MiB, blocks_per_file=16).start()
    try:
        # The busy topic's consumed blocks are kept for reuse (outside its chain, with their
        # storage); the quiet one's small block keeps their shared file.
        reused = run_client(BUSY_AND_QUIET.format(data_dir=data_dir), path)
        assert int(reused) > 0
    finally:
        kill_broker(broker)
    meta_bytes = lambda: sum(allocated_bytes(os.path.join(broker.root, "topics", t, "meta"))  # noqa: E731
                             for t in ("busy", "quiet"))
    stats = offline_stats(broker.root)
    chains = sum(s["disk_bytes"] for s in stats.values()) - meta_bytes()
    assert block_files_bytes(broker.root) > chains, "the kill left no block outside the chains: nothing tested"
    with shmwal.Broker(data_dir, block_size=1 * MiB, blocks_per_file=16), shmwal.connect(data_dir) as client:
        def kept() -> int:   # what the restarted broker's chains hold (disk_bytes is exact)
            return sum(t["disk_bytes"] for t in client.stats()["topics"].values()) - meta_bytes()

        # The space goes after the grace every freed block gets (a reader may be looking).
        assert poll(lambda: block_files_bytes(broker.root) == kept(), 30), (block_files_bytes(broker.root), kept())
        assert client.read_next("quiet", group="g").data == b"q"      # what the chains hold is whole
        assert client.append("busy", b"after") == 20_000
        assert client.read_next("busy", group="g").data == b"after"


def kill_broker(broker) -> None:
    os.kill(broker.pid, signal.SIGKILL)
    broker.stop()   # only reaps


@pytest.mark.timeout(120)
def test_a_busy_writers_spare_blocks_have_their_storage_and_count_in_disk_bytes(tmpfs):
    # Spares get their storage on a thread of the broker's and join the chain once it is
    # there: no slot may ever point at a hole (a write there is a SIGBUS on a full tmpfs).
    data_dir = os.path.join(tmpfs("64m"), "data")
    broker = shmwal.Broker(data_dir, block_size=1 * MiB, blocks_per_file=16).start()
    try:
        with shmwal.connect(data_dir) as client:
            for _ in range(4):   # the small block and three full ones, well within a second
                client.batch_append("t", [bytes(10_000)] * 100)
            view = MetaView(os.path.join(broker.root, "topics", "t", "meta"))
            tail = view.word(L.H_TAIL_CHAIN)
            assert tail >= 3
            assert poll(lambda: view.word(L.H_ALLOCATED_BLOCKS) == tail + 1 + SPARE_BLOCKS, 10), \
                (tail, view.word(L.H_ALLOCATED_BLOCKS))
            slots = [view.chain(i) for i in range(tail + 1 + SPARE_BLOCKS)]
            assert [capacity for _, _, capacity, _ in slots] == [L.FIRST_BLOCK_SIZE] + [1 * MiB] * (tail + SPARE_BLOCKS)
            assert [first for _, _, _, first in slots[tail + 1:]] == [L.UNSET] * SPARE_BLOCKS   # not moved into yet
            # Nothing read, nothing reclaimed: the files hold exactly the chain's blocks.
            assert block_files_bytes(broker.root) == sum(capacity for _, _, capacity, _ in slots)
            meta_bytes = allocated_bytes(os.path.join(broker.root, "topics", "t", "meta"))
            assert client.stats()["topics"]["t"]["disk_bytes"] == meta_bytes + block_files_bytes(broker.root)
            assert sum(len(client.batch_read("t", 16 * MiB)) for _ in range(4)) == 400
    finally:
        broker.stop()


@pytest.mark.timeout(60)
def test_a_broker_that_wrote_nothing_leaves_no_block_file(tmp_path):
    with shmwal.Broker(str(tmp_path / "data")) as broker:
        blocks = os.path.join(broker.root, "blocks")
        assert os.listdir(blocks)                        # made before it answers: their fsyncs are done
        assert block_files_bytes(broker.root) == 0       # sparse: no space until a block is handed out
    assert os.listdir(blocks) == []


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.timeout(120)
def test_enospc_from_append_names_the_full_directory_and_what_the_topic_needed(tmpfs, path):
    mnt = tmpfs("2m")
    with shmwal.Broker(mnt, block_size=1 * MiB):   # the entry, not a full block, sets what is needed
        out = run_client(f"""
            import errno
            client = shmwal.connect({mnt!r})
            client.append("t", b"small")
            try:
                client.append("t", bytes(3 << 20))
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                print(exc)
            else:
                raise SystemExit("a 3 MiB entry fitted on a 2 MiB filesystem")
            assert client.append("t", b"after") == 1        # nothing was written; the topic goes on
            print([e.data for e in client.batch_read("t", 1 << 20)])
        """, path)
    message, entries = out.splitlines()
    blocks_dir = os.path.join(mnt, "default", "blocks")
    assert message.startswith(f"[Errno {errno.ENOSPC}] No space left on device: {blocks_dir} is full (")
    needed = (3 << 20) + L.BLOCK_HEADER_SIZE + 48
    assert f"a new block of topic 't' needed {(needed + L.PAGE - 1) // L.PAGE * L.PAGE:,} bytes" in message
    assert entries == "[b'small', b'after']"


def shmwal_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shmwal", *args], capture_output=True, text=True, timeout=60)


@pytest.mark.timeout(120)
def test_stat_shows_disk_use_and_verify_says_how_many_entries_it_checked(start_broker):
    broker = start_broker(block_size=1 * MiB)
    with shmwal.connect(broker.data_dir) as client:
        client.batch_append("t", [b"x" * 100] * 50)
        client.append("u", b"y")
        disk = {name: s["disk_bytes"] for name, s in client.stats()["topics"].items()}
    result = shmwal_cli("stat", "--data-dir", broker.data_dir, "--json")
    assert result.returncode == 0, result.stderr
    snap = json.loads(result.stdout)
    assert {name: s["disk_bytes"] for name, s in snap["topics"].items()} == disk
    assert snap["disk_bytes"] == du(broker.root) - os.lstat(broker.root).st_blocks * 512
    text = shmwal_cli("stat", "--data-dir", broker.data_dir).stdout
    lines = text.splitlines()
    assert "disk: " in lines[0] and "disk" in next(line for line in lines if line.startswith("topic")).split()
    result = shmwal_cli("verify", "--data-dir", broker.data_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"verified 51 entries in 2 topic(s) in {broker.root}: no damage" in result.stdout


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_demo_runs_in_a_64_MiB_tmpfs(tmpfs, tmp_path):
    mnt = tmpfs("64m")
    result = subprocess.run([sys.executable, "-m", "shmwal", "demo", "--data-dir", os.path.join(mnt, "demo")],
                            capture_output=True, text=True, timeout=570, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "RESULT: OK" in result.stdout
    assert result.stdout.count("every entry exactly once") == 2
    # Stopped: the block files hold only the blocks the topic's chain keeps (what retention keeps
    # of the fully read topic, and its tail), no spare and no block kept for reuse.
    root = os.path.join(mnt, "demo", "default")
    orders = offline_stats(root)["orders"]
    assert orders["allocated"] == orders["published"] and orders["groups"].keys() == {"audit", "workers"}
    meta_bytes = allocated_bytes(os.path.join(root, "topics", "orders", "meta"))
    assert block_files_bytes(root) == orders["disk_bytes"] - meta_bytes
    assert orders["disk_bytes"] - meta_bytes <= orders["blocks"] * 10 * MiB


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.timeout(120)
def test_enospc_for_a_new_topic_names_the_full_directory_and_what_its_meta_file_needed(tmpfs, path):
    mnt = tmpfs("1m")
    with shmwal.Broker(mnt):
        # Leave one page less than a new topic's meta file takes.
        st = os.statvfs(mnt)
        fd = os.open(os.path.join(mnt, "filler"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(fd, 0, st.f_bavail * st.f_frsize - L.CHAIN_AT)
        finally:
            os.close(fd)
        out = run_client(f"""
            import errno
            client = shmwal.connect({mnt!r})
            try:
                client.append("t", b"x")
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                print(exc)
            else:
                raise SystemExit("a topic fitted in less than its meta file takes")
            assert client.topics() == []
        """, path)
    topics_dir = os.path.join(mnt, "default", "topics")
    assert out.startswith(f"[Errno {errno.ENOSPC}] No space left on device: {topics_dir} is full ("), out
    assert f"the meta file of new topic 't' needed {L.CHAIN_AT + L.PAGE:,} bytes" in out


@pytest.mark.timeout(120)
def test_a_topic_rebuilt_from_its_blocks_reads_no_hole_of_a_sparse_file(tmpfs):
    # The rebuild scans block files for headers; reading a hole of a mapped tmpfs file would
    # allocate it (here 1000 MiB on a 64 MiB tmpfs: a SIGBUS), so the scan skips holes.
    mnt = tmpfs("64m")
    data_dir = os.path.join(mnt, "data")
    with shmwal.Broker(data_dir), shmwal.connect(data_dir) as client:   # the API's defaults: 1000 MiB files
        client.batch_append("t", [b"entry-%04d" % i for i in range(10)])
        root = client._root
    os.unlink(os.path.join(root, "topics", "t", "meta"))                  # lost: rebuilt from the blocks
    before = du(mnt)
    with shmwal.Broker(data_dir), shmwal.connect(data_dir) as client:
        assert [e.data for e in client.batch_read("t", 1 << 20)] == [b"entry-%04d" % i for i in range(10)]
        assert du(mnt) < before + 1 * MiB, (before, du(mnt))
