"""Bringing a topic back to a consistent, published state at broker start.

Runs under the topic's writer mutex, so appenders of a previous broker's
clients (which outlive it) are simply held back while it looks.  What it
trusts: ``H_NEXT_OFFSET`` from the meta file, confirmed by walking the tail
block.  Records past a broken header (a torn tail after a power cut) are cut
off, back to the start of their batch; a payload that fails its checksum is
kept, reported, and raises CorruptEntry when read.
"""

from __future__ import annotations

import logging
import mmap
import os
import time

from ..ipc import sync
from ..blocks import layout as L
from ..blocks.chain import find_block, read_block_header, walk_to
from ..blocks.codec import BadRecord, entry_bytes, iter_records, read_record
from ..blocks.files import open_read_only
from ..blocks.meta import TopicMeta
from ..errors import ShmwalError
from . import metacheck

log = logging.getLogger("shmwal.broker")


class _TornTail(Exception):
    """No intact record after a damaged one: the tail is cut there."""


def check_meta(meta) -> str | None:
    """What is wrong with a meta file's words, or None: run before trusting any of them."""
    get = meta.get
    if get(L.H_VERSION) != L.META_VERSION:
        return f"unknown version {get(L.H_VERSION)}"
    if get(L.H_TOPIC_ID) >= 1 << 31:
        return "implausible topic id"
    first, published, allocated = get(L.H_FIRST_BLOCK), get(L.H_PUBLISHED_BLOCKS), get(L.H_ALLOCATED_BLOCKS)
    if not first <= published <= allocated <= L.CHAIN_SLOTS:
        return f"chain counters out of order: first {first}, published {published}, allocated {allocated}"
    next_offset, first_offset = get(L.H_NEXT_OFFSET), get(L.H_FIRST_OFFSET)
    if first_offset > next_offset:
        return f"oldest offset {first_offset} past the end {next_offset}"
    previous = -1
    for index in range(first, published):
        file_id, file_offset, capacity, block_first = meta.chain(index)
        if not capacity or capacity % L.PAGE or file_offset % L.PAGE or block_first > next_offset \
                or block_first < previous:
            return f"chain slot {index} is damaged"
        previous = block_first
    if published > first and meta.chain(first)[3] != first_offset:
        # Reclamation stores H_FIRST_OFFSET, then H_FIRST_BLOCK: a broker killed
        # between the two leaves the offset one or more blocks ahead.  That is
        # no damage (recovery finishes the move), anything else is.
        k = find_block(meta, first_offset, first, published)
        if meta.chain(k)[3] != first_offset:
            return "oldest offset does not match the oldest block"
    return None


def finish_reclamation(meta) -> None:
    """Move H_FIRST_BLOCK up to H_FIRST_OFFSET (see check_meta). Under the writer mutex."""
    first, published = meta.get(L.H_FIRST_BLOCK), meta.get(L.H_PUBLISHED_BLOCKS)
    if published > first:
        k = find_block(meta, meta.get(L.H_FIRST_OFFSET), first, published)
        if k != first:
            meta.set(L.H_FIRST_BLOCK, k)


LOCK_DEADLINE = 10.0   # seconds recovery waits for a live holder of the writer mutex (a client mid-append)


class StartInterrupted(ShmwalError):
    """The broker was asked to stop while it recovered its topics."""


def recover_topic(meta, files, should_stop=None) -> dict:
    """Verify and repair one topic (meta words, then its tail); return what was found (for the log and stats).

    ``should_stop()`` raises to abandon the start (a SIGTERM arrived meanwhile).
    Raises ShmwalError, one line naming the file and offset, when the topic
    cannot be recovered here and now (its writer mutex held by a live thread
    past the deadline).
    """
    report = {"topic": meta.name, "truncated_from": None, "damaged": 0, "problem": None, "repaired": []}
    _repair(meta, report, metacheck.mutex_findings(meta))
    writer = meta.base + L.H_WRITER_MUTEX
    try:
        sync.lock_before(writer, time.monotonic() + LOCK_DEADLINE, should_stop)
    except sync.LockTimeout:
        raise ShmwalError(f"{meta.path} +{L.H_WRITER_MUTEX}: the writer mutex is held by thread "
                          f"{meta.writer_tid()} for more than {LOCK_DEADLINE:g} s (a stopped or stuck "
                          f"process of this user maps the file: end it and start again)") from None
    except sync.LockError as exc:
        # mutex_findings passed it, yet no lock call can take it: make it new.
        log.error("topic %s: writer mutex damaged (%s); re-initialised", meta.name, exc)
        metacheck.reinit_mutex(meta, L.H_WRITER_MUTEX)
        report["damaged"] += 1
        sync.lock_before(writer, time.monotonic() + LOCK_DEADLINE, should_stop)
    try:
        # Checked under the mutex: appenders of the previous broker's clients
        # may still be publishing, and mid-publish words are not damage.
        report["problem"] = check_meta(meta)
        if report["problem"] is None:
            chain, report["problem"] = metacheck.chain_findings(meta, files)
        if report["problem"] is None:
            _repair(meta, report, chain)
            _repair(meta, report, metacheck.word_findings(meta))
            _forget_hints(meta)
            finish_reclamation(meta)
            _recover_locked(meta, files, report)
    finally:
        sync.unlock(writer)
    return report


