"""Client.append, read_next and reserve served in C (hot.c, dispatch.h) against the Python methods.

Where the compiled module is built a Client's ``append``, ``read_next`` and ``reserve`` are its
Dispatch's: it serves the calls the compiled paths serve and calls the Python method,
with the same arguments, for everything else.  So every call must come out as the Python
method's: the same entries, offsets, errors and log.  Each test makes the same calls both
ways, on two topics of one broker that hold the same entries, and compares.  (The
Dispatch serves ``batch_read`` too: tests/test_batch_take.py.)
"""

from __future__ import annotations

import gc
import inspect
import math
import multiprocessing
import weakref

import pytest

import shmwal
from shmwal.client.facade import Client
from shmwal.client.hot import native

pytestmark = [pytest.mark.timeout(60),
              pytest.mark.skipif(native is None, reason="shmwal._hot is not built (or SHMWAL_PURE_PYTHON is set)")]


C, P = "via-dispatch", "via-python"   # the topics the calls go to: through the Dispatch, through the method


class Str(str):
    pass


def outcome(call, *args, **kwargs):
    """What a call gave: ("ok", value) or ("raised", type, message); entries with data as bytes."""
    try:
        value = call(*args, **kwargs)
    except Exception as exc:   # noqa: BLE001 - the exception is the result compared
        return ("raised", type(exc), str(exc))
    if isinstance(value, shmwal.Entry):
        return ("ok", (value.offset, bytes(value.data), type(value.data)))
    return ("ok", value)


def both_ways(client, call_name, topic_c, topic_py, *args, **kwargs):
    """The call through the Dispatch on topic_c and through the Python method on topic_py."""
    dispatched = getattr(client, call_name)
    python = getattr(Client, call_name)
    got_c = outcome(dispatched, topic_c, *args, **kwargs)
    got_py = outcome(python, client, topic_py, *args, **kwargs)
    return _same_topic(got_c, topic_c), _same_topic(got_py, topic_py)


def _same_topic(result, topic):
    # An error message may name the topic: compare it with the name taken out.
    if result[0] == "raised" and topic in (C, P):
        return result[:2] + (result[2].replace(topic, "TOPIC"),)
    return result


def test_append_and_read_next_are_the_dispatchs(client):
    assert client.append.__self__ is client._dispatch
    assert client.read_next.__self__ is client._dispatch
    assert client.append("t", b"x") == 0
    assert client.read_next("t").data == b"x"
    appenders, readers = client._dispatch.handles()
    assert set(appenders) == {"t"}
    assert set(readers) == {("t", "default")}


@pytest.mark.parametrize("name", ["append", "read_next", "batch_read", "reserve"])
def test_the_dispatchs_signatures_are_the_methods(client, name):
    """help() and inspect see the same parameters and defaults on the instance as on the class."""
    def shape(signature):
        return [(p.name, p.kind, p.default) for p in signature.parameters.values()]

    method = inspect.signature(getattr(Client, name))
    assert shape(inspect.signature(getattr(client, name))) == shape(method)[1:]   # without self
    assert getattr(client, name).__doc__.split(".")[0] in getattr(Client, name).__doc__.replace(":class:`Entry`", "Entry") \
        .replace("``", "")


def reserved(reserve, topic, nbytes, fill=b""):
    """What ``with reserve(topic, nbytes) as slot: slot.fill((fill,))`` gave: the slot's
    type and offset, or the error (the slot is made, and then entered, only when no error)."""
    try:
        slot = reserve(topic, nbytes)
        with slot:
            slot.fill((fill,))
    except Exception as exc:   # noqa: BLE001 - the exception is the result compared
        return _same_topic(("raised", type(exc), str(exc)), topic)
    return ("ok", type(slot).__name__, slot.offset)


@pytest.mark.parametrize("nbytes", [0, 5, 2 ** 32, -1, 2 ** 64, 3.0, True, "5", None, Str("x")])
def test_reserve_gives_what_the_python_method_gives(client, nbytes):
    """The Dispatch makes hot.c's slot for a topic it serves and an nbytes taken as it is;
    anything else is the Python method's, errors included. Either way the entry lands alike."""
    for topic in (C, P):
        client.append(topic, b"first")   # the appender, served from now on
    fill = b"z" * nbytes if type(nbytes) is int and 0 <= nbytes < 100 else b""
    got_c = reserved(client.reserve, C, nbytes, fill)
    got_py = reserved(lambda topic, n: Client.reserve(client, topic, n), P, nbytes, fill)
    assert got_c == got_py
    assert [bytes(e.data) for e in client.batch_read(C, 1 << 20, group="check")] == \
        [bytes(e.data) for e in client.batch_read(P, 1 << 20, group="check")]


