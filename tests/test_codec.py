"""The record codec: round trips, every byte corrupted, and the appender's inlined copy."""

import pytest

from shmwal.blocks import codec, layout as L
from shmwal.blocks.chain import walk_to


def encode(entries, first=7, batch_left=0):
    buf = bytearray(1 << 16)
    end = codec.encode_record(buf, 0, first, batch_left, entries, [len(e) for e in entries])
    return buf, end


@pytest.mark.parametrize("entries", [[b"hello"], [b""], [b"a", b"", b"bcd" * 100], [bytes(range(256))] * 5])
def test_round_trip(entries):
    buf, end = encode(entries)
    record = codec.read_record(buf, 0, len(buf))
    assert (record.count, record.first_offset, record.size) == (len(entries), 7, end)
    assert end % L.ALIGN == 0
    assert [codec.entry_bytes(buf, record, i) for i in range(len(entries))] == entries


@pytest.mark.parametrize("entries", [[b"payload!"], [b"ab", b"cde", b"f"]])
def test_every_byte_corrupted_is_caught(entries):
    """Flip each byte of the record in turn: the decoder never returns a wrong payload."""
    clean, end = encode(entries)
    for at in range(end):
        buf = bytearray(clean)
        buf[at] ^= 0x41
        try:
            record = codec.read_record(buf, 0, len(buf))
        except codec.BadRecord:
            continue
        for i in range(record.count):
            got = codec.entry_bytes(buf, record, i)
            assert got is None or got == entries[i], f"byte {at}: entry {i} decoded wrong"


def test_cut_records_are_bad_not_crashes():
    buf, end = encode([b"x" * 100, b"y" * 50])
    for cut in range(end):
        with pytest.raises(codec.BadRecord):
            codec.read_record(bytes(buf[:cut]), 0, end)


def test_find_next_record_skips_damage():
    buf = bytearray(1 << 14)
    pos = 0
    starts = []
    for offset in range(10):
        starts.append(pos)
        pos = codec.encode_single(buf, pos, offset, b"e%d" % offset, 2)
    buf[starts[3] + 1] ^= 0xFF                        # the count of record 3
    found = codec.find_next_record(buf, starts[3] + L.ALIGN, len(buf), 3, 100)
    assert (found.pos, found.first_offset) == (starts[4], 4)


@pytest.mark.timeout(60)
def test_appender_writes_what_the_codec_writes(client, broker):
    """writer.Appender.append (and hot.c's) inline codec.encode_single: the bytes must be the same,
    for every kind of buffer."""
    payloads = [b"", b"a", b"x" * 100, bytes(range(200)), bytearray(b"y" * 70), memoryview(b"zz" * 40)]
    offsets = [client.append("t", p) for p in payloads]
    meta = client._topic_handles["t"][0]
    file_id, file_offset, capacity, first = meta.chain(0)
    mapping = client._files.map(file_id)
    for offset, payload in zip(offsets, payloads):
        pos, record = walk_to(mapping, file_offset, capacity, first, offset)
        expected = bytearray(record.size)
        codec.encode_single(expected, 0, offset, bytes(payload), len(payload))
        assert bytes(mapping[pos:pos + record.size]) == bytes(expected)
