"""``shmwal groups``: consumer groups with position and lag; ``--delete`` removes one."""

from __future__ import annotations

import argparse
import json

from . import common, render
from .stat import groups_table, snapshot

HELP = "list consumer groups with their position and lag, or delete one (--delete TOPIC GROUP)"
EXAMPLES = """\
examples:
  shmwal groups                      every topic's groups
  shmwal groups orders --json        one topic's groups as JSON
  shmwal groups --delete orders old  remove group 'old': it no longer holds back deletion
"""


def add_parsers(sub) -> None:
    p = sub.add_parser("groups", help=HELP, description=HELP[0].upper() + HELP[1:] + ".", epilog=EXAMPLES,
                       formatter_class=common.HelpFormatter)
    p.add_argument("topic", nargs="?", type=common.name_arg("topic"), metavar="TOPIC",
                   help="only this topic's groups (default: every topic's)")
    p.add_argument("--delete", nargs=2, metavar=("TOPIC", "GROUP"), default=None, action=TopicAndGroup,
                   help="delete GROUP of TOPIC through the broker: its cursor goes, and it no longer "
                        "keeps entries it has not read from being deleted")
    common.add_json_arg(p, "the groups (position: the offset the group reads next; lag: entries "
                           "written that it has not read)")
    common.add_namespace_args(p)
    p.set_defaults(run=cmd_groups)


class TopicAndGroup(argparse.Action):
    """``--delete TOPIC GROUP``: both names checked as such (a bad one is a usage error)."""

    def __call__(self, parser, namespace, values, option_string=None):
        for value, what in zip(values, ("topic", "group")):
            try:
                common.name_arg(what)(value)
            except argparse.ArgumentTypeError as exc:
                parser.error(f"argument {option_string}: {exc}")
        setattr(namespace, self.dest, values)


def cmd_groups(args) -> int:
    if args.delete is not None:
        if args.topic is not None:
            raise common.UsageError("give either TOPIC or --delete TOPIC GROUP, not both")
        return _delete(args, *args.delete)
    root = common.namespace_root(args)
    topics = snapshot(root)["topics"]
    if args.topic is not None:
        if args.topic not in topics:
            raise common.CliError(f"no topic {args.topic!r} in {root}")
        topics = {args.topic: topics[args.topic]}
    if args.json:
        print(json.dumps({name: s["groups"] for name, s in topics.items()}, indent=2))
    else:
        render.show(None, [groups_table(topics, "(no groups)")])
    return 0


def _delete(args, topic: str, group: str) -> int:
    client = common.connect(args)
    try:
        existed = client.delete_group(topic, group)
    finally:
        client.close()
    if args.json:
        print(json.dumps({"topic": topic, "group": group, "deleted": existed}))
    elif existed:
        print(f"deleted group {group!r} of topic {topic!r}")
    else:
        print(f"topic {topic!r} has no group {group!r}: nothing to delete")
    return 0
