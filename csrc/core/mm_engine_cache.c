/* mm_engine_cache.c: how the engine uses the embedding cache.
 *
 * At submit an embedding task looks its texts up under the key (model name,
 * revision the name last loaded at, load options JSON, kwargs JSON, text);
 * the load options hold the dtype, so an int8 and a float32 vector of one
 * text never share an entry.  All hit: the task
 * completes at once and never touches a queue (or loads a model).  Some
 * hit: the task keeps only the missing texts for the backend, and the
 * worker merges the cached vectors back into the caller's order after
 * run(), storing the new ones.  A model that loads a new revision purges
 * its name's old vectors, so a cached vector is always the one the loaded
 * weights would compute, bit for bit.
 *
 * The lookup runs on every submit of a cacheable embedding task, so a miss
 * costs no allocation: keys are built in stack buffers (the heap only for
 * keys longer than KEY_STACK) and the task's rows are allocated at its first
 * hit, which copies straight into them (mm_embcache_get_tok says how long a
 * vector is when the room offered is too small).
 */
#include <stdio.h>
#include <string.h>

#include "mm_alloc.h"
#include "mm_engine_internal.h"
#include "mm_err.h"

#define SEP '\x1f'
/* Keys up to this long are built on the stack (longer ones on the heap, sized
 * from their parts): a submit that looks its texts up allocates nothing
 * unless one of them hits. */
#define KEY_STACK 256
/* Vectors of up to this many floats: the first hit of a lookup lands on the
 * stack until the task's rows exist (then hits copy straight into them). */
#define FIRST_ROW 1024

/* parts[0] SEP parts[1] ... SEP parts[n-1] (SEP after the last one too when
 * trailing), no NUL: in buf when it fits in cap bytes, else in a heap block
 * sized from the parts (the caller frees a result that is not buf).  NULL on
 * out of memory. */
static char *join_key(char *buf, size_t cap, const char *const *parts, int n, int trailing,
                      size_t *len) {
    size_t lens[4], total = 0;
    for (int i = 0; i < n; i++) {
        lens[i] = strlen(parts[i]);
        total += lens[i] + (i + 1 < n || trailing);
    }
    char *k = total <= cap ? buf : mm_malloc(total);
    if (!k)
        return NULL;
    char *w = k;
    for (int i = 0; i < n; i++) {
        memcpy(w, parts[i], lens[i]);
        w += lens[i];
        if (i + 1 < n || trailing)
            *w++ = SEP;
    }
    *len = total;
    return k;
}

static void free_key(char *k, const char *buf) {
    if (k != buf)
        mm_free(k);
}

/* name SEP revision SEP model_options SEP params SEP */
static char *make_prefix(char *buf, size_t cap, const char *name, const char *revision,
                         const char *model_options, const char *params, size_t *len) {
    const char *parts[4] = {name, revision, model_options ? model_options : "{}", params};
    return join_key(buf, cap, parts, 4, 1, len);
}

/* name SEP requested */
static char *rev_key(char *buf, size_t cap, const char *name, const char *requested,
                     size_t *len) {
    const char *parts[2] = {name, requested};
    return join_key(buf, cap, parts, 2, 0, len);
}

int mm__cache_known_revision(mm_engine_t *e, const char *name, const char *requested,
                             char out[64]) {
    char buf[KEY_STACK];
    size_t klen;
    char *k = rev_key(buf, sizeof buf, name, requested, &klen);
    if (!k)
        return 0;
    mm_known_rev *r = NULL;
    HASH_FIND(hh, e->revisions, k, klen, r);
    free_key(k, buf);
    if (!r)
        return 0;
    memcpy(out, r->revision, 64);
    return 1;
}

void mm__cache_note_revision(mm_engine_t *e, const char *name, const char *requested,
                             const char *loaded) {
    if (!e->cache)
        return;
    char buf[KEY_STACK];
    size_t klen;
    char *k = rev_key(buf, sizeof buf, name, requested, &klen);
    if (!k)
        return;
    mm_known_rev *r = NULL;
    HASH_FIND(hh, e->revisions, k, klen, r);
    if (r && strcmp(r->revision, loaded) != 0) {
        /* name SEP old revision SEP: every vector of the old weights */
        char obuf[KEY_STACK];
        const char *parts[2] = {name, r->revision};
        size_t plen;
        char *old = join_key(obuf, sizeof obuf, parts, 2, 1, &plen);
        if (old) {
            mm_embcache_purge_prefix(e->cache, old, plen);
            free_key(old, obuf);
        }
    }
    if (!r) {
        r = mm_calloc(1, sizeof *r + klen + 1); /* key[klen] stays NUL */
        if (!r) {
            free_key(k, buf);
            return;
        }
        memcpy(r->key, k, klen);
        mm_hash_oom = 0;
        HASH_ADD(hh, e->revisions, key[0], klen, r);
        if (mm_hash_oom) {
            mm_free(r);
            free_key(k, buf);
            return;
        }
    }
    snprintf(r->revision, sizeof r->revision, "%s", loaded);
    free_key(k, buf);
}

void mm__cache_free_revisions(mm_engine_t *e) {
    mm_known_rev *r, *tmp;
    HASH_ITER(hh, e->revisions, r, tmp) {
        HASH_DEL(e->revisions, r);
        mm_free(r);
    }
}

