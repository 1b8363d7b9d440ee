"""Readers on damaged blocks (issue 11, item 1): a damaged entry never wedges a group.

Before the fix, a block file cut short in the middle of a topic made every
``batch_read`` raise ``ValueError: memoryview: invalid value for format 'Q'`` (the
reader stored a read hint of -1), threw away the entries it had decoded, and gave no
offset to seek past, while ``read_next`` at the same place worked.  Now each way of
reading returns the good entries before the damage, raises CorruptEntry with the
offset on the next call, and all ways agree on what is readable.  This file runs in
both hot paths (.ci/run repeats it with SHMWAL_PURE_PYTHON=1).
"""

from __future__ import annotations

import os
import random

import pytest

import shmwal
from damage_helpers import WAYS, block_files, read_through
from drill_helpers import flip_byte, locate_entries

ENTRY = 1000
COUNT = 600


def _write(data_dir, start_broker):
    broker = start_broker(block_size=65536, blocks_per_file=4)
    with shmwal.connect(data_dir) as client:
        expected = []
        rng = random.Random(5)
        while len(expected) < COUNT:
            if rng.random() < 0.5:
                p = rng.randbytes(ENTRY)
                assert client.append("t", p) == len(expected)
                expected.append(p)
            else:
                ps = [rng.randbytes(rng.randint(10, ENTRY)) for _ in range(rng.randint(2, 8))]
                client.batch_append("t", ps)
                expected.extend(ps)
    broker.stop()
    return broker, expected


def _read_every_way(data_dir, start_broker, expected, max_bytes=1 << 20):
    broker = start_broker(block_size=65536, blocks_per_file=4)
    seen = {}
    with shmwal.connect(data_dir) as client:
        end = client.stats()["topics"]["t"]["next_offset"]
        for way in WAYS:   # every group exists before any reads: no block goes under a later one
            client.create_group("t", f"g-{way}")
        for way in WAYS:
            got, corrupt, problems = read_through(client, "t", f"g-{way}", way, end, max_bytes)
            assert not problems, problems
            wrong = [o for o, d in got.items() if d != expected[o]]
            assert not wrong, f"{way} returned wrong data at {wrong[:5]}"
            assert sorted(set(got) | set(corrupt)) == list(range(end)), \
                f"{way}: offsets neither read nor reported corrupt"
            seen[way] = (sorted(got), corrupt)
    broker.stop()
    assert len({repr(v) for v in seen.values()}) == 1, \
        {w: (len(g), c[:10]) for w, (g, c) in seen.items()}   # every way reads the same entries
    return seen["batch_read"]


@pytest.mark.timeout(120)
def test_a_truncated_middle_block_file_does_not_wedge_a_group(data_dir, start_broker):
    broker, expected = _write(data_dir, start_broker)
    files = block_files(broker.root)
    assert len(files) >= 2
    os.truncate(files[0], 65536)   # the case: a file of middle blocks cut to its first block
    read, corrupt = _read_every_way(data_dir, start_broker, expected)
    assert corrupt and len(read) + len(corrupt) == len(expected)
    assert read[0] == 0 and read[-1] == len(expected) - 1


@pytest.mark.timeout(120)
@pytest.mark.parametrize("batch", [False, True], ids=["single", "batch"])
def test_a_damaged_entry_inside_a_batch_read_returns_the_entries_before_it(data_dir, start_broker, batch):
    broker, expected = _write(data_dir, start_broker)
    locs = [e for e in locate_entries(broker.root, "t")
            if (e.record_count > 1) == batch and e.index == (1 if batch else 0) and 50 < e.offset < 500]
    bad = locs[len(locs) // 2]
    flip_byte(bad.path, bad.payload_pos + bad.length // 2, 0x10)
    start_broker(block_size=65536, blocks_per_file=4)
    with shmwal.connect(data_dir) as client:
        client.seek("t", bad.offset - 3)
        first = client.batch_read("t", 1 << 30)
        assert [e.offset for e in first] == [bad.offset - 3, bad.offset - 2, bad.offset - 1]
        assert [e.data for e in first] == expected[bad.offset - 3:bad.offset]
        for call in (lambda: client.batch_read("t", 1 << 30), lambda: client.read_next("t"),
                     lambda: client.batch_read_payloads("t", 1 << 30)):
            with pytest.raises(shmwal.CorruptEntry) as info:
                call()
            assert (info.value.topic, info.value.offset) == ("t", bad.offset)
        client.seek("t", bad.offset + 1)
        rest = client.batch_read("t", 1 << 30)
        assert rest[0].offset == bad.offset + 1 and [e.data for e in rest] == expected[bad.offset + 1:][:len(rest)]


@pytest.mark.timeout(120)
def test_random_flips_in_block_files_never_wedge_or_mislead_any_way_of_reading(data_dir, start_broker):
    broker, expected = _write(data_dir, start_broker)
    rng = random.Random(11)
    for path in block_files(broker.root):
        size = os.path.getsize(path)
        for _ in range(25):
            flip_byte(path, rng.randrange(size), 1 << rng.randrange(8))
    _read_every_way(data_dir, start_broker, expected, max_bytes=20_000)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_a_damaged_large_entry_is_never_handed_out(start_broker, where, copy_kernel):
    """Entries from hot.c's STREAM_MIN (32 KiB) are checked piece by piece as they are copied
    (copy_checksum): damage in any piece raises CorruptEntry, for every way of reading,
    from a reader whose compiled path has the block cached (it read the entries before)."""
    broker = start_broker(block_size=4 << 20)
    rng = random.Random(3)
    expected = [rng.randbytes(100_000 + i) for i in range(6)]
    with shmwal.connect(broker.data_dir, key=broker.key) as client:
        for data in expected:
            client.append("t", data)
        for group in ("next", "batch"):
            client.create_group("t", group)
        assert client.read_next("t", group="next").data == expected[0]
        assert [e.data for e in client.batch_read("t", 150_000, group="batch")] == expected[:1]
        (bad,) = [e for e in locate_entries(broker.root, "t") if e.offset == 1]
        at = {"first": 5, "middle": bad.length // 2, "last": bad.length - 3}[where]
        flip_byte(bad.path, bad.payload_pos + at, 0x04)
        for call in (lambda: client.read_next("t", group="next"),
                     lambda: client.batch_read("t", 1 << 30, group="batch")):
            for _ in range(2):
                with pytest.raises(shmwal.CorruptEntry) as info:
                    call()
                assert (info.value.topic, info.value.offset) == ("t", 1)
        client.seek("t", 2, group="next")
        assert [client.read_next("t", group="next").data for _ in range(4)] == expected[2:]
