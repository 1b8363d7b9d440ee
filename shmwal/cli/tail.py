"""``shmwal tail``: print a topic's entries, as ``kafka-console-consumer`` does.

Without ``--group`` it peeks (cli/peek.py: straight from the files, no broker
needed, no cursor moved, nothing held back from deletion); with ``--group`` it
reads as that consumer group through the broker, so what it prints is taken
from the group (work-queue semantics) and the group's cursor moves.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import time

from . import common

HELP = "print a topic's entries (peeking unless --group is given), like kafka-console-consumer"
EXAMPLES = """\
examples:
  shmwal tail orders                          every kept entry, then exit
  shmwal tail orders --from latest --follow   only new entries, until Ctrl-C
  shmwal tail orders --group billing -n 10    take 10 entries from group billing
  shmwal tail orders --format json | jq .     one JSON object a line
"""
READ_BYTES = 1 << 20
FOLLOW_SLICE = 1.0          # seconds a group read waits before looking at Ctrl-C again
POLL_MIN, POLL_MAX = 0.002, 0.1   # a peeking --follow looks for new entries this often


def from_arg(text: str):
    if text in ("earliest", "latest"):
        return text
    try:
        offset = int(text)
    except ValueError:
        offset = -1
    if offset < 0:
        raise argparse.ArgumentTypeError(
            f"invalid choice: {text!r} (choose from earliest, latest, or an offset >= 0)")
    return offset


def add_parsers(sub) -> None:
    p = sub.add_parser("tail", help=HELP, description=HELP[0].upper() + HELP[1:] + ".", epilog=EXAMPLES,
                       formatter_class=common.HelpFormatter)
    p.add_argument("topic", type=common.name_arg("topic"), metavar="TOPIC", help="the topic to print")
    p.add_argument("--group", "-g", type=common.name_arg("group"), metavar="GROUP",
                   help="read as this consumer group through the broker: entries printed are taken "
                        "from the group and its cursor moves (default: peek from the files, moving "
                        "nothing; no broker needed)")
    p.add_argument("--from", dest="start", type=from_arg, default=None, metavar="{earliest,latest,OFFSET}",
                   help="where to start: 'earliest' (the oldest kept entry), 'latest' (only entries "
                        "written from now on) or an offset (default: earliest when peeking; with "
                        "--group, where the group is, and --from moves the group there first)")
    p.add_argument("--follow", "-f", action="store_true",
                   help="keep waiting for new entries and print them as they come, until Ctrl-C "
                        "(default: exit at the end of the topic)")
    p.add_argument("--format", choices=("raw", "hex", "json"), default="raw",
                   help="raw: each payload as it is, then a newline; hex: 'OFFSET HEX' a line; "
                        "json: one object a line, {\"topic\", \"offset\", \"data\"} with data as text "
                        "when it is UTF-8, else \"data_base64\" (default: raw)")
    p.add_argument("--json", action="store_true", help="the same as --format json")
    p.add_argument("--count", "-n", type=common.non_negative_int, default=None, metavar="N",
                   help="stop after N entries (with --group, exactly N are taken from the group)")
    common.add_namespace_args(p)
    p.set_defaults(run=cmd_tail)


class Printer:
    """Writes entries in the chosen format to stdout's bytes, a batch at a time."""

    def __init__(self, topic: str, fmt: str):
        self.topic = topic
        self.out = sys.stdout.buffer
        self.format = {"raw": self._raw, "hex": self._hex, "json": self._json}[fmt]

    def write(self, entries) -> None:
        if entries:
            self.out.write(b"".join(self.format(offset, data) for offset, data in entries))
            self.out.flush()

    @staticmethod
    def _raw(offset: int, data) -> bytes:
        return bytes(data) + b"\n"

    @staticmethod
    def _hex(offset: int, data) -> bytes:
        return f"{offset} {bytes(data).hex()}\n".encode()

    def _json(self, offset: int, data) -> bytes:
        record = {"topic": self.topic, "offset": offset}
        try:
            record["data"] = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            record["data_base64"] = base64.b64encode(data).decode("ascii")
        return (json.dumps(record, ensure_ascii=False) + "\n").encode()


def say(message: str) -> None:
    print(f"shmwal tail: {message}", file=sys.stderr, flush=True)


def cmd_tail(args) -> int:
    printer = Printer(args.topic, "json" if args.json else args.format)
    if args.group is not None:
        return _tail_group(args, printer)
    return _tail_peek(args, printer)


def _tail_peek(args, printer: Printer) -> int:
    from .peek import Peeker
    root = common.namespace_root(args)
    meta_path = os.path.join(root, "topics", args.topic, "meta")
    poll = POLL_MIN
    while not os.path.exists(meta_path):
        if not args.follow:
            raise common.CliError(f"no topic {args.topic!r} in {root}")
        time.sleep(poll)   # --follow waits for the topic to appear
        poll = min(POLL_MAX, poll * 2)
    peeker = Peeker(root, args.topic)
    try:
        start = args.start if args.start is not None else "earliest"
        offset = {"earliest": peeker.first_offset(), "latest": peeker.next_offset()}.get(start, start)
        left = args.count
        damaged = 0
        poll = POLL_MIN
        while left is None or left > 0:
            found = peeker.read(offset, 2000 if left is None else min(left, 2000), READ_BYTES)
            if found.skipped:
                say(f"{found.skipped} entries from offset {offset} on were deleted by retention "
                    f"before they were read; going on at {offset + found.skipped}")
            for bad, what in found.damaged:
                say(f"{args.topic}@{bad}: {what} (not printed)")
            damaged += len(found.damaged)
            printer.write(found.entries)
            if left is not None:
                left -= len(found.entries) + len(found.damaged)
            if found.next > offset + found.skipped:
                offset, poll = found.next, POLL_MIN
                continue
            offset = found.next
            if not args.follow:
                break
            time.sleep(poll)
            poll = min(POLL_MAX, poll * 2)
    finally:
        peeker.close()
    return 1 if damaged else 0


def _tail_group(args, printer: Printer) -> int:
    from ..errors import CorruptEntry
    client = common.connect(args)
    topic, group = args.topic, args.group
    try:
        if args.start == "earliest":
            client.seek(topic, 0, group=group)              # before the oldest: the oldest
        elif args.start == "latest":
            client.seek(topic, 2**63 - 1, group=group)      # past the end: waits at the end
        elif args.start is not None:
            client.seek(topic, args.start, group=group)
        left = args.count
        damaged = 0
        timeout = FOLLOW_SLICE if args.follow else 0
        while left is None or left > 0:
            try:
                if left is not None and left < 2000:
                    # Exactly ``left`` entries leave the group: a batch could take more.
                    entry = client.read_next(topic, group=group, timeout=timeout)
                    entries = [] if entry is None else [entry]
                else:
                    entries = client.batch_read(topic, READ_BYTES, group=group, timeout=timeout)
            except CorruptEntry as exc:
                say(f"{exc} (not printed; the group steps over it)")
                client.seek(topic, exc.offset + 1, group=group)
                damaged += 1
                if left is not None:
                    left -= 1
                continue
            printer.write([(e.offset, e.data) for e in entries])
            if left is not None:
                left -= len(entries)
            if not entries and not args.follow:
                break
    finally:
        client.close()
    return 1 if damaged else 0
