"""``connect`` errors a user can act on (issue 12).

"No broker data" means: the namespace directory holds no ``broker.lock``, the
file every broker makes first (``Broker.start`` before it even spawns the
process) and none removes.  There ``connect`` fails at once, naming the
directory as it was given and saying how to start a broker.  Where a broker
ran but none runs now, a broker may be restarting: ``connect`` waits up to
its timeout, and a broker that comes back within it is reached.

Each case runs ``connect`` in a real process, compiled and pure-Python.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import shmwal

PATHS = {"compiled": {}, "pure": {"SHMWAL_PURE_PYTHON": "1"}}


def run_connect(cwd, data_dir, timeout, path, key=None, then=""):
    """Run connect(data_dir, key=..., timeout=...) in a fresh process; (exit code, its output)."""
    code = textwrap.dedent(f"""
        import shmwal
        try:
            client = shmwal.connect({data_dir!r}, key={key!r}, timeout={timeout!r})
        except shmwal.BrokerUnavailable as exc:
            assert isinstance(exc, ConnectionError)
            print("BrokerUnavailable:", exc)
            raise SystemExit(3)
        {then}
        print("connected")
    """)
    env = {**os.environ, **PATHS[path]}
    env.pop("SHMWAL_DATA_DIR", None)
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=60)
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.timeout(30)   # connect is given an hour: passing at all means it did not wait
def test_connect_where_no_broker_ever_ran_fails_at_once_and_says_how_to_start_one(tmp_path, path):
    (tmp_path / "empty").mkdir()
    for given in ("does/not/exist", "empty"):
        code, out = run_connect(tmp_path, given, 3600.0, path)
        assert code == 3, out
        assert f"no shmwal broker data in {given} (= {tmp_path / given})" in out
        assert f"`shmwal broker --data-dir {given}`" in out and f"`shmwal.Broker('{given}').start()`" in out
    code, out = run_connect(tmp_path, "empty", 3600.0, path, key="other")
    assert code == 3 and "key 'other'" in out and "--data-dir empty --key other" in out, out
    assert not os.path.exists(tmp_path / "does"), "a failed connect must create nothing"
    assert os.listdir(tmp_path / "empty") == []


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.timeout(60)
def test_connect_where_a_broker_ran_waits_for_the_timeout(tmp_path, path):
    data_dir = str(tmp_path / "data")
    with shmwal.Broker(data_dir, block_size=64 * 1024, blocks_per_file=4):
        pass
    code, out = run_connect(tmp_path, data_dir, 0.3, path)
    assert code == 3, out
    assert f"no broker answers on {data_dir} within 0.3 s" in out     # the waiting path, not "no broker data"
    assert f"`shmwal broker --data-dir {data_dir}`" in out


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.timeout(90)
def test_connect_reaches_a_broker_that_restarts_within_the_timeout(tmp_path, path):
    data_dir = str(tmp_path / "data")
    with shmwal.Broker(data_dir, block_size=64 * 1024, blocks_per_file=4):
        with shmwal.connect(data_dir) as client:
            client.append("t", b"before")
    waiting = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(f"""
            import sys, shmwal
            print("connecting", flush=True)
            client = shmwal.connect({data_dir!r}, timeout=50.0)
            print(client.read_next("t").data.decode(), flush=True)
        """)], env={**os.environ, **PATHS[path]}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert waiting.stdout.readline() == "connecting\n"
        with shmwal.Broker(data_dir, block_size=64 * 1024, blocks_per_file=4):
            out, _ = waiting.communicate(timeout=55)
    finally:
        if waiting.poll() is None:
            waiting.kill()
            waiting.wait()
    assert waiting.returncode == 0 and out == "before\n", out