def test_reserve_is_the_dispatchs_for_served_topics_only(client):
    assert client.reserve.__self__ is client._dispatch
    with client.reserve("new", 3) as slot:   # no appender yet: the Python method makes it
        slot.buffer[:] = b"abc"
    assert slot.offset == 0 and set(client._dispatch.handles()[0]) == {"new"}
    with client.reserve("new", 2) as slot:
        slot.fill((b"de",))
    assert type(slot) is native.Slot and slot.offset == 1
    assert [e.data for e in client.batch_read("new", 100)] == [b"abc", b"de"]
    with pytest.raises(shmwal.InvalidTopic):
        client.reserve("bad/name", 1)


def test_a_subclass_that_overrides_reserve_gets_its_own(broker):
    class Counting(Client):
        calls = 0

        def reserve(self, topic, nbytes):
            Counting.calls += 1
            return super().reserve(topic, nbytes)

    with Counting(broker.data_dir, key=broker.key) as client:
        assert "reserve" not in vars(client) and client.append.__self__ is client._dispatch
        with client.reserve("t", 1) as slot:
            slot.fill((b"x",))
        assert Counting.calls == 1 and client.read_next("t").data == b"x"


def test_a_subclass_that_overrides_read_next_gets_its_own(broker):
    class Counting(Client):
        calls = 0

        def read_next(self, topic, **kwargs):
            Counting.calls += 1
            return super().read_next(topic, **kwargs)

    with Counting(broker.data_dir, key=broker.key) as client:
        assert "read_next" not in vars(client) and client._dispatch is None
        client.append("t", b"x")
        assert client.read_next("t").data == b"x"
        assert Counting.calls == 1


APPEND_ARGS = [
    ((b"bytes",), {}),
    ((bytearray(b"bytearray"),), {}),
    ((memoryview(b"0123456789")[2:7],), {}),
    ((memoryview(bytearray(range(20)))[::2],), {}),   # not contiguous: TypeError
    ((b"",), {}),
    (("a str",), {}),
    ((None,), {}),
    ((12,), {}),
    ((), {"data": b"keyword data"}),
    ((b"one", b"two"), {}),
    ((), {}),
    ((b"x",), {"extra": 1}),
]


@pytest.mark.parametrize("args,kwargs", APPEND_ARGS, ids=[str(i) for i in range(len(APPEND_ARGS))])
def test_append_gives_what_the_python_method_gives(client, args, kwargs):
    client.append(C, b"first")
    client.append(P, b"first")
    got_c, got_py = both_ways(client, "append", C, P, *args, **kwargs)
    assert got_c == got_py
    assert client.batch_read(C, 1 << 20, group="check") == [e._replace(topic=C) for e in
                                                            client.batch_read(P, 1 << 20, group="check")]


@pytest.mark.parametrize("topic", ["", "bad/name", ".hidden", "x" * 256, Str("sub"), 7, None, b"t"])
def test_append_to_a_bad_topic_raises_as_the_python_method(client, topic):
    got_c = outcome(client.append, topic, b"x")
    got_py = outcome(Client.append, client, topic, b"x")
    assert got_c == got_py and got_c[:2] == ("raised", shmwal.InvalidTopic)
    assert client.topics() == []


READ_KWARGS = [
    {},
    {"group": "g"},
    {"group": "g", "checkpoint": False},
    {"checkpoint": True, "timeout": 0.0},
    {"timeout": None},
    {"timeout": 0},
    {"timeout": 3},
    {"timeout": 10 ** 400},
    {"timeout": math.inf},
    {"timeout": 0.5},
    {"zero_copy": True},
    {"zero_copy": True, "checkpoint": False, "group": "z"},
    {"timeout": -1},
    {"timeout": -0.5},
    {"timeout": math.nan},
    {"timeout": -math.inf},
    {"timeout": True},
    {"timeout": "1"},
    {"checkpoint": 1},
    {"checkpoint": 0},
    {"checkpoint": None},
    {"zero_copy": 1},
    {"group": ""},
    {"group": "bad/group"},
    {"group": 5},
    {"group": Str("g")},
    {"groupp": "g"},
    {"".join(("gro", "up")): "g", "".join(("time", "out")): 0.0},   # names not interned: matched by value
    {"".join(("gro", "up")): "g", "".join(("time", "out")): -1},
    {"group": "g", "extra": True},
]


@pytest.mark.parametrize("kwargs", READ_KWARGS, ids=[str(i) for i in range(len(READ_KWARGS))])
def test_read_next_gives_what_the_python_method_gives(client, kwargs):
    for topic in (C, P):
        for i in range(4):
            client.append(topic, b"entry %d" % i)
    # Each reader's compiled path is primed (a first read, which sets its block): bad
    # arguments then meet a Dispatch that could serve them.
    for group in ("default", "g", "z"):
        assert client.read_next(C, group=group).offset == 0
        assert Client.read_next(client, P, group=group).offset == 0
    assert client.read_next(C, checkpoint=False).offset == 1
    assert client._dispatch.handles()[1].keys() == {(C, "default"), (C, "g"), (C, "z"), (P, "default"), (P, "g"),
                                                     (P, "z")}
    calls = 4 if kwargs.get("timeout", 0) in (0, 0.0) else 3   # a fourth read would wait
    for _ in range(calls):
        got_c, got_py = both_ways(client, "read_next", C, P, **kwargs)
        assert got_c == got_py
    for group in ("default", "g", "z"):
        assert client.position(C, group=group) == client.position(P, group=group)


