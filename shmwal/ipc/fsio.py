"""Files that must survive a crash whole: the one place that writes atomically and fsyncs directories.

A rename is durable only once its directory is fsynced, and a new file's
contents only once the file itself is: every writer of a file that others
must find complete after a crash (broker.run, a topic's meta) goes through here.
"""

from __future__ import annotations

import contextlib
import os

from ..errors import ShmwalError


def fsync_dir(path: str) -> None:
    """Make the directory's entries (a create, rename or unlink in it) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(path: str, tmp: str):
    """``with replacing(path, tmp) as fd:`` write the new file through ``fd`` (0600, read-write);
    on a normal exit it is fsynced, renamed over ``path`` and its directory fsynced: the file
    is old or new, never half.  If the block raises, ``path`` is untouched and ``tmp`` stays
    for whoever sweeps that name (each caller picks a ``tmp`` its sweeper knows)."""
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        yield fd
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)
    fsync_dir(os.path.dirname(path))


def write_atomic(path: str, data: bytes) -> None:
    """``data`` as the whole of ``path``, old or new after a crash, never half."""
    with replacing(path, f"{path}.{os.getpid()}.tmp") as fd:
        rest = memoryview(data)
        while rest:
            # A write may store less than asked (a filesystem that fills up midway does so
            # once, then raises ENOSPC): renaming a short file over ``path`` would lose it.
            rest = rest[os.write(fd, rest):]


def make_private_dir(path: str) -> None:
    """A directory of this user's, closed to everyone else (made if missing)."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    st = os.stat(path, follow_symlinks=False)
    if st.st_uid != os.getuid():
        raise ShmwalError(f"{path} belongs to uid {st.st_uid}, not to this user")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)
