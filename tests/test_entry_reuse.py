"""hot.c makes an Entry again in place once its caller has dropped it (make_entry_at).

Only an Entry nobody else holds may be reused: whatever a caller keeps (the entry, a list
of them, its data) must read the same forever after, whatever is read later; only small
bytes entries are kept between calls (a view would pin its block, a large payload its
memory). The pure-Python path makes a new Entry every time; the values are the same
(test_differential.py compares the paths).
"""

from __future__ import annotations

import gc
import random
import sys

import pytest

import shmwal
from shmwal.client.hot import native

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(native is None, reason="shmwal._hot is not built (or SHMWAL_PURE_PYTHON is set)")]

REUSE_MAX = 1024   # hot.c ENTRY_REUSE_MAX


def payload(offset: int, size: int) -> bytes:
    stamp = b"%08d|" % offset
    return (stamp * (size // len(stamp) + 1))[:size]


def fill(client, topic, sizes):
    for offset, size in enumerate(sizes):
        assert client.append(topic, payload(offset, size)) == offset


def shape(entry):
    return entry.topic, entry.offset, bytes(entry.data)


def test_a_dropped_entry_is_made_again_in_place(client):
    fill(client, "t", [100] * 4)
    assert client.read_next("t").offset == 0   # the first read of a group sets up its compiled path
    first = client.read_next("t")
    where = id(first)
    assert shape(first) == ("t", 1, payload(1, 100))
    del first
    second = client.read_next("t")
    assert id(second) == where and shape(second) == ("t", 2, payload(2, 100))
    del second
    batch = client.batch_read("t", 1000)
    assert [shape(e) for e in batch] == [("t", 3, payload(3, 100))] and id(batch[0]) == where


def test_entries_a_caller_keeps_never_change(client):
    fill(client, "t", [10, 0, 1024, 1025, 300, 7] * 60)
    kept, expected = [], []
    rng = random.Random(5)
    while True:
        if rng.random() < 0.5:
            found = client.read_next("t")
            got = [] if found is None else [found]
        else:
            got = client.batch_read("t", rng.choice([1, 500, 3000, 100_000]))
        if not got:
            break
        for entry in got:
            assert shape(entry) == ("t", entry.offset, payload(entry.offset, len(entry.data)))
        how = rng.random()
        if how < 0.3:
            kept.append(got)                       # the whole list
            expected.append([shape(e) for e in got])
        elif how < 0.5:
            keep = got[rng.randrange(len(got))]    # one entry of it
            kept.append([keep])
            expected.append([shape(keep)])
        elif how < 0.6:
            data = [e.data for e in got]           # only the data
            kept.append(data)
            expected.append([bytes(d) for d in data])
        del got
        gc.collect() if rng.random() < 0.05 else None
    assert client.position("t") == 360
    for held, shapes in zip(kept, expected):
        assert [shape(e) if isinstance(e, shmwal.Entry) else bytes(e) for e in held] == shapes


def test_large_and_zero_copy_entries_are_not_held_after_the_caller_drops_them(client):
    fill(client, "t", [1, REUSE_MAX, REUSE_MAX + 1, 100])
    assert client.read_next("t").offset == 0   # the first read of a group sets up its compiled path
    small = client.read_next("t").data
    large = client.read_next("t").data
    view = client.read_next("t", zero_copy=True).data
    # Held only here (and by getrefcount's argument), not by a kept Entry: the small one's
    # Entry, kept for reuse, holds it too until made again.
    assert sys.getrefcount(large) == 2
    assert sys.getrefcount(view) == 2
    assert sys.getrefcount(small) == 3
    assert bytes(view) == payload(3, 100) and large == payload(2, REUSE_MAX + 1) and small == payload(1, REUSE_MAX)


def test_an_entry_held_in_a_batch_and_read_again_by_peeking_stays(client):
    fill(client, "t", [50] * 5)
    batch = client.batch_read("t", 150, checkpoint=False)    # three entries, cursor stays
    again = client.batch_read("t", 1000)                      # the same three and two more
    assert [shape(e) for e in batch] == [("t", i, payload(i, 50)) for i in range(3)]
    assert [shape(e) for e in again] == [("t", i, payload(i, 50)) for i in range(5)]
    assert not any(a is b for a, b in zip(batch, again))
