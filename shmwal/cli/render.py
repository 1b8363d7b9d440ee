"""Tables on stdout: rich's on a terminal when it is installed, plain text otherwise.

Why rich (the ``cli`` extra, ``pip install 'shmwal[cli]'``): column widths that
fit the terminal, styles, and for ``stat --watch`` a live view that redraws in
place without flicker; hand-written, that is cursor arithmetic for every
terminal size.  It stays optional: on a pipe, in a file or with ``--json`` the
output is plain (one row a line, columns split by spaces, so ``grep``, ``awk``
and ``head`` work, and the data path costs no import), and without rich a
terminal gets the same plain tables, redrawn by clearing the screen.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Callable, NamedTuple


class Table(NamedTuple):
    header: tuple
    rows: list
    empty: str = ""        # said instead of rows when there are none ("" : the table is left out)


def rich_console(stream):
    """A rich Console for ``stream`` if it is a terminal and rich is installed, else None."""
    if not stream.isatty():
        return None
    try:
        from rich.console import Console
    except ImportError:
        return None
    return Console(file=stream, highlight=False)


def plain(heading: str | None, tables: list[Table]) -> str:
    parts = [heading] if heading else []
    for table in tables:
        if not table.rows and not table.empty:
            continue
        if parts:
            parts.append("")
        parts.extend(_plain_table(table))
    return "\n".join(parts)


def _plain_table(table: Table) -> list[str]:
    rows = [[str(x) for x in row] for row in table.rows]
    widths = [max(len(str(x)) for x in col) for col in zip(table.header, *rows)]
    line = "  ".join(f"{{:<{w}}}" if i == 0 else f"{{:>{w}}}" for i, w in enumerate(widths))
    out = [line.format(*table.header).rstrip()]
    out += [line.format(*row).rstrip() for row in rows]
    if not rows:
        out.append(table.empty)
    return out


def rich_view(heading: str | None, tables: list[Table]):
    from rich.console import Group
    from rich.table import Table as RichTable
    from rich.text import Text
    parts = [Text(heading, style="bold")] if heading else []
    for table in tables:
        if not table.rows and not table.empty:
            continue
        if not table.rows:
            parts.append(Text(table.empty, style="dim"))
            continue
        view = RichTable(show_edge=False, pad_edge=False, header_style="bold")
        for i, name in enumerate(table.header):
            view.add_column(str(name), justify="left" if i == 0 else "right", no_wrap=i == 0)
        for row in table.rows:
            view.add_row(*[str(x) for x in row])
        parts.append(view)
    return Group(*parts)


def show(heading: str | None, tables: list[Table], stream=None) -> None:
    stream = stream or sys.stdout
    console = rich_console(stream)
    if console is not None:
        console.print(rich_view(heading, tables))
    else:
        stream.write(plain(heading, tables) + "\n")


def watch(snapshot: Callable[[], object], view: Callable[[object], tuple], interval: float,
          as_json: bool, stream=None) -> None:
    """Show ``view(snapshot())`` every ``interval`` seconds until interrupted.

    ``view`` gives (heading, tables). ``as_json``: one JSON document a line, each
    refresh (JSON Lines). A terminal is redrawn in place; a pipe gets each
    refresh after a blank line.
    """
    stream = stream or sys.stdout
    if as_json:
        while True:
            stream.write(json.dumps(snapshot()) + "\n")
            stream.flush()
            time.sleep(interval)
    console = rich_console(stream)
    if console is not None:
        from rich.live import Live
        with Live(console=console, auto_refresh=False) as live:
            while True:
                live.update(rich_view(*view(snapshot())), refresh=True)
                time.sleep(interval)
    first = True
    while True:
        text = plain(*view(snapshot()))
        if stream.isatty():
            stream.write("\x1b[H\x1b[2J" + text + "\n")
        else:
            stream.write(("" if first else "\n") + text + "\n")
        stream.flush()
        first = False
        time.sleep(interval)
