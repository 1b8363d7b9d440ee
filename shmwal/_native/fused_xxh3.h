/* One pass over a large payload: copy it and take its XXH3-64 (with seed) at once.
 *
 * Included by hot.c after xxhash.h (XXH_INLINE_ALL), whose internals this reuses: the
 * custom secret of a seed, the initial accumulators, the final merge. The loop is
 * XXH3_hashLong_internal_loop's, stripe by stripe (64 bytes: two AVX2 registers), except
 * that each stripe is loaded once and the same registers are both accumulated and stored
 * (ordinary stores, streaming stores, or none), with the source prefetched PREFETCH_AHEAD
 * bytes ahead. What is hashed is therefore exactly what was stored, whatever another
 * thread does to the source meanwhile, and the digest is XXH3_64bits_withSeed's (tests:
 * test_native.py against the xxhash package, every length class and part layout).
 *
 * Why: the piece-wise scheme before it (hot.c copy_hashing, still the fallback) copied each
 * 8 KiB into an L1 buffer, hashed the buffer and streamed it on; reads copied, then hashed
 * the copy. `python scripts/copy_speed.py` (both kernels interleaved, 48 MiB of blocks,
 * 1 MiB payloads, this project's 2-vCPU EPYC VM): writes 0.74-0.83x the piece-wise time,
 * reads out of DRAM 0.69-0.89x (the prefetch is most of that: the hardware prefetcher alone
 * did not keep one core's loads in flight), checksums alone 0.87-0.94x.
 *
 * x86-64 with GCC or clang only, and only where the CPU has AVX2 (fused_available, set at
 * import); elsewhere hot.c keeps the piece-wise path, with the same results.
 */

/* What a copy does with its destination. */
enum { STORE_PLAIN = 0, STORE_STREAM = 1, STORE_NONE = 2 };

/* A payload in parts: bytes at p, n of them. */
typedef struct {
    const char *p;
    size_t n;
} Part;

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_FUSED_XXH3 1
#include <immintrin.h>

#define FUSED_TARGET __attribute__((target("avx2")))
#define PREFETCH_AHEAD 4096

static int fused_available;   /* the CPU runs AVX2: set once, at import */

static void fused_detect(void)
{
    __builtin_cpu_init();
    fused_available = __builtin_cpu_supports("avx2") != 0;
}

/* The payload as parts back to back, read a stripe at a time. */
typedef struct {
    const Part *next;
    size_t parts_left;
    const char *p;
    size_t n;
} Gather;

static inline void gather_skip_empty(Gather *g)
{
    while (g->n == 0 && g->parts_left) {
        g->p = g->next->p;
        g->n = g->next->n;
        g->next++;
        g->parts_left--;
    }
}

/* The next k bytes (k <= 64): in place when one part holds them, else gathered into tmp.
 * The caller measured the parts: they hold at least what it takes. */
static inline const char *gather_take(Gather *g, char *tmp, size_t k)
{
    if (g->n >= k) {
        const char *at = g->p;
        g->p += k;
        g->n -= k;
        gather_skip_empty(g);
        return at;
    }
    size_t have = 0;
    while (have < k && g->n) {
        size_t t = g->n < k - have ? g->n : k - have;
        memcpy(tmp + have, g->p, t);
        have += t;
        g->p += t;
        g->n -= t;
        gather_skip_empty(g);
    }
    return tmp;
}

