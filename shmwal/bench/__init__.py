"""The benchmark race: shmwal against its peers, with an exactly-once check on every run.

General layout (one job per module)::

    cli.py         options -> plan -> runner -> report; ``main(argv) -> exit code``
    plan.py        RunSpec: the scenarios (throughput, latency, scaling) and message counts
    contenders.py  multiprocessing.Queue, faster-fifo, pyzmq ipc, shmwal: how each sends,
                   receives and ends a run
    workers.py     the producer and consumer processes (the only timed code)
    messages.py    the message layout: producer id + sequence number (+ send time)
    check.py       the exactly-once check (pure functions)
    runner.py      child processes, deadlines, TIMEOUT / ERROR / FAILED
    report.py      rows, ratios to the best peer, table, JSON, PNG

Run it as ``shmwal bench`` or ``python scripts/bench.py`` (``--help`` lists the options).
It exits 1 if any run was FAILED (a message lost, duplicated or made up), TIMEOUT or ERROR.
"""

import os

# numpy's OpenBLAS starts a helper thread per core that spins after a BLAS call: on two
# cores it took CPU from the contenders (seen in perf as blas_thread_server in the
# parent). The harness needs no threaded BLAS. Set before numpy is first imported.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from .cli import main  # noqa: E402

__all__ = ["main"]
