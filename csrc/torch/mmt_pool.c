/* mmt_pool.c: work-sharing threads for the shim's C kernels.
 *
 * Why not an OpenMP parallel region: a region splits the work into one fixed
 * share per thread and ends at a barrier.  When another process takes a
 * core (a shared or busy machine), the thread that lost its core holds the
 * barrier until the scheduler gives it back, a few milliseconds, and a
 * decoder step runs some 80 such regions: a lone T5 request measured 15 s
 * instead of 0.5 s at a load of 8 on 2 cores.  Here the caller publishes a
 * job cut into pieces, and every participant (the caller included) takes
 * the next piece with one compare-and-swap until none is left.  A helper
 * that is asleep or descheduled when the job starts takes no piece, so the
 * caller never waits for it; a helper that loses its core mid-piece holds
 * back only that piece.  On a quiet machine the helpers share the work as
 * OpenMP's team did, with results that do not depend on who ran a piece
 * (the kernels give each output the same arithmetic wherever it is cut).
 *
 * One job at a time, process-wide: a caller that finds the pool busy (two
 * models stepping at once) runs its job alone, which is what a busy machine
 * wants anyway.  Helpers are started on first use, up to the width asked
 * for (at most MMT_POOL_MAX in all), spin about 50 us after a job for the
 * next one (the gap between two products of a step), then sleep on a futex.
 *
 * The claim word packs (generation, width, piece count, next piece), so a
 * helper that wakes late for a finished job can never take a piece of the
 * next one by mistake: its compare-and-swap fails on the generation (and a
 * swap that succeeds is a claim on the live job, whatever it saw before).  A successful claim
 * synchronises with the caller's publication, after which the job's fields
 * are read; they change only once every piece of the job is done.
 *
 * Outside Linux (no futex) the pool starts no helpers and runs every job on
 * its caller. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* pthread_setname_np */
#endif
#include "mmt_pool.h"

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <time.h>

#ifdef __linux__
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>
#define MMT_POOL_THREADS 1
#else
#define MMT_POOL_THREADS 0
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

#define MMT_POOL_MAX 64
#define SPIN_NS 50000 /* a helper's spin after a job before it sleeps */

/* claim word: generation (16 bits) | width (8) | pieces (20) | next piece (20) */
#define IDX_BITS 20
#define IDX_MASK ((1ull << IDX_BITS) - 1)
#define MAX_PIECES ((int64_t)IDX_MASK)
#define PACK(g, wd, c, i)                                                                       \
    (((uint64_t)(g) << 48) | ((uint64_t)(wd) << 40) | ((uint64_t)(c) << IDX_BITS) | (uint64_t)(i))
#define GEN(w) ((uint32_t)((w) >> 48))
#define WIDTH(w) ((int)(((w) >> 40) & 0xff))
#define COUNT(w) ((int64_t)(((w) >> IDX_BITS) & IDX_MASK))
#define INDEX(w) ((int64_t)((w)&IDX_MASK))

static struct {
    _Atomic uint64_t claim;
    _Atomic int64_t done;    /* pieces of the current job finished */
    _Atomic uint32_t wake;   /* futex word, bumped for every job */
    _Atomic int sleepers;    /* helpers in futex_wait */
    _Atomic int busy;        /* a caller owns the pool */
    _Atomic int helpers;     /* helper threads started */
    /* the current job, valid for a participant that holds a claim */
    _Atomic(mmt_pool_fn) fn;
    _Atomic(void *) arg;
    _Atomic int64_t n, chunk;
    uint32_t gen; /* the owner's */
} P;

static inline void relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Takes and runs pieces of the job generation `gen` until none is left (or
 * the job has fewer participants than slot). */
static void take_pieces(uint32_t gen, int slot) {
    uint64_t w = atomic_load_explicit(&P.claim, memory_order_relaxed);
    while (GEN(w) == gen && slot < WIDTH(w) && INDEX(w) < COUNT(w)) {
        if (!atomic_compare_exchange_weak_explicit(&P.claim, &w, w + 1, memory_order_acquire,
                                                   memory_order_relaxed))
            continue;
        const int64_t i = INDEX(w);
        const int64_t n = atomic_load_explicit(&P.n, memory_order_relaxed);
        const int64_t c = atomic_load_explicit(&P.chunk, memory_order_relaxed);
        mmt_pool_fn fn = atomic_load_explicit(&P.fn, memory_order_relaxed);
        void *arg = atomic_load_explicit(&P.arg, memory_order_relaxed);
        const int64_t i0 = i * c, i1 = i0 + c < n ? i0 + c : n;
        fn(arg, i0, i1, slot);
        atomic_fetch_add_explicit(&P.done, 1, memory_order_release);
        w = atomic_load_explicit(&P.claim, memory_order_relaxed);
    }
}