def _repair(meta, report, findings) -> None:
    for finding in findings:
        log.error("topic %s: %s +%d: %s", meta.name, meta.path, finding.at, finding.what)
        finding.repair()
        report["damaged"] += 1
        report["repaired"].append((finding.at, finding.what))
    if findings:
        meta.set(L.H_DAMAGE, meta.get(L.H_DAMAGE) + len(findings))


def _forget_hints(meta) -> None:
    """Read hints are a previous run's positions: readers find their entries afresh (no file word is trusted)."""
    for slot in meta.group_names().values():
        meta.set(L.group_slot_at(slot) + L.G_HINT_OFFSET, L.UNSET)


def keep_synced(meta, files, report) -> None:
    """SyncEach: keep the entries a writer fsynced and noted in H_SYNCED_NEXT before it published
    them, when a power cut lost the page of the publish word (client/append._sync_before_publish).

    Walks from the published end over whole batches (batch_left 0 closes one) whose
    records check out, into the next chain slot where a block ends, up to H_SYNCED_NEXT.
    """
    synced, next_offset = meta.get(L.H_SYNCED_NEXT), meta.get(L.H_NEXT_OFFSET)
    first, allocated = meta.get(L.H_FIRST_BLOCK), meta.get(L.H_ALLOCATED_BLOCKS)
    if synced <= next_offset or allocated <= first:
        return
    k = find_block(meta, next_offset, first, max(first + 1, min(meta.get(L.H_PUBLISHED_BLOCKS), allocated)))
    file_id, file_offset, capacity, block_first = meta.chain(k)
    try:
        pos, _ = walk_to(files.map(file_id), file_offset, capacity, block_first, next_offset, append_position=True)
    except (OSError, ValueError, BadRecord):
        return
    off, end, end_block = next_offset, next_offset, k
    while off < synced:
        try:
            record = read_record(files.map(file_id), pos, file_offset + capacity)
            if record.first_offset != off or record.end_offset > synced:
                raise BadRecord("out of sequence")
        except (OSError, ValueError, BadRecord):
            if k + 1 < allocated and meta.chain(k + 1)[2] and meta.chain(k + 1)[3] == off:
                k += 1
                file_id, file_offset, capacity, block_first = meta.chain(k)
                pos = file_offset + L.BLOCK_HEADER_SIZE
                continue
            break
        off, pos = record.end_offset, pos + record.size
        if record.batch_left == 0:
            end, end_block = off, k
    if end > next_offset:
        log.warning("topic %s: offsets %d..%d were on disk (SyncEach) but their publish was lost: kept",
                    meta.name, next_offset, end - 1)
        report["kept_synced"] = end - next_offset
        meta.set(L.H_PUBLISHED_BLOCKS, max(meta.get(L.H_PUBLISHED_BLOCKS), end_block + 1))
        meta.set(L.H_NEXT_OFFSET, end)


