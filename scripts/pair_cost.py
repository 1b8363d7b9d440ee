"""The harness of scripts/queue_cost.py and scripts/append_cost.py: a fresh NoFsync broker a
round, one consumer and one producer process (fork), each reporting its own costs.

``produce(data_dir, out)`` and ``consume(data_dir, out)`` run in the two processes and put
``("producer" | "consumer", text)`` on ``out``; ``cost`` makes that text from getrusage.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import shutil
import tempfile
import time

import shmwal


def cost(start: float, count: int, unit: str, nbytes: int = 0) -> str:
    """Wall and CPU time (this process, all threads) per ``unit`` since ``start``, and the rate."""
    wall = time.perf_counter() - start
    used = resource.getrusage(resource.RUSAGE_SELF)
    cpu = used.ru_utime + used.ru_stime
    rate = f"{count * nbytes / wall / 1e6:7,.0f} MB/s" if nbytes else f"{count / wall:9,.0f} {unit}s/s"
    return f"wall {wall / count * 1e6:7.2f} us/{unit}, cpu {cpu / count * 1e6:7.2f} us/{unit}, {rate}"


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far (/proc/PID/stat, fields 14 and 15)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def common_arguments(parser) -> None:
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default="/tmp", help="where the data directory goes")
    parser.add_argument("--piecewise", action="store_true",
                        help="copy and checksum large payloads piece by piece, as CPUs without AVX2 do, "
                             "instead of in one pass (hot.c, fused_xxh3.h): the comparison")


def rounds(count: int, label: str, items: int, where: str, prefix: str, prepare, produce, consume,
           piecewise: bool = False) -> None:
    """``count`` rounds of ``items`` each: ``prepare(data_dir)`` once the broker runs, then the two processes."""
    from shmwal.client.hot import native
    if native is not None:
        native.fused(not piecewise)   # the forked processes inherit it
        label += ", fused copy" if native.fused() else ", piecewise copy"
    ctx = multiprocessing.get_context("fork")
    for r in range(count):
        data_dir = tempfile.mkdtemp(prefix=prefix, dir=where)
        try:
            with shmwal.Broker(data_dir, fsync=shmwal.NoFsync()) as broker:
                prepare(data_dir)
                broker_before = _cpu_seconds(broker.pid)
                out = ctx.Queue()
                procs = [ctx.Process(target=consume, args=(data_dir, out)),
                         ctx.Process(target=produce, args=(data_dir, out))]
                for proc in procs:
                    proc.start()
                results = dict(out.get(timeout=600) for _ in procs)
                for proc in procs:
                    proc.join()
                broker_used = _cpu_seconds(broker.pid) - broker_before
            head = f"round {r + 1}, {label}: "
            print(f"{head}producer {results['producer']}")
            print(f"{'':>{len(head)}}consumer {results['consumer']}")
            # The broker's share of a 2-core machine the pair saturates: every us it takes is the pair's.
            print(f"{'':>{len(head)}}broker   cpu {broker_used / items * 1e6:7.2f} us/item")
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)
