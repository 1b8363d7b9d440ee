"""A group's claim state on its own (shmwal/nats/claims.py): no cluster needed."""

from __future__ import annotations

import json

import pytest

from shmwal.nats.claims import MAX_RANGES, ClaimLog, decode, merged

pytestmark = pytest.mark.timeout(10)


@pytest.mark.parametrize("ranges, seqs, expected", [
    ([], [3, 1, 2], [[1, 3]]),
    ([], [5, 1, 3], [[1, 1], [3, 3], [5, 5]]),
    ([[1, 3]], [4, 5], [[1, 5]]),                       # adjacent joins
    ([[1, 3], [7, 9]], [4, 5, 6], [[1, 9]]),            # a gap filled joins both sides
    ([[1, 3], [7, 9]], [2, 8], [[1, 3], [7, 9]]),       # claimed again: unchanged
    ([[5, 6]], [1, 1, 1], [[1, 1], [5, 6]]),
])
def test_merged_keeps_sorted_disjoint_joined_ranges(ranges, seqs, expected):
    assert merged(ranges, seqs) == expected


def test_merged_forgets_the_lowest_ranges_past_the_cap():
    seqs = list(range(1, 2 * (MAX_RANGES + 10), 2))     # every other sequence: all apart
    out = merged([], seqs)
    assert len(out) == MAX_RANGES
    assert out == [[s, s] for s in seqs[-MAX_RANGES:]]


def _log(generation, ranges, version=7):
    log = ClaimLog()
    log.adopt({"v": version, "g": generation, "r": ranges, "t": "x"}, known_at=100.0)
    return log


def test_unclaimed_is_per_sequence_and_per_generation():
    log = _log("g1", [[1, 3], [7, 9]])
    assert log.unclaimed([0, 1, 3, 4, 6, 7, 9, 10], "g1") == [True, False, False, True, True, False, False, True]
    assert log.unclaimed([1, 8], "g2") == [True, True]   # another generation claims nothing of this one


def test_a_proposal_is_the_next_version_on_top_of_its_generation_only():
    log = _log("g1", [[1, 3]])
    version, payload, ranges = log.proposal([4, 5], "g1", "tok")
    assert (version, ranges) == (8, [[1, 5]])
    assert decode(payload) == {"v": 8, "g": "g1", "r": [[1, 5]], "t": "tok"}
    version, payload, ranges = log.proposal([10], "g2", "tok")
    assert (version, ranges) == (8, [[10, 10]])          # a new generation starts empty
    assert (log.version, log.ranges) == (7, [[1, 3]])    # proposing changes nothing


def test_an_empty_subject_numbers_versions_afresh_and_freshness_follows_the_window():
    log = _log("g1", [[1, 3]], version=41)
    log.adopt(None, known_at=200.0)
    assert (log.version, log.generation, log.ranges) == (0, None, [])   # what every reader finds
    assert log.proposal([1], "g1", "t")[0] == 1
    assert log.fresh(200.0 + 149.0, 300.0) and not log.fresh(200.0 + 151.0, 300.0)


@pytest.mark.parametrize("data", [b"[]", b"{}", json.dumps({"v": 1, "g": "x", "r": []}).encode(), b"nope"])
def test_decode_refuses_what_is_no_claim_state(data):
    with pytest.raises(ValueError):
        decode(data)


def test_a_read_holding_an_entry_twice_returns_it_once():
    from shmwal.nats.client import _first_of_each
    assert _first_of_each([4, 5, 5, 6, 4], [True] * 5) == [True, True, False, True, False]
    assert _first_of_each([4, 5, 5], [True, False, True]) == [True, False, False]   # claimed before: never
    assert _first_of_each([1, 2], [False, True]) == [False, True]
