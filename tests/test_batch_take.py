"""batch_read's compiled take (hot.c take_entries, served by the Client's Dispatch; and
batch_read_payloads's), copying and zero-copy, against the Python take (GroupReader._take_once).

hot.c takes a batch when it lies in the block of the group's hint; anything else (a batch
that goes on into the next block, damage, a bad argument, a batch larger than the memory
heap.py keeps) is the Python method's.  Two topics of one broker get the same entries;
one is read through ``client.batch_read`` (the Dispatch, then hot.c), the other through
the Python method with the reader's compiled take switched off, and every batch, the
positions and the errors must be the same.
"""

from __future__ import annotations

import gc
import random

import pytest

import shmwal
from drill_helpers import flip_byte, locate_entries
from shmwal.blocks import layout as L
from shmwal.client import heap
from shmwal.client.facade import Client
from shmwal.client.hot import native

pytestmark = [pytest.mark.timeout(120),
              pytest.mark.skipif(native is None, reason="shmwal._hot is not built (or SHMWAL_PURE_PYTHON is set)")]

C, P = "via-c", "via-python"


def python_reader(client, group):
    """The group's reader of topic P, made and then kept off the compiled take."""
    Client.position(client, P, group=group)   # makes nothing; the first read below makes the reader
    Client.batch_read(client, P, 0, group=group, checkpoint=False)
    reader = client._readers[P, group]
    reader.hot_take = None
    return reader


class TakeCounter:
    """Counts the Python takes of a reader (a batch hot.c served makes none)."""

    def __init__(self, reader):
        self.calls = 0
        original = reader._take_once

        def counting(*args, **kwargs):
            self.calls += 1
            return original(*args, **kwargs)

        reader._take_once = counting


def as_pairs(entries):
    return [(e.offset, bytes(e.data)) for e in entries]


def pins(client, topic: str, block: int) -> int:
    """The block's zero-copy pin count (layout.B_PINS), read through this client's mapping."""
    meta = client._topic_handles[topic][0]
    file_id, file_offset = meta.chain(block)[:2]
    return int.from_bytes(client._files.map(file_id)[file_offset + L.B_PINS:file_offset + L.B_PINS + 8], "little")


def is_view(data) -> bool:
    return type(data) is memoryview and data.readonly


def write_both(client, rng, n):
    """``n`` random entries to both topics: alone or in batches (records of many entries),
    empty ones, and now and then one larger than most budgets."""
    written = 0
    while written < n:
        size = rng.choice([0, 1, 7, 100, 1000, 3000, 20_000]) if rng.random() < 0.97 else rng.randint(60_000, 150_000)
        if rng.random() < 0.4:
            items = [rng.randbytes(rng.choice([0, 5, 100, 900])) for _ in range(rng.randint(2, 40))]
            assert client.batch_append(C, items) == client.batch_append(P, items)
            written += len(items)
        else:
            data = rng.randbytes(size)
            assert client.append(C, data) == client.append(P, data)
            written += 1


