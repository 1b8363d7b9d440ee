"""What only the nats:// backend has to show: failover of a node under load, the bridge
surviving SIGKILL, deduplicated retries, and the typed errors for what cannot hold
remotely. The behaviours both backends share are in test_backends.py."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

import shmwal
from conftest import nats_missing, wait_until

pytestmark = pytest.mark.skipif(nats_missing() is not None, reason=nats_missing() or "")


@pytest.fixture
def key():
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
def remote(nats_cluster, key):
    c = shmwal.connect(nats_cluster.url, key=key)
    yield c
    c.close()


def everything(client, topic, group):
    """Every entry of ``topic`` from ``group``'s cursor on."""
    out = []
    while True:
        batch = client.batch_read(topic, 1 << 20, group=group, timeout=0)
        if not batch:
            return out
        out += batch


# ============================================================================ what cannot hold

@pytest.mark.timeout(60)
def test_what_cannot_hold_remotely_raises_unsupported(remote, nats_cluster):
    remote.append("t", b"x")
    for call in (lambda: remote.read_next("t", zero_copy=True),
                 lambda: remote.batch_read("t", 100, zero_copy=True),
                 lambda: remote.reserve("t", 10)):
        with pytest.raises(shmwal.Unsupported) as info:
            call()
        assert isinstance(info.value, NotImplementedError)
    with pytest.raises(shmwal.Unsupported):
        shmwal.connect(nats_cluster.url, io="uring")
    assert remote.read_next("t").offset == 0   # nothing moved


@pytest.mark.timeout(60)
def test_entries_over_the_servers_max_payload_raise_entry_too_large_and_write_nothing(remote):
    remote.append("t", b"first")
    limit = remote._max_payload - 512
    with pytest.raises(shmwal.EntryTooLarge):
        remote.append("t", b"x" * (limit + 1))
    with pytest.raises(shmwal.EntryTooLarge):
        remote.batch_append("t", [b"small", b"x" * (limit + 1)])
    assert remote.append("t", b"x" * limit) == 1
    assert [len(e.data) for e in everything(remote, "t", "g")] == [5, limit]


# ============================================================================ dedup

@pytest.mark.timeout(60)
def test_a_retried_append_or_batch_with_the_same_ids_writes_nothing_twice(remote):
    assert remote.append("t", b"a", msg_id="once") == 0
    assert remote.append("t", b"a", msg_id="once") == 0
    ids = ["b1", "b2", "b3"]
    assert remote.batch_append("t", [b"b1", b"b2", b"b3"], msg_ids=ids) == range(1, 4)
    assert remote.batch_append("t", [b"b1", b"b2", b"b3"], msg_ids=ids) == range(1, 4)
    # A retry of a batch of which only a prefix was stored stores the rest behind it.
    assert remote.batch_append("t", [b"c1"], msg_ids=["c1"]) == range(4, 5)
    assert remote.batch_append("t", [b"c1", b"c2", b"c3"], msg_ids=["c1", "c2", "c3"]) == range(4, 7)
    assert [e.data for e in everything(remote, "t", "g")] == [b"a", b"b1", b"b2", b"b3", b"c1", b"c2", b"c3"]
    assert remote.stats()["topics"]["t"]["entries"] == 7


# ============================================================================ a node dies under load

def _produce(url, key, topic, count, acknowledged, errors, stop):
    """Appends payloads 0..count-1, each retried with its own msg_id until it is acknowledged."""
    with shmwal.connect(url, key=key, timeout=15) as client:
        for seq in range(count):
            while not stop.is_set():
                try:
                    offset = client.append(topic, b"%08d" % seq, msg_id=f"p{seq}")
                    acknowledged[seq] = offset
                    break
                except shmwal.BrokerUnavailable as exc:
                    errors.append(exc)


def _consume(url, key, topic, group, got, errors, stop):
    with shmwal.connect(url, key=key, timeout=15) as client:
        while not stop.is_set():
            try:
                got += [(e.offset, e.data) for e in client.batch_read(topic, 2000, group=group, timeout=0.2)]
            except shmwal.BrokerUnavailable as exc:
                errors.append(exc)


