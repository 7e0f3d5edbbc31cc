/* Bytes in use through glibc's malloc, counted by an LD_PRELOAD shim (bench/memory.py).
 *
 * Why: the resident high-water mark (VmHWM) of a call moves in whole 1 MiB steps from one
 * process to the next for oneDNN/ATen code, as glibc reuses free heap chunks that were or
 * were not resident. The bytes the allocator has handed out do not depend on that, so
 * their peak over a call repeats. bench/memory.py builds this file on first use
 * (gcc -O2 -shared -fPIC) and starts processes with it in LD_PRELOAD.
 *
 * Every entry point forwards to glibc's own exported __libc_* functions: no dlsym(RTLD_NEXT)
 * (dlsym may itself call calloc, which would recurse into us before we know where the real
 * one is), and the heap stays glibc's, so its tunables and malloc_usable_size keep working.
 * The shim never allocates, takes no lock, and keeps no table: what it needs to know about
 * a block at free() it reads from the block (malloc_usable_size, and the slack tag below). */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

extern void *__libc_malloc(size_t size);
extern void __libc_free(void *ptr);
extern void *__libc_calloc(size_t nmemb, size_t size);
extern void *__libc_realloc(void *ptr, size_t size);
extern void *__libc_memalign(size_t alignment, size_t size);
extern void *__libc_valloc(size_t size);
extern void *__libc_pvalloc(size_t size);

/* Both counters on one cache line of their own: the fetch-add on `current` owns the line,
 * so reading `peak` right after costs nothing, and no other data shares (and bounces) it.
 * Signed, so a free of a block counted before a reset can never wrap the count. */
static struct {
    _Alignas(64) atomic_llong current;
    atomic_llong peak;
} counter;

/* Counting is on from the start (a process run under the launcher counts everything) and
 * can be switched off and on (fcmem_arm): the sweep's workers time their calls with it off,
 * when each entry point costs one relaxed load more than glibc's own, and count only the
 * calls whose peak they measure. A block that lived across a switch is counted by what it
 * is (its usable size, or its tag) when it is freed while counting is on: the count is then
 * the bytes in use relative to the moment counting started, which is what a peak over one
 * call needs. */
static atomic_int armed = 1;

static inline int counting(void)
{
    return atomic_load_explicit(&armed, memory_order_relaxed);
}

/* Relaxed order: these are statistics, they order no other memory. */
static inline void count(long long delta)
{
    long long now = atomic_fetch_add_explicit(&counter.current, delta, memory_order_relaxed) + delta;
    if (delta <= 0)
        return;
    /* A compare-exchange loop, not a plain store: two threads raising the count at once must
     * not let the smaller value overwrite the larger. */
    long long peak = atomic_load_explicit(&counter.peak, memory_order_relaxed);
    while (now > peak && !atomic_compare_exchange_weak_explicit(&counter.peak, &peak, now, memory_order_relaxed,
                                                                memory_order_relaxed))
        ;
}

/* What a block counts: its usable size (malloc_usable_size, the one size free() can learn)
 * less glibc's slack. glibc hands out a chunk larger than asked for when the free chunk it
 * picks is too small to split (16 bytes more), or keeps memalign's trailing piece (up to
 * 32): that depends on what the heap holds, and counting usable sizes the torch train step
 * of (128,128,16,3) moved by ~200 bytes from call to call with an identical sequence of
 * requests. So where a block's usable size exceeds the size asked for (rounded up to 8) by
 * 8 to SLACK_MAX bytes, it counts the rounded size and the slack records itself: its last
 * 8 bytes hold a tag (a hash of the address, xor the slack) that free reads and clears.
 * Other blocks count their usable size (no slack, or an mmapped block's page rounding,
 * which repeats by itself). The slack lies past the size asked for, which the caller may
 * not use unless it asks malloc_usable_size; one that does overwrites the tag, and its
 * block then leaves at most SLACK_MAX bytes behind in the count. */
#define SLACK_MAX 64 /* above the largest slack glibc leaves (48) */

static inline uint64_t tag_of(const void *ptr)
{
    uint64_t x = (uint64_t)(uintptr_t)ptr ^ 0x9e3779b97f4a7c15u; /* splitmix64's finaliser */
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9u;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebu;
    return x ^ (x >> 31);
}

/* Count a new block of `request` bytes, tagging its slack. */
static inline void *counted(void *ptr, size_t request)
{
    if (!ptr)
        return NULL;
    size_t usable = malloc_usable_size(ptr);
    size_t rounded = (request + 7) & ~(size_t)7;
    size_t slack = usable >= rounded ? usable - rounded : 0;
    if (slack >= sizeof(uint64_t) && slack <= SLACK_MAX) {
        uint64_t tag = tag_of(ptr) ^ slack;
        memcpy((char *)ptr + usable - sizeof tag, &tag, sizeof tag);
        count((long long)rounded);
    } else {
        count((long long)usable);
    }
    return ptr;
}

/* What a live block counted, its tag cleared (so no later block at the same address finds a
 * stale one); `*tagged` says whether it had one, for a realloc that fails to restore. */
