"""Reclaimed blocks go back to their own topic (blocks/allocator.py, server/reclaim.py).

A block every group has read past is handed to the same topic again instead
of a never-touched one (whose pages cost 20-40x more to fault in here). What
must hold: no entry is lost, duplicated or read back wrong; another topic
never gets the block (stale bytes there could pass for its entries); a block
with zero-copy views alive is never reused (a view must not change under its
holder), even when the reader holding them was killed; and files still go once
nothing uses them.
"""

from __future__ import annotations

import os
import time

import pytest

import shmwal
from conftest import wait_until
from helpers import (START_METHODS, Workers, consume, no_resource_tracker_left, parse_payload,  # noqa: F401
                     produce, read_all)
from shmwal.blocks import layout as L
from shmwal.blocks.allocator import BlockAllocator

KiB = 1024


def chain_regions(client, topic: str, blocks: range) -> list[tuple[int, int]]:
    meta = client._topic_handles[topic][0]
    return [tuple(meta.chain(i)[:2]) for i in blocks]


def published(client, topic: str) -> int:
    return client._topic_handles[topic][0].get(L.H_PUBLISHED_BLOCKS)


def test_allocator_reuses_a_topics_blocks_for_that_topic_only_and_expires_them(tmp_path):
    allocator = BlockAllocator(str(tmp_path), 4096, 4)
    a1, a2, b1 = allocator.alloc(10, "a"), allocator.alloc(10, "a"), allocator.alloc(10, "b")
    assert len({a1, a2, b1}) == 3
    allocator.offer("a", *a1[:2])
    allocator.offer("a", *a2[:2])
    assert allocator.reusable("a") == 2 and allocator.reusable("b") == 0
    assert allocator.alloc(10, "b") not in (a1, a2)          # b never gets a's blocks
    assert allocator.alloc(10, "a") == a2                    # the most recently freed first
    assert allocator.alloc(5000, "a")[2] == 8192              # jumbo: a file of its own
    allocator.expire(0.0)                                      # a1 not taken: freed for good
    assert allocator.reusable("a") == 0 and a1[1] not in allocator.live[a1[0]]
    assert allocator.reused == 1


def test_a_file_holding_a_kept_block_drains_instead_of_being_reused(tmp_path):
    # A block freed with its bytes kept (a dead zero-copy reader's pin) keeps its file's
    # space until the file goes: the file's other blocks must leave circulation for that.
    allocator = BlockAllocator(str(tmp_path), 4096, 4)
    a, b, c = allocator.alloc(10, "t"), allocator.alloc(10, "t"), allocator.alloc(10, "t")
    assert a[0] == b[0] == c[0]
    allocator.offer("t", *b[:2])                               # offered before the pin leaked
    allocator.free(*a[:2], release_space=False)
    allocator.offer("t", *c[:2])                               # now freed instead
    assert allocator.reusable("t") == 1 and c[1] not in allocator.live[a[0]]
    d = allocator.alloc(10, "t")                               # b is skipped (freed) ...
    assert d[0] != a[0] and allocator.reused == 0              # ... and no more carving from a's file
    assert allocator.reusable("t") == 0 and allocator.live[a[0]] == {}
    assert allocator.deletable() == [a[0]]


def test_a_current_file_holding_a_kept_block_hands_out_no_more_and_can_go(tmp_path):
    # A topic whose reused blocks keep up never needs a new block: the file must not wait
    # for its slots to run out before it may go.
    allocator = BlockAllocator(str(tmp_path), 4096, 4)
    a = allocator.alloc(10, "t")
    allocator.free(*a[:2], release_space=False)
    assert allocator.deletable() == [a[0]]
    assert allocator.alloc(10, "t")[0] != a[0]


