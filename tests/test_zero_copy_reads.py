"""read_next(..., zero_copy=True) and the pins its views hold (issue 13).

The compiled path serves it in hot.c (Reader.next_view, a PinnedView per entry); the
pure-Python path through GroupReader._take; both run here (SHMWAL_PURE_PYTHON=1 in .ci/run).
"""

from __future__ import annotations

import gc

import numpy as np
import pytest

from shmwal.blocks import layout as L
from shmwal.client.hot import native
from helpers import connect


def pins(client, topic: str, block: int) -> int:
    meta = client._topic_handles[topic][0]
    file_id, file_offset = meta.chain(block)[:2]
    return int.from_bytes(client._files.map(file_id)[file_offset + L.B_PINS:file_offset + L.B_PINS + 8], "little")


def test_read_next_zero_copy_gives_pinned_read_only_views_in_order(broker):
    with connect(broker) as client:
        datas = [bytes([i]) * (100 + i) for i in range(40)]
        for d in datas:
            client.append("z", d)
        got = []
        for i in range(40):
            if i % 3 == 0:   # peeks and copies mixed in: one cursor
                peek = client.read_next("z", checkpoint=False, zero_copy=True)
                assert peek.offset == i and bytes(peek.data) == datas[i]
            entry = client.read_next("z", zero_copy=i % 5 != 4)
            assert entry.offset == i
            if i % 5 != 4:
                assert isinstance(entry.data, memoryview) and entry.data.readonly
                with pytest.raises(TypeError):
                    entry.data[0] = 1
            got.append(entry)
        assert client.read_next("z", zero_copy=True) is None
        assert [bytes(e.data) for e in got] == datas
        assert pins(client, "z", 0) >= 1           # views of block 0 are alive
        del got, entry, peek
        gc.collect()
        assert pins(client, "z", 0) == 0           # and the pins went with them


def test_read_next_zero_copy_waits_like_read_next(broker):
    with connect(broker) as client:
        assert client.read_next("w", zero_copy=True) is None
        assert client.read_next("w", timeout=0.05, zero_copy=True) is None
        client.append("w", b"late")
        entry = client.read_next("w", timeout=5, zero_copy=True)
        assert (entry.offset, bytes(entry.data)) == (0, b"late")


def test_numpy_frombuffer_over_a_read_next_view(broker):
    with connect(broker) as client:
        values = np.linspace(0, 1, 5000, dtype="<f4")
        client.append("arrays", values)
        entry = client.read_next("arrays", zero_copy=True)
        array = np.frombuffer(entry.data, dtype="<f4")
        assert not array.flags.writeable
        np.testing.assert_array_equal(array, values)
        del entry
        gc.collect()
        np.testing.assert_array_equal(array, values)   # the array keeps the view, and the pin
        assert pins(client, "arrays", 0) == 1
        del array
        gc.collect()
        assert pins(client, "arrays", 0) == 0


@pytest.mark.skipif(native is None, reason="hot.c not built (or SHMWAL_PURE_PYTHON is set)")
def test_pinned_view_pins_exports_read_only_and_checks_its_range():
    import mmap

    mapping = mmap.mmap(-1, 4096)
    view = native.PinnedView(mapping, 8, 64, 10)
    assert int.from_bytes(mapping[8:16], "little") == 1
    mv = memoryview(view)
    assert mv.readonly and mv.nbytes == 10
    with pytest.raises(BufferError):
        mapping.close()                         # held while the view lives
    mapping[64:74] = b"0123456789"
    assert bytes(mv) == b"0123456789"
    whole = native.PinnedView(mapping, 8)
    assert memoryview(whole).nbytes == 4096 and int.from_bytes(mapping[8:16], "little") == 2
    del mv, view, whole
    gc.collect()
    assert int.from_bytes(mapping[8:16], "little") == 0
    for args in [(mapping, 4092), (mapping, 7), (mapping, 8, 4000, 200), (mapping, 8, -1, 5), (b"abc" * 8, 0)]:
        with pytest.raises((ValueError, BufferError, TypeError)):
            native.PinnedView(*args)
    assert int.from_bytes(mapping[8:16], "little") == 0   # a refused view pinned nothing
    mapping.close()
