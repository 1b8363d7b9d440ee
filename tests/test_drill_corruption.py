"""Drill: corrupt and truncated files (issue 3, item 5) and a fuzzed entry decoder (item 6).

Two topics are written (single appends and batches, several blocks each,
sharing block files), the broker is stopped cleanly, the files are damaged at
positions computed from ``shmwal.blocks.layout`` -- a payload byte, a record
header, a table entry, a truncated or zero-filled or extended block file, meta
header words -- and a broker is started again.  Then, for both topics:

* the broker starts, and every call keeps working;
* no read ever returns bytes other than what was appended at that offset;
* a damaged entry raises ``CorruptEntry`` with its topic and offset, the
  cursor stays on it, ``seek(offset + 1)`` steps over it, and reading never
  stalls before the end (``read_next`` returning None below next_offset);
* every intact entry -- one whose record and block header bytes were not
  touched -- still reads back exactly; the end of the topic moves back only
  over damaged entries (a torn tail), never over intact ones;
* appends work afterwards and read back;
* damage in the tail block (which the broker walks at start) is counted in
  ``stats()`` / ``shmwal stat``, and ``shmwal verify`` names damaged offsets.
"""

from __future__ import annotations

import json
import os
import random
import struct
import subprocess
import sys
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shmwal
from shmwal.blocks import codec
from shmwal.blocks import layout as L
from drill_helpers import (EntryLoc, broker_log, flip_byte, locate_entries, make_payload, meta_path,
                           read_word, write_word, zero_range)

TOPICS = ("a", "b")
BLOCK = 64 * 1024

# Field offsets inside a record header, from its struct format (count, batch_left, first_offset, data_bytes, check).
_ORDER, _CODES = L.RECORD_HEADER.format[0], L.RECORD_HEADER.format[1:]
HEADER_FIELD = {name: struct.calcsize(_ORDER + _CODES[:i]) for i, name in
                enumerate(["count", "batch_left", "first_offset", "data_bytes", "check"])}
assert HEADER_FIELD == {"count": 0, "batch_left": 4, "first_offset": 8, "data_bytes": 16, "check": 24}


# ----------------------------------------------------------------------------- the data set

@dataclass
class DataSet:
    root: str
    expected: dict            # topic -> list of payloads (index = offset)
    singles: dict             # topic -> set of offsets written by append() (a batch of their own)
    locs: dict = field(default_factory=dict)   # topic -> list[EntryLoc]


def write_data(client, root) -> DataSet:
    rng = random.Random(42)
    expected = {t: [] for t in TOPICS}
    singles = {t: set() for t in TOPICS}
    for round_ in range(120):
        for w, topic in enumerate(TOPICS):
            if rng.random() < 0.5:
                p = make_payload(w, 0, round_, 0, 1, rng.randint(200, 2500), rng)
                assert client.append(topic, p) == len(expected[topic])
                singles[topic].add(len(expected[topic]))
                expected[topic].append(p)
            else:
                n = rng.randint(2, 6)
                ps = [make_payload(w, 0, round_, i, n, rng.randint(100, 1200), rng) for i in range(n)]
                assert client.batch_append(topic, ps) == range(len(expected[topic]), len(expected[topic]) + n)
                expected[topic].extend(ps)
    # End with small singles and batches, so that the tail block holds several
    # records of both kinds whatever the record alignment (layout.ALIGN) is.
    for round_ in range(120, 140):
        for w, topic in enumerate(TOPICS):
            if round_ % 2 == 0:
                p = make_payload(w, 0, round_, 0, 1, rng.randint(50, 200), rng)
                assert client.append(topic, p) == len(expected[topic])
                singles[topic].add(len(expected[topic]))
                expected[topic].append(p)
            else:
                ps = [make_payload(w, 0, round_, i, 3, rng.randint(50, 200), rng) for i in range(3)]
                assert client.batch_append(topic, ps) == range(len(expected[topic]), len(expected[topic]) + 3)
                expected[topic].extend(ps)
    # Single appends until the tail block of "a" holds several records, singles among them
    # (the tail-block scenarios damage one record with records before and after it).
    seq = 0
    while not _tail_is_rich(root, singles["a"]):
        assert seq < 10_000
        for _ in range(8):
            p = make_payload(0, 1, seq, 0, 1, rng.randint(100, 400), rng)
            assert client.append("a", p) == len(expected["a"])
            singles["a"].add(len(expected["a"]))
            expected["a"].append(p)
            seq += 1
    data = DataSet(root, expected, singles)
    return data


