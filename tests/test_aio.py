"""asyncio: reads that wake on publish without polling or a thread each, and cancellation
that never moves a cursor (API.md "asyncio"). Producers are real processes."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import pytest

import shmwal
from helpers import Workers, no_resource_tracker_left  # noqa: F401  (an autouse fixture)
import queue_workers as W


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 100))


def test_waiting_read_wakes_when_another_process_appends(broker, tmp_path):
    async def main():
        async with shmwal.connect_async(broker.data_dir) as client:
            workers = Workers("spawn", str(tmp_path / "w"))
            proc = workers.start(W.append_paced, broker.data_dir, "t", 1, 0, 0.3)
            entry = await client.read_next("t", group="g")
            assert (entry.topic, entry.offset, entry.data) == ("t", 0, b"0")
            workers.result(proc, 60)
    run(main())


def test_thousand_concurrent_waiting_reads_on_one_loop_wake_on_publish(broker, tmp_path):
    async def main():
        async with await shmwal.connect_async(broker.data_dir) as client:
            threads_before = threading.active_count()
            reads = [asyncio.create_task(client.read_next("t", group="g")) for _ in range(1000)]
            batches = [asyncio.create_task(client.batch_read("t", 1 << 20, group=f"b{i}")) for i in range(10)]
            await asyncio.sleep(0.3)
            assert not any(t.done() for t in reads + batches)
            assert threading.active_count() == threads_before + 1   # one waker thread, not one per read
            workers = Workers("spawn", str(tmp_path / "w"))
            workers.result(workers.start(W.append_paced, broker.data_dir, "t", 1000), 60)
            entries = await asyncio.gather(*reads)
            assert sorted(e.offset for e in entries) == list(range(1000))   # each entry to one read
            assert all(e.data == b"%d" % e.offset for e in entries)
            for task in batches:   # every other group woke too, each from offset 0
                got = await task
                assert got and got[0].offset == 0 and [e.offset for e in got] == list(range(len(got)))
    run(main())


@pytest.mark.parametrize("seed", [1, 2])
def test_ten_thousand_random_cancellations_lose_no_entry_and_deliver_none_twice(broker, tmp_path, seed):
    count, cancellations = 6000, 10_000
    rng = random.Random(seed)

    async def main():
        async with shmwal.connect_async(broker.data_dir) as client:
            assert isinstance(client.client.consistency, shmwal.StrictlyAtOnce)
            received = []
            tasks = set()
            cancelled = 0

            def start_read():
                if rng.random() < 0.7:
                    tasks.add(asyncio.create_task(client.read_next("t", group="g")))
                else:
                    tasks.add(asyncio.create_task(client.batch_read("t", rng.choice([1, 40, 400]), group="g")))

            for _ in range(30):
                start_read()
            workers = Workers("spawn", str(tmp_path / "w"))
            producer = workers.start(W.append_paced, broker.data_dir, "t", count, seed)
            deadline = time.monotonic() + 90
            while len(received) < count or cancelled < cancellations:
                assert time.monotonic() < deadline, (len(received), cancelled)
                if rng.random() < 0.5:
                    await asyncio.sleep(0)
                else:
                    await asyncio.sleep(rng.random() * 0.0005)
                for task in [t for t in tasks if t.done()]:
                    tasks.discard(task)
                    if not task.cancelled():
                        found = task.result()
                        received.extend([found.offset] if isinstance(found, shmwal.Entry) else
                                        [e.offset for e in found])
                    start_read()
                if cancelled < cancellations:
                    for _ in range(rng.randint(1, 3)):
                        rng.choice(tuple(tasks)).cancel()
                        cancelled += 1
            workers.result(producer, 60)
            for task in tasks:
                task.cancel()
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            assert all(isinstance(o, asyncio.CancelledError) for o in outcomes)   # nothing left to read
            assert len(received) == count and sorted(received) == list(range(count))
            assert await client.position("t", group="g") == count
    run(main())


def test_idle_waiting_loop_uses_under_one_percent_cpu(broker):
    async def main():
        async with shmwal.connect_async(broker.data_dir) as client:
            reads = [asyncio.create_task(client.read_next(f"t{i % 4}", group="g")) for i in range(1000)]
            await asyncio.sleep(0.5)   # settled: every read waits
            wall, cpu = time.monotonic(), time.process_time()   # every thread of this process
            await asyncio.sleep(4)
            used = (time.process_time() - cpu) / (time.monotonic() - wall)
            assert used < 0.01, f"{used:.2%} of a CPU while idle"
            await client.append("t0", b"x")
            await asyncio.wait(reads, return_when=asyncio.FIRST_COMPLETED)
            assert sum(t.done() for t in reads) == 1
            for t in reads:
                t.cancel()
    run(main())


def test_timeouts_return_nothing_and_errors_are_the_clients(broker):
    async def main():
        async with shmwal.connect_async(broker.data_dir) as client:
            assert await client.read_next("t", timeout=0.2) is None
            assert await client.batch_read("t", 100, timeout=0) == []
            with pytest.raises(shmwal.InvalidTopic):
                await client.read_next("a/b")
            with pytest.raises(shmwal.InvalidTopic):
                await client.read_next("t", group="")
            with pytest.raises(ValueError):
                await client.read_next("t", timeout=-1)
            with pytest.raises(TypeError):
                await client.append("t", {"not": "bytes"})
            assert await client.append("t", b"a") == 0
            assert await client.batch_append("t", [b"b", b"c"]) == range(1, 3)
            assert [e.data for e in await client.batch_read("t", 1 << 20)] == [b"a", b"b", b"c"]
            assert await client.read_next("t", checkpoint=False, group="peek") == shmwal.Entry("t", 0, b"a")
            assert await client.position("t", group="peek") == 0
            await client.seek("t", 2, group="peek")
            assert (await client.read_next("t", group="peek")).data == b"c"
            assert "t" in await client.topics()
        with pytest.raises(shmwal.BrokerUnavailable):
            await shmwal.connect_async(broker.data_dir + "-none", timeout=0.2)
    run(main())


def test_subscribe_yields_every_entry_in_order_and_stops_when_cancelled(broker, tmp_path):
    async def main():
        async with shmwal.connect_async(broker.data_dir) as client:
            got = []

            async def consume():
                async for entry in client.subscribe("t", group="s"):
                    got.append(entry.offset)
                    if len(got) == 500:
                        return

            task = asyncio.create_task(consume())
            workers = Workers("spawn", str(tmp_path / "w"))
            workers.result(workers.start(W.append_paced, broker.data_dir, "t", 600), 60)
            await task
            assert got == list(range(500))
            assert (await client.read_next("t", group="s")).offset == 500
    run(main())


def test_async_and_blocking_readers_of_one_topic_both_get_everything(broker, tmp_path):
    """The waker sleeps on the semaphore synchronous readers sleep on: neither starves."""
    async def main():
        async with shmwal.connect_async(broker.data_dir) as client:
            # The blocking reader's group exists before anything is read: made by its (spawned,
            # slow to start) process, it could come after "async" had read past a block.
            await client.seek("t", 0, group="sync")
            workers = Workers("spawn", str(tmp_path / "w"))
            sync_reader = workers.start(W.read_all_blocking, broker.data_dir, "t", "sync", 2000)
            producer = workers.start(W.append_paced, broker.data_dir, "t", 2000, 7, 0.5)
            got = [(await client.read_next("t", group="async")).offset for _ in range(2000)]
            assert got == list(range(2000))
            assert workers.result(sync_reader, 60) == list(range(2000))
            workers.result(producer, 60)
    run(main())


def test_waiting_read_raises_when_the_broker_dies(start_broker, data_dir):
    broker = start_broker()

    async def main():
        client = await shmwal.connect_async(data_dir)
        try:
            read = asyncio.create_task(client.read_next("t"))
            await asyncio.sleep(0.2)
            broker.stop()
            with pytest.raises(shmwal.BrokerUnavailable):
                await read
        finally:
            await client.close()
    run(main())


def test_waiting_read_raises_client_closed_when_its_client_closes(broker):
    async def main():
        client = await shmwal.connect_async(broker.data_dir)
        read = asyncio.create_task(client.read_next("t"))
        await asyncio.sleep(0.2)
        await client.close()
        with pytest.raises(shmwal.ClientClosed):
            await read
        with pytest.raises(shmwal.ClientClosed):
            await client.read_next("t", timeout=0)
    run(main())
