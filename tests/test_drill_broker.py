"""Drill: the broker SIGKILLed while producers and consumers run (issue 3, items 3 and 4).

Two producer and three consumer processes (spawned, each given a pickled
``Client``) keep working while the test SIGKILLs the broker, checks what the
dead broker left (socket, semaphores, lock and run files), starts a new one on
the same directory, and repeats.  Every worker reports each call: entries
appended or received, and every ``BrokerUnavailable`` with its start and end
time (CLOCK_MONOTONIC is one clock for all processes).  It must hold that:

* after each kill, every worker's calls raise ``BrokerUnavailable`` within 2 s
  of the death, and no call of any worker takes longer than that;
* the same Client objects (the workers' and this process's) work again once
  the new broker runs, without being reconnected by hand;
* the new broker recovers every returned entry and every cursor: the topic
  holds exactly the appends that returned (a call that raised wrote nothing),
  and the group delivered every offset below its position exactly once;
* a clean stop at the end leaves no IPC object, no socket, no process.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time

import pytest

import shmwal
from conftest import ipc_leftovers
from drill_helpers import (Children, decode_payload, make_payload, open_report, payloads_digest,
                           poll, read_report)
from helpers import read_all

TOPIC = "drill-broker"
GROUP = "g"
CYCLES = 6
DEATH_SEEN_WITHIN = 2.0       # API.md: BrokerUnavailable from 2 s after the death at the latest
SLOW_CALL = 2.0               # no call, failing or not, may take longer than this (+ its own timeout)
CTX = multiprocessing.get_context("spawn")


@pytest.fixture
def spawn_tracker():
    """The spawn context starts multiprocessing's resource tracker: stop it with the test (no process is left)."""
    yield
    from multiprocessing import resource_tracker
    stop = getattr(resource_tracker._resource_tracker, "_stop", None)
    if stop is not None:
        stop()


def _line(fd, text):
    os.write(fd, (text.replace("\n", " ") + "\n").encode())


def _timed(fd, slow, call, *args):
    """``(call(*args), when it returned)``, or None if it raised BrokerUnavailable: reported
    as ``U start end`` (then a short pause before the next try); a call that took longer
    than ``slow`` seconds is reported as ``X start end`` (``slow`` None: no limit)."""
    t0 = time.monotonic()
    try:
        result = call(*args)
    except shmwal.BrokerUnavailable:
        t1 = time.monotonic()
        _line(fd, f"U {t0:.6f} {t1:.6f}")
        time.sleep(0.01)
        return None
    t1 = time.monotonic()
    if slow is not None and t1 - t0 > slow:
        _line(fd, f"X {t0:.6f} {t1:.6f}")
    return result, t1


def _append(client, payloads, batch):
    """The offset of the first of ``payloads``: one batch_append, or (not ``batch``) one append."""
    if batch:
        got = client.batch_append(TOPIC, payloads)
        assert len(got) == len(payloads), got
        return got.start
    return client.append(TOPIC, payloads[0])


def _producer(client, writer, batch, report_path, stop_path):
    fd = open_report(report_path)
    rng = random.Random(writer)
    seq = 0
    try:
        while not os.path.exists(stop_path):
            count = rng.randint(1, 30) if batch else 1
            payloads = [make_payload(writer, 0, seq, i, count, rng.randint(0, 300), rng) for i in range(count)]
            done = _timed(fd, SLOW_CALL, _append, client, payloads, batch)
            if done is None:
                continue
            first, t1 = done
            _line(fd, f"A {seq} {first} {count} {payloads_digest(payloads)} {t1:.6f}")
            seq += 1
            time.sleep(0.0005)   # a few thousand appends a second: enough, and the verification stays quick
    except BaseException as exc:
        _line(fd, f"E {type(exc).__name__}: {exc}")
        raise


