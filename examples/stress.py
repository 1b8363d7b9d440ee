"""Stress shmwal.Queue: producers and consumers in processes, mixed objects, optional kill -9.

    python examples/stress.py --producers 3 --consumers 3 --items 20000 --kill 2

Every producer puts (producer, seq, payload) items: small dicts, strings, numpy arrays
of random sizes. Consumers check each payload and report the (producer, seq) they got.
With --kill N, N consumers are SIGKILLed while they work and replaced. At the end every
item must have been received exactly once, except at most one per killed consumer (the
item it had taken when it died: StrictlyAtOnce never delivers an entry twice).
"""
import argparse
import multiprocessing as mp
import os
import random
import signal
import time

import numpy as np

import shmwal


def make(producer, seq):
    rng = random.Random(producer * 1_000_003 + seq)
    kind = rng.randrange(3)
    if kind == 0:
        return {"p": producer, "s": seq, "tags": ["x"] * rng.randrange(5)}
    if kind == 1:
        return "y" * rng.randrange(1, 5000)
    return np.full(rng.choice([1, 100, 10_000, 300_000]), seq % 251, dtype=np.uint8)


def produce(tasks, producer, items):
    for seq in range(items):
        tasks.put((producer, seq, make(producer, seq)))


def consume(tasks, done):
    while (item := tasks.get()) is not None:
        producer, seq, payload = item
        expected = make(producer, seq)
        same = np.array_equal(payload, expected) if isinstance(expected, np.ndarray) else payload == expected
        done.put((producer, seq) if same else ("damaged", producer, seq))
    done.put(("bye", os.getpid()))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--producers", type=int, default=3)
    parser.add_argument("--consumers", type=int, default=3)
    parser.add_argument("--items", type=int, default=20_000, help="per producer")
    parser.add_argument("--kill", type=int, default=0, help="consumers to SIGKILL (each replaced)")
    parser.add_argument("--start-method", default="spawn", choices=mp.get_all_start_methods())
    args = parser.parse_args()
    ctx = mp.get_context(args.start_method)
    tasks, done = shmwal.Queue("stress-tasks"), shmwal.Queue("stress-done")
    started = time.monotonic()
    producers = [ctx.Process(target=produce, args=(tasks, p, args.items)) for p in range(args.producers)]
    consumers = [ctx.Process(target=consume, args=(tasks, done)) for _ in range(args.consumers)]
    for p in producers + consumers:
        p.start()
    total, got, killed = args.producers * args.items, set(), 0
    while len(got) < total - killed:
        item = done.get(timeout=120)
        assert item[0] != "damaged", f"damaged payload {item}"
        assert item not in got, f"delivered twice: {item}"
        got.add(item)
        if killed < args.kill and len(got) >= total * (killed + 1) // (args.kill + 1):
            victim = consumers.pop(random.randrange(len(consumers)))
            os.kill(victim.pid, signal.SIGKILL)
            victim.join()
            killed += 1
            consumers.append(ctx.Process(target=consume, args=(tasks, done)))
            consumers[-1].start()
    for p in producers:
        p.join()
    for _ in consumers:
        tasks.put(None)
    byes = 0
    while byes < len(consumers):   # the last items may arrive with the goodbyes
        item = done.get(timeout=120)
        if item[0] == "bye":
            byes += 1
        else:
            assert item[0] != "damaged" and item not in got, item
            got.add(item)
    for p in consumers:
        p.join()
    lost = total - len(got)
    assert lost <= killed, f"{lost} items lost with {killed} consumers killed"
    seconds = time.monotonic() - started
    print(f"{len(got)} of {total} items in {seconds:.1f} s ({len(got) / seconds:,.0f}/s); "
          f"{killed} consumers killed, {lost} items lost with them")


if __name__ == "__main__":
    main()