@pytest.mark.parametrize("zero_copy", [False, True], ids=["copies", "zero-copy"])
@pytest.mark.parametrize("seed", range(6))
def test_batches_are_the_python_takes_batches(start_broker, seed, zero_copy):
    """Random entries and budgets, checkpointed or peeked, several groups, reads between
    appends (the live tail), small blocks (batches often cross one): the same batches,
    the data bytes (copies) or read-only views (zero_copy) either way."""
    kind = is_view if zero_copy else (lambda data: type(data) is bytes)
    rng = random.Random(seed)
    broker = start_broker(block_size=64 * 1024, blocks_per_file=8)
    with shmwal.connect(broker.data_dir, key=broker.key) as client:
        write_both(client, rng, 50)
        groups = ["g0", "g1", "g2"]
        counters = {}
        for group in groups:
            client.batch_read(C, 0, group=group, checkpoint=False)   # the reader, and its hint
            python_reader(client, group)
            counters[group] = TakeCounter(client._readers[C, group])
        calls = 0
        for step in range(600):
            if rng.random() < 0.1:
                write_both(client, rng, rng.randint(1, 30))
            group = rng.choice(groups)
            budget = rng.choice([0, 1, 99, 100, 101, 1000, 4096, 5000, 65_536, 1 << 20, 10 ** 9, 2 ** 63, 10 ** 30])
            checkpoint = rng.random() < 0.8
            if rng.random() < 0.3:   # batch_read_payloads: the same take, the data alone
                got_c = client.batch_read_payloads(C, budget, group=group, checkpoint=checkpoint,
                                                   zero_copy=zero_copy)
                got_p = Client.batch_read_payloads(client, P, budget, group=group, checkpoint=checkpoint,
                                                   zero_copy=zero_copy)
                assert (got_c.first, [bytes(d) for d in got_c.data]) == \
                    (got_p.first, [bytes(d) for d in got_p.data]), (step, group, budget, checkpoint)
                assert all(kind(data) for data in got_c.data + got_p.data)
            else:
                got_c = client.batch_read(C, budget, group=group, checkpoint=checkpoint, zero_copy=zero_copy)
                got_p = Client.batch_read(client, P, budget, group=group, checkpoint=checkpoint,
                                          zero_copy=zero_copy)
                assert as_pairs(got_c) == as_pairs(got_p), (step, group, budget, checkpoint)
                assert all(e.topic == C and kind(e.data) for e in got_c)
                assert all(kind(e.data) for e in got_p)
            assert client.position(C, group=group) == client.position(P, group=group)
            calls += 1
        python_takes = sum(c.calls for c in counters.values())
        # Both paths were exercised: most batches in hot.c, the block crossings in Python.
        assert 0 < python_takes < calls / 2, (python_takes, calls)


def test_a_batch_ends_at_the_caps_exactly(client):
    """The first entry always (even over the budget), then while the payloads fit; 2,000 at most."""
    for topic in (C, P):
        client.append(topic, b"x" * 500)
        client.batch_append(topic, [b"y" * 100] * 1500)
        client.batch_append(topic, [b"y" * 100] * 1000)
    python_reader(client, "default")
    client.batch_read(C, 0, checkpoint=False)
    for budget, want in [(10, 1), (300, 3), (299, 2), (0, 1), (10 ** 9, 2000)]:
        got_c = client.batch_read(C, budget)
        got_p = Client.batch_read(client, P, budget)
        assert as_pairs(got_c) == as_pairs(got_p) and len(got_c) == want, budget
    assert client.position(C) == client.position(P) == 1 + 3 + 2 + 1 + 2000


MAX_BYTES = [-1, 1.5, True, "5", None, 10 ** 30, 0, 2 ** 63]
READ_KWARGS = [
    {}, {"group": "g"}, {"checkpoint": False}, {"timeout": 0}, {"timeout": 0.0}, {"timeout": -1},
    {"timeout": "1"}, {"timeout": True}, {"checkpoint": 1}, {"zero_copy": True}, {"zero_copy": 1},
    {"group": "bad/group"}, {"group": 5}, {"groupp": "g"}, {"".join(("gro", "up")): "g"},
]


@pytest.mark.parametrize("max_bytes", MAX_BYTES, ids=[repr(m) for m in MAX_BYTES])
@pytest.mark.parametrize("kwargs", READ_KWARGS, ids=[str(i) for i in range(len(READ_KWARGS))])
def test_every_argument_gives_what_the_python_method_gives(client, max_bytes, kwargs):
    for topic in (C, P):
        client.batch_append(topic, [b"entry %d" % i for i in range(6)])
    for group in ("default", "g"):   # primed: a bad argument meets a take that could serve
        client.batch_read(C, 1, group=group)
        Client.batch_read(client, P, 1, group=group)

    def outcome(call, topic):
        try:
            value = call(topic, max_bytes, **kwargs)
        except Exception as exc:   # noqa: BLE001 - the exception is the result compared
            return ("raised", type(exc), str(exc).replace(topic, "TOPIC"))
        return ("ok", [(e.offset, bytes(e.data), type(e.data)) for e in value])

    got_c = outcome(client.batch_read, C)
    got_p = outcome(lambda *a, **k: Client.batch_read(client, *a, **k), P)
    assert got_c == got_p
    for group in ("default", "g"):
        assert client.position(C, group=group) == client.position(P, group=group)


