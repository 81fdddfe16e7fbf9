/* mmt_qpack.c: the int8 matrix products of a generation model (dtype="int8")
 * on CPUs with AVX512-VNNI, on a weight packed once at load.
 *
 * mmt_qskinny.c multiplies a few rows by row-major weights; each output is a
 * dot product summed across a vector and reduced at the end.  A batched
 * beam search gives a decoder step 16-64 rows, where that kernel is bound
 * by its arithmetic and its horizontal sums (two thirds of an int8 BART
 * beam call).  Here the weight is stored as the VNNI instructions and AMX
 * tiles read it: for each block of 16 outputs and each group of 4 inputs,
 * 64 bytes (output o's 4 bytes at 4 o), so a vector holds 16 outputs' partial
 * sums and no horizontal sum remains:
 *   - AMX (Sapphire Rapids on): from MMT_QPACK_AMX_ROWS rows, 16 x 16 int32
 *     tiles of rows x outputs, tdpbssd (signed x signed) over 64 inputs at
 *     a time; up to 32 rows x 32 outputs per pass over the weights;
 *   - AVX512-VNNI (fewer rows, or no AMX): a register tile of up to 6 rows
 *     x 64 outputs, one broadcast of 4 input bytes per row and vpdpbusd
 *     (unsigned x signed: x + 128 goes in, 128 * sum(W[j]) comes back out).
 * Both sum exactly in int32 and scale with the float arithmetic of
 * mmt_qskinny.c (no FMA in the target lists, so no contraction), so every path, and
 * the row-major ones, give the same bits, and a row's result does not depend
 * on the rows beside it.  Padding (outputs to 32, inputs to 64) is zeros.
 *
 * The path is chosen once per process: AMX where CPUID has AMX-INT8 and
 * Linux grants the tile state (arch_prctl ARCH_REQ_XCOMP_PERM), else VNNI,
 * else none (weights stay row-major, mmt_qskinny.c).
 * PYMODELMGR_CPU_INT8_KERNEL=vnni keeps an AMX CPU on VNNI, =avx2 or
 * =scalar off the packed layout, so tests compare the paths. */
#include "mmt_qpack.h"
#include "mmt_pool.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && defined(__linux__)
#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#define MMT_QP_X86 1
#endif

int64_t mmt_qpack_kpad(int64_t k) { return (k + 63) & ~(int64_t)63; }
int64_t mmt_qpack_npad(int64_t n) { return (n + 31) & ~(int64_t)31; }

void mmt_qpack_pack(const int8_t *w, int64_t n, int64_t k, int8_t *out) {
    const int64_t kp = mmt_qpack_kpad(k), np = mmt_qpack_npad(n), kq = kp / 4;
    memset(out, 0, (size_t)(np * kp));
    for (int64_t j = 0; j < n; j++) {
        int8_t *blk = out + (j / 16) * kq * 64 + (j % 16) * 4;
        const int8_t *row = w + j * k;
        for (int64_t i = 0; i < k; i++)
            blk[(i / 4) * 64 + (i % 4)] = row[i];
    }
}

/* ---- per-row quantization of the activations ---- */

static void quant_scalar(const float *x, int64_t m, int64_t k, int8_t *q, int64_t ldq,
                         float *sx) {
    for (int64_t r = 0; r < m; r++) {
        const float *row = x + r * k;
        float amax = 0.f;
        for (int64_t j = 0; j < k; j++) {
            const float a = fabsf(row[j]);
            amax = amax < a ? a : amax; /* std::max(amax, a): a NaN leaves amax */
        }
        const float s = amax > 0.f ? amax / 127.0f : 1.0f;
        const float inv = 1.0f / s;
        int8_t *out = q + r * ldq;
        for (int64_t j = 0; j < k; j++) {
            float v = row[j] * inv;
            v = -127.f < v ? v : -127.f; /* std::max(-127.f, v): NaN -> -127 */
            v = v < 127.f ? v : 127.f;
            out[j] = (int8_t)lrintf(v);
        }
        memset(out + k, 0, (size_t)(ldq - k));
        sx[r] = s;
    }
}

