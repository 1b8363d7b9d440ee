"""Which hot path this process runs: the compiled one (shmwal._hot) or pure Python.

``shmwal/_native/hot.c`` compiles the per-entry paths of append.py and
read.py (same file format, same robust mutexes): processes with and without
it share topics.  It is used when it was built and its layout constants (every
constant of layout.py, compiled in through the header setup.py generates from
it, ``_native/layout.h``) equal layout.py's now; ``SHMWAL_PURE_PYTHON=1`` turns it off (the tests run both).
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
    expected = L.c_constants()
    mismatched = sorted(name for name in expected.keys() | _hot.LAYOUT.keys()
                        if expected.get(name) != _hot.LAYOUT.get(name))
    if mismatched:   # a stale build against an older layout: never write with it
        raise ImportError(f"shmwal._hot was built for another layout ({', '.join(mismatched)}): rebuild it")
    _hot.configure(Entry, sync)
    return _hot


native = _load()