/* XXH3_accumulate_512_avx2 on a stripe already in registers. */
FUSED_TARGET static inline void fused_accumulate(__m256i *acc0, __m256i *acc1, __m256i d0, __m256i d1,
                                                 const unsigned char *secret)
{
    __m256i k0 = _mm256_loadu_si256((const __m256i *)secret);
    __m256i k1 = _mm256_loadu_si256((const __m256i *)(secret + 32));
    __m256i dk0 = _mm256_xor_si256(d0, k0), dk1 = _mm256_xor_si256(d1, k1);
    __m256i p0 = _mm256_mul_epu32(dk0, _mm256_srli_epi64(dk0, 32));
    __m256i p1 = _mm256_mul_epu32(dk1, _mm256_srli_epi64(dk1, 32));
    *acc0 = _mm256_add_epi64(p0, _mm256_add_epi64(*acc0, _mm256_shuffle_epi32(d0, _MM_SHUFFLE(1, 0, 3, 2))));
    *acc1 = _mm256_add_epi64(p1, _mm256_add_epi64(*acc1, _mm256_shuffle_epi32(d1, _MM_SHUFFLE(1, 0, 3, 2))));
}

/* XXH3_scrambleAcc_avx2, one register. */
FUSED_TARGET static inline __m256i fused_scramble(__m256i acc, __m256i key)
{
    const __m256i prime32 = _mm256_set1_epi32((int)XXH_PRIME32_1);
    __m256i dk = _mm256_xor_si256(_mm256_xor_si256(acc, _mm256_srli_epi64(acc, 47)), key);
    __m256i lo = _mm256_mul_epu32(dk, prime32);
    __m256i hi = _mm256_mul_epu32(_mm256_srli_epi64(dk, 32), prime32);
    return _mm256_add_epi64(lo, _mm256_slli_epi64(hi, 32));
}

FUSED_TARGET static inline void fused_store(char *q, __m256i d0, __m256i d1, int store)
{
    if (store == STORE_PLAIN) {
        _mm256_storeu_si256((__m256i *)q, d0);
        _mm256_storeu_si256((__m256i *)(q + 32), d1);
    } else if (store == STORE_STREAM) {   /* q is 16-byte aligned (fused_copy_checksum's caller) */
        if (((uintptr_t)q & 31) == 0) {
            _mm256_stream_si256((__m256i *)q, d0);
            _mm256_stream_si256((__m256i *)(q + 32), d1);
        } else {
            _mm_stream_si128((__m128i *)q, _mm256_castsi256_si128(d0));
            _mm_stream_si128((__m128i *)(q + 16), _mm256_extracti128_si256(d0, 1));
            _mm_stream_si128((__m128i *)(q + 32), _mm256_castsi256_si128(d1));
            _mm_stream_si128((__m128i *)(q + 48), _mm256_extracti128_si256(d1, 1));
        }
    }
}

/* XXH3_64bits_withSeed of the parts back to back (`len` bytes, > XXH3_MIDSIZE_MAX, which
 * the parts hold), storing them to dst[0:len] as `store` says (dst 16-byte aligned for
 * STORE_STREAM, which is fenced here; NULL for STORE_NONE). */
