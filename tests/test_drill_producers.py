"""Drill: producers SIGKILLed at random instants while they append to one topic (issue 3, item 1).

Three producer processes append single entries, batches of random sizes and
now and then an entry larger than a block, to one topic.  The test kills one
of them again and again -- half of the time the one that holds the topic's
writer mutex at that instant, otherwise any -- and starts a new incarnation
in its place.  Each producer writes a line to its report file after every
append that returned (offset, payload digest), and a ``D`` line each time it
found the writer mutex's previous holder dead (the robust-mutex recovery the
design relies on), so the test can tell the kills landed inside the critical
section.

At the end the whole topic is read back and must hold: offsets 0..N-1 with no
gap; every entry a whole, intact drill payload; every batch all or nothing and
contiguous; every returned append at its returned offset with its exact
payload; and after every kill the surviving producers went on appending within
seconds.
"""

from __future__ import annotations

import collections
import faulthandler
import multiprocessing
import os
import random
import signal
import time

import pytest

import shmwal
from drill_helpers import (Children, MetaView, decode_payload, instrument_lock_recovery,
                           kill_and_reap, kill_inside_lock, make_payload, meta_path, open_report, payloads_digest,
                           poll, read_report, report_size)
from helpers import read_all

TOPIC = "drill-producers"
PRODUCERS = 3
KILLS = 24                  # half of them aimed at the writer mutex's holder
PROGRESS_WITHIN = 5.0       # seconds in which every surviving producer must append again
# Seconds each producer rests between appends: a few hundred appends a second each.  The kills,
# not the disk, are what this drill is about.  With PACE = 0 three producers write ~30 MB/s to
# the block files, and then, on this VM's ext4, survivors stalled > PROGRESS_WITHIN now and then:
# an appender that needs a new block waits, holding the topic's writer mutex, while the broker
# creates a block file (fallocate + fsync + directory fsync) on its one control loop, and under
# that writeback those fsyncs took seconds.  A latency issue of its own, reported apart.
PACE = 0.002
BLOCK = 64 * 1024
JUMBO = (BLOCK + 1, 2 * BLOCK)  # bodies larger than a block
CTX = multiprocessing.get_context("fork")


def _producer(data_dir, writer, incarnation, report_path, stop_path, seed):
    fd = open_report(report_path)
    # SIGUSR1 dumps this producer's Python stack beside its report (see _stuck_state).
    faulthandler.register(signal.SIGUSR1, file=open(report_path + ".stack", "w"), all_threads=True)
    try:
        instrument_lock_recovery(fd)
        rng = random.Random(seed)
        client = shmwal.connect(data_dir)
        os.write(fd, f"S {incarnation}\n".encode())
        seq = 0
        while not os.path.exists(stop_path):
            r = rng.random()
            if r < 0.005:
                count, single = 1, True
                lengths = [rng.randint(*JUMBO)]
            elif r < 0.45:
                count, single = 1, True
                lengths = [rng.randint(0, 300)]
            else:
                count, single = rng.randint(1, 60), False
                lengths = [rng.randint(0, 300) if rng.random() < 0.98 else rng.randint(300, 6000)
                           for _ in range(count)]
                if rng.random() < 0.005:
                    lengths[rng.randrange(count)] = rng.randint(*JUMBO)
            payloads = [make_payload(writer, incarnation, seq, i, count, n, rng)
                        for i, n in enumerate(lengths)]
            if single:
                first = client.append(TOPIC, payloads[0])
                kind = "a"
            else:
                got = client.batch_append(TOPIC, payloads)
                if len(got) != count or got.step != 1:
                    os.write(fd, f"E batch_append returned {got!r} for {count} items\n".encode())
                    os._exit(1)
                first = got.start
                kind = "b"
            os.write(fd, f"A {kind} {incarnation} {seq} {first} {count} {payloads_digest(payloads)}\n".encode())
            seq += 1
            time.sleep(PACE)
        client.close()
    except BaseException as exc:  # reported to the test, which fails on it
        os.write(fd, f"E {type(exc).__name__}: {exc}\n".replace("\n", " ").encode() + b"\n")
        os._exit(1)


