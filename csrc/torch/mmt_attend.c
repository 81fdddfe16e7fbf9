/* mmt_attend.c: the attention of a decoder step, one query position per row,
 * for many rows at once, in float32 on the CPU.
 *
 * In a batched decoder step every row (a request, or one of its beams) and
 * every head asks one small question: a query of head_dim numbers against
 * the row's cached keys and values (its own self-attention cache, or its
 * encoder output).  ATen's scaled_dot_product_attention answers each of
 * those rows x heads problems with its general blocked kernel and BLAS
 * calls sized for a single query, so the call overhead, not the arithmetic,
 * was a sixth of a beam-search step.  Here each problem is three short
 * loops over data already in cache: scores (scaled dot products plus the
 * bias or mask), a softmax with the maximum subtracted, and the weighted sum
 * of the values.  Problems are independent, so the work-sharing threads of
 * mmt_pool.c split them without changing any result.
 *
 * Dot products run 16 lanes wide (GCC's vector extensions, compiled for
 * AVX-512, AVX2 and the baseline like mmt_skinny.c), and the weighted sum
 * of values keeps 64 outputs in registers across positions.  The arithmetic
 * is not ATen's blocked online softmax, so the last bits may differ from
 * sdpa's; a row's result never depends on the other rows.
 *
 * The beams of a request attend over one encoder output: they share one
 * copy of its keys and values (`share` rows per entry), so a beam-search
 * step reads a quarter of the memory four copies would take, and the
 * copies are never made or reordered.
 *
 * Their self-attention caches are not reordered either (mmt_attend_slots):
 * a slot table names, for each row and position, the cache row that holds
 * it, so when beam search keeps a beam's continuations the step rewrites a
 * few indices instead of copying every layer's keys and values (a tenth of
 * a batched BART beam step, most of it the kernel clearing fresh pages for
 * the copies).  The arithmetic is the same wherever a position lives. */
#include "mmt_attend.h"
#include "mmt_pool.h"
#include "mmt_vec.h"

#include <math.h>
#include <stddef.h>
/* q . k over hd numbers: 16 lanes wide while it can, then the rest. */
MMT_INLINE float dot(const float *q, const float *k, int64_t hd) {
    int64_t i = 0;
    float d = 0.0f;
    if (hd >= 16) {
        mmt_v16 acc = mmt_ld16(q) * mmt_ld16(k);
        for (i = 16; i + 16 <= hd; i += 16)
            acc += mmt_ld16(q + i) * mmt_ld16(k + i);
        d = mmt_hsum16(acc);
    }
    for (; i < hd; i++)
        d += q[i] * k[i];
    return d;
}

/* Where position s of a row's keys (or values) lives: at kb + s * kpos, or,
 * through a slot table, in cache row slot[s] (kb then points at row 0). */
MMT_INLINE const float *at_pos(const float *kb, int64_t kpos, const int32_t *slot,
                               int64_t krow, int64_t s) {
    return slot ? kb + (int64_t)slot[s] * krow + s * kpos : kb + s * kpos;
}

MMT_INLINE void one(const float *qv, int64_t hd, int64_t len, const float *kb, int64_t kpos,
                    const float *vb, int64_t vpos, const int32_t *slot, int64_t krow,
                    int64_t vrow, const float *bias, const bool *mask, float scale, float *sc,
                    float *o) {
    float mx = -INFINITY;
    for (int64_t s = 0; s < len; s++) {
        const float *kp = at_pos(kb, kpos, slot, krow, s);
        float d = bias ? fmaf(dot(qv, kp, hd), scale, bias[s]) : dot(qv, kp, hd) * scale;
        if (mask && !mask[s])
            d = -INFINITY;
        sc[s] = d;
        if (d > mx)
            mx = d;
    }
    for (int64_t i = 0; i < hd; i++)
        o[i] = 0.0f;
    if (mx == -INFINITY)
        return; /* nothing to attend to */
    float sum = 0.0f;
    for (int64_t s = 0; s < len; s++) {
        sc[s] = expf(sc[s] - mx);
        sum += sc[s];
    }
    const float inv = 1.0f / sum;
    int64_t i0 = 0;
    for (; i0 + 64 <= hd; i0 += 64) { /* four vectors of o held in registers */
        mmt_v16 o0 = {0}, o1 = {0}, o2 = {0}, o3 = {0};
        for (int64_t s = 0; s < len; s++) {
            const float p = sc[s] * inv;
            const float *vr = at_pos(vb, vpos, slot, vrow, s) + i0;
            o0 += p * mmt_ld16(vr);
            o1 += p * mmt_ld16(vr + 16);
            o2 += p * mmt_ld16(vr + 32);
            o3 += p * mmt_ld16(vr + 48);
        }
        memcpy(o + i0, &o0, sizeof o0);
        memcpy(o + i0 + 16, &o1, sizeof o1);
        memcpy(o + i0 + 32, &o2, sizeof o2);
        memcpy(o + i0 + 48, &o3, sizeof o3);
    }
    for (int64_t s = 0; s < len; s++) {
        const float p = sc[s] * inv;
        const float *vr = at_pos(vb, vpos, slot, vrow, s);
        for (int64_t i = i0; i < hd; i++)
            o[i] += p * vr[i];
    }
}

