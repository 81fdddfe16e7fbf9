/* mmt_topk.h: the K best next-token candidates of one beam-search request,
 * in float32 on the CPU.  See mmt_topk.c. */
#ifndef MMT_TOPK_H
#define MMT_TOPK_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Candidates (j, v) for beams j < beams and tokens v < vocab, valued
 * lp[j * ld + v] + add[j] (add NULL: + 0): writes the k best into val and
 * idx (idx = j * vocab + v), value descending, equal values by idx
 * ascending, and returns how many it wrote (k, or fewer candidates).
 * Exported for the tests. */
__attribute__((visibility("default"))) int64_t
mmt_beam_topk(const float *lp, int64_t ld, int64_t beams, int64_t vocab, const float *add,
              int64_t k, float *val, int64_t *idx);

#ifdef __cplusplus
}
#endif

#endif
