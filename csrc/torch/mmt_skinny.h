/* mmt_skinny.h: y = x W^T + b for a handful of rows of x, in float32 on the
 * CPU (the products of a decoder step).  See mmt_skinny.c. */
#ifndef MMT_SKINNY_H
#define MMT_SKINNY_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Exported from libmm_torch.so (the shim's other C functions stay hidden)
 * so that tests and benchmarks can call the kernel on its own. */
#define MMT_SKINNY_API __attribute__((visibility("default")))

/* Rows of x up to which this kernel beats MKL's sgemm on this work (which
 * packs the weights on every call): about 1.5x on a vocabulary projection
 * and 1.05-1.3x on a layer's matrices at 8-64 rows, measured on a Zen 4
 * core; at 100-200 rows MKL is 5-10% ahead on the layers. */
#define MMT_SKINNY_MAX_ROWS 64

/* For output features [n0, n1) of W (n_total x k, row-major, contiguous):
 *   y[r * ldy + j] = dot(x[r * k ..], W[j * k ..]) (+ bias[j])
 * for r < m rows of x (m x k, contiguous).  Each output's arithmetic is the
 * same whatever m, n0 and n1 are, so splitting the features across threads
 * or the rows across calls changes no bit.  bias may be NULL. */
MMT_SKINNY_API void mmt_skinny_linear(const float *x, int64_t m, int64_t k, const float *w,
                                      int64_t n0, int64_t n1, const float *bias, float *y,
                                      int64_t ldy);

/* All outputs, y = x W^T (+ b) with ldy = n, split by output features across
 * this thread's OpenMP team (omp_get_max_threads(): 1 under
 * mmt::SingleThreaded), each thread taking at least `grain` features.  Runs
 * on the caller alone when the shim was built without OpenMP. */
MMT_SKINNY_API void mmt_skinny_linear_mt(const float *x, int64_t m, int64_t k, const float *w,
                                         int64_t n, const float *bias, float *y, int64_t grain);

#ifdef __cplusplus
}
#endif

#endif
