"""``shmwal`` on the command line.

One module per job: ``stat`` (stat, verify), ``tail`` (with ``peek``, reading
without a group), ``produce``, ``groups``; ``common`` holds what every command
shares (options, one-line errors, exit codes, a closed stdout) and ``render``
the tables.  ``shmwal broker`` is the broker process itself
(``server/main.py``); ``demo`` and ``bench`` parse their own options.

To add a command: a module with ``add_parsers(sub)`` that sets ``run`` on its
parser, listed in ``COMMANDS`` below (docs/CLI.md is generated from the
parsers: ``python -m shmwal.cli.docs``).
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import common

COMMANDS = ("stat", "tail", "produce", "groups", "bridge")          # modules of this package
OWN_PARSERS = {                                          # commands that parse their own options
    "demo": ("shmwal.demo", "a multi-process demo with progress and a summary"),
    "bench": ("shmwal.bench.cli", "the benchmark race against the peers (needs: pip install 'shmwal[bench]')"),
}
DESCRIPTION = """\
A multi-process, shared-memory, persisted log broker.

Every command takes --data-dir DIR and --key KEY to name the broker's namespace
(default: $SHMWAL_DATA_DIR, else ./shmwal_data; key 'default'), and --json where
it prints data; demo and bench default to fresh temporary directories instead, and
bench has no --key. 'shmwal COMMAND --help' explains each command's options.
Exit status: 0 success, 1 failure (one line on stderr), 2 bad options."""


def version() -> str:
    from .. import __version__
    return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = common.Parser(prog="shmwal", description=DESCRIPTION, formatter_class=common.HelpFormatter)
    parser.add_argument("--version", action="version", version=f"shmwal {version()}",
                        help="print shmwal's version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from ..server.main import BROKER_DESCRIPTION, add_broker_arguments
    broker = sub.add_parser("broker", help="run a broker in the foreground until SIGINT or SIGTERM",
                            description=BROKER_DESCRIPTION, formatter_class=common.HelpFormatter)
    add_broker_arguments(broker)
    broker.set_defaults(run=_run_broker)
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").add_parsers(sub)
    for name, (_module, help_text) in OWN_PARSERS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def own_parser(name: str) -> argparse.ArgumentParser | None:
    """The parser of a command that parses its own options (for docs/CLI.md), if it exposes one."""
    module = importlib.import_module(OWN_PARSERS[name][0])
    make = getattr(module, "parser", None)
    return make() if make is not None else None


def _run_broker(args) -> int:
    from ..server.main import run_broker
    return run_broker(args)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0] in OWN_PARSERS:
        module = importlib.import_module(OWN_PARSERS[argv[0]][0])
        return common.run(lambda _args: module.main(argv[1:]), argparse.Namespace(), f"shmwal {argv[0]}")
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "broker":
        return args.run(args)      # the broker process: its own logging, its own exit codes
    return common.run(args.run, args, f"shmwal {args.command}")


if __name__ == "__main__":
    sys.exit(main())