#ifdef MMT_QP_X86

#define AVX512 __attribute__((target("avx512f,avx512bw,avx512vl")))

AVX512 static void quant_avx512(const float *x, int64_t m, int64_t k, int8_t *q, int64_t ldq,
                                float *sx) {
    const __m512i absmask = _mm512_set1_epi32(0x7fffffff);
    for (int64_t r = 0; r < m; r++) {
        const float *row = x + r * k;
        __m512 mx = _mm512_setzero_ps();
        int64_t j = 0;
        for (; j + 16 <= k; j += 16) {
            __m512 a = _mm512_castsi512_ps(
                _mm512_and_si512(_mm512_castps_si512(_mm512_loadu_ps(row + j)), absmask));
            mx = _mm512_max_ps(a, mx); /* a NaN in a yields mx */
        }
        if (j < k) {
            const __mmask16 mk = (__mmask16)((1u << (k - j)) - 1);
            __m512 a = _mm512_castsi512_ps(
                _mm512_and_si512(_mm512_castps_si512(_mm512_maskz_loadu_ps(mk, row + j)), absmask));
            mx = _mm512_max_ps(a, mx);
        }
        const float amax = _mm512_reduce_max_ps(mx);
        const float s = amax > 0.f ? amax / 127.0f : 1.0f;
        const float inv = 1.0f / s;
        const __m512 vinv = _mm512_set1_ps(inv), lo = _mm512_set1_ps(-127.f),
                     hi = _mm512_set1_ps(127.f);
        int8_t *out = q + r * ldq;
        for (j = 0; j < k; j += 16) {
            const int64_t c = k - j < 16 ? k - j : 16;
            const __mmask16 mk = (__mmask16)(c == 16 ? 0xffff : (1u << c) - 1);
            __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, row + j), vinv);
            v = _mm512_max_ps(v, lo); /* NaN -> -127, as the scalar */
            v = _mm512_min_ps(v, hi);
            /* round half to even under the default MXCSR, as lrintf */
            _mm_mask_storeu_epi8(out + j, mk, _mm512_cvtepi32_epi8(_mm512_cvtps_epi32(v)));
        }
        memset(out + k, 0, (size_t)(ldq - k));
        sx[r] = s;
    }
}

static int cpu_avx512(void) {
    static int v; /* 0 unknown, 1 no, 2 yes */
    int c = __atomic_load_n(&v, __ATOMIC_RELAXED);
    if (!c) {
        __builtin_cpu_init();
        c = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                    __builtin_cpu_supports("avx512vl")
                ? 2
                : 1;
        __atomic_store_n(&v, c, __ATOMIC_RELAXED);
    }
    return c == 2;
}

#endif /* MMT_QP_X86 */

void mmt_qpack_quantize_rows(const float *x, int64_t m, int64_t k, int8_t *q, int64_t ldq,
                             float *sx) {
#ifdef MMT_QP_X86
    if (cpu_avx512()) {
        quant_avx512(x, m, k, q, ldq, sx);
        return;
    }
#endif
    quant_scalar(x, m, k, q, ldq, sx);
}

/* ---- the products ---- */

struct qjob {
    const int8_t *x, *wp;
    const int32_t *wsum;
    const float *sx, *ws, *bias;
    float *y;
    int64_t m, k, n, kp;
    int amx;
};

#ifdef MMT_QP_X86

#define VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

/* y for rows r0 .. r0 + rows - 1 and 16 outputs from j, given their int32 sums. */
VNNI static inline __attribute__((always_inline)) void
put16(const struct qjob *J, int64_t r, int64_t j, __m512i s) {
    const int64_t c = J->n - j < 16 ? J->n - j : 16;
    const __mmask16 mk = (__mmask16)(c == 16 ? 0xffff : (1u << c) - 1);
    /* (float)s * (sx[r] * ws[j]) + bias[j], as mmt_qskinny.c's put() */
    __m512 sc = _mm512_mul_ps(_mm512_set1_ps(J->sx[r]), _mm512_maskz_loadu_ps(mk, J->ws + j));
    __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(s), sc);
    if (J->bias)
        v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(mk, J->bias + j));
    _mm512_mask_storeu_ps(J->y + r * J->n + j, mk, v);
}

