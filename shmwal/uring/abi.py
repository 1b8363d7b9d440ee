"""The io_uring kernel ABI: structs and constants only, no logic.

Names and field order follow ``include/uapi/linux/io_uring.h`` (as shipped with
liburing), so a grep for a header name finds its Python twin. Unions keep
their first member's name only; the bytes are what matter and ``sizeof`` is
checked at import. Only what ``ring.py`` uses, plus the neighbours that make
the numbering checkable, is listed.
"""

import ctypes
import enum
import platform
import struct

# -- syscall numbers ---------------------------------------------------------
# io_uring arrived (5.1) after the syscall tables were unified, so x86-64 and
# the asm-generic arches (aarch64, riscv64) share 425/426/427.
_SYSCALLS = {
    "x86_64": (425, 426, 427),
    "aarch64": (425, 426, 427),
}
# (The kernel spells them __NR_io_uring_*; the leading underscores would be
# name-mangled inside a class body, so they are dropped here.)
NR_io_uring_setup, NR_io_uring_enter, NR_io_uring_register = _SYSCALLS.get(
    platform.machine(), (-1, -1, -1)
)


# -- structs -------------------------------------------------------------------
class io_sqring_offsets(ctypes.Structure):
    _fields_ = [
        ("head", ctypes.c_uint32),
        ("tail", ctypes.c_uint32),
        ("ring_mask", ctypes.c_uint32),
        ("ring_entries", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("dropped", ctypes.c_uint32),
        ("array", ctypes.c_uint32),
        ("resv1", ctypes.c_uint32),
        ("user_addr", ctypes.c_uint64),
    ]


class io_cqring_offsets(ctypes.Structure):
    _fields_ = [
        ("head", ctypes.c_uint32),
        ("tail", ctypes.c_uint32),
        ("ring_mask", ctypes.c_uint32),
        ("ring_entries", ctypes.c_uint32),
        ("overflow", ctypes.c_uint32),
        ("cqes", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("resv1", ctypes.c_uint32),
        ("user_addr", ctypes.c_uint64),
    ]


class io_uring_params(ctypes.Structure):
    _fields_ = [
        ("sq_entries", ctypes.c_uint32),
        ("cq_entries", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("sq_thread_cpu", ctypes.c_uint32),
        ("sq_thread_idle", ctypes.c_uint32),
        ("features", ctypes.c_uint32),
        ("wq_fd", ctypes.c_uint32),
        ("resv", ctypes.c_uint32 * 3),
        ("sq_off", io_sqring_offsets),
        ("cq_off", io_cqring_offsets),
    ]


class io_uring_sqe(ctypes.Structure):
    _fields_ = [
        ("opcode", ctypes.c_uint8),
        ("flags", ctypes.c_uint8),
        ("ioprio", ctypes.c_uint16),
        ("fd", ctypes.c_int32),
        ("off", ctypes.c_uint64),  # union: addr2, cmd_op
        ("addr", ctypes.c_uint64),  # union: splice_off_in, level/optname
        ("len", ctypes.c_uint32),
        ("rw_flags", ctypes.c_uint32),  # union of the per-opcode flags
        ("user_data", ctypes.c_uint64),
        ("buf_index", ctypes.c_uint16),  # union: buf_group
        ("personality", ctypes.c_uint16),
        ("splice_fd_in", ctypes.c_int32),  # union: file_index, optlen, addr_len
        ("addr3", ctypes.c_uint64),
        ("__pad2", ctypes.c_uint64 * 1),
    ]


class io_uring_cqe(ctypes.Structure):
    _fields_ = [
        ("user_data", ctypes.c_uint64),
        ("res", ctypes.c_int32),
        ("flags", ctypes.c_uint32),
    ]


# The same two layouts as native-order ``struct`` formats: the hot path packs
# SQEs and unpacks CQEs with these (one C call each) rather than building ctypes
# objects. Native ("@") order and alignment match the C structs field for field
# (checked below), and native packing is one memcpy, see ring.py.
SQE_FORMAT = "BBHiQQIIQHHiQQ"
CQE_FORMAT = "QiI"

assert ctypes.sizeof(io_uring_sqe) == 64
assert ctypes.sizeof(io_uring_cqe) == 16
assert ctypes.sizeof(io_sqring_offsets) == 40
assert ctypes.sizeof(io_cqring_offsets) == 40
assert ctypes.sizeof(io_uring_params) == 120
assert struct.calcsize(SQE_FORMAT) == ctypes.sizeof(io_uring_sqe)
assert struct.calcsize(CQE_FORMAT) == ctypes.sizeof(io_uring_cqe)
assert io_uring_sqe.user_data.offset == 32 and io_uring_sqe.len.offset == 24
assert io_uring_cqe.res.offset == 8


# -- constants -----------------------------------------------------------------
class IoringOp(enum.IntEnum):
    """``enum io_uring_op``, up to the opcodes shmwal could use."""

    IORING_OP_NOP = 0
    IORING_OP_READV = 1
    IORING_OP_WRITEV = 2
    IORING_OP_FSYNC = 3
    IORING_OP_READ_FIXED = 4
    IORING_OP_WRITE_FIXED = 5
    IORING_OP_POLL_ADD = 6
    IORING_OP_POLL_REMOVE = 7
    IORING_OP_SYNC_FILE_RANGE = 8
    IORING_OP_SENDMSG = 9
    IORING_OP_RECVMSG = 10
    IORING_OP_TIMEOUT = 11
    IORING_OP_TIMEOUT_REMOVE = 12
    IORING_OP_ACCEPT = 13
    IORING_OP_ASYNC_CANCEL = 14
    IORING_OP_LINK_TIMEOUT = 15
    IORING_OP_CONNECT = 16
    IORING_OP_FALLOCATE = 17
    IORING_OP_OPENAT = 18
    IORING_OP_CLOSE = 19
    IORING_OP_FILES_UPDATE = 20
    IORING_OP_STATX = 21
    IORING_OP_READ = 22  # Linux 5.6
    IORING_OP_WRITE = 23
    IORING_OP_FADVISE = 24
    IORING_OP_MADVISE = 25


IORING_OP_NOP = IoringOp.IORING_OP_NOP
IORING_OP_READV = IoringOp.IORING_OP_READV
IORING_OP_READ = IoringOp.IORING_OP_READ
IORING_OP_WRITE = IoringOp.IORING_OP_WRITE


class IoringSetup(enum.IntFlag):
    """``io_uring_setup()`` flags (``io_uring_params.flags``)."""

    IORING_SETUP_IOPOLL = 1 << 0
    IORING_SETUP_SQPOLL = 1 << 1
    IORING_SETUP_SQ_AFF = 1 << 2
    IORING_SETUP_CQSIZE = 1 << 3
    IORING_SETUP_CLAMP = 1 << 4
    IORING_SETUP_ATTACH_WQ = 1 << 5
    IORING_SETUP_R_DISABLED = 1 << 6
    IORING_SETUP_SUBMIT_ALL = 1 << 7
    IORING_SETUP_COOP_TASKRUN = 1 << 8
    IORING_SETUP_TASKRUN_FLAG = 1 << 9
    IORING_SETUP_SQE128 = 1 << 10
    IORING_SETUP_CQE32 = 1 << 11
    IORING_SETUP_SINGLE_ISSUER = 1 << 12
    IORING_SETUP_DEFER_TASKRUN = 1 << 13
    IORING_SETUP_NO_MMAP = 1 << 14
    IORING_SETUP_REGISTERED_FD_ONLY = 1 << 15
    IORING_SETUP_NO_SQARRAY = 1 << 16


IORING_SETUP_SQPOLL = IoringSetup.IORING_SETUP_SQPOLL
IORING_SETUP_CLAMP = IoringSetup.IORING_SETUP_CLAMP


class IoringEnter(enum.IntFlag):
    """``io_uring_enter()`` flags."""

    IORING_ENTER_GETEVENTS = 1 << 0
    IORING_ENTER_SQ_WAKEUP = 1 << 1
    IORING_ENTER_SQ_WAIT = 1 << 2
    IORING_ENTER_EXT_ARG = 1 << 3
    IORING_ENTER_REGISTERED_RING = 1 << 4


IORING_ENTER_GETEVENTS = IoringEnter.IORING_ENTER_GETEVENTS


class IoringFeat(enum.IntFlag):
    """``io_uring_params.features``, filled in by the kernel."""

    IORING_FEAT_SINGLE_MMAP = 1 << 0  # 5.4: SQ and CQ rings share one mmap
    IORING_FEAT_NODROP = 1 << 1  # 5.5: CQ overflow is kept, not dropped
    IORING_FEAT_SUBMIT_STABLE = 1 << 2
    IORING_FEAT_RW_CUR_POS = 1 << 3
    IORING_FEAT_CUR_PERSONALITY = 1 << 4
    IORING_FEAT_FAST_POLL = 1 << 5
    IORING_FEAT_POLL_32BITS = 1 << 6
    IORING_FEAT_SQPOLL_NONFIXED = 1 << 7
    IORING_FEAT_EXT_ARG = 1 << 8


IORING_FEAT_SINGLE_MMAP = IoringFeat.IORING_FEAT_SINGLE_MMAP
IORING_FEAT_NODROP = IoringFeat.IORING_FEAT_NODROP

# sq_ring->flags
IORING_SQ_NEED_WAKEUP = 1 << 0
IORING_SQ_CQ_OVERFLOW = 1 << 1

# Magic mmap offsets on the ring fd.
IORING_OFF_SQ_RING = 0
IORING_OFF_CQ_RING = 0x8000000
IORING_OFF_SQES = 0x10000000

# Not in io_uring.h: kernel limits the header implies.
IORING_MAX_ENTRIES = 32768  # io_uring/io_uring.h; more is EINVAL without CLAMP
