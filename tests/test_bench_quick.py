"""The benchmark harness in a tiny mode: it runs, and its exactly-once check has teeth.

The peers run now; the shmwal part runs once ``shmwal.connect`` exists.
"""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from shmwal.bench import check, cli, contenders, plan, runner
from shmwal.bench.messages import HEADER, STAMPED_LEN

pytestmark = pytest.mark.timeout(180)

TINY = ["--count", "2000", "--sizes", "100", "--latency-count", "40", "--repeat", "1", "--timeout", "60", "--no-png"]


def _heads(pairs) -> bytes:
    return b"".join(HEADER.pack(p, s) for p, s in pairs)


def _shmwal_ready() -> bool:
    try:
        import shmwal
    except ImportError:
        return False
    return hasattr(shmwal, "connect")


# ---------------------------------------------------------------- the check itself

def test_check_accepts_every_message_once_across_consumers():
    per_producer = [3, 2]
    a = check.tally(_heads([(0, 0), (1, 1), (0, 2)]), per_producer)
    b = check.tally(_heads([(1, 0), (0, 1)]), per_producer)
    verdict = check.verify_groups([a, b], per_producer, separate=False)
    assert verdict.ok, verdict.detail
    assert verdict.received == 5


@pytest.mark.parametrize(
    "pairs, missing, duplicates, foreign",
    [
        ([(0, 0), (0, 1)], 1, 0, 0),                   # dropped (0, 2)
        ([(0, 0), (0, 1), (0, 2), (0, 1)], 0, 1, 0),   # (0, 1) twice
        ([(0, 0), (0, 1), (0, 2), (0, 3)], 0, 0, 1),   # a seq nobody sent
        ([(0, 0), (0, 1), (0, 2), (7, 0)], 0, 0, 1),   # a producer that does not exist
        ([(0, 0), (0, 0), (0, 2)], 1, 1, 0),           # a duplicate hiding a gap (count is right)
    ],
)
def test_check_rejects_drops_duplicates_and_strangers(pairs, missing, duplicates, foreign):
    verdict = check.verify(check.tally(_heads(pairs), [3]), [3])
    assert not verdict.ok
    assert (verdict.missing, verdict.duplicates, verdict.foreign) == (missing, duplicates, foreign)
    assert verdict.detail


def test_check_separate_groups_need_everything_each():
    per_producer = [2]
    full = check.tally(_heads([(0, 0), (0, 1)]), per_producer)
    half = check.tally(_heads([(0, 1)]), per_producer)
    assert check.verify_groups([full, full], per_producer, separate=True).ok
    # Together the two groups hold every message, but group 1 lacks one: not ok.
    verdict = check.verify_groups([full, half], per_producer, separate=True)
    assert not verdict.ok and "group 1" in verdict.detail


def test_check_reads_stamped_prefixes():
    heads = b"".join(HEADER.pack(0, s) + b"\0" * 8 for s in range(4))
    assert check.verify(check.tally(heads, [4], STAMPED_LEN), [4]).ok


# ---------------------------------------------------------------- test-only contenders

class _FaultySender(contenders.MPQueueSender):
    """Drops message 7 and sends message 3 twice."""

    def __init__(self, q):
        super().__init__(q)
        self.sent = 0

    def send(self, buf):
        n, self.sent = self.sent, self.sent + 1
        if n != 7:
            super().send(buf)
        if n == 3:
            super().send(buf)


class _MPQueueWith(contenders.MPQueueContender):
    """mp.Queue whose session's channel is ``channel(queue)``: one that misbehaves on purpose."""

    def __init__(self, name, channel):
        self.name, self.channel = name, channel

    def open(self, spec, ctx, workdir):
        session = super().open(spec, ctx, workdir)
        session.channel = self.channel(session.q)
        return session


class _FaultyChannel(contenders.MPQueueChannel):
    def sender(self, producer):
        return _FaultySender(self.q)


def _faulty_queue():
    return _MPQueueWith("faulty mp.Queue", _FaultyChannel)


class _StuckChannel(contenders.MPQueueChannel):
    def receiver(self, consumer):
        rx = contenders.MPQueueReceiver(self.q)
        rx.recv = lambda: time.sleep(3600)   # never returns in time
        return rx


def _stuck_queue():
    return _MPQueueWith("stuck mp.Queue", _StuckChannel)