@pytest.mark.timeout(60)
def test_a_consumed_topic_reuses_its_own_blocks_and_reads_back_exactly(start_broker):
    broker = start_broker(block_size=64 * KiB, blocks_per_file=4)
    with shmwal.connect(broker.data_dir, key=broker.key) as client:
        first = [b"a%05d" % i + bytes(2000) for i in range(150)]        # ~5 blocks
        other = [b"b%05d" % i + bytes(2000) for i in range(150)]
        client.batch_append("a", first[:50])
        client.batch_append("a", first[50:100])
        client.batch_append("a", first[100:])
        assert published(client, "a") >= 4

        # Streaming: the group keeps up with the writer, so the broker reclaims (and offers
        # back) what it read while the topic is still being written.
        second = [b"A%05d" % i + bytes(2000) for i in range(150)]
        got = []
        for i in range(0, 150, 10):
            client.batch_append("a", second[i:i + 10])
            client.batch_append("b", other[i:i + 10])
            got += [e.data for e in read_all(client, "a", "g")]
            time.sleep(0.05)   # a few of the broker's 20 ms ticks
        assert got == first + second
        # Chain slots keep naming their block after reclamation: a region twice in "a"'s chain
        # is a block it got back (the most recently freed goes first, so not always `used`).
        def chain_and_reused():
            allocated = client._topic_handles["a"][0].get(L.H_ALLOCATED_BLOCKS)   # spares ahead included
            return chain_regions(client, "a", range(allocated)), client.stats()["blocks_reused"]

        # Every block the broker handed back is a region twice in the chain. It may still be
        # placing a spare between the two looks (a reuse counted, its slot not yet read):
        # they agree once it is done.
        def reuses_counted() -> bool:
            mine, reused = chain_and_reused()
            return reused == len(mine) - len(set(mine))

        assert wait_until(reuses_counted, 5), chain_and_reused()
        mine, _ = chain_and_reused()
        theirs = chain_regions(client, "b", range(published(client, "b")))
        assert len(set(mine)) < len(mine), f"the topic got none of its consumed blocks back: {mine}"
        assert not set(theirs) & set(mine), "another topic got a block of this one"

        assert [e.data for e in client.batch_read("b", 10**9, group="g")] == other
    with shmwal.connect(broker.data_dir, key=broker.key) as fresh:
        oldest = fresh.position("a", group="late")
        assert oldest >= 150 - 50
        assert [(e.offset, e.data) for e in fresh.batch_read("a", 10**9, group="late")] == \
            [(o, (first + second)[o]) for o in range(oldest, 300)]
    broker.stop()
    start_broker(block_size=64 * KiB, blocks_per_file=4)   # and a new broker starts on them
    with shmwal.connect(broker.data_dir, key=broker.key) as again:
        assert again.read_next("a", group="g") is None
        start = again.position("a", group="late2")   # whatever is still kept (reclamation goes on)
        assert 0 < start < 300
        assert [(e.offset, e.data) for e in again.batch_read("a", 10**9, group="late2")] == \
            [(o, (first + second)[o]) for o in range(start, 300)]


def pins(client, topic: str, block: int) -> int:
    """The block's zero-copy pin count (layout.B_PINS), read through this client's mapping."""
    meta = client._topic_handles[topic][0]
    file_id, file_offset = meta.chain(block)[:2]
    return int.from_bytes(client._files.map(file_id)[file_offset + L.B_PINS:file_offset + L.B_PINS + 8], "little")


def stream_past(client, topic: str, datas: list, start: int) -> None:
    """Append datas[start:] in batches of 20, reading each back through group g (copies)."""
    for i in range(start, len(datas), 20):
        client.batch_append(topic, datas[i:i + 20])
        assert [e.data for e in client.batch_read(topic, 10**9, group="g")] == datas[i:i + 20]


