/* mmt_vec.h: the 16-float vector type the shim's C kernels compute with
 * (GCC's vector extensions: AVX-512 registers in an x86-64-v4 clone, pairs
 * of AVX2 or four SSE registers elsewhere), an unaligned load, and the sum
 * of the lanes in one fixed order. */
#ifndef MMT_VEC_H
#define MMT_VEC_H

#include <string.h>

typedef float mmt_v16 __attribute__((vector_size(64)));
typedef int mmt_v16i __attribute__((vector_size(64)));

#define MMT_INLINE static inline __attribute__((always_inline))

MMT_INLINE mmt_v16 mmt_ld16(const float *p) {
    mmt_v16 v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* A lane permutation of a (GCC and clang spell it differently). */
#if defined(__clang__)
#define MMT_SHUF16(a, ...) __builtin_shufflevector(a, a, __VA_ARGS__)
#else
#define MMT_SHUF16(a, ...) __builtin_shuffle(a, (mmt_v16i){__VA_ARGS__})
#endif

/* s[i] += s[i + w] for w = 8, 4, 2, 1, as vector adds of shifted halves;
 * returns s[0]. */
MMT_INLINE float mmt_hsum16(mmt_v16 a) {
    a += MMT_SHUF16(a, 8, 9, 10, 11, 12, 13, 14, 15, 8, 9, 10, 11, 12, 13, 14, 15);
    a += MMT_SHUF16(a, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7, 4, 5, 6, 7);
    a += MMT_SHUF16(a, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3, 2, 3);
    a += MMT_SHUF16(a, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1);
    return a[0];
}

/* A lane permutation of the 32 lanes of a then b. */
#if defined(__clang__)
#define MMT_SHUF32(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define MMT_SHUF32(a, b, ...) __builtin_shuffle(a, b, (mmt_v16i){__VA_ARGS__})
#endif

/* Sixteen (or eight) mmt_hsum16 at once, bit for bit: lane i of the result
 * is mmt_hsum16(a[i]).  Each step pairs two vectors and adds, in one vector
 * add, the halves that mmt_hsum16 adds (lanes w apart, w = 8, 4, 2, 1) for
 * both; 15 adds and 30 two-vector permutes replace 16 x 4 adds and
 * permutes.  The pairs are taken in bit-reversed order so that the sums
 * come out in natural order. */
MMT_INLINE mmt_v16 mmt__fold8(mmt_v16 x, mmt_v16 y) {
    return MMT_SHUF32(x, y, 0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23) +
           MMT_SHUF32(x, y, 8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31);
}
MMT_INLINE mmt_v16 mmt__fold4(mmt_v16 x, mmt_v16 y) {
    return MMT_SHUF32(x, y, 0, 1, 2, 3, 16, 17, 18, 19, 8, 9, 10, 11, 24, 25, 26, 27) +
           MMT_SHUF32(x, y, 4, 5, 6, 7, 20, 21, 22, 23, 12, 13, 14, 15, 28, 29, 30, 31);
}
MMT_INLINE mmt_v16 mmt__fold2(mmt_v16 x, mmt_v16 y) {
    return MMT_SHUF32(x, y, 0, 1, 16, 17, 4, 5, 20, 21, 8, 9, 24, 25, 12, 13, 28, 29) +
           MMT_SHUF32(x, y, 2, 3, 18, 19, 6, 7, 22, 23, 10, 11, 26, 27, 14, 15, 30, 31);
}
MMT_INLINE mmt_v16 mmt__fold1(mmt_v16 x, mmt_v16 y) {
    return MMT_SHUF32(x, y, 0, 16, 2, 18, 4, 20, 6, 22, 8, 24, 10, 26, 12, 28, 14, 30) +
           MMT_SHUF32(x, y, 1, 17, 3, 19, 5, 21, 7, 23, 9, 25, 11, 27, 13, 29, 15, 31);
}

MMT_INLINE mmt_v16 mmt_hsum16x16(const mmt_v16 *a) {
    mmt_v16 u0 = mmt__fold8(a[0], a[8]), u1 = mmt__fold8(a[4], a[12]);
    mmt_v16 u2 = mmt__fold8(a[2], a[10]), u3 = mmt__fold8(a[6], a[14]);
    mmt_v16 u4 = mmt__fold8(a[1], a[9]), u5 = mmt__fold8(a[5], a[13]);
    mmt_v16 u6 = mmt__fold8(a[3], a[11]), u7 = mmt__fold8(a[7], a[15]);
    mmt_v16 v0 = mmt__fold4(u0, u1), v1 = mmt__fold4(u2, u3);
    mmt_v16 v2 = mmt__fold4(u4, u5), v3 = mmt__fold4(u6, u7);
    return mmt__fold1(mmt__fold2(v0, v1), mmt__fold2(v2, v3));
}

/* Lanes 0-7 of the result are mmt_hsum16(a[0..7]); lanes 8-15 are not
 * specified. */
MMT_INLINE mmt_v16 mmt_hsum16x8(const mmt_v16 *a) {
    mmt_v16 u0 = mmt__fold8(a[0], a[4]), u1 = mmt__fold8(a[2], a[6]);
    mmt_v16 u2 = mmt__fold8(a[1], a[5]), u3 = mmt__fold8(a[3], a[7]);
    mmt_v16 w = mmt__fold2(mmt__fold4(u0, u1), mmt__fold4(u2, u3));
    return MMT_SHUF16(w, 0, 2, 4, 6, 8, 10, 12, 14, 0, 2, 4, 6, 8, 10, 12, 14) +
           MMT_SHUF16(w, 1, 3, 5, 7, 9, 11, 13, 15, 1, 3, 5, 7, 9, 11, 13, 15);
}

/* The x86-64 levels a kernel is compiled for; the loader picks one. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MMT_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MMT_CLONES
#endif

#endif
