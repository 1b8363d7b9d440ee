"""Files written whole or not at all (ipc/fsio.py)."""

from __future__ import annotations

import errno
import os

import pytest

from shmwal.ipc.fsio import write_atomic


@pytest.mark.timeout(60)
def test_write_atomic_replaces_the_whole_file(tmp_path):
    path = str(tmp_path / "f")
    write_atomic(path, b"old")
    write_atomic(path, b"new contents")
    assert open(path, "rb").read() == b"new contents"
    assert os.listdir(tmp_path) == ["f"]
    assert os.stat(path).st_mode & 0o777 == 0o600


@pytest.mark.timeout(60)
def test_write_atomic_on_a_full_filesystem_raises_and_keeps_the_old_file(tmpfs):
    mnt = tmpfs("1m")
    path = os.path.join(mnt, "f")
    write_atomic(path, b"old")
    # More than fits: the first write stores what fits and returns short, the next raises.
    with pytest.raises(OSError) as caught:
        write_atomic(path, bytes(2 << 20))
    assert caught.value.errno == errno.ENOSPC
    assert open(path, "rb").read() == b"old"
