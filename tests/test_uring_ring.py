"""shmwal.uring against plain files: every result compared byte for byte with os.pread."""

import errno
import mmap
import os
import random
import signal
import sys
import threading
import time

import pytest

from shmwal import uring
from shmwal.uring import ReadArena, Ring, ShortRead, disabled_by_env, probe, resident_fraction
from shmwal.uring import ring as ring_mod

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(sys.platform != "linux", reason="io_uring is Linux-only"),
]


def make_file(path, size, seed):
    data = random.Random(seed).randbytes(size)
    path.write_bytes(data)
    return data


@pytest.fixture
def ring():
    with Ring(64) as r:
        yield r


@pytest.fixture
def files(tmp_path):
    """Three files of awkward sizes, opened read-only: [(fd, data)]."""
    out = []
    for i, size in enumerate((1 << 20, 300_001, (2 << 20) + 123)):
        p = tmp_path / f"f{i}"
        data = make_file(p, size, seed=i)
        out.append((os.open(p, os.O_RDONLY), data))
    yield out
    for fd, _ in out:
        os.close(fd)


def idle(r):
    """Nothing submitted and unreaped, nothing pinned."""
    return r._sq_tail == r._cq_head and not r._pins


def layout(specs, gap_rng=None):
    """Give each (fd, off, length) a buffer offset, in order; returns (requests, total)."""
    requests, boff = [], 0
    for fd, off, length in specs:
        if gap_rng is not None:
            boff += gap_rng.randrange(0, 64)
        requests.append((fd, off, length, boff))
        boff += length
    return requests, boff


def check_buffer(buf, requests):
    for fd, off, length, boff in requests:
        assert bytes(buf[boff:boff + length]) == os.pread(fd, length, off), (fd, off, length)


@pytest.mark.timeout(120)
def test_thousand_random_ranges_across_three_files(ring, files):
    rng = random.Random(1)
    specs = []
    for _ in range(1000):
        fd, data = rng.choice(files)
        length = rng.choice((0, 1, 17, 256, 4096, 4097, rng.randrange(0, 70_000)))
        off = rng.randrange(0, len(data) - length + 1)
        specs.append((fd, off, length))
    requests, total = layout(specs, gap_rng=rng)
    with ReadArena(total) as arena:
        assert ring.read_ranges(requests, arena) is None
        check_buffer(arena.view(total), requests)
        # The same call with allow_short reports every byte count exactly.
        assert ring.read_ranges(requests, arena, allow_short=True) == [s[2] for s in specs]
    assert idle(ring)


def test_ranges_alternating_between_files_are_not_merged(ring, files):
    (fa, a), (fb, b), _ = files
    # Contiguous in the buffer and at the same file offsets, but different fds.
    requests, total = layout([(fa, 0, 1000), (fb, 1000, 1000), (fa, 2000, 1000), (fb, 3000, 1000)])
    _, ops = ring_mod.plan_reads(requests, total)
    assert len(ops) == 4
    buf = bytearray(total)
    ring.read_ranges(requests, buf)
    assert buf == a[0:1000] + b[1000:2000] + a[2000:3000] + b[3000:4000]


def test_adjacent_ranges_merge_into_one_read_with_identical_bytes(ring, files):
    fd, data = files[0]
    contiguous = [(fd, 4096 * i + 10, 4096, 4096 * i) for i in range(100)]
    reqs, ops = ring_mod.plan_reads(contiguous, 100 * 4096)
    assert ops == [[fd, 10, 0, 100 * 4096, 0, 100]]
    with ReadArena(100 * 4096) as arena:
        ring.read_ranges(contiguous, arena)
        assert bytes(arena.view(100 * 4096)) == data[10:10 + 100 * 4096]
    # Contiguous in the file but not in the buffer (or vice versa): separate reads.
    gap_in_buffer = [(fd, 0, 100, 0), (fd, 100, 100, 101)]
    gap_in_file = [(fd, 0, 100, 0), (fd, 101, 100, 100)]
    assert len(ring_mod.plan_reads(gap_in_buffer, 300)[1]) == 2
    assert len(ring_mod.plan_reads(gap_in_file, 300)[1]) == 2
    # A zero-length request inside a run does not break the merge.
    with_empty = [(fd, 0, 100, 0), (fd, 5000, 0, 7), (fd, 100, 100, 100)]
    assert ring_mod.plan_reads(with_empty, 300)[1] == [[fd, 0, 0, 200, 0, 3]]
    for requests in (gap_in_buffer, gap_in_file, with_empty):
        buf = bytearray(300)
        ring.read_ranges(requests, buf)
        check_buffer(buf, requests)