def _consumer(client, style, report_path, stop_path):
    fd = open_report(report_path)
    if style == "next":
        def receive():
            entry = client.read_next(TOPIC, group=GROUP, timeout=0.3)
            return [entry] if entry is not None else []
    elif style == "wait":
        def receive():
            # Waits as long as it takes -- and must still notice the broker's death.
            return [client.read_next(TOPIC, group=GROUP, timeout=None)]
    else:
        def receive():
            return client.batch_read(TOPIC, 4096, group=GROUP, timeout=0.3)
    slow = None if style == "wait" else SLOW_CALL + 0.3
    try:
        while not os.path.exists(stop_path):
            done = _timed(fd, slow, receive)
            if done is None:
                continue
            got, t1 = done
            if got:
                first = got[0].offset
                assert [e.offset for e in got] == list(range(first, first + len(got)))
                for e in got:
                    decode_payload(e.data)
                _line(fd, f"G {first} {len(got)} {t1:.6f}")
    except BaseException as exc:
        _line(fd, f"E {type(exc).__name__}: {exc}")
        raise


def _lines(path, kind):
    return [line.split() for line in read_report(path) if line.startswith(kind + " ")]


def _unavailable_after(path, t_kill):
    """(start, end) of the calls that raised BrokerUnavailable and ended after ``t_kill``."""
    return [(float(a), float(b)) for _, a, b in _lines(path, "U") if float(b) >= t_kill]


