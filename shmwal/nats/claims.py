"""What a StrictlyAtOnce group has claimed, as one versioned record per group.

Why claims at all: ``client.py``'s module docstring. How they are kept: each
(topic, group) has one subject in the claims stream, and every message on it
is the group's whole claim state after one read: the consumer generation it
belongs to and the stream sequences claimed in it, as sorted disjoint ranges.
A reader that claims publishes the next state, version ``v + 1``, with
``Nats-Msg-Id`` ``<subject>.<v + 1>``. JetStream checks message ids when it
applies a message, in log order, on every replica, so of two readers that both
saw version ``v`` exactly one stores ``v + 1``; the other is told "duplicate",
reads the newest state and tries again on top of it. That is a compare-and-set
a whole batch shares: one write for a read of a thousand entries, where one
claim per entry made the servers do as much work for a read as for the append.

(``Nats-Expected-Last-Subject-Sequence`` would read more naturally, but
nats-server 2.9 checks it for a clustered stream only before proposing, against
what the leader has applied: two claims in flight on the same version both pass.)

A version's id is remembered for the claims stream's duplicate window, so a
reader must not build on a state it last knew to be current longer ago than
that: ``ClaimLog.fresh`` says when to read the newest state first.
"""

from __future__ import annotations

import bisect
import json

# Claimed ranges kept in one state. Ranges only stay apart around entries the
# group never claimed (read by an AtLeastOnce client, or dropped by the
# stream's limits before anyone read them); past this many, the lowest are
# forgotten, as claims older than the window are (a redelivery of those would
# be returned again).
MAX_RANGES = 256


class ClaimLog:
    """One group's claim state as this client last knew it."""

    __slots__ = ("version", "generation", "ranges", "known_at")

    def __init__(self):
        self.version = 0            # of the newest state seen; 0: none
        self.generation = None      # None: no state (never claimed, or older than the window)
        self.ranges: list = []      # [[first, last], ...] stream sequences, sorted, disjoint
        self.known_at = float("-inf")   # monotonic time the version was last known current

    def fresh(self, now: float, window: float) -> bool:
        return now - self.known_at < window / 2

    def adopt(self, message: dict | None, known_at: float) -> None:
        """Take the newest stored state (None: the subject holds none)."""
        if message is None:
            # Every reader that finds the subject empty must propose the same version, or
            # two of them would both store theirs; none of its ids is remembered any more
            # (the stream keeps states longer than their ids: client._ensure_claims).
            self.version, self.generation, self.ranges = 0, None, []
        else:
            self.version = message["v"]
            self.generation = message["g"]
            self.ranges = [list(r) for r in message["r"]]
        self.known_at = known_at

    def unclaimed(self, seqs: list, generation: str) -> list[bool]:
        """Whether each sequence is still free to claim in ``generation`` (a state of
        another generation claims nothing of this one)."""
        if self.generation != generation:
            return [True] * len(seqs)
        starts = [r[0] for r in self.ranges]
        free = []
        for seq in seqs:
            k = bisect.bisect_right(starts, seq) - 1
            free.append(k < 0 or seq > self.ranges[k][1])
        return free

    def proposal(self, seqs: list, generation: str, token: str) -> tuple[int, bytes, list]:
        """The next state with ``seqs`` claimed: (version, payload, ranges)."""
        base = self.ranges if self.generation == generation else []
        ranges = merged(base, seqs)
        version = self.version + 1
        payload = json.dumps({"v": version, "g": generation, "r": ranges, "t": token},
                             separators=(",", ":")).encode()
        return version, payload, ranges

    def took(self, version: int, generation: str, ranges: list, known_at: float) -> None:
        self.version, self.generation, self.ranges, self.known_at = version, generation, ranges, known_at


def merged(ranges: list, seqs: list) -> list:
    """``ranges`` with ``seqs`` added, as sorted disjoint ranges, adjacent ones joined;
    at most MAX_RANGES, the highest kept."""
    points = sorted(set(seqs))
    spans = [list(r) for r in ranges] + [[s, s] for s in points]
    spans.sort()
    out: list = []
    for first, last in spans:
        if out and first <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], last)
        else:
            out.append([first, last])
    return out[-MAX_RANGES:]


def decode(data: bytes) -> dict:
    state = json.loads(data)
    if not isinstance(state, dict) or not {"v", "g", "r", "t"} <= state.keys():
        raise ValueError("not a claim state")
    return state
