"""The Client API against both backends: the local broker and NATS JetStream.

One suite: ``client`` here is parametrised over ``local`` and ``nats`` (a 3-node
cluster on 127.0.0.1, replicas 3, a fresh key per test), and every test below
runs on both. The first block re-collects the tests of ``test_api_basic.py``
that say nothing about local files, so they run here under both backends
without a copy; the rest are behaviours API.md gives both backends (groups as
work queues and publish/subscribe, strict delivery, errors, pickling).
What only holds locally stays in the other modules; what only holds remotely
is in ``test_nats.py``.
"""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import threading
import time
import uuid

import pytest

import shmwal
from helpers import every_call, read_all

# Re-collected from test_api_basic with this module's parametrised `client`.
from test_api_basic import (  # noqa: F401
    test_a_new_group_starts_at_the_oldest_entry,
    test_accepted_data_types_round_trip_through_append_and_batch_append,
    test_batch_append_returns_the_range_of_its_offsets,
    test_batch_of_2001_entries_raises_batch_too_large_and_2000_fit,
    test_batch_read_counts_empty_entries_as_zero_bytes,
    test_batch_read_never_returns_more_than_2000_entries,
    test_batch_read_payloads_is_batch_read_without_the_entries,
    test_batch_read_takes_entries_while_their_payloads_fit_in_max_bytes,
    test_empty_batch_writes_nothing_and_returns_an_empty_range,
    test_empty_payload_round_trips,
    test_entry_is_immutable_and_has_topic_offset_data,
    test_invalid_group_raises_invalid_topic,
    test_invalid_topic_raises_invalid_topic_a_value_error,
    test_names_of_255_allowed_characters_are_valid_topics_and_groups,
    test_offsets_are_dense_per_topic_and_topics_are_independent,
    test_peeks_do_not_move_the_cursor,
    test_read_with_timeout_waits_that_long_on_an_empty_topic,
    test_rejected_data_types_raise_type_error_and_write_nothing,
    test_seek_and_position,
    test_topics_lists_topics_from_their_first_append,
)

# The pure-Python pass of .ci/run tests the local hot path's reference; the nats:// backend
# never reaches it (JetStream moves its entries), so it runs in the compiled pass alone.
BACKENDS = ["local", pytest.param("nats", marks=pytest.mark.skipif(
    bool(os.environ.get("SHMWAL_PURE_PYTHON")), reason="nats:// never reaches the hot path"))]


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def address(backend, request):
    """(address, key) that ``shmwal.connect`` takes for this backend; a fresh namespace."""
    if backend == "local":
        broker = request.getfixturevalue("broker")
        return broker.data_dir, broker.key
    cluster = request.getfixturevalue("nats_cluster")
    return cluster.url, "t" + uuid.uuid4().hex[:12]


@pytest.fixture
def client(address):
    where, key = address
    c = shmwal.connect(where, key=key)
    yield c
    c.close()


@pytest.fixture
def connect_again(address):
    """Factory: another client of the same backend and namespace (closed at teardown)."""
    made = []

    def make(**kw):
        c = shmwal.connect(address[0], key=address[1], **kw)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


# ============================================================================ groups

@pytest.mark.timeout(60)
def test_a_group_is_a_work_queue_and_groups_are_publish_subscribe(client, connect_again):
    other = connect_again()
    client.batch_append("jobs", [b"j%d" % i for i in range(40)])
    got = {0: [], 1: []}
    readers = (client, other)
    turn = 0
    while True:
        entries = readers[turn % 2].batch_read("jobs", 30, group="workers")   # a few entries a call
        turn += 1
        if not entries:
            entries = readers[turn % 2].batch_read("jobs", 30, group="workers")
            turn += 1
            if not entries:
                break
        got[turn % 2] += [e.offset for e in entries]
    together = sorted(got[0] + got[1])
    assert together == list(range(40))                    # each entry to one reader of the group
    assert got[0] and got[1]                              # and both readers had some
    for group in ("audit", "billing"):                   # every group sees every entry
        assert [e.offset for e in read_all(other, "jobs", group=group)] == list(range(40))


@pytest.mark.timeout(60)
def test_an_entry_a_strict_read_returned_never_comes_again_to_its_group(client, connect_again):
    client.batch_append("t", [b"a", b"b", b"c"])
    assert client.read_next("t", group="g").offset == 0
    client.close()
    again = connect_again()
    assert [e.offset for e in read_all(again, "t", group="g")] == [1, 2]
    assert again.position("t", group="g") == 3


@pytest.mark.timeout(60)
def test_a_seek_by_one_client_replays_the_group_for_another(client, connect_again):
    other = connect_again()
    client.batch_append("t", [b"a", b"b", b"c"])
    assert [e.offset for e in read_all(client, "t", group="g")] == [0, 1, 2]
    other.seek("t", 1, group="g")
    assert client.position("t", group="g") == 1
    assert [e.offset for e in read_all(client, "t", group="g")] == [1, 2]
    assert other.read_next("t", group="g") is None