def _worked_after(path, t):
    return any(float(parts[-1]) > t for kind in ("A", "G") for parts in _lines(path, kind))


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_broker_killed_under_load_recovers_everything_and_clients_carry_on(start_broker, data_dir, tmp_path,
                                                                           spawn_tracker):
    broker = start_broker()
    root = broker.root
    started = time.monotonic()
    stop_path = str(tmp_path / "stop")
    own = shmwal.connect(data_dir)
    own.seek(TOPIC, 0, group=GROUP)      # the group exists before anyone reads it
    own.seek(TOPIC, 0, group="verify")   # and this one keeps every block until the end
    workers = {
        "producer-single": (_producer, ("single",)),
        "producer-batch": (_producer, ("batch",)),
        "consumer-next": (_consumer, ("next",)),
        "consumer-wait": (_consumer, ("wait",)),
        "consumer-batch": (_consumer, ("batch",)),
    }
    reports = {name: str(tmp_path / f"{name}.log") for name in workers}
    outage_seen = []          # seconds from each kill to each worker's first BrokerUnavailable
    with Children() as children:
        procs = {}
        for i, (name, (target, extra)) in enumerate(workers.items()):
            if target is _producer:
                args = (own, i, extra[0] == "batch", reports[name], stop_path)   # a Client, pickled
            else:
                args = (own, extra[0], reports[name], stop_path)
            procs[name] = children.add(CTX.Process(target=target, args=args, name=name))
            procs[name].start()
        t_up = time.monotonic() - 60
        for cycle in range(CYCLES):
            # Everyone works with this broker before it dies.
            for name, path in reports.items():
                assert poll(lambda: _worked_after(path, t_up), 30), \
                    f"cycle {cycle}: {name} did no work with the broker: {read_report(path)[-3:]}"
            time.sleep(random.Random(cycle).uniform(0.1, 0.5))
            t_kill = time.monotonic()
            os.kill(broker.pid, signal.SIGKILL)
            broker.stop()   # reaps the killed process
            # What a SIGKILLed broker leaves behind: the next one must not mind it.
            assert os.path.exists(os.path.join(root, "broker.sock")), "the dead broker left no socket?"
            assert ipc_leftovers(root), "the dead broker left no semaphores: the stale-state check is void"
            assert os.path.exists(os.path.join(root, "broker.lock"))
            for name, path in reports.items():
                seen = poll(lambda: _unavailable_after(path, t_kill), DEATH_SEEN_WITHIN + 3)
                assert seen, f"cycle {cycle}: {name} never raised BrokerUnavailable: {read_report(path)[-3:]}"
                first_end = min(end for _, end in seen)
                outage_seen.append(first_end - t_kill)
                assert first_end - t_kill <= DEATH_SEEN_WITHIN, \
                    f"cycle {cycle}: {name} raised BrokerUnavailable only {first_end - t_kill:.2f}s after the kill"
            t0 = time.monotonic()
            with pytest.raises(shmwal.BrokerUnavailable):
                own.append(TOPIC, make_payload(99, cycle, 0, 0, 1, 1, random.Random(0)))
            with pytest.raises(shmwal.BrokerUnavailable):
                own.stats()
            assert time.monotonic() - t0 < DEATH_SEEN_WITHIN
            time.sleep(0.2)   # the outage lasts a while: calls keep failing fast meanwhile
            broker = start_broker()
            t_up = time.monotonic()
            for name, path in reports.items():
                assert poll(lambda: _worked_after(path, t_up), 15), \
                    f"cycle {cycle}: {name} did not carry on with the new broker: {read_report(path)[-3:]}"
            assert own.position(TOPIC, group="own") >= 0   # this process's Client works again too
        open(stop_path, "w").close()
        for name in ("producer-single", "producer-batch"):
            procs[name].join(20)
        # Wake the consumer that waits without a timeout (the others may take what wakes it), so
        # that it sees the stop file.
        wakes = {}
        while procs["consumer-wait"].is_alive() and len(wakes) < 200:
            wake = make_payload(99, 0, len(wakes), 0, 1, 8, random.Random(1))
            wakes[99, len(wakes)] = (own.append(TOPIC, wake), 1, payloads_digest([wake]))
            procs["consumer-wait"].join(0.05)
        for name, p in procs.items():
            p.join(20)
            assert p.exitcode == 0, f"{name} exited with {p.exitcode}: {read_report(reports[name])[-3:]}"

    problems = [(n, line) for n, path in reports.items() for line in read_report(path)
                if line.startswith(("E ", "X "))]
    assert not problems, f"workers failed or hung: {problems[:5]}"
    for name, path in reports.items():
        slow = [(a, b) for a, b in ((float(x), float(y)) for _, x, y in _lines(path, "U")) if b - a > DEATH_SEEN_WITHIN]
        assert not slow, f"{name}: calls that took > {DEATH_SEEN_WITHIN}s to raise BrokerUnavailable: {slow[:3]}"

    # ---------------------------------------------------------------- every returned entry, every cursor
    returned = {}
    for i, name in enumerate(workers):
        for _, seq, first, count, digest, _t in _lines(reports[name], "A"):
            returned[i, int(seq)] = (int(first), int(count), digest)
    returned.update(wakes)
    entries = read_all(own, TOPIC, "verify", 8 << 20)
    next_offset = own.stats()["topics"][TOPIC]["next_offset"]
    assert [e.offset for e in entries] == list(range(next_offset))
    present = {}
    for e in entries:
        pid = decode_payload(e.data)
        if pid.index == 0:
            present[pid.writer, pid.seq] = e.offset
    assert set(present) == set(returned), (
        f"appends that raised but landed: {sorted(set(present) - set(returned))[:5]}; "
        f"returned but missing: {sorted(set(returned) - set(present))[:5]}")
    for key, (first, count, digest) in returned.items():
        assert present[key] == first
        assert payloads_digest(e.data for e in entries[first:first + count]) == digest, key

    received = []
    for name in workers:
        for _, first, count, _t in _lines(reports[name], "G"):
            received.extend(range(int(first), int(first) + int(count)))
    while True:
        got = own.batch_read(TOPIC, 8 << 20, group=GROUP)
        if not got:
            break
        received.extend(e.offset for e in got)
    position = own.position(TOPIC, group=GROUP)
    assert position == next_offset
    assert len(received) == len(set(received)), "an entry was delivered twice to the group across restarts"
    assert sorted(received) == list(range(position)), "the group skipped entries across restarts"
    own.close()

    # ---------------------------------------------------------------- a clean stop leaves nothing
    broker.stop()
    assert not ipc_leftovers(root), ipc_leftovers(root)
    assert not os.path.exists(os.path.join(root, "broker.sock"))
    print(f"\nbroker drill: {CYCLES} broker kills, {len(returned)} returned appends, {next_offset} entries, "
          f"{len(received)} deliveries, death seen after {min(outage_seen):.3f}..{max(outage_seen):.3f}s, "
          f"{time.monotonic() - started:.1f}s")
    assert next_offset >= 2000, f"only {next_offset} entries: too little work for the drill"


