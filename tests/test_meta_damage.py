"""Damaged meta words at broker start (issue 11, items 2 and 3): start repairs, verify said so first.

Before: one flipped byte of a lock word (meta +64, +640) hung the broker at start in
futex_wait, deaf to SIGTERM, and Broker.start() raised subprocess.TimeoutExpired after
40 s leaving it holding the directory; a flip at +656 (the chain mutex's kind) made the
namespace unstartable with a traceback while ``shmwal verify`` said "no damage".
"""

from __future__ import annotations

import subprocess
import sys

import pytest

import shmwal
from shmwal.blocks import layout as L
from drill_helpers import flip_byte, meta_path, read_word, write_word
from helpers import read_all

BROKER = dict(block_size=64 * 1024, blocks_per_file=4)


def _verify(data_dir):
    code = "import sys; from shmwal.cli import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, "verify", "--data-dir", data_dir],
                          capture_output=True, text=True, timeout=60)


def _namespace(data_dir, start_broker):
    broker = start_broker(**BROKER)
    with shmwal.connect(data_dir) as client:
        payloads = [b"%05d" % i * 50 for i in range(300)]
        for i in range(0, 300, 3):
            client.batch_append("t", payloads[i:i + 3])
        assert len(client.batch_read("t", 10_000, group="g")) > 0
    broker.stop()
    return broker.root, payloads


def _group_mutex(root):
    return L.group_slot_at(0) + L.G_MUTEX


CASES = {
    "writer-lock-word": lambda root: flip_byte(meta_path(root, "t"), L.H_WRITER_MUTEX, 0x5A),
    "writer-lock-word-high": lambda root: flip_byte(meta_path(root, "t"), L.H_WRITER_MUTEX + 3, 0x80),
    "chain-lock-word": lambda root: flip_byte(meta_path(root, "t"), L.H_CHAIN_MUTEX, 0x5A),
    "chain-mutex-kind": lambda root: flip_byte(meta_path(root, "t"), L.H_CHAIN_MUTEX + 16, 0x5A),
    "writer-mutex-kind": lambda root: flip_byte(meta_path(root, "t"), L.H_WRITER_MUTEX + 16, 0x01),
    "group-lock-word": lambda root: flip_byte(meta_path(root, "t"), _group_mutex(root), 0x21),
    "group-mutex-spins": lambda root: flip_byte(meta_path(root, "t"), _group_mutex(root) + 20, 0x01),
    "cursor-past-end": lambda root: write_word(meta_path(root, "t"), L.group_slot_at(0) + L.G_CURSOR, 10**9),
    "group-high-mark-low": lambda root: flip_byte(meta_path(root, "t"), L.H_GROUP_HIGH, 0x01),
    "group-high-mark-huge": lambda root: flip_byte(meta_path(root, "t"), L.H_GROUP_HIGH + 5, 0x01),
    "visible-flag": lambda root: flip_byte(meta_path(root, "t"), L.H_VISIBLE, 0x01),
    "group-count": lambda root: flip_byte(meta_path(root, "t"), L.H_GROUPS, 0x40),
    "waiters": lambda root: flip_byte(meta_path(root, "t"), L.H_WAITERS + 7, 0x10),
    "chain-slot-file": lambda root: write_word(meta_path(root, "t"), L.chain_slot_at(1) + L.C_FILE_ID,
                                               read_word(meta_path(root, "t"), L.chain_slot_at(1) + L.C_FILE_ID) ^ 4),
    "chain-slot-offset": lambda root: flip_byte(meta_path(root, "t"), L.chain_slot_at(1) + L.C_FILE_OFFSET + 2, 0x01),
    "chain-slot-first": lambda root: flip_byte(meta_path(root, "t"), L.chain_slot_at(1) + L.C_FIRST_OFFSET, 0x01),
}


@pytest.mark.timeout(90)
@pytest.mark.parametrize("case", sorted(CASES))
def test_start_repairs_what_verify_reports_and_reads_stay_exact(data_dir, start_broker, case):
    root, payloads = _namespace(data_dir, start_broker)
    assert _verify(data_dir).returncode == 0
    CASES[case](root)
    before = _verify(data_dir)
    assert "Traceback" not in before.stderr, before.stderr
    assert before.returncode == 1, f"verify missed the damage ({case}):\n{before.stdout}{before.stderr}"
    # Must start, and within the fixture's ordinary timeout. Retention's default keeps consumed
    # entries: a cursor repaired to the end ("cursor-past-end") would otherwise let the broker
    # free the first block before the "check" group, made after, reads it.
    broker = start_broker(**BROKER, retention=shmwal.Retention())
    with shmwal.connect(data_dir) as client:
        client.seek("t", 0, group="check")
        got = read_all(client, "t", "check", 1 << 20)
        assert [e.offset for e in got] == list(range(300)) and [e.data for e in got] == payloads
        assert client.append("t", b"after") == 300
        assert "t" in client.topics()
        assert client.read_next("t", group="g", timeout=5) is not None   # the old group still reads
    broker.stop()
    after = _verify(data_dir)
    assert after.returncode == 0, f"start left damage that verify still reports ({case}):\n{after.stdout}"
