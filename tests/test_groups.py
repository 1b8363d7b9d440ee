"""Groups: create_group / groups / delete_group, thousands per topic, slots reused safely,
and a version 2 data directory (256 group slots) opening with its cursors.

Readers run in processes of their own where the behaviour is multi-process.
"""

from __future__ import annotations

import os
import shutil
import tarfile

import pytest

import shmwal
from shmwal.blocks import layout as L
from shmwal.blocks.meta import TopicMeta

from helpers import Workers, connect, no_resource_tracker_left, read_all  # noqa: F401  (autouse fixture)

DATA = os.path.join(os.path.dirname(__file__), "data")


def _read_group(client, topic, group, n, timeout=20.0):
    """Read ``n`` entries of ``group`` (waiting for them); return their (offset, data)."""
    out = []
    while len(out) < n:
        batch = client.batch_read(topic, 1 << 20, group=group, timeout=timeout)
        assert batch, f"{group}: nothing more after {len(out)} of {n}"
        out.extend((e.offset, e.data) for e in batch)
    return out


def _read_then_hold(client, topic, group, n, go, done):
    """Read ``n`` entries of ``group``, then (after ``go``) read again through the same
    Client, whose cached handle may name a deleted and reused slot."""
    first = [e.offset for e in read_all(client, topic, group)][:n]
    done.set()
    assert go.wait(30)
    again = client.read_next(topic, group=group)
    return first, (again.offset if again else None), client.position(topic, group=group)


@pytest.mark.timeout(60)
def test_a_group_created_before_any_append_sees_everything(broker, client, tmp_path):
    assert client.create_group("t", "early") is True
    assert client.groups("t") == ["early"]
    with Workers("fork", str(tmp_path / "w")) as workers:
        reader = workers.start(_read_group, client, "t", "early", 3000)
        appended = [client.append("t", b"e%d" % i) for i in range(1000)]
        appended += list(client.batch_append("t", [b"e%d" % i for i in range(1000, 3000)]))
        got = workers.result(reader)
    assert appended == list(range(3000))
    assert got == [(i, b"e%d" % i) for i in range(3000)]


@pytest.mark.timeout(60)
def test_latest_sees_only_new_entries_and_an_offset_start_clamps(broker, client):
    client.batch_append("t", [b"old"] * 10)
    assert client.create_group("t", "new", start="latest") is True
    assert client.position("t", group="new") == 10
    client.append("t", b"fresh")
    assert [(e.offset, e.data) for e in read_all(client, "t", "new")] == [(10, b"fresh")]
    assert client.create_group("t", "mid", start=4)
    assert client.position("t", group="mid") == 4
    assert client.create_group("t", "beyond", start=10**12)
    assert client.position("t", group="beyond") == 11          # past the end: waits at the end
    assert client.create_group("t", "zero", start=0)
    assert client.position("t", group="zero") == 0


@pytest.mark.timeout(60)
def test_create_of_an_existing_group_changes_nothing(broker, client):
    client.batch_append("t", [b"x"] * 5)
    assert client.read_next("t", group="g").offset == 0
    assert client.create_group("t", "g", start="latest") is False
    assert client.create_group("t", "g", start=3) is False
    assert client.position("t", group="g") == 1
    assert client.read_next("t", group="g").offset == 1


@pytest.mark.timeout(60)
def test_position_of_a_missing_group_creates_nothing(broker, client):
    assert client.position("nothing", group="g") == 0
    assert client.topics() == []
    assert client.groups("nothing") == []
    client.batch_append("t", [b"x"] * 5)
    assert client.position("t", group="ghost") == 0
    assert client.groups("t") == []
    assert client.stats()["topics"]["t"]["groups"] == {}
    other = connect(broker)
    try:
        assert other.position("t", group="ghost") == 0
        assert other.groups("t") == []
    finally:
        other.close()


