/* shmwal._hot: the per-entry hot paths of client/append.py and client/read.py, compiled.
 *
 * Why this exists: in CPython an append costs ~1.2 us and a read ~1.5 us of
 * interpreter work around a 0.1 us copy (README, "Benchmarks"); a peer whose
 * per-message path is C (pyzmq) does 1.5M messages/s.  These functions do
 * exactly what the Python paths do, on the same file format and the same
 * robust mutexes, so processes with and without this module share topics.
 *
 * The contract with the Python side is "fast path or hand back":
 *   - Appender.append returns the offset, or -1 when anything is unusual (the
 *     tail bookkeeping is not current, a new block is needed, a dead holder was
 *     found, the data is not a simple buffer).  Python then does the general
 *     path, which knows how to repair, allocate and report errors.
 *   - Reader.next returns an Entry, an int (nothing to read below that next
 *     offset: go and wait), or None (take the general path).
 *   - decode() takes entries record after record and stops, telling why, at the
 *     first thing it does not handle; Python's loop goes on from there.
 * Nothing here raises for a damaged file: damage is the general path's job.
 *
 * Memory ordering: as in ipc/sync.py, x86-64 TSO.  Shared words are accessed with
 * __atomic loads/stores (plain moves on x86-64, but the compiler may neither
 * tear nor reorder them); the publish store is a release store.
 *
 * Layout constants must equal shmwal/blocks/layout.py; client/hot.py compares them
 * (LAYOUT below) at import and refuses the module if they differ.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdint.h>
#include <string.h>

#define XXH_INLINE_ALL
#include "xxhash.h"

/* Long inputs go to xxHash's runtime dispatcher (xxh_x86dispatch.c), which picks AVX-512,
 * AVX2 or SSE2 by cpuid: built for baseline x86-64, the inline code only has SSE2, and the
 * hash was a third of all CPU time moving 64 KiB entries (SSE2 ~18 GB/s here). Inputs up
 * to XXH3_MIDSIZE_MAX take no vector path, so they stay inline and skip the indirect call.
 * Every variant computes the same digest. */
#ifdef SHMWAL_XXH_DISPATCH
XXH64_hash_t XXH3_64bits_withSeed_dispatch(const void *input, size_t len, XXH64_hash_t seed);
#endif

static inline uint64_t checksum(const void *data, size_t length, uint64_t seed)
{
#ifdef SHMWAL_XXH_DISPATCH
    if (length > XXH3_MIDSIZE_MAX)
        return XXH3_64bits_withSeed_dispatch(data, length, seed);
#endif
    return XXH3_64bits_withSeed(data, length, seed);
}

#define PAGE 4096
#define ALIGN 64
#define H_VISIBLE 32
#define H_WRITER_MUTEX 64
#define H_NEXT_OFFSET 128
#define H_PUBLISHED_BLOCKS 136
#define H_FIRST_OFFSET 160
#define H_FIRST_BLOCK 152
#define B_PINS 312
#define H_TAIL_POS 192
#define H_TAIL_CHAIN 200
#define H_TAIL_OFFSET 208
#define H_BYTES 216
#define H_WAITERS 256
#define CHAIN_AT PAGE
#define CHAIN_SLOT 32
#define CHAIN_SLOTS (1ULL << 20)
#define GROUP_SLOTS (1ULL << 16)
#define GROUP_SLOT 512
#define GROUPS_AT (CHAIN_AT + CHAIN_SLOTS * CHAIN_SLOT)
#define G_MUTEX 0
#define G_CURSOR 64
#define G_HINT_OFFSET 72
#define G_HINT_CHAIN 80
#define G_HINT_POS 88
#define G_GEN 384
#define C_FIRST_OFFSET 24
#define RECORD_HEADER_SIZE 32
#define TABLE_ENTRY_SIZE 16
#define SINGLE_SIZE (RECORD_HEADER_SIZE + TABLE_ENTRY_SIZE)
#define MAX_ENTRY (1ULL << 30)
#define MAX_BATCH_ENTRIES 2000
#define MAX_BATCH_BYTES (10ULL << 30)
#define META_MIN_SIZE (GROUPS_AT + GROUP_SLOTS * GROUP_SLOT)
#define GOLDEN 0x9E3779B97F4A7C15ULL
#define NONE64 UINT64_MAX
#define WAITERS_SANE (1ULL << 20)   /* above: an underflow from a reader killed mid-sleep */

enum { DECODE_DONE = 0, DECODE_BLOCK_END = 1, DECODE_HAND_BACK = 2 };

static inline uint64_t load(const char *base, size_t at)
{
    return __atomic_load_n((const uint64_t *)(base + at), __ATOMIC_ACQUIRE);
}

static inline void store(char *base, size_t at, uint64_t value)
{
    __atomic_store_n((uint64_t *)(base + at), value, __ATOMIC_RELEASE);
}

static inline uint64_t align_up(uint64_t n) { return (n + ALIGN - 1) & ~(uint64_t)(ALIGN - 1); }

static inline uint64_t entry_seed(uint64_t offset) { return offset * GOLDEN; }

static inline uint64_t record_seed(uint64_t count, uint64_t batch_left, uint64_t first, uint64_t data_bytes)
{
    return (first * GOLDEN) ^ (count << 40) ^ (batch_left << 20) ^ data_bytes ^ 0x5EED;
}

static inline uint64_t rd64(const char *p) { uint64_t v; memcpy(&v, p, 8); return v; }
static inline uint32_t rd32(const char *p) { uint32_t v; memcpy(&v, p, 4); return v; }

/* Take a robust mutex: 0 taken, 1 taken and its previous holder died (now
 * consistent), -1 not taken (an error the Python path will report). */
static PyObject *sync_module;   /* shmwal.sync, set by configure() */

/* A dead holder's mutex goes through shmwal.sync.lock_contended like every
 * recovery of the Python paths (looked up each time: one place to log or
 * instrument recoveries, as the drills do).  It marks the mutex consistent. */
static void recover_mutex(pthread_mutex_t *mutex)
{
    PyObject *hook = sync_module ? PyObject_GetAttrString(sync_module, "lock_contended") : NULL;
    PyObject *died = hook ? PyObject_CallFunction(hook, "Ki", (unsigned long long)(uintptr_t)mutex, EOWNERDEAD)
                          : NULL;
    Py_XDECREF(hook);
    if (died == NULL) {
        PyErr_Clear();
        pthread_mutex_consistent(mutex);   /* still ours to repair */
    }
    Py_XDECREF(died);
}

static int lock_robust(pthread_mutex_t *mutex)
{
    int rc = pthread_mutex_trylock(mutex);
    if (rc == EBUSY) {
        /* The holder may be another thread of this process, which needs the GIL. */
        Py_BEGIN_ALLOW_THREADS
        rc = pthread_mutex_lock(mutex);
        Py_END_ALLOW_THREADS
    }
    if (rc == 0)
        return 0;
    if (rc == EOWNERDEAD) {
        recover_mutex(mutex);
        return 1;
    }
    return -1;
}

