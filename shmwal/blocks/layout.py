"""Every size, offset and limit of shmwal's files, in one place.

A namespace directory ``<data_dir>/<key>/`` holds::

    broker.lock            flock()ed by the live broker (released by the kernel when it dies)
    broker.sock            the control endpoint (Unix stream socket, 0600)
    broker.run             JSON: pid and IPC names of the broker that runs or last ran
    blocks/<id>.blk        sparse block files, space allocated block by block; a block belongs to one topic
    topics/<topic>/meta    the topic's shared state, mapped by every client (below)

Block file
    ``blocks_per_file`` slots of ``block_size`` bytes, or one "jumbo" block
    sized for an entry larger than a block.  The file is sparse: a block at
    slot k starts at ``k * block_size`` and only its ``capacity`` bytes
    (block_capacity: small for a topic's first block) take space.  Each block starts with a
    BLOCK_HEADER naming its topic, its index in the topic's chain and the
    offset of its first entry, so that chains can be rebuilt from blocks
    alone.  Records follow back to back, each starting on a 64-byte cache line (ALIGN).

Record (one append, or the part of a batch that fits in one block)
    RECORD_HEADER (32 B) | table: count x (length u64, digest u64) | payloads | pad to ALIGN
    header = count u32, batch_left u32, first_offset u64, data_bytes u64, check u64
    digest = xxh3_64(payload, seed=entry_seed(offset)): binds a payload to its offset.
    ``check`` binds the header fields to the table (see record_seed), so a
    flipped bit in a header or table is caught before a length is trusted.
    ``batch_left`` counts the entries of the same batch in later records, so a
    batch torn by a power cut can be cut back to its start.

Topic meta file (``topics/<topic>/meta``), META_VERSION 3
    page 0: topic header (writer mutex, publish words, reclaim words)
    CHAIN_SLOTS chain slots of CHAIN_SLOT bytes (which file, where, capacity, first offset)
    GROUP_SLOTS group slots of GROUP_SLOT bytes (mutex, cursor, read hint, name, generation)
    The file is sparse: the broker reserves storage (posix_fallocate) for a
    page of chain or group slots before the first slot in it is used, since a
    store to an unreserved hole on a full filesystem is a SIGBUS, not an error.
    Version 2 (256 group slots between the header and the chain) is migrated
    at broker start (blocks/migrate.py).
"""

from __future__ import annotations

import struct

PAGE = 4096
# A u64 word that holds no value yet: H_TAIL_CHAIN before a topic's first block, a chain
# slot's first offset until its writer moves in, a group's read hint until one is stored.
UNSET = (1 << 64) - 1
NO_BLOCK = UNSET
ALIGN = 64   # records start on cache lines: a reader of the newest record never shares a line with the appender writing the next

# ---- API limits (API.md "Writing" / "Reading")
MAX_ENTRY = 1 << 30                 # one payload
MAX_BATCH_ENTRIES = 2000
MAX_BATCH_BYTES = 10 << 30
MAX_READ_ENTRIES = 2000

# ---- defaults (API.md "Starting a broker")
DEFAULT_BLOCK_SIZE = 10 << 20
DEFAULT_BLOCKS_PER_FILE = 100
MIN_BLOCK_SIZE = 4096
MAX_BLOCK_SIZE = 1 << 34
# A topic's first block is small (FIRST_BLOCK_SIZE), every later one full: a
# topic of a few entries takes 64 KiB of block space.  One small step only: each
# step costs a writer a block change, a request and first writes into fresh
# pages, and a ramp of five (64 KiB x4 up to 10 MiB) made a fresh topic's 20k
# batched appends of 100 B run at ~0.6x the rate with full blocks from the start
# (`shmwal bench --quick`; on this project's VM the first write into each new
# block of an ext4 file took 2-4 ms, the first touch of a new region of the file:
# scripts/first_touch_cost.py).
FIRST_BLOCK_SIZE = 64 << 10


def block_capacity(chain_index: int, block_size: int) -> int:
    """The capacity a topic's block at ``chain_index`` gets (more if one entry needs it)."""
    return min(block_size, FIRST_BLOCK_SIZE) if chain_index == 0 else block_size


# ---- block header
BLOCK_MAGIC = 0x314B4C42_4C574D53            # b"SMWLBLK1" little-endian
BLOCK_HEADER = struct.Struct("<QQQQQH")      # magic, chain_index, first_offset, capacity, topic_hash, name_len
BLOCK_NAME_AT = BLOCK_HEADER.size            # topic name bytes follow the fixed fields
BLOCK_HEADER_SIZE = 320                      # fixed part + 255-byte name, rounded to 8 (and then some)
# Zero-copy pins: a u64 after the name, never written by write_block_header. A zero-copy
# read adds 1 (atomic) before the first view it makes of the block and takes it back when
# the last of those views is gone; the broker reuses a reclaimed block only at 0 (a reader killed
# with views out leaves its pin: the block is then freed, not reused). See client/read.py
# _pinned_view and server/reclaim.py reclaim_topic for the order of loads and stores that makes it safe.
B_PINS = 312
assert BLOCK_NAME_AT + 255 <= B_PINS and B_PINS + 8 <= BLOCK_HEADER_SIZE