@pytest.mark.timeout(110)
def test_killing_the_group_leader_under_load_loses_no_acknowledged_entry_and_duplicates_none():
    from shmwal.nats.cluster import Cluster, scratch_parent
    count = 600
    with Cluster(3, parent=scratch_parent()) as cluster:
        key, topic, group = "failover", "t", "g"
        with shmwal.connect(cluster.url, key=key, timeout=15) as setup:
            setup.append(topic, b"start", msg_id="start")
            setup.create_group(topic, group)
            leader = setup.leaders(topic, group)["group"]
        acknowledged, got = {}, [[], []]
        errors: list = []
        stop = threading.Event()
        producer = threading.Thread(target=_produce, args=(cluster.url, key, topic, count, acknowledged, errors, stop))
        consumers = [threading.Thread(target=_consume, args=(cluster.url, key, topic, group, got[i], errors, stop))
                     for i in range(2)]
        for t in [producer, *consumers]:
            t.start()
        try:
            assert wait_until(lambda: len(acknowledged) >= count // 3, 60)
            cluster.kill(int(leader[1:]))             # nodes are named n0, n1, n2
            producer.join(90)
            assert not producer.is_alive()
            assert len(acknowledged) == count
            wanted = count + 1                        # and the "start" entry
            # What a failure needs to be read: how many came, which were missing, the errors.
            assert wait_until(lambda: len(got[0]) + len(got[1]) >= wanted, 60), (
                len(got[0]), len(got[1]), wanted,
                sorted(set(range(wanted)) - {o for o, _ in got[0] + got[1]})[:20], errors[-3:])
            time.sleep(0.5)                           # a duplicate would come now, or never
        finally:
            stop.set()
            for t in [producer, *consumers]:
                t.join(30)
        offsets = sorted(o for o, _ in got[0] + got[1])
        assert offsets == list(range(count + 1))      # every entry once: none lost, none twice
        payloads = {o: d for o, d in got[0] + got[1]}
        for seq, offset in acknowledged.items():
            assert payloads[offset] == b"%08d" % seq  # every acknowledged append is where it said
        assert len(set(acknowledged.values())) == count


# ============================================================================ acknowledged before return

_READ_AND_DIE = """
import os, signal, sys
import shmwal
client = shmwal.connect(sys.argv[1], key=sys.argv[2], claims=sys.argv[3] == "claims", timeout=15)
entries = client.batch_read("t", 1000, group="g", timeout=30)
os.write(1, " ".join(str(e.offset) for e in entries).encode())
os.kill(os.getpid(), signal.SIGKILL)   # right after the read returned: nothing more sent
"""


def _consumer_state(url, key, topic, group) -> dict:
    """JetStream's own word on a group's consumer (not the client's)."""
    import asyncio

    import nats

    from shmwal.nats import names
    from shmwal.nats.client import parse_servers

    async def info():
        nc = await nats.connect(servers=parse_servers(url))
        try:
            return await nc.jetstream().consumer_info(names.stream_name(names.namespace(key), topic),
                                                      names.durable_name(group))
        finally:
            await nc.close()

    state = asyncio.run(info())
    return {"ack_floor": state.ack_floor.stream_seq, "delivered": state.delivered.stream_seq,
            "ack_pending": state.num_ack_pending}


@pytest.mark.timeout(90)
@pytest.mark.parametrize("claims", ["claims", "no-claims"])
def test_a_strict_batch_is_acknowledged_before_it_returns_and_what_was_past_its_cap_comes_next(
        nats_cluster, key, claims):
    url = nats_cluster.url
    ack_wait = 2.0   # what the killed reader fetched past its cap comes back after this
    with shmwal.connect(url, key=key, ack_wait=ack_wait) as setup:
        setup.create_group("t", "g")
        setup.batch_append("t", [b"%0100d" % i for i in range(16)])   # 100 B each: 10 fit in 1000
    reader = subprocess.run([sys.executable, "-c", _READ_AND_DIE, url, key, claims],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60)
    assert reader.returncode == -signal.SIGKILL, reader.stderr.decode()
    assert reader.stdout.split() == [b"%d" % i for i in range(10)]
    state = _consumer_state(url, key, "t", "g")
    # The reader's first pull brought more than the cap let it return (what this test is
    # about); the server holds exactly the returned entries acknowledged, no more.
    assert state["delivered"] > 10, state
    assert state["ack_floor"] == 10, state
    assert state["ack_pending"] == state["delivered"] - 10, state
    # An AtLeastOnce reader returns whatever the group's consumer delivers, redeliveries
    # included (claims would hide one): the rest of the topic comes, each entry once, and
    # none of the killed reader's returned batch.
    got = []
    with shmwal.connect(url, key=key, consistency=shmwal.AtLeastOnce()) as after:
        deadline = time.monotonic() + 30
        while len(got) < 6 and time.monotonic() < deadline:
            got += [e.offset for e in after.batch_read("t", 1 << 20, group="g", timeout=ack_wait)]
    assert sorted(got) == list(range(10, 16)), got
    assert wait_until(lambda: _consumer_state(url, key, "t", "g") == {
        "ack_floor": 16, "delivered": 16, "ack_pending": 0}, 30), _consumer_state(url, key, "t", "g")


# ============================================================================ claims (shmwal/nats/claims.py)

def _claim_state(url, key, topic, group) -> dict:
    """The newest claim state stored for a group, read straight from JetStream."""
    import asyncio
    import json

    import nats

    from shmwal.nats import names
    from shmwal.nats.client import parse_servers

    async def newest():
        nc = await nats.connect(servers=parse_servers(url))
        try:
            msg = await nc.jetstream().get_last_msg(
                names.CLAIMS_STREAM, names.claims_subject(names.namespace(key), topic, group))
            return json.loads(msg.data)
        finally:
            await nc.close()

    return asyncio.run(newest())


@pytest.mark.timeout(60)
def test_a_strict_read_is_one_claim_write_however_many_entries_it_returns(remote, nats_cluster, key):
    remote.create_group("t", "g")
    remote.batch_append("t", [b"%d" % i for i in range(1500)])
    got, reads = [], 0
    while len(got) < 1000:       # a pull returns what the group's consumer holds so far
        got += remote.batch_read("t", 1000 - len(got), group="g", timeout=5)
        reads += 1
    assert [e.offset for e in got] == list(range(1000))
    first = _claim_state(nats_cluster.url, key, "t", "g")
    assert (first["v"], first["r"]) == (reads, [[1, 1000]])       # stream sequences: offsets + 1
    for offset in range(1000, 1003):
        assert remote.read_next("t", group="g", timeout=5).offset == offset
    after = _claim_state(nats_cluster.url, key, "t", "g")
    assert (after["v"], after["r"]) == (reads + 3, [[1, 1003]])


@pytest.mark.timeout(60)
def test_a_claim_whose_answer_was_lost_is_sent_again_and_found_to_be_ours(remote, nats_cluster, key):
    from shmwal.nats.client import _Transient

    remote.create_group("t", "g")
    remote.batch_append("t", [b"%d" % i for i in range(5)])
    assert wait_until(lambda: remote.stats()["topics"]["t"]["entries"] == 5, 10)
    pipeline, lost = remote._pipeline, []

    async def losing_the_first_claims_answer(requests, timeout=None):
        answers = await pipeline(requests, timeout)
        if not lost and ".claims." in requests[0][0]:
            lost.append(answers[0])          # stored, but the answer never reached us
            answers[0] = _Transient("answer lost")
        return answers

    remote._pipeline = losing_the_first_claims_answer
    got = [e.offset for e in remote.batch_read("t", 1 << 20, group="g", timeout=5)]
    assert lost and "seq" in lost[0], lost
    assert got == [0, 1, 2, 3, 4]            # the resent claim was a duplicate of our own
    assert remote.batch_read("t", 1 << 20, group="g", timeout=0.5) == []
    assert _claim_state(nats_cluster.url, key, "t", "g")["v"] == 1


@pytest.mark.timeout(90)
@pytest.mark.parametrize("knowledge", ["fresh", "outdated"])
def test_entries_a_reader_claimed_and_never_acknowledged_are_dropped_when_they_come_again(
        nats_cluster, key, knowledge):
    """A's acks are lost (as with a consumer leader killed between answering and replicating
    them): its entries come again to B, which must drop them as claimed. "outdated": B
    claimed before A did, so B's next claim builds on a version A has since replaced,
    and JetStream's message-id check has to turn it away."""
    url, ack_wait = nats_cluster.url, 1.0
    with shmwal.connect(url, key=key, ack_wait=ack_wait) as a, \
            shmwal.connect(url, key=key, ack_wait=ack_wait) as b:
        a.create_group("t", "g")
        a.batch_append("t", [b"%d" % i for i in range(20)])
        got_b = []
        if knowledge == "outdated":
            got_b += [b.read_next("t", group="g", timeout=5).offset for _ in range(5)]   # pulls of one
            assert got_b == [0, 1, 2, 3, 4]
        settle = a._settle_claim
        a._settle_claim = lambda request, acks, deadline: settle(request, [], deadline)
        first = len(got_b)
        got_a = [e.offset for e in a.batch_read("t", 10, group="g", timeout=5)]
        assert got_a and got_a == list(range(first, first + len(got_a)))
        deadline = time.monotonic() + 30
        while len(got_b) < 20 - len(got_a) and time.monotonic() < deadline:
            got_b += [e.offset for e in b.batch_read("t", 100, group="g", timeout=ack_wait)]
        time.sleep(ack_wait * 1.5)       # anything left unacknowledged would come now
        got_b += [e.offset for e in b.batch_read("t", 100, group="g", timeout=ack_wait)]
    assert sorted(got_a + got_b) == list(range(20)), (got_a, got_b)
    state = _claim_state(url, key, "t", "g")
    assert state["r"] == [[1, 20]], state


# ============================================================================ the bridge

def _bridge(data_dir, key, url, topic, remote_key):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    local_key = [] if key is None else ["--key", key]
    return subprocess.Popen([sys.executable, "-m", "shmwal", "bridge", "--data-dir", data_dir, *local_key,
                             "--topic", topic, "--to", url, "--remote-key", remote_key,
                             "--max-bytes", "2000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


@pytest.mark.timeout(110)
def test_the_bridge_killed_again_and_again_mirrors_every_entry_once_in_order(broker, nats_cluster, key):
    local = shmwal.connect(broker.data_dir, key=broker.key)
    remote = shmwal.connect(nats_cluster.url, key=key)
    count, topic = 3000, "orders"
    written = []

    def produce():
        rng = random.Random(5)
        seq = 0
        while seq < count:
            n = min(rng.choice([1, 1, 3, 17]), count - seq)
            items = [b"e%06d" % i for i in range(seq, seq + n)]
            written.extend(local.batch_append(topic, items) if n > 1 else [local.append(topic, items[0])])
            seq += n
            time.sleep(0.01)   # spread over seconds: the bridge is killed while entries arrive

    producer = threading.Thread(target=produce)
    producer.start()
    kills = 0
    rng = random.Random(11)
    try:
        while producer.is_alive() or kills < 6:
            bridge = _bridge(broker.data_dir, broker.key, nats_cluster.url, topic, key)
            time.sleep(rng.uniform(0.3, 1.2))
            bridge.send_signal(signal.SIGKILL)
            bridge.wait(10)
            bridge.stderr.close()
            kills += 1
            if kills > 40:
                break
        producer.join(30)
        assert written == list(range(count))
        bridge = _bridge(broker.data_dir, broker.key, nats_cluster.url, topic, key)
        try:
            mirrored = wait_until(lambda: remote.stats()["topics"].get(topic, {}).get("entries", 0) >= count, 60)
            assert mirrored, remote.stats()
            # The bridges before it may have mirrored everything already: this one may still be
            # starting, and a SIGTERM before its handler is installed kills it (-15), no clean stop.
            assert wait_until(lambda: _catches(bridge.pid, signal.SIGTERM), 30)
        finally:
            bridge.send_signal(signal.SIGTERM)
            assert bridge.wait(20) == 0, bridge.stderr.read().decode()
            bridge.stderr.close()
        entries = everything(remote, topic, "check")
        assert [e.data for e in entries] == [b"e%06d" % i for i in range(count)]
        assert [e.offset for e in entries] == list(range(count))
        assert kills >= 6
    finally:
        producer.join(30)
        local.close()
        remote.close()


# ============================================================================ the cluster script

@contextlib.contextmanager
def _cluster_script():
    """scripts/nats_cluster.py running: (its process, its url, its store folder, its nodes)."""
    import psutil

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = subprocess.Popen([sys.executable, os.path.join(root, "scripts", "nats_cluster.py")],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        url = script.stdout.readline().decode().strip()
        assert url.startswith("nats://127.0.0.1:") and url.count(",") == 2, script.stderr.read()
        store = script.stderr.readline().decode().split("store and logs: ")[1].split(" (")[0]
        yield script, url, store, psutil.Process(script.pid).children()
    finally:
        if script.poll() is None:
            script.kill()
            script.wait(10)
        script.stdout.close()
        script.stderr.close()


def _all_gone(processes) -> bool:
    import psutil

    return not [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


@pytest.mark.timeout(60)
def test_the_cluster_script_serves_until_sigint_and_leaves_nothing_behind():
    with _cluster_script() as (script, url, store, nodes):
        assert len(nodes) == 3
        with shmwal.connect(url) as client:
            assert client.append("t", b"x") == 0
            assert client.stats()["topics"]["t"]["replicas"] == 3
        script.send_signal(signal.SIGINT)
        assert script.wait(30) == 0
        assert _all_gone(nodes)
        assert not os.path.exists(store)


@pytest.mark.timeout(60)
def test_a_killed_starters_store_is_swept_by_the_next_cluster_and_a_live_one_is_not(nats_cluster):
    from shmwal.nats.cluster import sweep_orphans

    with _cluster_script() as (script, _url, store, nodes):
        script.kill()
        script.wait(10)
        assert wait_until(lambda: _all_gone(nodes), timeout=10)
        assert os.path.isdir(store)   # what a killed starter leaves
        removed = sweep_orphans(os.path.dirname(store))
        assert store in removed and not os.path.exists(store)
        assert os.path.isdir(nats_cluster.root)   # the session's cluster lives: untouched
        assert nats_cluster.root not in removed


def _catches(pid: int, signum: int) -> bool:
    """Whether the process has installed a handler for ``signum`` (SigCgt in /proc/PID/status)."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) & (1 << (signum - 1)))
    return False