class _FaultyBatchEnd(contenders.FasterFifoEnd):
    """Drops p0#7, sends p0#3 twice and p0#9 twice, the second time cut to 40 bytes."""

    def send_many(self, bufs):
        msgs = [bytes(b) for b in bufs]
        seqs = [int.from_bytes(m[8:16], "little") for m in msgs]
        out = [m for m, seq in zip(msgs, seqs) if seq != 7]
        out += [m for m, seq in zip(msgs, seqs) if seq == 3]
        out += [m[:40] for m, seq in zip(msgs, seqs) if seq == 9]
        self.q.put_many(out, timeout=contenders.FOREVER)


class _FaultyBatchChannel(contenders.FasterFifoChannel):
    def sender(self, producer):
        return _FaultyBatchEnd(self.q, self.batch)


class _FaultyBatchQueue(contenders.FasterFifoContender):
    name = "faulty faster-fifo batch"

    def __init__(self):
        super().__init__(batched=True)

    def open(self, spec, ctx, workdir):
        session = super().open(spec, ctx, workdir)
        session.channel = _FaultyBatchChannel(session.q, session.channel.batch, session.channel.recv_batch)
        return session


def _run(contender, spec, tmp_path, timeout=60.0):
    ctx = multiprocessing.get_context("fork")
    return runner.run_plan([spec], [contender], ctx, str(tmp_path), timeout, log=None)[0]


def test_dropped_and_duplicated_messages_fail_the_run(tmp_path):
    row = _run(_faulty_queue(), plan.RunSpec("throughput", 100, 50), tmp_path)
    assert row.status == "FAILED"
    assert "1 missing" in row.detail and "p0#7" in row.detail
    assert "1 duplicates" in row.detail and "p0#3" in row.detail
    assert row.msgs_per_s is None   # a wrong answer gets no figure to win with


@pytest.mark.parametrize("size", [100, 4096])   # joined prefixes, and one slice a message
def test_batched_receivers_fail_on_dropped_duplicated_and_odd_sized_messages(tmp_path, size):
    pytest.importorskip("faster_fifo")
    row = _run(_FaultyBatchQueue(), plan.RunSpec("throughput", size, 50), tmp_path)
    assert row.status == "FAILED"
    assert "1 missing" in row.detail and "p0#7" in row.detail
    assert "2 duplicates" in row.detail and "p0#3" in row.detail and "p0#9" in row.detail
    assert row.msgs_per_s is None


class _FaultyObjectSender(contenders.MPQueueSender):
    """Objects: drops #7, sends #3 twice, and #5 as an array of another dtype (or a dict without its fields)."""

    def __init__(self, q):
        super().__init__(q)
        self.sent = 0

    def send_obj(self, obj):
        n, self.sent = self.sent, self.sent + 1
        if n == 5:
            obj = obj.astype(np.int64) if isinstance(obj, np.ndarray) else {"producer": 0, "seq": 5}
        if n != 7:
            super().send_obj(obj)
        if n == 3:
            super().send_obj(obj)


class _FaultyObjectChannel(contenders.MPQueueChannel):
    def sender(self, producer):
        return _FaultyObjectSender(self.q)


def _faulty_object_queue():
    return _MPQueueWith("faulty objects mp.Queue", _FaultyObjectChannel)


@pytest.mark.parametrize("item", ["dict", "array"])
def test_objects_dropped_duplicated_or_changed_fail_the_run(tmp_path, item):
    row = _run(_faulty_object_queue(), plan.RunSpec("objects", 100, 30, item=item), tmp_path)
    assert row.status == "FAILED" and row.msgs_per_s is None
    assert "p0#7" in row.detail and "p0#5" in row.detail       # dropped; and changed (so missing)
    assert "1 duplicates" in row.detail and "p0#3" in row.detail
    assert "1 messages nobody sent" in row.detail              # the changed one


def test_objects_scenario_runs_only_the_queues_that_take_objects():
    spec = plan.RunSpec("objects", 100, 10, item="dict")
    takes = {c.name for c in contenders.all_contenders() if not c.unsupported(spec)}
    assert takes == {"mp.Queue", "faster-fifo", "shmwal.Queue"}
    queue_row = [c for c in contenders.all_contenders() if c.name == "shmwal.Queue"][0]
    assert queue_row.unsupported(plan.RunSpec("throughput", 100, 10))


def test_a_hanging_contender_is_killed_as_timeout(tmp_path):
    row = _run(_stuck_queue(), plan.RunSpec("throughput", 100, 50), tmp_path, timeout=3.0)
    assert row.status == "TIMEOUT"


def test_failed_row_makes_the_exit_code_nonzero(tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "all_contenders", lambda consistency, read_bytes=None, retention_bytes=None:
                        [_faulty_queue()])
    code = cli.main(["--scenarios", "throughput", *TINY, "--out", str(tmp_path)])
    assert code == 1


