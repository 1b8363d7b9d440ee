"""Worker functions for test_queue.py, importable by name in spawned and forkserver children."""

from __future__ import annotations

import os
import queue
import time

_queues = {}


def put_range(q, start: int, stop: int, tag=None) -> None:
    for i in range(start, stop):
        q.put(i if tag is None else (tag, i))


def get_n_into(q, n: int, out) -> None:
    out.put([q.get(timeout=60) for _ in range(n)])


def consume_until_none(q, out) -> None:
    got = []
    while (item := q.get(timeout=60)) is not None:
        got.append(item)
    out.put(got)


def echo_arrays(tasks, results) -> None:
    """Sends back each array with its sum, so the parent checks data, dtype and shape."""
    while (item := tasks.get(timeout=60)) is not None:
        results.put((item, float(item.sum()) if item.size else 0.0))


def init_queues(tasks, results) -> None:
    """A Pool initializer: the queues arrive as its arguments."""
    _queues["tasks"], _queues["results"] = tasks, results


def square_from_initializer_queues(count: int) -> int:
    tasks, results = _queues["tasks"], _queues["results"]
    for _ in range(count):
        n = tasks.get(timeout=60)
        results.put(n * n)
    return os.getpid()


def square_task(q_in, q_out) -> int:
    """A ProcessPoolExecutor task given the queues as arguments."""
    n = q_in.get(timeout=60)
    q_out.put(n * n)
    return n


def get_with_timeout_reports_empty(q, out) -> None:
    try:
        q.get(timeout=0.2)
    except queue.Empty:
        out.put("empty")
    else:
        out.put("got something")


def hold_then_sleep(tasks, results) -> None:
    """Takes items, processes them, and on -1 keeps it and sleeps (to be killed holding it)."""
    while (item := tasks.get(timeout=60)) is not None:
        if item == -1:
            results.put(("holding", os.getpid()))
            time.sleep(600)
        results.put(("done", item))
    results.put(("bye", os.getpid()))


def append_paced(data_dir: str, topic: str, count: int, seed: int = 0, delay: float = 0.0) -> int:
    """Appends ``count`` entries (their offsets' decimal text) in random bursts with pauses."""
    import random

    import shmwal
    rng = random.Random(seed)
    time.sleep(delay)
    with shmwal.connect(data_dir) as client:
        i = 0
        while i < count:
            burst = min(count - i, rng.randint(1, 20))
            for _ in range(burst):
                client.append(topic, b"%d" % i)
                i += 1
            time.sleep(rng.random() * 0.001)
    return count


def read_all_blocking(data_dir: str, topic: str, group: str, count: int) -> list:
    """A synchronous reader in another process (it sleeps on the same semaphore as the waker)."""
    import shmwal
    with shmwal.connect(data_dir) as client:
        return [client.read_next(topic, group=group, timeout=60).offset for _ in range(count)]


def get_reporting_what_does_not_unpickle(q, count: int) -> list:
    """``count`` gets; an item that does not unpickle here is reported with what its error
    carries: (error type, shmwal_offset, shmwal_item)."""
    got = []
    for _ in range(count):
        try:
            got.append(("item", q.get(timeout=60)))
        except Exception as exc:
            got.append((type(exc).__name__, getattr(exc, "shmwal_offset", None), getattr(exc, "shmwal_item", None)))
    return got


def put_later(q, obj, delay: float) -> None:
    time.sleep(delay)
    q.put(obj)
