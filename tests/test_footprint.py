"""Files grow with the data (issue 12, footprint).

Block files are sparse: a block takes space only once the broker hands it
out, a topic's first blocks are small (layout.block_capacity), and a freed
block gives its space back.  Sizes here are allocated bytes (st_blocks * 512,
what ``du`` shows), never apparent sizes.
"""

from __future__ import annotations

import errno
import os
import subprocess

import pytest

from shmwal.blocks import layout as L
from shmwal.blocks.allocator import BlockAllocator
from shmwal.blocks.files import allocated_bytes

KiB, MiB = 1024, 1024 * 1024


def du(path: str) -> int:
    """Allocated bytes of everything under ``path`` (du's count, st_blocks * 512)."""
    total = os.lstat(path).st_blocks * 512
    for parent, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                total += os.lstat(os.path.join(parent, name)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


@pytest.fixture
def tmpfs(tmp_path):
    """mount(size) -> the path of a fresh tmpfs of that size (unmounted at teardown); skips where not permitted."""
    mounted = []

    def mount(size: str) -> str:
        mnt = tmp_path / f"tmpfs{len(mounted)}"
        mnt.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mnt)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): "
                        f"{done.stderr.strip() or done.returncode}")
        mounted.append(str(mnt))
        return str(mnt)

    yield mount
    for mnt in mounted:
        if subprocess.run(["umount", mnt], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", mnt], capture_output=True)


# ----------------------------------------------------------------------------- the allocator alone

def test_first_blocks_are_small_and_grow_to_block_size():
    assert [L.block_capacity(i, 10 * MiB) for i in range(7)] == \
        [64 * KiB, 256 * KiB, 1 * MiB, 4 * MiB, 10 * MiB, 10 * MiB, 10 * MiB]
    assert L.block_capacity(0, 16 * KiB) == 16 * KiB          # never more than block_size
    assert L.block_capacity(10**9, 10 * MiB) == 10 * MiB


def test_a_block_takes_space_when_handed_out_and_gives_it_back_when_freed(tmp_path):
    allocator = BlockAllocator(str(tmp_path), 1 * MiB, 4)
    path = lambda file_id: os.path.join(str(tmp_path), L.block_file_name(file_id))  # noqa: E731
    first = allocator.alloc(L.BLOCK_HEADER_SIZE, "t", chain_index=0)
    assert first[2] == 64 * KiB
    assert os.path.getsize(path(first[0])) == 4 * MiB                 # full size, so mappings never fault
    assert allocated_bytes(path(first[0])) == 64 * KiB
    second = allocator.alloc(L.BLOCK_HEADER_SIZE, "t", chain_index=1)
    full = allocator.alloc(L.BLOCK_HEADER_SIZE, "t")                    # no chain index: a full block
    assert (second[0], second[1], second[2]) == (first[0], 1 * MiB, 256 * KiB)
    assert full[1:] == (2 * MiB, 1 * MiB)
    assert allocated_bytes(path(first[0])) == 64 * KiB + 256 * KiB + 1 * MiB
    big = allocator.alloc(300 * KiB, "t", chain_index=0)              # one entry needs more than the ramp gives
    assert big[2] == 300 * KiB
    assert allocated_bytes(path(first[0])) == 64 * KiB + 256 * KiB + 1 * MiB + 300 * KiB
    allocator.free(*second[:2])
    assert allocated_bytes(path(first[0])) == 64 * KiB + 1 * MiB + 300 * KiB
    allocator.free(*full[:2], release_space=False)                     # a zero-copy view still reads it
    assert allocated_bytes(path(first[0])) == 64 * KiB + 1 * MiB + 300 * KiB


def test_an_offered_block_keeps_its_space_until_it_expires(tmp_path):
    allocator = BlockAllocator(str(tmp_path), 64 * KiB, 4)
    file_id, offset, capacity = allocator.alloc(100, "t")
    allocator.offer("t", file_id, offset)
    assert allocator.reusable_bytes("t") == 64 * KiB
    path = os.path.join(str(tmp_path), L.block_file_name(file_id))
    assert allocated_bytes(path) == 64 * KiB
    allocator.expire(0.0)
    assert allocated_bytes(path) == 0 and allocator.reusable_bytes("t") == 0
    assert allocator.deletable() == []                                   # still the file handing out blocks


def test_a_full_disk_is_enospc_naming_the_directory_and_the_bytes_and_hands_out_nothing(tmpfs):
    mnt = tmpfs("1m")
    allocator = BlockAllocator(mnt, 2 * MiB, 4)
    with pytest.raises(OSError) as caught:
        allocator.alloc(100, "orders", chain_index=9)
    assert caught.value.errno == errno.ENOSPC
    message = str(caught.value)
    assert mnt in message and "orders" in message and f"{2 * MiB:,} bytes" in message
    assert allocator.live[allocator._current] == {}
    assert du(mnt) == 0                                                  # a failed fallocate keeps nothing
    assert allocator.alloc(100, "orders", chain_index=0) == (allocator._current, 0, 64 * KiB)
    with pytest.raises(OSError) as caught:                               # a jumbo block: its file goes again
        allocator.alloc(3 * MiB, "orders")
    assert caught.value.errno == errno.ENOSPC and f"{3 * MiB:,} bytes" in str(caught.value)
    assert sorted(os.listdir(mnt)) == [L.block_file_name(allocator._current)]
