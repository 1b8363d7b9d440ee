"""The compiled hot path (shmwal/_native/hot.c) against the Python one it replaces.

Both write and read the same bytes under the same locks, so: the bytes it
writes equal the codec's, its decoder never returns a wrong payload, and
processes with and without it share one topic (the whole suite also runs
with SHMWAL_PURE_PYTHON=1 in .ci/run for the Python path alone).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import random

import pytest
import xxhash
from hypothesis import given, settings, strategies as st

import shmwal
from shmwal.blocks import codec, layout as L
from shmwal.client.hot import native

pytestmark = pytest.mark.skipif(native is None, reason="shmwal._hot is not built (or SHMWAL_PURE_PYTHON is set)")


# Lengths around every boundary of XXH3's long loop (stripes of 64 bytes, blocks of 1,024,
# the last stripe) and of the copy (STREAM_MIN, hot.c's 8 KiB pieces); parts cut inside
# stripes, at their edges, at the edges of XXH3's blocks (where fused_xxh3.h switches between
# its in-part loop and gathering), empty, one byte long.
KERNEL_LENGTHS = [241, 255, 256, 257, 1023, 1024, 1025, 1087, 1088, 1089, 2047, 2048, 2049,
                  (32 << 10) - 1, 32 << 10, (32 << 10) + 1, (32 << 10) + 63, 8192 * 9 + 7,
                  65536, 65537, 100_000, 1 << 20, (1 << 20) + 13]
KERNEL_CUTS = [[], [1], [63], [64, 64], [0, 5, 0], [1000, 1], [8191, 1, 1, 130], [1024, 2048], [1088, 960]]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("stream", [False, True], ids=["plain", "streaming"])
def test_copy_checksum_is_the_copy_and_xxh3_of_the_parts(copy_kernel, stream):
    """The copy appends, batch items, Slot.fill and reads make of large payloads (fused_xxh3.h,
    or piece by piece) against xxhash: the bytes land whole and the digest is XXH3-64's, for
    every length class, seed (0 included: the default secret) and way of cutting the parts."""
    rng = random.Random(7)
    for n in KERNEL_LENGTHS:
        data = rng.randbytes(n + 3)[3:]   # a source that starts anywhere
        for seed in (0, 1, 2**64 - 1, rng.getrandbits(64)):
            want = xxhash.xxh3_64_intdigest(data, seed)
            for cuts in KERNEL_CUTS:
                parts, at = [], 0
                for cut in cuts:
                    cut = min(cut, n - at)
                    parts.append(memoryview(data)[at:at + cut])
                    at += cut
                parts.append(data[at:])
                copied, digest = native.copy_checksum(parts, seed, stream)
                assert (bytes(copied), digest) == (data, want), (n, seed, cuts)
        assert native.xxh3_64(data, 5) == xxhash.xxh3_64_intdigest(data, 5)   # checksum() alone


@pytest.mark.timeout(60)
def test_the_fused_copy_can_be_turned_off_and_on(copy_kernel):
    assert native.fused(False) is False
    assert native.fused() is False
    on = native.fused(True)
    assert native.fused() is on   # True wherever the CPU has AVX2


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=3000), seed=st.integers(0, 2**64 - 1))
def test_hash_is_xxhash_xxh3_64(data, seed):
    assert native.xxh3_64(data, seed) == xxhash.xxh3_64_intdigest(data, seed)


@pytest.mark.parametrize("length", [240, 241, 256, 1023, 4096, 65536, 65537, (1 << 20) + 3])
def test_long_inputs_hash_alike_whichever_vector_unit_runs(length):
    """Past 240 bytes hot.c hashes through xxHash's cpuid dispatcher (AVX-512/AVX2/SSE2)."""
    data = random.Random(length).randbytes(length)
    for seed in (0, 1, 2**64 - 1, 0x9E3779B97F4A7C15):
        assert native.xxh3_64(data, seed) == xxhash.xxh3_64_intdigest(data, seed)
        assert native.xxh3_64(memoryview(data)[1:], seed) == xxhash.xxh3_64_intdigest(data[1:], seed)


