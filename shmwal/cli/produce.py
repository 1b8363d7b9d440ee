"""``shmwal produce``: append one entry per line of standard input.

Lines are appended in batches (one ``batch_append`` of up to 2,000 lines or
BATCH_BYTES each) of whatever standard input has ready: a file or a pipe
goes in at batch speed, while a person typing sees each line appended as
soon as Enter is pressed (a read returns what is there, it does not wait
for a full batch).
"""

from __future__ import annotations

import json
import os
import sys

from . import common
from ..blocks import layout as L

HELP = "append one entry per line of standard input (the newline is not part of the entry)"
EXAMPLES = """\
examples:
  printf 'a\\nb\\n' | shmwal produce orders
  shmwal produce orders < events.jsonl
"""
READ_SIZE = 1 << 20
BATCH_BYTES = 16 << 20


def add_parsers(sub) -> None:
    p = sub.add_parser("produce", help=HELP, description=HELP[0].upper() + HELP[1:] + ".", epilog=EXAMPLES,
                       formatter_class=common.HelpFormatter)
    p.add_argument("topic", type=common.name_arg("topic"), metavar="TOPIC",
                   help="the topic to append to (made by its first append)")
    p.add_argument("--skip-empty", action="store_true", help="append no entry for an empty line")
    p.add_argument("--json", action="store_true",
                   help="at the end, print {\"topic\", \"entries\", \"first_offset\", \"next_offset\"} "
                        "(default: print nothing)")
    common.add_namespace_args(p)
    p.set_defaults(run=cmd_produce)


def lines(fd: int):
    """Lists of complete lines (without their newline), one list per read of ``fd``.

    The last line needs no newline: it ends at end of input.
    """
    pending = b""
    while True:
        chunk = os.read(fd, READ_SIZE)
        if not chunk:
            if pending:
                yield [pending]
            return
        parts = (pending + chunk).split(b"\n")
        pending = parts.pop()
        if parts:
            yield parts


def batches(items: list):
    """``items`` cut into batches that batch_append accepts (count and bytes)."""
    start, size = 0, 0
    for i, item in enumerate(items):
        if i > start and (i - start >= L.MAX_BATCH_ENTRIES or size + len(item) > BATCH_BYTES):
            yield items[start:i]
            start, size = i, 0
        size += len(item)
    if start < len(items):
        yield items[start:]


def cmd_produce(args) -> int:
    client = common.connect(args)
    first = last = None
    count = 0
    try:
        for chunk in lines(sys.stdin.fileno()):
            if args.skip_empty:
                chunk = [line for line in chunk if line]
            for batch in batches(chunk):
                written = client.batch_append(args.topic, batch)
                first = written.start if first is None else first
                last = written.stop
                count += len(written)
    finally:
        client.close()
    if args.json:
        print(json.dumps({"topic": args.topic, "entries": count,
                          "first_offset": first, "next_offset": last}))
    return 0