# ----------------------------------------------------------------------------- killed while an appender waits on it

def _jumbo_appender(client, go_path, report_path):
    fd = open_report(report_path)
    client.append("mid-rpc", b"warm-up")                  # connected, topic open, before the broker is stopped
    _line(fd, "ready")
    while not os.path.exists(go_path):
        time.sleep(0.005)
    t0 = time.monotonic()
    try:
        client.append("mid-rpc", b"J" * (3 * 64 * 1024))  # larger than a block: it must ask the broker
        _line(fd, f"appended {t0:.6f} {time.monotonic():.6f}")
    except shmwal.BrokerUnavailable:
        _line(fd, f"U {t0:.6f} {time.monotonic():.6f}")
    except BaseException as exc:
        _line(fd, f"E {type(exc).__name__}: {exc}")


@pytest.mark.timeout(60)
def test_broker_killed_while_an_appender_holds_the_writer_mutex_waiting_for_it(start_broker, data_dir, tmp_path):
    """The worst instant: an appender holds the topic's writer mutex and waits for a block from the broker."""
    from drill_helpers import MetaView, meta_path

    broker = start_broker()
    go, report = str(tmp_path / "go"), str(tmp_path / "appender.log")
    own = shmwal.connect(data_dir)
    with Children() as children:
        child = children.add(multiprocessing.get_context("fork").Process(
            target=_jumbo_appender, args=(own, go, report)))
        child.start()
        assert poll(lambda: "ready" in read_report(report), 15), read_report(report)
        os.kill(broker.pid, signal.SIGSTOP)
        open(go, "w").close()
        view = MetaView(meta_path(broker.root, "mid-rpc"))
        try:
            assert poll(lambda: view.writer_mutex_owner() == child.pid, 5), \
                "the appender never held the writer mutex waiting for the (stopped) broker"
            t_kill = time.monotonic()
            os.kill(broker.pid, signal.SIGKILL)
            broker.stop()
            assert poll(lambda: read_report(report)[1:], 5), "the appender hangs after the broker's death"
            kind, t0, t1 = read_report(report)[1].split()
            assert kind == "U", read_report(report)
            assert float(t1) - t_kill <= DEATH_SEEN_WITHIN
            assert poll(lambda: view.writer_mutex_owner() == 0, 5), "the writer mutex is still held"
        finally:
            view.close()
        child.join(10)
        assert child.exitcode == 0
    start_broker()
    assert own.append("mid-rpc", b"after") == 1, "the failed append left something behind"
    own.seek("mid-rpc", 0, group="v")
    assert [e.data for e in own.batch_read("mid-rpc", 1 << 20, group="v")] == [b"warm-up", b"after"]
    own.close()


# ----------------------------------------------------------------------------- what a killed broker leaves

def _stale_run_garbage(root):
    with open(os.path.join(root, "broker.run"), "wb") as f:
        f.write(os.urandom(64))


def _stale_run_wrong_shape(root):
    with open(os.path.join(root, "broker.run"), "w") as f:
        f.write('{"pid": "x", "semaphores": 5, "prefix": []}')


def _stale_run_list(root):
    with open(os.path.join(root, "broker.run"), "w") as f:
        f.write("[1, 2, 3]")


def _stale_run_missing(root):
    os.unlink(os.path.join(root, "broker.run"))


def _stale_socket_is_a_file(root):
    os.unlink(os.path.join(root, "broker.sock"))
    with open(os.path.join(root, "broker.sock"), "w") as f:
        f.write("not a socket")


def _stale_half_made_files(root):
    with open(os.path.join(root, f"broker.run.{os.getpid()}.tmp"), "w") as f:
        f.write("{")
    os.makedirs(os.path.join(root, "topics", "half"), exist_ok=True)
    with open(os.path.join(root, "topics", "half", "meta.new"), "wb") as f:
        f.write(b"\0" * 4096)


