"""The reclamation policy (server/reclaim.py) on its own: chain, cursors and pins in, decisions out."""

import pytest

from shmwal.server.reclaim import DELETE_GRACE, dispose, due_for_delete, reclaimable

BLOCK = 1 << 16
# (file_id, file_offset, capacity, first_offset): four blocks holding 0..9, 10..19, 20..29, 30..
CHAIN = [(1, 0, BLOCK, 0), (1, BLOCK, BLOCK, 10), (1, 2 * BLOCK, BLOCK, 20), (2, 0, BLOCK, 30)]


@pytest.mark.parametrize("cursors, expected", [
    ([], 0),            # nobody read the topic: it keeps everything
    ([0], 0),
    ([9], 0),           # entry 9 unread: block 0 stays
    ([10], 1),
    ([25, 19], 1),      # the slowest group decides
    ([29, 30], 2),
    ([10**6], 3),       # everything read: the tail block (published - 1) still stays
])
def test_reclaimable_moves_past_blocks_every_group_has_read(cursors, expected):
    assert reclaimable(CHAIN.__getitem__, 0, len(CHAIN), cursors) == expected


def test_reclaimable_never_passes_published_blocks():
    assert reclaimable(CHAIN.__getitem__, 0, 2, [10**6]) == 1
    assert reclaimable(CHAIN.__getitem__, 2, 4, [10**6]) == 3


def test_dispose_offers_unpinned_standard_blocks_of_a_written_topic_while_there_is_room():
    blocks = CHAIN[:3] + [(3, 0, 4 * BLOCK, 40)]   # the last one is a jumbo block
    out = dispose(blocks, [0, 1, 0, 0], writer_active=True, block_size=BLOCK, room=16)
    assert out.offer == [(1, 0), (1, 2 * BLOCK)]
    assert out.free == [(1, BLOCK), (3, 0)]       # pinned by a zero-copy view; not the standard size


def test_dispose_frees_everything_of_an_idle_topic():
    out = dispose(CHAIN[:3], [0, 0, 0], writer_active=False, block_size=BLOCK, room=16)
    assert out.offer == [] and out.free == [(1, 0), (1, BLOCK), (1, 2 * BLOCK)]


def test_dispose_offers_no_more_than_the_room_left_and_never_an_unreadable_pin():
    out = dispose(CHAIN[:3], [-1, 0, 0], writer_active=True, block_size=BLOCK, room=1)
    assert out.offer == [(1, BLOCK)] and out.free == [(1, 0), (1, 2 * BLOCK)]


def test_due_for_delete_waits_the_grace_period_once_per_file():
    pending = {}
    assert due_for_delete(pending, [7], now=100.0) == []
    assert due_for_delete(pending, [7, 8], now=100.0 + DELETE_GRACE / 2) == []   # 7 keeps its first time
    assert due_for_delete(pending, [7, 8], now=100.0 + DELETE_GRACE) == [7]
    assert pending == {8: 100.0 + DELETE_GRACE * 1.5}


# ----------------------------------------------------------------------------- parked blocks

class _Allocator:
    def __init__(self):
        self.offered, self.freed = [], []

    def offer(self, topic, file_id, file_offset):
        self.offered.append((topic, file_id, file_offset))

    def free(self, file_id, file_offset, release_space=True):
        self.freed.append((file_id, file_offset, release_space))

    def reusable(self, topic):
        return 0


class _State:
    def __init__(self, moved_ago: float):
        import time
        from types import SimpleNamespace
        self.meta = SimpleNamespace(name="t")
        self.moved_at = time.monotonic() - moved_ago


@pytest.mark.parametrize("pins, moved_ago, parked_for, expected", [
    (1, 0.0, 10.0, "parked"),          # still pinned, in time: kept back
    (0, 0.0, 10.0, "offered"),         # the views went, the writer is active: reused
    (0, 5.0, 10.0, "freed+released"),  # the views went, the writer is idle: freed, space back
    (1, 0.0, -1.0, "freed+kept"),      # still pinned past its time: freed, bytes kept for the views
    (-1, 0.0, 10.0, "freed+kept"),     # unreadable pin word: never reused
])
def test_parked_blocks_are_reused_once_their_pins_go(monkeypatch, pins, moved_ago, parked_for, expected):
    import time
    from shmwal.server.reclaim import Reclaimer

    allocator = _Allocator()
    reclaimer = Reclaimer(registry=None, allocator=allocator, files=None, block_size=BLOCK)
    monkeypatch.setattr(reclaimer, "_pins", lambda file_id, file_offset: pins)
    reclaimer.parked["t"] = [(1, BLOCK, time.monotonic() + parked_for)]
    reclaimer._unpark(_State(moved_ago))
    outcome = {
        "parked": [b[:2] for b in reclaimer.parked.get("t", [])] == [(1, BLOCK)]
                  and not allocator.offered and not allocator.freed,
        "offered": allocator.offered == [("t", 1, BLOCK)] and not allocator.freed and "t" not in reclaimer.parked,
        "freed+released": allocator.freed == [(1, BLOCK, True)] and not allocator.offered,
        "freed+kept": allocator.freed == [(1, BLOCK, False)] and not allocator.offered,
    }
    assert [k for k, v in outcome.items() if v] == [expected], (reclaimer.parked, allocator.offered, allocator.freed)