# ---- record
RECORD_HEADER = struct.Struct("<IIQQQ")      # count, batch_left, first_offset, data_bytes, check
RECORD_HEADER_SIZE = RECORD_HEADER.size      # 32
TABLE_ENTRY = struct.Struct("<QQ")           # length, xxh3_64(payload)
TABLE_ENTRY_SIZE = TABLE_ENTRY.size          # 16
SINGLE_RECORD = struct.Struct("<IIQQQQQ")    # header + one table entry, packed in one call
SINGLE_RECORD_SIZE = SINGLE_RECORD.size      # 48

assert RECORD_HEADER_SIZE == 32 and TABLE_ENTRY_SIZE == 16 and SINGLE_RECORD.size == 48


def align(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


def record_size(count: int, data_bytes: int) -> int:
    return align(RECORD_HEADER_SIZE + count * TABLE_ENTRY_SIZE + data_bytes)


# ---- seeds (hot.c computes the same from the generated header)
SEED_GOLDEN = 0x9E3779B97F4A7C15     # 2**64 / golden ratio: spreads consecutive offsets over the seed space
SEED_COUNT_SHIFT = 40                # where record_seed mixes in a record's count ...
SEED_BATCH_LEFT_SHIFT = 20           # ... and its batch_left
SEED_SALT = 0x5EED
U64_MASK = (1 << 64) - 1


def entry_seed(offset: int) -> int:
    """Seed of an entry's xxh3_64: binds the payload to its offset."""
    return (offset * SEED_GOLDEN) & U64_MASK


def record_seed(count: int, batch_left: int, first_offset: int, data_bytes: int) -> int:
    """Mixes a record's header fields into its check.

    count > 1:  check = xxh3_64(table, record_seed(...))
    count == 1: check = entry digest ^ record_seed(...) — the digest already
                costs a hash, and any flipped header bit still breaks the check.
    """
    return (first_offset * SEED_GOLDEN ^ (count << SEED_COUNT_SHIFT) ^ (batch_left << SEED_BATCH_LEFT_SHIFT)
            ^ data_bytes ^ SEED_SALT) & U64_MASK


# ---- topic meta file
META_MAGIC = 0x3150_4F54_4C57_4D53           # b"SMWLTOP1"
META_VERSION = 3
MUTEX_BYTES = 64                             # pthread_mutex_t is 40 on x86-64 glibc; room to spare

# topic header words (byte offsets in page 0); each 8-byte aligned u64.
# Cache lines (64 B) are assigned by who writes and who polls: a reader
# spinning on H_NEXT_OFFSET must not sit on the line an appender stores its
# bookkeeping to on every append, or each of those stores waits for the line
# to come back from the reader's core.
H_MAGIC = 0
H_VERSION = 8
H_BOOT = 16              # hash of the boot id that initialised the mutexes (reboot -> re-init)
H_TOPIC_ID = 24          # small integer the broker gave the topic (names its semaphore)
H_VISIBLE = 32           # 1 once the first append landed (a reader may create an empty topic)
H_GROUPS = 40            # group slots in use
H_DAMAGE = 48            # damaged records found at recovery (stats)
H_RECLAIMED_BYTES = 56   # payload bytes in reclaimed blocks (stats)
H_WRITER_MUTEX = 64      # serialises appends; robust: a dead holder is detected by the next locker
# The low bits of a robust mutex's futex word (its first u32) are the holder's TID (the
# kernel's FUTEX_TID_MASK); the bits above are the kernel's waiters and owner-died flags.
FUTEX_TID_MASK = 0x3FFFFFFF
# line 128: what readers poll; the appender stores here once per append (the publish)
H_NEXT_OFFSET = 128      # THE publish word: entries below it are complete and readable
H_PUBLISHED_BLOCKS = 136 # chain slots readers may use (stored before H_NEXT_OFFSET)
H_ALLOCATED_BLOCKS = 144 # chain slots the broker has handed out (>= published)
H_FIRST_BLOCK = 152      # oldest kept chain slot (reclamation moves it)
H_FIRST_OFFSET = 160     # oldest kept entry
H_FORCED_OFFSET = 168    # entries below it were dropped unread by Retention.max_bytes (stored
                         # before H_FIRST_OFFSET moves): a cursor below both lost what lies between
# line 192: the appender's own bookkeeping, under the writer mutex
H_TAIL_POS = 192         # byte position of the next record in the tail block
H_TAIL_CHAIN = 200       # chain slot of the tail block
H_TAIL_OFFSET = 208      # offset H_TAIL_POS belongs to; == H_NEXT_OFFSET iff the bookkeeping is current
H_BYTES = 216            # payload bytes ever published (stats)
# line 256: written by readers going to sleep, read by the appender after each publish
H_WAITERS = 256          # readers asleep on the topic semaphore (atomic add)
MAX_SANE_WAITERS = 1 << 20   # H_WAITERS above this is an underflow (a reader killed between its add and subtract)
# 264: unused (a flag of zero-copy reads before their views pinned their blocks, B_PINS)
H_SYNCED_NEXT = 280      # SyncEach: the end whose entries are on disk, made durable before the publish
                         # (recovery keeps entries up to it even if the H_NEXT_OFFSET page was lost)
H_GROUP_HIGH = 272       # group slots below it have storage and an initialised mutex (broker only;
                         # every scan of the group table stops here)
H_NAME_LEN = 320
H_NAME = 328             # topic name, up to 255 bytes
H_CHAIN_MUTEX = 640      # guards chain slots >= H_PUBLISHED_BLOCKS and H_ALLOCATED_BLOCKS (broker and
                         # the appender that moves to a new block); robust

CHAIN_SLOTS = 1 << 20
CHAIN_SLOT = 32
CHAIN_SLOTS_PER_PAGE = PAGE // CHAIN_SLOT   # the broker reserves a chain page when it hands out its first slot
CHAIN_AT = PAGE
C_FILE_ID = 0
C_FILE_OFFSET = 8        # where the block starts in its file
C_CAPACITY = 16          # bytes in the block, header included; 0 = no usable block (stored last)
C_FIRST_OFFSET = 24      # offset of the block's first record (set when the writer moves in)

# Group slots.  A slot is found by name through the broker (which keeps a dict; clients
# cache slot and generation per (topic, group)), never by a scan on a read path.
# A deleted group's slot is reused: G_GEN moves (under the group mutex) when it is
# freed, and every read checks it under that mutex, so a reader still holding the
# old slot learns the group is gone instead of moving another group's cursor.
GROUP_SLOTS = 1 << 16
GROUP_SLOT = 512
GROUPS_AT = CHAIN_AT + CHAIN_SLOTS * CHAIN_SLOT
G_MUTEX = 0              # serialises the group's readers; robust; initialised once, never again while in use
G_CURSOR = 64            # next offset the group reads: the durable delivery state
G_HINT_OFFSET = 72       # the offset the hint below locates (valid iff == cursor)
G_HINT_CHAIN = 80
G_HINT_POS = 88          # record start in the hint's block
G_USED = 96              # 1 once the slot is fully initialised (stored last)
G_NAME_LEN = 104
G_NAME = 112             # group name, up to 255 bytes
G_READS = 376            # unused (was a read count nothing reported; kept: the format's offsets)
G_GEN = 384              # generation: +1 each time the slot is freed (under G_MUTEX)
G_SKIPPED = 392          # entries this group lost to Retention.max_bytes (stats; under G_MUTEX)

META_SIZE = GROUPS_AT + GROUP_SLOTS * GROUP_SLOT

assert CHAIN_AT % PAGE == 0 and GROUPS_AT % PAGE == 0 and PAGE % GROUP_SLOT == 0
assert G_SKIPPED + 8 <= GROUP_SLOT and H_NAME + 255 <= H_CHAIN_MUTEX

# ---- version 2 meta file (read only by blocks/migrate.py)
V2_META_VERSION = 2
V2_GROUP_SLOTS = 256
V2_GROUPS_AT = PAGE
V2_CHAIN_AT = V2_GROUPS_AT + V2_GROUP_SLOTS * GROUP_SLOT
V2_META_SIZE = V2_CHAIN_AT + CHAIN_SLOTS * CHAIN_SLOT


def chain_slot_at(index: int) -> int:
    return CHAIN_AT + index * CHAIN_SLOT


def group_slot_at(slot: int) -> int:
    return GROUPS_AT + slot * GROUP_SLOT


def block_file_name(file_id: int) -> str:
    return f"{file_id:010d}.blk"


def parse_block_file_name(name: str) -> int | None:
    if len(name) == 14 and name.endswith(".blk") and name[:10].isdigit():
        return int(name[:10])
    return None


# ---- the compiled path's copy, generated (setup.py writes shmwal/_native/layout.h from this)

def c_constants() -> dict[str, int]:
    """Every constant above (an upper-case int of this module): what hot.c may use, and what
    client/hot.py compares with the built module's LAYOUT at import."""
    return {name: value for name, value in globals().items()
            if name.isupper() and not name.startswith("_") and type(value) is int}


def c_header() -> str:
    """``layout.h`` for hot.c: one #define per constant, and SHMWAL_LAYOUT(X), which applies
    X to every name (hot.c builds its LAYOUT dict with it)."""
    constants = c_constants()
    lines = ["/* Generated by setup.py from shmwal/blocks/layout.py: do not edit. */",
             "#ifndef SHMWAL_LAYOUT_H", "#define SHMWAL_LAYOUT_H"]
    for name, value in constants.items():
        if not 0 <= value <= U64_MASK:
            raise ValueError(f"layout.{name} = {value} does not fit a u64")
        lines.append(f"#define {name} {value}ULL")
    lines.append("#define SHMWAL_LAYOUT(X) " + " ".join(f"X({name})" for name in constants))
    lines.append("#endif")
    return "\n".join(lines) + "\n"
