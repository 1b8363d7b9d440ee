"""Consistency modes and fsync schedules (API.md "Delivery and durability").

They are plain immutable values so that the broker can hand them to clients in
its handshake and the command line can parse them back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class StrictlyAtOnce:
    """A checkpointed read moves the group cursor before it returns: never redelivered."""

    def to_wire(self) -> dict:
        return {"mode": "strict"}


@dataclass(frozen=True)
class AtLeastOnce:
    """Reads that may be delivered again after a crash: at most ``persist_every`` per group.

    What the code does, in both modes alike: a checkpointed read moves the cursor in the
    shared, file-backed meta page, so a killed process (any, the broker too) never loses
    a cursor move; against a power cut the cursor is as durable as the fsync schedule
    (server/fsync.py: FsyncEvery's interval; never under NoFsync).  ``persist_every`` is
    carried to every client (``client.consistency``) but no code counts reads against it:
    nothing is made durable every N reads.  (Only ``SyncEach`` with ``StrictlyAtOnce``
    makes each read's cursor page durable before the read returns.)
    """

    persist_every: int = 1000

    def __post_init__(self):
        if isinstance(self.persist_every, bool) or not isinstance(self.persist_every, int):
            raise TypeError("persist_every must be an int")
        if self.persist_every < 1:
            raise ValueError("persist_every must be >= 1")

    def to_wire(self) -> dict:
        return {"mode": "at-least-once", "persist_every": self.persist_every}


@dataclass(frozen=True)
class SyncEach:
    """Every append is fsynced before it returns."""

    def to_wire(self) -> dict:
        return {"fsync": "each"}


@dataclass(frozen=True)
class FsyncEvery:
    """Written data is fsynced within ``milliseconds``."""

    milliseconds: float = 200

    def __post_init__(self):
        ms = self.milliseconds
        if isinstance(ms, bool) or not isinstance(ms, (int, float)):
            raise TypeError("milliseconds must be a number")
        if not math.isfinite(ms) or ms <= 0:
            raise ValueError("milliseconds must be a positive, finite number")

    def to_wire(self) -> dict:
        return {"fsync": "every", "milliseconds": self.milliseconds}


@dataclass(frozen=True)
class NoFsync:
    """Never fsynced: survives any process crash, not a power cut."""

    def to_wire(self) -> dict:
        return {"fsync": "none"}


@dataclass(frozen=True)
class Retention:
    """What a topic keeps (API.md "Groups and retention").

    No entry is deleted while a group of its topic has not read it, unless
    ``max_bytes`` forces it.  Entries every group has read stay for replay while
    they are among the newest ``bytes`` (payload) of their topic or younger than
    ``seconds`` (either keeps them; ``bytes=0`` and ``seconds=None`` delete consumed
    data as soon as it can go).  ``max_bytes`` caps the bytes a topic's blocks take:
    past it the oldest blocks go even if unread (the lagging groups count what they
    lost as "skipped").  Deletion goes by whole blocks, the newest (written) one never.
    """

    bytes: int = 16 * 2**20
    seconds: float | None = None
    max_bytes: int | None = None

    def __post_init__(self):
        for label, value, optional in (("bytes", self.bytes, False), ("max_bytes", self.max_bytes, True)):
            if value is None and optional:
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"Retention {label} must be an int{' or None' if optional else ''}")
            if value < 0:
                raise ValueError(f"Retention {label} must be >= 0, got {value}")
        if self.seconds is not None:
            if isinstance(self.seconds, bool) or not isinstance(self.seconds, (int, float)):
                raise TypeError("Retention seconds must be a number or None")
            if math.isnan(self.seconds) or self.seconds < 0:
                raise ValueError(f"Retention seconds must be >= 0, got {self.seconds}")

    def to_wire(self) -> dict:
        return {"bytes": self.bytes, "seconds": self.seconds, "max_bytes": self.max_bytes}


Consistency = StrictlyAtOnce | AtLeastOnce
FsyncSchedule = SyncEach | FsyncEvery | NoFsync


def consistency_from_wire(wire: dict) -> Consistency:
    if wire.get("mode") == "strict":
        return StrictlyAtOnce()
    return AtLeastOnce(persist_every=int(wire["persist_every"]))


def fsync_from_wire(wire: dict) -> FsyncSchedule:
    kind = wire.get("fsync")
    if kind == "each":
        return SyncEach()
    if kind == "none":
        return NoFsync()
    return FsyncEvery(milliseconds=wire["milliseconds"])


def parse_consistency(text: str) -> Consistency:
    """``strict`` or ``at-least-once:N`` (the command line's spelling)."""
    if text == "strict":
        return StrictlyAtOnce()
    if text == "at-least-once":
        return AtLeastOnce()
    if text.startswith("at-least-once:"):
        return AtLeastOnce(persist_every=int(text.partition(":")[2]))
    raise ValueError(f"unknown consistency {text!r}: use strict or at-least-once:N")


def parse_fsync(text: str) -> FsyncSchedule:
    """``each``, ``none`` or a number of milliseconds."""
    if text == "each":
        return SyncEach()
    if text == "none":
        return NoFsync()
    try:
        return FsyncEvery(milliseconds=float(text))
    except ValueError:
        raise ValueError(f"unknown fsync schedule {text!r}: use each, none or MILLISECONDS") from None
