/* mmt_attend.h: attention of one query position per row, in float32 on the
 * CPU (a decoder step over its caches).  See mmt_attend.c. */
#ifndef MMT_ATTEND_H
#define MMT_ATTEND_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Where the keys (or values) of (row r, head h, position s) live:
 * base + (r / share) * row + h * head + s * pos, head_dim floats contiguous
 * there (share: see mmt_attend_one). */
typedef struct {
    const float *base;
    int64_t row, head, pos;
} mmt_kv_layout;

/* Added to the scores: float `bias` at bias + (r / share) * row + h * head
 * + s (a stride of 0 broadcasts), and/or a bool `mask` at mask + (r / share)
 * * mrow + h * mhead + s where false removes the position.  Either may be
 * NULL. */
typedef struct {
    const float *bias;
    int64_t row, head;
    const bool *mask;
    int64_t mrow, mhead;
} mmt_attn_bias;

/* out[r, h, :] = softmax_s(scale * q[r, h, :] . K[r, h, s, :] + bias) V[r, h, s, :]
 * for rows x heads queries q (contiguous [rows, heads, head_dim]) over len
 * positions; out is contiguous [rows, heads, head_dim].  scratch holds
 * len * nthreads floats; the problems are split over nthreads threads of
 * an OpenMP team (when the shim has OpenMP; nthreads <= 1: the caller
 * alone).  A query whose positions are all masked gets zeros.
 *
 * share: consecutive rows that read one entry of keys, values and bias
 * (the beams of a request over its encoder output; 1 otherwise).  Sharing
 * changes where a row reads, never its arithmetic. */
__attribute__((visibility("default"))) void
mmt_attend_one(const float *q, int64_t rows, int64_t share, int64_t heads, int64_t head_dim,
               int64_t len, mmt_kv_layout k, mmt_kv_layout v, mmt_attn_bias b, float scale, float *out,
               float *scratch, int nthreads);

/* mmt_attend_one, with row r's keys and values at position s read from
 * cache row slot[r * slot_row + s] (k.row / v.row apart) instead of the
 * row's own entry: beam search's reordered histories without copying the
 * caches.  slot NULL: mmt_attend_one.  The arithmetic is mmt_attend_one's,
 * bit for bit, on caches gathered by the table. */
__attribute__((visibility("default"))) void
mmt_attend_slots(const float *q, int64_t rows, int64_t share, int64_t heads, int64_t head_dim,
                 int64_t len, mmt_kv_layout k, mmt_kv_layout v, mmt_attn_bias b,
                 const int32_t *slot, int64_t slot_row, float scale, float *out, float *scratch,
                 int nthreads);

#ifdef __cplusplus
}
#endif

#endif
