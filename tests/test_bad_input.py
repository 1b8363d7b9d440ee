"""Bad input against a live broker (issue 3, item 6): hypothesis over every argument of the API.

For each generated call: it works as API.md says, or raises the documented
error (TypeError, InvalidTopic, EntryTooLarge, BatchTooLarge, ValueError);
a call that raised changed nothing (the topic's next offset, the group's
position, the visible topics); no file appears outside the data directory;
and the client is still usable afterwards.

One broker per test (the ``client`` fixture); hypothesis runs all of a
test's examples against it, which is what HealthCheck.function_scoped_fixture
is suppressed for.
"""

from __future__ import annotations

import array
import collections
import math
import os
import re
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shmwal

EXAMPLES = 200
PROPS = settings(max_examples=EXAMPLES, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
DOCUMENTED = (TypeError, ValueError)        # InvalidTopic, EntryTooLarge, BatchTooLarge are ValueErrors
NAME_RE = re.compile(r"[A-Za-z0-9._-]{1,255}")
TOOL_FILES = {".hypothesis", ".pytest_cache", "__pycache__"}   # what pytest and hypothesis write in the cwd


def valid_name(x) -> bool:
    return type(x) is str and bool(NAME_RE.fullmatch(x)) and not x.startswith(".")


# ----------------------------------------------------------------------------- what must not change

class World:
    """What a call that raised must leave as it was, and the places no file may appear.

    No file may appear under the data directory's parent (the test's tmp_path,
    also the working directory) except inside the data directory.
    """

    def __init__(self, client, data_dir):
        self.client = client
        self.data_dir = os.path.abspath(data_dir)
        self.parent = os.path.dirname(self.data_dir)
        self.canary = 0

    def outside(self):
        """Paths outside the data directory that a call could create."""
        found = set()
        for dirpath, dirnames, filenames in os.walk(self.parent):
            if dirpath == self.parent:
                dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) != self.data_dir]
            found |= {os.path.join(dirpath, n) for n in dirnames + filenames}
        return {p for p in found if os.path.basename(p) not in TOOL_FILES}

    def state(self, topic=None, group="default"):
        topics = self.client.topics()
        out = {"topics": topics}
        if topic is not None and valid_name(topic):
            out["next"] = self.client.stats()["topics"].get(topic, {}).get("next_offset", 0)
            if valid_name(group):
                out["position"] = self.client.position(topic, group=group)
        return out

    def usable(self):
        """The client still works: an append and a read of the canary topic."""
        offset = self.client.append("canary", b"%d" % self.canary)
        entry = self.client.read_next("canary", group="canary")
        assert entry is not None and entry.offset == offset and entry.data == b"%d" % self.canary
        self.canary += 1


@pytest.fixture
def world(client, data_dir, tmp_path, monkeypatch):
    # The working directory is a private one beside the data directory, so that a file
    # created relative to it (say a default ./shmwal_data) is seen by World.outside().
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")
    w = World(client, data_dir)
    w.usable()
    before = w.outside()
    yield w
    assert w.outside() == before, f"files appeared outside the data directory: {w.outside() ^ before}"


def expect_error(world, call, errors, topic=None, group="default"):
    """``call()`` raises one of ``errors`` and changes nothing."""
    before = world.state(topic, group)
    outside = world.outside()
    with pytest.raises(errors):
        call()
    assert world.state(topic, group) == before, "a call that raised changed the state"
    assert world.outside() == outside
    world.usable()


# ----------------------------------------------------------------------------- strategies

valid_names = st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,40}", fullmatch=True) | \
    st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9._-]{250,254}", fullmatch=True)
invalid_text = st.sampled_from(["", ".", "..", ".hidden", "a/b", "../x", "/tmp/evil", "a\x00b", "é", "a b",
                                "x" * 256, "a\n", "t\\u", "ÿ", "a:b", "~", "a*", "ǅ"]) | \
    st.text(max_size=300).filter(lambda s: not valid_name(s))
non_str = st.one_of(st.none(), st.integers(), st.floats(allow_nan=False), st.binary(max_size=10),
                    st.lists(st.text(max_size=3), max_size=2), st.just(b"topic"), st.just(bytearray(b"t")),
                    st.just(("t",)), st.booleans())
any_name = st.one_of(valid_names, invalid_text, non_str)