def test_positional_extras_and_max_bytes_by_name(client):
    for topic in (C, P):
        client.append(topic, b"x")
        client.append(topic, b"y")
    for args, kwargs in [((), {"max_bytes": 1}), (("g",), {}), ((1, 2), {})]:
        got_c = got_p = None
        try:
            got_c = ("ok", as_pairs(client.batch_read(C, *args, **kwargs)))
        except TypeError as exc:
            got_c = ("raised", str(exc))
        try:
            got_p = ("ok", as_pairs(Client.batch_read(client, P, *args, **kwargs)))
        except TypeError as exc:
            got_p = ("raised", str(exc))
        assert got_c == got_p, (args, kwargs)


def test_nothing_to_read_gives_an_empty_list_at_once(client):
    assert client.batch_read("nothing", 100) == []
    client.append(C, b"x")
    assert [e.data for e in client.batch_read(C, 100)] == [b"x"]
    assert client.batch_read(C, 100) == [] and client.batch_read(C, 100, timeout=0) == []
    assert client.batch_read(C, 100, timeout=0.05) == []   # waits, in Python, and finds nothing
    client.append(C, b"y")
    assert client.batch_read_payloads(C, 100) == shmwal.Payloads(1, [b"y"])
    assert client.batch_read_payloads(C, 100) == shmwal.Payloads(2, [])
    assert client.batch_read_payloads(C, 100, timeout=0.05) == shmwal.Payloads(2, [])


def test_a_batch_larger_than_the_kept_heap_goes_to_python_which_keeps_it(client, monkeypatch):
    """hot.c copies at most heap.retained bytes a batch: a larger one takes the Python read,
    which calls heap.retain (freeing the batch must not give its memory back)."""
    retained = []
    before = heap.retained
    monkeypatch.setattr(heap, "retain", lambda total: retained.append(total))
    monkeypatch.setattr(heap, "retained", 10_000)   # monkeypatch puts ``before`` back
    native.retained_bytes(10_000)
    try:
        client.batch_append(C, [b"z" * 1000] * 30)
        client.batch_read(C, 0, checkpoint=False)   # the hint
        assert len(client.batch_read(C, 5000)) == 5 and retained == []
        assert len(client.batch_read(C, 20_000)) == 20 and retained == [20_000]
    finally:
        native.retained_bytes(before)


def test_batches_past_their_cached_part_come_back_exact(start_broker, monkeypatch):
    """A batch stores what it copies past its first 8 MiB past the caches (hot.c
    STREAM_BATCH_AFTER: entries from 32 KiB): hot.c's take (a batch in the hint's block) and
    decode (Python's take, here across blocks) must still give every byte, the small entries
    among the large ones and the copies on either side of the 8 MiB included."""
    broker = start_broker(block_size=16 << 20, blocks_per_file=2)
    rng = random.Random(13)
    datas = [rng.randbytes(rng.choice([0, 100, 5000, 32 * 1024 - 1, 32 * 1024, 40_001, 65_536, 200_000]))
             for _ in range(600)]   # ~28 MB: blocks 0 and 1 of each topic
    before = heap.retained
    monkeypatch.setattr(heap, "retained", 64 << 20)   # hot.c may take batches this large
    native.retained_bytes(64 << 20)
    try:
        with shmwal.connect(broker.data_dir, key=broker.key) as client:
            for data in datas:
                assert client.append(C, data) == client.append(P, data)
            python_reader(client, "default")
            client.batch_read(C, 0, checkpoint=False)   # the reader, and its hint
            takes = TakeCounter(client._readers[C, "default"])
            got = {C: [], P: []}
            for budget in [1, 12 << 20, 20 << 20, 9 << 20, 30 << 20]:   # the first read moves the hint
                batch_c = client.batch_read(C, budget)
                batch_p = Client.batch_read(client, P, budget)
                assert as_pairs(batch_c) == as_pairs(batch_p), budget
                assert budget == 1 or sum(len(e.data) for e in batch_c) > 8 << 20 \
                    or len(got[C]) + len(batch_c) == len(datas)
                got[C] += batch_c
                got[P] += batch_p
            assert [bytes(e.data) for e in got[C]] == [bytes(e.data) for e in got[P]] == datas
            assert [e.offset for e in got[C]] == list(range(len(datas)))
            assert takes.calls == 2   # the first read and the crossing of block 1: hot.c the others
    finally:
        native.retained_bytes(before)