@pytest.mark.timeout(60)
def test_groups_follow_reads_seeks_creates_and_deletes(broker, client):
    client.batch_append("t", [b"x"] * 5)
    client.read_next("t", group="read")
    client.seek("t", 2, group="sought")
    client.create_group("t", "made")
    client.batch_read("t", 100, group="batch")
    assert client.groups("t") == ["batch", "made", "read", "sought"]
    stats = client.stats()["topics"]["t"]["groups"]
    assert sorted(stats) == ["batch", "made", "read", "sought"]
    assert stats["sought"] == {"position": 2, "lag": 3, "skipped": 0}
    assert client.delete_group("t", "made") is True
    assert client.delete_group("t", "made") is False
    assert client.delete_group("none", "made") is False
    assert client.groups("t") == ["batch", "read", "sought"]
    assert sorted(client.stats()["topics"]["t"]["groups"]) == ["batch", "read", "sought"]
    # Deleted, the group starts again where a new one would (its cursor went)
    client.read_next("t", group="read")
    assert client.position("t", group="read") == 2
    client.delete_group("t", "read")
    assert client.position("t", group="read") == 0
    assert client.groups("t") == ["batch", "sought"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("bad", ["", ".hidden", "a/b", "x" * 256, "sp ace", 7, None, b"bytes"])
def test_bad_names_raise_invalid_topic_and_change_nothing(broker, client, bad):
    client.append("t", b"x")
    for call in (lambda: client.create_group("t", bad), lambda: client.create_group(bad, "g"),
                 lambda: client.groups(bad), lambda: client.delete_group("t", bad),
                 lambda: client.delete_group(bad, "g")):
        with pytest.raises(shmwal.InvalidTopic):
            call()
    assert client.groups("t") == [] and client.topics() == ["t"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("start, error", [("first", ValueError), ("", ValueError), (-1, ValueError),
                                          (1.0, TypeError), (True, TypeError), (None, TypeError),
                                          (b"earliest", TypeError)])
def test_bad_start_raises_and_changes_nothing(broker, client, start, error):
    client.append("t", b"x")
    with pytest.raises(error):
        client.create_group("t", "g", start=start)
    with pytest.raises(error):
        client.create_group("fresh", "g", start=start)
    assert client.groups("t") == [] and client.topics() == ["t"]
    assert "fresh" not in os.listdir(os.path.join(broker.root, "topics"))


@pytest.mark.timeout(60)
def test_a_reader_holding_a_deleted_slot_never_touches_its_new_owner(broker, client, tmp_path):
    """Process A reads group "old"; we delete it and make "new", which gets the same slot;
    A reads "old" again through its cached handle: "old" is made anew, "new" is untouched."""
    client.batch_append("t", [b"e%d" % i for i in range(20)])
    client.create_group("t", "keep")   # holds the data: nothing is reclaimed under the test
    with Workers("fork", str(tmp_path / "w")) as workers:
        go, done = workers.Event(), workers.Event()
        proc = workers.start(_read_then_hold, client, "t", "old", 20, go, done)
        assert done.wait(30)
        meta = TopicMeta(os.path.join(broker.root, "topics", "t", "meta"), "t")
        try:
            old_slot = meta.group_names()["old"]
            old_gen = meta.group_word(old_slot, L.G_GEN)
            assert client.delete_group("t", "old")
            assert client.create_group("t", "new", start=7)
            assert meta.group_names()["new"] == old_slot          # the slot was reused ...
            assert meta.group_word(old_slot, L.G_GEN) == old_gen + 1   # ... under a new generation
        finally:
            meta.close()
        go.set()
        first, again, position = workers.result(proc)
    assert first == list(range(20))
    assert again == 0 and position == 1          # "old" made anew, from the oldest entry
    assert client.position("t", group="new") == 7
    assert sorted(client.groups("t")) == ["keep", "new", "old"]


def _read_each(client, topic, groups):
    return [client.read_next(topic, group=g).offset for g in groups]


@pytest.mark.timeout(300)
def test_five_thousand_groups_on_one_topic(broker, client, tmp_path):
    names = [f"g{i:04d}" for i in range(5000)]
    client.batch_append("t", [b"a", b"b"])
    for name in names:
        assert client.create_group("t", name)
    assert client.groups("t") == names
    # Another process reads one entry in each group; here, a second entry in each.
    with Workers("fork", str(tmp_path / "w")) as workers:
        offsets = workers.result(workers.start(_read_each, client, "t", names), timeout=240)
    assert offsets == [0] * 5000
    assert [client.read_next("t", group=g).offset for g in names] == [1] * 5000
    groups = client.stats()["topics"]["t"]["groups"]
    assert len(groups) == 5000 and all(v == {"position": 2, "lag": 0, "skipped": 0} for v in groups.values())
    for name in names[::2]:
        assert client.delete_group("t", name)
    assert client.groups("t") == names[1::2]
    # Freed slots are taken again before the table grows.
    meta = TopicMeta(os.path.join(broker.root, "topics", "t", "meta"), "t")
    try:
        high = meta.group_high()
        for i in range(2500):
            assert client.create_group("t", f"h{i:04d}", start="latest")
        assert meta.group_high() == high == 5000
    finally:
        meta.close()
    assert len(client.groups("t")) == 5000
    for name in client.groups("t"):
        assert client.delete_group("t", name)
    assert client.groups("t") == []


@pytest.mark.timeout(120)
def test_a_version_2_data_directory_opens_with_its_groups(start_broker, data_dir):
    """tests/data/meta_v2_namespace.tar.gz: written by shmwal at f24cedd (META_VERSION 2, 256
    group slots): topic "orders", 3,000 entries, group "billing" at 1,000, "audit" at 2,523."""
    root = os.path.join(data_dir, "default")
    os.makedirs(root, mode=0o700)
    with tarfile.open(os.path.join(DATA, "meta_v2_namespace.tar.gz")) as tar:
        tar.extractall(root, filter="data")
    for sub in ("", "topics", "topics/orders", "blocks"):
        os.chmod(os.path.join(root, sub), 0o700)
    assert os.path.getsize(os.path.join(root, "topics/orders/meta")) == L.V2_META_SIZE
    # Retention's default keeps the consumed entries (16 MiB): under start_broker's bytes=0 the
    # blocks below "billing" (1,000) could go as soon as the broker runs, and those below
    # "audit" (2,523) once "billing" has read on, before the stats and the "late" group look.
    broker = start_broker(data_dir, block_size=64 * 1024, blocks_per_file=4, retention=shmwal.Retention())
    client = connect(broker)
    try:
        assert os.path.getsize(os.path.join(root, "topics/orders/meta")) == L.META_SIZE
        stats = client.stats()["topics"]["orders"]
        assert (stats["first_offset"], stats["next_offset"]) == (0, 3000)
        assert stats["groups"] == {"audit": {"position": 2523, "lag": 477, "skipped": 0},
                                   "billing": {"position": 1000, "lag": 2000, "skipped": 0}}
        assert client.groups("orders") == ["audit", "billing"]
        billing = read_all(client, "orders", "billing")
        assert [(e.offset, e.data) for e in billing] == \
            [(i, b"order-%05d" % i + b"." * 90) for i in range(1000, 3000)]
        assert client.create_group("orders", "late")
        assert [e.offset for e in read_all(client, "orders", "late")] == list(range(3000))
        assert client.append("orders", b"more") == 3000
        assert client.read_next("orders", group="audit").offset == 2523
    finally:
        client.close()
    broker.stop()
    broker.start()
    client = connect(broker)
    try:
        assert client.position("orders", group="audit") == 2524
        assert client.groups("orders") == ["audit", "billing", "late"]
    finally:
        client.close()
    assert not os.path.exists(os.path.join(root, "topics/orders/meta.v3"))
    shutil.rmtree(data_dir)
