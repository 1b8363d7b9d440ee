"""The broker process: ``python -m shmwal.server.main`` (what ``Broker.start()`` spawns) and
``shmwal broker`` (the same options, in the foreground).

A module of its own, apart from ``shmwal.broker``: ``python -m`` runs a fresh copy of the
module it is given, and ``shmwal/__init__`` has already imported ``shmwal.broker``, so
running that one would warn (RuntimeWarning: found in sys.modules) in every broker's log.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import signal
import sys
import threading
import time

from ..blocks import layout as L
from ..broker import Broker, BrokerServer
from ..errors import BrokerAlreadyRunning, ShmwalError
from ..options import Retention, parse_consistency, parse_fsync

log = logging.getLogger("shmwal.broker")

BROKER_DESCRIPTION = """\
Run a shmwal broker in the foreground until SIGINT (Ctrl-C) or SIGTERM, then stop
cleanly (writes and cursors flushed and fsynced) and exit 0. It logs to stderr.
Options may differ from one run to the next on the same directory: they apply to what
is created from then on, and everything written before stays readable.
Exit status: 0 after a clean stop, 2 for bad options, 3 when a broker already runs on
this directory and key, 1 for any other failure to start."""


def consistency_arg(text: str):
    """argparse type of --consistency: a bad value names the valid ones."""
    try:
        return parse_consistency(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"invalid choice: {text!r} (choose from strict, at-least-once:N with N >= 1)") from None


def fsync_arg(text: str):
    """argparse type of --fsync: a bad value names the valid ones."""
    try:
        return parse_fsync(text)
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"invalid choice: {text!r} (choose from each, none, or MILLISECONDS > 0)") from None


def _seconds_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"seconds must be a finite number >= 0, not {text!r}")
    return value


def file_clock(path: str):
    """A monotonic clock running ahead by the number of seconds written in ``path`` (tests:
    retention by seconds is driven by setting it, not by sleeping; absent or unreadable: 0)."""
    def now() -> float:
        try:
            with open(path) as f:
                ahead = float(f.read().strip() or 0)
        except (OSError, ValueError):
            ahead = 0.0
        return time.monotonic() + ahead
    return now


def _int_arg(low: int, high: int, multiple: int = 1, what: str = ""):
    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high or value % multiple:
            raise argparse.ArgumentTypeError(f"invalid value {text!r}: {what}")
        return value
    return check


def add_broker_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None, metavar="DIR",
                        help="where the broker keeps its files (created if missing; default: "
                             "$SHMWAL_DATA_DIR, else ./shmwal_data)")
    parser.add_argument("--key", default=None, metavar="KEY",
                        help="namespace inside the data directory: the files go in DIR/KEY; one broker "
                             "per directory and key (characters outside [A-Za-z0-9._-] become '_'; "
                             "default: 'default')")
    parser.add_argument("--consistency", default="strict", type=consistency_arg,
                        metavar="{strict,at-least-once:N}",
                        help="delivery to consumer groups: 'strict' (StrictlyAtOnce: a read moves its "
                             "group's cursor durably before it returns; no entry is delivered twice) or "
                             "'at-least-once:N' (AtLeastOnce: after a crash a group may get up to N entries again; "
                             "today the cursor is kept as under strict, see docs/API.md) (default: strict)")
    parser.add_argument("--fsync", default="200", type=fsync_arg, metavar="{each,none,MILLISECONDS}",
                        help="when written data is fsynced: 'each' (SyncEach: before every append returns), "
                             "'none' (NoFsync: never; survives process crashes, not a power cut) or a number "
                             "of milliseconds (FsyncEvery: within that long) (default: 200)")
    parser.add_argument("--block-size", type=_int_arg(L.MIN_BLOCK_SIZE, L.MAX_BLOCK_SIZE, L.PAGE,
                                                      f"a multiple of {L.PAGE} from {L.MIN_BLOCK_SIZE} "
                                                      f"to {L.MAX_BLOCK_SIZE}"),
                        default=L.DEFAULT_BLOCK_SIZE, metavar="BYTES",
                        help=f"bytes per block, the unit a topic's files grow and are deleted by; a multiple "
                             f"of {L.PAGE} (default: {L.DEFAULT_BLOCK_SIZE})")
    parser.add_argument("--blocks-per-file", type=_int_arg(1, 1 << 16, what="an integer from 1 to 65536"),
                        default=L.DEFAULT_BLOCKS_PER_FILE, metavar="N",
                        help=f"blocks per block file, 1 to 65536 (default: {L.DEFAULT_BLOCKS_PER_FILE})")
    parser.add_argument("--retention-bytes", type=_int_arg(0, 1 << 62, what="an integer >= 0"),
                        default=Retention().bytes, metavar="BYTES",
                        help="entries every group has read stay for replay while among the newest BYTES of "
                             "payload of their topic (0: consumed data goes as soon as it can) "
                             f"(default: {Retention().bytes})")
    parser.add_argument("--retention-seconds", type=_seconds_arg, default=None, metavar="SECONDS",
                        help="entries every group has read also stay while younger than SECONDS "
                             "(default: no time limit keeps them)")
    parser.add_argument("--max-bytes", type=_int_arg(0, 1 << 62, what="an integer >= 0"), default=None,
                        metavar="BYTES",
                        help="hard cap on the bytes of a topic's blocks: past it the oldest blocks go even if a "
                             "group has not read them (the group skips them; stats count them as 'skipped') "
                             "(default: no cap; unread data is never dropped)")
    parser.add_argument("--clock-file", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--die-with-parent", type=int, default=None, help=argparse.SUPPRESS)


def run_broker(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s shmwal-broker[%(process)d] %(levelname)s %(message)s")
    if args.die_with_parent and not watch_owner(args.die_with_parent):
        return 1
    os.umask(0o077)
    ready = os.fdopen(args.ready_fd, "w") if args.ready_fd is not None else None
    try:
        handle = Broker(args.data_dir, key=args.key, consistency=args.consistency, fsync=args.fsync,
                        block_size=args.block_size, blocks_per_file=args.blocks_per_file,
                        retention=Retention(args.retention_bytes, args.retention_seconds, args.max_bytes))
    except (TypeError, ValueError) as exc:
        _say(ready, f"error {exc}")
        print(f"shmwal broker: {exc}", file=sys.stderr)
        return 2
    server = BrokerServer(handle.root, handle.consistency, handle.fsync, handle.block_size, handle.blocks_per_file,
                          handle.retention, file_clock(args.clock_file) if args.clock_file else time.monotonic)
    signal.signal(signal.SIGTERM, server.request_stop)
    signal.signal(signal.SIGINT, server.request_stop)
    try:
        server.open()
    except BrokerAlreadyRunning as exc:
        _say(ready, f"already-running {exc}")
        print(f"shmwal broker: {exc}", file=sys.stderr)
        server.close()
        return 3
    except ShmwalError as exc:   # a refusal: one line naming the file and offset, no traceback
        log.error("broker refused to start: %s", exc)
        _say(ready, f"error {exc}")
        server.close()
        return 1
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


def watch_owner(owner: int) -> bool:
    """Stop this broker (a SIGTERM to itself: the clean path) when process ``owner`` ends.

    The process, not the thread that spawned us: PR_SET_PDEATHSIG fires when the
    spawning *thread* exits, so a broker started from ``asyncio.to_thread`` or a
    pool died about a second after start() returned.  A pidfd becomes readable
    when the whole process has exited; where there is none (Linux < 5.3) the
    parent pid is polled, which changes when the owner process is gone (children
    of an exiting thread are handed to another thread of its process: same pid).
    False: the owner is already gone.
    """
    try:
        pidfd = os.pidfd_open(owner)
    except (AttributeError, OSError):
        pidfd = None
    # After pidfd_open: if the owner had died before it, we were reparented, and a
    # pidfd of a reused pid is never watched.
    if os.getppid() != owner:
        if pidfd is not None:
            os.close(pidfd)
        return False
    threading.Thread(target=_stop_when_gone, args=(owner, pidfd), name="shmwal-owner", daemon=True).start()
    return True


def _stop_when_gone(owner: int, pidfd: int | None) -> None:
    if pidfd is not None:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        while not poller.poll():
            pass
    else:
        while os.getppid() == owner:
            time.sleep(0.1)
    log.info("the process that started this broker (pid %d) has ended: stopping", owner)
    os.kill(os.getpid(), signal.SIGTERM)


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
    parser = argparse.ArgumentParser(prog="shmwal broker", description=BROKER_DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_broker_arguments(parser)
    return run_broker(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
