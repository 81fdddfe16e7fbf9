/* mmt_pool.h: work-sharing threads for the shim's C kernels (a decoder
 * step's matrix products and attention).  See mmt_pool.c. */
#ifndef MMT_POOL_H
#define MMT_POOL_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Runs fn(arg, i0, i1, slot) over [0, n) in pieces of `chunk` items (the
 * last may be shorter), on the caller and up to width - 1 helper threads.
 * Each participant takes the next piece as it finishes one, so a thread the
 * OS has descheduled holds back at most the piece it is running, and a
 * helper that has not woken up yet holds back nothing: the caller does the
 * work itself.  slot (0 for the caller, < width) tells a participant's
 * scratch space apart.  Returns when every piece has run.
 *
 * width <= 1, a single piece, or a pool already running another caller's
 * work: everything runs on the caller, fn(arg, 0, n, 0).  fn must not
 * throw and must not call mmt_pool_run itself. */
typedef void (*mmt_pool_fn)(void *arg, int64_t i0, int64_t i1, int slot);
__attribute__((visibility("default"))) void mmt_pool_run(int64_t n, int64_t chunk, int width,
                                                         mmt_pool_fn fn, void *arg);

/* The threads the kernels may use from this thread: the width set by
 * mmt_pool_set_width() when one is set; else 1 inside an OpenMP parallel
 * region or under mmt::SingleThreaded (which sets OpenMP's per-thread count
 * to 1), else OpenMP's thread count (at::get_num_threads() of libtorch).
 * 1 when the shim was built without OpenMP and no width is set. */
int mmt_pool_width(void);

/* Sets this thread's kernel width (0: none, mmt_pool_width() asks OpenMP
 * again); returns the previous one.  mmt::PoolOnly (mmt_threads.h) uses it
 * to keep the kernels' width while ATen's operators run on the caller
 * alone. */
int mmt_pool_set_width(int width);

#ifdef __cplusplus
}
#endif

#endif
