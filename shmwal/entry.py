"""The immutable ``Entry`` that reads return."""

from __future__ import annotations

from typing import NamedTuple


class Entry(NamedTuple):
    topic: str
    offset: int
    data: bytes


class Payloads(NamedTuple):
    """What ``batch_read_payloads`` returns: the entries' data, without an Entry each.

    Entries come in offset order with no gaps, so ``data[i]`` is the entry at offset
    ``first + i``. With nothing read, ``data`` is empty and ``first`` is the offset
    the group reads next.
    """

    first: int
    data: list


# Readers build entries with this instead of ``Entry(...)``: it skips the
# keyword machinery of NamedTuple.__new__, which costs more than the read.
make_entry = tuple.__new__