#if MMT_POOL_THREADS
static void *helper(void *p) {
    const int slot = (int)(intptr_t)p;
    uint32_t seen = atomic_load(&P.wake);
    for (;;) {
        uint32_t w;
        int64_t t0 = 0;
        unsigned spins = 0;
        while ((w = atomic_load_explicit(&P.wake, memory_order_acquire)) == seen) {
            relax();
            if ((++spins & 63) != 0)
                continue;
            const int64_t t = now_ns();
            if (t0 == 0) {
                t0 = t;
            } else if (t - t0 > SPIN_NS) {
                atomic_fetch_add(&P.sleepers, 1);
                syscall(SYS_futex, (uint32_t *)&P.wake, FUTEX_WAIT_PRIVATE, seen, NULL, NULL, 0);
                atomic_fetch_sub(&P.sleepers, 1);
                t0 = 0;
            }
        }
        seen = w;
        take_pieces(GEN(atomic_load_explicit(&P.claim, memory_order_relaxed)), slot);
    }
    return NULL;
}

/* Starts helpers until there are want of them (fewer if the OS refuses);
 * only the pool's owner calls it. */
static void start_helpers(int want) {
    int have = atomic_load_explicit(&P.helpers, memory_order_relaxed);
    if (want > MMT_POOL_MAX - 1)
        want = MMT_POOL_MAX - 1;
    for (; have < want; have++) {
        pthread_t t;
        pthread_attr_t a;
        if (pthread_attr_init(&a) != 0)
            break;
        pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&a, 256 * 1024);
        const int rc = pthread_create(&t, &a, helper, (void *)(intptr_t)(have + 1));
        pthread_attr_destroy(&a);
        if (rc != 0)
            break;
        pthread_setname_np(t, "mmt-pool");
    }
    atomic_store_explicit(&P.helpers, have, memory_order_relaxed);
}
#endif

void mmt_pool_run(int64_t n, int64_t chunk, int width, mmt_pool_fn fn, void *arg) {
    if (n <= 0)
        return;
    if (chunk < 1)
        chunk = 1;
    int64_t pieces = (n + chunk - 1) / chunk;
    if (pieces > MAX_PIECES) { /* never with the kernels' sizes; keep the count packable */
        chunk = (n + MAX_PIECES - 1) / MAX_PIECES;
        pieces = (n + chunk - 1) / chunk;
    }
    int expect = 0;
    if (!MMT_POOL_THREADS || width <= 1 || pieces <= 1 ||
        !atomic_compare_exchange_strong_explicit(&P.busy, &expect, 1, memory_order_acquire,
                                                 memory_order_relaxed)) {
        fn(arg, 0, n, 0);
        return;
    }
#if MMT_POOL_THREADS
    if (width > MMT_POOL_MAX)
        width = MMT_POOL_MAX;
    if (atomic_load_explicit(&P.helpers, memory_order_relaxed) < width - 1)
        start_helpers(width - 1);
    atomic_store_explicit(&P.fn, fn, memory_order_relaxed);
    atomic_store_explicit(&P.arg, arg, memory_order_relaxed);
    atomic_store_explicit(&P.n, n, memory_order_relaxed);
    atomic_store_explicit(&P.chunk, chunk, memory_order_relaxed);
    atomic_store_explicit(&P.done, 0, memory_order_relaxed);
    const uint32_t gen = P.gen = (P.gen + 1) & 0xffff;
    atomic_store_explicit(&P.claim, PACK(gen, width, pieces, 0), memory_order_release);
    atomic_fetch_add(&P.wake, 1);
    if (atomic_load(&P.sleepers) > 0)
        syscall(SYS_futex, (uint32_t *)&P.wake, FUTEX_WAKE_PRIVATE, MMT_POOL_MAX, NULL, NULL, 0);
    take_pieces(gen, 0);
    /* every piece is taken; wait for the ones still running elsewhere */
    for (unsigned spins = 0; atomic_load_explicit(&P.done, memory_order_acquire) < pieces;) {
        relax();
        if (++spins % 4096 == 0)
            sched_yield(); /* the holder may be waiting for this core */
    }
    atomic_store_explicit(&P.busy, 0, memory_order_release);
#endif
}

static _Thread_local int width_set; /* mmt_pool_set_width's, 0: none */

int mmt_pool_set_width(int width) {
    const int prev = width_set;
    width_set = width > 0 ? width : 0;
    return prev;
}

int mmt_pool_width(void) {
    if (width_set > 0)
        return width_set;
#ifdef _OPENMP
    return omp_in_parallel() ? 1 : omp_get_max_threads();
#else
    return 1;
#endif
}