def test_read_next_with_positional_extras_raises_as_the_python_method(client):
    client.append(C, b"x")
    client.append(P, b"x")
    got_c, got_py = both_ways(client, "read_next", C, P, "g")
    assert got_c == got_py and got_c[:2] == ("raised", TypeError)
    got_c, got_py = both_ways(client, "read_next", C, P)
    assert got_c == got_py == ("ok", (0, b"x", bytes))


def test_read_next_of_a_topic_or_group_not_there(client):
    assert client.read_next("nothing") is None
    assert Client.read_next(client, "nothing") is None
    client.append(C, b"x")
    assert client.read_next(C, group="new", checkpoint=False).data == b"x"
    assert client.read_next(C, group="new").data == b"x"
    assert client.read_next(C, group="new") is None


def test_many_topics_and_groups_interleaved(client):
    """The Dispatch keeps the last handle by identity and the others in dicts: equal names
    built at run time (other str objects) reach the same handles."""
    topics = [f"topic{i}" for i in range(4)]
    for round_ in range(5):
        for topic in topics:
            assert client.append("".join(topic), b"%s %d" % (topic.encode(), round_)) == round_
    for round_ in range(5):
        for topic in topics:
            for group in ("a", "b"):
                entry = client.read_next("".join(topic), group="".join(group))
                assert (entry.topic, entry.offset, entry.data) == (topic, round_, b"%s %d" % (topic.encode(), round_))
    for topic in topics:
        assert client.read_next(topic, group="a") is None


def test_a_deleted_group_is_forgotten_and_made_again(client, broker):
    for i in range(3):
        client.append("t", b"%d" % i)
    assert client.read_next("t", group="g").offset == 0
    with shmwal.connect(broker.data_dir, key=broker.key) as other:
        assert other.delete_group("t", "g")
    # The Python method finds the group gone, the client forgets the reader and makes the
    # group again from the earliest entry kept (as API.md says of a read that names it).
    assert client.read_next("t", group="g").offset == Client.read_next(client, "t", group="h").offset
    assert ("t", "g") in client._dispatch.handles()[1]


def test_close_and_a_dead_broker_reach_the_python_method(start_broker, data_dir):
    broker = start_broker()
    client = shmwal.connect(broker.data_dir, key=broker.key)
    client.append("t", b"x")
    assert client._dispatch.alive
    broker.stop()
    assert wait_for(lambda: not client._dispatch.alive)
    with pytest.raises(shmwal.BrokerUnavailable):
        client.append("t", b"y")
    with pytest.raises(shmwal.BrokerUnavailable):
        client.read_next("t")
    start_broker()
    assert wait_for(lambda: _reads(client) == b"x")
    assert client._dispatch.alive
    assert client.append("t", b"y") == 1
    client.close()
    assert not client._dispatch.alive
    assert client._dispatch.handles() == ({}, {})
    with pytest.raises(shmwal.ClientClosed):
        client.append("t", b"z")
    with pytest.raises(shmwal.ClientClosed):
        client.read_next("t")


def _reads(client):
    try:
        entry = client.read_next("t", checkpoint=False)
    except shmwal.BrokerUnavailable:
        return None
    return entry.data if entry is not None else None


def wait_for(predicate, timeout=10.0):
    import time
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _forked_child(client, out):
    # Inherited from the parent: not connected until its first call, which reconnects.
    out.send((client._dispatch.alive, client.read_next("t").data, client.append("t", b"child")))


def test_a_forked_child_reconnects_before_it_is_served(client):
    client.append("t", b"x")
    assert client.read_next("t", checkpoint=False).data == b"x"
    ctx = multiprocessing.get_context("fork")
    parent_end, child_end = ctx.Pipe()
    child = ctx.Process(target=_forked_child, args=(client, child_end))
    child.start()
    try:
        assert parent_end.poll(30)
        assert parent_end.recv() == (False, b"x", 1)
    finally:
        child.join(10)
    assert child.exitcode == 0
    assert [e.data for e in client.batch_read("t", 100, group="all")] == [b"x", b"child"]


@pytest.mark.parametrize("closed", [True, False], ids=["closed", "dropped"])
def test_a_client_let_go_of_is_collected_with_its_dispatch(broker, closed):
    def dispatches():
        return sum(type(o) is native.Dispatch for o in gc.get_objects())

    gc.collect()
    before = dispatches()
    client = shmwal.connect(broker.data_dir, key=broker.key)
    client.append("t", b"x")
    client.read_next("t")
    assert dispatches() == before + 1
    ref = weakref.ref(client)
    if closed:
        client.close()
    del client
    gc.collect()
    assert ref() is None
    assert dispatches() == before