def _tail_is_rich(root, singles) -> bool:
    locs = locate_entries(root, "a")
    last = max(e.chain_index for e in locs)
    tail = [e for e in locs if e.chain_index == last]
    return len({e.record_pos for e in tail}) >= 12 and sum(e.offset in singles for e in tail) >= 6


def locate(data: DataSet) -> None:
    for t in TOPICS:
        data.locs[t] = locate_entries(data.root, t)
        assert [e.offset for e in data.locs[t]] == list(range(len(data.expected[t])))
        chain = {e.chain_index for e in data.locs[t]}
        assert len(chain) >= 4, f"topic {t} spans only {len(chain)} blocks: the drill needs middle blocks"


def blocks_of(locs):
    out = {}
    for e in locs:
        out.setdefault(e.chain_index, []).append(e)
    return out


def records_of(entries):
    out = {}
    for e in entries:
        out.setdefault(e.record_pos, []).append(e)
    return [out[k] for k in sorted(out)]


# ----------------------------------------------------------------------------- damage

@dataclass
class Damage:
    ranges: list = field(default_factory=list)     # (path, start, end): bytes of block files changed
    cut_ok: dict = field(default_factory=dict)     # topic -> offsets that may vanish from the end (a torn tail)
    must_report: set = field(default_factory=set)  # topics whose damage the broker must count at start
    lost_topics: set = field(default_factory=set)  # topics whose meta file was damaged (intact blocks kept)
    verify_offsets: dict = field(default_factory=dict)  # topic -> offsets of which `verify` must name one each
    note: str = ""

    def touched(self, e: EntryLoc) -> bool:
        spans = [(e.record_pos, e.record_end), (e.block_start, e.block_start + L.BLOCK_HEADER_SIZE)]
        return any(path == e.path and start < b and a < end
                   for path, start, end in self.ranges for a, b in spans)


def _pick(rng, items, what):
    assert items, f"the data set has no {what}"
    return rng.choice(items)


def middle_blocks(locs):
    chain = sorted(blocks_of(locs))
    return [blocks_of(locs)[k] for k in chain[1:-1]]


def tail_block(locs):
    by = blocks_of(locs)
    return by[max(by)]


def damage_payload(data, where, batch):
    rng = random.Random(1)
    locs = data.locs["a"]
    pool = [b for b in middle_blocks(locs)] if where == "middle" else [tail_block(locs)]
    cands = [e for block in pool for e in block
             if (e.record_count > 1) == batch and e.length > 0 and e.record_end != block[-1].record_end]
    e = _pick(rng, cands, "entry to damage")
    pos = e.payload_pos + e.length // 2
    flip_byte(e.path, pos, 0x20)
    return Damage([(e.path, pos, pos + 1)], must_report={"a"} if where == "tail" else set(),
                  verify_offsets={"a": {e.offset}}, note=f"payload of a@{e.offset}")