def test_retention_bytes_reaches_every_shmwal_broker_and_the_reproduce_command(tmp_path):
    args = cli.parser().parse_args(["--retention-bytes", "0", "--contenders", "shmwal nofsync"])
    chosen = cli.select_contenders(args)
    assert chosen and all(c.retention_bytes == 0 for c in chosen if hasattr(c, "retention_bytes"))
    assert all(c.retention_bytes is None for c in contenders.all_contenders() if hasattr(c, "retention_bytes"))
    code = cli.main(["--contenders", "=shmwal nofsync entry", "--scenarios", "throughput", "--retention-bytes", "0",
                     *TINY, "--out", str(tmp_path)])
    with open(tmp_path / "bench.json") as f:
        data = json.load(f)
    assert code == 0 and data["meta"]["retention_bytes"] == 0
    assert all("--retention-bytes 0" in r["command"] for r in data["rows"] if r["status"] == "ok")


# ---------------------------------------------------------------- the real race, tiny

def _race(tmp_path, only):
    code = cli.main(["--only", only, *TINY, "--out", str(tmp_path)])
    with open(tmp_path / "bench.json") as f:
        rows = json.load(f)["rows"]
    return code, rows


def test_peers_tiny_race_passes_its_checks(tmp_path):
    code, rows = _race(tmp_path, "peers")
    ran = [r for r in rows if r["status"] not in ("n/a", "SKIPPED")]
    assert ran, "no peer ran"
    assert code == 0, [(r["contender"], r["scenario"], r["status"], r["detail"]) for r in ran if r["status"] != "ok"]
    assert all(r["status"] == "ok" for r in ran)
    assert {r["kind"] for r in ran} == {"throughput", "latency", "scaling", "objects"}
    for r in ran:
        if r["kind"] == "latency":
            assert 0 < r["p50_us"] <= r["p99_us"] <= r["max_us"]
        else:
            assert r["msgs_per_s"] > 0 and r["received"] == r["messages"]
    best = [r for r in ran if r["kind"] == "throughput" and r["vs_best_peer"] == pytest.approx(1.0)]
    assert best, "the best peer has a ratio of 1"