def _np_array(draw):
    dtype = draw(st.sampled_from([np.uint8, np.int32, np.float64, np.complex128, np.int16]))
    shape = draw(st.sampled_from([(0,), (1,), (7,), (3, 5), (2, 3, 4), (1, 6), (2, 0)]))
    order = draw(st.sampled_from(["C", "F"]))
    arr = np.asfortranarray(np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)) if order == "F" \
        else np.arange(int(np.prod(shape)), dtype=dtype).reshape(shape)
    if draw(st.booleans()) and arr.ndim == 1 and arr.size > 1:
        arr = arr[::2]                       # a strided view: not C-contiguous
    return arr


@st.composite
def payloads(draw):
    kind = draw(st.sampled_from(["bytes", "bytearray", "memoryview", "strided-view", "numpy", "numpy-scalar",
                                 "array", "big", "str", "int", "none", "list", "dict", "bool", "float"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "bytearray":
        return bytearray(draw(st.binary(max_size=300)))
    if kind == "memoryview":
        return memoryview(draw(st.binary(max_size=300)))
    if kind == "strided-view":
        return memoryview(draw(st.binary(min_size=0, max_size=40)))[::draw(st.sampled_from([2, 3, -1]))]
    if kind == "numpy":
        return _np_array(draw)
    if kind == "numpy-scalar":
        return draw(st.sampled_from([np.float64(1.5), np.int32(7), np.uint8(3)]))
    if kind == "array":
        return array.array(draw(st.sampled_from("bhiqd")), range(draw(st.integers(0, 20))))
    if kind == "big":
        return os.urandom(draw(st.sampled_from([65_536, 100_000, 300_000])))     # larger than a block
    return {"str": "text", "int": 5, "none": None, "list": [1, 2], "dict": {b"a": 1}, "bool": True,
            "float": 1.5}[kind]


def payload_bytes(x):
    """What an append of ``x`` must store, or None if API.md says TypeError."""
    try:
        view = memoryview(x)
    except TypeError:
        return None
    if not view.c_contiguous:
        return None
    return view.tobytes()


# ----------------------------------------------------------------------------- names

@pytest.mark.timeout(120)
@PROPS
@given(topic=any_name, group=any_name)
def test_topic_and_group_names(world, topic, group):
    c = world.client
    if not valid_name(topic):
        for call in (lambda: c.append(topic, b"x"), lambda: c.batch_append(topic, [b"x"]),
                     lambda: c.read_next(topic), lambda: c.batch_read(topic, 10), lambda: c.seek(topic, 0),
                     lambda: c.position(topic), lambda: c.read_next(topic, timeout=0.01)):
            expect_error(world, call, shmwal.InvalidTopic)
        assert issubclass(shmwal.InvalidTopic, ValueError)
        assert topic not in world.client.topics()
        return
    next_offset = world.state(topic)["next"]
    assert c.append(topic, b"payload") == next_offset
    assert topic in c.topics()
    if not valid_name(group):
        for call in (lambda: c.read_next(topic, group=group), lambda: c.batch_read(topic, 10, group=group),
                     lambda: c.seek(topic, 0, group=group), lambda: c.position(topic, group=group),
                     lambda: c.read_next(topic, group=group, checkpoint=False)):
            expect_error(world, call, shmwal.InvalidTopic, topic=topic)
        return
    position = c.position(topic, group=group)
    entry = c.read_next(topic, group=group)
    assert entry is not None and entry.offset == position and entry.topic == topic
    assert c.position(topic, group=group) == position + 1


# ----------------------------------------------------------------------------- payloads

@pytest.mark.timeout(120)
@PROPS
@given(data=payloads())
def test_payload_types_and_sizes(world, data):
    c = world.client
    expected = payload_bytes(data)
    if expected is None:
        expect_error(world, lambda: c.append("payloads", data), TypeError, topic="payloads")
        expect_error(world, lambda: c.batch_append("payloads", [b"ok", data]), TypeError, topic="payloads")
        return
    offset = c.append("payloads", data)
    got = c.batch_append("payloads", [data, b"after"])
    assert got == range(offset + 1, offset + 3)
    c.seek("payloads", offset, group="p")
    entries = [c.read_next("payloads", group="p") for _ in range(3)]
    assert [e.offset for e in entries] == [offset, offset + 1, offset + 2]
    assert [e.data for e in entries] == [expected, expected, b"after"]
    assert all(type(e.data) is bytes for e in entries)


@pytest.mark.timeout(60)
def test_empty_payloads_round_trip(world):
    c = world.client
    first = c.append("empty", b"")
    assert c.batch_append("empty", [b"", bytearray(), memoryview(b""), np.empty(0, np.uint8)]) == \
        range(first + 1, first + 5)
    assert c.append("empty", np.zeros((0, 3))) == first + 5
    c.seek("empty", first, group="e")
    got = c.batch_read("empty", 0, group="e")       # max_bytes 0: entries of 0 bytes still fit? at least one
    assert got and all(e.data == b"" for e in got)
    rest = c.batch_read("empty", 1 << 20, group="e")
    assert [e.data for e in got + rest] == [b""] * 6
    assert [e.offset for e in got + rest] == list(range(first, first + 6))
    c.seek("empty", first, group="e2")
    assert [c.read_next("empty", group="e2").data for _ in range(6)] == [b""] * 6


@pytest.mark.timeout(60)
def test_entries_and_batches_over_the_limits(world):
    from shmwal.blocks import layout as L
    c = world.client
    c.append("limits", b"first")
    over = np.empty(L.MAX_ENTRY + 1, dtype=np.uint8)     # untouched memory: nothing is really allocated
    gib = np.empty(L.MAX_ENTRY, dtype=np.uint8)
    expect_error(world, lambda: c.append("limits", over), shmwal.EntryTooLarge, topic="limits")
    expect_error(world, lambda: c.batch_append("limits", [b"a", over]), (shmwal.EntryTooLarge, shmwal.BatchTooLarge),
                 topic="limits")
    expect_error(world, lambda: c.batch_append("limits", [gib] * (L.MAX_BATCH_BYTES // L.MAX_ENTRY + 1)),
                 shmwal.BatchTooLarge, topic="limits")
    expect_error(world, lambda: c.batch_append("limits", [b""] * (L.MAX_BATCH_ENTRIES + 1)), shmwal.BatchTooLarge,
                 topic="limits")
    n = world.state("limits")["next"]
    assert c.batch_append("limits", [b"z"] * L.MAX_BATCH_ENTRIES) == range(n, n + L.MAX_BATCH_ENTRIES)
    for cls in (shmwal.EntryTooLarge, shmwal.BatchTooLarge, shmwal.InvalidTopic):
        assert issubclass(cls, ValueError) and issubclass(cls, shmwal.ShmwalError)


# ----------------------------------------------------------------------------- batch shapes

@st.composite
def batches(draw):
    kind = draw(st.sampled_from(["list", "tuple", "generator", "deque", "mixed", "empty", "bad-element",
                                 "too-many", "bytes", "str", "int", "none", "dict", "set", "nested", "numpy-2d"]))
    items = draw(st.lists(st.binary(max_size=50), max_size=30))
    if kind == "list":
        return items
    if kind == "tuple":
        return tuple(items)
    if kind == "generator":
        return (x for x in items)
    if kind == "deque":
        return collections.deque(items)
    if kind == "mixed":
        return [draw(st.sampled_from([b"a", bytearray(b"bb"), memoryview(b"ccc"), np.arange(3, dtype=np.uint8),
                                      array.array("b", [1, 2])])) for _ in range(draw(st.integers(1, 10)))]
    if kind == "empty":
        return draw(st.sampled_from([[], (), iter([])]))
    if kind == "bad-element":
        bad = draw(st.sampled_from(["s", 1, None, 2.5, [b"x"], True, memoryview(b"abcd")[::2]]))
        items.insert(draw(st.integers(0, len(items))), bad)
        return items
    if kind == "too-many":
        return [b"x"] * draw(st.integers(2001, 2100))
    if kind == "nested":
        return [items]
    if kind == "numpy-2d":
        return np.zeros((3, 4), dtype=np.uint8)   # iterates as rows: three bytes-like entries
    return {"bytes": b"abc", "str": "abc", "int": 3, "none": None, "dict": {b"k": b"v"},
            "set": {b"a", b"b"}}[kind]


def batch_expectation(items):
    """(expected payloads, or the error classes API.md allows), and the items to pass (re-iterable)."""
    if isinstance(items, (bytes, bytearray, memoryview, str)) or items is None or isinstance(items, int):
        return TypeError, items
    materialised = list(items)
    if len(materialised) > 2000:
        return shmwal.BatchTooLarge, materialised
    out = []
    for x in materialised:
        b = payload_bytes(x)
        if b is None:
            return TypeError, materialised
        out.append(b)
    return out, materialised


@pytest.mark.timeout(120)
@PROPS
@given(items=batches())
def test_batch_shapes(world, items):
    c = world.client
    if isinstance(items, (dict, set)):
        # Any iterable of bytes-like objects is a batch (in its iteration order), or TypeError: both are fine.
        n = world.state("batches")["next"]
        try:
            got = c.batch_append("batches", items)
        except TypeError:
            assert world.state("batches")["next"] == n
            return
        expected = [bytes(x) for x in items]
    else:
        expected, items = batch_expectation(items)
        if isinstance(expected, type):
            passed = iter(items) if isinstance(items, list) and len(items) % 2 else items
            expect_error(world, lambda: c.batch_append("batches", passed), expected, topic="batches")
            return
        n = world.state("batches")["next"]
        got = c.batch_append("batches", iter(items) if len(items) % 2 else items)
    assert got == range(n, n + len(expected))
    assert world.state("batches")["next"] == n + len(expected)
    if expected:
        c.seek("batches", n, group="b")
        assert [e.data for e in c.batch_read("batches", 1 << 30, group="b")][:len(expected)] == expected


# ----------------------------------------------------------------------------- timeouts

timeouts = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-10, 10), st.just(-0.0), st.just(1e308),
    st.just(2**70), st.just(math.inf), st.just(-math.inf), st.just(math.nan), st.booleans(), st.none(),
    st.sampled_from(["1", b"1", [1], 1j, object()]), st.floats(0, 0.03))


def timeout_expectation(t):
    """'ok' for a valid timeout, else the error class API.md implies."""
    if t is None:
        return "ok"
    if isinstance(t, bool):
        return TypeError            # not a number of seconds (a bool would also be acceptable as 0/1: see below)
    if not isinstance(t, (int, float)):
        return TypeError
    if math.isnan(t) or t < 0:
        return ValueError
    return "ok"


@pytest.mark.timeout(120)
@PROPS
@given(t=timeouts, batch=st.booleans())
def test_timeouts(world, t, batch):
    c = world.client
    read = (lambda: c.batch_read("timeouts", 1 << 20, group="t", timeout=t)) if batch else \
        (lambda: c.read_next("timeouts", group="t", timeout=t))
    expected = timeout_expectation(t)
    if expected != "ok":
        if isinstance(t, bool):
            # A bool is an int in Python: reading with it as 0/1 second is no error either.
            try:
                read()
            except TypeError:
                pass
            return
        expect_error(world, read, expected, topic="timeouts", group="t")
        return
    # An entry is waiting: any valid timeout (even None, inf, huge) returns it at once.
    offset = c.append("timeouts", b"t")
    assert c.position("timeouts", group="t") == offset
    t0 = time.monotonic()
    got = read()
    assert time.monotonic() - t0 < 1.0
    got = got if batch else [got]
    assert [e.offset for e in got] == [offset]
    # Nothing waiting: a short timeout returns empty after about that long.
    if t is not None and t <= 0.03:
        t0 = time.monotonic()
        assert read() in (None, [])
        elapsed = time.monotonic() - t0
        assert elapsed < t + 1.0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("t", [-1, -0.001, math.nan, "5", [1], 1j])
def test_connect_rejects_bad_timeouts(data_dir, broker, t):
    with pytest.raises(DOCUMENTED):
        shmwal.connect(data_dir, timeout=t)


# ----------------------------------------------------------------------------- seek

offsets = st.one_of(st.integers(-2**70, 2**70), st.integers(-5, 60), st.just(2**64), st.just(2**64 - 1),
                    st.just(2**63), st.just(-2**63), st.floats(allow_nan=True), st.booleans(), st.none(),
                    st.sampled_from(["3", b"3", [3], 3.0, np.int64(3), np.uint64(2**63), 1j]))


@pytest.mark.timeout(120)
@PROPS
@given(offset=offsets)
def test_seek_offsets(world, offset):
    c = world.client
    if world.state("seek")["next"] == 0:
        c.batch_append("seek", [b"%d" % i for i in range(50)])
        c.read_next("seek", group="s")      # the group exists
    first, end = 0, world.state("seek")["next"]
    if isinstance(offset, (bool, np.integer)):
        try:
            c.seek("seek", offset, group="s")
        except TypeError:
            return
        offset = int(offset)                # accepted as the int it is: then it behaves as one
    elif type(offset) is not int:
        expect_error(world, lambda: c.seek("seek", offset, group="s"), TypeError, topic="seek", group="s")
        return
    else:
        c.seek("seek", offset, group="s")
    position = c.position("seek", group="s")
    assert position == min(max(offset, first), end), (offset, position)
    entry = c.read_next("seek", group="s")
    if position < end:
        assert entry.offset == position and entry.data == b"%d" % position
    else:
        assert entry is None


# ----------------------------------------------------------------------------- max_bytes

sizes = st.one_of(st.integers(-10, 400), st.just(-2**70), st.just(2**70), st.just(2**64), st.floats(allow_nan=True),
                  st.booleans(), st.none(), st.sampled_from(["10", b"10", [10], 10.0, np.int64(10), 1j]))


@pytest.fixture(params=["mmap", "uring"])
def reader_world(request, world, data_dir):
    """``world`` with its client reading through mmap or io_uring (batch_read's two paths)."""
    if request.param == "mmap":
        yield world
        return
    try:
        uring = shmwal.connect(data_dir, io="uring")
    except shmwal.BrokerUnavailable:
        raise
    except shmwal.ShmwalError as exc:
        pytest.skip(f"io_uring is not available here: {exc}")
    plain, world.client = world.client, uring
    yield world
    world.client = plain
    uring.close()


@pytest.mark.timeout(120)
@PROPS
@given(max_bytes=sizes, start=st.integers(0, 2999))
def test_batch_read_max_bytes(reader_world, max_bytes, start):
    world = reader_world
    c = world.client
    lengths = [(i * 7) % 45 for i in range(3000)]
    if world.state("mb")["next"] == 0:
        for k in range(0, 3000, 1000):
            c.batch_append("mb", [bytes([i % 256]) * lengths[i] for i in range(k, k + 1000)])
        c.seek("mb", 0, group="m")
        c.seek("mb", 0, group="keep")      # a group that never reads: no block of "mb" is reclaimed
    c.seek("mb", start, group="m")
    read = lambda: c.batch_read("mb", max_bytes, group="m")   # noqa: E731
    if isinstance(max_bytes, (bool, np.integer)):
        try:
            got = read()
        except TypeError:
            return
        max_bytes = int(max_bytes)
    elif type(max_bytes) is not int:
        expect_error(world, read, TypeError, topic="mb", group="m")
        return
    elif max_bytes < 0:
        expect_error(world, read, ValueError, topic="mb", group="m")
        return
    else:
        got = read()
    # API.md: entries in order from the cursor while their payloads add up to at most max_bytes,
    # the first alone when it is larger; never more than 2,000.
    want, total = [], 0
    for o in range(start, 3000):
        if len(want) == 2000 or (want and total + lengths[o] > max_bytes):
            break
        want.append(o)
        total += lengths[o]
        if total > max_bytes:
            break
    assert [e.offset for e in got] == want
    assert all(e.data == bytes([e.offset % 256]) * lengths[e.offset] for e in got)
    assert c.position("mb", group="m") == start + len(want)


# ----------------------------------------------------------------------------- keys and io modes

KEYS = ["../../evil", "/abs/path", "..", ".", "", "a/b", "é", "x" * 300, "\x00", "_", ".hidden", "ok-key.1"]


@pytest.mark.timeout(120)
def test_keys_never_leave_the_data_directory(start_broker, data_dir, tmp_path):
    os.makedirs(data_dir, mode=0o700)
    before = set(os.listdir(tmp_path))
    roots = set()
    for key in KEYS:
        broker = start_broker(key=key)
        root = os.path.realpath(broker.root)
        assert os.path.dirname(root) == os.path.realpath(data_dir), f"key {key!r} puts its namespace at {root}"
        assert root not in roots, f"key {key!r} shares a namespace with another key"
        roots.add(root)
        with shmwal.connect(data_dir, key=key) as c:
            c.append("t", key.encode("utf-8", "surrogatepass"))
            assert c.read_next("t").data == key.encode("utf-8", "surrogatepass")
        broker.stop()
    assert set(os.listdir(tmp_path)) == before, "a key created something beside the data directory"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("io", ["bogus", None, 5, "MMAP", b"mmap"])
def test_connect_rejects_bad_io_modes(data_dir, broker, io):
    with pytest.raises(DOCUMENTED):
        shmwal.connect(data_dir, io=io)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("key", [5, b"k", ["k"]])
def test_non_str_keys_are_refused(data_dir, key):
    with pytest.raises(DOCUMENTED):
        shmwal.Broker(data_dir, key=key)
    with pytest.raises(DOCUMENTED):
        shmwal.connect(data_dir, key=key, timeout=0.1)
