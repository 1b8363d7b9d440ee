"""docs/CLI.md, generated from the commands' own ``--help``, so the two cannot drift.

    python -m shmwal.cli.docs --write docs/CLI.md     # regenerate
    python -m shmwal.cli.docs                         # print it

tests/test_docs.py regenerates it and compares with the file.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys

WIDTH = "100"     # help is wrapped to the terminal's width: fixed here, so the file is stable
HEADER = """\
# shmwal command line

Generated from each command's `--help` by `python -m shmwal.cli.docs --write docs/CLI.md`
(`tests/test_docs.py` checks that this file is what the commands say). The Python API is in
[API.md](API.md).

Conventions of every command: `--data-dir DIR` and `--key KEY` name the broker's namespace
(default `$SHMWAL_DATA_DIR`, else `./shmwal_data`; key `default`); `--json` prints data as
JSON; exit status 0 on success, 1 on a failure (one line on stderr, no traceback), 2 for a
bad option or value (one line naming the valid values); a closed standard output
(`shmwal tail --follow | head -1`) ends the command by SIGPIPE, silently, like other Unix
tools (status 141 in the shell); Ctrl-C ends `--follow` and `--watch` with status 0.
Tables are drawn with `rich` on a terminal when the `cli` extra is installed
(`pip install 'shmwal[cli]'`), plain text otherwise.
"""


def command_help(args: list[str]) -> str:
    """What ``shmwal ARGS --help`` prints."""
    from . import main
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main([*args, "--help"])
        except SystemExit:
            pass
    return out.getvalue()


def commands() -> list[str]:
    from . import build_parser
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    return list(sub.choices)


def generate() -> str:
    saved = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = WIDTH
    try:
        parts = [HEADER]
        for args in [[]] + [[name] for name in commands()]:
            title = " ".join(["shmwal", *args])
            parts.append(f"## `{title}`\n\n```text\n{command_help(args).rstrip()}\n```\n")
        return "\n".join(parts)
    finally:
        if saved is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = saved


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    text = generate()
    if argv[:1] == ["--write"] and len(argv) == 2:
        with open(argv[1], "w") as f:
            f.write(text)
        return 0
    if argv:
        print("usage: python -m shmwal.cli.docs [--write PATH]", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