/* RB rows (the last repeated up to RB when rows < RB) x 4 blocks of 16
 * outputs from block nb (the last of nbs repeated), summed over all inputs. */
VNNI static inline __attribute__((always_inline)) void
vnni_tile(const struct qjob *J, const int RB, int64_t r0, int rows, int64_t nb, int nbs) {
    const int64_t kq = J->kp / 4;
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    const int8_t *xr[6], *wb[4];
    for (int r = 0; r < RB; r++)
        xr[r] = J->x + (r0 + (r < rows ? r : rows - 1)) * J->kp;
    for (int b = 0; b < 4; b++)
        wb[b] = J->wp + (nb + (b < nbs ? b : nbs - 1)) * kq * 64;
    __m512i acc[6][4];
    for (int r = 0; r < RB; r++)
        for (int b = 0; b < 4; b++)
            acc[r][b] = _mm512_setzero_si512();
    for (int64_t i = 0; i < kq; i++) {
        const __m512i w0 = _mm512_loadu_si512(wb[0] + i * 64), w1 = _mm512_loadu_si512(wb[1] + i * 64);
        const __m512i w2 = _mm512_loadu_si512(wb[2] + i * 64), w3 = _mm512_loadu_si512(wb[3] + i * 64);
        for (int r = 0; r < RB; r++) {
            int32_t x4;
            memcpy(&x4, xr[r] + i * 4, 4);
            const __m512i xv = _mm512_xor_si512(_mm512_set1_epi32(x4), flip);
            acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], xv, w0);
            acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], xv, w1);
            acc[r][2] = _mm512_dpbusd_epi32(acc[r][2], xv, w2);
            acc[r][3] = _mm512_dpbusd_epi32(acc[r][3], xv, w3);
        }
    }
    for (int b = 0; b < nbs; b++) {
        const int64_t j = (nb + b) * 16;
        if (j >= J->n)
            break;
        const int64_t c = J->n - j < 16 ? J->n - j : 16;
        const __mmask16 mk = (__mmask16)(c == 16 ? 0xffff : (1u << c) - 1);
        const __m512i back =
            _mm512_slli_epi32(_mm512_maskz_loadu_epi32(mk, J->wsum + j), 7); /* 128 * wsum */
        for (int r = 0; r < rows; r++)
            put16(J, r0 + r, j, _mm512_sub_epi32(acc[r][b], back));
    }
}

/* Outputs of blocks [nb0, nb1) of 16, every row. */
VNNI static void vnni_part(const struct qjob *J, int64_t nb0, int64_t nb1) {
    for (int64_t nb = nb0; nb < nb1; nb += 4) {
        const int nbs = nb1 - nb < 4 ? (int)(nb1 - nb) : 4;
        for (int64_t r = 0; r < J->m;) {
            const int rows = J->m - r < 6 ? (int)(J->m - r) : 6;
            switch (rows) {
            case 1: vnni_tile(J, 1, r, rows, nb, nbs); break;
            case 2: vnni_tile(J, 2, r, rows, nb, nbs); break;
            case 3: vnni_tile(J, 3, r, rows, nb, nbs); break;
            case 4: vnni_tile(J, 4, r, rows, nb, nbs); break;
            case 5: vnni_tile(J, 5, r, rows, nb, nbs); break;
            default: vnni_tile(J, 6, r, rows, nb, nbs); break;
            }
            r += rows;
        }
    }
}

/* ---- AMX ---- */

#define AMX __attribute__((target("amx-tile,amx-int8,avx512f,avx512bw,avx512vl,avx512vnni")))