/* A payload's bytes: bytes objects directly, anything else through a simple
 * (flat, C-contiguous) buffer.  Returns 1 if `view` must be released, 0 if
 * not, -1 (no exception set) if `obj` is no such buffer. */
static int payload(PyObject *obj, Py_buffer *view, const char **data, Py_ssize_t *length)
{
    if (PyBytes_CheckExact(obj)) {
        *data = PyBytes_AS_STRING(obj);
        *length = PyBytes_GET_SIZE(obj);
        return 0;
    }
    /* A live memoryview already holds its exporter's buffer, and no Python code runs
     * while we use the pointer (the GIL is held): read its view in place. Asking it
     * for a buffer and releasing it cost ~3.5 ns (measure() over 1,000 views: 4.6 ->
     * 1.2 ns an item), and batch_append fetches every item three times. */
    if (PyMemoryView_Check(obj)) {
        /* The test memoryview's own getbuffer applies to a simple request (so an empty
         * strided view is refused here too). */
        int flags = ((PyMemoryViewObject *)obj)->flags;
        if (!(flags & _Py_MEMORYVIEW_RELEASED) && (flags & (_Py_MEMORYVIEW_SCALAR | _Py_MEMORYVIEW_C))) {
            *data = PyMemoryView_GET_BUFFER(obj)->buf;
            *length = PyMemoryView_GET_BUFFER(obj)->len;
            return 0;
        }
    }
    if (PyObject_GetBuffer(obj, view, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        return -1;
    }
    *data = view->buf;
    *length = view->len;
    return 1;
}

/* A writable or read-only mapping held for as long as a pointer into it is kept. */
typedef struct {
    Py_buffer view;
    int held;
} Pin;

static int pin(Pin *p, PyObject *obj, int writable, Py_ssize_t min_size)
{
    if (PyObject_GetBuffer(obj, &p->view, writable ? PyBUF_WRITABLE : PyBUF_SIMPLE) < 0)
        return -1;
    p->held = 1;
    if (p->view.len < min_size) {
        PyBuffer_Release(&p->view);
        p->held = 0;
        PyErr_SetString(PyExc_ValueError, "mapping is smaller than its layout");
        return -1;
    }
    return 0;
}

static void unpin(Pin *p)
{
    if (p->held) {
        PyBuffer_Release(&p->view);
        p->held = 0;
    }
}

/* The block a hot path writes or reads, as the Python side loaded it. */
typedef struct {
    Pin pin;
    char *base;             /* the block's mapping (NULL: none cached) */
    uint64_t index;         /* chain slot it belongs to */
    uint64_t limit;         /* end of the block in its file (clamped to the mapping) */
} CachedBlock;

static void forget_block(CachedBlock *cached)
{
    unpin(&cached->pin);
    cached->base = NULL;
    cached->index = NONE64;
    cached->limit = 0;
}

/* set_block(block, mapping, limit) or set_block(None), for both types. */
static int set_block(CachedBlock *cached, PyObject *args, int writable)
{
    PyObject *block_obj, *mapping = Py_None;
    unsigned long long limit = 0;
    if (!PyArg_ParseTuple(args, "O|OK", &block_obj, &mapping, &limit))
        return -1;
    forget_block(cached);
    if (block_obj == Py_None || mapping == Py_None)
        return 0;
    unsigned long long index = PyLong_AsUnsignedLongLong(block_obj);
    if (index == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    if (pin(&cached->pin, mapping, writable, 0) < 0)
        return -1;
    if (limit > (unsigned long long)cached->pin.view.len)
        limit = (unsigned long long)cached->pin.view.len;   /* a truncated (damaged) file */
    cached->base = cached->pin.view.buf;
    cached->index = index;
    cached->limit = limit;
    return 0;
}

/* ================================================================== Appender */

typedef struct {
    PyObject_HEAD
    Pin meta;
    CachedBlock tail;       /* the tail block */
    sem_t *sem;
} Appender;

static int Appender_init(Appender *self, PyObject *args, PyObject *kwds)
{
    PyObject *meta;
    const char *sem_name;
    if (!PyArg_ParseTuple(args, "Os", &meta, &sem_name))
        return -1;
    if (self->meta.held) {
        PyErr_SetString(PyExc_RuntimeError, "Appender initialised twice");
        return -1;
    }
    if (pin(&self->meta, meta, 1, META_MIN_SIZE) < 0)
        return -1;
    self->tail.index = NONE64;
    self->sem = sem_open(sem_name, 0);
    if (self->sem == SEM_FAILED) {
        self->sem = NULL;
        PyErr_SetFromErrnoWithFilename(PyExc_OSError, sem_name);
        return -1;
    }
    return 0;
}

static void Appender_dealloc(Appender *self)
{
    unpin(&self->tail.pin);
    unpin(&self->meta);
    if (self->sem != NULL)
        sem_close(self->sem);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *Appender_set_block(Appender *self, PyObject *args)
{
    if (set_block(&self->tail, args, 1) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* Post the topic semaphore once per sleeping reader not yet woken (as writer.wake). */
static void wake_readers(Appender *self)
{
    /* The unlock before this is a locked instruction on x86-64 glibc; the fence
     * says so without relying on it: the load below must not pass the publish. */
    __atomic_thread_fence(__ATOMIC_SEQ_CST);
    uint64_t waiting = load(self->meta.view.buf, H_WAITERS);
    if (waiting == 0 || waiting > WAITERS_SANE)
        return;
    int value = 0;
    if (sem_getvalue(self->sem, &value) < 0)
        value = 0;
    int64_t missing = (int64_t)waiting - value;
    if (missing > 64)
        missing = 64;
    for (int64_t i = 0; i < missing; i++)
        sem_post(self->sem);
}

/* append(data) -> offset, or -1: take the general path. */
static PyObject *Appender_append(Appender *self, PyObject *data)
{
    Py_buffer view;
    const char *bytes;
    Py_ssize_t length;
    int has_view = payload(data, &view, &bytes, &length);
    if (has_view < 0)
        return PyLong_FromLong(-1);
    char *m = self->meta.view.buf;
    pthread_mutex_t *mutex = (pthread_mutex_t *)(m + H_WRITER_MUTEX);
    long long result = -1;
    if ((uint64_t)length > MAX_ENTRY || self->tail.base == NULL)
        goto done;
    int locked = lock_robust(mutex);
    if (locked < 0)
        goto done;
    if (locked == 1) {
        /* The dead holder may have moved the tail words: mark them stale, so
         * the general path recomputes them (writer._recompute_tail). */
        store(m, H_TAIL_OFFSET, NONE64);
        pthread_mutex_unlock(mutex);
        goto done;
    }
    uint64_t offset = load(m, H_NEXT_OFFSET);
    uint64_t pos = load(m, H_TAIL_POS);
    uint64_t block = load(m, H_TAIL_CHAIN);
    uint64_t size = align_up(SINGLE_SIZE + (uint64_t)length);
    if (load(m, H_TAIL_OFFSET) != offset || block != self->tail.index || pos > self->tail.limit
            || size > self->tail.limit - pos) {
        pthread_mutex_unlock(mutex);
        goto done;
    }
    uint64_t seed = entry_seed(offset);
    uint64_t digest = checksum(bytes, (size_t)length, seed);
    uint64_t header[6];
    header[0] = 1;   /* count = 1, batch_left = 0 (two little-endian u32) */
    header[1] = offset;
    header[2] = (uint64_t)length;
    header[3] = digest ^ record_seed(1, 0, offset, (uint64_t)length);
    header[4] = (uint64_t)length;
    header[5] = digest;
    char *record = self->tail.base + pos;
    memcpy(record, header, sizeof header);
    memcpy(record + SINGLE_SIZE, bytes, (size_t)length);
    /* THE publish, in client/append.py Appender._publish's order (argued there). */
    store(m, H_TAIL_POS, pos + size);
    store(m, H_TAIL_CHAIN, block);
    store(m, H_TAIL_OFFSET, offset + 1);
    if (load(m, H_PUBLISHED_BLOCKS) != block + 1)
        store(m, H_PUBLISHED_BLOCKS, block + 1);
    store(m, H_BYTES, load(m, H_BYTES) + (uint64_t)length);
    if (load(m, H_VISIBLE) == 0)
        store(m, H_VISIBLE, 1);
    store(m, H_NEXT_OFFSET, offset + 1);
    pthread_mutex_unlock(mutex);
    wake_readers(self);
    result = (long long)offset;
done:
    if (has_view)
        PyBuffer_Release(&view);
    return PyLong_FromLongLong(result);
}

/* encode_run(pos, offset, items, i) -> (pos, j)
 *
 * Writes items[i:j] as one record at `pos` of the cached block, j as large as
 * fits before the block's limit (j == i: not even items[i] fits).  The
 * record's batch_left is len(items) - j.  The caller holds the writer mutex,
 * checked every item with measure(), and publishes.  Same bytes as
 * codec.encode_record. */
static PyObject *Appender_encode_run(Appender *self, PyObject *args)
{
    unsigned long long pos, offset;
    PyObject *items;
    Py_ssize_t first;
    if (!PyArg_ParseTuple(args, "KKO!n", &pos, &offset, &PyList_Type, &items, &first))
        return NULL;
    Py_ssize_t count = PyList_GET_SIZE(items);
    if (self->tail.base == NULL || first < 0 || first >= count || pos > self->tail.limit
            || pos % ALIGN != 0 || count > MAX_BATCH_ENTRIES) {
        PyErr_SetString(PyExc_ValueError, "encode_run: no block, or a bad position or index");
        return NULL;
    }
    uint64_t room = self->tail.limit - pos;
    uint64_t used = RECORD_HEADER_SIZE;
    Py_ssize_t last = first;
    uint64_t lengths[MAX_BATCH_ENTRIES];
    while (last < count) {
        Py_buffer view;
        const char *bytes;
        Py_ssize_t length;
        int has_view = payload(PyList_GET_ITEM(items, last), &view, &bytes, &length);
        if (has_view < 0) {
            PyErr_SetString(PyExc_TypeError, "encode_run: an item is not a bytes-like object");
            return NULL;
        }
        if (has_view)
            PyBuffer_Release(&view);
        uint64_t grown = used + TABLE_ENTRY_SIZE + (uint64_t)length;
        if (align_up(grown) > room)
            break;
        lengths[last - first] = (uint64_t)length;
        used = grown;
        last++;
    }
    Py_ssize_t n = last - first;
    if (n == 0)
        return Py_BuildValue("Kn", pos, first);
    char *record = self->tail.base + pos;
    char *table = record + RECORD_HEADER_SIZE;
    char *at = table + (size_t)n * TABLE_ENTRY_SIZE;
    uint64_t data_bytes = 0;
    for (Py_ssize_t k = 0; k < n; k++) {
        Py_buffer view;
        const char *bytes;
        Py_ssize_t length;
        int has_view = payload(PyList_GET_ITEM(items, first + k), &view, &bytes, &length);
        if (has_view < 0 || (uint64_t)length != lengths[k]) {
            /* An item changed size since it was measured: nothing is published yet. */
            if (has_view > 0)
                PyBuffer_Release(&view);
            PyErr_SetString(PyExc_ValueError, "a batch item changed while it was written");
            return NULL;
        }
        uint64_t pair[2] = {lengths[k], checksum(bytes, (size_t)length, entry_seed(offset + k))};
        memcpy(table + k * TABLE_ENTRY_SIZE, pair, sizeof pair);
        memcpy(at, bytes, (size_t)length);
        if (has_view)
            PyBuffer_Release(&view);
        at += length;
        data_bytes += lengths[k];
    }
    uint64_t batch_left = (uint64_t)(count - last);
    uint64_t seed = record_seed((uint64_t)n, batch_left, offset, data_bytes);
    uint64_t check = n == 1 ? rd64(table + 8) ^ seed
                            : checksum(table, (size_t)n * TABLE_ENTRY_SIZE, seed);
    uint64_t header[4] = {(uint64_t)n | (batch_left << 32), offset, data_bytes, check};
    memcpy(record, header, sizeof header);
    return Py_BuildValue("Kn", pos + align_up(used), last);
}

static PyMethodDef Appender_methods[] = {
    {"append", (PyCFunction)Appender_append, METH_O, "append(data) -> offset, or -1: take the general path"},
    {"set_block", (PyCFunction)Appender_set_block, METH_VARARGS, "set_block(block, mapping, limit) | set_block(None)"},
    {"encode_run", (PyCFunction)Appender_encode_run, METH_VARARGS, "encode_run(pos, offset, items, i) -> (pos, j)"},
    {NULL}
};

static PyTypeObject AppenderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmwal._hot.Appender",
    .tp_basicsize = sizeof(Appender),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Appender(meta_mmap, semaphore_name): one topic's single-entry append path",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Appender_init,
    .tp_dealloc = (destructor)Appender_dealloc,
    .tp_methods = Appender_methods,
};

/* ================================================================== PinnedView */

/* A read-only buffer over part of a block's mapping that pins the block (layout.B_PINS)
 * for as long as it lives: the pin word is added to when it is made and taken back when it
 * goes, and it holds a buffer of the mapping, so the mapping stays open until then.  What
 * client/read.py's _pinned_view did with a ctypes array and a weakref finalizer (several
 * microseconds a read, twice the cost of copying a 64 KiB entry), as one object. */
typedef struct {
    PyObject_HEAD
    Py_buffer source;
    uint64_t *pins;          /* NULL once unpinned (or never pinned) */
    Py_ssize_t start, length;
} PinnedView;

static PyTypeObject PinnedViewType;

/* A PinnedView of mapping[start:start + length] whose block's pin word is at pin_at;
 * the pin is added before this returns (an atomic add: a full barrier). */
static PyObject *pinned_view_new(PyObject *mapping, uint64_t pin_at, Py_ssize_t start, Py_ssize_t length)
{
    PinnedView *self = PyObject_New(PinnedView, &PinnedViewType);
    if (self == NULL)
        return NULL;
    self->pins = NULL;
    /* Writable: the pin word is stored to (the view it exports is read-only). */
    if (PyObject_GetBuffer(mapping, &self->source, PyBUF_WRITABLE) < 0) {
        self->source.obj = NULL;
        Py_DECREF(self);
        return NULL;
    }
    if (start < 0 || length < 0 || start > self->source.len || length > self->source.len - start
            || pin_at > (uint64_t)self->source.len - 8 || pin_at % 8 != 0) {
        PyErr_SetString(PyExc_ValueError, "PinnedView: range or pin word outside the mapping");
        Py_DECREF(self);
        return NULL;
    }
    self->start = start;
    self->length = length;
    self->pins = (uint64_t *)((char *)self->source.buf + pin_at);
    __atomic_fetch_add(self->pins, 1, __ATOMIC_SEQ_CST);
    return (PyObject *)self;
}

static PyObject *PinnedView_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *mapping;
    unsigned long long pin_at;
    Py_ssize_t start = 0, length = -1;
    if (!PyArg_ParseTuple(args, "OK|nn", &mapping, &pin_at, &start, &length))
        return NULL;
    if (length < 0) {
        Py_buffer probe;
        if (PyObject_GetBuffer(mapping, &probe, PyBUF_SIMPLE) < 0)
            return NULL;
        length = probe.len - start;
        PyBuffer_Release(&probe);
    }
    return pinned_view_new(mapping, pin_at, start, length);
}

static void PinnedView_dealloc(PinnedView *self)
{
    if (self->pins != NULL)
        __atomic_fetch_sub(self->pins, 1, __ATOMIC_SEQ_CST);
    if (self->source.obj != NULL)
        PyBuffer_Release(&self->source);
    PyObject_Free(self);
}

static int PinnedView_getbuffer(PinnedView *self, Py_buffer *view, int flags)
{
    return PyBuffer_FillInfo(view, (PyObject *)self, (char *)self->source.buf + self->start, self->length, 1, flags);
}

static PyBufferProcs PinnedView_as_buffer = {(getbufferproc)PinnedView_getbuffer, NULL};

static PyTypeObject PinnedViewType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmwal._hot.PinnedView",
    .tp_basicsize = sizeof(PinnedView),
    .tp_dealloc = (destructor)PinnedView_dealloc,
    .tp_as_buffer = &PinnedView_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "PinnedView(mapping, pin_at, start=0, length=-1): a read-only buffer that pins its block",
    .tp_new = PinnedView_new,
};

/* ================================================================== Reader */

static PyTypeObject *entry_type;   /* shmwal.entry.Entry, set by configure() */

/* A new bytes object holding the ``length`` bytes at ``src``, or NULL: with an exception
 * set when out of memory, without one when they do not hash to ``digest``. The copy is
 * hashed rather than the source: it is what the caller gets, and it is still in this
 * core's cache, while the source was just written by another core (64 KiB entries:
 * 3.4 us against 4.8 us hashing the source first, from the costs of each step alone). */
static PyObject *copy_checked(const char *src, uint64_t length, uint64_t seed, uint64_t digest)
{
    PyObject *data = PyBytes_FromStringAndSize(src, (Py_ssize_t)length);
    if (data != NULL && checksum(PyBytes_AS_STRING(data), (size_t)length, seed) != digest)
        Py_CLEAR(data);
    return data;
}

static PyObject *make_entry(PyObject *topic, uint64_t offset, PyObject *data)
{
    PyObject *number = PyLong_FromUnsignedLongLong(offset);
    if (number == NULL) {
        Py_DECREF(data);
        return NULL;
    }
    PyObject *entry = entry_type->tp_alloc(entry_type, 3);
    if (entry == NULL) {
        Py_DECREF(number);
        Py_DECREF(data);
        return NULL;
    }
    Py_INCREF(topic);
    PyTuple_SET_ITEM(entry, 0, topic);
    PyTuple_SET_ITEM(entry, 1, number);
    PyTuple_SET_ITEM(entry, 2, data);
    /* A str, an int and bytes (or a memoryview of a mapping) cannot lead back
     * to the entry: it needs no cycle collection.  Untracked, a batch of 1,000
     * entries no longer sets off a collection that walks every one of them. */
    PyObject_GC_UnTrack(entry);
    return entry;
}

typedef struct {
    PyObject_HEAD
    Pin meta;
    size_t slot;             /* byte offset of the group slot in the meta file */
    uint64_t gen;            /* the slot's G_GEN when this group had it (layout.G_GEN) */
    PyObject *topic;
    CachedBlock hinted;      /* the block of the group's hint */
    uint64_t next_first;     /* first offset of block + 1 once published, else NONE64 */
    uint64_t pin_at;         /* the hinted block's pin word (layout.B_PINS) in its mapping, else NONE64 */
    sem_t *sem;              /* the topic semaphore appenders post for sleeping readers */
    long spin_ns;            /* how long read_wait spins before sleeping (adapts, see there) */
} Reader;

#define SPIN_NS_MAX 20000
#define SPIN_NS_MIN 1000

static int Reader_init(Reader *self, PyObject *args, PyObject *kwds)
{
    PyObject *meta, *topic;
    Py_ssize_t slot;
    unsigned long long gen;
    const char *sem_name;
    if (!PyArg_ParseTuple(args, "OnKUs", &meta, &slot, &gen, &topic, &sem_name))
        return -1;
    if (entry_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "shmwal._hot.configure() was not called");
        return -1;
    }
    if (self->meta.held) {
        PyErr_SetString(PyExc_RuntimeError, "Reader initialised twice");
        return -1;
    }
    if (slot < 0 || (unsigned long long)slot >= GROUP_SLOTS) {
        PyErr_SetString(PyExc_ValueError, "group slot out of range");
        return -1;
    }
    self->sem = sem_open(sem_name, 0);
    if (self->sem == SEM_FAILED) {
        self->sem = NULL;
        PyErr_SetFromErrnoWithFilename(PyExc_OSError, sem_name);
        return -1;
    }
    if (pin(&self->meta, meta, 1, META_MIN_SIZE) < 0)
        return -1;
    self->slot = GROUPS_AT + (size_t)slot * GROUP_SLOT;
    self->gen = gen;
    Py_INCREF(topic);
    self->topic = topic;
    self->hinted.index = NONE64;
    self->next_first = NONE64;
    self->pin_at = NONE64;
    self->spin_ns = SPIN_NS_MAX;
    return 0;
}

static void Reader_dealloc(Reader *self)
{
    unpin(&self->hinted.pin);
    unpin(&self->meta);
    Py_XDECREF(self->topic);
    if (self->sem != NULL)
        sem_close(self->sem);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* set_block(block, mapping, limit[, pin_at]) | set_block(None): pin_at, the block's pin
 * word in the mapping, lets next(..., zero_copy=True) serve the block. */
static PyObject *Reader_set_block(Reader *self, PyObject *args)
{
    self->next_first = NONE64;
    self->pin_at = NONE64;
    Py_ssize_t n = PyTuple_GET_SIZE(args);
    PyObject *head = n == 4 ? PyTuple_GetSlice(args, 0, 3) : (Py_INCREF(args), args);
    if (head == NULL)
        return NULL;
    int rc = set_block(&self->hinted, head, 0);
    Py_DECREF(head);
    if (rc < 0)
        return NULL;
    if (n == 4 && self->hinted.base != NULL) {
        unsigned long long pin_at = PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(args, 3));
        if (pin_at == (unsigned long long)-1 && PyErr_Occurred())
            return NULL;
        if (pin_at % 8 == 0 && pin_at + 8 <= (unsigned long long)self->hinted.pin.view.len)
            self->pin_at = pin_at;
    }
    Py_RETURN_NONE;
}

/* next(checkpoint) -> Entry | int | None (reader.GroupReader._fast, compiled).
 *
 * Serves the entry at the cursor when the group's hint locates it in the
 * cached block as a one-entry record that checks out; an int is the next
 * offset when there is nothing to read; None hands the read to Python. */
static PyObject *next_entry(Reader *self, int checkpoint, int zero_copy)
{
    char *m = self->meta.view.buf;
    size_t g = self->slot;
    pthread_mutex_t *mutex = (pthread_mutex_t *)(m + g + G_MUTEX);
    int locked = lock_robust(mutex);
    if (locked < 0)
        Py_RETURN_NONE;
    if (locked == 1) {
        store(m, g + G_HINT_OFFSET, NONE64);   /* the dead reader may have half-moved it */
        pthread_mutex_unlock(mutex);
        Py_RETURN_NONE;
    }
    if (load(m, g + G_GEN) != self->gen)
        goto hand_back;   /* the group was deleted: Python finds out and asks the broker again */
    uint64_t cursor = load(m, g + G_CURSOR);
    uint64_t next_offset = load(m, H_NEXT_OFFSET);   /* before the record: the publish order */
    if (load(m, g + G_HINT_OFFSET) != cursor || cursor < load(m, H_FIRST_OFFSET))
        goto hand_back;
    if (cursor >= next_offset) {
        pthread_mutex_unlock(mutex);
        return PyLong_FromUnsignedLongLong(next_offset);
    }
    uint64_t block = load(m, g + G_HINT_CHAIN);
    uint64_t pos = load(m, g + G_HINT_POS);
    if (block != self->hinted.index || self->hinted.base == NULL)
        goto hand_back;
    if (self->next_first == NONE64 && block + 1 < load(m, H_PUBLISHED_BLOCKS)
            && block + 1 < CHAIN_SLOTS)
        /* Published once, a block's first offset never changes. */
        self->next_first = load(m, CHAIN_AT + (block + 1) * CHAIN_SLOT + C_FIRST_OFFSET);
    uint64_t limit = self->hinted.limit;
    if (cursor >= self->next_first || pos > limit || limit - pos < SINGLE_SIZE)
        goto hand_back;
    const char *record = self->hinted.base + pos;
    uint32_t count = rd32(record), batch_left = rd32(record + 4);
    uint64_t first = rd64(record + 8), data_bytes = rd64(record + 16), check = rd64(record + 24);
    uint64_t length = rd64(record + 32), digest = rd64(record + 40);
    if (count != 1 || first != cursor || length != data_bytes || length > limit - pos - SINGLE_SIZE)
        goto hand_back;
    if ((digest ^ record_seed(1, batch_left, first, data_bytes)) != check)
        goto hand_back;   /* the general path reports it */
    PyObject *data;
    if (zero_copy) {
        /* The pin comes first, H_FIRST_BLOCK is loaded after it (the order _pinned_view
         * argues); our cursor is in this block and we hold the group mutex, so it cannot be
         * reclaimed now anyway.  The checksum is of the mapped bytes the view shows. */
        if (self->pin_at == NONE64)
            goto hand_back;
        PyObject *pinned = pinned_view_new(self->hinted.pin.view.obj, self->pin_at,
                                           (Py_ssize_t)(pos + SINGLE_SIZE), (Py_ssize_t)length);
        if (pinned == NULL) {
            pthread_mutex_unlock(mutex);
            return NULL;
        }
        if (load(m, H_FIRST_BLOCK) > block
                || checksum(record + SINGLE_SIZE, (size_t)length, entry_seed(cursor)) != digest) {
            Py_DECREF(pinned);
            goto hand_back;
        }
        data = PyMemoryView_FromObject(pinned);
        Py_DECREF(pinned);
        if (data == NULL) {
            pthread_mutex_unlock(mutex);
            return NULL;
        }
    } else {
        data = copy_checked(record + SINGLE_SIZE, length, entry_seed(cursor), digest);
        if (data == NULL) {
            if (PyErr_Occurred()) {
                pthread_mutex_unlock(mutex);
                return NULL;
            }
            goto hand_back;
        }
    }
    if (checkpoint) {
        /* The cursor commit, in client/read.py GroupReader._commit's order (argued
         * there): hint offset, hint position (same block), the cursor last. */
        store(m, g + G_HINT_OFFSET, cursor + 1);
        store(m, g + G_HINT_POS, align_up(pos + SINGLE_SIZE + length));
        store(m, g + G_CURSOR, cursor + 1);
    }
    pthread_mutex_unlock(mutex);
    return make_entry(self->topic, cursor, data);
hand_back:
    pthread_mutex_unlock(mutex);
    Py_RETURN_NONE;
}

static PyObject *Reader_next(Reader *self, PyObject *checkpoint_obj)
{
    int checkpoint = PyObject_IsTrue(checkpoint_obj);
    if (checkpoint < 0)
        return NULL;
    return next_entry(self, checkpoint, 0);
}

/* next_view(checkpoint): next, with the entry's data a read-only memoryview of the mapped
 * block that pins it (read_next(..., zero_copy=True)); None also when the block's pin word
 * is not known (set_block without pin_at). */
static PyObject *Reader_next_view(Reader *self, PyObject *checkpoint_obj)
{
    int checkpoint = PyObject_IsTrue(checkpoint_obj);
    if (checkpoint < 0)
        return NULL;
    return next_entry(self, checkpoint, 1);
}

static double monotonic(void)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)now.tv_sec + now.tv_nsec * 1e-9;
}

