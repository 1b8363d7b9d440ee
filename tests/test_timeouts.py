"""Huge and non-finite timeouts on every call that takes one (issue 11, item 6).

``10**400`` and ``inf`` wait for ever (as ``None``); a negative number, ``-(10**400)``,
``-inf`` and NaN raise ValueError; a bool or a string TypeError.  Before: ``read_next(t,
timeout=10**400)`` raised OverflowError (``math.isnan`` of an int).  This file runs in
both hot paths (.ci/run repeats it with SHMWAL_PURE_PYTHON=1).
"""

from __future__ import annotations

import threading
import time

import pytest

import shmwal

FOREVER = [10**400, float("inf"), 1e300]
BAD_VALUE = [-(10**400), float("-inf"), float("nan"), -1, -0.5]
BAD_TYPE = [True, "1", b"1", [1]]

READS = {
    "read_next": lambda c, t: c.read_next("t", group="g", timeout=t),
    "batch_read": lambda c, t: c.batch_read("t", 1 << 20, group="g", timeout=t),
    "batch_read_payloads": lambda c, t: c.batch_read_payloads("t", 1 << 20, group="g", timeout=t).data,
}


def _later(fn, delay=0.3):
    timer = threading.Timer(delay, fn)
    timer.start()
    return timer


@pytest.mark.timeout(60)
@pytest.mark.parametrize("call", sorted(READS))
@pytest.mark.parametrize("timeout", FOREVER, ids=["10**400", "inf", "1e300"])
def test_a_huge_timeout_waits_for_the_entry(client, call, timeout):
    client.append("t", b"first")
    assert READS[call](client, 0)   # caught up: the next read has to wait
    timer = _later(lambda: client.append("t", b"late"))
    try:
        got = READS[call](client, timeout)
    finally:
        timer.join()
    data = got.data if call == "read_next" else got[0] if call == "batch_read_payloads" else got[0].data
    assert data == b"late"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("call", sorted(READS))
@pytest.mark.parametrize("timeout", BAD_VALUE, ids=["-10**400", "-inf", "nan", "-1", "-0.5"])
def test_a_negative_or_nan_timeout_is_a_value_error_and_reads_nothing(client, call, timeout):
    client.append("t", b"x")
    with pytest.raises(ValueError, match="timeout"):
        READS[call](client, timeout)
    assert client.position("t", group="g") == 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize("call", sorted(READS))
@pytest.mark.parametrize("timeout", BAD_TYPE, ids=repr)
def test_a_timeout_that_is_no_number_is_a_type_error(client, call, timeout):
    with pytest.raises(TypeError, match="timeout"):
        READS[call](client, timeout)


@pytest.mark.timeout(60)
def test_connect_with_huge_and_bad_timeouts(broker, data_dir):
    for timeout in FOREVER:
        with shmwal.connect(data_dir, timeout=timeout) as c:
            assert c.append("t", b"x") >= 0
    for timeout in BAD_VALUE:
        with pytest.raises(ValueError, match="timeout"):
            shmwal.connect(data_dir, timeout=timeout)
    for timeout in BAD_TYPE:
        with pytest.raises(TypeError, match="timeout"):
            shmwal.connect(data_dir, timeout=timeout)


@pytest.mark.timeout(60)
def test_connect_with_a_huge_timeout_waits_for_a_broker(data_dir, start_broker):
    start_broker().stop()   # a broker ran here before (where none ever ran, connect fails at once)
    got = {}

    def connecting():
        try:
            got["client"] = shmwal.connect(data_dir, timeout=10**400)
        except Exception as exc:   # reported below
            got["error"] = exc

    thread = threading.Thread(target=connecting)
    thread.start()
    try:
        time.sleep(0.3)
        assert thread.is_alive(), f"connect(timeout=10**400) returned before any broker ran: {got}"
        start_broker()
    finally:
        thread.join(30)
    assert not thread.is_alive() and "client" in got, got
    got["client"].close()


@pytest.mark.timeout(60)
def test_broker_start_and_stop_with_huge_and_bad_timeouts(data_dir):
    broker = shmwal.Broker(data_dir, block_size=64 * 1024, blocks_per_file=4)
    for timeout in BAD_VALUE:
        with pytest.raises(ValueError, match="timeout"):
            broker.start(timeout=timeout)
        assert broker.pid is None
    broker.start(timeout=10**400)
    try:
        for timeout in BAD_VALUE:
            with pytest.raises(ValueError, match="timeout"):
                broker.stop(timeout=timeout)
            assert broker.pid is not None, "a stop() that raised stopped the broker"
    finally:
        broker.stop(timeout=float("inf"))
    assert broker.pid is None