def _stuck_state(view, producers, broker_pid) -> str:
    """What a stuck drill looks like: the writer mutex's owner and where each producer sleeps."""
    import psutil

    from shmwal.blocks import layout as L
    owner = view.writer_mutex_owner()
    out = [f"writer mutex word {view.u32(L.H_WRITER_MUTEX):#x} (owner {owner}, "
           f"{'alive' if psutil.pid_exists(owner) else 'gone'})",
           f"next_offset {view.word(L.H_NEXT_OFFSET)}, tail offset {view.word(L.H_TAIL_OFFSET)}"]
    if hasattr(L, "H_CHAIN_MUTEX"):
        out.append(f"chain mutex word {view.u32(L.H_CHAIN_MUTEX):#x}")
    for w, p in producers.procs.items():
        if p.is_alive():
            os.kill(p.pid, signal.SIGUSR1)
            stack = producers.report(w) + ".stack"
            if poll(lambda: report_size(stack) > 0, 2):
                time.sleep(0.2)   # let faulthandler finish writing
                with open(stack) as f:
                    text = f.read()
                main = text[text.rfind("Current thread"):] if "Current thread" in text else text
                out.append(f"stack of producer {w} (pid {p.pid}):\n{main[:1500]}")
        try:
            with open(f"/proc/{p.pid}/wchan") as f:
                wchan = f.read()
            out.append(f"producer {w} pid {p.pid} {psutil.Process(p.pid).status()} in {wchan}")
        except (OSError, psutil.Error) as exc:
            out.append(f"producer {w} pid {p.pid}: {exc}")
    import shutil
    import subprocess
    if shutil.which("py-spy"):    # optional: the broker's own stacks, when py-spy is installed
        dump = subprocess.run(["py-spy", "dump", "--pid", str(broker_pid)], capture_output=True, text=True)
        out.append("broker stacks:\n" + dump.stdout[-4000:])
    for task in sorted(os.listdir(f"/proc/{broker_pid}/task")):
        try:
            with open(f"/proc/{broker_pid}/task/{task}/wchan") as f:
                out.append(f"broker thread {task} in {f.read()}")
        except OSError:
            pass
    return "; ".join(out)