/* Sleep until an appender posts the topic semaphore, the publish word moved
 * off `seen`, or `until` (CLOCK_MONOTONIC seconds) passed.  0: woken or
 * moved, 1: timed out, -1: a signal handler raised.
 *
 * H_WAITERS is incremented (a locked instruction: a full barrier) before the
 * last look at the publish word, and appenders read it after publishing: so
 * an append that this look missed sees the waiter and posts. */
static int sleep_until(Reader *self, uint64_t seen, double until)
{
    char *m = self->meta.view.buf;
    uint64_t *waiters = (uint64_t *)(m + H_WAITERS);
    int outcome = 0, interrupted = 0;
    __atomic_fetch_add(waiters, 1, __ATOMIC_SEQ_CST);
    if (load(m, H_NEXT_OFFSET) == seen) {
        struct timespec deadline;
        deadline.tv_sec = (time_t)until;
        deadline.tv_nsec = (long)((until - (double)deadline.tv_sec) * 1e9);
        if (deadline.tv_nsec >= 1000000000L || deadline.tv_nsec < 0)
            deadline.tv_nsec = 0;
        int rc, error;
        Py_BEGIN_ALLOW_THREADS
        rc = sem_clockwait(self->sem, CLOCK_MONOTONIC, &deadline);
        error = errno;
        Py_END_ALLOW_THREADS
        if (rc < 0 && error == ETIMEDOUT)
            outcome = 1;
        interrupted = rc < 0 && error == EINTR;
    }
    __atomic_fetch_sub(waiters, 1, __ATOMIC_SEQ_CST);
    if (interrupted && PyErr_CheckSignals() < 0)
        return -1;   /* e.g. KeyboardInterrupt, as posix_ipc's acquire would raise */
    return outcome;
}