def damage_header(data, where, field_name):
    rng = random.Random(2)
    locs = data.locs["a"]
    pool = middle_blocks(locs) if where == "middle" else [tail_block(locs)]
    # A record with records after it in its block, so "intact entries after a damaged header" is tested.
    cands = [rec for block in pool for rec in records_of(block)[1:-2]]
    rec = _pick(rng, cands, "record to damage")
    head = rec[0]
    if field_name == "table":
        pos = head.table_pos + 3          # a length byte of the first table entry
    else:
        pos = head.record_pos + HEADER_FIELD[field_name] + 1
    flip_byte(head.path, pos, 0x01)
    return Damage([(head.path, pos, pos + 1)], must_report={"a"} if where == "tail" else set(),
                  verify_offsets={"a": {e.offset for e in rec}},
                  note=f"{field_name} of the record of a@{head.offset}..{rec[-1].offset}")


def _tail_cut_record(data):
    """A record of a single append in the tail block of "a", with records before it in that block."""
    block = tail_block(data.locs["a"])
    recs = records_of(block)
    cands = [rec for rec in recs[1:] if rec[0].offset in data.singles["a"]]
    return _pick(random.Random(3), cands, "single-append record in the tail block"), block


def _cut_from(data, topic, offset):
    return {topic: set(range(offset, len(data.expected[topic])))}


def damage_truncate_tail(data):
    rec, block = _tail_cut_record(data)
    head = rec[0]
    cut = head.record_pos + L.RECORD_HEADER_SIZE // 2
    size = os.path.getsize(head.path)
    os.truncate(head.path, cut)
    cut_ok = _cut_from(data, "a", head.offset)
    must_report = {"a"}
    # Another topic's tail block may lie in the same file past the cut: its tail is torn too.
    for topic in TOPICS:
        lost = [e.offset for e in tail_block(data.locs[topic]) if e.path == head.path and e.record_end > cut]
        if topic != "a" and lost:
            cut_ok[topic] = set(range(min(lost), len(data.expected[topic])))
            must_report.add(topic)
    return Damage([(head.path, cut, size)], cut_ok=cut_ok, must_report=must_report,
                  verify_offsets={}, note=f"tail file cut inside the record of a@{head.offset}")


def damage_zero_tail(data):
    rec, block = _tail_cut_record(data)
    head = rec[0]
    end = block[-1].record_end
    zero_range(head.path, head.record_pos, end)
    return Damage([(head.path, head.record_pos, end)], cut_ok=_cut_from(data, "a", head.offset),
                  must_report={"a"}, note=f"tail zeroed from a@{head.offset}")


def _middle_file(data):
    """A block file holding no tail block of either topic."""
    tails = {tail_block(data.locs[t])[0].path for t in TOPICS}
    paths = sorted({e.path for t in TOPICS for e in data.locs[t]} - tails)
    assert paths, "every block file holds a tail block"
    return paths[0]


