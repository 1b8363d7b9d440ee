"""``client.reserve(topic, nbytes)``: an entry written in place in the mapped block.

The producer fills ``slot.buffer`` (a writable memoryview of the payload area)
inside a ``with`` block; no copy on the send side.  The writer mutex is held
from ``__enter__`` to ``__exit__`` (Appender.reserve_begin says why that is
crash-safe), so the entry takes the next offset whatever else writes the topic.

Leaving the block normally publishes the entry exactly as ``append`` would
(checksum, then the publish word); leaving it by an exception publishes
nothing and the offset goes to the next entry.  ``slot.buffer`` is released
either way, so a stale reference cannot write into a published entry
(``ValueError`` on use).  Views made *from* it that do not hold an export of
it, such as ``numpy.frombuffer`` arrays, do point into the mapped block after
the block ends: writing through one then changes a published entry, which
readers report as ``CorruptEntry``.

This is the reference path (SHMWAL_PURE_PYTHON=1, SyncEach).  Where hot.c is built,
``Client.reserve`` returns its compiled twin, ``shmwal._hot.Slot``: the same behaviour
(tests/test_differential.py compares them), at about the cost of an append; it hands
whatever is unusual to the Appender's reserve_begin/commit/abort that this class uses.
"""

from __future__ import annotations

from ..blocks import layout as L
from ..errors import EntryTooLarge

_NEW, _OPEN, _DONE = 0, 1, 2


def check_nbytes(nbytes) -> int:
    if isinstance(nbytes, bool) or not isinstance(nbytes, int):
        raise TypeError(f"nbytes must be an int, not {type(nbytes).__name__}")
    if nbytes < 0:
        raise ValueError(f"nbytes must be >= 0, got {nbytes}")
    if nbytes > L.MAX_ENTRY:
        raise EntryTooLarge(f"an entry holds at most {L.MAX_ENTRY} bytes, got {nbytes}")
    return nbytes


class Slot:
    """One reserved entry: ``buffer`` inside the ``with`` block, ``offset`` after it."""

    __slots__ = ("_appender_for", "_topic", "_nbytes", "_appender", "_place", "_state", "_filled", "buffer", "offset")

    def __init__(self, appender_for, topic: str, nbytes: int):
        self._appender_for = appender_for   # fn(topic) -> the client's Appender of the topic
        self._topic = topic
        self._nbytes = nbytes
        self._appender = None
        self._place = None
        self._state = _NEW
        self._filled = False
        self.buffer = None   # the payload area while the block runs
        self.offset = None   # the entry's offset once published

    @property
    def nbytes(self) -> int:
        return self._nbytes

    def __enter__(self) -> "Slot":
        if self._state != _NEW:
            raise RuntimeError("a reserve() slot is entered once")
        self._appender = self._appender_for(self._topic)
        self._place, self.buffer = self._appender.reserve_begin(self._nbytes)
        self._state = _OPEN
        return self

    def fill(self, parts) -> None:
        """Write the payload as ``parts`` (bytes-like objects) back to back, then release
        ``buffer``: their sizes must add up to ``nbytes``.

        The same entry as copying them into ``buffer`` by hand; from 32 KiB the compiled
        path copies past the caches and takes the checksum on the way in rather than
        reading the payload back (hot.c copy_parts_checksum).
        Nothing is written when a part is not a contiguous bytes-like object
        (``TypeError``) or the sizes do not add up (``ValueError``); the slot stays open.
        """
        if self._state != _OPEN or self._filled:
            raise RuntimeError("fill() is for an open slot, inside its with block, once")
        if not isinstance(parts, (list, tuple)):
            raise TypeError("fill() takes a list or tuple of bytes-like objects")
        views = []
        for i, part in enumerate(parts):
            try:
                view = memoryview(part)
            except (TypeError, ValueError):   # not bytes-like, or a released memoryview
                raise TypeError(f"fill(): part {i} is not a contiguous bytes-like object "
                                f"({type(part).__name__})") from None
            if not view.c_contiguous:
                raise TypeError(f"fill(): part {i} is not a contiguous bytes-like object ({type(part).__name__})")
            if view.nbytes and (view.format != "B" or view.ndim != 1):
                view = view.cast("B")   # (an empty view of more than one dimension cannot be cast)
            views.append(view)
        total = sum(view.nbytes for view in views)
        if total != self._nbytes:
            raise ValueError(f"fill(): the parts hold {total} bytes, the slot {self._nbytes}")
        target, at = self.buffer, 0
        for view in views:
            if view.nbytes:
                target[at:at + view.nbytes] = view
                at += view.nbytes
        self._filled = True
        try:
            target.release()
        except BufferError:
            pass   # an export of it lives on (module docstring): the entry is still published

    def __exit__(self, exc_type, exc, tb) -> bool:
        if self._state != _OPEN:
            return False
        self._state = _DONE
        buffer, self.buffer = self.buffer, None
        try:
            buffer.release()
        except BufferError:
            # Something holds an export of it (e.g. a ctypes from_buffer): it stays
            # usable through that object (module docstring); the entry is still published.
            pass
        self.buffer = buffer
        if exc_type is None:
            self.offset = self._appender.reserve_commit(self._place)
        else:
            self._appender.reserve_abort(self._place)
        return False

    def __repr__(self) -> str:
        state = ("reserved", "open", "published" if self.offset is not None else "discarded")[self._state]
        return f"<shmwal reserve slot {self._topic!r} {self._nbytes} bytes {state} offset={self.offset}>"