/* Watch the publish word for up to `nanoseconds` before sleeping: under
 * load the next entry is microseconds away, and a sleep costs the appender a
 * futex wake and this reader a context switch. */
static int spin_until_moved(const char *m, uint64_t seen, long nanoseconds)
{
    double give_up = monotonic() + nanoseconds * 1e-9;
    for (;;) {
        for (int i = 0; i < 64; i++) {
            if (load(m, H_NEXT_OFFSET) != seen)
                return 1;
            __builtin_ia32_pause();
        }
        if (monotonic() >= give_up)
            return 0;
    }
}

/* wait(seen_next, seconds): sleep_until for the Python path (reader._sleep). */
static PyObject *Reader_wait(Reader *self, PyObject *args)
{
    unsigned long long seen;
    double seconds;
    if (!PyArg_ParseTuple(args, "Kd", &seen, &seconds))
        return NULL;
    if (!(seconds >= 0))
        seconds = 0;
    if (sleep_until(self, seen, monotonic() + seconds) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* read_wait(checkpoint, seconds) -> Entry | None | int
 *
 * read_next with a timeout, the whole wait in C: take the entry at the
 * cursor, else spin, sleep and take again, for up to `seconds`.  An int (the
 * next offset last seen) means nothing came in time: the caller checks the
 * broker's liveness and its deadline and calls again.  None: the general path. */
static PyObject *Reader_read_wait(Reader *self, PyObject *args)
{
    int checkpoint;
    double seconds;
    if (!PyArg_ParseTuple(args, "pd", &checkpoint, &seconds))
        return NULL;
    double until = monotonic() + (seconds >= 0 ? seconds : 0);
    for (;;) {
        PyObject *found = next_entry(self, checkpoint, 0);
        if (found == NULL || !PyLong_CheckExact(found))
            return found;
        uint64_t seen = PyLong_AsUnsignedLongLong(found);
        if (self->spin_ns > 0) {
            if (spin_until_moved(self->meta.view.buf, seen, self->spin_ns)) {
                Py_DECREF(found);
                continue;
            }
            /* Entries come further apart than a spin: spin less.  Spinning
             * then only costs, latency included: measured here, a reader that
             * spun 20 us before each sleep was woken 10.5 us after the post,
             * one that went straight to sleep 4-5 us after (the scheduler
             * preempts the appender for a wakee that used less CPU). */
            self->spin_ns = self->spin_ns >= 2 * SPIN_NS_MIN ? self->spin_ns / 2 : 0;
        }
        double now = monotonic();
        if (now >= until)
            return found;
        int slept = sleep_until(self, seen, until);
        if (slept < 0) {
            Py_DECREF(found);
            return NULL;
        }
        if (slept == 0 && monotonic() - now < SPIN_NS_MAX * 1e-9)
            self->spin_ns = SPIN_NS_MAX;   /* a spin would have caught that one: entries stream again */
        Py_DECREF(found);
    }
}

static PyMethodDef Reader_methods[] = {
    {"wait", (PyCFunction)Reader_wait, METH_VARARGS, "wait(seen_next, seconds): sleep until the topic may have grown"},
    {"read_wait", (PyCFunction)Reader_read_wait, METH_VARARGS, "read_wait(checkpoint, seconds) -> Entry | None | int"},
    {"next", (PyCFunction)Reader_next, METH_O, "next(checkpoint) -> Entry | int (nothing below it) | None (general path)"},
    {"next_view", (PyCFunction)Reader_next_view, METH_O, "next_view(checkpoint): next, zero-copy (data a pinned read-only memoryview)"},
    {"set_block", (PyCFunction)Reader_set_block, METH_VARARGS, "set_block(block, mapping, limit[, pin_at]) | set_block(None)"},
    {NULL}
};

static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmwal._hot.Reader",
    .tp_basicsize = sizeof(Reader),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Reader(meta_mmap, group_slot, generation, topic, semaphore_name): one group's read path",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Reader_init,
    .tp_dealloc = (destructor)Reader_dealloc,
    .tp_methods = Reader_methods,
};

/* ================================================================== module functions */

/* A record header whose check holds (codec.read_record, compiled: nothing in a
 * record is trusted before its check). */
typedef struct {
    uint64_t count, first, data_bytes, size;
    const char *table;
} RecordHeader;

static int check_record(const char *base, uint64_t pos, uint64_t limit, RecordHeader *out)
{
    if (pos > limit || limit - pos < RECORD_HEADER_SIZE)
        return 0;
    const char *record = base + pos;
    uint64_t count = rd32(record), batch_left = rd32(record + 4);
    uint64_t first = rd64(record + 8), data_bytes = rd64(record + 16), check = rd64(record + 24);
    if (count == 0 || count > MAX_BATCH_ENTRIES || batch_left >= MAX_BATCH_ENTRIES || data_bytes > MAX_BATCH_BYTES)
        return 0;
    uint64_t table_bytes = count * TABLE_ENTRY_SIZE;
    uint64_t size = align_up(RECORD_HEADER_SIZE + table_bytes + data_bytes);
    if (size > limit - pos)
        return 0;
    const char *table = record + RECORD_HEADER_SIZE;
    uint64_t seed = record_seed(count, batch_left, first, data_bytes);
    if (count == 1) {
        if (rd64(table) != data_bytes || (rd64(table + 8) ^ seed) != check)
            return 0;
    } else {
        if (checksum(table, (size_t)table_bytes, seed) != check)
            return 0;
        uint64_t sum = 0;
        for (uint64_t k = 0; k < count; k++)
            sum += rd64(table + k * TABLE_ENTRY_SIZE);
        if (sum != data_bytes)
            return 0;
    }
    *out = (RecordHeader){count, first, data_bytes, size, table};
    return 1;
}

/* decode(buf, pos, limit, c, stop, next_first, max_entries, max_bytes, have_some, topic, out, zero_copy)
 *   -> (status, c, pos, added_bytes)
 *
 * The inner loop of GroupReader._take: from the record at `pos`, append
 * Entry(topic, c, data) to `out` for c = c, c+1, ... until
 *   DONE       the caps are reached or c == stop (pos: where the hint goes:
 *              the record holding c);
 *   BLOCK_END  c reached next_first, the next block's first offset (pos: after
 *              the last record taken);
 *   HAND_BACK  the record at pos is not one this loop takes as is (damaged,
 *              not holding c, a bad checksum): Python's loop handles it.
 * The same rules as _take: the byte cap never refuses the first entry of a
 * read (`have_some`: `out` already held entries before this call).
 * zero_copy: each data is buf[start:end] (buf is then a read-only memoryview). */
static PyObject *decode_run(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 12) {
        PyErr_SetString(PyExc_TypeError, "decode takes 12 arguments");
        return NULL;
    }
    PyObject *buf_obj = args[0], *topic = args[9], *out = args[10];
    uint64_t pos = PyLong_AsUnsignedLongLong(args[1]);
    uint64_t limit = PyLong_AsUnsignedLongLong(args[2]);
    uint64_t c = PyLong_AsUnsignedLongLong(args[3]);
    uint64_t stop = PyLong_AsUnsignedLongLong(args[4]);
    uint64_t next_first = PyLong_AsUnsignedLongLong(args[5]);
    Py_ssize_t max_entries = PyLong_AsSsize_t(args[6]);
    /* The budget left: below 0 when an entry taken before this call was larger than
     * the read's max_bytes, and then nothing more fits, not even an empty entry. */
    int overflow = 0;
    long long max_bytes = PyLong_AsLongLongAndOverflow(args[7], &overflow);
    if (overflow > 0)
        max_bytes = LLONG_MAX;   /* a cap beyond any batch: no cap */
    else if (overflow < 0)
        max_bytes = -1;
    int have_some = PyObject_IsTrue(args[8]);
    int zero_copy = PyObject_IsTrue(args[11]);
    if (PyErr_Occurred())
        return NULL;
    /* topic None: batch_read_payloads, the list gets each entry's data alone. */
    if (!PyList_CheckExact(out) || !(topic == Py_None || PyUnicode_CheckExact(topic)) || entry_type == NULL) {
        PyErr_SetString(PyExc_TypeError, "decode: bad arguments");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(buf_obj, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    const char *base = view.buf;
    if (limit > (uint64_t)view.len)
        limit = (uint64_t)view.len;
    int status = DECODE_HAND_BACK;
    uint64_t taken_bytes = 0;
    Py_ssize_t taken = 0;
    uint64_t hint = pos;
    while (1) {
        if (c >= stop) { status = DECODE_DONE; break; }
        if (c >= next_first) { status = DECODE_BLOCK_END; break; }
        RecordHeader header;
        if (!check_record(base, pos, limit, &header))
            break;
        uint64_t count = header.count, first = header.first, size = header.size;
        const char *table = header.table;
        uint64_t table_bytes = count * TABLE_ENTRY_SIZE;
        if (c < first || c >= first + count)
            break;
        uint64_t index = c - first;
        uint64_t start = pos + RECORD_HEADER_SIZE + table_bytes;
        for (uint64_t k = 0; k < index; k++)
            start += rd64(table + k * TABLE_ENTRY_SIZE);
        int stopped = 0;
        for (; index < count; index++) {
            uint64_t length = rd64(table + index * TABLE_ENTRY_SIZE);
            /* Signed: taken_bytes + length <= MAX_BATCH_BYTES + MAX_ENTRY, far below 2**63. */
            if ((have_some || taken) && (long long)(taken_bytes + length) > max_bytes) {
                stopped = 1;
                status = DECODE_DONE;
                break;
            }
            uint64_t digest = rd64(table + index * TABLE_ENTRY_SIZE + 8);
            PyObject *data;
            if (zero_copy) {
                data = checksum(base + start, (size_t)length, entry_seed(c)) == digest
                       ? PySequence_GetSlice(buf_obj, (Py_ssize_t)start, (Py_ssize_t)(start + length))
                       : NULL;
            } else {
                data = copy_checked(base + start, length, entry_seed(c), digest);
            }
            if (data == NULL) {
                if (PyErr_Occurred())
                    goto error;
                stopped = 1;      /* _take returns what it has, or raises CorruptEntry */
                status = DECODE_HAND_BACK;
                break;
            }
            PyObject *entry = topic == Py_None ? data : make_entry(topic, c, data);
            if (entry == NULL)
                goto error;
            int rc = PyList_Append(out, entry);
            Py_DECREF(entry);
            if (rc < 0)
                goto error;
            taken++;
            taken_bytes += length;
            start += length;
            c++;
            if (taken >= max_entries || c >= stop) {
                index++;
                stopped = 1;
                status = DECODE_DONE;
                break;
            }
        }
        if (stopped) {
            hint = index < count ? pos : pos + size;
            break;
        }
        pos += size;
        hint = pos;
    }
    PyBuffer_Release(&view);
    return Py_BuildValue("iKKK", status, c, status == DECODE_HAND_BACK ? pos : hint, taken_bytes);
error:
    PyBuffer_Release(&view);
    return NULL;
}

/* The collector stays off while a batch's entries are made: every entry counts as a new
 * container toward a collection (it is a tuple, untracked or not), so a batch of 1,000
 * set one off every 700 entries, and each walked the young lists of entries; the count
 * still stands afterwards, so the next allocation collects once. */
static PyObject *decode(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    int was_enabled = PyGC_Disable();
    PyObject *result = decode_run(module, args, nargs);
    if (was_enabled)
        PyGC_Enable();
    return result;
}

/* measure(items: list) -> (total_bytes, longest); TypeError for an item that is
 * not a flat bytes-like object (writer._check_batch's rules). */
static PyObject *measure(PyObject *module, PyObject *items)
{
    if (!PyList_CheckExact(items)) {
        PyErr_SetString(PyExc_TypeError, "measure takes a list");
        return NULL;
    }
    uint64_t total = 0, longest = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(items); i++) {
        PyObject *item = PyList_GET_ITEM(items, i);
        Py_buffer view;
        const char *bytes;
        Py_ssize_t length;
        int has_view = payload(item, &view, &bytes, &length);
        if (has_view < 0) {
            if (PyObject_CheckBuffer(item))
                PyErr_Format(PyExc_TypeError, "items[%zd] must be C-contiguous", i);
            else
                PyErr_Format(PyExc_TypeError, "items[%zd] must be a bytes-like object, not %.100s",
                             i, Py_TYPE(item)->tp_name);
            return NULL;
        }
        if (has_view)
            PyBuffer_Release(&view);
        total += (uint64_t)length;
        if ((uint64_t)length > longest)
            longest = (uint64_t)length;
    }
    return Py_BuildValue("KK", total, longest);
}

/* payload_bytes(buf, pos, limit, first, end) -> int
 *
 * The payload bytes of the records from `pos` holding offsets first..end-1
 * (the broker's count of what reclamation frees), stopping at the first
 * record that does not check out or is out of sequence.  Headers only: a
 * 10 MiB block of 100-byte entries is 54k records, 160 ms in Python. */
static PyObject *payload_bytes(PyObject *module, PyObject *args)
{
    Py_buffer view;
    unsigned long long pos, limit, first, end;
    if (!PyArg_ParseTuple(args, "y*KKKK", &view, &pos, &limit, &first, &end))
        return NULL;
    const char *base = view.buf;
    if (limit > (unsigned long long)view.len)
        limit = (unsigned long long)view.len;
    uint64_t total = 0, expect = first;
    RecordHeader header;
    while (expect < end && check_record(base, pos, limit, &header) && header.first == expect) {
        total += header.data_bytes;
        expect += header.count;
        pos += header.size;
    }
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong(total);
}

/* configure(Entry, shmwal.sync) */
static PyObject *configure(PyObject *module, PyObject *args)
{
    PyObject *entry, *sync;
    if (!PyArg_ParseTuple(args, "OO", &entry, &sync))
        return NULL;
    if (!PyType_Check(entry) || !PyType_IsSubtype((PyTypeObject *)entry, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "configure takes the Entry type (a tuple subclass)");
        return NULL;
    }
    Py_INCREF(entry);
    Py_XSETREF(entry_type, (PyTypeObject *)entry);
    Py_INCREF(sync);
    Py_XSETREF(sync_module, sync);
    Py_RETURN_NONE;
}

/* xxh3_64(data, seed): the hash this module uses, for the tests to compare with xxhash's. */
static PyObject *xxh3_64(PyObject *module, PyObject *args)
{
    Py_buffer view;
    unsigned long long seed = 0;
    if (!PyArg_ParseTuple(args, "y*|K", &view, &seed))
        return NULL;
    uint64_t digest = checksum(view.buf, (size_t)view.len, seed);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong(digest);
}

static PyMethodDef module_methods[] = {
    {"decode", (PyCFunction)(void (*)(void))decode, METH_FASTCALL, "the inner loop of GroupReader._take"},
    {"measure", (PyCFunction)measure, METH_O, "measure(items) -> (total bytes, longest)"},
    {"payload_bytes", (PyCFunction)payload_bytes, METH_VARARGS, "payload_bytes(buf, pos, limit, first, end) -> int"},
    {"configure", (PyCFunction)configure, METH_VARARGS, "configure(Entry, shmwal.sync)"},
    {"xxh3_64", (PyCFunction)xxh3_64, METH_VARARGS, "xxh3_64(data, seed=0) -> int"},
    {NULL}
};

static struct PyModuleDef hot_module = {
    PyModuleDef_HEAD_INIT, "shmwal._hot", "Compiled hot paths of shmwal (see client/hot.py).", -1, module_methods,
};

PyMODINIT_FUNC PyInit__hot(void)
{
    if (PyType_Ready(&AppenderType) < 0 || PyType_Ready(&ReaderType) < 0 || PyType_Ready(&PinnedViewType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&hot_module);
    if (module == NULL)
        return NULL;
    PyObject *layout = Py_BuildValue(
        "{s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K}",
        "PAGE", (unsigned long long)PAGE, "ALIGN", (unsigned long long)ALIGN,
        "H_VISIBLE", (unsigned long long)H_VISIBLE, "H_WRITER_MUTEX", (unsigned long long)H_WRITER_MUTEX,
        "H_NEXT_OFFSET", (unsigned long long)H_NEXT_OFFSET,
        "H_PUBLISHED_BLOCKS", (unsigned long long)H_PUBLISHED_BLOCKS,
        "H_FIRST_OFFSET", (unsigned long long)H_FIRST_OFFSET, "H_TAIL_POS", (unsigned long long)H_TAIL_POS,
        "H_TAIL_CHAIN", (unsigned long long)H_TAIL_CHAIN, "H_TAIL_OFFSET", (unsigned long long)H_TAIL_OFFSET,
        "H_BYTES", (unsigned long long)H_BYTES, "H_WAITERS", (unsigned long long)H_WAITERS,
        "GROUP_SLOTS", (unsigned long long)GROUP_SLOTS, "GROUP_SLOT", (unsigned long long)GROUP_SLOT,
        "GROUPS_AT", (unsigned long long)GROUPS_AT, "G_MUTEX", (unsigned long long)G_MUTEX,
        "G_CURSOR", (unsigned long long)G_CURSOR, "G_HINT_OFFSET", (unsigned long long)G_HINT_OFFSET,
        "G_HINT_CHAIN", (unsigned long long)G_HINT_CHAIN, "G_HINT_POS", (unsigned long long)G_HINT_POS,
        "G_GEN", (unsigned long long)G_GEN, "CHAIN_SLOTS", (unsigned long long)CHAIN_SLOTS,
        "CHAIN_AT", (unsigned long long)CHAIN_AT, "CHAIN_SLOT", (unsigned long long)CHAIN_SLOT,
        "C_FIRST_OFFSET", (unsigned long long)C_FIRST_OFFSET,
        "H_FIRST_BLOCK", (unsigned long long)H_FIRST_BLOCK, "B_PINS", (unsigned long long)B_PINS,
        "MAX_ENTRY", (unsigned long long)MAX_ENTRY, "MAX_BATCH_ENTRIES", (unsigned long long)MAX_BATCH_ENTRIES);
    if (layout == NULL || PyModule_AddObject(module, "LAYOUT", layout) < 0) {
        Py_XDECREF(layout);
        Py_DECREF(module);
        return NULL;
    }
    Py_INCREF(&AppenderType);
    Py_INCREF(&ReaderType);
    if (PyModule_AddObject(module, "Appender", (PyObject *)&AppenderType) < 0
            || PyModule_AddObject(module, "Reader", (PyObject *)&ReaderType) < 0
            || PyModule_AddObject(module, "PinnedView", (Py_INCREF(&PinnedViewType), (PyObject *)&PinnedViewType)) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    PyModule_AddIntConstant(module, "DONE", DECODE_DONE);
    PyModule_AddIntConstant(module, "BLOCK_END", DECODE_BLOCK_END);
    PyModule_AddIntConstant(module, "HAND_BACK", DECODE_HAND_BACK);
    return module;
}