class Producers:
    def __init__(self, children, data_dir, tmp):
        self.children = children
        self.data_dir = data_dir
        self.tmp = tmp
        self.stop_path = os.path.join(tmp, "stop")
        self.procs = {}
        self.incarnation = collections.Counter()
        self.seed = 1000

    def report(self, writer):
        return os.path.join(self.tmp, f"producer-{writer}.log")

    def start(self, writer):
        inc = self.incarnation[writer]
        self.incarnation[writer] += 1
        self.seed += 1
        p = self.children.add(CTX.Process(target=_producer, name=f"producer-{writer}.{inc}",
                                          args=(self.data_dir, writer, inc, self.report(writer),
                                                self.stop_path, self.seed)))
        p.start()
        self.procs[writer] = p
        return p

    def appended_by(self, writer, incarnation):
        prefix = f"A a {incarnation} ", f"A b {incarnation} "
        return sum(1 for line in read_report(self.report(writer)) if line.startswith(prefix))


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_producers_killed_at_random_instants_lose_nothing_and_expose_nothing(start_broker, data_dir, tmp_path):
    # NoFsync: these are process kills, which NoFsync survives (API.md); an fsync schedule would
    # only make the progress deadline depend on how fast this machine's disk writes back.
    broker = start_broker(block_size=BLOCK, blocks_per_file=4, fsync=shmwal.NoFsync())
    started = time.monotonic()
    rng = random.Random(20240603)
    kills = targeted_in_lock = 0
    progress_waits = []
    with Children() as children:
        producers = Producers(children, data_dir, str(tmp_path))
        for w in range(PRODUCERS):
            producers.start(w)
        for w in range(PRODUCERS):
            assert poll(lambda: producers.appended_by(w, 0) > 0, 20), \
                f"producer {w} never appended: {read_report(producers.report(w))[-3:]}"
        view = MetaView(meta_path(broker.root, TOPIC))
        try:
            def recovered():
                return sum(line == "D" for w in range(PRODUCERS) for line in read_report(producers.report(w)))

            # KILLS kills, and more (up to 2 x KILLS) until 3 have landed inside the writer mutex.
            while kills < KILLS or (kills < 2 * KILLS and recovered() < 3):
                time.sleep(rng.uniform(0.02, 0.2))   # a random instant in the producers' work
                # Every producer has appended since it started: a kill lands in its work.
                for w in range(PRODUCERS):
                    inc = producers.incarnation[w] - 1
                    assert producers.appended_by(w, inc) > 0, f"producer {w}.{inc} had not appended yet"
                sizes = {w: report_size(producers.report(w)) for w in range(PRODUCERS)}
                victim = None
                if kills % 2 == 0:
                    # Inside the writer mutex: freeze its holder, check it still holds it, kill it.
                    victim = kill_inside_lock(view.writer_mutex_owner,
                                              {p.pid: w for w, p in producers.procs.items()})
                    targeted_in_lock += victim is not None
                if victim is None:
                    victim = rng.randrange(PRODUCERS)
                survivors = {w: size for w, size in sizes.items() if w != victim}
                kill_and_reap(producers.procs[victim])
                kills += 1
                t0 = time.monotonic()
                for w, size in survivors.items():
                    moved = poll(lambda: report_size(producers.report(w)) > size, PROGRESS_WITHIN)
                    assert moved, (f"kill {kills}: producer {w} made no progress within {PROGRESS_WITHIN}s "
                                   f"after producer {victim} was killed: {read_report(producers.report(w))[-3:]}; "
                                   + _stuck_state(view, producers, broker.pid))
                progress_waits.append(time.monotonic() - t0)
                new_inc = producers.incarnation[victim]
                producers.start(victim)
                assert poll(lambda: producers.appended_by(victim, new_inc) > 0, 15), \
                    f"restarted producer {victim}.{new_inc} never appended: {read_report(producers.report(victim))[-3:]}"
        finally:
            view.close()
        open(producers.stop_path, "w").close()
        for w, p in producers.procs.items():
            p.join(20)
            assert p.exitcode == 0, f"producer {w} exited with {p.exitcode}: {read_report(producers.report(w))[-3:]}"

    # ------------------------------------------------------------------ what the producers said
    reports = {w: read_report(producers.report(w)) for w in range(PRODUCERS)}
    errors = [(w, line) for w, lines in reports.items() for line in lines if line.startswith("E")]
    assert not errors, f"producers raised: {errors[:5]}"
    returned = {}   # (writer, incarnation, seq) -> (first, count, digest)
    for w, lines in reports.items():
        for line in lines:
            if line.startswith("A "):
                _, _kind, inc, seq, first, count, digest = line.split()
                returned[w, int(inc), int(seq)] = (int(first), int(count), digest)
    recoveries = sum(line == "D" for lines in reports.values() for line in lines)

    # ------------------------------------------------------------------ what the topic holds
    with shmwal.connect(data_dir) as client:
        next_offset = client.stats()["topics"][TOPIC]["next_offset"]
        entries = read_all(client, TOPIC, "verify", 8 << 20)
        assert client.position(TOPIC, group="verify") == next_offset
    assert [e.offset for e in entries] == list(range(next_offset)), "offsets are not exactly 0..N-1"

    ids = []
    for e in entries:
        try:
            ids.append(decode_payload(e.data))
        except ValueError as exc:
            pytest.fail(f"offset {e.offset} holds a damaged or partial payload ({exc}): {e.data[:40]!r}")
    # Each append (writer, incarnation, seq) is all or nothing, contiguous, in order, and appears once.
    runs = {}
    i = 0
    while i < len(ids):
        head = ids[i]
        key = (head.writer, head.incarnation, head.seq)
        assert key not in runs, f"append {key} appears twice (offsets {runs.get(key)} and {i})"
        assert head.index == 0, f"offset {i}: {head} starts mid-batch (part of a batch is visible)"
        for j in range(head.count):
            got = ids[i + j] if i + j < len(ids) else None
            assert got == type(head)(*key, j, head.count), \
                f"append {key} of {head.count} entries is torn at offset {i + j}: found {got}"
        runs[key] = (i, head.count)
        i += head.count

    for key, (first, count, digest) in returned.items():
        assert runs.get(key, (None,))[0] == first, f"returned append {key} is not at its offset {first}: {runs.get(key)}"
        assert payloads_digest(e.data for e in entries[first:first + count]) == digest, \
            f"returned append {key} at {first} does not hold its exact payload"
    unreported = set(runs) - set(returned)
    # An append in flight when its producer was killed may have landed (whole): one per kill at most.
    assert len(unreported) <= kills, f"{len(unreported)} appends nobody reported, for {kills} kills"

    elapsed = time.monotonic() - started
    print(f"\nproducer drill: {kills} kills ({targeted_in_lock} inside the writer mutex), "
          f"{recoveries} dead-holder recoveries seen by survivors, {len(returned)} returned appends, "
          f"{next_offset} entries ({sum(len(e.data) for e in entries) >> 20} MiB), "
          f"{len(unreported)} landed appends of killed producers, "
          f"slowest progress after a kill {max(progress_waits):.3f}s, {elapsed:.1f}s")
    assert kills >= KILLS
    assert recoveries >= 3, (f"only {recoveries} of {kills} kills landed while the victim held the writer mutex: "
                             f"the drill did not exercise the dead-holder path")
    assert next_offset >= 20_000, f"only {next_offset} entries written: too little work for the drill"


