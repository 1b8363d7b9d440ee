"""``shmwal stat`` (topics, groups, lag, files; ``--watch`` refreshes) and ``shmwal verify``.

Both read the namespace's files, so they work whether or not a broker runs:
published data never changes, so looking at it needs no lock.
"""

from __future__ import annotations

import os

from . import common, render
from .render import Table

STAT_HELP = "topics, offsets, groups, lag, files and bytes (works with or without a running broker)"
VERIFY_HELP = "check every kept entry's checksum; name each damaged topic and offset (exit 1 if any)"


def add_parsers(sub) -> None:
    p = sub.add_parser("stat", help=STAT_HELP, description=STAT_HELP[0].upper() + STAT_HELP[1:] + ".",
                       formatter_class=common.HelpFormatter)
    common.add_namespace_args(p)
    common.add_json_arg(p, "the namespace, its topics and groups")
    p.add_argument("--watch", nargs="?", const=1.0, default=None, type=common.positive_float,
                   metavar="SECONDS",
                   help="refresh every SECONDS (default 1) until Ctrl-C: in place on a terminal, "
                        "one snapshot after another on a pipe, one JSON document a line with --json")
    p.set_defaults(run=cmd_stat)
    p = sub.add_parser("verify", help=VERIFY_HELP, description=VERIFY_HELP[0].upper() + VERIFY_HELP[1:] + ".",
                       formatter_class=common.HelpFormatter)
    common.add_namespace_args(p)
    common.add_json_arg(p, "the damage found")
    p.set_defaults(run=cmd_verify)


def snapshot(root: str) -> dict:
    """{"root", "broker", "topics": {topic: topic_stats}} read from the files."""
    from ..server.verify import open_topics, topic_stats
    topics = {}
    for name, meta in open_topics(root).items():
        try:
            topics[name] = topic_stats(meta)
        finally:
            meta.close()
    return {"root": root, "broker": common.broker_status(root), "disk_bytes": allocated_under(root), "topics": topics}


def allocated_under(root: str) -> int:
    """What the namespace takes on disk, as du counts it (st_blocks, not apparent sizes)."""
    total = 0
    for parent, dirs, names in os.walk(root):
        for name in dirs + names:
            try:
                total += os.lstat(os.path.join(parent, name)).st_blocks * 512
            except OSError:
                pass   # removed meanwhile
    return total


def view(snap: dict) -> tuple[str, list[Table]]:
    topics = snap["topics"]
    has_disk = any("disk_bytes" in s for s in topics.values())
    header = ("topic", "entries", "first", "next", "bytes") + (("disk",) if has_disk else ()) + \
             ("files", "blocks", "damaged")
    rows = [(name, s["entries"], s["first_offset"], s["next_offset"], size(s["bytes"]))
            + ((size(s.get("disk_bytes", 0)),) if has_disk else ())
            + (s["files"], s["blocks"], s.get("damaged") or "-")
            for name, s in topics.items()]
    title = f"{snap['root']}  broker: {snap['broker']}"
    if "disk_bytes" in snap:
        title += f"  disk: {size(snap['disk_bytes'])} allocated"
    return title, [Table(header, rows, "(no topics)"), groups_table(topics)]


def groups_table(topics: dict, empty: str = "") -> Table:
    has_skipped = any("skipped" in g for s in topics.values() for g in s["groups"].values())
    header = ("topic", "group", "position", "lag") + (("skipped",) if has_skipped else ())
    rows = [(name, group, g["position"], g["lag"]) + ((g.get("skipped", 0),) if has_skipped else ())
            for name, s in topics.items() for group, g in s["groups"].items()]
    return Table(header, rows, empty)


def cmd_stat(args) -> int:
    root = common.namespace_root(args)
    if args.watch is not None:
        render.watch(lambda: snapshot(root), view, args.watch, args.json)
    snap = snapshot(root)
    if args.json:
        import json
        print(json.dumps(snap, indent=2))
    else:
        render.show(*view(snap))
    return 0


def cmd_verify(args) -> int:
    """Entries (``topic@offset: ...``) and meta words (``topics/<t>/meta +<offset>: ...``):
    exactly what a broker start would repair, rebuild or refuse."""
    from ..blocks.files import BlockFiles
    from ..server.verify import open_topics, unusable_meta_files, verify_meta, verify_topic
    root = common.namespace_root(args)
    files = BlockFiles(os.path.join(root, "blocks"))
    found: dict[str, list] = {}
    counts = {"entries": 0}
    meta_lines: dict[str, list] = {name: [why] for name, why in unusable_meta_files(root).items()}
    try:
        for name, meta in open_topics(root).items():
            try:
                lines, walkable = verify_meta(meta, files)
                if lines:
                    meta_lines[name] = lines
                found[name] = verify_topic(meta, files, counts) if walkable else []
            finally:
                meta.close()
    finally:
        files.close()
    damaged = sum(len(problems) for problems in found.values()) + sum(map(len, meta_lines.values()))
    topics = len(set(found) | set(meta_lines))
    if args.json:
        import json
        print(json.dumps({"root": root, "topics": topics, "entries": counts["entries"], "damaged": damaged,
                          "damage": [{"topic": name, "offset": offset, "problem": what}
                                     for name, problems in found.items() for offset, what in problems],
                          "meta": [{"topic": name, "problem": line}
                                   for name, lines in meta_lines.items() for line in lines]},
                         indent=2))
    else:
        for name, lines in meta_lines.items():
            for line in lines:
                print(line)
        for name, problems in found.items():
            for offset, what in problems:
                print(f"{name}@{offset}: {what}")
        print(f"verified {counts['entries']:,} entries in {topics} topic(s) in {root}: "
              f"{f'{damaged} damaged' if damaged else 'no damage'}")
    return 1 if damaged else 0


def size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)
