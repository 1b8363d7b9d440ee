"""Topic, group and key names as JetStream stream, consumer and subject names.

Topics and groups allow ``[A-Za-z0-9._-]``; JetStream names refuse ``.`` (and
``*``, ``>``, whitespace), and a subject splits on ``.``. So every name goes
through one injective escape: ``_`` becomes ``_u`` and ``.`` becomes ``_d``,
which leaves ``_`` followed by any other letter free for our own separators
(``_t`` between key and topic, ``_h`` before a hash). Injective means two
topics never share a stream. A name whose escape is too long for a file name
(JetStream keeps a directory per stream and per consumer) is cut and ends in
``_h`` + a hash of the whole name; the true name always travels in the stream's
or consumer's description, which is what ``topics()`` and ``groups()`` report.
"""

from __future__ import annotations

import hashlib

from ..ipc.names import check_name, sanitize_key

_ESCAPE = str.maketrans({"_": "_u", ".": "_d"})
LONGEST = 200          # JetStream names become directory names (255 bytes at most)
SUBJECT_ROOT = "shmwal"
CLAIMS = "claims"      # StrictlyAtOnce claims (client.py says why)
# One claims stream serves every key: a claim's id starts with its consumer's random
# generation, so keys need no streams of their own (and tests no R3 stream each).
CLAIMS_STREAM = "shmwal_claims"
CLAIMS_SUBJECTS = f"shmwal.*.{CLAIMS}.>"


def escape(name: str) -> str:
    out = name.translate(_ESCAPE)
    if len(out) <= LONGEST:
        return out
    digest = hashlib.sha256(name.encode()).hexdigest()[:32]
    return out[:LONGEST - 34] + "_h" + digest


def namespace(key) -> str:
    """The escaped key every stream name and subject of this client starts with."""
    return escape(sanitize_key(key))


def stream_name(ns: str, topic: str) -> str:
    return f"shmwal_{ns}_t{escape(check_name(topic))}"


def subject(ns: str, topic: str) -> str:
    return f"{SUBJECT_ROOT}.{ns}.t.{escape(topic)}"


def stream_prefix(ns: str) -> str:
    return f"shmwal_{ns}_t"


def claims_subject(ns: str, topic: str, group: str) -> str:
    return f"{SUBJECT_ROOT}.{ns}.{CLAIMS}.{escape(topic)}.{escape(group)}"


def durable_name(group: str) -> str:
    return "g" + escape(check_name(group, "group"))