FUSED_TARGET static uint64_t fused_copy_checksum(char *dst, const Part *parts, size_t nparts, size_t len,
                                                 uint64_t seed, int store)
{
    XXH_ALIGN(64) unsigned char secret[XXH_SECRET_DEFAULT_SIZE];
    XXH3_initCustomSecret_scalar(secret, seed);   /* seed 0: kSecret itself, as withSeed uses */
    XXH_ALIGN(32) xxh_u64 acc[XXH_ACC_NB] = XXH3_INIT_ACC;
    __m256i acc0 = _mm256_load_si256((const __m256i *)acc), acc1 = _mm256_load_si256((const __m256i *)(acc + 4));
    const size_t per_block = (XXH_SECRET_DEFAULT_SIZE - XXH_STRIPE_LEN) / XXH_SECRET_CONSUME_RATE;
    const size_t nb_blocks = (len - 1) / (per_block * XXH_STRIPE_LEN);
    const size_t stripes = nb_blocks * per_block
                           + ((len - 1) - nb_blocks * per_block * XXH_STRIPE_LEN) / XXH_STRIPE_LEN;
    const unsigned char *scramble_key = secret + XXH_SECRET_DEFAULT_SIZE - XXH_STRIPE_LEN;
    const __m256i key0 = _mm256_loadu_si256((const __m256i *)scramble_key);
    const __m256i key1 = _mm256_loadu_si256((const __m256i *)(scramble_key + 32));
    Gather g = {parts, nparts, NULL, 0};
    gather_skip_empty(&g);
    XXH_ALIGN(64) char tmp[XXH_STRIPE_LEN];
    __m256i d0 = _mm256_setzero_si256(), d1 = d0;
    size_t s = 0;
    for (size_t b = 0; b <= nb_blocks; b++) {
        size_t end = b < nb_blocks ? (b + 1) * per_block : stripes;
        size_t i = 0;
        if (g.n >= (end - s) * XXH_STRIPE_LEN) {
            /* The usual case, this block's stripes all in the current part: the same loop
             * without gather_take's bookkeeping (hashing 64 KiB in L2 took 2.75 us with it,
             * 1.86 without; scripts/copy_speed.py). */
            const char *p = g.p;
            for (; s < end; s++, i++, p += XXH_STRIPE_LEN) {
                _mm_prefetch(p + PREFETCH_AHEAD, _MM_HINT_T0);
                d0 = _mm256_loadu_si256((const __m256i *)p);
                d1 = _mm256_loadu_si256((const __m256i *)(p + 32));
                if (store != STORE_NONE)
                    fused_store(dst + s * XXH_STRIPE_LEN, d0, d1, store);
                fused_accumulate(&acc0, &acc1, d0, d1, secret + i * XXH_SECRET_CONSUME_RATE);
            }
            g.n -= (size_t)(p - g.p);
            g.p = p;
            gather_skip_empty(&g);
        }
        for (; s < end; s++, i++) {   /* a block that spans parts: stripes gathered */
            const char *p = gather_take(&g, tmp, XXH_STRIPE_LEN);
            _mm_prefetch(p + PREFETCH_AHEAD, _MM_HINT_T0);   /* never faults, even past the end */
            d0 = _mm256_loadu_si256((const __m256i *)p);
            d1 = _mm256_loadu_si256((const __m256i *)(p + 32));
            if (store != STORE_NONE)
                fused_store(dst + s * XXH_STRIPE_LEN, d0, d1, store);
            fused_accumulate(&acc0, &acc1, d0, d1, secret + i * XXH_SECRET_CONSUME_RATE);
        }
        if (b < nb_blocks) {
            acc0 = fused_scramble(acc0, key0);
            acc1 = fused_scramble(acc1, key1);
        }
    }
    /* The last stripe is the input's last 64 bytes: the end of the stripe stored last
     * (kept from its registers) and the 1..64 bytes after it. */
    size_t rest = len - stripes * XXH_STRIPE_LEN;
    XXH_ALIGN(64) char last[2 * XXH_STRIPE_LEN];
    _mm256_store_si256((__m256i *)last, d0);
    _mm256_store_si256((__m256i *)(last + 32), d1);
    memcpy(last + XXH_STRIPE_LEN, gather_take(&g, tmp, rest), rest);
    if (store != STORE_NONE)
        memcpy(dst + stripes * XXH_STRIPE_LEN, last + XXH_STRIPE_LEN, rest);
    const char *tail = last + rest;
    fused_accumulate(&acc0, &acc1, _mm256_loadu_si256((const __m256i *)tail),
                     _mm256_loadu_si256((const __m256i *)(tail + 32)),
                     secret + XXH_SECRET_DEFAULT_SIZE - XXH_STRIPE_LEN - XXH_SECRET_LASTACC_START);
    _mm256_store_si256((__m256i *)acc, acc0);
    _mm256_store_si256((__m256i *)(acc + 4), acc1);
    if (store == STORE_STREAM)
        _mm_sfence();   /* streaming stores are weakly ordered: before the caller's publish */
    return XXH3_finalizeLong_64b(acc, secret, (xxh_u64)len);
}

#endif