# ----------------------------------------------------------------------------- a holder killed at a known point

def _hold_writer_mutex(root, ready_path, scribble):
    """Take the writer mutex as an appender does; optionally leave a half-copied record; wait to be killed."""
    import mmap as _mmap

    from shmwal.ipc import sync
    from shmwal.blocks import layout as L
    from shmwal.blocks.meta import TopicMeta
    from drill_helpers import block_path

    meta = TopicMeta(meta_path(root, TOPIC), TOPIC)
    sync.lock(meta.base + L.H_WRITER_MUTEX)
    if scribble:
        # What an appender killed mid-copy leaves: bytes past the published end, tail words moved.
        file_id, file_offset, capacity, _ = meta.chain(meta.get(L.H_TAIL_CHAIN))
        pos = meta.get(L.H_TAIL_POS)
        end = min(pos + 4096, file_offset + capacity)
        with open(block_path(root, file_id), "r+b") as f:
            with _mmap.mmap(f.fileno(), 0) as mm:
                mm[pos:end] = random.Random(5).randbytes(end - pos)
        meta.set(L.H_TAIL_POS, end)
        meta.set(L.H_TAIL_OFFSET, meta.get(L.H_NEXT_OFFSET) + 3)
    open(ready_path, "w").close()
    time.sleep(120)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("scribble", [False, True], ids=["idle", "mid-copy"])
@pytest.mark.parametrize("call", ["append", "batch_append"])
def test_appender_killed_holding_the_writer_mutex_does_not_block_the_next(client, broker, data_dir, tmp_path,
                                                                            call, scribble):
    rng = random.Random(3)
    before = [make_payload(9, 0, i, 0, 1, 50, rng) for i in range(5)]
    assert client.batch_append(TOPIC, before) == range(0, 5)
    ready = str(tmp_path / "ready")
    with Children() as children:
        holder = children.add(CTX.Process(target=_hold_writer_mutex, args=(broker.root, ready, scribble)))
        holder.start()
        assert poll(lambda: os.path.exists(ready), 15), "the holder never took the writer mutex"
        view = MetaView(meta_path(broker.root, TOPIC))
        try:
            assert view.writer_mutex_owner() == holder.pid, "the kill would not land in the lock"
        finally:
            view.close()
        kill_and_reap(holder)
    after = [make_payload(9, 1, i, 0, 1, 70, rng) for i in range(3)]
    t0 = time.monotonic()
    if call == "append":
        assert [client.append(TOPIC, p) for p in after] == [5, 6, 7]
    else:
        assert client.batch_append(TOPIC, after) == range(5, 8)
    assert time.monotonic() - t0 < 2.0
    assert [e.data for e in client.batch_read(TOPIC, 1 << 20, group="check")] == before + after
    assert client.stats()["topics"][TOPIC]["next_offset"] == 8