STALE = {"as-left": lambda root: None, "run-garbage": _stale_run_garbage, "run-wrong-shape": _stale_run_wrong_shape,
         "run-list": _stale_run_list, "run-missing": _stale_run_missing, "socket-is-a-file": _stale_socket_is_a_file,
         "half-made-files": _stale_half_made_files}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("stale", sorted(STALE))
def test_what_a_killed_broker_leaves_does_not_stop_the_next(start_broker, data_dir, stale):
    broker = start_broker()
    root = broker.root
    client = shmwal.connect(data_dir)
    client.batch_append("kept", [b"%d" % i for i in range(10)])
    assert [e.offset for e in client.batch_read("kept", 40, group="g")][-1] >= 0
    position = client.position("kept", group="g")
    os.kill(broker.pid, signal.SIGKILL)
    broker.stop()
    assert ipc_leftovers(root) and os.path.exists(os.path.join(root, "broker.sock"))
    STALE[stale](root)
    broker = start_broker()            # must start, whatever was left
    assert poll(lambda: _ok(client), 5), "the same Client does not work with the new broker"
    assert client.position("kept", group="g") == position
    client.seek("kept", 0, group="all")
    assert [e.data for e in client.batch_read("kept", 1 << 20, group="all")] == [b"%d" % i for i in range(10)]
    assert client.append("kept", b"more") == 10
    client.close()
    broker.stop()
    assert not ipc_leftovers(root), f"the clean stop left IPC objects: {ipc_leftovers(root)}"
    assert not os.path.exists(os.path.join(root, "broker.sock"))
    assert not os.path.exists(os.path.join(root, "topics", "half", "meta.new"))


def _ok(client):
    try:
        client.topics()
        return True
    except shmwal.BrokerUnavailable:
        return False


# ----------------------------------------------------------------------------- killed inside a reclamation

@pytest.mark.timeout(60)
def test_broker_killed_between_the_two_stores_of_a_reclamation(start_broker, data_dir):
    """reclaim_topic moves H_FIRST_OFFSET, then H_FIRST_BLOCK (server/reclaim.py says why): a SIGKILL between
    the two stores leaves a state the broker itself makes, which is no damage.  The next broker
    must take it as it is: nothing reported damaged, every cursor and entry as they were."""
    from shmwal.blocks import layout as L
    from drill_helpers import MetaView, meta_path, write_word

    broker = start_broker()
    client = shmwal.connect(data_dir)
    client.seek("r", 0, group="h")   # holds every block until the drill is ready (no reclamation before)
    for i in range(10):
        client.batch_append("r", [b"%06d" % (i * 100 + j) + b"x" * 600 for j in range(100)])
    while client.batch_read("r", 1 << 20, group="g"):
        pass
    client.seek("r", 500, group="h")
    os.kill(broker.pid, signal.SIGKILL)
    broker.stop()
    path = meta_path(broker.root, "r")
    view = MetaView(path)
    first = view.word(L.H_FIRST_BLOCK)
    assert view.word(L.H_PUBLISHED_BLOCKS) >= first + 3, "the drill needs a topic of several blocks"
    moved_to = view.chain(first + 1)[3]
    view.close()
    assert 0 < moved_to <= 500, "both groups have read past the first block: it is reclaimable"
    write_word(path, L.H_FIRST_OFFSET, moved_to)      # the first store done, the second not
    start_broker()
    assert poll(lambda: _ok(client), 5)
    stats = client.stats()["topics"]["r"]
    assert not stats.get("damaged"), f"a state the broker itself leaves is reported as damage: {stats}"
    assert stats["next_offset"] == 1000 and stats["first_offset"] in (0, moved_to), stats
    assert client.position("r", group="g") == 1000 and client.position("r", group="h") == 500
    start = client.position("r", group="new")
    got = []
    while chunk := client.batch_read("r", 1 << 20, group="new"):
        got.extend(chunk)
    assert [e.offset for e in got] == list(range(start, 1000))
    assert all(e.data == b"%06d" % e.offset + b"x" * 600 for e in got)
    assert client.append("r", b"next") == 1000
    client.close()
