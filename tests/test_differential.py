"""The compiled path (hot.c) and the pure-Python path give identical results.

A hypothesis state machine sends the same random operations to two worker
processes, one with hot.c and one with SHMWAL_PURE_PYTHON=1, each on a broker of
its own, and requires identical answers: append, batch_append of 0..N entries
(empty ones included, now and then one larger than a block), reserve (zero-copy writes
through slot.buffer or slot.fill: published, discarded by an exception, with an append,
batch_append or reserve of the same topic inside that must fail, of 0 bytes and of more
than a block), read_next,
batch_read and batch_read_payloads with budgets of 0, 1 and more, peeks
(checkpoint=False), zero-copy reads, seek and position, on two topics and two
groups.  A "keeper" group that never reads holds every block, so reclamation
(which runs on the brokers' clocks) cannot make the two sides differ.
"""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule

HERE = os.path.dirname(os.path.abspath(__file__))
_LEN = struct.Struct("<I")
BLOCK = 64 * 1024            # conftest's start_broker default
TOPICS = st.sampled_from(["a", "b"])
GROUPS = st.sampled_from(["g1", "g2"])
SIZES = st.one_of(st.integers(0, 3000), st.sampled_from([0, 0, 1, 63, 64, 40_000, BLOCK - 400, BLOCK + 1000]))
BUDGETS = st.one_of(st.sampled_from([0, 1, 2, 100]), st.integers(0, 200_000))


class Worker:
    def __init__(self, data_dir: str, pure: bool):
        env = dict(os.environ)
        env.pop("SHMWAL_PURE_PYTHON", None)
        if pure:
            env["SHMWAL_PURE_PYTHON"] = "1"
        self.process = subprocess.Popen([sys.executable, os.path.join(HERE, "differential_worker.py"), data_dir],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)

    def call(self, op: str, **args):
        data = pickle.dumps((op, args))
        self.process.stdin.write(_LEN.pack(len(data)) + data)
        self.process.stdin.flush()
        head = self.process.stdout.read(_LEN.size)
        assert len(head) == _LEN.size, f"the worker died during {op} {args}"
        return pickle.loads(self.process.stdout.read(_LEN.unpack(head)[0]))

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=30)
        self.process.stdout.close()


class Paths:
    compiled: Worker
    pure: Worker


class SamePaths(RuleBasedStateMachine):
    """Every example goes on with the topics as the examples before left them (both sides
    saw the same operations): making new topics per example would cost more than the rest."""

    @initialize()
    def keep_every_block(self):
        for topic in ("a", "b"):
            self.both("seek", topic=topic, offset=0, group="keeper")

    def both(self, op: str, **args):
        compiled = Paths.compiled.call(op, **args)
        pure = Paths.pure.call(op, **args)
        assert compiled == pure, (op, args)
        return compiled

    @rule(topic=TOPICS, size=SIZES, seed=st.integers(0, 2**32))
    def append(self, topic, size, seed):
        self.both("append", topic=topic, size=size, seed=seed)

    @rule(topic=TOPICS, sizes=st.lists(SIZES, max_size=40), seed=st.integers(0, 2**32))
    def batch_append(self, topic, sizes, seed):
        self.both("batch_append", topic=topic, sizes=sizes, seed=seed)

    @rule(topic=TOPICS, size=SIZES, seed=st.integers(0, 2**32), discard=st.booleans(),
          inner=st.sampled_from([None, None, None, "append", "batch_append", "reserve"]), fill=st.booleans())
    def reserve(self, topic, size, seed, discard, inner, fill):
        self.both("reserve", topic=topic, size=size, seed=seed, discard=discard, inner=inner, fill=fill)

    @rule(topic=TOPICS, group=GROUPS, checkpoint=st.booleans(), zero_copy=st.booleans())
    def read_next(self, topic, group, checkpoint, zero_copy):
        self.both("read_next", topic=topic, group=group, checkpoint=checkpoint, zero_copy=zero_copy)

    @rule(topic=TOPICS, group=GROUPS, max_bytes=BUDGETS, checkpoint=st.booleans(), zero_copy=st.booleans(),
          payloads=st.booleans())
    def batch_read(self, topic, group, max_bytes, checkpoint, zero_copy, payloads):
        self.both("batch_read_payloads" if payloads else "batch_read", topic=topic, group=group,
                  max_bytes=max_bytes, checkpoint=checkpoint, zero_copy=zero_copy)

    @rule(topic=TOPICS, group=GROUPS, offset=st.integers(-3, 400))
    def seek(self, topic, group, offset):
        self.both("seek", topic=topic, group=group, offset=offset)

    @rule(topic=TOPICS, group=GROUPS)
    def position(self, topic, group):
        self.both("position", topic=topic, group=group)

    @rule()
    def state(self):
        self.both("state")


@pytest.mark.timeout(300)
@pytest.mark.skipif(os.environ.get("SHMWAL_PURE_PYTHON", "") not in ("", "0"),
                    reason="runs both paths itself (its workers choose); once a suite run is enough")
def test_compiled_and_pure_python_paths_agree(start_broker, tmp_path):
    from shmwal.client.hot import native
    if native is None:
        pytest.fail("shmwal._hot was not built: nothing to compare the pure-Python path with")
    compiled_broker = start_broker(str(tmp_path / "compiled"))
    pure_broker = start_broker(str(tmp_path / "pure"))
    Paths.compiled = Worker(compiled_broker.data_dir, pure=False)
    Paths.pure = Worker(pure_broker.data_dir, pure=True)
    try:
        assert Paths.compiled.call("path") == ("ok", "compiled")
        assert Paths.pure.call("path") == ("ok", "pure")
        SamePaths.TestCase.settings = settings(max_examples=int(os.environ.get("SHMWAL_DIFF_EXAMPLES", "200")), stateful_step_count=25, deadline=None,
                                               derandomize=True, database=None,
                                               suppress_health_check=list(HealthCheck))
        SamePaths.TestCase().runTest()
        # Each side really ran its own reserve: hot.c's slot, client/reserve.py's Slot.
        assert set(Paths.compiled.call("slot_kinds")[1]) == {"shmwal._hot.Slot"}
        assert set(Paths.pure.call("slot_kinds")[1]) == {"shmwal.client.reserve.Slot"}
    finally:
        Paths.compiled.close()
        Paths.pure.close()
