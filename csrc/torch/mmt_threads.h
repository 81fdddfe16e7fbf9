/* mmt_threads.h: running independent pieces of work on the CPU's cores, one
 * single-threaded piece per core, instead of splitting every operator of one
 * piece across the cores.
 *
 * ATen's intra-op parallelism ends each operator at an OpenMP barrier.  On a
 * busy or virtualised machine a barrier that waits on a descheduled thread
 * stalls the whole operator, and with small operators (a decoder step, a
 * short micro-batch) the barriers themselves cost a third of the time.
 * Whole batches (embeddings) or whole groups of requests (generation) are
 * independent, so each thread runs its own pieces with no barrier at all.
 *
 * - SingleThreaded: while alive, this thread's ATen operators and MKL calls
 *   run on it alone (OpenMP's and MKL's per-thread settings, restored on the
 *   way out).
 * - PoolOnly: while alive, this thread's ATen operators run on it alone
 *   (SingleThreaded) but the shim's own kernels (mmt_skinny.c,
 *   mmt_attend.c) keep the width they had, shared with mmt_pool.c's helpers.
 *   For a lone request's decoder steps: their ATen operators are small, but
 *   some start an OpenMP team whatever their size (oneDNN's GELU, the
 *   vocabulary-wide adds), and after each team libgomp's idle thread spins
 *   for milliseconds on the core the pool's helper needs (bart-base shape,
 *   lone greedy: 570 -> 365 ms a request; the same as OMP_WAIT_POLICY=
 *   passive).  An element-wise operator's arithmetic does not depend on how
 *   it is split, so results are unchanged.
 * - run_pieces(nt, order, fn): fn(order[0]), fn(order[1]), ... on up to nt
 *   threads (the caller's and nt - 1 helpers), each taking the next piece as
 *   it finishes one, under InferenceMode and SingleThreaded.  Put the biggest
 *   pieces first so the threads finish together.  The first exception is
 *   rethrown once every thread has stopped.
 */
#ifndef MMT_THREADS_H
#define MMT_THREADS_H

#include <ATen/Parallel.h>
#include <c10/core/InferenceMode.h>

#include "mmt_pool.h"

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

/* Exported by libtorch_cpu (MKL, libgomp); weak, so a libtorch built without
 * them still loads the shim and the guard does what it can. */
extern "C" int MKL_Set_Num_Threads_Local(int) __attribute__((weak));
extern "C" void omp_set_num_threads(int) __attribute__((weak));
extern "C" int omp_get_max_threads(void) __attribute__((weak));

namespace mmt {

struct SingleThreaded {
    int omp_prev = 0, mkl_prev = 0;
    SingleThreaded() {
        /* ATen sets a thread's OpenMP thread count to its intra-op count the
         * first time the thread asks (at::internal::lazy_init_num_threads).
         * Ask first: otherwise the first operator of a fresh helper thread
         * undoes the 1 set below, and every "single-threaded" piece ran a
         * team of its own, oversubscribing the cores (and spinning). */
        (void)at::get_num_threads();
        if (omp_get_max_threads && omp_set_num_threads) {
            omp_prev = omp_get_max_threads();
            omp_set_num_threads(1);
        }
        if (MKL_Set_Num_Threads_Local)
            mkl_prev = MKL_Set_Num_Threads_Local(1);
    }
    ~SingleThreaded() {
        if (omp_prev > 0)
            omp_set_num_threads(omp_prev);
        if (MKL_Set_Num_Threads_Local)
            MKL_Set_Num_Threads_Local(mkl_prev);
    }
    SingleThreaded(const SingleThreaded &) = delete;
    SingleThreaded &operator=(const SingleThreaded &) = delete;
};

struct PoolOnly {
    int width, prev;
    SingleThreaded one;
    PoolOnly() : width(kernel_width()), prev(0), one() { prev = mmt_pool_set_width(width); }
    ~PoolOnly() { mmt_pool_set_width(prev); }
    static int kernel_width() {
        (void)at::get_num_threads(); /* ATen's lazy per-thread setting first */
        return mmt_pool_width();
    }
    PoolOnly(const PoolOnly &) = delete;
    PoolOnly &operator=(const PoolOnly &) = delete;
};

template <class F> void run_pieces(int nt, const std::vector<size_t> &order, F fn) {
    const size_t n = order.size();
    std::atomic<size_t> next{0};
    std::mutex emu;
    std::exception_ptr first_err;
    auto loop = [&] {
        try {
            c10::InferenceMode im;
            SingleThreaded one_thread;
            for (size_t i; (i = next.fetch_add(1)) < n;)
                fn(order[i]);
        } catch (...) {
            std::lock_guard<std::mutex> lk(emu);
            if (!first_err)
                first_err = std::current_exception();
            next.store(n);
        }
    };
    std::vector<std::thread> helpers;
    const size_t nh = std::min((size_t)(nt > 1 ? nt : 1), n > 0 ? n : 1) - 1;
    try {
        for (size_t t = 0; t < nh; t++)
            helpers.emplace_back(loop);
    } catch (...) { /* fewer helpers: the caller's loop still drains every piece */
    }
    loop();
    for (auto &t : helpers)
        t.join();
    if (first_err)
        std::rethrow_exception(first_err);
}

} // namespace mmt

#endif
