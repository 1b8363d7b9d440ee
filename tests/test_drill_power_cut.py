"""Drill: power cuts under SyncEach (issue 11; the durability order moved here from issue 12).

A power cut keeps of each file exactly what its last fsync made durable.  The writer runs
with a test hook: each ``fdatasync`` of a block file and each ``msync`` of the meta file it
makes also copies that file, as it is at that moment, into a shadow directory (atomically:
a copy cut short by the kill is no fsync).  So the shadow directory is the disk a power cut
at any instant leaves.  Each round SIGKILLs the writer and a concurrent reader at a random
moment, starts a broker on a copy of the shadow and checks:

* every append that had returned is there, byte for byte (SyncEach's promise);
* every entry a reader had taken is there (an entry is visible only once on disk: before
  the fix it was published, then fsynced, and a reader could take what the cut then lost);
* no torn entry: everything present reads back exactly, with no gap, and ends on the end of
  one of the writer's calls (a batch is all there or not at all).
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time

import pytest

import shmwal
from drill_helpers import offset_payload, read_report
from helpers import read_all
from test_drill_flips import copy_sparse, copy_sparse_file

pytestmark = pytest.mark.slow

CUTS = 5
CTX = multiprocessing.get_context("fork")
BROKER = dict(block_size=16 * 1024, blocks_per_file=2)


def size_of(offset: int) -> int:
    return 8 + (offset * 7919) % 700


def _snapshot(shadow_root: str, live_root: str, path: str) -> None:
    rel = os.path.relpath(path, live_root)
    if rel.startswith(".."):
        return
    dst = os.path.join(shadow_root, rel)
    tmp = dst + ".tmp"
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    copy_sparse_file(path, tmp)
    os.rename(tmp, dst)   # a copy the kill cut short is no fsync: the old one stands


def install_shadow(live_root: str, shadow_root: str) -> None:
    """In the writer: every fdatasync and meta msync also copies the file to the shadow."""
    import types
    from shmwal.blocks.meta import TopicMeta
    from shmwal.client import append as append_module

    real_os = append_module.os

    def fdatasync(fd):
        real_os.fdatasync(fd)
        _snapshot(shadow_root, live_root, os.readlink(f"/proc/self/fd/{fd}"))

    shim = types.SimpleNamespace(**{name: getattr(real_os, name) for name in dir(real_os) if not name.startswith("__")})
    shim.fdatasync = fdatasync
    append_module.os = shim
    real_flush = TopicMeta.flush

    def flush(self, upto=None):
        real_flush(self, upto)
        _snapshot(shadow_root, live_root, self.path)

    TopicMeta.flush = flush


def writer(data_dir, live_root, shadow_root, report, seed):
    install_shadow(live_root, shadow_root)
    rng = random.Random(seed)
    fd = os.open(report, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    client = shmwal.connect(data_dir)
    n = 0
    while True:
        count = 1 if rng.random() < 0.5 else rng.randint(2, 9)
        os.write(fd, f"intend {n} {count}\n".encode())
        items = [offset_payload(n + i, size_of(n + i)) for i in range(count)]
        if count == 1:
            assert client.append("t", items[0]) == n
        else:
            assert client.batch_append("t", items) == range(n, n + count)
        n += count
        os.write(fd, f"returned {n}\n".encode())


def reader(data_dir, report):
    fd = os.open(report, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    client = shmwal.connect(data_dir)
    while True:
        entry = client.read_next("t", group="reader", timeout=1.0)
        if entry is not None:
            os.write(fd, f"took {entry.offset}\n".encode())


@pytest.mark.timeout(600)
def test_power_cuts_keep_every_returned_and_every_read_append_and_tear_nothing(tmp_path):
    rng = random.Random(int.from_bytes(os.urandom(4), "little") if os.environ.get("SHMWAL_DRILL_RANDOM") else 5)
    kept_synced = []
    for cut in range(CUTS):
        live_dir = str(tmp_path / f"live{cut}")
        shadow_dir = str(tmp_path / f"shadow{cut}")
        with shmwal.Broker(live_dir, fsync=shmwal.SyncEach(), **BROKER) as broker:
            with shmwal.connect(live_dir) as client:
                client.create_group("t", "reader")
            # The disk before anything is appended: what the broker made durable at creation.
            copy_sparse(broker.root, os.path.join(shadow_dir, os.path.basename(broker.root)))
            shadow_root = os.path.join(shadow_dir, os.path.basename(broker.root))
            wreport, rreport = str(tmp_path / f"w{cut}"), str(tmp_path / f"r{cut}")
            w = CTX.Process(target=writer, args=(live_dir, broker.root, shadow_root, wreport, cut), daemon=True)
            r = CTX.Process(target=reader, args=(live_dir, rreport), daemon=True)
            w.start()
            r.start()
            try:
                target = rng.randint(20, 200)
                deadline = time.monotonic() + 60
                while sum(line.startswith("returned") for line in read_report(wreport)) < target:
                    assert time.monotonic() < deadline and w.is_alive(), "the writer stalled or died"
                    time.sleep(0.005)
                time.sleep(rng.random() * 0.02)
            finally:
                for p in (w, r):   # the power cut: both at once
                    if p.pid is not None:
                        os.kill(p.pid, signal.SIGKILL)
                for p in (w, r):
                    p.join(10)
        lines = read_report(wreport)
        returned = max((int(x.split()[1]) for x in lines if x.startswith("returned")), default=0)
        ends = {0} | {int(x.split()[1]) + int(x.split()[2]) for x in lines if x.startswith("intend")}
        took = {int(x.split()[1]) for x in read_report(rreport) if x.startswith("took")}
        # Recovery on the disk the cut left.
        after_dir = str(tmp_path / f"after{cut}")
        copy_sparse(shadow_dir, after_dir)
        with shmwal.Broker(after_dir, **BROKER) as after:
            with shmwal.connect(after_dir) as client:
                end = client.stats()["topics"]["t"]["next_offset"]
                client.seek("t", 0, group="check")
                got = read_all(client, "t", "check", 1 << 20)
            with open(os.path.join(after.root, "broker.log")) as f:
                kept_synced.append("but their publish was lost: kept" in f.read())
        offsets = [e.offset for e in got]
        assert offsets == list(range(end)), f"cut {cut}: gaps or damage: read {len(offsets)} of {end}"
        bad = [e.offset for e in got if e.data != offset_payload(e.offset, size_of(e.offset))]
        assert not bad, f"cut {cut}: wrong bytes at {bad[:5]}"
        assert end >= returned, f"cut {cut}: {returned} appends had returned, only {end} survived the power cut"
        lost = sorted(o for o in took if o >= end)
        assert not lost, f"cut {cut}: a reader took {lost[:5]}, which the power cut then lost (visible before on disk)"
        assert end in ends, f"cut {cut}: the recovered end {end} is inside a batch (torn)"
        print(f"cut {cut}: {returned} returned, {len(took)} read, {end} recovered")
    print(f"\n{CUTS} power cuts; the publish word's page was lost and SyncEach's note kept the entries in "
          f"{sum(kept_synced)} of them")