@pytest.mark.timeout(60)
def test_zero_copy_views_pin_their_block_against_reuse_until_they_are_gone(start_broker):
    broker = start_broker(block_size=64 * KiB, blocks_per_file=4)
    with shmwal.connect(broker.data_dir, key=broker.key) as client:
        datas = [bytes([i % 251]) * 3000 for i in range(400)]            # ~19 blocks
        client.batch_append("z", datas[:20])                              # block 0
        held = client.batch_read("z", 10**9, group="g", zero_copy=True)
        assert [bytes(e.data) for e in held] == datas[:20]
        pinned = chain_regions(client, "z", range(1))[0]
        assert pins(client, "z", 0) == 1                                  # this process, once
        stream_past(client, "z", datas, 20)
        assert wait_until(lambda: client.stats()["topics"]["z"]["first_offset"] > 20, 5)
        stream_past(client, "z", datas * 2, 400)                          # more blocks: reuse runs
        meta = client._topic_handles["z"][0]
        later = chain_regions(client, "z", range(meta.get(L.H_FIRST_BLOCK), meta.get(L.H_PUBLISHED_BLOCKS)))
        assert client.stats()["blocks_reused"] > 0, "unpinned blocks are reused"
        assert pinned not in later, "the pinned block came back while views of it were alive"
        assert [bytes(e.data) for e in held] == datas[:20]
        # Views gone: the pin is taken back (the block itself was freed meanwhile, not reused).
        file_id, file_offset = pinned
        word = client._files.map(file_id)
        del held
        import gc
        gc.collect()
        assert int.from_bytes(word[file_offset + L.B_PINS:file_offset + L.B_PINS + 8], "little") == 0
        # A zero-copy read pins only the block it reads, for as long as its views live.
        client.seek("z", meta.get(L.H_FIRST_OFFSET), group="v")
        views = client.batch_read("z", 1, group="v", zero_copy=True)
        first_block = meta.get(L.H_FIRST_BLOCK)
        assert pins(client, "z", first_block) == 1
        del views
        gc.collect()
        assert pins(client, "z", first_block) == 0      # the reader itself holds no pin


def _hold_views_then_wait(client, topic, ready, release):
    held = client.batch_read(topic, 10**9, group="zc", zero_copy=True)
    ready.set()
    release.wait(60)
    return len(held)


@pytest.mark.timeout(120)
def test_a_reader_killed_with_views_out_keeps_its_block_from_reuse(start_broker, tmp_path):
    """A SIGKILLed zero-copy reader's pin stays: its block is freed, never reused, and
    everything else streams through reused blocks as before."""
    broker = start_broker(block_size=64 * KiB, blocks_per_file=4, fsync=shmwal.NoFsync())
    with shmwal.connect(broker.data_dir, key=broker.key) as client:
        datas = [bytes([i % 251]) * 3000 for i in range(800)]
        client.seek("z", 0, group="zc")
        client.batch_append("z", datas[:20])
        with Workers("fork", str(tmp_path / "w")) as workers:
            ready, release = workers.Event(), workers.Event()
            reader = workers.start(_hold_views_then_wait, client, "z", ready, release)
            assert ready.wait(30)
            assert pins(client, "z", 0) == 1
            reader.kill()
            reader.join(10)
        pinned = chain_regions(client, "z", range(1))[0]
        assert os.path.exists(os.path.join(broker.root, "blocks", L.block_file_name(pinned[0])))
        client.seek("z", 20, group="zc")                       # the dead reader's group moves on
        client.seek("z", 20, group="g")
        stream_past(client, "z", datas, 20)
        client.seek("z", 800, group="zc")
        assert wait_until(lambda: client.stats()["topics"]["z"]["first_offset"] > 20, 5)
        stream_past(client, "z", datas * 2, 800)
        meta = client._topic_handles["z"][0]
        later = chain_regions(client, "z", range(meta.get(L.H_FIRST_BLOCK), meta.get(L.H_PUBLISHED_BLOCKS)))
        assert client.stats()["blocks_reused"] > 0
        assert pinned not in later
        assert pins(client, "z", 0) == 1                       # the dead reader's pin stays
        client.seek("z", 0, group="check")
        assert [e.data for e in read_all(client, "z", group="check")] == \
            (datas * 2)[client.stats()["topics"]["z"]["first_offset"]:]
        # API.md: files every group read past go within 10 s; a leaked pin does not keep one.
        # Until the broker frees the pinned block (it waits REUSE_TTL for the pin to go) the
        # file's other blocks may be reused, and the writer's block or a spare may sit there
        # when it stops. From then on the file drains: a little more streaming moves the
        # writer out of it for good (reused for ever, it would not: the loop gives up).
        pinned_file = os.path.join(broker.root, "blocks", L.block_file_name(pinned[0]))
        writer_blocks_in_file = lambda: pinned[0] in {  # noqa: E731
            meta.chain(i)[0] for i in range(meta.get(L.H_TAIL_CHAIN), meta.get(L.H_ALLOCATED_BLOCKS))}
        deadline = time.monotonic() + 30
        while writer_blocks_in_file() and time.monotonic() < deadline:
            more = datas[:20]
            client.batch_append("z", more)
            assert [e.data for e in client.batch_read("z", 10**9, group="g")] == more
            time.sleep(0.01)
        assert not writer_blocks_in_file()
        for group in ("zc", "check"):
            read_all(client, "z", group=group)
        assert wait_until(lambda: not os.path.exists(pinned_file), 10)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", START_METHODS)
