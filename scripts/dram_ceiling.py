"""How much DRAM traffic this machine moves with one core writing and another reading at once:
the ceiling of a producer/consumer pair whose data passes through memory (issue 13's 64 KiB rows).

    python scripts/dram_ceiling.py [--rounds 3] [--mib 256]

A 64 KiB entry that shmwal appends is stored past the caches (hot.c: streaming stores from
32 KiB) and read back by the consumer from DRAM (it copies it or, zero-copy, hashes it): two
crossings of the memory bus an entry, whatever the code does around them, because the log keeps
what it writes (a 10 MiB block is not back in a cache by the time it is written again). This
compiles a C program (cc, -O2 -mavx2) that measures the two crossings with nothing else:
- ``write``: 64 KiB copies from a buffer in L1 into a ring of ``--mib`` MiB with streaming
  stores (what an append does to the block);
- ``read``: loads of another ring of ``--mib`` MiB, summed (what a reader's checksum does);
each alone, then both at once in two unrelated processes, then as a pair: one process streams
64 KiB chunks into a shared ring and counts them, the other loads each chunk once it is
counted (no hashing, no Python, no locks: the two crossings alone). That row is the
ceiling of any producer/consumer pair whose data goes through DRAM; compare it with
``python scripts/append_cost.py [--reserve]`` and the race's 64 KiB rows. On this project's
2-vCPU EPYC VM: 11.0 GB/s with 256 MiB rings, 12.7-12.9 with 16-48 MiB ones.

The last rows are the pair again with the consumer copying each chunk out, as reads that
return ``bytes`` do: into one 64 KiB buffer (``read_next``: each entry's copy freed before the
next, so its memory stays in the caches) or into twice a batch budget in turn (``batch_read``
while the caller holds the previous batch: past the caches every copy is a line of DRAM read
for ownership and written back). Their ratio bounds what ``batch_read`` of large entries with
large budgets can reach against ``read_next`` with ordinary copies. The rows under them copy
with streaming stores (no read for ownership, the caches left alone): from the start of each
batch, or past its first 8 MiB as hot.c's batches do (STREAM_BATCH_AFTER).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile

SOURCE = r"""
#include <immintrin.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (64 << 10)

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

static _Alignas(64) char hot[CHUNK];

static void stream_chunk(char *to)
{
    for (size_t i = 0; i < CHUNK; i += 32)
        _mm256_stream_si256((__m256i *)(to + i), _mm256_load_si256((const __m256i *)(hot + i)));
    _mm_sfence();
}

static __m256i load_chunk(const char *from, __m256i acc)
{
    for (size_t i = 0; i < CHUNK; i += 32)
        acc = _mm256_add_epi64(acc, _mm256_load_si256((const __m256i *)(from + i)));
    return acc;
}

/* A chunk copied with streaming stores (no read for ownership, nothing left in the caches). */
static void stream_copy(char *to, const char *from)
{
    for (size_t i = 0; i < CHUNK; i += 64) {
        __m256i a = _mm256_load_si256((const __m256i *)(from + i));
        __m256i b = _mm256_load_si256((const __m256i *)(from + i + 32));
        _mm256_stream_si256((__m256i *)(to + i), a);
        _mm256_stream_si256((__m256i *)(to + i + 32), b);
    }
    _mm_sfence();
}

/* The pair: the child streams chunks into the shared ring and counts them; the parent loads
 * each chunk once it is counted (copy_to > 0: copies it into the next chunk of a buffer of
 * that many bytes instead, seen as two batches of copy_to / 2 in turn: memcpy, or with
 * streaming stores from `stream_after` bytes into each batch); the child never laps the
 * parent by more than half the ring. */
static double pair(char *ring, size_t chunks, double seconds, size_t copy_to, size_t stream_after)
{
    char *copies = copy_to ? aligned_alloc(4096, copy_to) : NULL;
    size_t batch_chunks = copy_to / 2 >= CHUNK ? copy_to / 2 / CHUNK : 1;   /* one buffer: a batch of one */
    if (copies)
        memset(copies, 3, copy_to);                /* its pages in, as a kept heap's are */
    _Atomic unsigned long *counts = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    _Atomic unsigned long *written = &counts[0], *read = &counts[16], *stop = &counts[32];
    pid_t child = fork();
    if (child == 0) {
        unsigned long n = 0;
        while (!atomic_load(stop)) {
            if (n - atomic_load(read) >= chunks / 2)
                continue;
            stream_chunk(ring + (n % chunks) * CHUNK);
            atomic_store(written, ++n);
        }
        _exit(0);
    }
    __m256i acc = _mm256_setzero_si256();
    unsigned long n = 0;
    double start = now(), took = 0;
    while (took < seconds) {
        while (atomic_load(written) == n)
            ;
        if (copies) {
            char *to = copies + (n % (copy_to / CHUNK)) * CHUNK;
            if ((n % batch_chunks) * CHUNK >= stream_after)
                stream_copy(to, ring + (n % chunks) * CHUNK);
            else
                memcpy(to, ring + (n % chunks) * CHUNK, CHUNK);
            acc = _mm256_add_epi64(acc, _mm256_load_si256((const __m256i *)to));
        } else {
            acc = load_chunk(ring + (n % chunks) * CHUNK, acc);
        }
        atomic_store(read, ++n);
        if ((n & 63) == 0)
            took = now() - start;
    }
    took = now() - start;
    atomic_store(stop, 1);
    waitpid(child, NULL, 0);
    long long sink[4];
    _mm256_storeu_si256((__m256i *)sink, acc);
    return (double)n * CHUNK / took / 1e6 + (sink[0] & 1) * 1e-9;
}

