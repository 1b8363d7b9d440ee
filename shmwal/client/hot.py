"""Which hot path this process runs: the compiled one (shmwal._hot) or pure Python.

``shmwal/_native/hot.c`` compiles the per-entry paths of append.py and
read.py (same file format, same robust mutexes): processes with and without
it share topics.  It is used when it was built and its layout constants equal
layout.py's; ``SHMWAL_PURE_PYTHON=1`` turns it off (the tests run both).
"""

from __future__ import annotations

import os

from ..ipc import sync
from ..blocks import layout as L
from ..entry import Entry


def _load():
    if os.environ.get("SHMWAL_PURE_PYTHON", "") not in ("", "0"):
        return None
    try:
        from .. import _hot
    except ImportError:
        return None
    mismatched = [name for name, value in _hot.LAYOUT.items() if getattr(L, name) != value]
    if mismatched:   # a stale build against an older layout: never write with it
        raise ImportError(f"shmwal._hot was built for another layout ({', '.join(mismatched)}): rebuild it")
    _hot.configure(Entry, sync)
    return _hot


native = _load()