def test_producers_and_consumers_streaming_through_reused_blocks_lose_nothing(start_broker, tmp_path, method):
    """Two topics, each with two producer processes and a consumer process; nothing holds old blocks."""
    broker = start_broker(block_size=64 * KiB, blocks_per_file=4, fsync=shmwal.NoFsync())
    counts = {0: 2500, 1: 2500}
    client = shmwal.connect(broker.data_dir, key=broker.key)
    try:
        with Workers(method, str(tmp_path / "w")) as workers:
            done = workers.Event()
            readies = {t: workers.Event() for t in ("a", "b")}
            consumers = {t: workers.start(consume, client, t, "g", readies[t], done, 3, 4000) for t in readies}
            for ready in readies.values():
                assert ready.wait(30)
            go = workers.Event()
            producers = [workers.start(produce, client, t, tag, n, 10 * tag + len(t), 20, 600, go)
                         for t in ("a", "b") for tag, n in counts.items()]
            go.set()
            for p in producers:
                workers.result(p, 90)
            assert wait_until(lambda: all(client.stats()["topics"][t]["groups"]["g"]["lag"] == 0
                                          for t in ("a", "b")), 30)
            done.set()
            received = {t: workers.result(p, 30) for t, p in consumers.items()}
        for topic, got in received.items():
            assert [o for o, _ in got] == list(range(sum(counts.values()))), topic
            seqs: dict = {}
            for _, data in got:
                tag, seq = parse_payload(data)
                seqs.setdefault(tag, []).append(seq)
            assert {tag: s == list(range(counts[tag])) for tag, s in seqs.items()} == {0: True, 1: True}, topic
        stats = client.stats()
        blocks = sum(stats["topics"][t]["blocks"] for t in ("a", "b"))
        assert stats["blocks_reused"] > 0, stats
        assert blocks >= 2
    finally:
        client.close()