@pytest.mark.parametrize("zero_copy", [False, True], ids=["copies", "zero-copy"])
def test_a_damaged_entry_in_the_block_is_reported_after_the_good_ones(broker, client, zero_copy):
    """hot.c finds the bad checksum, takes nothing and hands the read to Python, which
    returns the entries before it, then raises CorruptEntry for it."""
    client.batch_append(C, [b"good %d" % i for i in range(10)])
    client.batch_read(C, 0, checkpoint=False)   # the hint, at offset 0
    bad = next(e for e in locate_entries(broker.root, C) if e.offset == 6)
    flip_byte(bad.path, bad.payload_pos + 1, 0x10)
    assert [e.offset for e in client.batch_read(C, 10 ** 6, zero_copy=zero_copy)] == [0, 1, 2, 3, 4, 5]
    with pytest.raises(shmwal.CorruptEntry) as caught:
        client.batch_read(C, 10 ** 6, zero_copy=zero_copy)
    assert caught.value.offset == 6
    del caught   # its traceback's frames hold the take's views
    client.seek(C, 7)
    assert [e.offset for e in client.batch_read(C, 10 ** 6, zero_copy=zero_copy)] == [7, 8, 9]
    gc.collect()
    assert pins(client, C, 0) == 0


def test_a_zero_copy_batch_is_hot_cs_and_its_views_alone_pin_the_block(client):
    """In the hint's block hot.c serves zero-copy batches too (no Python take): read-only
    views into the mapped block, which is pinned against reuse while any of them lives
    and not after; the reader keeps no pin of its own."""
    datas = [b"view %d" % i for i in range(50)]
    client.batch_append(C, datas)
    assert [e.data for e in client.batch_read(C, 0)] == datas[:1]   # the reader, and its hint
    takes = TakeCounter(client._readers[C, "default"])
    first = client.batch_read(C, 100, zero_copy=True)
    second = client.batch_read_payloads(C, 100, zero_copy=True)
    assert takes.calls == 0
    # "view 1".."view 9" are 6 bytes, the rest 7: 9 * 6 + 6 * 7 = 96, then 100 // 7 = 14.
    assert [bytes(e.data) for e in first] == datas[1:16] and all(is_view(e.data) for e in first)
    assert second.first == 16 and [bytes(d) for d in second.data] == datas[16:30]
    assert all(is_view(d) for d in second.data)
    assert pins(client, C, 0) == 2   # one a batch, for as long as its views live
    kept = first[3].data
    del first
    gc.collect()
    assert pins(client, C, 0) == 2 and bytes(kept) == datas[4]   # one view keeps its batch's pin
    del kept, second
    gc.collect()
    assert pins(client, C, 0) == 0
    with pytest.raises(TypeError):
        client.batch_read(C, 100, zero_copy=True)[0].data[0] = 1   # read-only


def test_with_io_uring_batches_are_not_the_dispatchs(broker):
    from shmwal.uring import probe
    if probe() is not None:
        pytest.skip(f"io_uring not available: {probe()}")
    with shmwal.connect(broker.data_dir, key=broker.key, io="uring") as client:
        assert "batch_read" not in vars(client) and client.read_next.__self__ is client._dispatch
        client.append("t", b"x")
        assert [e.data for e in client.batch_read("t", 10)] == [b"x"]
        assert client._readers["t", "default"].hot_take is None


def test_the_dispatch_serves_batch_read_unless_a_subclass_overrides_it(broker, client):
    assert client.batch_read.__self__ is client._dispatch

    class Counting(Client):
        calls = 0

        def batch_read(self, topic, max_bytes, **kwargs):
            Counting.calls += 1
            return super().batch_read(topic, max_bytes, **kwargs)

    with Counting(broker.data_dir, key=broker.key) as mine:
        assert "batch_read" not in vars(mine) and mine.read_next.__self__ is mine._dispatch
        mine.append("t", b"x")
        assert [e.data for e in mine.batch_read("t", 10)] == [b"x"] and Counting.calls == 1
