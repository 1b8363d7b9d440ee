"""Every program in examples/ runs (as CI runs them), and the Pool example's workers survive
a kill -9 of one of them."""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import subprocess
import sys

import pytest

import shmwal
from conftest import ipc_leftovers, wait_until
from helpers import no_resource_tracker_left  # noqa: F401  (an autouse fixture)

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")
sys.path.insert(0, EXAMPLES)
import pool_shmwal  # noqa: E402


def run_example(name, *args, timeout=240, cwd=None):
    env = {k: v for k, v in os.environ.items() if k != "SHMWAL_DATA_DIR"}
    done = subprocess.run([sys.executable, os.path.join(EXAMPLES, name), *args], capture_output=True,
                          text=True, timeout=timeout, env=env, cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.parametrize("name", ["pool_shmwal.py", "pool_mp.py"])
def test_pool_examples_compute_the_same_sum(name, tmp_path):
    assert run_example(name, cwd=tmp_path).strip() == str(sum(n * n for n in range(100_000)))
    assert os.listdir(tmp_path) == []   # the embedded broker's files were temporary


def test_pool_examples_differ_only_in_the_queue_line():
    def lines(name):
        with open(os.path.join(EXAMPLES, name)) as f:
            return f.read().splitlines()
    mp_lines, shmwal_lines = lines("pool_mp.py"), lines("pool_shmwal.py")
    extra = [line for line in shmwal_lines if line not in mp_lines]
    assert extra[1:] == ["import shmwal", '    tasks, results = shmwal.Queue("tasks"), shmwal.Queue("results")']
    assert len(shmwal_lines) == len(mp_lines) + 1


def test_stress_example_with_killed_consumers(tmp_path):
    out = run_example("stress.py", "--producers", "2", "--consumers", "3", "--items", "400", "--kill", "2",
                      cwd=tmp_path)
    assert "2 consumers killed" in out


def test_pub_sub_pair_with_a_broker_service(tmp_path):
    data_dir = str(tmp_path / "market")
    broker = subprocess.Popen([sys.executable, "-m", "shmwal", "broker", "--data-dir", data_dir],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # connect fails at once where no broker ever ran: wait for the starting one's lock file.
        assert wait_until(lambda: os.path.exists(os.path.join(data_dir, "default", "broker.lock")), 30)
        with shmwal.connect(data_dir, timeout=30):
            pass   # it answers
        subscribers = [subprocess.Popen([sys.executable, os.path.join(EXAMPLES, "subscriber.py"),
                                         "--data-dir", data_dir, "--group", group],
                                        stdout=subprocess.PIPE, text=True) for group in ("audit", "dashboard")]
        assert run_example("publisher.py", "--data-dir", data_dir, "--count", "500").strip() == "published 500 ticks"
        for sub, group in zip(subscribers, ("audit", "dashboard")):
            out, _ = sub.communicate(timeout=60)
            assert sub.returncode == 0 and out.startswith(f"{group}: 500 ticks, low ")
    finally:
        broker.send_signal(signal.SIGTERM)
        assert broker.wait(30) == 0
    assert wait_until(lambda: not ipc_leftovers(os.path.join(data_dir, "default")), 5)


def test_pool_example_workers_survive_kill_9_of_one(broker):
    """The queue keeps working and every item the killed worker had not taken is processed;
    the one it held (if any) is not delivered again (StrictlyAtOnce; AtLeastOnce alike, since
    its cursor move is already in the shared meta file)."""
    tasks = shmwal.Queue("tasks", data_dir=broker.data_dir)
    results = shmwal.Queue("results", data_dir=broker.data_dir)
    count = 20_000
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4, pool_shmwal.init, (tasks, results)) as pool:
        pool.map_async(pool_shmwal.work, range(4), chunksize=1)
        for n in range(count // 2):
            tasks.put(n)
        got = [results.get(timeout=60) for _ in range(1000)]
        victim = pool._pool[0].pid   # one of the four, busy
        os.kill(victim, signal.SIGKILL)
        for n in range(count // 2, count):
            tasks.put(n)   # put after the kill: still processed by the others
        for _ in range(4):
            tasks.put(None)
        while len(got) < count - 1:
            got.append(results.get(timeout=60))
        try:
            got.append(results.get(timeout=2))   # the last one, unless the killed worker held it
        except queue.Empty:
            pass
        assert wait_until(lambda: tasks.qsize() <= 1, 30)   # only a pill nobody is left to take
    squares = sorted(got)
    assert len(set(squares)) == len(squares)                           # none twice
    assert count - 1 <= len(squares) <= count                          # at most the held one missing
    assert set(squares) <= {n * n for n in range(count)}
    tasks.close()
    results.close()