@pytest.mark.timeout(120)
def test_zero_copy_consumers_streaming_through_reused_blocks_lose_nothing_and_leave_no_pin(start_broker, tmp_path):
    """Two consumer processes of one group read zero-copy (read_next, batch_read, payloads
    mixed: hot.c's take for batches in the hint's block, Python's across blocks) while two
    producers stream through reused blocks: every entry once, in order per producer, and
    once the consumers have gone no block of the topic is left pinned."""
    broker = start_broker(block_size=64 * KiB, blocks_per_file=4, fsync=shmwal.NoFsync())
    counts = {0: 2500, 1: 2500}
    client = shmwal.connect(broker.data_dir, key=broker.key)
    try:
        with Workers("fork", str(tmp_path / "w")) as workers:
            done = workers.Event()
            readies = [workers.Event() for _ in range(2)]
            consumers = [workers.start(consume, client, "z", "g", ready, done, seed, 4000, 60.0, True)
                         for seed, ready in enumerate(readies)]
            for ready in readies:
                assert ready.wait(30)
            go = workers.Event()
            producers = [workers.start(produce, client, "z", tag, n, 10 + tag, 20, 600, go)
                         for tag, n in counts.items()]
            go.set()
            for p in producers:
                workers.result(p, 90)
            assert wait_until(lambda: client.stats()["topics"]["z"]["groups"]["g"]["lag"] == 0, 30)
            done.set()
            got = [entry for p in consumers for entry in workers.result(p, 30)]
        assert sorted(o for o, _ in got) == list(range(sum(counts.values())))
        seqs: dict = {}
        for _, data in sorted(got):
            tag, seq = parse_payload(data)
            seqs.setdefault(tag, []).append(seq)
        assert {tag: s == list(range(counts[tag])) for tag, s in seqs.items()} == {0: True, 1: True}
        assert client.stats()["blocks_reused"] > 0
        client.batch_read("z", 0, group="look", checkpoint=False)   # this client's handles of z
        meta = client._topic_handles["z"][0]
        live = range(meta.get(L.H_FIRST_BLOCK), meta.get(L.H_PUBLISHED_BLOCKS))
        assert [pins(client, "z", b) for b in live] == [0] * len(live)
    finally:
        client.close()


def _stream_through_outages(client, n: int, go) -> int:
    """Append payload(0, i) for i < n, retrying an append the broker's absence refused."""
    from helpers import payload
    assert go.wait(30)
    retries = 0
    i = 0
    while i < n:
        try:
            client.append("s", payload(0, i, 1500))
        except shmwal.BrokerUnavailable:
            retries += 1
            time.sleep(0.005)
            continue
        i += 1
        if i % 50 == 0:
            time.sleep(0.01)    # ~1.5 s in all: the kills land mid-stream, the consumer keeps up
    return retries


def _read_through_outages(client, n: int, ready) -> list:
    got = []
    client.seek("s", 0, group="g")
    ready.set()
    deadline = time.monotonic() + 90
    while len(got) < n and time.monotonic() < deadline:
        try:
            entry = client.read_next("s", group="g", timeout=0.05)
        except shmwal.BrokerUnavailable:
            time.sleep(0.005)
            continue
        if entry is not None:
            got.append((entry.offset, parse_payload(entry.data)))
    return got


@pytest.mark.timeout(150)
def test_broker_killed_while_blocks_are_reused_loses_and_repeats_nothing(start_broker, tmp_path):
    """SIGKILL the broker three times while a producer and a consumer stream through reused blocks."""
    import os
    import signal
    options = dict(block_size=64 * KiB, blocks_per_file=4)
    broker = start_broker(**options)
    n = 6000
    client = shmwal.connect(broker.data_dir, key=broker.key)
    reused = 0
    try:
        with Workers("fork", str(tmp_path / "w")) as workers:
            ready, go = workers.Event(), workers.Event()
            consumer = workers.start(_read_through_outages, client, n, ready)
            assert ready.wait(30)
            producer = workers.start(_stream_through_outages, client, n, go)
            go.set()
            for _ in range(3):
                time.sleep(0.3)
                reused += client.stats()["blocks_reused"]
                os.kill(broker.pid, signal.SIGKILL)
                broker.stop()   # reaps it
                time.sleep(0.05)
                broker = start_broker(**options)
                assert wait_until(lambda: _alive(client), 10)
            retries = workers.result(producer, 90)
            got = workers.result(consumer, 90)
        reused += client.stats()["blocks_reused"]
    finally:
        client.close()
    assert [o for o, _ in got] == list(range(n)), "an entry was lost or delivered twice"
    assert [seq for _, (_, seq) in got] == list(range(n))
    assert reused > 0
    assert retries > 0, "no kill landed while the producer was writing"


def _alive(client) -> bool:
    try:
        client.stats()
        return True
    except shmwal.BrokerUnavailable:
        return False