struct tilecfg {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
};

/* tiles: 0, 1 sums of rows 0-15 x outputs 0-15, 16-31; 2, 3 the same for
 * rows 16-31; 4, 5 the activations of rows 0-15, 16-31; 6, 7 the weights
 * of outputs 0-15, 16-31 (16 groups of 4 inputs). */
AMX static void amx_config(int ra, int rb) {
    struct tilecfg c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    const int rows[8] = {ra, ra, rb, rb, ra, rb, 16, 16};
    for (int t = 0; t < 8; t++)
        if (rows[t] > 0) {
            c.rows[t] = (uint8_t)rows[t];
            c.colsb[t] = 64;
        }
    _tile_loadconfig(&c);
}

/* Outputs of pairs [p0, p1) of 16-output blocks, every row. */
AMX static void amx_part(const struct qjob *J, int64_t p0, int64_t p1) {
    const int64_t kp = J->kp, kbn = kp / 64, blk = kp * 16; /* bytes of one 16-output block */
    int32_t buf[32 * 32] __attribute__((aligned(64)));
    /* more than one pass of rows: take the outputs in chunks whose weights
     * stay in the core's cache (256 KB) from one pass to the next */
    int64_t chunk = J->m > 32 ? ((int64_t)1 << 18) / (2 * blk) : p1 - p0;
    if (chunk < 1)
        chunk = 1;
    int cfg = -1;
    for (int64_t c0 = p0; c0 < p1; c0 += chunk) {
        const int64_t c1 = p1 - c0 < chunk ? p1 : c0 + chunk;
        for (int64_t r0 = 0; r0 < J->m; r0 += 32) {
            const int rows = J->m - r0 < 32 ? (int)(J->m - r0) : 32;
            const int ra = rows < 16 ? rows : 16, rb = rows - ra;
            if (rows != cfg) {
                amx_config(ra, rb);
                cfg = rows;
            }
            const int8_t *a0 = J->x + r0 * kp, *a1 = a0 + 16 * kp;
            for (int64_t p = c0; p < c1; p++) {
                const int8_t *b0 = J->wp + 2 * p * blk, *b1 = b0 + blk;
                _tile_zero(0);
                _tile_zero(1);
                if (rb) {
                    _tile_zero(2);
                    _tile_zero(3);
                    for (int64_t kb = 0; kb < kbn; kb++) {
                        _tile_loadd(6, b0 + kb * 1024, 64);
                        _tile_loadd(7, b1 + kb * 1024, 64);
                        _tile_loadd(4, a0 + kb * 64, kp);
                        _tile_loadd(5, a1 + kb * 64, kp);
                        _tile_dpbssd(0, 4, 6);
                        _tile_dpbssd(1, 4, 7);
                        _tile_dpbssd(2, 5, 6);
                        _tile_dpbssd(3, 5, 7);
                    }
                    _tile_stored(2, buf + 16 * 32, 128);
                    _tile_stored(3, buf + 16 * 32 + 16, 128);
                } else {
                    for (int64_t kb = 0; kb < kbn; kb++) {
                        _tile_loadd(6, b0 + kb * 1024, 64);
                        _tile_loadd(7, b1 + kb * 1024, 64);
                        _tile_loadd(4, a0 + kb * 64, kp);
                        _tile_dpbssd(0, 4, 6);
                        _tile_dpbssd(1, 4, 7);
                    }
                }
                _tile_stored(0, buf, 128);
                _tile_stored(1, buf + 16, 128);
                const int64_t j = p * 32;
                for (int r = 0; r < rows; r++) {
                    put16(J, r0 + r, j, _mm512_load_si512(buf + r * 32));
                    if (j + 16 < J->n)
                        put16(J, r0 + r, j + 16, _mm512_load_si512(buf + r * 32 + 16));
                }
            }
        }
    }
    _tile_release();
}

/* CPUID has AMX-TILE and AMX-INT8, the OS saves the tile state, and Linux
 * lets this process use it (asked once; the grant is process-wide). */
