"""The command line: `shmwal broker` in the foreground, `shmwal stat`, `shmwal verify`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

import shmwal
from conftest import ipc_leftovers, wait_until


def shmwal_cli(*args, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "shmwal", *args], capture_output=True, text=True,
                          timeout=60, **kwargs)


def foreground_broker(data_dir, *extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "shmwal", "broker", "--data-dir", data_dir, *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def connect_when_up(data_dir, key=None, **kwargs):
    # connect fails at once where no broker ever ran: wait for the starting one's broker.lock.
    lock = os.path.join(shmwal.Broker(data_dir, key=key).root, "broker.lock")
    assert wait_until(lambda: os.path.exists(lock), 20), f"no broker came up on {data_dir}"
    return shmwal.connect(data_dir, key=key, timeout=20, **kwargs)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_foreground_broker_stops_cleanly_on_a_signal_and_keeps_the_data(data_dir, sig):
    proc = foreground_broker(data_dir, "--key", "cli", "--fsync", "none", "--consistency", "at-least-once:5")
    try:
        with connect_when_up(data_dir, key="cli") as client:
            assert client.batch_append("t", [b"a", b"b", b"c"]) == range(0, 3)
            assert client.read_next("t", group="g").data == b"a"
            assert client.fsync == shmwal.NoFsync() and client.consistency == shmwal.AtLeastOnce(5)
            root = shmwal.Broker(data_dir, key="cli").root
            assert ipc_leftovers(root)
            proc.send_signal(sig)
            assert proc.wait(timeout=30) == 0, proc.stdout.read()
        assert ipc_leftovers(root) == []
        assert not os.path.exists(os.path.join(root, "broker.sock"))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with shmwal.Broker(data_dir, key="cli"), shmwal.connect(data_dir, key="cli") as client:
        assert [e.data for e in client.batch_read("t", 100, group="g")] == [b"b", b"c"]


@pytest.mark.timeout(90)
def test_a_second_foreground_broker_on_the_same_directory_refuses(data_dir):
    first = foreground_broker(data_dir)
    try:
        connect_when_up(data_dir).close()
        second = shmwal_cli("broker", "--data-dir", data_dir)
        assert second.returncode != 0
        assert "already runs" in second.stderr
        assert first.poll() is None
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=30) == 0


@pytest.mark.timeout(90)
def test_bad_broker_options_are_refused_with_a_message(data_dir):
    result = shmwal_cli("broker", "--data-dir", data_dir, "--fsync", "sometimes")
    assert result.returncode != 0 and "fsync" in result.stderr
    result = shmwal_cli("broker", "--data-dir", data_dir, "--consistency", "exactly")
    assert result.returncode != 0 and "consistency" in result.stderr


@pytest.mark.timeout(90)
def test_stat_prints_topics_groups_and_lag(client, broker):
    client.batch_append("orders", [b"x" * 10] * 7)
    client.batch_read("orders", 30, group="billing")          # takes 3
    result = shmwal_cli("stat", "--data-dir", broker.data_dir)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "running" in lines[0]
    orders = next(line.split() for line in lines if line.startswith("orders") and "billing" not in line)
    assert orders[:4] == ["orders", "7", "0", "7"]
    billing = next(line.split() for line in lines if "billing" in line)
    assert billing == ["orders", "billing", "3", "4", "0"]      # position, lag, skipped
    as_json = shmwal_cli("stat", "--data-dir", broker.data_dir, "--json")
    assert '"lag": 4' in as_json.stdout


@pytest.mark.timeout(90)
def test_verify_passes_intact_data_and_stat_without_data_says_so(client, broker, tmp_path):
    client.batch_append("t", [os.urandom(100) for _ in range(50)])
    result = shmwal_cli("verify", "--data-dir", broker.data_dir)
    assert result.returncode == 0 and "no damage" in result.stdout, result.stdout + result.stderr
    empty = shmwal_cli("stat", "--data-dir", str(tmp_path / "nothing-here"))
    assert empty.returncode == 1 and "no shmwal data" in empty.stderr
