#!/usr/bin/env python3
"""Does the pure-Python read_next fast path still pay? CPU ns per read_next with and without it.

    python scripts/pure_fast_path_cost.py [--entries 50000] [--rounds 3]

client/read.py's ``_fast`` inlines what ``_take`` does for a one-entry record at a valid
hint. The compiled path replaces it; the pure-Python path (no compiler, or
SHMWAL_PURE_PYTHON=1) still runs it, so it stays only while it pays there. Rounds
alternate with and without it on one broker; process CPU time, 100 B entries.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

os.environ["SHMWAL_PURE_PYTHON"] = "1"
sys.path.insert(0, __file__.rsplit("/scripts/", 1)[0])

import shmwal  # noqa: E402
from shmwal.client.read import GroupReader  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    scratch = tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    fast = GroupReader._fast
    try:
        with shmwal.Broker(scratch, fsync=shmwal.NoFsync()) as broker, \
                shmwal.connect(broker.data_dir, key=broker.key) as client:
            for rnd in range(args.rounds):
                for written in ("append", "batch_append"):
                    for label, method in (("with _fast", fast), ("without", lambda self, checkpoint: None)):
                        GroupReader._fast = method
                        topic = f"t{rnd}-{written}-{len(label)}"
                        if written == "append":
                            for _ in range(args.entries):
                                client.append(topic, b"x" * 100)
                        else:
                            for _ in range(args.entries // 1000):
                                client.batch_append(topic, [b"x" * 100] * 1000)
                        started = time.process_time()
                        for _ in range(args.entries):
                            client.read_next(topic, group="g")
                        spent = time.process_time() - started
                        print(f"round {rnd}  written by {written:<12}  {label:<10}  "
                              f"{spent / args.entries * 1e9:7,.0f} ns per read_next", flush=True)
    finally:
        GroupReader._fast = fast
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