static inline size_t uncount(void *ptr, int *tagged)
{
    size_t usable = malloc_usable_size(ptr);
    *tagged = 0;
    if (usable >= sizeof(uint64_t)) {
        char *at = (char *)ptr + usable - sizeof(uint64_t);
        uint64_t tag;
        memcpy(&tag, at, sizeof tag);
        uint64_t slack = tag ^ tag_of(ptr);
        if (slack >= sizeof(uint64_t) && slack <= SLACK_MAX && slack % 8 == 0) {
            memset(at, 0, sizeof tag);
            *tagged = 1;
            return usable - (size_t)slack;
        }
    }
    return usable;
}

void *malloc(size_t size)
{
    if (!counting())
        return __libc_malloc(size);
    return counted(__libc_malloc(size), size);
}

void free(void *ptr)
{
    if (!counting()) {
        __libc_free(ptr);
        return;
    }
    if (ptr) {
        int tagged;
        count(-(long long)uncount(ptr, &tagged)); /* before the block is gone and its size with it */
        __libc_free(ptr);
    }
}

void *calloc(size_t nmemb, size_t size)
{
    /* the product cannot overflow where calloc succeeded; the tag lies past it, so what
     * the caller asked for stays zero */
    if (!counting())
        return __libc_calloc(nmemb, size);
    return counted(__libc_calloc(nmemb, size), nmemb * size);
}

static void *counted_realloc(void *ptr, size_t size)
{
    if (!counting())
        return __libc_realloc(ptr, size);
    int tagged = 0;
    size_t old = 0;
    uint64_t tag = 0;
    if (ptr) {
        /* read first: a moved block's size cannot be read after; kept to restore the tag
         * if realloc fails and leaves the block as it was */
        size_t usable = malloc_usable_size(ptr);
        old = uncount(ptr, &tagged);
        tag = tag_of(ptr) ^ (uint64_t)(usable - old);
    }
    void *out = __libc_realloc(ptr, size);
    if (out) {
        count(-(long long)old);
        counted(out, size);
    } else if (ptr && size == 0) { /* glibc frees the block and returns NULL */
        count(-(long long)old);
    } else if (tagged) { /* it failed: the old block stays, and so does its tag */
        memcpy((char *)ptr + malloc_usable_size(ptr) - sizeof tag, &tag, sizeof tag);
    }
    return out;
}

void *realloc(void *ptr, size_t size)
{
    return counted_realloc(ptr, size);
}

void *reallocarray(void *ptr, size_t nmemb, size_t size)
{
    size_t bytes;
    if (__builtin_mul_overflow(nmemb, size, &bytes)) {
        errno = ENOMEM;
        return NULL;
    }
    return counted_realloc(ptr, bytes);
}

/* glibc exports no __libc_posix_memalign or __libc_aligned_alloc: both are memalign with
 * their own checks (aligned_alloc is memalign's alias in glibc itself). */
int posix_memalign(void **memptr, size_t alignment, size_t size)
{
    if (alignment % sizeof(void *) != 0 || (alignment & (alignment - 1)) != 0 || alignment == 0)
        return EINVAL;
    int saved = errno; /* it reports through its return value, not errno */
    void *ptr = __libc_memalign(alignment, size);
    errno = saved;
    if (!ptr)
        return ENOMEM;
    *memptr = counting() ? counted(ptr, size) : ptr;
    return 0;
}

void *aligned_alloc(size_t alignment, size_t size)
{
    void *ptr = __libc_memalign(alignment, size);
    return counting() ? counted(ptr, size) : ptr;
}

void *memalign(size_t alignment, size_t size)
{
    void *ptr = __libc_memalign(alignment, size);
    return counting() ? counted(ptr, size) : ptr;
}

void *valloc(size_t size)
{
    void *ptr = __libc_valloc(size);
    return counting() ? counted(ptr, size) : ptr;
}

void *pvalloc(size_t size)
{
    /* it asks for whole pages: those are the size asked for */
    size_t page = (size_t)getpagesize();
    void *ptr = __libc_pvalloc(size);
    return ptr && counting() ? counted(ptr, (size + page - 1) & ~(page - 1)) : ptr;
}

/* What bench/memory.py reads through ctypes. */
long long fcmem_current(void)
{
    return atomic_load_explicit(&counter.current, memory_order_relaxed);
}

long long fcmem_peak(void)
{
    return atomic_load_explicit(&counter.peak, memory_order_relaxed);
}

/* The peak of what follows starts from what is in use now. */
void fcmem_reset_peak(void)
{
    atomic_store_explicit(&counter.peak, atomic_load_explicit(&counter.current, memory_order_relaxed),
                          memory_order_relaxed);
}

/* Counting on (from zero: the bytes in use from now on) or off. */
void fcmem_arm(int on)
{
    if (on) {
        atomic_store_explicit(&counter.current, 0, memory_order_relaxed);
        atomic_store_explicit(&counter.peak, 0, memory_order_relaxed);
    }
    atomic_store_explicit(&armed, on ? 1 : 0, memory_order_relaxed);
}

/* Found by name in the process (dlsym of the global scope): says the shim is loaded. */
int fcmem_active(void)
{
    return 1;
}
