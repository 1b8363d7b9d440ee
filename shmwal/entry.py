"""The immutable ``Entry`` that reads return."""

from __future__ import annotations

from typing import NamedTuple


class Entry(NamedTuple):
    topic: str
    offset: int
    data: bytes


# Readers build entries with this instead of ``Entry(...)``: it skips the
# keyword machinery of NamedTuple.__new__, which costs more than the read.
make_entry = tuple.__new__