def test_layout_constants_are_layout_py():
    """Every constant of layout.py reached hot.c (through the generated layout.h), unchanged."""
    assert native.LAYOUT == L.c_constants()
    assert {"UNSET", "MAX_BATCH_BYTES", "SEED_GOLDEN", "SEED_SALT", "FUTEX_TID_MASK", "B_PINS"} <= set(native.LAYOUT)


def test_the_generated_header_is_layout_py(tmp_path):
    """The header the build wrote is what layout.py generates now (setup.py rewrites it each build)."""
    header = os.path.join(os.path.dirname(L.__file__), os.pardir, "_native", "layout.h")
    with open(header) as f:
        assert f.read() == L.c_header()


def test_a_build_for_another_layout_is_refused(monkeypatch):
    """client/hot.py refuses a module whose constants differ from layout.py's, or lack one."""
    from shmwal.client import hot
    from shmwal import _hot
    monkeypatch.delenv("SHMWAL_PURE_PYTHON", raising=False)
    for changed in ({**_hot.LAYOUT, "H_NEXT_OFFSET": 8},
                    {k: v for k, v in _hot.LAYOUT.items() if k != "MAX_BATCH_BYTES"}):
        monkeypatch.setattr(_hot, "LAYOUT", changed)
        with pytest.raises(ImportError, match="another layout"):
            hot._load()


def _records_from(buf, start: int, end: int) -> list:
    out, pos = [], start
    while pos < end:
        record = codec.read_record(buf, pos, end)
        out.append(record)
        pos += record.size
    return out


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sizes", [[0], [100] * 7, [1, 0, 5000, 3, 64, 65], [2000] * 40])
def test_batches_are_the_bytes_the_codec_writes(client, sizes):
    """batch_append through encode_run: every record equals codec.encode_record's bytes."""
    items = [bytes((i * 7 + j) % 251 for j in range(n)) for i, n in enumerate(sizes)]
    offsets = client.batch_append("t", items)
    meta = client._topic_handles["t"][0]
    checked = 0
    for block in range(meta.get(L.H_PUBLISHED_BLOCKS)):
        file_id, file_offset, capacity, first = meta.chain(block)
        mapping = client._files.map(file_id)
        start = file_offset + L.BLOCK_HEADER_SIZE
        end = meta.get(L.H_TAIL_POS) if block + 1 == meta.get(L.H_PUBLISHED_BLOCKS) else None
        pos = start
        while end is None or pos < end:
            try:
                record = codec.read_record(mapping, pos, file_offset + capacity)
            except codec.BadRecord:
                break
            if record.first_offset < offsets.start or record.first_offset >= offsets.stop:
                break
            k = record.first_offset - offsets.start
            payloads = items[k:k + record.count]
            expected = bytearray(record.size)
            codec.encode_record(expected, 0, record.first_offset, record.batch_left, payloads,
                                [len(p) for p in payloads])
            assert bytes(mapping[pos:pos + record.size]) == bytes(expected)
            assert record.batch_left == len(items) - k - record.count
            checked += record.count
            pos += record.size
    assert checked == len(items)


def test_batch_items_of_every_buffer_kind(client):
    import array
    import numpy as np
    grid = np.arange(6, dtype=np.int32).reshape(2, 3)
    # memoryviews are read in place by hot.c (no buffer request): slices, wide formats, 2-D.
    items = [b"ab", bytearray(b"cd"), memoryview(b"xxef")[2:], array.array("I", [1, 2]), b"",
             memoryview(bytearray(b"0123456789"))[3:7], memoryview(grid), memoryview(grid)[1:], memoryview(b"z")[::-1]]
    offsets = client.batch_append("t", items)
    got = [e.data for e in client.batch_read("t", 1000)]
    assert got == [b"ab", b"cd", b"ef", array.array("I", [1, 2]).tobytes(), b"", b"3456", grid.tobytes(),
                   grid[1:].tobytes(), b"z"]
    assert list(offsets) == list(range(9))
    assert client.append("t", memoryview(grid)[:1]) == 9
    assert client.read_next("t").data == grid[:1].tobytes()


