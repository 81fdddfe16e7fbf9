/* mmt_q8.c: the float32 <-> int8 passes around an int8 linear layer
 * (mmt_int8.h): per-row dynamic quantization of the input, and the per-row
 * rescale plus bias of the product.
 *
 * At::_int_mm's caller used to do both in scalar loops (a max, a divide and
 * a branchy rounding per element); on MiniLM those loops cost about as much
 * as the int8 GEMMs themselves.  Here each is one pass over the row in
 * 16-float vectors (GCC's vector extensions, mmt_vec.h), compiled for
 * AVX-512, AVX2 and the baseline, the loader picking one at run time (no
 * compile-time assumption about the CPU).
 *
 * The arithmetic is exactly the scalar one: the row scale is max|x| / 127
 * (1 for an all-zero row), an element is x * (1 / scale) rounded half away
 * from zero and clamped to [-127, 127]; so results do not depend on which
 * clone runs, nor on the other rows. */
#include "mmt_q8.h"
#include "mmt_vec.h"

#include <math.h>

MMT_INLINE mmt_v16 vabs16(mmt_v16 v) {
    return (mmt_v16)((mmt_v16i)v & (mmt_v16i){0x7fffffff, 0x7fffffff, 0x7fffffff, 0x7fffffff,
                                               0x7fffffff, 0x7fffffff, 0x7fffffff, 0x7fffffff,
                                               0x7fffffff, 0x7fffffff, 0x7fffffff, 0x7fffffff,
                                               0x7fffffff, 0x7fffffff, 0x7fffffff, 0x7fffffff});
}

MMT_INLINE mmt_v16i vsign16(void) {
    const mmt_v16i z = {0};
    return z + (int)0x80000000;
}

MMT_INLINE mmt_v16 vmax16(mmt_v16 a, mmt_v16 b) {
    mmt_v16i gt = a > b;
    return (mmt_v16)(((mmt_v16i)a & gt) | ((mmt_v16i)b & ~gt));
}

static inline int8_t q1(float x, float inv) {
    float v = x * inv;
    v = v >= 0.f ? v + 0.5f : v - 0.5f;
    v = v > 127.f ? 127.f : v < -127.f ? -127.f : v;
    return (int8_t)(int)v;
}

MMT_CLONES
void mmt_q8_quantize_rows(const float *x, int64_t m, int64_t k, int8_t *q, float *scales) {
    const int64_t kv = k & ~(int64_t)15;
    const mmt_v16 zero = {0};
    for (int64_t r = 0; r < m; r++) {
        const float *row = x + r * k;
        int8_t *out = q + r * k;
        mmt_v16 mx = zero;
        for (int64_t j = 0; j < kv; j += 16)
            mx = vmax16(vabs16(mmt_ld16(row + j)), mx);
        float amax = 0.f;
        for (int i = 0; i < 16; i++)
            amax = mx[i] > amax ? mx[i] : amax;
        for (int64_t j = kv; j < k; j++) {
            float a = fabsf(row[j]);
            amax = a > amax ? a : amax;
        }
        const float s = amax > 0.f ? amax / 127.0f : 1.0f;
        const float inv = 1.0f / s;
        const mmt_v16 vinv = zero + inv;
        const mmt_v16i sign = {(int)0x80000000, (int)0x80000000, (int)0x80000000, (int)0x80000000,
                               (int)0x80000000, (int)0x80000000, (int)0x80000000, (int)0x80000000,
                               (int)0x80000000, (int)0x80000000, (int)0x80000000, (int)0x80000000,
                               (int)0x80000000, (int)0x80000000, (int)0x80000000, (int)0x80000000};
        const mmt_v16 half = zero + 0.5f, lim = zero + 127.f;
        for (int64_t j = 0; j < kv; j += 16) {
            mmt_v16 v = mmt_ld16(row + j) * vinv;
            /* v + copysign(0.5, v), then |.| clamped to 127 with the sign put back:
             * (v >= 0 ? v + 0.5 : v - 0.5), clamped to [-127, 127] */
            mmt_v16i sg = (mmt_v16i)v & sign;
            mmt_v16 a = vabs16(v) + half;
            mmt_v16i big = a > lim;
            a = (mmt_v16)(((mmt_v16i)lim & big) | ((mmt_v16i)a & ~big));
            mmt_v16i iv = __builtin_convertvector((mmt_v16)((mmt_v16i)a | sg), mmt_v16i);
            for (int i = 0; i < 16; i++)
                out[j + i] = (int8_t)iv[i];
        }
        for (int64_t j = kv; j < k; j++)
            out[j] = q1(row[j], inv);
        scales[r] = s;
    }
}

