"""The exactly-once check: pure functions, no processes, so tests can feed them bad data.

A consumer keeps the first 16 bytes of every data message it received (``messages.HEADER``)
and, after its clock stopped, folds them into a ``tally``: how many times it got each
(producer, seq). The parent adds up the tallies of a group of consumers that share the work
(work queue) or checks each consumer's alone (separate groups: each must see everything),
and ``verify`` says whether every message arrived exactly once: no gap, no duplicate, and
nothing that no producer sent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .messages import HEADER_LEN

# How many examples of each kind of error a failed check quotes.
_EXAMPLES = 5


@dataclass(frozen=True)
class Tally:
    """Receipts per message, indexed by ``offsets[producer] + seq``."""

    counts: np.ndarray      # uint32, one slot per message the producers sent
    foreign: int            # received messages no producer sent (bad id or seq out of range)


@dataclass(frozen=True)
class Verdict:
    ok: bool
    expected: int
    received: int
    missing: int
    duplicates: int
    foreign: int
    detail: str = ""


def _offsets(per_producer: list[int]) -> np.ndarray:
    return np.concatenate(([0], np.cumsum(per_producer, dtype=np.int64)))


def tally(heads: bytes | bytearray, per_producer: list[int], stride: int = HEADER_LEN) -> Tally:
    """Count receipts from concatenated message prefixes of ``stride`` bytes each.

    ``heads`` holds, for every received data message, its first ``stride`` bytes; only the
    first 16 (producer, seq) are read.
    """
    if len(heads) % stride:
        raise ValueError("heads is not a whole number of message prefixes")
    words = np.frombuffer(heads, dtype="<u8").reshape(-1, stride // 8)
    producer, seq = words[:, 0], words[:, 1]
    offsets = _offsets(per_producer)
    n_producers = len(per_producer)
    sent = np.asarray(per_producer, dtype=np.uint64)
    known = producer < n_producers
    # Index ``sent`` only where the producer is real; elsewhere any in-range index will do.
    valid = known & (seq < sent[np.where(known, producer, 0)])
    index = offsets[producer[valid].astype(np.int64)] + seq[valid].astype(np.int64)
    counts = np.bincount(index, minlength=int(offsets[-1])).astype(np.uint32)
    return Tally(counts=counts, foreign=int((~valid).sum()))


def combine(tallies: list[Tally]) -> Tally:
    """The tally of a work queue: the consumers' receipts added up."""
    if not tallies:
        raise ValueError("no tallies to combine")
    counts = np.sum([t.counts for t in tallies], axis=0, dtype=np.uint64).astype(np.uint32)
    return Tally(counts=counts, foreign=sum(t.foreign for t in tallies))


def _describe(counts: np.ndarray, per_producer: list[int], where: np.ndarray) -> str:
    offsets = _offsets(per_producer)
    found = np.flatnonzero(where)[:_EXAMPLES]
    producer = np.searchsorted(offsets, found, side="right") - 1
    return ", ".join(f"p{p}#{i - offsets[p]}" for p, i in zip(producer, found))


def verify(t: Tally, per_producer: list[int]) -> Verdict:
    """Every message sent by ``per_producer[p]`` messages from producer p arrived exactly once."""
    expected = int(sum(per_producer))
    if t.counts.shape != (expected,):
        raise ValueError(f"tally has {t.counts.shape[0]} slots, expected {expected}")
    missing_at = t.counts == 0
    extra = np.where(t.counts > 1, t.counts - 1, 0)
    missing, duplicates = int(missing_at.sum()), int(extra.sum())
    received = int(t.counts.sum()) + t.foreign
    ok = missing == 0 and duplicates == 0 and t.foreign == 0
    parts = []
    if missing:
        parts.append(f"{missing} missing (e.g. {_describe(t.counts, per_producer, missing_at)})")
    if duplicates:
        parts.append(f"{duplicates} duplicates (e.g. {_describe(t.counts, per_producer, extra > 0)})")
    if t.foreign:
        parts.append(f"{t.foreign} messages nobody sent")
    return Verdict(ok, expected, received, missing, duplicates, t.foreign, "; ".join(parts))


def verify_groups(tallies: list[Tally], per_producer: list[int], separate: bool) -> Verdict:
    """Work queue: the consumers together got everything once. Separate groups: each did."""
    if not separate:
        return verify(combine(tallies), per_producer)
    verdicts = [verify(t, per_producer) for t in tallies]
    bad = [(i, v) for i, v in enumerate(verdicts) if not v.ok]
    if not bad:
        first = verdicts[0]
        return Verdict(True, first.expected * len(verdicts), sum(v.received for v in verdicts), 0, 0, 0)
    return Verdict(
        ok=False,
        expected=sum(v.expected for v in verdicts),
        received=sum(v.received for v in verdicts),
        missing=sum(v.missing for v in verdicts),
        duplicates=sum(v.duplicates for v in verdicts),
        foreign=sum(v.foreign for v in verdicts),
        detail="; ".join(f"group {i}: {v.detail}" for i, v in bad),
    )
