"""Reading a damaged topic to its end, the way a user would (issue 11): every call, every way.

``read_through`` reads one group from its cursor to ``next_offset`` with one kind of call,
stepping over each CorruptEntry with ``seek(offset + 1)``, and returns what it saw: the
entries (offset -> data), the offsets reported corrupt, and the problems (anything that is
not an entry or CorruptEntry, a CorruptEntry not at the cursor, a stall below the end).
"""

from __future__ import annotations

import os

import shmwal

WAYS = ("read_next", "batch_read", "batch_read_payloads")


def read_through(client, topic: str, group: str, way: str, end: int, max_bytes: int = 1 << 20,
                 limit: int = 100_000):
    got: dict[int, bytes] = {}
    corrupt: list[int] = []
    problems: list[str] = []
    for _ in range(limit):
        pos = client.position(topic, group=group)
        if pos >= end:
            break
        try:
            if way == "read_next":
                entry = client.read_next(topic, group=group)
                entries = [] if entry is None else [(entry.offset, entry.data)]
            elif way == "batch_read":
                entries = [(e.offset, e.data) for e in client.batch_read(topic, max_bytes, group=group)]
            else:
                first, data = client.batch_read_payloads(topic, max_bytes, group=group)
                entries = [(first + i, d) for i, d in enumerate(data)]
        except shmwal.CorruptEntry as exc:
            if (exc.topic, exc.offset) != (topic, pos):
                problems.append(f"{way}: CorruptEntry names {exc.topic}@{exc.offset}, the cursor is at {pos}")
            if client.position(topic, group=group) != pos:
                problems.append(f"{way}: the cursor moved off the corrupt entry {pos}")
            corrupt.append(exc.offset)
            client.seek(topic, exc.offset + 1, group=group)
            continue
        except shmwal.BrokerUnavailable:
            raise
        except Exception as exc:   # anything undocumented is a finding of its own
            problems.append(f"{way} at {topic}@{pos} raised {type(exc).__name__}: {exc}")
            client.seek(topic, pos + 1, group=group)
            continue
        if not entries:
            problems.append(f"{way}: reading stalls at {topic}@{pos} below next_offset {end}")
            break
        if [o for o, _ in entries] != list(range(pos, pos + len(entries))):
            problems.append(f"{way} at {pos} returned offsets {[o for o, _ in entries][:5]}...")
        got.update(entries)
    else:
        problems.append(f"{way}: still reading {topic} after {limit} calls")
    return got, corrupt, problems


def block_files(root: str) -> list[str]:
    blocks = os.path.join(root, "blocks")
    return sorted(os.path.join(blocks, n) for n in os.listdir(blocks) if n.endswith(".blk"))
