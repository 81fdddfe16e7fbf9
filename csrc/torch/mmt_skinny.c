/* mmt_skinny.c: the matrix products of a decoder step, y = x W^T + b with
 * only a few rows in x, in float32 on the CPU.
 *
 * A decoder step of a lone request (or of its beams) multiplies 1 to 8 rows
 * by every weight matrix of the decoder and by the vocabulary projection.
 * That is a matrix-vector product: it reads each weight once and does two
 * flops per weight, so its speed is the speed of streaming the weights from
 * memory.  MKL's sgemm/sgemv for this shape reaches 5-10 GB/s on the
 * vocabulary projection here, where the memory delivers 20-30 GB/s; this
 * kernel streams the weights at the memory's speed.  Up to a few dozen rows
 * (a greedy group of a burst) it still beats sgemm, which packs the weights
 * anew on every call (MMT_SKINNY_MAX_ROWS).
 *
 * Each output is one dot product, accumulated 16 lanes wide in k order, the
 * lanes then added in a fixed tree, then a scalar tail, then the bias; the
 * same for every m and every slice of the outputs, so splitting the work
 * across threads, or a row's batch neighbours, never change a bit.  The
 * shapes: one x row against 8 weight rows, or 4 x rows against 4 weight rows
 * (16 accumulators, each weight vector loaded once for 4 rows), or, from 8
 * rows on (a batched step: 16-64 rows), 4 x rows against 6 weight rows (24
 * accumulators: 10 loads feed 24 multiply-adds instead of 8 for 16, and the
 * x rows, re-read from L2 for every block of weight rows, are read a third
 * less often; 1.15-1.4x at 32 rows on a Sapphire Rapids core).  A block's
 * lane trees are added together, a vector at a time (mmt_hsum16x16): one
 * tree per output cost a sixth of the time at k = 512.  Short edges repeat
 * a valid row and drop its results.
 *
 * The threaded entry cuts the outputs into pieces that the caller and the
 * work-sharing helpers of mmt_pool.c take one at a time, as many threads as
 * OpenMP's per-thread count allows (libtorch's own libgomp: CMake links that
 * copy, so the process holds one runtime).
 *
 * GCC's vector extensions keep the code portable (mmt_vec.h); on x86-64 the
 * function is compiled for AVX-512, AVX2 and the baseline, and the loader
 * picks one. */
#include "mmt_skinny.h"
#include "mmt_pool.h"
#include "mmt_vec.h"

/* Each load prefetches the same place of the next block's weight rows (8
 * rows ahead for one x row, 4 for four), into L2: the block's rows are one
 * contiguous run, and a fixed 8 KB lookahead fell inside the block being
 * read whenever the rows were short (k = 512: a 16 KB block), which left
 * the kernel at a third of MKL's speed on a Xeon (512 x 2048: 560 -> 155 us
 * a product, 1 row; t5's vocabulary: 7.6 -> 4.6 ms).  Prefetching changes
 * no arithmetic. */

/* The scalar tail k in [kb, k) of one dot product. */
MMT_INLINE float tail(const float *x, const float *w, int64_t kb, int64_t k) {
    float t = 0.0f;
    for (int64_t i = kb; i < k; i++)
        t += x[i] * w[i];
    return t;
}

/* Stores the sums s (lane i: output (r + i / w, j + i % w), each already
 * reduced as mmt_hsum16 would) plus each output's tail, plus its bias,
 * for the rows and outputs that exist. */
MMT_INLINE void store(mmt_v16 s, int w, const float *const *xr, const float *const *wr,
                      int64_t k, int64_t kb, int64_t r, int64_t mlast, int64_t j, int64_t last,
                      const float *bias, float *y, int64_t ldy) {
    mmt_v16 t = {0}, b = {0};
    for (int i = 0; i < 16; i++) {
        if (kb < k)
            t[i] = tail(xr[i / w], wr[i % w], kb, k);
        if (bias)
            b[i] = bias[j + i % w <= last ? j + i % w : last];
    }
    s += t;
    if (bias)
        s += b;
    for (int i = 0; i < 16; i++)
        if (r + i / w <= mlast && j + i % w <= last)
            y[(r + i / w) * ldy + j + i % w] = s[i];
}

