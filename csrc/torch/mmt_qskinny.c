/* mmt_qskinny.c: the int8 matrix products of a decoder step (dtype="int8").
 *
 * A decoder step multiplies 1 to 64 rows by every weight matrix: it streams
 * the weights once and does little arithmetic per byte, so its speed is the
 * memory's.  oneDNN's s8 x s8 product (at::_int_mm) is built for big
 * matrices and takes about 1 ms for one row against a 512 x 2048 int8
 * matrix, twenty times the time to read its 1 MB; this kernel streams it.
 *
 * Sums are exact int32 dot products (|x|, |w| <= 127, k < 2^17), so every
 * CPU path gives the same bits, and a row's result depends on that row
 * only:
 *   - AVX512-VNNI: vpdpbusd multiplies unsigned by signed bytes, so x goes
 *     in as x + 128 (x xor 0x80) and 128 * sum(w) is taken back at the end;
 *   - AVX2: vpmaddubsw with |x| and w carrying x's sign (pairs of products
 *     stay below 2 * 127 * 127 < 2^15, no saturation), vpmaddwd to int32;
 *   - scalar otherwise.
 * Blocks of 4 rows x 4 outputs (4-row blocks reuse each weight load 4
 * times), single rows 1 x 4.  The path is chosen at run time from CPUID.
 * The threaded entry splits the outputs across the OpenMP team, as
 * mmt_skinny.c does.  PYMODELMGR_CPU_INT8_KERNEL=avx2|scalar, read once,
 * picks a slower path, so tests can check the paths give the same bits. */
#include "mmt_qskinny.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define MMT_Q_X86 1
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

/* One output: the int32 sum s scaled back to float, plus the bias. */
static inline void put(float *y, int32_t s, float sxr, float wsj, const float *bias, int64_t j) {
    if (bias)
        *y = (float)s * (sxr * wsj) + bias[j];
    else
        *y = (float)s * (sxr * wsj);
}

static int32_t dot_tail(const int8_t *x, const int8_t *w, int64_t k0, int64_t k, int32_t off) {
    int32_t s = 0;
    for (int64_t i = k0; i < k; i++)
        s += ((int32_t)x[i] + off) * (int32_t)w[i];
    return s;
}

static void q_scalar(const int8_t *x, int64_t m, int64_t k, const int8_t *w, int64_t n0,
                     int64_t n1, const float *sx, const float *ws, const float *bias, float *y,
                     int64_t ldy) {
    for (int64_t r = 0; r < m; r++)
        for (int64_t j = n0; j < n1; j++)
            put(y + r * ldy + j, dot_tail(x + r * k, w + j * k, 0, k, 0), sx[r], ws[j], bias, j);
}

#ifdef MMT_Q_X86

/* ---- AVX512-VNNI ---- */

#define VNNI __attribute__((target("avx512f,avx512bw,avx512vnni")))

VNNI static void vnni_rows(const int8_t *x, int64_t r, int rr, int64_t k, const int8_t *w,
                           const int32_t *wsum, int64_t n0, int64_t n1, const float *sx,
                           const float *ws, const float *bias, float *y, int64_t ldy) {
    const int64_t kb = k & ~(int64_t)63;
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    for (int64_t j = n0; j < n1; j += 4) {
        const int jj = n1 - j < 4 ? (int)(n1 - j) : 4;
        const int8_t *wr[4], *xr[4];
        for (int d = 0; d < 4; d++)
            wr[d] = w + (j + (d < jj ? d : jj - 1)) * k;
        for (int c = 0; c < 4; c++)
            xr[c] = x + (r + (c < rr ? c : rr - 1)) * k;
        if (rr == 1) {
            __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
            for (int64_t i = 0; i < kb; i += 64) {
                __m512i xv = _mm512_xor_si512(_mm512_loadu_si512(xr[0] + i), flip);
                a0 = _mm512_dpbusd_epi32(a0, xv, _mm512_loadu_si512(wr[0] + i));
                a1 = _mm512_dpbusd_epi32(a1, xv, _mm512_loadu_si512(wr[1] + i));
                a2 = _mm512_dpbusd_epi32(a2, xv, _mm512_loadu_si512(wr[2] + i));
                a3 = _mm512_dpbusd_epi32(a3, xv, _mm512_loadu_si512(wr[3] + i));
            }
            __m512i acc[4] = {a0, a1, a2, a3};
            for (int d = 0; d < jj; d++) {
                int32_t s = _mm512_reduce_add_epi32(acc[d]) + dot_tail(xr[0], wr[d], kb, k, 128) -
                            128 * wsum[j + d];
                put(y + r * ldy + j + d, s, sx[r], ws[j + d], bias, j + d);
            }
            continue;
        }
        __m512i acc[4][4];
        for (int c = 0; c < 4; c++)
            for (int d = 0; d < 4; d++)
                acc[c][d] = _mm512_setzero_si512();
        for (int64_t i = 0; i < kb; i += 64) {
            __m512i w0 = _mm512_loadu_si512(wr[0] + i), w1 = _mm512_loadu_si512(wr[1] + i);
            __m512i w2 = _mm512_loadu_si512(wr[2] + i), w3 = _mm512_loadu_si512(wr[3] + i);
#pragma GCC unroll 4
            for (int c = 0; c < 4; c++) {
                __m512i xv = _mm512_xor_si512(_mm512_loadu_si512(xr[c] + i), flip);
                acc[c][0] = _mm512_dpbusd_epi32(acc[c][0], xv, w0);
                acc[c][1] = _mm512_dpbusd_epi32(acc[c][1], xv, w1);
                acc[c][2] = _mm512_dpbusd_epi32(acc[c][2], xv, w2);
                acc[c][3] = _mm512_dpbusd_epi32(acc[c][3], xv, w3);
            }
        }
        for (int c = 0; c < rr; c++)
            for (int d = 0; d < jj; d++) {
                int32_t s = _mm512_reduce_add_epi32(acc[c][d]) +
                            dot_tail(xr[c], wr[d], kb, k, 128) - 128 * wsum[j + d];
                put(y + (r + c) * ldy + j + d, s, sx[r + c], ws[j + d], bias, j + d);
            }
    }
}

