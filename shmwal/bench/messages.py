"""What the benchmark puts on the wire: one layout for every contender.

Message (``size`` bytes, ``size >= MIN_SIZE``)::

    0..8    producer index   u64 little-endian
    8..16   sequence number  u64 little-endian, 0, 1, 2, ... per producer
    16..24  send time, ns    i64, CLOCK_MONOTONIC (latency runs only; 0 otherwise)
    24..    filler

Token (exactly ``TOKEN_LEN`` bytes): producer index ``TOKEN_ID`` (no real producer has it),
then a u64 argument. Tokens are control messages that end a run (see ``workers``); they are
told apart from data by length alone, because a data message is never that short, so the hot
loops pay one ``len()`` per message and no decoding.
"""

from __future__ import annotations

import os
import struct
import time

HEADER = struct.Struct("<QQ")        # producer, seq: what the exactly-once check reads
STAMPED = struct.Struct("<QQq")      # producer, seq, send time: latency runs
HEADER_LEN = HEADER.size             # 16
STAMPED_LEN = STAMPED.size           # 24
MIN_SIZE = STAMPED_LEN

TOKEN_ID = 2**64 - 1
TOKEN_LEN = HEADER_LEN
assert TOKEN_LEN < MIN_SIZE  # the length test in the hot loops relies on it

# CLOCK_MONOTONIC is one clock for the whole machine, so a time taken in the producer
# process can be subtracted from one taken in the consumer process.
clock_ns = time.monotonic_ns


def filler(size: int) -> bytearray:
    """A message-sized buffer with random filler (so no layer can cheat by compressing)."""
    if size < MIN_SIZE:
        raise ValueError(f"message size {size} is below the minimum of {MIN_SIZE} bytes")
    buf = bytearray(os.urandom(size))
    STAMPED.pack_into(buf, 0, 0, 0, 0)
    return buf


def token(arg: int = 0) -> bytes:
    return HEADER.pack(TOKEN_ID, arg)


def token_arg(msg) -> int:
    """The argument of a token (the producer index, for per-producer end tokens)."""
    return HEADER.unpack_from(msg, 0)[1]