def test_bad_batch_items_are_typed_errors_and_write_nothing(client):
    import array
    client.append("t", b"before")
    strided = memoryview(array.array("I", range(8)))[::2]
    released = memoryview(b"gone")
    released.release()
    empty_strided = memoryview(b"")[::2]      # memoryview itself calls it not C-contiguous
    for bad in ([b"ok", "text"], [b"ok", 5], [b"ok", strided], [b"ok", released], [b"ok", empty_strided]):
        with pytest.raises(TypeError):
            client.batch_append("t", bad)
    for bad in (strided, released, empty_strided):
        with pytest.raises(TypeError):
            client.append("t", bad)
    assert client.append("t", b"after") == 1
    assert [e.data for e in client.batch_read("t", 1000)] == [b"before", b"after"]


def _encode_block(payload_runs, first: int = 0) -> tuple[bytearray, list, int]:
    buf = bytearray(1 << 15)
    pos, offset, expected = 0, first, []
    for run in payload_runs:
        pos = codec.encode_record(buf, pos, offset, 0, run, [len(p) for p in run])
        expected += [(offset + i, p) for i, p in enumerate(run)]
        offset += len(run)
    return buf, expected, pos


@settings(max_examples=300, deadline=None)
@given(runs=st.lists(st.lists(st.binary(max_size=80), min_size=1, max_size=6), min_size=1, max_size=8),
       flip=st.integers(0, 10**6), bit=st.integers(0, 7), max_entries=st.integers(1, 60),
       max_bytes=st.integers(0, 400), zero_copy=st.booleans())
def test_decode_never_returns_a_wrong_payload(runs, flip, bit, max_entries, max_bytes, zero_copy):
    buf, expected, end = _encode_block(runs)
    clean = bytes(buf)
    buf[flip % end] ^= 1 << bit
    source = memoryview(bytes(buf)) if zero_copy else bytes(buf)
    out: list = []
    status, c, pos, taken = native.decode(source, 0, end, 0, len(expected), 2**64 - 1, max_entries,
                                          max_bytes, False, "t", out, zero_copy, 0)
    assert all(type(e) is shmwal.Entry and e.topic == "t" for e in out)
    assert [(e.offset, bytes(e.data)) for e in out] == expected[:len(out)]
    assert c == len(out) and taken == sum(len(e.data) for e in out)
    assert len(out) <= max_entries
    if len(out) > 1:
        assert taken <= max_bytes
    if status != native.HAND_BACK:
        assert status == native.DONE and (len(out) == max_entries or c == len(expected)
                                          or taken + len(expected[c][1]) > max_bytes)
    if bytes(buf) == clean:
        assert status == native.DONE


@settings(max_examples=100, deadline=None)
@given(runs=st.lists(st.lists(st.binary(min_size=241, max_size=1500), min_size=1, max_size=4), min_size=1, max_size=4),
       flip=st.integers(0, 10**6), bit=st.integers(0, 7), zero_copy=st.booleans())
def test_decode_never_returns_a_wrong_long_payload(runs, flip, bit, zero_copy):
    """Long payloads are hashed after the copy (bytes) or in place (views): neither lets a flip through."""
    buf, expected, end = _encode_block(runs)
    buf[flip % end] ^= 1 << bit
    source = memoryview(bytes(buf)) if zero_copy else bytes(buf)
    out: list = []
    native.decode(source, 0, end, 0, len(expected), 2**64 - 1, 100, 2**40, False, "t", out, zero_copy, 0)
    assert [(e.offset, bytes(e.data)) for e in out] == expected[:len(out)]