def test_zero_length_requests_are_never_submitted(ring, tmp_path):
    arena = ReadArena(4096)
    # A bad fd and an offset far past EOF: fine, because nothing is read.
    assert ring.read_ranges([(-1, 0, 0, 0), (12345, 1 << 40, 0, 4096)], arena) is None
    assert ring.read_ranges([(-1, 0, 0, 0)], arena, allow_short=True) == [0]
    assert ring.read_ranges([], arena, allow_short=True) == []
    assert ring.read_ranges([], bytearray()) is None
    assert ring._sq_tail == 0 and idle(ring)


def test_read_at_and_over_end_of_file(ring, tmp_path):
    data = make_file(tmp_path / "f", 10_000, seed=7)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        buf = bytearray(20_000)
        # Ending exactly at EOF is a full read.
        ring.read_ranges([(fd, 9_000, 1_000, 0)], buf)
        assert buf[:1000] == data[9000:]
        # Crossing EOF: ShortRead names the first short request, after all completed.
        reqs = [(fd, 0, 100, 0), (fd, 9_990, 50, 100), (fd, 20_000, 10, 200), (fd, 50, 10, 300)]
        with pytest.raises(ShortRead) as info:
            ring.read_ranges(reqs, buf)
        e = info.value
        assert (e.fd, e.offset, e.wanted, e.got) == (fd, 9_990, 50, 10)
        assert isinstance(e, OSError) and isinstance(e, EOFError)
        assert "wanted 50 bytes, got 10" in str(e)
        assert idle(ring)
        # allow_short: exact counts, and the bytes that exist are there.
        buf[:] = bytes(len(buf))
        assert ring.read_ranges(reqs, buf, allow_short=True) == [100, 10, 0, 10]
        assert buf[0:100] == data[0:100]
        assert buf[100:110] == data[9_990:] and buf[110:150] == bytes(40)
        assert buf[300:310] == data[50:60]
        # A merged read that hits EOF splits its count across its requests.
        merged = [(fd, 9_000, 600, 0), (fd, 9_600, 600, 600), (fd, 10_200, 600, 1200)]
        assert len(ring_mod.plan_reads(merged, len(buf))[1]) == 1
        assert ring.read_ranges(merged, buf, allow_short=True) == [600, 400, 0]
        assert buf[:1000] == data[9000:]
    finally:
        os.close(fd)


def test_short_reads_are_resubmitted_until_filled(ring):
    # A pipe hands out what it has: the first read returns 100 of 200 bytes and
    # the rest must be asked for again (the offset is ignored on a pipe).
    rp, wp = os.pipe()
    try:
        os.write(wp, b"a" * 100)
        timer = threading.Timer(0.2, os.write, (wp, b"b" * 100))
        timer.start()
        buf = bytearray(200)
        ring.read_ranges([(rp, 0, 200, 0)], buf)
        timer.join()
        assert buf == b"a" * 100 + b"b" * 100
        os.write(wp, b"c" * 30)
        os.close(wp)
        wp = -1
        assert ring.read_ranges([(rp, 0, 200, 0)], buf, allow_short=True) == [30]
        assert idle(ring)
    finally:
        os.close(rp)
        if wp >= 0:
            os.close(wp)


def test_failing_read_raises_after_everything_completed(ring, files, tmp_path):
    fd, data = files[0]
    closed_fd = os.open(tmp_path / "gone", os.O_RDONLY | os.O_CREAT)
    os.close(closed_fd)
    specs = [(fd, 1000 * i, 500) for i in range(300)]
    specs[150] = (closed_fd, 0, 10)
    requests, total = layout(specs)
    buf = bytearray(total)
    with pytest.raises(OSError) as info:
        ring.read_ranges(requests, buf)
    assert info.value.errno == errno.EBADF
    assert info.value.strerror == os.strerror(errno.EBADF)
    assert idle(ring)
    # Still usable, and right.
    good = [r for r in requests if r[0] == fd]
    buf2 = bytearray(total)
    ring.read_ranges(good, buf2)
    check_buffer(buf2, good)