def damage_truncate_middle(data, keep):
    path = _middle_file(data)
    size = os.path.getsize(path)
    cut = 0 if keep == 0 else (size // 2 + 100) // 8 * 8
    os.truncate(path, cut)
    hit = {t: {e.offset for e in data.locs[t] if e.path == path and e.record_end > cut} for t in TOPICS}
    return Damage([(path, cut, size)], verify_offsets={t: o for t, o in hit.items() if o},
                  note=f"{os.path.basename(path)} truncated to {cut}")


def damage_delete_middle(data):
    path = _middle_file(data)
    size = os.path.getsize(path)
    os.unlink(path)
    hit = {t: {e.offset for e in data.locs[t] if e.path == path} for t in TOPICS}
    return Damage([(path, 0, size)], verify_offsets={t: o for t, o in hit.items() if o},
                  note=f"{os.path.basename(path)} deleted")


def damage_garbage_appended(data):
    rng = random.Random(4)
    paths = {tail_block(data.locs["a"])[0].path, _middle_file(data)}
    for path in paths:
        with open(path, "ab") as f:
            f.write(rng.randbytes(10_000))
    return Damage(note="garbage appended to block files")


def damage_garbage_block_file(data):
    blocks_dir = os.path.join(data.root, "blocks")
    ids = [L.parse_block_file_name(n) for n in os.listdir(blocks_dir)]
    path = os.path.join(blocks_dir, L.block_file_name(max(i for i in ids if i is not None) + 5))
    with open(path, "wb") as f:
        f.write(random.Random(5).randbytes(3 * BLOCK))
    return Damage(note="a garbage block file nobody refers to")


def damage_meta_appended(data):
    with open(meta_path(data.root, "a"), "ab") as f:
        f.write(random.Random(6).randbytes(4096))
    return Damage(lost_topics={"a"}, note="garbage appended to a's meta file")


def damage_meta_word(data, name, value):
    path = meta_path(data.root, "a")
    at = getattr(L, name)
    if value == "flip":
        flip_byte(path, at, 0x5A)
    elif value == "garbage":
        with open(path, "r+b") as f:
            f.seek(at)
            f.write(random.Random(7).randbytes(L.MUTEX_BYTES))
    else:
        old = read_word(path, at)
        write_word(path, at, value(old))
    return Damage(lost_topics={"a"}, note=f"meta word {name} of a set to {value if isinstance(value, str) else value(0)}")


HUGE = 1 << 40
SCENARIOS = {
    "payload-middle-single": lambda d: damage_payload(d, "middle", batch=False),
    "payload-middle-batch": lambda d: damage_payload(d, "middle", batch=True),
    "payload-tail": lambda d: damage_payload(d, "tail", batch=False),
    "header-middle-count": lambda d: damage_header(d, "middle", "count"),
    "header-middle-data_bytes": lambda d: damage_header(d, "middle", "data_bytes"),
    "header-middle-first_offset": lambda d: damage_header(d, "middle", "first_offset"),
    "table-middle": lambda d: damage_header(d, "middle", "table"),
    "header-tail-check": lambda d: damage_header(d, "tail", "check"),
    "truncate-tail-file": damage_truncate_tail,
    "zero-fill-tail": damage_zero_tail,
    "truncate-middle-file-to-0": lambda d: damage_truncate_middle(d, 0),
    "truncate-middle-file-half": lambda d: damage_truncate_middle(d, 1),
    "delete-middle-file": damage_delete_middle,
    "garbage-appended-to-block-files": damage_garbage_appended,
    "garbage-block-file": damage_garbage_block_file,
    "garbage-appended-to-meta": damage_meta_appended,
    "meta-magic": lambda d: damage_meta_word(d, "H_MAGIC", "flip"),
    "meta-version": lambda d: damage_meta_word(d, "H_VERSION", lambda old: 0xDEAD),
    "meta-next_offset-huge": lambda d: damage_meta_word(d, "H_NEXT_OFFSET", lambda old: old + 1000),
    "meta-published_blocks-huge": lambda d: damage_meta_word(d, "H_PUBLISHED_BLOCKS", lambda old: HUGE),
    "meta-allocated_blocks-huge": lambda d: damage_meta_word(d, "H_ALLOCATED_BLOCKS", lambda old: HUGE),
    "meta-first_block-huge": lambda d: damage_meta_word(d, "H_FIRST_BLOCK", lambda old: HUGE),
    "meta-tail-words": lambda d: [damage_meta_word(d, n, lambda old: HUGE + 3)
                                  for n in ("H_TAIL_POS", "H_TAIL_CHAIN", "H_TAIL_OFFSET")][-1],
    "meta-topic_id-huge": lambda d: damage_meta_word(d, "H_TOPIC_ID", lambda old: HUGE),
    "meta-writer-mutex-garbage": lambda d: damage_meta_word(d, "H_WRITER_MUTEX", "garbage"),
}
# The broker must say in its log that it found damage to topic "a" at start.
MUST_LOG = {"payload-tail", "header-tail-check", "truncate-tail-file", "zero-fill-tail", "garbage-appended-to-meta",
            "meta-magic", "meta-next_offset-huge", "meta-published_blocks-huge", "meta-allocated_blocks-huge",
            "meta-first_block-huge", "meta-writer-mutex-garbage"}
# Damage to these meta words is repairable from the meta file and the blocks: the topic must read back whole.
WHOLE_AFTER = {"meta-version", "meta-next_offset-huge", "meta-tail-words", "meta-topic_id-huge",
               "meta-allocated_blocks-huge", "meta-writer-mutex-garbage", "garbage-appended-to-meta"}


# ----------------------------------------------------------------------------- reading it all back

def read_everything(client, topic, group):
    """Read ``topic`` from its start with read_next, stepping over CorruptEntry with seek.

    Returns (offset -> data, corrupt offsets, problems).
    """
    got, corrupt, problems = {}, [], []
    undocumented = {}          # "ExcType: text" -> offsets where a read raised it
    client.seek(topic, 0, group=group)
    end = client.stats()["topics"].get(topic, {}).get("next_offset", 0)
    for _ in range(100_000):
        pos = client.position(topic, group=group)
        try:
            entry = client.read_next(topic, group=group)
        except shmwal.CorruptEntry as exc:
            if (exc.topic, exc.offset) != (topic, pos):
                problems.append(f"CorruptEntry names {exc.topic}@{exc.offset}, the cursor is at {topic}@{pos}")
            if client.position(topic, group=group) != pos:
                problems.append(f"the cursor moved off the corrupt entry {topic}@{pos}")
            try:
                client.read_next(topic, group=group, checkpoint=False)
                problems.append(f"a peek at the corrupt entry {topic}@{pos} returned data")
            except shmwal.CorruptEntry:
                pass
            corrupt.append(pos)
            client.seek(topic, pos + 1, group=group)
            if client.position(topic, group=group) != pos + 1:
                problems.append(f"seek({pos + 1}) left the cursor at {client.position(topic, group=group)}")
                break
            continue
        except shmwal.ShmwalError:
            raise
        except Exception as exc:   # anything undocumented is a finding of its own
            undocumented.setdefault(f"{type(exc).__name__}: {exc}", []).append(pos)
            client.seek(topic, pos + 1, group=group)
            continue
        if entry is None:
            if pos < end:
                problems.append(f"reading stalls at {topic}@{pos} below next_offset {end} (read_next -> None)")
            break
        if entry.offset != pos:
            problems.append(f"read_next at position {pos} returned offset {entry.offset}")
        got[entry.offset] = entry.data
    for text, where in undocumented.items():
        problems.append(f"reads at {len(where)} offsets of {topic} ({where[:3]}...) raised {text}")
    return got, corrupt, problems


def check_topic(client, data: DataSet, damage: Damage, topic: str) -> tuple[list, dict]:
    expected = data.expected[topic]
    problems = []
    stats = client.stats()["topics"].get(topic)
    next_offset = stats["next_offset"] if stats else 0
    got, corrupt, read_problems = read_everything(client, topic, group=f"check-{topic}")
    problems += read_problems
    wrong = [o for o, d in got.items() if o >= len(expected) or d != expected[o]]
    if wrong:
        problems.append(f"WRONG DATA returned at {topic}@{wrong[:5]}")
    if topic in damage.lost_topics:
        intact = set()        # its meta file was damaged: see the checks of the caller
    else:
        intact = {e.offset for e in data.locs[topic] if not damage.touched(e)}
    vanished = set(range(next_offset, len(expected)))
    bad_cut = sorted((vanished - damage.cut_ok.get(topic, set())) & (intact | set(range(len(expected)))))
    if topic not in damage.lost_topics and bad_cut:
        problems.append(f"{topic}: next_offset went back from {len(expected)} to {next_offset}, over "
                        f"{len(bad_cut)} entries that were not a torn tail (e.g. {bad_cut[:5]})")
    if next_offset > len(expected):
        problems.append(f"{topic}: next_offset grew from {len(expected)} to {next_offset} without appends")
    unread = sorted((intact - vanished) - set(got))
    if unread:
        problems.append(f"{topic}: {len(unread)} intact entries unreadable, e.g. {unread[:8]}"
                        f" (corrupt raised at {corrupt[:8]})")
    info = {"read": len(got), "corrupt": len(corrupt), "next_offset": next_offset, "stats": stats}
    return problems, info


def check_appends_work(client, topic):
    rng = random.Random(11)
    n = client.stats()["topics"].get(topic, {}).get("next_offset", 0)
    ps = [make_payload(7, 7, 0, i, 3, 300, rng) for i in range(3)]
    assert client.append(topic, ps[0]) == n
    assert client.batch_append(topic, ps[1:]) == range(n + 1, n + 3)
    client.seek(topic, n, group="after")
    assert [e.data for e in client.batch_read(topic, 1 << 20, group="after")] == ps


# ----------------------------------------------------------------------------- the drill

@pytest.fixture
def damaged_namespace(start_broker, data_dir):
    """start_broker, write the data set, stop cleanly; the test damages and restarts."""
    broker = start_broker()
    with shmwal.connect(data_dir) as client:
        data = write_data(client, broker.root)
    broker.stop()
    locate(data)
    return data


@pytest.mark.timeout(60)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_broker_starts_on_damaged_files_and_never_returns_wrong_data(damaged_namespace, start_broker, data_dir,
                                                                     scenario):
    data = damaged_namespace
    damage = SCENARIOS[scenario](data)
    blocks_before = {t: {e.path for e in data.locs[t]} for t in TOPICS}
    broker = start_broker()      # must start despite the damage
    problems, infos = [], {}
    with shmwal.connect(data_dir) as client:
        for topic in TOPICS:
            p, infos[topic] = check_topic(client, data, damage, topic)
            problems += p
        for topic in damage.must_report:
            if not (infos[topic]["stats"] or {}).get("damaged"):
                problems.append(f"{topic}: damage in the tail block not counted by stats(): {infos[topic]['stats']}")
        for topic in damage.lost_topics:
            # Its blocks were intact: they must not have been deleted at start.
            gone = sorted(p for p in blocks_before[topic] if not os.path.exists(p) and
                          not any(r[0] == p for r in damage.ranges))
            if gone:
                problems.append(f"{topic}: the broker deleted the intact block files {gone} of a topic whose "
                                f"meta file was damaged")
            if scenario in WHOLE_AFTER and infos[topic]["read"] != len(data.expected[topic]):
                problems.append(f"{topic}: only {infos[topic]['read']} of {len(data.expected[topic])} entries "
                                f"read back after {damage.note}")
        if not problems:
            for topic in TOPICS:
                check_appends_work(client, topic)
    broker.stop()
    log = broker_log(broker.root)
    if scenario in MUST_LOG and "a" not in " ".join(
            line for line in log.splitlines() if "WARNING" in line or "ERROR" in line):
        problems.append("the broker log reports no damage for topic a")
    print(f"\n{scenario}: {damage.note}; " + "; ".join(
        f"{t}: read {i['read']}, corrupt {i['corrupt']}, next {i['next_offset']}" for t, i in infos.items()))
    assert not problems, f"{scenario} ({damage.note}):\n  " + "\n  ".join(problems)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("io", ["mmap", "uring"])
def test_corrupt_payload_while_the_broker_runs(broker, data_dir, io):
    """A payload damaged under a running broker: CorruptEntry, batch_read stops before it, seek steps over."""
    try:
        client = shmwal.connect(data_dir, io=io)
    except shmwal.BrokerUnavailable:
        raise
    except shmwal.ShmwalError as exc:
        pytest.skip(f"io={io!r} is not available here: {exc}")
    with client:
        _corrupt_payload_live(client, broker)


def _corrupt_payload_live(client, broker):
    rng = random.Random(12)
    ps = [make_payload(1, 0, i, 0, 1, 500, rng) for i in range(20)]
    for p in ps:
        client.append("live", p)
    bad = 7
    e = next(x for x in locate_entries(broker.root, "live") if x.offset == bad)
    flip_byte(e.path, e.payload_pos + 100, 0x01)        # the mapping is shared: readers see it at once
    client.seek("live", 0, group="payloads")
    assert client.batch_read_payloads("live", 1 << 20, group="payloads") == (0, ps[:bad])
    got = client.batch_read("live", 1 << 20)
    assert [x.data for x in got] == ps[:bad], "batch_read must stop before the corrupt entry"
    for call in (lambda: client.read_next("live"), lambda: client.batch_read("live", 1 << 20),
                 lambda: client.read_next("live", checkpoint=False), lambda: client.read_next("live", timeout=0.5),
                 lambda: client.batch_read_payloads("live", 1 << 20)):
        with pytest.raises(shmwal.CorruptEntry) as info:
            call()
        assert (info.value.topic, info.value.offset) == ("live", bad)
        assert client.position("live") == bad
    client.seek("live", bad + 1)
    assert [x.data for x in client.batch_read("live", 1 << 20)] == ps[bad + 1:]
    # Another group meets the same entry the same way.
    client.seek("live", 0, group="other")
    assert [x.data for x in client.batch_read("live", 1 << 20, group="other")] == ps[:bad]
    with pytest.raises(shmwal.CorruptEntry):
        client.read_next("live", group="other")


# ----------------------------------------------------------------------------- shmwal verify / stat

def _cli(*args):
    code = "import sys; from shmwal.cli import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=60)


def _need_cli(command):
    try:
        import shmwal.cli  # noqa: F401
    except ImportError:
        pytest.skip("shmwal.cli does not exist yet (assumed: `shmwal verify|stat --data-dir D [--key K]`)")
    probe = _cli(command, "--help")
    if probe.returncode != 0:
        pytest.skip(f"`shmwal {command}` does not exist yet: {probe.stderr.strip()[-200:]}")


VERIFY_SCENARIOS = ["payload-middle-single", "payload-middle-batch", "payload-tail", "header-middle-count",
                    "table-middle", "truncate-middle-file-half", "truncate-middle-file-to-0", "delete-middle-file"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("scenario", VERIFY_SCENARIOS)
def test_verify_names_damage_by_topic_and_offset(damaged_namespace, data_dir, scenario):
    """Assumed interface: `shmwal verify --data-dir D` prints `topic@offset: ...` per damage, exits 1 (0 if none)."""
    _need_cli("verify")
    data = damaged_namespace
    clean = _cli("verify", "--data-dir", data_dir)
    assert clean.returncode == 0 and "@" not in clean.stdout, clean.stdout + clean.stderr
    damage = SCENARIOS[scenario](data)
    out = _cli("verify", "--data-dir", data_dir)
    assert out.returncode == 1 and "Traceback" not in out.stderr, \
        f"verify exited {out.returncode} on damaged files:\n{out.stdout}{out.stderr[-2000:]}"
    named = {}
    for line in out.stdout.splitlines():
        head = line.split(":", 1)[0]
        if "@" in head:
            topic, _, offset = head.partition("@")
            if offset.isdigit():
                named.setdefault(topic, set()).add(int(offset))
    for topic, offsets in damage.verify_offsets.items():
        assert named.get(topic, set()) & offsets, \
            f"verify does not name any of {topic}@{sorted(offsets)[:5]} ({damage.note}):\n{out.stdout}"
    untouched = {t: {e.offset for e in data.locs[t] if not damage.touched(e)} for t in TOPICS}
    if scenario.startswith("payload"):
        wrongly = {t: sorted(o & untouched[t]) for t, o in named.items() if o & untouched[t]}
        assert not wrongly, f"verify names intact entries as damaged: {wrongly}"


@pytest.mark.timeout(60)
def test_stat_counts_damage_found_at_start(damaged_namespace, start_broker, data_dir):
    _need_cli("stat")
    damage = SCENARIOS["zero-fill-tail"](damaged_namespace)
    start_broker().stop()        # the broker walks the tail at start and records what it found
    out = _cli("stat", "--data-dir", data_dir, "--json")
    assert out.returncode == 0, out.stderr
    topics = json.loads(out.stdout)["topics"]
    assert topics["a"]["damaged"] >= 1, (damage.note, topics["a"])
    assert not topics["b"]["damaged"], topics["b"]
    text = _cli("stat", "--data-dir", data_dir)
    assert text.returncode == 0 and "damaged" in text.stdout, text.stdout


# ----------------------------------------------------------------------------- the decoder, fuzzed

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _checked_decode(buf, pos, limit):
    """Run the decoder; return the records it accepted. Anything but BadRecord/None is a failure."""
    found = []
    try:
        record = codec.read_record(buf, pos, limit)
    except codec.BadRecord:
        record = None
    if record is not None:
        found.append(record)
    try:
        found.extend(codec.iter_records(buf, pos, limit, None, L.UNSET))
    except codec.BadRecord:
        pass
    out = []
    for record in found:
        assert 0 < record.count <= L.MAX_BATCH_ENTRIES and len(record.lengths) == record.count
        for i in range(record.count):
            data = codec.entry_bytes(buf, record, i)
            if data is not None:
                assert type(data) is bytes and len(data) == record.lengths[i]
                assert codec.xxh(data, L.entry_seed(record.first_offset + i)) == record.sums[i]
        out.append(record)
    return out


@pytest.mark.timeout(120)
@FUZZ
@given(raw=st.binary(max_size=600), pos=st.integers(-8, 640), extra=st.integers(-64, 4096))
def test_decoder_on_arbitrary_bytes_returns_checked_records_or_bad_record(raw, pos, extra):
    for buf in (raw, bytearray(raw), memoryview(raw)):
        _checked_decode(buf, pos, max(0, len(raw) + extra))


@st.composite
def encoded_records(draw):
    count = draw(st.integers(1, 6))
    payloads = [draw(st.binary(max_size=64)) for _ in range(count)]
    first = draw(st.integers(0, 2**40))
    batch_left = draw(st.integers(0, 3))
    size = L.record_size(count, sum(map(len, payloads)))
    lead = draw(st.sampled_from([0, 8, 64]))
    buf = bytearray(lead + size + 16)
    end = codec.encode_record(buf, lead, first, batch_left, payloads, [len(p) for p in payloads])
    assert end == lead + size
    return buf, lead, first, payloads


@pytest.mark.timeout(120)
@FUZZ
@given(case=encoded_records(), flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 7)), max_size=3),
       cut=st.one_of(st.none(), st.integers(0, 10_000)))
def test_decoder_on_damaged_records_never_returns_a_wrong_payload(case, flips, cut):
    buf, lead, first, payloads = case
    limit = len(buf)
    for where, bit in flips:
        buf[where % len(buf)] ^= 1 << bit
    if cut is not None:
        buf = buf[:cut % (len(buf) + 1)]      # a buffer shorter than the limit its caller believes
    for record in _checked_decode(bytes(buf), lead, limit):
        if record.pos != lead:
            continue
        # The header check binds every field: a record that parses is the one that was written.
        assert (record.first_offset, record.count, record.lengths) == (first, len(payloads), list(map(len, payloads)))
        for i, p in enumerate(payloads):
            data = codec.entry_bytes(bytes(buf), record, i)
            assert data is None or data == p


@pytest.mark.timeout(120)
@FUZZ
@given(case=encoded_records())
def test_decoder_reads_intact_records_exactly(case):
    buf, lead, first, payloads = case
    record = codec.read_record(buf, lead, len(buf))
    assert [codec.entry_bytes(buf, record, i) for i in range(record.count)] == payloads
    assert list(codec.iter_records(buf, lead, len(buf), first, first + 1))[0].first_offset == first