/* One x row against weight rows j .. j+7 (clamped to last). */
MMT_INLINE void k1x8(const float *x, const float *w, int64_t k, int64_t kb, int64_t j,
                     int64_t last, const float *bias, float *y) {
    const float *wr[8];
    mmt_v16 acc[8];
    for (int c = 0; c < 8; c++) {
        wr[c] = w + (j + c <= last ? j + c : last) * k;
        acc[c] = (mmt_v16){0};
    }
    for (int64_t i = 0; i < kb; i += 16) {
        mmt_v16 xv = mmt_ld16(x + i);
#pragma GCC unroll 8
        for (int c = 0; c < 8; c++) {
            __builtin_prefetch(wr[c] + i + 8 * k, 0, 2);
            acc[c] += xv * mmt_ld16(wr[c] + i);
        }
    }
    const float *xr[2] = {x, x};
    store(mmt_hsum16x8(acc), 8, xr, wr, k, kb, 0, 0, j, last, bias, y, 0);
}

/* x rows r .. r+3 (clamped to mlast) against weight rows j .. j+3 (clamped
 * to last). */
MMT_INLINE void k4x4(const float *x, int64_t r, int64_t mlast, const float *w, int64_t k,
                     int64_t kb, int64_t j, int64_t last, const float *bias, float *y,
                     int64_t ldy) {
    const float *xr[4], *wr[4];
    mmt_v16 acc[4][4];
    for (int c = 0; c < 4; c++) {
        xr[c] = x + (r + c <= mlast ? r + c : mlast) * k;
        wr[c] = w + (j + c <= last ? j + c : last) * k;
        for (int d = 0; d < 4; d++)
            acc[c][d] = (mmt_v16){0};
    }
    for (int64_t i = 0; i < kb; i += 16) {
        mmt_v16 x0 = mmt_ld16(xr[0] + i), x1 = mmt_ld16(xr[1] + i);
        mmt_v16 x2 = mmt_ld16(xr[2] + i), x3 = mmt_ld16(xr[3] + i);
#pragma GCC unroll 4
        for (int d = 0; d < 4; d++) {
            __builtin_prefetch(wr[d] + i + 4 * k, 0, 2);
            mmt_v16 wv = mmt_ld16(wr[d] + i);
            acc[0][d] += x0 * wv;
            acc[1][d] += x1 * wv;
            acc[2][d] += x2 * wv;
            acc[3][d] += x3 * wv;
        }
    }
    store(mmt_hsum16x16(&acc[0][0]), 4, xr, wr, k, kb, r, mlast, j, last, bias, y, ldy);
}

/* x rows r .. r+3 (clamped to mlast) against weight rows j .. j+5 (clamped
 * to last), the many-row block.  The prefetches of the next block's weight
 * rows (one contiguous run of 6 k floats at pn, up to pe) are spread over
 * all the x row blocks that read this one, npf lines per k step: issuing
 * them all while the first x rows pass (as the 4 x 4 block does) left the
 * memory idle for the other passes (the vocabulary projection at 32 rows:
 * 1.25x).  Returns where the prefetches stopped. */
