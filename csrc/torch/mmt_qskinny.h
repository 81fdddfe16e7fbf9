/* mmt_qskinny.h: y = dequant(xq Wq^T) + b for a handful of int8 rows, the
 * int8 products of a decoder step (dtype="int8").  See mmt_qskinny.c. */
#ifndef MMT_QSKINNY_H
#define MMT_QSKINNY_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Rows of x up to which mmt_qskinny_linear_mt is used (at::_int_mm above):
 * oneDNN's int8 product takes about a millisecond for one row of a
 * 512 x 2048 matrix, where streaming the 1 MB of weights takes 50 us. */
#define MMT_QSKINNY_MAX_ROWS 64

/* For all n outputs and m rows (m x k int8 x, n x k int8 W, row-major):
 *   y[r * n + j] = (float)dot(x[r], W[j]) * (sx[r] * ws[j]) (+ bias[j])
 * with the dot product summed exactly in int32 (|x|, |W| <= 127), so the
 * result is the same bits whatever the CPU path (AVX512-VNNI, AVX2,
 * scalar), the thread split or the rows beside a row, and equals what
 * mmt_qweight.h computes from at::_int_mm's sums.  wsum[j] is the sum of
 * W[j]'s entries (the VNNI path multiplies x + 128 as unsigned bytes and
 * takes 128 * wsum[j] back).  bias may be NULL.  Outputs are split across
 * this thread's OpenMP team (1 inside mmt::SingleThreaded), each thread
 * taking at least `grain` outputs. */
void mmt_qskinny_linear_mt(const int8_t *x, int64_t m, int64_t k, const int8_t *w,
                           const int32_t *wsum, int64_t n, const float *sx, const float *ws,
                           const float *bias, float *y, int64_t grain);

#ifdef __cplusplus
}
#endif

#endif