/* The task's rows (n x dim floats) and hit flags, allocated together at the
 * first hit so that a lookup that misses everything allocates nothing.  0 on
 * out of memory (the caller then computes every text). */
static int alloc_rows(size_t n, size_t dim, float **rows, unsigned char **hit) {
    *rows = mm_calloc(n * dim, sizeof(float));
    *hit = mm_calloc(n, 1);
    if (*rows && *hit)
        return 1;
    mm_free(*rows);
    mm_free(*hit);
    *rows = NULL;
    *hit = NULL;
    return 0;
}

int mm__cache_lookup(mm_engine_t *e, mm_task_t *t, const char *revision,
                     const char *model_options) {
    char buf[KEY_STACK];
    size_t plen;
    char *prefix =
        make_prefix(buf, sizeof buf, t->model_name, revision, model_options, t->params_json, &plen);
    if (!prefix)
        return 0;
    size_t n = t->n_items, hits = 0, dim = 0;
    uint64_t cached_tokens = 0;
    float *cached = NULL;       /* n rows of dim floats, from the first hit */
    unsigned char *hit = NULL;  /* which rows hit, from the first hit */
    float first[FIRST_ROW];     /* the first hit, before the rows exist */
    for (size_t i = 0; i < n; i++) {
        const char *text = t->blob + t->item_off[i];
        size_t d = 0;
        uint32_t ntok = 0;
        float *row = cached ? cached + i * dim : first;
        int rc = mm_embcache_get_tok(e->cache, prefix, plen, text, t->item_len[i], row,
                                     cached ? dim : FIRST_ROW, &d, &ntok);
        if (rc == MM_ENOBUFS && !cached) { /* a first vector longer than FIRST_ROW */
            if (!alloc_rows(n, d, &cached, &hit))
                goto out;
            dim = d;
            rc = mm_embcache_get_tok(e->cache, prefix, plen, text, t->item_len[i],
                                     cached + i * dim, dim, &d, &ntok);
        }
        if (rc != 1)
            continue; /* a miss (or, with rows, a vector of another length) */
        if (!cached) {
            if (!alloc_rows(n, d, &cached, &hit))
                goto out;
            dim = d;
            memcpy(cached + i * dim, first, dim * sizeof(float));
        }
        if (d != dim)
            continue; /* cannot happen for one prefix; treat as a miss */
        hit[i] = 1;
        hits++;
        cached_tokens += ntok;
    }
    if (hits == n) {
        t->vecs = cached;
        t->dim = dim;
        t->rkind = MM_RESULT_EMBEDDINGS;
        t->cache_hits = hits;
        t->tokens_cached = cached_tokens;
        cached = NULL;
    } else if (hits > 0) {
        size_t left = n - hits, j = 0;
        size_t *orig = mm_malloc(left * sizeof *orig);
        size_t *off = mm_malloc(left * sizeof *off);
        size_t *len = mm_malloc(left * sizeof *len);
        if (!orig || !off || !len) {
            mm_free(orig);
            mm_free(off);
            mm_free(len);
            hits = 0; /* compute everything instead */
            goto out;
        }
        t->total_bytes = 0;
        for (size_t i = 0; i < n; i++) {
            if (hit[i])
                continue;
            orig[j] = i;
            off[j] = t->item_off[i];
            len[j] = t->item_len[i];
            t->total_bytes += len[j];
            j++;
        }
        mm_free(t->item_off);
        mm_free(t->item_len);
        t->item_off = off;
        t->item_len = len;
        t->n_items = left;
        t->orig_n = n;
        t->orig_index = orig;
        t->cached_vecs = cached;
        t->cached_dim = dim;
        t->cache_hits = hits;
        t->tokens_cached = cached_tokens;
        cached = NULL;
    }
out:
    mm_free(cached);
    mm_free(hit);
    free_key(prefix, buf);
    return n > 0 && hits == n;
}

void mm__cache_after_run(mm_engine_t *e, mm_task_t *t, const char *revision,
                         const char *model_options) {
    if (!t->cache_insert || t->err_code || t->rkind != MM_RESULT_EMBEDDINGS || !t->vecs)
        return;
    size_t dim = t->dim;
    char buf[KEY_STACK];
    size_t plen;
    char *prefix =
        make_prefix(buf, sizeof buf, t->model_name, revision, model_options, t->params_json, &plen);
    if (prefix) {
        for (size_t i = 0; i < t->n_items; i++)
            mm_embcache_put_tok(e->cache, prefix, plen, t->blob + t->item_off[i],
                                t->item_len[i], t->vecs + i * dim, dim,
                                t->item_tokens ? t->item_tokens[i] : 0);
        free_key(prefix, buf);
    }
    if (!t->orig_n)
        return;
    if (t->cached_dim != dim) {
        mm_task_fail(t, MM_EINTERNAL,
                     "cached vectors have %zu dimensions but the model produced %zu",
                     t->cached_dim, dim);
        return;
    }
    float *full = mm_malloc(t->orig_n * dim * sizeof(float));
    if (!full) {
        mm_task_fail(t, MM_ENOMEM, "out of memory merging cached embeddings");
        return;
    }
    memcpy(full, t->cached_vecs, t->orig_n * dim * sizeof(float));
    for (size_t j = 0; j < t->n_items; j++)
        memcpy(full + t->orig_index[j] * dim, t->vecs + j * dim, dim * sizeof(float));
    mm_free(t->vecs);
    t->vecs = full;
}
