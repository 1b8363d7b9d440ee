"""``shmwal`` on the command line: broker | stat | verify | demo | bench."""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys

from .ipc import names


def _namespace_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", default=None, help="default: $SHMWAL_DATA_DIR, else ./shmwal_data")
    parser.add_argument("--key", default=None, help="namespace inside the data directory")


def broker_status(root: str) -> str:
    """'running (pid N)' or 'not running', from the broker's flock."""
    path = os.path.join(root, "broker.lock")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        return "not running"
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return "not running"
    except BlockingIOError:
        try:
            with open(os.path.join(root, "broker.run")) as f:
                return f"running (pid {json.load(f)['pid']})"
        except (OSError, ValueError, KeyError):
            return "running"
    finally:
        os.close(fd)


def cmd_stat(args) -> int:
    from .server.verify import open_topics, topic_stats
    root = names.namespace_dir(args.data_dir, args.key)
    if not os.path.isdir(root):
        print(f"no shmwal data in {root}", file=sys.stderr)
        return 1
    topics = {name: topic_stats(meta) for name, meta in open_topics(root).items()}
    if args.json:
        print(json.dumps({"root": root, "broker": broker_status(root), "topics": topics}, indent=2))
        return 0
    print(f"{root}  broker: {broker_status(root)}")
    header = ("topic", "entries", "first", "next", "bytes", "files", "blocks", "damaged")
    rows = [(name, s["entries"], s["first_offset"], s["next_offset"], _size(s["bytes"]),
             s["files"], s["blocks"], s["damaged"] or "-") for name, s in topics.items()]
    _table(header, rows)
    group_rows = [(name, group, g["position"], g["lag"])
                  for name, s in topics.items() for group, g in s["groups"].items()]
    if group_rows:
        print()
        _table(("topic", "group", "position", "lag"), group_rows)
    return 0


def cmd_verify(args) -> int:
    from .blocks.files import BlockFiles
    from .server.verify import open_topics, verify_topic
    root = names.namespace_dir(args.data_dir, args.key)
    if not os.path.isdir(root):
        print(f"no shmwal data in {root}", file=sys.stderr)
        return 1
    files = BlockFiles(os.path.join(root, "blocks"))
    damaged = 0
    checked = 0
    for name, meta in open_topics(root).items():
        problems = verify_topic(meta, files)
        checked += 1
        for offset, what in problems:
            print(f"{name}@{offset}: {what}")
        damaged += len(problems)
    files.close()
    print(f"verified {checked} topic(s) in {root}: {'no damage' if not damaged else f'{damaged} damaged'}")
    return 1 if damaged else 0


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _table(header, rows) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)] if rows else [len(h) for h in header]
    line = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    print(line.format(*header))
    for row in rows:
        print(line.format(*[str(x) for x in row]))
    if not rows:
        print("(no topics)")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="shmwal", description="A shared-memory, persisted log broker.")
    sub = parser.add_subparsers(dest="command", required=True)
    from .server.main import add_broker_arguments
    add_broker_arguments(sub.add_parser("broker", help="run a broker in the foreground"))
    p = sub.add_parser("stat", help="topics, offsets, groups, lag, files and bytes")
    _namespace_args(p)
    p.add_argument("--json", action="store_true")
    p = sub.add_parser("verify", help="check every entry's checksum; report damage by topic and offset")
    _namespace_args(p)
    sub.add_parser("demo", help="a multi-process demo with progress and a summary", add_help=False)
    sub.add_parser("bench", help="the benchmark race against the peers", add_help=False)
    if argv[:1] in (["demo"], ["bench"]):
        module = __import__(f"shmwal.{argv[0]}", fromlist=["main"])
        return module.main(argv[1:])
    args = parser.parse_args(argv)
    if args.command == "broker":
        from .server.main import run_broker
        return run_broker(args)
    return {"stat": cmd_stat, "verify": cmd_verify}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