def test_decode_stops_at_the_next_block_and_hands_back_foreign_records():
    buf, expected, end = _encode_block([[b"a", b"b"], [b"c"], [b"d", b"e"]], first=10)
    out: list = []
    status, c, pos, _ = native.decode(bytes(buf), 0, end, 10, 100, 13, 100, 10**9, False, "t", out, False, 0)
    assert (status, c) == (native.BLOCK_END, 13)
    assert [e.offset for e in out] == [10, 11, 12]
    assert pos == _records_from(buf, 0, end)[2].pos
    out = []   # the cursor (9) is not in the record at 0: Python walks
    status, c, pos, _ = native.decode(bytes(buf), 0, end, 9, 100, 2**64 - 1, 100, 10**9, False, "t", out, False, 0)
    assert (status, c, pos, out) == (native.HAND_BACK, 9, 0, [])


def test_decode_caps_mid_record_leave_the_hint_on_that_record():
    buf, expected, end = _encode_block([[b"x" * 10] * 5])
    out: list = []
    status, c, pos, taken = native.decode(bytes(buf), 0, end, 1, 5, 2**64 - 1, 100, 25, False, "t", out, False, 0)
    assert (status, c, pos, taken) == (native.DONE, 3, 0, 20)
    out = []
    status, c, pos, taken = native.decode(bytes(buf), 0, end, 0, 5, 2**64 - 1, 100, 0, True, "t", out, False, 0)
    assert (status, c, pos, taken, out) == (native.DONE, 0, 0, 0, [])   # a cap of 0 with entries already taken


# ----------------------------------------------------------------------------- mixed processes

_WORKER = r"""
import json, sys, shmwal
from shmwal.client.hot import native
data_dir, key, role, tag, n = sys.argv[1], sys.argv[2] or None, sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
with shmwal.connect(data_dir, key=key) as c:
    if role == "produce":
        for i in range(n):
            if i % 3 == 2:
                c.batch_append("mixed", [b"%d:%d" % (tag, i), b"%d:%d+" % (tag, i)])
            else:
                c.append("mixed", b"%d:%d" % (tag, i))
        out = None
    else:
        out = []
        while len(out) < n:   # a quarter each: both take part, whichever starts first; the test reads the rest
            if len(out) % 2:
                e = c.read_next("mixed", group="g", timeout=2)
                got = [] if e is None else [e]
            else:
                got = c.batch_read("mixed", 40, group="g", timeout=2)
            if not got:
                break
            out += [[e.offset, e.data.decode()] for e in got]
print(json.dumps({"native": native is not None, "out": out}))
"""


