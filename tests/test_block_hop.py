"""The fast read paths across block boundaries (GroupReader.hop).

hot.c's Reader, and the pure path's ``_fast``, serve entries of the block the group's hint
is in; the first entry of every next block used to go the general path (a walk from the
block's start, and for ``shmwal.Queue``'s large items a checksum of the mapped entry and
then a second pass to copy it out). ``hop`` moves the hint to the next block's first record
once the cursor reaches it, so the fast path serves that entry too. This file runs in both
hot paths (.ci/run repeats it with SHMWAL_PURE_PYTHON=1).
"""

from __future__ import annotations

import random

import pytest

import shmwal
from drill_helpers import flip_byte, locate_entries
from shmwal.blocks import layout as L
from shmwal.client import read as read_module
from shmwal.client.hot import native

ENTRY = 20_000   # three a 64 KiB block
COUNT = 40


@pytest.fixture
def broker(start_broker):
    """Blocks of 64 KiB, none reclaimed while a test runs: a block file deleted under a
    reader sends its next read the general path (rightly), which these tests count."""
    return start_broker(retention=shmwal.Retention())


@pytest.fixture
def takes(monkeypatch):
    """Entries the general path (GroupReader._take) handed out, by offset."""
    taken = []
    original = read_module.GroupReader._take

    def counting(self, *args, **kwargs):
        entries, seen_next = original(self, *args, **kwargs)
        taken.extend(getattr(e, "offset", None) for e in entries)
        return entries, seen_next

    monkeypatch.setattr(read_module.GroupReader, "_take", counting)
    return taken


def _fill(client, count=COUNT):
    rng = random.Random(11)
    expected = [rng.randbytes(ENTRY + i) for i in range(count)]
    for data in expected:
        client.append("t", data)
    return expected


def _blocks_opened(root) -> list[int]:
    """Offsets of the entries that open a block, past the topic's first."""
    return [e.offset for e in locate_entries(root, "t")
            if e.offset and e.record_pos == e.block_start + L.BLOCK_HEADER_SIZE]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("zero_copy", [False, True])
def test_read_next_serves_the_first_entry_of_every_block_on_the_fast_path(broker, client, takes, zero_copy):
    expected = _fill(client)
    assert len(_blocks_opened(broker.root)) >= 10   # the test crosses many blocks
    got = [client.read_next("t", group="g", zero_copy=zero_copy) for _ in range(COUNT)]
    assert [bytes(e.data) for e in got] == expected
    assert [e.offset for e in got] == list(range(COUNT))
    assert client.read_next("t", group="g") is None
    if zero_copy and native is None:
        assert takes == list(range(COUNT))   # the pure path has no fast zero-copy read
    else:
        assert takes == [0]   # only the group's first read has no hint to go on


@pytest.mark.timeout(60)
def test_read_next_waiting_for_an_entry_that_opens_a_block_takes_it_on_the_fast_path(broker, client, takes):
    expected = _fill(client, 3)   # the first block (small) and the next: entry 3 opens a block
    assert [client.read_next("t", group="g").data for _ in range(3)] == expected
    opens = _blocks_opened(broker.root)
    nxt = client.append("t", b"x" * ENTRY)   # a new block: the hint is at the end of the last one
    assert nxt in _blocks_opened(broker.root) and nxt not in opens
    entry = client.read_next("t", group="g", timeout=5)
    assert (entry.offset, entry.data) == (nxt, b"x" * ENTRY)
    assert takes == [0]