int main(int argc, char **argv)
{
    const char *what = argv[1];
    size_t ring_bytes = (size_t)atol(argv[2]) << 20, chunks = ring_bytes / CHUNK;
    double seconds = atof(argv[3]);
    char *ring = mmap(NULL, ring_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    memset(ring, 1, ring_bytes);                   /* every page in before the clock starts */
    memset(hot, 2, sizeof hot);
    if (what[0] == 'p') {
        printf("%.0f\n", pair(ring, chunks, seconds, argc > 4 ? (size_t)atol(argv[4]) : 0,
                              argc > 5 ? (size_t)atoll(argv[5]) : (size_t)-1));
        return 0;
    }
    __m256i acc = _mm256_setzero_si256();
    size_t moved = 0;
    double start = now(), took = 0;
    while (took < seconds) {                       /* concurrent runs cover the same span of time */
        for (size_t c = 0; c < chunks; c++) {
            if (what[0] == 'w')
                stream_chunk(ring + c * CHUNK);
            else
                acc = load_chunk(ring + c * CHUNK, acc);
        }
        moved += ring_bytes;
        took = now() - start;
    }
    long long sink[4];
    _mm256_storeu_si256((__m256i *)sink, acc);
    printf("%.0f %lld\n", (double)moved / took / 1e6, sink[0] & 1);
    return 0;
}
"""


BATCH_MIB = (1, 8, 64)   # batch_read budgets of the README's batch table
STREAMED_MIB = (8, 16, 64)   # the same copies with streaming stores (hot.c STREAM_BATCH_AFTER)
STREAM_BATCH_AFTER = 8 << 20


def build(where: str) -> str:
    source, binary = os.path.join(where, "dram.c"), os.path.join(where, "dram")
    with open(source, "w") as f:
        f.write(SOURCE)
    subprocess.run(["cc", "-O2", "-mavx2", "-o", binary, source], check=True)
    return binary


def run(binary: str, kinds: list[str], mib: int, seconds: float, copy_to: int = 0,
        stream_after: int = -1) -> list[float]:
    """MB/s of each of ``kinds`` run at once, one process each. ``stream_after``: the pair's
    copies use streaming stores from this many bytes into each batch (-1: never)."""
    procs = [subprocess.Popen([binary, kind, str(mib), str(seconds), str(copy_to), str(stream_after)],
                              stdout=subprocess.PIPE, text=True)
             for kind in kinds]
    return [float(proc.communicate()[0].split()[0]) for proc in procs]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--mib", type=int, default=256, help="each ring's size (well past the caches)")
    p.add_argument("--seconds", type=float, default=2.0, help="how long each process runs")
    args = p.parse_args()
    where = tempfile.mkdtemp(prefix="shmwal-dram-")
    try:
        binary = build(where)
        rows = {"write alone": [], "read alone": [], "write, with a read": [], "read, with a write": [],
                "pair (each chunk written, then read)": [],
                "pair, copied into one 64 KiB buffer": []}
        for budget in BATCH_MIB:
            rows[f"pair, copied into 2 x {budget} MiB in turn"] = []
        for budget in STREAMED_MIB:
            rows[f"  the same, 2 x {budget} MiB, streaming stores"] = []
            if budget << 20 > STREAM_BATCH_AFTER:
                rows[f"  the same, 2 x {budget} MiB, streaming past 8 MiB"] = []
        for _ in range(args.rounds):
            rows["write alone"] += run(binary, ["write"], args.mib, args.seconds)
            rows["read alone"] += run(binary, ["read"], args.mib, args.seconds)
            both = run(binary, ["write", "read"], args.mib, args.seconds)
            rows["write, with a read"].append(both[0])
            rows["read, with a write"].append(both[1])
            rows["pair (each chunk written, then read)"] += run(binary, ["pair"], args.mib, args.seconds)
            rows["pair, copied into one 64 KiB buffer"] += run(binary, ["pair"], args.mib, args.seconds, 64 << 10)
            for budget in BATCH_MIB:
                rows[f"pair, copied into 2 x {budget} MiB in turn"] += run(binary, ["pair"], args.mib, args.seconds,
                                                                          2 * budget << 20)
            for budget in STREAMED_MIB:
                rows[f"  the same, 2 x {budget} MiB, streaming stores"] += run(
                    binary, ["pair"], args.mib, args.seconds, 2 * budget << 20, 0)
                if budget << 20 > STREAM_BATCH_AFTER:
                    rows[f"  the same, 2 x {budget} MiB, streaming past 8 MiB"] += run(
                        binary, ["pair"], args.mib, args.seconds, 2 * budget << 20, STREAM_BATCH_AFTER)
    finally:
        shutil.rmtree(where, ignore_errors=True)
    print(f"MB/s, median [min..max] of {args.rounds} rounds, rings of {args.mib} MiB:")
    for name, values in rows.items():
        print(f"  {name:<46} {statistics.median(values):8,.0f}  [{min(values):,.0f}..{max(values):,.0f}]")


if __name__ == "__main__":
    main()
