"""The "objects" scenario: Python objects that each queue pickles itself.

Every object carries its producer index and sequence number, which the consumer turns
into the same 16-byte prefix the bytes scenarios keep (``messages.HEADER``), so the
exactly-once check (check.py) is the same. An object that comes back wrong (not a dict
with the fields sent; an array of another dtype or shape, or whose last word disagrees
with its sequence number) is recorded under producer ``BAD`` and fails the check.

* ``dict``: a small dict of a few str, int, float and list fields (~120 bytes pickled);
* ``array``: a 1 MiB numpy array of uint64 (words 0 and 1: producer, seq; last: seq).

Producers reuse one object, restamped before each send: a queue that pickles later (the
feeder thread of ``multiprocessing.Queue``) is given a copy by its sender (contenders.py).
"""

from __future__ import annotations

import pickle

import numpy as np

from .messages import HEADER, TOKEN_LEN

ARRAY_WORDS = 2**17                 # 1 MiB of uint64
BAD = 2**64 - 2                     # producer index of a wrong object: the check reports it
_pack = HEADER.pack


def make(item: str, producer: int):
    if item == "dict":
        return {"producer": producer, "seq": 0, "symbol": "SHMW", "price": 101.25, "qty": 300,
                "side": "buy", "tags": ["bench", "objects"]}
    if item == "array":
        a = np.zeros(ARRAY_WORDS, dtype=np.uint64)
        a[0] = producer
        return a
    raise ValueError(f"unknown object item {item!r}")


def payload_bytes(item: str) -> int:
    """What one object weighs on the wire (its protocol-5 pickle, buffers included)."""
    if item == "array":
        return ARRAY_WORDS * 8
    return len(pickle.dumps(make(item, 0), protocol=5))


def stamp(obj, seq: int) -> None:
    if type(obj) is dict:
        obj["seq"] = seq
    else:
        obj[1] = seq
        obj[-1] = seq


def is_token(obj) -> bool:
    return type(obj) is bytes and len(obj) == TOKEN_LEN


def prefix(obj) -> bytes:
    """The (producer, seq) prefix of a received object, or a BAD one."""
    if type(obj) is dict:
        if obj.get("symbol") == "SHMW" and obj.get("tags") == ["bench", "objects"]:
            return _pack(obj["producer"], obj["seq"])
    elif isinstance(obj, np.ndarray) and obj.dtype == np.uint64 and obj.shape == (ARRAY_WORDS,) \
            and obj[-1] == obj[1]:
        return obj[:2].tobytes()
    return _pack(BAD, 0)
