/* mmt_q8.h: the float32 <-> int8 passes of an int8 linear layer on the CPU
 * (per-row dynamic quantization, per-row rescale plus bias).  See mmt_q8.c. */
#ifndef MMT_Q8_H
#define MMT_Q8_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Exported from libmm_torch.so so that tests can call the kernels on their own. */
#define MMT_Q8_API __attribute__((visibility("default")))

/* For each of the m rows of x (m x k, contiguous): scales[r] = max|x_r| / 127
 * (1 when the row is all zeros) and q_r = x_r / scales[r] rounded half away
 * from zero, clamped to [-127, 127]. */
MMT_Q8_API void mmt_q8_quantize_rows(const float *x, int64_t m, int64_t k, int8_t *q,
                                     float *scales);

enum { MMT_Q8_NONE = 0, MMT_Q8_GELU = 1, MMT_Q8_GELU_TANH = 2 };

/* In place over m x n: y[r][j] = act(y[r][j] * row_scale[r] + bias[j]) + residual[r][j].
 * bias and residual (m x n, contiguous) may be NULL; act is MMT_Q8_NONE, MMT_Q8_GELU
 * (erf; vectorized with an absolute error in erf under 2e-7) or MMT_Q8_GELU_TANH. */
MMT_Q8_API void mmt_q8_rescale_rows(float *y, int64_t m, int64_t n, const float *row_scale,
                                    const float *bias, const float *residual, int act);

#ifdef __cplusplus
}
#endif

#endif
