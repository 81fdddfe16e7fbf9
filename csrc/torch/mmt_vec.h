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

/* The x86-64 levels a kernel is compiled for; the loader picks one. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MMT_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define MMT_CLONES
#endif

#endif