def test_first_failure_in_request_order_wins(ring, files, tmp_path):
    fd, _ = files[0]
    dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    wr_fd = os.open(tmp_path / "w", os.O_WRONLY | os.O_CREAT)
    try:
        requests = [(fd, 0, 10, 0), (dir_fd, 0, 10, 10), (fd, 10, 10, 20), (wr_fd, 0, 10, 30)]
        with pytest.raises(OSError) as info:
            ring.read_ranges(requests, bytearray(40))
        assert info.value.errno == errno.EISDIR
        with pytest.raises(OSError) as info:
            ring.read_ranges(requests[2:], bytearray(40))
        assert info.value.errno == errno.EBADF  # read from a write-only fd
        assert idle(ring)
    finally:
        os.close(dir_fd)
        os.close(wr_fd)


def test_more_requests_than_ring_entries(files):
    fd, data = files[2]
    with Ring(4) as small:
        assert small.sq_entries == 4
        rng = random.Random(3)
        specs = [(fd, rng.randrange(0, len(data) - 999), rng.randrange(1, 1000)) for _ in range(1000)]
        requests, total = layout(specs, gap_rng=rng)  # gaps: nothing merges
        assert len(ring_mod.plan_reads(requests, total)[1]) == 1000
        with ReadArena(total) as arena:
            small.read_ranges(requests, arena)
            check_buffer(arena.view(total), requests)
        assert idle(small)


def test_one_range_much_bigger_than_the_ring(ring, tmp_path):
    size = 8 << 20
    data = make_file(tmp_path / "big", size + 5, seed=9)
    fd = os.open(tmp_path / "big", os.O_RDONLY)
    try:
        with ReadArena(size) as arena:
            ring.read_ranges([(fd, 5, size, 0)], arena)
            assert bytes(arena.view(size)) == data[5:]
    finally:
        os.close(fd)