def test_script_runs_the_peers_under_spawn_too(tmp_path):
    # In a process of its own: spawn starts multiprocessing's resource tracker, which lives
    # as long as the process that started it (conftest allows no process to outlive a test).
    script = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"
    done = subprocess.run(
        [sys.executable, str(script), "--only", "peers", "--scenarios", "throughput",
         "--start-method", "spawn", *TINY, "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=150,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "zmq ipc" in done.stdout and (tmp_path / "bench.json").exists()


@pytest.mark.skipif(not _shmwal_ready(), reason="shmwal.connect does not exist yet")
def test_shmwal_tiny_race_passes_its_checks(tmp_path):
    code, rows = _race(tmp_path, "shmwal")
    ran = [r for r in rows if r["status"] not in ("n/a", "SKIPPED")]
    assert ran, "no shmwal contender ran"
    bad = [(r["contender"], r["scenario"], r["status"], r["detail"]) for r in ran if r["status"] != "ok"]
    assert code == 0 and not bad, bad
    groups = [r for r in ran if r["separate_groups"]]
    assert groups and all(r["received"] == r["messages"] for r in groups)


def _iceoryx2_missing():
    return contenders.IceoryxContender().unavailable()


@pytest.mark.skipif(_iceoryx2_missing() is not None, reason=f"iceoryx2 not installed: {_iceoryx2_missing()}")
def test_iceoryx2_tiny_race_passes_its_checks(tmp_path):
    """Every message exactly once through iceoryx2 (blocking backpressure, no drops), one
    consumer and separate groups; work-queue shapes are n/a; nothing left in /dev/shm."""
    import os

    import tempfile

    def leftovers():
        return ({n for n in os.listdir("/dev/shm") if n.startswith("iox2sb")},
                {n for n in os.listdir(tempfile.gettempdir()) if n.startswith("iox2sb-")})

    before = leftovers()
    code = cli.main(["--contenders", "=iceoryx2", *TINY, "--out", str(tmp_path / "out"),
                     "--data-dir", str(tmp_path)])
    with open(tmp_path / "out" / "bench.json") as f:
        data = json.load(f)
    rows = data["rows"]
    ran = [r for r in rows if r["status"] != "n/a"]
    assert code == 0, [(r["scenario"], r["status"], r["detail"]) for r in ran]
    assert {r["contender"] for r in rows} == {"iceoryx2"}
    assert {r["kind"] for r in ran} == {"throughput", "latency", "scaling"}
    assert all(r["status"] == "ok" and r["received"] == r["messages"] for r in ran)
    assert any(r["separate_groups"] and r["consumers"] == 4 for r in ran)
    # n/a: work-queue shapes (every subscriber gets every message) and pickled objects (queues only)
    assert {r["scenario"] for r in rows if r["status"] == "n/a" and r["kind"] != "objects"} == \
        {"1p->2c work", "1p->4c work"}
    assert all('--contenders "=iceoryx2"' in r["command"] for r in ran)
    assert data["meta"]["versions"]["iceoryx2"]
    assert leftovers() == before   # its shared memory and its root directory went


@pytest.mark.skipif(not _shmwal_ready(), reason="shmwal.connect does not exist yet")
def test_reserve_rows_and_reproduce_commands(tmp_path):
    code = cli.main(["--contenders", "=shmwal nofsync reserve zero-copy,=shmwal nofsync reserve zero-copy batch,"
                     "=mp.Queue", "--scenarios", "throughput,latency", "--count", "300", "--sizes", "100,16KiB",
                     "--latency-count", "40", "--repeat", "2", "--timeout", "60", "--no-png",
                     "--read-batch-bytes", "64KiB", "--out", str(tmp_path)])
    with open(tmp_path / "bench.json") as f:
        data = json.load(f)
    rows = data["rows"]
    assert code == 0, [(r["contender"], r["status"], r["detail"]) for r in rows]
    reserve = [r for r in rows if "reserve" in r["contender"]]
    assert {(r["contender"], r["size"], r["kind"], r["status"]) for r in reserve} == {
        ("shmwal nofsync reserve zero-copy", 100, "throughput", "n/a"),
        ("shmwal nofsync reserve zero-copy", 100, "latency", "n/a"),
        ("shmwal nofsync reserve zero-copy", 16384, "throughput", "ok"),
        ("shmwal nofsync reserve zero-copy", 16384, "latency", "ok"),
        ("shmwal nofsync reserve zero-copy batch", 100, "throughput", "n/a"),
        ("shmwal nofsync reserve zero-copy batch", 100, "latency", "n/a"),
        ("shmwal nofsync reserve zero-copy batch", 16384, "throughput", "ok"),
        ("shmwal nofsync reserve zero-copy batch", 16384, "latency", "n/a"),   # batched: no latency row
    }
    ok = [r for r in rows if r["status"] == "ok"]
    assert all(len(r["trials"]) == 2 and r["received"] == r["messages"] for r in ok)
    row = next(r for r in ok if r["contender"] == "shmwal nofsync reserve zero-copy batch")
    assert row["command"] == ('python -m shmwal bench --scenarios throughput --sizes 16KiB --contenders '
                              '"=mp.Queue,=shmwal nofsync reserve zero-copy batch" --repeat 2 --consistency strict '
                              f'--start-method fork --data-dir {cli.parser().get_default("data_dir")} --count 300 '
                              '--latency-count 40 --read-batch-bytes 64KiB')
    assert data["meta"]["read_batch_bytes"] == 65536 and data["meta"]["command"].startswith("python -m shmwal bench")


def test_tally_ignores_nothing_it_cannot_place():
    # A torn or garbage prefix never counts as a real message.
    junk = np.frombuffer(b"\xff" * 32, dtype=np.uint8).tobytes()
    t = check.tally(junk, [2])
    assert t.foreign == 2 and not check.verify(t, [2]).ok


@pytest.mark.skipif(not _shmwal_ready(), reason="shmwal.connect does not exist yet")
def test_append_then_batch_read_row_appends_per_entry_and_reads_in_batches(tmp_path):
    """The row that compares batch_read with read_next (the "entry" row) behind the same producer."""
    by_name = {c.name: c for c in contenders.all_contenders()}
    row = by_name["shmwal nofsync append+batch_read"]
    assert (row.batched, row.producer_batched) == (True, False)
    assert (by_name["shmwal nofsync entry"].producer_batched, by_name["shmwal nofsync batch"].producer_batched) == \
        (False, True)
    code = cli.main(["--contenders", "=shmwal nofsync append+batch_read", "--scenarios", "throughput",
                     "--count", "400", "--sizes", "100,64KiB", "--repeat", "1", "--timeout", "60", "--no-png",
                     "--read-batch-bytes", "1MiB", "--out", str(tmp_path)])
    with open(tmp_path / "bench.json") as f:
        rows = json.load(f)["rows"]
    assert code == 0, [(r["contender"], r["status"], r["detail"]) for r in rows]
    ran = [(r["size"], r["status"], r["received"]) for r in rows if r["scenario"] == "1p->1c"]
    assert sorted(ran) == [(100, "ok", 400), (65536, "ok", 400)]