# ----------------------------------------------------------------------------- a dead appender's pending request

def _appender_stuck_in_block_request(data_dir, ready_path, go_path):
    client = shmwal.connect(data_dir)
    client.append(TOPIC, b"warm-up")
    open(ready_path, "w").close()
    while not os.path.exists(go_path):
        time.sleep(0.005)
    client.append(TOPIC, b"J" * (3 * BLOCK))   # larger than a block: asks the (stopped) broker, and is killed


def _thread_state(tid: int) -> str:
    with open(f"/proc/self/task/{tid}/stat") as f:
        return f.read().rpartition(")")[2].split()[0]


@pytest.mark.timeout(60)
def test_a_dead_appenders_block_request_does_not_take_the_block_the_next_appender_filled(
        start_broker, data_dir, tmp_path):
    """An appender killed while its request for a (jumbo) block waits in the broker's socket.

    The next appender takes over the writer mutex, fills the spare block the
    dead one asked for, and waits for the broker itself (its batch ends with a
    jumbo entry).  When the broker runs again it finds both requests: the dead
    one's must not replace the block the live one has filled but not yet
    published.  Every entry of the live one's batch reads back.
    """
    import threading

    from shmwal.blocks import layout as L

    broker = start_broker(block_size=BLOCK, blocks_per_file=4)
    client = shmwal.connect(data_dir)
    rng = random.Random(8)
    # Enough to fill blocks: the broker keeps spares only ahead of a busy writer.
    before = [make_payload(1, 0, i, 0, 1, 500, rng) for i in range(300)]
    for p in before:
        client.append(TOPIC, p)
    view = MetaView(meta_path(broker.root, TOPIC))
    ready, go = str(tmp_path / "ready"), str(tmp_path / "go")
    result = {}
    try:
        tail = view.word(L.H_TAIL_CHAIN)
        assert poll(lambda: view.word(L.H_ALLOCATED_BLOCKS) >= tail + 3, 10), \
            "the broker keeps no spare blocks: this drill needs them (see server/provisioning.SPARE_BLOCKS)"
        with Children() as children:
            dead = children.add(CTX.Process(target=_appender_stuck_in_block_request, args=(data_dir, ready, go)))
            dead.start()
            assert poll(lambda: os.path.exists(ready), 15)
            os.kill(broker.pid, signal.SIGSTOP)
            try:
                open(go, "w").close()
                assert poll(lambda: view.writer_mutex_owner() == dead.pid, 5), "the appender never asked for a block"
                kill_and_reap(dead)
                batch = [make_payload(2, 0, 0, i, 160, 500, rng) for i in range(159)]
                batch.append(make_payload(2, 0, 0, 159, 160, 2 * BLOCK, rng))

                def live():
                    result["native_id"] = threading.get_native_id()
                    result["range"] = client.batch_append(TOPIC, batch)

                thread = threading.Thread(target=live, daemon=True)
                thread.start()
                assert poll(lambda: "native_id" in result, 5)
                tid = result["native_id"]
                # It holds the mutex, has filled the block after the old tail, and sleeps in its request.
                assert poll(lambda: view.writer_mutex_owner() == tid and view.word(L.H_TAIL_CHAIN) == tail + 1
                            and _thread_state(tid) in "SD", 10), "the live appender never waited for the broker"
            finally:
                os.kill(broker.pid, signal.SIGCONT)
            thread.join(15)
            assert not thread.is_alive(), "the live appender hangs"
        assert len(result["range"]) == len(batch), result
        client.seek(TOPIC, 0, group="check")
        got = []
        while chunk := client.batch_read(TOPIC, 1 << 30, group="check"):
            got.extend(chunk)
        assert [e.data for e in got[:len(before)]] == before
        assert [e.offset for e in got] == list(range(len(got)))
        assert [e.data for e in got[result["range"].start:]] == batch, \
            "the live appender's batch was damaged by the dead appender's request"
        assert b"J" * (3 * BLOCK) not in [e.data for e in got]
    finally:
        view.close()
        client.close()