def test_reads_are_split_at_max_read(ring, tmp_path, monkeypatch):
    # The real limit is 1 GiB; plan a 2.5 GiB range without allocating it...
    gib = 1 << 30
    _, ops = ring_mod.plan_reads([(3, 7, 5 * gib // 2, 0)], 3 * gib)
    assert [op[1:4] for op in ops] == [[7, 0, gib], [7 + gib, gib, gib], [7 + 2 * gib, 2 * gib, gib // 2]]
    # ...then read through a small limit so the split reads really happen.
    monkeypatch.setattr(ring_mod, "MAX_READ", 65536)
    data = make_file(tmp_path / "f", (1 << 20) + 5, seed=4)
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        buf = bytearray(len(data) + 100)
        assert len(ring_mod.plan_reads([(fd, 0, len(data) + 100, 0)], len(buf))[1]) == 17
        assert ring.read_ranges([(fd, 0, len(data) + 100, 0)], buf, allow_short=True) == [len(data)]
        assert buf[:len(data)] == data
    finally:
        os.close(fd)


def test_invalid_requests_rejected_before_any_read(ring):
    buf = bytearray(100)
    for bad in ([(0, -1, 10, 0)], [(0, 0, -1, 0)], [(0, 0, 10, -1)], [(0, 0, 10, 95)],
                [(1 << 31, 0, 1, 0)], [(0, (1 << 63) - 1, 1, 0)]):
        with pytest.raises(ValueError):
            ring.read_ranges(bad, buf)
    with pytest.raises(TypeError):
        ring.read_ranges([(0, 0.5, 1, 0)], buf)
    with pytest.raises(TypeError):
        ring.read_ranges([(0, 0, 1, 0)], b"read-only")
    assert ring._sq_tail == 0


@pytest.mark.timeout(30)
def test_interrupted_wait_drains_before_raising(ring, files, monkeypatch):
    """A signal handler raising mid-wait must not leave a read in flight."""
    in_flight_at_drain = []
    real_drain = Ring._drain

    def spy(self):
        in_flight_at_drain.append(self._sq_tail - self._cq_head)
        real_drain(self)

    monkeypatch.setattr(Ring, "_drain", spy)

    class Interrupted(Exception):
        pass

    def on_alarm(signum, frame):
        raise Interrupted

    fd, data = files[0]
    rp, wp = os.pipe()
    old = signal.signal(signal.SIGALRM, on_alarm)
    timer = threading.Timer(0.6, os.write, (wp, b"z" * 10))
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        timer.start()
        buf = bytearray(4096 + 10)
        start = time.monotonic()
        with pytest.raises(Interrupted):
            # The pipe read cannot finish until the timer writes at 0.6 s.
            ring.read_ranges([(fd, 0, 4096, 0), (rp, 0, 10, 4096)], buf)
        assert time.monotonic() - start >= 0.55  # waited for the pipe read
        # Drained on the way out: the pipe read at least (the file read's CQE
        # too if the handler ran before its reap was committed).
        assert len(in_flight_at_drain) == 1 and in_flight_at_drain[0] in (1, 2)
        assert idle(ring)
        assert buf == data[:4096] + b"z" * 10
        ring.read_ranges([(fd, 100, 10, 0)], buf)
        assert buf[:10] == data[100:110]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        timer.join()
        os.close(rp)
        os.close(wp)


def test_arena_alignment_and_growth():
    arena = ReadArena(1000)
    assert arena.capacity == 4096 and arena.address % 4096 == 0
    v = arena.view(10)
    assert len(v) == 10 and not v.readonly
    v[:] = b"0123456789"
    arena.reserve(4096)  # fits: no reallocation
    assert arena.capacity == 4096 and bytes(arena.view(10)) == b"0123456789"
    arena.reserve(4097)
    assert arena.capacity == 8192 and arena.address % 4096 == 0
    assert bytes(v) == b"0123456789"  # an old view keeps its old memory
    big = arena.view(5 << 20)
    assert len(big) == 5 << 20 and arena.capacity == 8 << 20 and arena.address % 4096 == 0
    with pytest.raises(ValueError):
        arena.reserve(-1)
    v.release()
    big.release()
    arena.close()
    arena.close()
    with pytest.raises(ValueError):
        arena.view(1)
    assert ReadArena(0).capacity == 4096
    assert ReadArena(1 << 16).capacity == 1 << 16


def test_arena_pinned_while_reading_cannot_be_unmapped(ring, files):
    fd, data = files[0]
    arena = ReadArena(4096)
    ring.read_ranges([(fd, 0, 4096, 0)], arena)
    assert bytes(arena.view(4096)) == data[:4096]
    arena.close()
    with pytest.raises(ValueError):
        ring.read_ranges([(fd, 0, 1, 0)], arena)


def test_probe_says_io_uring_works_here():
    assert probe() is None
    assert probe() is None  # cached


def test_probe_cache_reset_after_fork():
    assert probe() is None
    pid = os.fork()
    if pid == 0:  # child: fresh probe state, and the parent's ring is off limits
        code = 0 if ring_mod._probe_cache is ring_mod._UNSET else 1
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_ring_refuses_use_in_forked_child(ring, files):
    fd, _ = files[0]
    pid = os.fork()
    if pid == 0:
        try:
            ring.read_ranges([(fd, 0, 1, 0)], bytearray(1))
            code = 1
        except RuntimeError:
            code = 0
        except BaseException:
            code = 2
        ring.close()  # only the child's copy
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    buf = bytearray(1)
    ring.read_ranges([(fd, 0, 1, 0)], buf)  # parent's ring unharmed
    assert buf == bytes(files[0][1][:1])


def test_setup_failure_reasons_are_human():
    reason = ring_mod._setup_failure_reason(OSError(errno.EPERM, "Operation not permitted"))
    assert reason.startswith("io_uring_setup failed: EPERM (")
    assert "ENOSYS" in ring_mod._setup_failure_reason(OSError(errno.ENOSYS, "x"))
    assert "too old" in ring_mod._setup_failure_reason(OSError(errno.ENOSYS, "x"))
    assert "RLIMIT_MEMLOCK" in ring_mod._setup_failure_reason(OSError(errno.ENOMEM, "x"))


@pytest.mark.parametrize("value, expected", [
    (None, False), ("", False), ("0", False), ("false", False), ("1", True), ("yes", True),
])
def test_disabled_by_env(monkeypatch, value, expected):
    if value is None:
        monkeypatch.delenv("SHMWAL_DISABLE_IO_URING", raising=False)
    else:
        monkeypatch.setenv("SHMWAL_DISABLE_IO_URING", value)
    assert disabled_by_env() is expected
    assert probe() is None  # probe reports the kernel, not the env


def test_close_twice_and_closed_ring_errors(files):
    fd, _ = files[0]
    r = Ring(8)
    assert not r.closed and r.sq_entries == 8 and r.cq_entries == 16
    r.close()
    r.close()
    assert r.closed
    with pytest.raises(ValueError, match="closed"):
        r.read_ranges([(fd, 0, 1, 0)], bytearray(1))
    with Ring(2) as r2:
        pass
    assert r2.closed


def test_ring_entries_validated_and_rounded():
    with pytest.raises(ValueError):
        Ring(0)
    with pytest.raises(ValueError):
        Ring(1 << 20)
    with Ring(5) as r:
        assert r.sq_entries == 8  # the kernel rounds up to a power of two


def test_half_built_ring_del_is_safe():
    r = Ring.__new__(Ring)
    r.__del__()
    r.close()


def open_fds():
    return set(os.listdir("/proc/self/fd"))


def test_rings_leak_no_fds_even_when_setup_fails_midway(monkeypatch):
    before = open_fds()
    for _ in range(50):
        Ring(8).close()
    with Ring(8):
        pass
    assert open_fds() == before
    real_mmap = mmap.mmap

    def sqes_mmap_fails(fd, size, *, flags, prot, offset):
        if offset == uring.abi.IORING_OFF_SQES:
            raise OSError(errno.ENOMEM, "injected")
        return real_mmap(fd, size, flags=flags, prot=prot, offset=offset)

    monkeypatch.setattr(mmap, "mmap", sqes_mmap_fails)
    with pytest.raises(OSError, match="injected"):
        Ring(8)
    monkeypatch.undo()
    assert open_fds() == before


def test_resident_fraction(tmp_path):
    path = tmp_path / "r"
    size = 64 * 4096
    data = make_file(path, size, seed=5)
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        assert resident_fraction(fd, 0, size) == 0.0
        assert os.pread(fd, 4096 * 8, 0) == data[:4096 * 8]  # may read ahead
        assert resident_fraction(fd, 0, 4096 * 8) == 1.0
        assert resident_fraction(fd, 100, 10) == 1.0  # rounds to the page
        assert resident_fraction(fd, 0, 0) == 1.0
        with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as mm:
            assert resident_fraction(mm, 0, 4096 * 8) == 1.0
            mm[:]  # touch everything
            assert resident_fraction(mm, 0, size) == 1.0
            assert resident_fraction(mm, 4096, 1) == 1.0
            with pytest.raises(ValueError):
                resident_fraction(mm, 0, size + 1)
        # Cold again (no mapping holds the pages), checked half and half.
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        for page in range(0, 64, 2):
            os.pread(fd, 1, page * 4096)
        assert resident_fraction(fd, 0, size) == 0.5
        assert [resident_fraction(fd, 4096 * i, 4096) for i in range(4)] == [1.0, 0.0, 1.0, 0.0]
        assert resident_fraction(fd, 4095, 2) == 0.5  # straddles a resident and a cold page
        assert resident_fraction(fd, size, 4096) == 0.0  # past EOF
    finally:
        os.close(fd)
    with pytest.raises(OSError) as info:
        resident_fraction(fd, 0, 1)
    assert info.value.errno == errno.EBADF


def test_package_exports():
    assert set(uring.__all__) == {
        "Ring", "ReadArena", "probe", "disabled_by_env", "resident_fraction", "ShortRead"}