def _spawn(broker, role: str, tag: int, n: int, pure: bool):
    env = dict(os.environ)
    if pure:
        env["SHMWAL_PURE_PYTHON"] = "1"
    else:
        env.pop("SHMWAL_PURE_PYTHON", None)
    return subprocess.Popen([sys.executable, "-c", _WORKER, broker.data_dir, broker.key or "", role, str(tag), str(n)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc) -> dict:
    try:
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    return json.loads(out)


@pytest.mark.timeout(120)
def test_compiled_and_pure_python_processes_share_a_topic(broker):
    """Two producers of each kind append at once; one consumer of each kind splits the group."""
    n = 3000
    per_producer = n + n // 3                     # every third call appends two entries
    total = 4 * per_producer
    procs = []
    try:
        producers = [_spawn(broker, "produce", tag, n, pure=tag % 2 == 1) for tag in range(4)]
        procs += producers
        consumers = [_spawn(broker, "consume", 9, total // 4, pure=pure) for pure in (False, True)]
        procs += consumers
        for p in producers:
            assert _finish(p)["out"] is None
        results = [_finish(c) for c in consumers]
    finally:
        for p in procs:
            p.kill()
            p.wait()
    assert [r["native"] for r in results] == [True, False]
    got = results[0]["out"] + results[1]["out"]
    assert results[0]["out"] and results[1]["out"]
    offsets = [o for o, _ in got]
    assert len(offsets) == len(set(offsets))
    with shmwal.connect(broker.data_dir, key=broker.key) as c:
        rest = c.batch_read("mixed", 10**9, group="g")
        while rest:
            got += [[e.offset, e.data.decode()] for e in rest]
            rest = c.batch_read("mixed", 10**9, group="g")
    assert sorted(o for o, _ in got) == list(range(total))
    for tag in range(4):
        mine = [d for _, d in sorted(got) if d.split(":")[0] == str(tag)]
        assert len(mine) == per_producer
        seqs = [int(d.split(":")[1].rstrip("+")) for d in mine]
        assert seqs == sorted(seqs)   # each producer's entries in its own order


def test_next_object_takes_only_small_plain_pickles_and_agrees_with_read_next(client):
    """hot.c's next_object (shmwal.Queue's get): loads() of the entry read_next would give,
    for a plain pickle under ``below``; for anything else ``miss``, with the cursor left."""
    import pickle
    miss = object()
    entries = [pickle.dumps({"k": 1}, 5), b"B not a pickle", pickle.dumps(list(range(300)), 5),
               b"", pickle.dumps("last", 5), b"\x80 starts like a pickle"]
    client.append("objs", b"first")
    for e in entries:
        client.append("objs", e)
    # The first read goes the general way (a new reader has no hint); it leaves the hint on
    # the next entry, and every read after it does the same.
    assert client.read_next("objs", group="g").data == b"first"
    reader = client._readers["objs", "g"]
    below = 200
    taken = []
    for e in entries:
        at = client.position("objs", group="g")
        try:
            got = reader.hot_next_object(True, pickle.loads, below, miss)
        except ValueError:   # "unsupported pickle protocol: 32": loads' own error comes out
            got = "raised"
        if e[:1] == b"\x80" and len(e) < below:
            # Taken, as read_next then loads would: the cursor moved, even past a bad pickle.
            expected = pickle.loads(e) if e != entries[-1] else "raised"
            assert got == expected and client.position("objs", group="g") == at + 1
        else:
            assert got is miss and client.position("objs", group="g") == at   # nothing read
            entry = client.read_next("objs", group="g")
            assert entry.offset == at and entry.data == e
        taken.append(at)
    assert taken == list(range(1, len(entries) + 1))
    assert reader.hot_next_object(True, pickle.loads, below, miss) is miss   # nothing left
    with pytest.raises(ValueError):
        reader.hot_next_object(True, pickle.loads, 0, miss)


PURE_DIGESTS = """
import sys, zlib, shmwal
with shmwal.connect(sys.argv[1], key=sys.argv[2] or None) as c:
    print(*[f"{e.offset}:{len(e.data)}:{zlib.crc32(e.data)}" for e in c.batch_read("big", 1 << 30, group="pure")])
"""


@pytest.mark.timeout(60)
def test_large_appends_stream_into_the_block_and_the_pure_path_checks_them(start_broker, copy_kernel):
    """Appends and batch items from hot.c's STREAM_MIN (32 KiB) copy with streaming stores and take the checksum on
    the way (copy_hashing): the entries read back the same here, and the pure path, which checks
    each checksum with xxhash, reads the same bytes. Sizes around the threshold and the pieces."""
    import zlib

    broker = start_broker(block_size=8 << 20)
    rng = random.Random(13)
    sizes = [(32 << 10) - 1, 32 << 10, (32 << 10) + 1, 65536, 8192 * 9 + 7, 1 << 20, 3]
    payloads = [rng.randbytes(n) for n in sizes]
    with shmwal.connect(broker.data_dir, key=broker.key) as client:
        client.create_group("big", "pure")
        for payload in payloads:
            client.append("big", memoryview(bytearray(b"?" + payload))[1:])   # an unaligned source
        client.batch_append("big", payloads)   # each item of a batch record the same way
        payloads += payloads
        assert [e.data for e in client.batch_read("big", 1 << 30)] == payloads
        assert client.stats()["topics"]["big"]["damaged"] == 0
    out = subprocess.run([sys.executable, "-c", PURE_DIGESTS, broker.data_dir, broker.key or ""],
                         capture_output=True, text=True, timeout=60, env={**os.environ, "SHMWAL_PURE_PYTHON": "1"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [f"{i}:{len(p)}:{zlib.crc32(p)}" for i, p in enumerate(payloads)]