@pytest.mark.timeout(60)
def test_create_group_groups_and_delete_group(client):
    if not hasattr(client, "create_group"):
        pytest.skip("this backend's Client has no create_group yet (issue 12a)")
    client.batch_append("t", [b"a", b"b", b"c", b"d"])
    assert client.groups("t") == []
    assert client.create_group("t", "early") is True
    assert client.create_group("t", "late", start="latest") is True
    assert client.create_group("t", "mid", start=2) is True
    assert client.create_group("t", "mid", start=0) is False   # exists already: changes nothing
    assert sorted(client.groups("t")) == ["early", "late", "mid"]
    assert client.position("t", group="early") == 0
    assert client.position("t", group="late") == 4
    assert client.position("t", group="mid") == 2
    assert client.read_next("t", group="mid").offset == 2
    assert client.read_next("t", group="late") is None
    assert client.append("t", b"e") == 4
    assert client.read_next("t", group="late").offset == 4
    assert client.delete_group("t", "mid") is True
    assert client.delete_group("t", "mid") is False
    assert sorted(client.groups("t")) == ["early", "late"]
    assert client.position("t", group="mid") == 0        # gone: a new group would start at the oldest
    with pytest.raises(shmwal.InvalidTopic):
        client.create_group("t", "bad/group")
    for start, error in [("soon", ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError)]:
        with pytest.raises(error):
            client.create_group("t", "new", start=start)
    assert sorted(client.groups("t")) == ["early", "late"]


# ============================================================================ introspection

@pytest.mark.timeout(60)
def test_stats_has_every_key_of_api_md_with_the_same_values(client, backend):
    client.batch_append("s", [b"x" * 10, b"", b"y" * 300])
    client.append("s", b"z" * 7)
    assert [e.offset for e in client.batch_read("s", 310, group="g1")] == [0, 1, 2]
    client.seek("s", 3, group="g2")
    s = client.stats()["topics"]["s"]
    keys = ["entries", "bytes", "disk_bytes", "first_offset", "next_offset", "files", "blocks"]
    if backend == "local" and "disk_bytes" not in s:
        keys.remove("disk_bytes")   # the local broker reports it from issue 12b on
    for key in keys:
        assert type(s[key]) is int, key
    assert (s["entries"], s["first_offset"], s["next_offset"]) == (4, 0, 4)
    assert s["bytes"] >= 317
    # The local broker reports "skipped" from issue 12a on.
    skipped = (lambda v: v.get("skipped", 0)) if backend == "local" else (lambda v: v["skipped"])
    assert {g: (v["position"], v["lag"], skipped(v)) for g, v in s["groups"].items()} == \
        {"g1": (3, 1, 0), "g2": (3, 1, 0)}


# ============================================================================ lifecycle and errors

@pytest.mark.timeout(60)
def test_a_closed_client_raises_client_closed(address):
    with shmwal.connect(address[0], key=address[1]) as client:
        assert client.append("t", b"x") == 0
    calls = every_call(client, "t")
    for name, call in calls.items():
        with pytest.raises(shmwal.ClientClosed):
            call()
    client.close()   # twice is harmless
    with shmwal.connect(address[0], key=address[1]) as other:
        assert other.read_next("t").data == b"x"


@pytest.mark.timeout(60)
def test_nothing_answering_raises_broker_unavailable_within_the_timeout(backend, tmp_path, request):
    if backend == "local":
        where = str(tmp_path / "nobody")
    else:
        request.getfixturevalue("nats_cluster")        # skips where NATS cannot run
        with socket.socket() as s:                       # a loopback port nobody listens on
            s.bind(("127.0.0.1", 0))
            where = f"nats://127.0.0.1:{s.getsockname()[1]}"
    started = time.monotonic()
    with pytest.raises(shmwal.BrokerUnavailable) as info:
        shmwal.connect(where, timeout=0.5)
    assert isinstance(info.value, ConnectionError)
    assert time.monotonic() - started < 10


@pytest.mark.timeout(60)
def test_a_client_pickles_to_its_address(client):
    client.append("t", b"before")
    clone = pickle.loads(pickle.dumps(client))
    try:
        assert clone.append("t", b"from the clone") == 1
        assert [e.data for e in read_all(clone, "t")] == [b"before", b"from the clone"]
    finally:
        clone.close()


@pytest.mark.timeout(60)
def test_threads_sharing_one_client_append_and_read_each_entry_once(client):
    writers, per_writer = 3, 60
    got, errors = [], []
    lock = threading.Lock()

    def write(tag):
        try:
            for i in range(0, per_writer, 3):
                client.append("t", b"%d:%d" % (tag, i))
                client.batch_append("t", [b"%d:%d" % (tag, i + 1), b"%d:%d" % (tag, i + 2)])
        except BaseException as exc:
            errors.append(exc)

    def read():
        try:
            deadline = time.monotonic() + 40
            while time.monotonic() < deadline:
                with lock:
                    if len(got) >= writers * per_writer:
                        return
                batch = client.batch_read("t", 64, group="g", timeout=0.05)
                with lock:
                    got.extend((e.offset, e.data) for e in batch)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=read) for _ in range(2)]
    threads += [threading.Thread(target=write, args=(t,)) for t in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(50)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors
    assert sorted(o for o, _ in got) == list(range(writers * per_writer))
    for tag in range(writers):
        mine = [int(d.split(b":")[1]) for _, d in sorted(got) if d.split(b":")[0] == b"%d" % tag]
        assert mine == list(range(per_writer))           # one writer's entries stay in its order


@pytest.mark.timeout(60)
def test_the_local_path_never_imports_nats(broker):
    code = ("import sys, shmwal\n"
            f"c = shmwal.connect({broker.data_dir!r}, key={broker.key!r})\n"
            "c.append('t', b'x'); assert c.read_next('t').data == b'x'; c.stats(); c.close()\n"
            "assert 'nats' not in sys.modules and 'shmwal.nats' not in sys.modules, "
            "sorted(m for m in sys.modules if 'nats' in m)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=50)
    assert done.returncode == 0, done.stderr.decode()
