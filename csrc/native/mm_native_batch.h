/* mm_native_batch.h: micro-batches of token rows for the native encoder
 * forwards (embeddings in mm_native.c, rerank / classification heads in
 * mm_native_heads.c).
 *
 * Both backends tokenize their tasks into rows (a row: `len` tokens at `off`
 * in the caller's ids / type-id arrays), sort the rows by length, cut them
 * into micro-batches under a row and a padded-token budget, pad each one into
 * the shim's mm_torch_batch layout and run them through mm_torch_embed_many
 * (all at once, concurrently on a multi-threaded CPU worker) or mm_torch_embed
 * (one by one).  This is that shared part; what a row means and what is done
 * with its output vector stays with each backend.
 */
#ifndef MM_NATIVE_BATCH_H
#define MM_NATIVE_BATCH_H

#include <stddef.h>
#include <stdint.h>

#include "../torch/mm_torch.h"

/* Where a row's token span lies inside the caller's row struct: rows are
 * `stride` bytes apart, the span's size_t offset and length at off_at and
 * len_at (offsetof) within each. */
typedef struct mm__nrows {
    const void *rows;
    size_t n, stride, off_at, len_at;
} mm__nrows;

typedef struct mm__nbatches {
    size_t n;            /* micro-batches */
    size_t *first;       /* n + 1 entries: batch k holds rows first[k] .. first[k + 1] - 1 */
    mm_torch_batch *mbs; /* n batches: ids, mask, type_ids, batch, seq_len and out / out_dim
                          * (rows' vectors, out_dim floats each, at out + row * out_dim) set;
                          * prompt_lens NULL (the caller sets it) */
    int64_t *ids, *mask, *types; /* the padded tokens behind mbs */
} mm__nbatches;

/* Cuts the length-sorted rows into micro-batches of at most max_b rows and
 * micro_tokens padded tokens (a longer row alone); with split > 1, into at
 * least split of them when there are the rows (one per thread of
 * embed_many).  Pads each with pad_id (mask 0, type 0); type_ids are left
 * NULL unless with_types.  out: nrows.n * out_dim floats.  0, or MM_ENOMEM
 * with b emptied. */
int mm__nbatches_build(mm__nbatches *b, const mm__nrows *rows, const int64_t *ids,
                       const int64_t *types, int64_t pad_id, int with_types, size_t max_b,
                       size_t micro_tokens, size_t split, float *out, size_t out_dim);

/* Runs the micro-batches: all at once through embed_many when many (and the
 * shim has it), else one by one through embed; after each call, done(ctx,
 * r0, r1, rc, err) for the rows r0 .. r1 - 1 it covered (rc 0: their
 * vectors are in out; else a code and a message). */
void mm__nbatches_run(const mm__nbatches *b, mm_torch_embedder_t *h, mm_torch_embed_fn embed,
                      mm_torch_embed_many_fn embed_many, int many,
                      void (*done)(void *ctx, size_t r0, size_t r1, int rc, const char *err),
                      void *ctx);

void mm__nbatches_free(mm__nbatches *b);

/* Room for `need` elements of `elem` bytes in the array p of *cap (doubling
 * from 256): p itself, a moved copy (*cap updated), or NULL when out of
 * memory (p untouched). */
void *mm__ngrow(void *p, size_t *cap, size_t need, size_t elem);

#endif
