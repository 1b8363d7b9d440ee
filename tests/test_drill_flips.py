"""Drill: random byte flips over the WHOLE meta file and every block file, and truncated blocks
(issue 11, item 5).  Never a hang, never wrong data, never a traceback.

A template namespace is written once (two topics, many small blocks shared between files,
batches and singles, groups part-way through).  Each round damages a fresh sparse copy:

* in-process rounds (many, cheap): flips, sometimes a truncated block file; then ``shmwal
  verify``'s checks, then what a broker start runs (recover_topic, or rebuild_meta where it
  asks for one), then the checks again: they must find nothing left to repair, and walking
  every entry must raise nothing but report damage;
* broker rounds (a sample): flips and truncation, then a real broker starts on the copy (or
  refuses with one line naming the file), and every entry of both topics is read every way
  (read_next, batch_read, batch_read_payloads), each returning exactly the bytes appended
  at that offset or raising CorruptEntry; appends work afterwards.

Flip positions: half uniform over the whole file (the meta file is mostly sparse table),
half over the bytes in use (header page, chain slots, group slots; block contents).
Counts (per run and path): FLIP_ROUNDS x (META_FLIPS + BLOCK_FLIPS) in-process flips plus
BROKER_ROUNDS x (META_FLIPS + BLOCK_FLIPS) under a real broker.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys

import pytest

import shmwal
from shmwal.blocks import layout as L
from shmwal.blocks.files import BlockFiles
from shmwal.blocks.meta import TopicMeta
from shmwal.server.recovery import rebuild_meta, recover_topic
from shmwal.server.verify import unusable_meta_files, verify_meta, verify_topic
from damage_helpers import WAYS, read_through

pytestmark = pytest.mark.slow

TOPICS = ("a", "b")
BLOCK = 16 * 1024
FLIP_ROUNDS = 50
BROKER_ROUNDS = 6
META_FLIPS = 10
BLOCK_FLIPS = 20
TRUNCATE_EVERY = 3          # one round in this many also cuts a block file short


def copy_sparse(src: str, dst: str) -> None:
    """Copy a directory tree keeping holes (a meta file is tens of MiB, almost all hole)."""
    os.makedirs(dst, mode=0o700, exist_ok=True)
    for name in os.listdir(src):
        s, d = os.path.join(src, name), os.path.join(dst, name)
        if os.path.isdir(s):
            copy_sparse(s, d)
            continue
        if not os.path.isfile(s) or name in ("broker.sock", "broker.log"):
            continue
        copy_sparse_file(s, d)
        os.chmod(d, 0o600)


def copy_sparse_file(src: str, dst: str) -> None:
    """Copy the data extents only: holes stay holes (a block file is mostly holes)."""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        size = os.fstat(fin.fileno()).st_size
        at = 0
        while at < size:
            try:
                at = os.lseek(fin.fileno(), at, os.SEEK_DATA)
            except OSError:
                break
            end = os.lseek(fin.fileno(), at, os.SEEK_HOLE)
            fin.seek(at)
            fout.seek(at)
            fout.write(fin.read(end - at))
            at = end
        fout.truncate(size)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("flips"))
    data_dir = os.path.join(base, "data")
    rng = random.Random(2026)
    expected = {t: [] for t in TOPICS}
    with shmwal.Broker(data_dir, block_size=BLOCK, blocks_per_file=3, fsync=shmwal.NoFsync()) as broker:
        with shmwal.connect(data_dir) as client:
            for round_ in range(160):
                for topic in TOPICS:
                    if rng.random() < 0.5:
                        p = rng.randbytes(rng.randint(1, 900))
                        client.append(topic, p)
                        expected[topic].append(p)
                    else:
                        ps = [rng.randbytes(rng.randint(0, 400)) for _ in range(rng.randint(2, 7))]
                        client.batch_append(topic, ps)
                        expected[topic].extend(ps)
                if round_ == 60:
                    for topic in TOPICS:   # groups part-way, one caught up later
                        client.batch_read(topic, 5000, group="half")
            for topic in TOPICS:
                client.batch_read(topic, 30_000, group="half")
                client.read_next(topic, group="one")
        root = broker.root
    return root, expected


def _live_ranges(root: str, topic: str) -> list[tuple[int, int]]:
    """Byte ranges of a meta file that hold state: header, used chain slots, used group slots."""
    meta = TopicMeta(os.path.join(root, "topics", topic, "meta"), topic)
    try:
        chain_end = L.chain_slot_at(max(meta.get(L.H_ALLOCATED_BLOCKS), 1))
        groups_end = L.group_slot_at(max(meta.group_high(), 1))
    finally:
        meta.close()
    return [(0, L.PAGE), (L.CHAIN_AT, chain_end), (L.GROUPS_AT, groups_end)]


def _flip(path: str, pos: int, rng) -> None:
    with open(path, "r+b") as f:
        f.seek(pos)
        old = f.read(1)
        f.seek(pos)
        f.write(bytes([(old[0] if old else 0) ^ (1 << rng.randrange(8))]))


def damage(root: str, rng, live: dict) -> list[str]:
    """Flip bytes of a copy (and sometimes cut a block file short); return what was done."""
    done = []
    for topic in TOPICS:
        path = os.path.join(root, "topics", topic, "meta")
        for i in range(META_FLIPS // len(TOPICS)):
            if i % 2:
                pos = rng.randrange(L.META_SIZE)
            else:
                lo, hi = rng.choice(live[topic])
                pos = rng.randrange(lo, hi)
            _flip(path, pos, rng)
            done.append(f"{topic}/meta+{pos}")
    blocks = os.path.join(root, "blocks")
    files = sorted(os.path.join(blocks, n) for n in os.listdir(blocks))
    for _ in range(BLOCK_FLIPS):
        path = rng.choice(files)
        pos = rng.randrange(os.path.getsize(path))
        _flip(path, pos, rng)
        done.append(f"{os.path.basename(path)}+{pos}")
    if rng.randrange(TRUNCATE_EVERY) == 0:
        path = rng.choice(files)
        cut = rng.randrange(os.path.getsize(path))
        if rng.random() < 0.5:
            cut -= cut % L.PAGE
        os.truncate(path, cut)
        done.append(f"{os.path.basename(path)} cut to {cut}")
    return done


def check_and_repair_in_process(root: str) -> list[str]:
    """verify's checks, then start's repairs, then the checks again; return what remained."""
    blocks = os.path.join(root, "blocks")
    files = BlockFiles(blocks)
    left = []
    try:
        unusable = unusable_meta_files(root)
        for topic in TOPICS:
            path = os.path.join(root, "topics", topic, "meta")
            meta = None
            if topic not in unusable:
                meta = TopicMeta(path, topic)
                lines, walkable = verify_meta(meta, files)
                if walkable:
                    verify_topic(meta, files)
                report = recover_topic(meta, files)
                if report["problem"] is not None:
                    groups = {g: meta.get(L.group_slot_at(s) + L.G_CURSOR) for g, s in meta.group_names().items()}
                    meta.close()
                    meta = rebuild_meta(path, topic, 1 + TOPICS.index(topic), blocks, files, groups)
            else:
                meta = rebuild_meta(path, topic, 1 + TOPICS.index(topic), blocks, files, {})
            if meta is None:
                continue   # no block names the topic any more (all its headers flipped): nothing to read
            if report_needed(meta, files):
                report = recover_topic(meta, files)
                assert report["problem"] is None, report
            lines, walkable = verify_meta(meta, files)
            left += lines
            if walkable:
                verify_topic(meta, files)
            meta.close()
    finally:
        files.close()
    return left


def report_needed(meta, files) -> bool:
    """A rebuilt meta file goes through recovery too (as at start)."""
    return meta.get(L.H_TAIL_OFFSET) != meta.get(L.H_NEXT_OFFSET)


@pytest.mark.timeout(600)
@pytest.mark.skipif(os.environ.get("SHMWAL_PURE_PYTHON", "") not in ("", "0"),
                    reason="recovery and verify have no compiled path: the compiled run covers them")
def test_flips_and_truncations_in_process_are_repaired_as_verify_says(template, tmp_path):
    root, _expected = template
    live = {t: _live_ranges(root, t) for t in TOPICS}
    rng = random.Random(int.from_bytes(os.urandom(4), "little") if os.environ.get("SHMWAL_DRILL_RANDOM") else 7)
    flips = cuts = 0
    for round_ in range(FLIP_ROUNDS):
        copy = str(tmp_path / f"r{round_}")
        copy_sparse(root, copy)
        done = damage(copy, rng, live)
        flips += sum(" cut to " not in d for d in done)
        cuts += sum(" cut to " in d for d in done)
        try:
            left = check_and_repair_in_process(copy)
        except Exception as exc:
            raise AssertionError(f"round {round_} ({done}): {type(exc).__name__}: {exc}") from exc
        assert not left, f"round {round_} ({done}): verify still reports after start's repairs: {left}"
        shutil.rmtree(copy)
    print(f"\n{FLIP_ROUNDS} rounds, {flips} flips, {cuts} truncated block files")


def _cli_verify(data_dir):
    code = "import sys; from shmwal.cli import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, "verify", "--data-dir", data_dir],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.timeout(900)
def test_flips_and_truncations_under_a_real_broker_never_hang_mislead_or_crash(template, tmp_path):
    root, expected = template
    live = {t: _live_ranges(root, t) for t in TOPICS}
    rng = random.Random(int.from_bytes(os.urandom(4), "little") if os.environ.get("SHMWAL_DRILL_RANDOM") else 8)
    summary = []
    cuts = 0
    for round_ in range(BROKER_ROUNDS):
        data_dir = str(tmp_path / f"r{round_}")
        copy = os.path.join(data_dir, os.path.basename(root))
        copy_sparse(root, copy)
        done = damage(copy, rng, live)
        cuts += sum(" cut to " in d for d in done)
        verified = _cli_verify(data_dir)
        assert "Traceback" not in verified.stderr and verified.returncode in (0, 1), \
            f"round {round_} ({done}): verify:\n{verified.stderr[-3000:]}"
        broker = shmwal.Broker(data_dir, block_size=BLOCK, blocks_per_file=3)
        try:
            broker.start(timeout=60)
        except shmwal.BrokerAlreadyRunning:
            raise
        except shmwal.ShmwalError as exc:
            assert "\n" not in str(exc).strip(), f"round {round_}: a refusal of more than one line: {exc}"
            summary.append("refused")
            continue
        try:
            with shmwal.connect(data_dir) as client:
                stats = client.stats()["topics"]
                for topic in TOPICS:
                    end = stats.get(topic, {}).get("next_offset", 0)
                    for way in WAYS:
                        group = f"drill-{way}"
                        client.seek(topic, 0, group=group)
                        got, corrupt, problems = read_through(client, topic, group, way, end, max_bytes=20_000)
                        assert not problems, f"round {round_} ({done}): {problems[:5]}"
                        wrong = [o for o, d in got.items() if o >= len(expected[topic]) or d != expected[topic][o]]
                        assert not wrong, f"round {round_} ({done}): WRONG DATA from {way} at {topic}@{wrong[:5]}"
                    n = client.append(topic, b"after")
                    client.seek(topic, n, group="after")
                    assert client.read_next(topic, group="after").data == b"after"
                summary.append(sum(s.get("damaged", 0) for s in stats.values()))
        finally:
            broker.stop()
        with open(os.path.join(copy, "broker.log")) as f:
            log = f.read()
        assert "Traceback" not in log, f"round {round_} ({done}): the broker logged a traceback:\n{log[-3000:]}"
        shutil.rmtree(data_dir)
    print(f"\n{BROKER_ROUNDS} broker rounds, {BROKER_ROUNDS * (META_FLIPS + BLOCK_FLIPS)} flips, {cuts} truncated "
          f"block files; damage counted per round: {summary}")
