/* mm_native_batch.c: micro-batch planning, padding and the forward calls
 * shared by the native embedding backend (mm_native.c) and the native rerank
 * / classification heads (mm_native_heads.c); see mm_native_batch.h.  It was
 * written twice, once in each, before this file.
 */
#include "mm_native_batch.h"

#include <string.h>

#include "mm_alloc.h"
#include "mm_err.h"

static size_t span(const mm__nrows *r, size_t i, size_t at) {
    size_t v;
    memcpy(&v, (const char *)r->rows + i * r->stride + at, sizeof v);
    return v;
}

int mm__nbatches_build(mm__nbatches *b, const mm__nrows *rows, const int64_t *ids,
                       const int64_t *types, int64_t pad_id, int with_types, size_t max_b,
                       size_t micro_tokens, size_t split, float *out, size_t out_dim) {
    memset(b, 0, sizeof *b);
    const size_t nrows = rows->n;
    if (split > 1 && nrows > 1) {
        size_t per = (nrows + split - 1) / split;
        if (per < max_b)
            max_b = per;
    }
    /* first[k]: the first row of micro-batch k (at most one per row). */
    b->first = mm_malloc((nrows + 1) * sizeof *b->first);
    if (!b->first)
        return MM_ENOMEM;
    size_t nmb = 0, padded = 0;
    for (size_t r0 = 0; r0 < nrows; nmb++) {
        size_t r1 = r0 + 1;
        while (r1 < nrows && r1 - r0 < max_b &&
               (r1 - r0 + 1) * span(rows, r1, rows->len_at) <= micro_tokens)
            r1++;
        padded += (r1 - r0) * span(rows, r1 - 1, rows->len_at);
        b->first[nmb] = r0;
        r0 = r1;
    }
    b->first[nmb] = nrows;
    b->n = nmb;
    if (!nmb)
        return 0;
    b->ids = mm_malloc(padded * sizeof *b->ids);
    b->mask = mm_malloc(padded * sizeof *b->mask);
    b->types = mm_malloc(padded * sizeof *b->types);
    b->mbs = mm_calloc(nmb, sizeof *b->mbs);
    if (!b->ids || !b->mask || !b->types || !b->mbs) {
        mm__nbatches_free(b);
        return MM_ENOMEM;
    }
    for (size_t k = 0, tok_off = 0; k < nmb; k++) {
        size_t r0 = b->first[k], B = b->first[k + 1] - r0;
        size_t L = span(rows, r0 + B - 1, rows->len_at);
        int64_t *ti = b->ids + tok_off, *tm = b->mask + tok_off, *tt = b->types + tok_off;
        for (size_t i = 0; i < B; i++) {
            size_t off = span(rows, r0 + i, rows->off_at), len = span(rows, r0 + i, rows->len_at);
            for (size_t j = 0; j < L; j++) {
                int real = j < len;
                ti[i * L + j] = real ? ids[off + j] : pad_id;
                tt[i * L + j] = real ? types[off + j] : 0;
                tm[i * L + j] = real;
            }
        }
        b->mbs[k] = (mm_torch_batch){ti, tm, with_types ? tt : NULL, NULL, B, L,
                                     out + r0 * out_dim, out_dim};
        tok_off += B * L;
    }
    return 0;
}

void mm__nbatches_run(const mm__nbatches *b, mm_torch_embedder_t *h, mm_torch_embed_fn embed,
                      mm_torch_embed_many_fn embed_many, int many,
                      void (*done)(void *ctx, size_t r0, size_t r1, int rc, const char *err),
                      void *ctx) {
    char err[512];
    many = many && embed_many;
    for (size_t k0 = 0; k0 < b->n;) {
        size_t k1 = many ? b->n : k0 + 1;
        const mm_torch_batch *mb = &b->mbs[k0];
        err[0] = '\0';
        int rc = many ? embed_many(h, mb, k1 - k0, 0, err, sizeof err)
                      : embed(h, mb->ids, mb->mask, mb->type_ids, mb->batch, mb->seq_len,
                              mb->prompt_lens, 0, mb->out, mb->out_dim, err, sizeof err);
        done(ctx, b->first[k0], b->first[k1], rc, err);
        k0 = k1;
    }
}

void mm__nbatches_free(mm__nbatches *b) {
    mm_free(b->first);
    mm_free(b->mbs);
    mm_free(b->ids);
    mm_free(b->mask);
    mm_free(b->types);
    memset(b, 0, sizeof *b);
}

void *mm__ngrow(void *p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap)
        return p;
    size_t c = *cap ? *cap * 2 : 256;
    while (c < need)
        c *= 2;
    void *np = mm_realloc(p, c * elem);
    if (np)
        *cap = c;
    return np;
}
