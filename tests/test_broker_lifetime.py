"""A broker lives as long as the process that started it, whatever thread started it (issue 11, item 5),
and ``Broker.start()`` raises only documented errors, leaving nothing running when it gives up.

Before the fix the broker asked for PR_SET_PDEATHSIG, which follows the *thread* that spawned
it: a broker started from a short-lived thread was SIGTERMed when that thread ended.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import psutil
import pytest

import shmwal
from shmwal.blocks import layout as L
from conftest import LONG_LIVED_PIDS, ipc_leftovers, wait_until


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _use_for_a_while(broker, rounds: int = 40) -> None:
    """Append and read back for a while (~1 s), asserting the broker stays up meanwhile."""
    with shmwal.connect(broker.data_dir) as client:
        for i in range(rounds):
            assert broker._process.poll() is None, f"the broker exited ({broker._process.returncode}) after round {i}"
            assert client.append("t", b"%d" % i) == i
            assert client.read_next("t", group="g").data == b"%d" % i
            time.sleep(0.025)
    assert _alive(broker.pid)


@pytest.mark.timeout(60)
def test_a_broker_started_from_a_short_lived_thread_outlives_the_thread(data_dir):
    broker = shmwal.Broker(data_dir, block_size=64 * 1024, blocks_per_file=4)
    thread = threading.Thread(target=broker.start)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    try:
        assert broker.pid is not None
        time.sleep(0.3)   # PR_SET_PDEATHSIG's SIGTERM landed at the thread's exit: give it time to act
        _use_for_a_while(broker)
    finally:
        broker.stop()
    assert not ipc_leftovers(broker.root)


@pytest.mark.timeout(60)
def test_a_broker_started_in_asyncio_to_thread_outlives_the_loop(data_dir):
    broker = shmwal.Broker(data_dir, block_size=64 * 1024, blocks_per_file=4)

    async def main():
        await asyncio.to_thread(broker.start)

    asyncio.run(main())   # shuts the default executor (and its thread) down on the way out
    try:
        time.sleep(0.3)
        _use_for_a_while(broker)
    finally:
        broker.stop()


OWNER = textwrap.dedent("""
    import sys, threading, shmwal
    broker = shmwal.Broker(sys.argv[1], block_size=65536, blocks_per_file=4)
    t = threading.Thread(target=broker.start)
    t.start(); t.join()
    print(broker.pid, flush=True)
    if sys.argv[2] == "wait":
        sys.stdin.read()        # until the test kills us
    # "exit": leave without stop(): the broker must go with this process
""")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["sigkill", "exit"])
def test_a_broker_dies_with_the_process_that_started_it(data_dir, how):
    owner = subprocess.Popen([sys.executable, "-c", OWNER, data_dir, "wait" if how == "sigkill" else "exit"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        pid = int(owner.stdout.readline())
        if how == "sigkill":
            assert _alive(pid)
            with shmwal.connect(data_dir) as client:   # the broker serves while its owner lives
                assert client.append("t", b"x") == 0
            owner.send_signal(signal.SIGKILL)
        owner.wait(30)
        assert wait_until(lambda: not _alive(pid), 10), f"broker {pid} outlived the process that started it"
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        if 'pid' in locals() and _alive(pid):
            os.kill(pid, signal.SIGKILL)
    # It stopped cleanly (SIGTERM): nothing of it is left, and a new broker starts on its data.
    root = shmwal.Broker(data_dir).root
    assert wait_until(lambda: not ipc_leftovers(root), 5), ipc_leftovers(root)
    assert not os.path.exists(os.path.join(root, "broker.sock"))
    with shmwal.Broker(data_dir, block_size=64 * 1024, blocks_per_file=4):
        with shmwal.connect(data_dir) as client:
            assert client.position("t", group="late") == 0


@pytest.mark.timeout(60)
def test_start_that_times_out_raises_a_documented_error_and_leaves_nothing_running(data_dir):
    broker = shmwal.Broker(data_dir, block_size=64 * 1024, blocks_per_file=4)
    # No Python process starts and recovers within a millisecond.
    with pytest.raises(shmwal.BrokerUnavailable, match="not ready within"):
        broker.start(timeout=0.001)
    assert broker.pid is None
    # The session's NATS cluster (conftest.LONG_LIVED_PIDS) is not ours to count.
    left = [c for c in psutil.Process().children(recursive=True) if c.pid not in LONG_LIVED_PIDS]
    assert not left, f"start() left the process it gave up on running: {left}"
    with broker:   # nothing holds the directory: the next start works
        with shmwal.connect(data_dir) as client:
            assert client.append("t", b"x") == 0


@pytest.mark.timeout(60)
def test_start_on_a_directory_it_cannot_use_raises_shmwal_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    with pytest.raises(shmwal.ShmwalError):
        shmwal.Broker(str(blocker / "data")).start()


@pytest.mark.timeout(60)
def test_an_idle_broker_looks_a_few_times_a_second_and_wakes_for_a_writer(start_broker):
    """Idle, the loop backs off to IDLE_LOOK_EVERY (it used to go round 50 times a second);
    a writer that fills blocks wakes it, and gets its spares, as before."""
    from shmwal.broker import IDLE_LOOK_EVERY
    from shmwal.server.provisioning import SPARE_BLOCKS

    from drill_helpers import MetaView, poll

    broker = start_broker(block_size=1 << 20, blocks_per_file=16)
    with shmwal.connect(broker.data_dir) as client:
        for i in range(10):
            client.append(f"t{i}", b"x")
        process = psutil.Process(broker.pid)
        time.sleep(3 * IDLE_LOOK_EVERY)                   # backed off by now
        before = process.num_ctx_switches().voluntary
        time.sleep(3.0)
        woke = process.num_ctx_switches().voluntary - before
        # ~3 looks a second and a reclamation pass; 150 at one look per 20 ms. A loaded
        # machine only makes it fewer (a sleeping broker is not woken more by load).
        assert woke < 40, woke
        for _ in range(4):                                # fills the small block and three full ones
            client.batch_append("busy", [bytes(10_000)] * 100)
        view = MetaView(os.path.join(broker.root, "topics", "busy", "meta"))
        tail = view.word(L.H_TAIL_CHAIN)
        assert poll(lambda: view.word(L.H_ALLOCATED_BLOCKS) == tail + 1 + SPARE_BLOCKS, 10), \
            (tail, view.word(L.H_ALLOCATED_BLOCKS))
