/* mmt_qpack.h: int8 linear layers on a packed weight, with AMX tiles or
 * AVX512-VNNI (dtype="int8" generation; see mmt_qpack.c). */
#ifndef MMT_QPACK_H
#define MMT_QPACK_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Exported from libmm_torch.so so that tests can call the kernels on their own. */
#define MMT_QPACK_API __attribute__((visibility("default")))

/* The kernel family this process uses, decided once (CPUID, the OS's
 * permission for AMX tiles, PYMODELMGR_CPU_INT8_KERNEL):
 *   MMT_QPACK_NONE: no packed kernel (no AVX512-VNNI, or the variable asks
 *                   for "avx2" / "scalar"): weights stay row-major for
 *                   mmt_qskinny.c and at::_int_mm;
 *   MMT_QPACK_VNNI: packed weights, AVX512-VNNI for every row count
 *                   (also PYMODELMGR_CPU_INT8_KERNEL=vnni on an AMX CPU);
 *   MMT_QPACK_AMX:  packed weights, AMX-INT8 tiles from MMT_QPACK_AMX_ROWS
 *                   rows up, AVX512-VNNI below. */
enum { MMT_QPACK_NONE = 0, MMT_QPACK_VNNI = 1, MMT_QPACK_AMX = 2 };
MMT_QPACK_API int mmt_qpack_path(void);

/* Rows from which the AMX path multiplies with tiles (fewer rows: VNNI,
 * which streams the weight as fast and has no tile set-up). */
#define MMT_QPACK_AMX_ROWS 4

/* The packed weight of an n x k int8 matrix holds npad x kpad bytes
 * (padding is zeros); activations are read in rows of kpad bytes. */
MMT_QPACK_API int64_t mmt_qpack_kpad(int64_t k);
MMT_QPACK_API int64_t mmt_qpack_npad(int64_t n);

/* w: n x k row-major int8 -> out: mmt_qpack_npad(n) * mmt_qpack_kpad(k) bytes. */
MMT_QPACK_API void mmt_qpack_pack(const int8_t *w, int64_t n, int64_t k, int8_t *out);

/* For each of the m rows of x (m x k float32, contiguous): sx[r] = max|x_r| / 127
 * (1 for an all-zero row) and q_r = lrintf(clamp(x_r * (1 / sx[r]), -127, 127))
 * (round half to even), written in rows of ldq >= k bytes whose tail is zero.
 * The same bits whatever the CPU path. */
MMT_QPACK_API void mmt_qpack_quantize_rows(const float *x, int64_t m, int64_t k, int8_t *q,
                                           int64_t ldq, float *sx);

/* For all n outputs and m rows (x: m rows of mmt_qpack_kpad(k) bytes as
 * mmt_qpack_quantize_rows writes them; wp: mmt_qpack_pack's output):
 *   y[r * n + j] = (float)dot(x[r], W[j]) * (sx[r] * ws[j]) (+ bias[j])
 * with the dot product exact in int32: the bits of mmt_qskinny.c and of
 * at::_int_mm's sums scaled the same way, whatever the path, the rows beside
 * a row or the thread split.  wsum[j]: the sum of W[j]'s entries.  bias may
 * be NULL.  Outputs are shared among mmt_pool.c's threads (one inside
 * mmt::SingleThreaded), each piece at least `grain` outputs. */
void mmt_qpack_linear_mt(const int8_t *x, int64_t m, int64_t k, const int8_t *wp,
                         const int32_t *wsum, int64_t n, const float *sx, const float *ws,
                         const float *bias, float *y, int64_t grain);

/* Tests: the same product on one thread through the given path
 * (MMT_QPACK_VNNI or MMT_QPACK_AMX, whatever the row count).  Returns 0, or
 * -1 (nothing written) when this CPU / OS cannot run that path. */
MMT_QPACK_API int mmt_qpack_linear_path(int path, const int8_t *x, int64_t m, int64_t k,
                                        const int8_t *wp, const int32_t *wsum, int64_t n,
                                        const float *sx, const float *ws, const float *bias,
                                        float *y);

#ifdef __cplusplus
}
#endif

#endif