@pytest.mark.timeout(60)
def test_queue_items_that_open_a_block_are_read_on_the_fast_path(start_broker, takes):
    np = pytest.importorskip("numpy")
    broker = start_broker(block_size=1 << 20, retention=shmwal.Retention())   # 12 MB: all kept
    q = shmwal.Queue("items", data_dir=broker.data_dir, key=broker.key)
    arrays = [np.full(75_000 + i, i, dtype=np.uint32) for i in range(COUNT)]   # ~300 KB, past LARGE
    for a in arrays:
        q.put(a)
    for a in arrays:
        got = q.get(timeout=5)
        assert got.dtype == a.dtype and np.array_equal(got, a)
    q.close()
    blocks = {e.chain_index for e in locate_entries(broker.root, "items")}
    assert len(blocks) >= 10
    # hot.c: every get after the first (no hint yet) is served compiled, block after block;
    # the pure path reads large items zero-copy, which only the general path does.
    assert takes == ([0] if native is not None else list(range(COUNT)))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("what", ["record header", "payload"])
def test_a_damaged_entry_that_opens_a_block_is_reported_where_it_is(broker, client, what):
    """hop refuses a record that does not start at the cursor (damaged header); a damaged
    payload passes hop and is refused by the fast path's checksum: either way read_next
    raises CorruptEntry at that offset, the cursor stays, and seek steps over it."""
    expected = _fill(client)
    victim = _blocks_opened(broker.root)[3]
    (loc,) = [e for e in locate_entries(broker.root, "t") if e.offset == victim]
    assert [client.read_next("t", group="g").data for _ in range(victim)] == expected[:victim]
    if what == "record header":
        flip_byte(loc.path, loc.record_pos + 8, 0x01)   # first_offset
    else:
        flip_byte(loc.path, loc.payload_pos + 100, 0x10)
    for _ in range(2):
        with pytest.raises(shmwal.CorruptEntry) as info:
            client.read_next("t", group="g")
        assert (info.value.topic, info.value.offset) == ("t", victim)
        assert client.position("t", group="g") == victim
    client.seek("t", victim + 1, group="g")
    rest = [client.read_next("t", group="g") for _ in range(COUNT - victim - 1)]
    assert [(e.offset, e.data) for e in rest] == list(enumerate(expected))[victim + 1:]


@pytest.mark.timeout(60)
def test_a_hint_left_half_moved_is_not_trusted(broker, client):
    """A reader killed inside hop leaves G_HINT_OFFSET off (NO_HINT) with the new block or
    position stored, or the old hint whole: the next read finds its entry either way."""
    expected = _fill(client)
    victim = _blocks_opened(broker.root)[2]
    assert [client.read_next("t", group="g").data for _ in range(victim)] == expected[:victim]
    reader = client._readers["t", "g"]
    words = reader.words
    # As if killed between hop's stores: hint off, chain moved, position not yet.
    words[reader.w_hint_offset] = read_module.NO_HINT
    words[reader.w_hint_chain] += 1
    assert client.read_next("t", group="g").data == expected[victim]
    # As if killed after the position too, before the hint went on again: a wrong position
    # under an offset that is not the cursor is never read.
    words[reader.w_hint_offset] = read_module.NO_HINT
    words[reader.w_hint_pos] = 12345
    rest = [client.read_next("t", group="g").data for _ in range(COUNT - victim - 1)]
    assert rest == expected[victim + 1:]


@pytest.mark.timeout(60)
def test_hop_moves_no_hint_unless_the_cursor_opens_the_next_published_block(broker, client):
    expected = _fill(client)
    opens = _blocks_opened(broker.root)
    reader = client._reader("t", "g", create=True)
    assert not reader.hop()   # no hint yet (a fresh group)
    assert client.read_next("t", group="g").data == expected[0]
    assert not reader.hop()   # the cursor is inside the hint's block
    for _ in range(1, opens[0]):
        client.read_next("t", group="g")
    before = (reader.words[reader.w_hint_chain], reader.words[reader.w_hint_pos])
    assert reader.hop()
    after = (reader.words[reader.w_hint_chain], reader.words[reader.w_hint_pos])
    assert after[0] == before[0] + 1 and reader.words[reader.w_hint_offset] == opens[0]
    assert not reader.hop()   # once
    assert client.read_next("t", group="g").data == expected[opens[0]]