def _recover_locked(meta, files, report) -> None:
    keep_synced(meta, files, report)
    meta.set(L.H_SYNCED_NEXT, 0)   # from here on H_NEXT_OFFSET says it all (appends note it again)
    next_offset = meta.get(L.H_NEXT_OFFSET)
    published = meta.get(L.H_PUBLISHED_BLOCKS)
    first_block = meta.get(L.H_FIRST_BLOCK)
    if published == 0 or published <= first_block:
        meta.set(L.H_TAIL_CHAIN, L.NO_BLOCK)
        meta.set(L.H_TAIL_OFFSET, next_offset)
        _drop_short_pending_blocks(meta, files, published)
        return
    k = find_block(meta, next_offset, first_block, published)
    file_id, file_offset, capacity, block_first = meta.chain(k)
    try:
        buf = files.map(file_id)
    except OSError as exc:
        log.error("topic %s: tail block file %s unreadable (%s)", meta.name, file_id, exc)
        report["damaged"] += 1
        meta.set(L.H_DAMAGE, meta.get(L.H_DAMAGE) + 1)
        return
    limit = file_offset + capacity
    truncated = len(buf) < limit
    if truncated:
        log.error("topic %s: block file %d is truncated (%d of %d bytes)", meta.name, file_id, len(buf), limit)
        report["damaged"] += 1
        meta.set(L.H_DAMAGE, meta.get(L.H_DAMAGE) + 1)
    pos = file_offset + L.BLOCK_HEADER_SIZE
    off = block_first
    # The tail ends after the last record whose header checks out and that closes
    # its batch: past a broken header nothing can be located (a torn tail: cut).
    # A payload that fails its checksum is kept and reported: cutting it would
    # also cut every good entry after it.
    tail_off, tail_pos = off, pos
    damaged = 0

    def lost(off, found, exc):
        nonlocal damaged
        damaged += 1
        # Intact records after the damaged one stay (a flipped header byte must not
        # cost every later entry); with none after it, this is a torn tail: cut.
        if found is None or found.end_offset > next_offset:
            raise _TornTail
        log.warning("topic %s: offsets %d..%d lost to a damaged record", meta.name, off, found.first_offset - 1)

    try:
        for record in iter_records(buf, pos, limit, block_first, next_offset, lost):
            if record.end_offset > next_offset:   # runs past the published end: no record of ours
                damaged += 1
                break
            if not all(entry_bytes(buf, record, i) is not None for i in range(record.count)):
                damaged += 1  # kept: reads raise CorruptEntry for it, and seek steps over it
            if record.batch_left == 0:
                tail_off, tail_pos = record.end_offset, record.pos + record.size
    except _TornTail:
        pass
    if tail_off < next_offset:
        log.warning("topic %s: cutting torn tail %d..%d", meta.name, tail_off, next_offset - 1)
        report["truncated_from"] = next_offset
        meta.set(L.H_NEXT_OFFSET, tail_off)
        _clamp_cursors(meta, tail_off)
    if damaged:
        report["damaged"] = damaged
        meta.set(L.H_DAMAGE, meta.get(L.H_DAMAGE) + damaged)
    _drop_short_pending_blocks(meta, files, k + 1)
    # Appends go on in a new block when this one lost its end (its file was cut short).
    meta.set(L.H_TAIL_POS, limit if truncated else tail_pos)
    meta.set(L.H_TAIL_CHAIN, k)
    meta.set(L.H_PUBLISHED_BLOCKS, k + 1)
    meta.set(L.H_TAIL_OFFSET, meta.get(L.H_NEXT_OFFSET))


def _drop_short_pending_blocks(meta, files, start: int) -> None:
    """Pending blocks (handed out ahead, not yet written) are the previous run's: void them.

    Nothing in them is published, the broker hands out new ones on request, and a
    pending slot is a word no block header confirms (a damaged one could send
    an appender into another topic's block).
    """
    sync.lock_before(meta.base + L.H_CHAIN_MUTEX, time.monotonic() + LOCK_DEADLINE)
    try:
        for index in range(start, meta.get(L.H_ALLOCATED_BLOCKS)):
            meta.set(L.chain_slot_at(index) + L.C_CAPACITY, 0)
        if meta.get(L.H_ALLOCATED_BLOCKS) > start:
            meta.set(L.H_ALLOCATED_BLOCKS, start)
    finally:
        sync.unlock(meta.base + L.H_CHAIN_MUTEX)


def _clamp_cursors(meta, end: int) -> None:
    for slot in meta.group_names().values():
        at = L.group_slot_at(slot) + L.G_CURSOR
        if meta.get(at) > end:
            meta.set(at, end)


# ----------------------------------------------------------------------------- rebuilding a lost meta file

