"""The broker process: ``python -m shmwal.server.main`` (what ``Broker.start()`` spawns) and
``shmwal broker`` (the same options, in the foreground).

A module of its own, apart from ``shmwal.broker``: ``python -m`` runs a fresh copy of the
module it is given, and ``shmwal/__init__`` has already imported ``shmwal.broker``, so
running that one would warn (RuntimeWarning: found in sys.modules) in every broker's log.
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import sys

from ..blocks import layout as L
from ..broker import Broker, BrokerServer
from ..errors import BrokerAlreadyRunning
from ..options import parse_consistency, parse_fsync

log = logging.getLogger("shmwal.broker")


def add_broker_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--key", default=None)
    parser.add_argument("--consistency", default="strict", type=parse_consistency)
    parser.add_argument("--fsync", default="200", type=parse_fsync)
    parser.add_argument("--block-size", type=int, default=L.DEFAULT_BLOCK_SIZE)
    parser.add_argument("--blocks-per-file", type=int, default=L.DEFAULT_BLOCKS_PER_FILE)
    parser.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--die-with-parent", type=int, default=None, help=argparse.SUPPRESS)


def run_broker(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s shmwal-broker[%(process)d] %(levelname)s %(message)s")
    if args.die_with_parent:
        # A broker spawned by Broker.start() stops cleanly when its owner dies.
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != args.die_with_parent:
            return 1
    os.umask(0o077)
    ready = os.fdopen(args.ready_fd, "w") if args.ready_fd is not None else None
    try:
        handle = Broker(args.data_dir, key=args.key, consistency=args.consistency, fsync=args.fsync,
                        block_size=args.block_size, blocks_per_file=args.blocks_per_file)
    except (TypeError, ValueError) as exc:
        _say(ready, f"error {exc}")
        print(f"shmwal broker: {exc}", file=sys.stderr)
        return 2
    server = BrokerServer(handle.root, handle.consistency, handle.fsync, handle.block_size, handle.blocks_per_file)
    signal.signal(signal.SIGTERM, server.request_stop)
    signal.signal(signal.SIGINT, server.request_stop)
    try:
        server.open()
    except BrokerAlreadyRunning as exc:
        _say(ready, f"already-running {exc}")
        print(f"shmwal broker: {exc}", file=sys.stderr)
        server.close()
        return 3
    except Exception as exc:
        log.exception("broker failed to start")
        _say(ready, f"error {type(exc).__name__}: {exc}")
        server.close()
        return 1
    log.info("broker ready on %s (pid %d, %s, %s)", server.root, os.getpid(), server.consistency, server.fsync)
    _say(ready, f"ready {os.getpid()}")
    try:
        server.serve()
    finally:
        server.close()
        log.info("broker stopped cleanly")
    return 0


def _say(stream, line: str) -> None:
    if stream is None:
        return
    try:
        stream.write(line + "\n")
        stream.flush()
        stream.close()
    except OSError:
        pass


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="shmwal broker", description="Run a shmwal broker in the foreground.")
    add_broker_arguments(parser)
    return run_broker(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
