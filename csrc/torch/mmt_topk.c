/* mmt_topk.c: the K best candidates of one beam-search request in one pass
 * over its log-probabilities, in float32 on the CPU.
 *
 * Each step of beam search keeps, per request, the K = 2 x num_beams best
 * continuations among num_beams x vocabulary candidates: the log-probability
 * of token v after beam j plus beam j's running score.  transformers adds the
 * scores into a [requests, num_beams x V] tensor and calls torch.topk; for a
 * batched bart-base step (32 rows x 50,265) that was a pass writing 6.4 MB
 * and ATen's selection over it, 5% of a beam call.  Here one pass adds each
 * score as that addition does (one float add: the same value) and keeps the
 * K best in a small sorted list.  Candidates are read 64 at a time and only
 * a block whose largest value beats the K-th best so far is looked at one by
 * one, which after the first few thousand candidates is almost never.
 *
 * Order: value descending, equal values by candidate index (j * V + v),
 * lower first.  A NaN never enters a full list. */
#include "mmt_topk.h"
#include "mmt_vec.h"

#include <math.h>

/* Lane by lane, the larger of a and b. */
MMT_INLINE mmt_v16 vmax(mmt_v16 a, mmt_v16 b) {
    const mmt_v16i m = a > b;
    return (mmt_v16)(((mmt_v16i)a & m) | ((mmt_v16i)b & ~m));
}

/* The largest lane of a (no NaN expected; a NaN lane may or may not win). */
MMT_INLINE float hmax16(mmt_v16 a) {
    mmt_v16 b = MMT_SHUF16(a, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
    a = vmax(a, b);
    b = MMT_SHUF16(a, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11);
    a = vmax(a, b);
    b = MMT_SHUF16(a, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
    a = vmax(a, b);
    b = MMT_SHUF16(a, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
    a = vmax(a, b);
    return a[0];
}

struct best {
    float *val;
    int64_t *idx;
    int64_t k, n;
};

/* Offers candidate (x, i); candidates come in increasing i. */
MMT_INLINE void offer(struct best *b, float x, int64_t i) {
    if (b->n == b->k && !(x > b->val[b->k - 1]))
        return;
    int64_t p = b->n < b->k ? b->n++ : b->k - 1;
    while (p > 0 && b->val[p - 1] < x) { /* strictly: an equal value stays first */
        b->val[p] = b->val[p - 1];
        b->idx[p] = b->idx[p - 1];
        p--;
    }
    b->val[p] = x;
    b->idx[p] = i;
}

MMT_CLONES
int64_t mmt_beam_topk(const float *lp, int64_t ld, int64_t beams, int64_t vocab,
                      const float *add, int64_t k, float *val, int64_t *idx) {
    struct best b = {val, idx, k, 0};
    if (k <= 0)
        return 0;
    for (int64_t j = 0; j < beams; j++) {
        const float *row = lp + j * ld;
        const float a = add ? add[j] : 0.0f;
        const mmt_v16 av = (mmt_v16){0} + a;
        const int64_t base = j * vocab;
        int64_t v = 0;
        for (; v + 64 <= vocab; v += 64) {
            if (b.n == b.k) {
                mmt_v16 x0 = mmt_ld16(row + v) + av, x1 = mmt_ld16(row + v + 16) + av;
                mmt_v16 x2 = mmt_ld16(row + v + 32) + av, x3 = mmt_ld16(row + v + 48) + av;
                if (!(hmax16(vmax(vmax(x0, x1), vmax(x2, x3))) > b.val[b.k - 1]))
                    continue; /* nothing here beats the K-th best */
            }
            for (int64_t i = v; i < v + 64; i++)
                offer(&b, row[i] + a, base + i);
        }
        for (; v < vocab; v++)
            offer(&b, row[v] + a, base + v);
    }
    return b.n;
}