def find_topic_blocks(blocks_dir: str, topic: str) -> list[tuple[int, int, int, int, int]]:
    """Every block whose header names ``topic``: (chain_index, file_id, file_offset, capacity, first_offset).

    Block offsets are multiples of a page, so the scan looks at each page
    boundary and skips a found block whole.  Only used to repair a topic
    whose meta file is lost or damaged.
    """
    found = []
    for name in sorted(os.listdir(blocks_dir)):
        file_id = L.parse_block_file_name(name)
        if file_id is None:
            continue
        fd = open_read_only(os.path.join(blocks_dir, name))
        if fd is None:
            continue
        try:
            size = os.fstat(fd).st_size
            if size < L.BLOCK_HEADER_SIZE:
                continue
            with mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ) as buf:
                at = 0
                while at + L.BLOCK_HEADER_SIZE <= size:
                    # Block files are sparse: skip holes rather than read them (a read of a
                    # hole through a mapping allocates a page on tmpfs, a SIGBUS when it is full).
                    try:
                        at = max(at, os.lseek(fd, at, os.SEEK_DATA) // L.PAGE * L.PAGE)
                    except OSError:
                        break   # ENXIO: no data after ``at``
                    if at + L.BLOCK_HEADER_SIZE > size:
                        break
                    header = read_block_header(buf, at)
                    if header is None or header[3] != topic or header[2] < L.PAGE or header[2] % L.PAGE \
                            or header[0] >= L.CHAIN_SLOTS or header[1] >= 1 << 62:   # a damaged header
                        at += L.PAGE
                        continue
                    chain_index, first_offset, capacity, _ = header
                    found.append((chain_index, file_id, at, capacity, first_offset))
                    at += capacity
        finally:
            os.close(fd)
    return sorted(found)


def rebuild_meta(meta_path: str, topic: str, topic_id: int, blocks_dir: str, files,
                 groups: dict | None = None) -> TopicMeta | None:
    """Make a new meta file for ``topic`` from its blocks alone; None if no block names it.

    Entries come back (from the oldest block still on disk, so reclaimed ones
    may return: delivered again rather than lost); group cursors do not.
    """
    blocks = find_topic_blocks(blocks_dir, topic)
    if not blocks:
        return None
    # Keep the longest run of consecutive chain indices (the newest of equals): a block
    # whose header index was damaged stands alone, and must not cost every other block.
    runs, run = [], []
    for block in blocks:
        if run and block[0] == run[-1][0] + 1 and block[4] >= run[-1][4]:
            run.append(block)
        elif run and block[0] == run[-1][0]:
            continue   # two headers name one slot (a stale copy): the first found stands
        else:
            run = [block]
            runs.append(run)
    run = max(reversed(runs), key=len)
    if os.path.exists(meta_path):
        os.replace(meta_path, f"{meta_path}.damaged")
    meta = TopicMeta.create(meta_path, topic, topic_id)
    for chain_index, file_id, file_offset, capacity, first_offset in run:
        meta.reserve_chain_slot(chain_index)
        w = L.chain_slot_at(chain_index)
        meta.set(w + L.C_FILE_ID, file_id)
        meta.set(w + L.C_FILE_OFFSET, file_offset)
        meta.set(w + L.C_CAPACITY, capacity)
        meta.set(w + L.C_FIRST_OFFSET, first_offset)
    last_index, file_id, file_offset, capacity, next_offset = run[-1]
    buf = files.map(file_id)
    for record in iter_records(buf, file_offset + L.BLOCK_HEADER_SIZE, file_offset + capacity, next_offset, L.UNSET):
        next_offset = record.end_offset
    meta.set(L.H_FIRST_BLOCK, run[0][0])
    meta.set(L.H_FIRST_OFFSET, run[0][4])
    meta.set(L.H_ALLOCATED_BLOCKS, last_index + 1)
    meta.set(L.H_PUBLISHED_BLOCKS, last_index + 1)
    meta.set(L.H_NEXT_OFFSET, next_offset)
    meta.set(L.H_TAIL_OFFSET, next_offset + 1)   # not current: the next lock holder recomputes it
    meta.set(L.H_VISIBLE, 1)
    meta.set(L.H_DAMAGE, 1)
    for slot, (group, cursor) in enumerate(sorted((groups or {}).items())[:L.GROUP_SLOTS]):
        meta.init_group(slot, group, min(max(cursor, run[0][4]), next_offset))
    log.warning("topic %s: meta file rebuilt from %d block(s): offsets %d..%d; %s",
                topic, len(run), run[0][4], next_offset - 1,
                f"{len(groups)} group cursor(s) carried over" if groups else "group cursors were lost")
    return meta