static int amx_usable(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !((d >> 24) & 1) || !((d >> 25) & 1))
        return 0;
    if (!__get_cpuid_count(1, 0, &a, &b, &c, &d) || !(c & (1u << 27))) /* OSXSAVE */
        return 0;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if (((lo >> 17) & 3) != 3) /* XTILECFG, XTILEDATA */
        return 0;
    /* ARCH_REQ_XCOMP_PERM (0x1023) for XFEATURE_XTILEDATA (18) */
    return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
}

#endif /* MMT_QP_X86 */

int mmt_qpack_path(void) {
    static int path; /* 0: not chosen yet; else the path + 1 */
    int p = __atomic_load_n(&path, __ATOMIC_ACQUIRE);
    if (p)
        return p - 1;
    p = MMT_QPACK_NONE;
#ifdef MMT_QP_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl"))
        p = MMT_QPACK_VNNI;
    const char *force = getenv("PYMODELMGR_CPU_INT8_KERNEL");
    if (force && (strcmp(force, "avx2") == 0 || strcmp(force, "scalar") == 0))
        p = MMT_QPACK_NONE;
    else if (p == MMT_QPACK_VNNI && !(force && strcmp(force, "vnni") == 0) && amx_usable())
        p = MMT_QPACK_AMX;
#endif
    __atomic_store_n(&path, p + 1, __ATOMIC_RELEASE);
    return p;
}

/* A piece: pairs [p0, p1) of 16-output blocks. */
static void qpiece(void *arg, int64_t p0, int64_t p1, int slot) {
    (void)slot;
    const struct qjob *J = (const struct qjob *)arg;
#ifdef MMT_QP_X86
    if (J->amx) {
        amx_part(J, p0, p1);
        return;
    }
    const int64_t nbn = (J->n + 15) / 16;
    vnni_part(J, 2 * p0, 2 * p1 < nbn ? 2 * p1 : nbn);
#else
    (void)J;
    (void)p0;
    (void)p1;
#endif
}

void mmt_qpack_linear_mt(const int8_t *x, int64_t m, int64_t k, const int8_t *wp,
                         const int32_t *wsum, int64_t n, const float *sx, const float *ws,
                         const float *bias, float *y, int64_t grain) {
    if (m <= 0 || n <= 0)
        return;
    const int path = mmt_qpack_path();
    struct qjob J = {x, wp, wsum, sx, ws, bias, y, m, k, n, mmt_qpack_kpad(k),
                     path == MMT_QPACK_AMX && m >= MMT_QPACK_AMX_ROWS};
    const int64_t pairs = mmt_qpack_npad(n) / 32;
    int64_t nt = mmt_pool_width();
    if (grain < 32)
        grain = 32;
    if (nt > n / grain)
        nt = n / grain;
    if (nt <= 1) {
        qpiece(&J, 0, pairs, 0);
        return;
    }
    /* about 8 pieces a thread, each at least a quarter of the grain (as mmt_skinny.c) */
    int64_t per = pairs / (8 * nt), min_per = (grain / 4 + 31) / 32;
    if (per < min_per)
        per = min_per;
    if (per < 1)
        per = 1;
    mmt_pool_run(pairs, per, (int)nt, qpiece, &J);
}

int mmt_qpack_linear_path(int path, const int8_t *x, int64_t m, int64_t k, const int8_t *wp,
                          const int32_t *wsum, int64_t n, const float *sx, const float *ws,
                          const float *bias, float *y) {
    const int have = mmt_qpack_path();
    if ((path != MMT_QPACK_VNNI && path != MMT_QPACK_AMX) || have < path)
        return -1;
    if (m <= 0 || n <= 0)
        return 0;
    struct qjob J = {x, wp, wsum, sx, ws, bias, y, m, k, n, mmt_qpack_kpad(k),
                     path == MMT_QPACK_AMX};
    qpiece(&J, 0, mmt_qpack_npad(n) / 32, 0);
    return 0;
}