/* e^x for x <= 0 (erf's and tanh's): x = k ln2 + r, k = round(x / ln2), |r| <= ln2 / 2,
 * e^r by its Taylor series to r^7 (relative error under 2e-7 there), times
 * 2^k built in the exponent bits; below -87 it is 0. */
MMT_INLINE mmt_v16 vexp_neg16(mmt_v16 x) {
    const mmt_v16 zero = {0};
    mmt_v16i tiny = x < zero - 87.0f;
    x = (mmt_v16)(((mmt_v16i)(zero - 87.0f) & tiny) | ((mmt_v16i)x & ~tiny));
    mmt_v16 z = x * 1.44269504088896341f + 0.5f;
    mmt_v16i k = __builtin_convertvector(z, mmt_v16i); /* truncation: ceil for z < 0 */
    k += (mmt_v16i)(__builtin_convertvector(k, mmt_v16) > z); /* true is -1: floor(z) */
    mmt_v16 kf = __builtin_convertvector(k, mmt_v16);
    mmt_v16 r = x - kf * 0.693145751953125f - kf * 1.428606765330187e-06f;
    mmt_v16 p = zero + 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    mmt_v16i e = (k + 127) << 23;
    mmt_v16 v = p * (mmt_v16)e;
    return (mmt_v16)((mmt_v16i)v & ~tiny);
}

/* erf by Abramowitz and Stegun 7.1.26 (absolute error under 1.5e-7):
 * 1 - t (a1 + t (a2 + ... a5)) e^(-x^2), t = 1 / (1 + p |x|), sign put back. */
MMT_INLINE mmt_v16 verf16(mmt_v16 x) {
    const mmt_v16 zero = {0};
    mmt_v16i sg = (mmt_v16i)x & vsign16();
    mmt_v16 a = vabs16(x);
    mmt_v16 t = 1.0f / (1.0f + 0.3275911f * a);
    mmt_v16 poly = zero + 1.061405429f;
    poly = poly * t - 1.453152027f;
    poly = poly * t + 1.421413741f;
    poly = poly * t - 0.284496736f;
    poly = poly * t + 0.254829592f;
    mmt_v16 y = 1.0f - poly * t * vexp_neg16(-(a * a));
    return (mmt_v16)((mmt_v16i)y | sg);
}

/* tanh(u) = 1 - 2 / (e^(2u) + 1), through e^(-2|u|) (bounded), sign put back. */
MMT_INLINE mmt_v16 vtanh16(mmt_v16 u) {
    mmt_v16i sg = (mmt_v16i)u & vsign16();
    mmt_v16 e = vexp_neg16(-2.0f * vabs16(u));
    mmt_v16 y = (1.0f - e) / (1.0f + e);
    return (mmt_v16)((mmt_v16i)y | sg);
}

MMT_INLINE mmt_v16 vact16(mmt_v16 v, int act) {
    if (act == MMT_Q8_GELU)
        return 0.5f * v * (1.0f + verf16(v * 0.70710678118654752f));
    if (act == MMT_Q8_GELU_TANH)
        return 0.5f * v * (1.0f + vtanh16(0.79788456080286536f * (v + 0.044715f * v * v * v)));
    return v;
}

static inline float act1(float v, int act) {
    if (act == MMT_Q8_GELU)
        return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
    if (act == MMT_Q8_GELU_TANH)
        return 0.5f * v * (1.0f + tanhf(0.79788456080286536f * (v + 0.044715f * v * v * v)));
    return v;
}

MMT_CLONES
void mmt_q8_rescale_rows(float *y, int64_t m, int64_t n, const float *row_scale,
                         const float *bias, const float *residual, int act) {
    const int64_t nv = n & ~(int64_t)15;
    for (int64_t r = 0; r < m; r++) {
        float *o = y + r * n;
        const float *res = residual ? residual + r * n : NULL;
        const float s = row_scale[r];
        for (int64_t j = 0; j < nv; j += 16) {
            mmt_v16 v = mmt_ld16(o + j) * s;
            if (bias)
                v += mmt_ld16(bias + j);
            if (act)
                v = vact16(v, act);
            if (res)
                v += mmt_ld16(res + j);
            memcpy(o + j, &v, sizeof v);
        }
        for (int64_t j = nv; j < n; j++) {
            float v = o[j] * s + (bias ? bias[j] : 0.f);
            v = act ? act1(v, act) : v;
            o[j] = res ? v + res[j] : v;
        }
    }
}
