"""Reading a namespace's state from its files: stats and verification.

Shared by the broker (``stats()``), ``shmwal stat`` and ``shmwal verify``,
which work whether or not a broker runs: published data never changes, so
walking it needs no lock.
"""

from __future__ import annotations

import os

from ..ipc import names
from ..blocks import layout as L
from ..blocks.codec import entry_bytes, iter_records
from ..blocks.files import BlockFiles, allocated_bytes
from ..blocks.meta import TopicMeta
from ..errors import ShmwalError


def _topic_meta_paths(root: str):
    """(topic, path of its meta file) for each directory of ``topics/`` named like a topic."""
    topics_dir = os.path.join(root, "topics")
    try:
        entries = sorted(os.listdir(topics_dir))
    except FileNotFoundError:
        return
    for name in entries:
        try:
            names.check_name(name)
        except ShmwalError:
            continue
        yield name, os.path.join(topics_dir, name, "meta")


def unusable_meta_files(root: str) -> dict[str, str]:
    """Topics whose meta file cannot even be opened -> why (start rebuilds them from the block files)."""
    found = {}
    for name, path in _topic_meta_paths(root):
        try:
            TopicMeta(path, name).close()
        except (OSError, ValueError) as exc:
            found[name] = f"topics/{name}/meta +0: unusable ({exc}); start rebuilds it from the block files"
    return found


def verify_meta(meta: TopicMeta, files: BlockFiles) -> tuple[list[str], bool]:
    """What start would repair or rebuild in a meta file (server/metacheck.py), as lines naming
    the file and offset; and whether its chain can be walked as it is."""
    from .metacheck import chain_findings, mutex_findings, word_findings
    from .recovery import check_meta
    where = f"topics/{meta.name}/meta"
    lines = [f"{where} +{f.at}: {f.what}" for f in mutex_findings(meta)]
    problem = check_meta(meta)
    if problem is None:
        chain, problem = chain_findings(meta, files)
        lines += [f"{where} +{f.at}: {f.what}" for f in chain + word_findings(meta)]
    if problem is not None:
        lines.append(f"{where}: {problem}; start rebuilds it from the block files")
    return lines, problem is None


def open_topics(root: str) -> dict[str, TopicMeta]:
    found = {}
    for name, path in _topic_meta_paths(root):
        try:
            found[name] = TopicMeta(path, name)
        except (OSError, ValueError):
            continue
    return found


def disk_bytes(meta: TopicMeta) -> int:
    """What the topic takes on disk: its meta file's allocated bytes and the space of
    every block its chain holds (written, or handed out ahead of its writer).

    A block's space is exactly its capacity: the allocator fallocates that much
    before handing it out and punches it when the block is freed (blocks/files.py).
    Block files hold blocks of several topics, so a file's st_blocks cannot be
    split among them; the chain says which ranges are whose.
    """
    total = allocated_bytes(meta.path)
    for index in range(meta.get(L.H_FIRST_BLOCK), min(meta.get(L.H_ALLOCATED_BLOCKS), L.CHAIN_SLOTS)):
        total += meta.chain(index)[2]
    return total


def topic_stats(meta: TopicMeta, group_slots: dict[str, int] | None = None) -> dict:
    """A topic's stats; ``group_slots`` (name -> slot) is the broker's index, else the table is scanned."""
    first_block, published = meta.get(L.H_FIRST_BLOCK), meta.get(L.H_PUBLISHED_BLOCKS)
    next_offset, first_offset = meta.get(L.H_NEXT_OFFSET), meta.get(L.H_FIRST_OFFSET)
    forced = meta.get(L.H_FORCED_OFFSET)
    files = {meta.chain(i)[0] for i in range(first_block, published)}
    groups = {}
    for group, slot in sorted((meta.group_names() if group_slots is None else group_slots).items()):
        cursor = meta.group_word(slot, L.G_CURSOR)
        position = max(cursor, first_offset)
        # skipped: what the group's reads already stepped over, and what max_bytes dropped
        # below its cursor since (its next read steps over that: client/read.py)
        skipped = meta.group_word(slot, L.G_SKIPPED) + max(0, min(first_offset, forced) - cursor)
        groups[group] = {"position": position, "lag": max(0, next_offset - position), "skipped": skipped}
    return {
        "entries": next_offset - first_offset,
        # A meta file rebuilt from blocks starts its byte count afresh: never below 0.
        "bytes": max(0, meta.get(L.H_BYTES) - meta.get(L.H_RECLAIMED_BYTES)),
        "disk_bytes": disk_bytes(meta),
        "first_offset": first_offset,
        "next_offset": next_offset,
        "files": len(files),
        "blocks": max(0, published - first_block),
        "groups": groups,
        "damaged": meta.get(L.H_DAMAGE),
    }


def verify_topic(meta: TopicMeta, files: BlockFiles, counts: dict | None = None) -> list[tuple[int, str]]:
    """Check every kept entry's record and checksum; return (offset, what is wrong) for each damage.

    ``counts["entries"]``, when given, grows by the entries whose checksum was checked.
    """
    damage: list[tuple[int, str]] = []
    first_block, published = meta.get(L.H_FIRST_BLOCK), meta.get(L.H_PUBLISHED_BLOCKS)
    next_offset = meta.get(L.H_NEXT_OFFSET)
    for index in range(first_block, published):
        file_id, file_offset, capacity, block_first = meta.chain(index)
        block_end = meta.chain(index + 1)[3] if index + 1 < published else next_offset
        block_end = min(block_end, next_offset)
        if block_first >= block_end:
            continue
        try:
            buf = files.map(file_id)
        except (OSError, ValueError) as exc:
            damage.append((block_first, f"block file {L.block_file_name(file_id)} unreadable ({exc}): "
                                        f"offsets {block_first}..{block_end - 1}"))
            continue
        if len(buf) < file_offset + capacity:
            damage.append((block_first, f"block file {L.block_file_name(file_id)} is truncated"))
            capacity = max(0, len(buf) - file_offset)

        def lost(off, found, exc, block_end=block_end):
            lost_to = (found.first_offset if found else block_end) - 1
            damage.append((off, f"damaged record ({exc}): offsets {off}..{lost_to} unreadable"))

        for record in iter_records(buf, file_offset + L.BLOCK_HEADER_SIZE, file_offset + capacity,
                                   block_first, block_end, lost):
            for i in range(record.count):
                if entry_bytes(buf, record, i) is None:
                    damage.append((record.first_offset + i, "checksum mismatch"))
            if counts is not None:
                counts["entries"] = counts.get("entries", 0) + record.count
    return damage