/* ---- AVX2 ---- */

#define AVX2 __attribute__((target("avx2")))

AVX2 static inline int32_t hsum8(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

AVX2 static void avx2_rows(const int8_t *x, int64_t r, int rr, int64_t k, const int8_t *w,
                           int64_t n0, int64_t n1, const float *sx, const float *ws,
                           const float *bias, float *y, int64_t ldy) {
    const int64_t kb = k & ~(int64_t)31;
    const __m256i ones = _mm256_set1_epi16(1);
    for (int64_t j = n0; j < n1; j += 4) {
        const int jj = n1 - j < 4 ? (int)(n1 - j) : 4;
        const int8_t *wr[4];
        for (int d = 0; d < 4; d++)
            wr[d] = w + (j + (d < jj ? d : jj - 1)) * k;
        for (int c = 0; c < rr; c++) {
            const int8_t *xr = x + (r + c) * k;
            __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
            for (int64_t i = 0; i < kb; i += 32) {
                __m256i xv = _mm256_loadu_si256((const __m256i *)(xr + i));
                __m256i ax = _mm256_abs_epi8(xv);
#define STEP(a, d)                                                                              \
    a = _mm256_add_epi32(                                                                       \
        a, _mm256_madd_epi16(                                                                   \
               _mm256_maddubs_epi16(                                                            \
                   ax, _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)(wr[d] + i)), xv)), \
               ones))
                STEP(a0, 0);
                STEP(a1, 1);
                STEP(a2, 2);
                STEP(a3, 3);
#undef STEP
            }
            __m256i acc[4] = {a0, a1, a2, a3};
            for (int d = 0; d < jj; d++)
                put(y + (r + c) * ldy + j + d, hsum8(acc[d]) + dot_tail(xr, wr[d], kb, k, 0),
                    sx[r + c], ws[j + d], bias, j + d);
        }
    }
}

#endif /* MMT_Q_X86 */

enum { PATH_SCALAR = 1, PATH_AVX2, PATH_VNNI };

static int q_path(void) {
    static int path; /* 0: not chosen yet; every thread computes the same value */
    int p = __atomic_load_n(&path, __ATOMIC_RELAXED);
    if (p)
        return p;
    p = PATH_SCALAR;
#ifdef MMT_Q_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw"))
        p = PATH_VNNI;
    else if (__builtin_cpu_supports("avx2"))
        p = PATH_AVX2;
#endif
    /* PYMODELMGR_CPU_INT8_KERNEL=avx2 or scalar: a slower path on purpose
     * (tests compare the paths' bits) */
    const char *force = getenv("PYMODELMGR_CPU_INT8_KERNEL");
    if (force && strcmp(force, "scalar") == 0)
        p = PATH_SCALAR;
    else if (force && strcmp(force, "avx2") == 0 && p == PATH_VNNI)
        p = PATH_AVX2;
    __atomic_store_n(&path, p, __ATOMIC_RELAXED);
    return p;
}

static void q_linear(const int8_t *x, int64_t m, int64_t k, const int8_t *w, const int32_t *wsum,
                     int64_t n0, int64_t n1, const float *sx, const float *ws, const float *bias,
                     float *y, int64_t ldy) {
    if (m <= 0 || n1 <= n0)
        return;
    const int p = q_path();
#ifdef MMT_Q_X86
    if (p == PATH_VNNI || p == PATH_AVX2) {
        for (int64_t r = 0; r < m;) {
            const int rr = m - r >= 4 ? 4 : 1;
            if (p == PATH_VNNI)
                vnni_rows(x, r, rr, k, w, wsum, n0, n1, sx, ws, bias, y, ldy);
            else
                avx2_rows(x, r, rr, k, w, n0, n1, sx, ws, bias, y, ldy);
            r += rr;
        }
        return;
    }
#else
    (void)wsum;
    (void)p;
#endif
    q_scalar(x, m, k, w, n0, n1, sx, ws, bias, y, ldy);
}

void mmt_qskinny_linear_mt(const int8_t *x, int64_t m, int64_t k, const int8_t *w,
                           const int32_t *wsum, int64_t n, const float *sx, const float *ws,
                           const float *bias, float *y, int64_t grain) {
#ifdef _OPENMP
    int64_t nt = omp_in_parallel() ? 1 : omp_get_max_threads();
    if (grain < 1)
        grain = 1;
    if (nt > n / grain)
        nt = n / grain;
    if (nt > 1) {
#pragma omp parallel num_threads((int)nt)
        {
            int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
            int64_t n0 = (n * t / T) & ~(int64_t)3;
            int64_t n1 = t + 1 == T ? n : (n * (t + 1) / T) & ~(int64_t)3;
            q_linear(x, m, k, w, wsum, n0, n1, sx, ws, bias, y, n);
        }
        return;
    }
#else
    (void)grain;
#endif
    q_linear(x, m, k, w, wsum, 0, n, sx, ws, bias, y, n);
}