MMT_INLINE const char *k4x6(const float *x, int64_t r, int64_t mlast, const float *w, int64_t k,
                            int64_t kb, int64_t j, int64_t last, const float *bias, float *y,
                            int64_t ldy, const char *pn, const char *pe, int npf) {
    const float *xr[4], *wr[6];
    mmt_v16 acc[4][6];
    for (int c = 0; c < 4; c++)
        xr[c] = x + (r + c <= mlast ? r + c : mlast) * k;
    for (int d = 0; d < 6; d++)
        wr[d] = w + (j + d <= last ? j + d : last) * k;
    for (int c = 0; c < 4; c++)
        for (int d = 0; d < 6; d++)
            acc[c][d] = (mmt_v16){0};
    for (int64_t i = 0; i < kb; i += 16) {
        if (pn < pe) {
            for (int l = 0; l < npf; l++)
                __builtin_prefetch(pn + 64 * l, 0, 2);
            pn += 64 * npf;
        }
        mmt_v16 xv[4];
        for (int c = 0; c < 4; c++)
            xv[c] = mmt_ld16(xr[c] + i);
#pragma GCC unroll 6
        for (int d = 0; d < 6; d++) {
            mmt_v16 wv = mmt_ld16(wr[d] + i);
            for (int c = 0; c < 4; c++)
                acc[c][d] += xv[c] * wv;
        }
    }
    /* outputs 0-15 and 16-23 of the block, each reduced as mmt_hsum16 */
    const mmt_v16 s16 = mmt_hsum16x16(&acc[0][0]), s8 = mmt_hsum16x8(&acc[0][0] + 16);
    for (int q = 0; q < 24; q++) {
        const int c = q / 6, d = q % 6;
        if (r + c > mlast || j + d > last)
            continue;
        float v = q < 16 ? s16[q] : s8[q - 16];
        v += kb < k ? tail(xr[c], wr[d], kb, k) : 0.0f; /* as store() adds its tails */
        if (bias)
            v += bias[j + d];
        y[(r + c) * ldy + j + d] = v;
    }
    return pn;
}

MMT_CLONES
void mmt_skinny_linear(const float *x, int64_t m, int64_t k, const float *w, int64_t n0,
                       int64_t n1, const float *bias, float *y, int64_t ldy) {
    if (m <= 0 || n1 <= n0)
        return;
    const int64_t kb = k - k % 16, last = n1 - 1;
    if (m == 1) {
        for (int64_t j = n0; j < n1; j += 8)
            k1x8(x, w, k, kb, j, last, bias, y);
        return;
    }
    if (m < 8) { /* memory-bound: the 4 x 4 block streams the weights best */
        for (int64_t j = n0; j < n1; j += 4)
            for (int64_t r = 0; r < m; r += 4)
                k4x4(x, r, m - 1, w, k, kb, j, last, bias, y, ldy);
        return;
    }
    const int64_t passes = ((m + 3) / 4) * (kb > 0 ? kb / 16 : 1);
    const int64_t lines = (6 * k * (int64_t)sizeof(float) + 63) / 64; /* of the next block */
    const int npf = (int)((lines + passes - 1) / passes);
    for (int64_t j = n0; j < n1; j += 6) {
        const char *pn = (const char *)(w + (j + 6) * k), *pe = pn + 64 * lines;
        if (j + 6 > last)
            pe = pn; /* nothing after this block */
        for (int64_t r = 0; r < m; r += 4)
            pn = k4x6(x, r, m - 1, w, k, kb, j, last, bias, y, ldy, pn, pe, npf);
    }
}

struct lin_job {
    const float *x, *w, *bias;
    float *y;
    int64_t m, k, n;
};

/* Pieces are counted in blocks of 8 outputs, so every cut falls on a whole
 * block of the kernel. */
static void lin_piece(void *arg, int64_t b0, int64_t b1, int slot) {
    (void)slot;
    const struct lin_job *j = (const struct lin_job *)arg;
    const int64_t n0 = b0 * 8, n1 = b1 * 8 < j->n ? b1 * 8 : j->n;
    mmt_skinny_linear(j->x, j->m, j->k, j->w, n0, n1, j->bias, j->y, j->n);
}

void mmt_skinny_linear_mt(const float *x, int64_t m, int64_t k, const float *w, int64_t n,
                          const float *bias, float *y, int64_t grain) {
    int64_t nt = mmt_pool_width();
    if (grain < 1)
        grain = 1;
    if (nt > n / grain)
        nt = n / grain;
    if (nt <= 1) {
        mmt_skinny_linear(x, m, k, w, 0, n, bias, y, n);
        return;
    }
    /* about 8 pieces a thread (a late or descheduled thread holds back an
     * eighth of its share), each at least a quarter of the grain */
    const int64_t blocks = (n + 7) / 8;
    int64_t per = blocks / (8 * nt), min_per = (grain / 4 + 7) / 8;
    if (per < min_per)
        per = min_per;
    if (per < 1)
        per = 1;
    struct lin_job j = {x, w, bias, y, m, k, n};
    mmt_pool_run(blocks, per, (int)nt, lin_piece, &j);
}