MMT_INLINE void range(const float *q, int64_t share, int64_t heads, int64_t hd, int64_t len,
                      mmt_kv_layout k, mmt_kv_layout v, mmt_attn_bias b, const int32_t *slot,
                      int64_t slot_row, float scale, float *out, int64_t p0, int64_t p1,
                      float *sc) {
    for (int64_t p = p0; p < p1; p++) {
        const int64_t r = p / heads, e = r / share, h = p % heads; /* the row's entry */
        /* through a slot table every position names its own cache row */
        const int64_t ke = slot ? 0 : e;
        one(q + p * hd, hd, len, k.base + ke * k.row + h * k.head, k.pos,
            v.base + ke * v.row + h * v.head, v.pos, slot ? slot + r * slot_row : NULL, k.row,
            v.row, b.bias ? b.bias + e * b.row + h * b.head : NULL,
            b.mask ? b.mask + e * b.mrow + h * b.mhead : NULL, scale, sc, out + p * hd);
    }
}

struct att_job {
    const float *q;
    int64_t share, heads, hd, len;
    mmt_kv_layout k, v;
    mmt_attn_bias b;
    const int32_t *slot;
    int64_t slot_row;
    float scale;
    float *out, *scratch;
};

MMT_CLONES
static void att_piece(void *arg, int64_t p0, int64_t p1, int slot) {
    const struct att_job *j = (const struct att_job *)arg;
    range(j->q, j->share, j->heads, j->hd, j->len, j->k, j->v, j->b, j->slot, j->slot_row,
          j->scale, j->out, p0, p1, j->scratch + slot * j->len);
}

MMT_CLONES
void mmt_attend_slots(const float *q, int64_t rows, int64_t share, int64_t heads,
                      int64_t head_dim, int64_t len, mmt_kv_layout k, mmt_kv_layout v,
                      mmt_attn_bias b, const int32_t *slot, int64_t slot_row, float scale,
                      float *out, float *scratch, int nthreads) {
    const int64_t n = rows * heads;
    if (share < 1)
        share = 1;
    /* a thread gets at least 64 problems, or waking it costs more than it
     * saves; pieces of 16 problems, taken one at a time (mmt_pool.c) */
    if (nthreads > 1 && n >= 128) {
        if (nthreads > n / 64)
            nthreads = (int)(n / 64);
        struct att_job j = {q, share, heads, head_dim, len, k, v, b, slot, slot_row,
                            scale, out, scratch};
        mmt_pool_run(n, 16, nthreads, att_piece, &j);
        return;
    }
    range(q, share, heads, head_dim, len, k, v, b, slot, slot_row, scale, out, 0, n, scratch);
}

void mmt_attend_one(const float *q, int64_t rows, int64_t share, int64_t heads, int64_t head_dim,
                    int64_t len, mmt_kv_layout k, mmt_kv_layout v, mmt_attn_bias b, float scale,
                    float *out, float *scratch, int nthreads) {
    mmt_attend_slots(q, rows, share, heads, head_dim, len, k, v, b, NULL, 0, scale, out, scratch,
                     nthreads);
}
