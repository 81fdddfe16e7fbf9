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
 */
#include <stdio.h>
#include <string.h>

#include "mm_alloc.h"
#include "mm_engine_internal.h"
#include "mm_err.h"

#define SEP '\x1f'

/* name SEP revision SEP model_options SEP params SEP */
static char *make_prefix(const char *name, const char *revision, const char *model_options,
                         const char *params, size_t *len) {
    if (!model_options)
        model_options = "{}";
    size_t n = strlen(name) + strlen(revision) + strlen(model_options) + strlen(params) + 4;
    char *p = mm_malloc(n + 1);
    if (!p)
        return NULL;
    snprintf(p, n + 1, "%s%c%s%c%s%c%s%c", name, SEP, revision, SEP, model_options, SEP, params,
             SEP);
    *len = n;
    return p;
}

static char *rev_key(const char *name, const char *requested, size_t *len) {
    size_t n = strlen(name) + strlen(requested) + 1;
    char *k = mm_malloc(n + 1);
    if (!k)
        return NULL;
    snprintf(k, n + 1, "%s%c%s", name, SEP, requested);
    *len = n;
    return k;
}

int mm__cache_known_revision(mm_engine_t *e, const char *name, const char *requested,
                             char out[64]) {
    size_t klen;
    char *k = rev_key(name, requested, &klen);
    if (!k)
        return 0;
    mm_known_rev *r = NULL;
    HASH_FIND(hh, e->revisions, k, klen, r);
    mm_free(k);
    if (!r)
        return 0;
    memcpy(out, r->revision, 64);
    return 1;
}

void mm__cache_note_revision(mm_engine_t *e, const char *name, const char *requested,
                             const char *loaded) {
    if (!e->cache)
        return;
    size_t klen;
    char *k = rev_key(name, requested, &klen);
    if (!k)
        return;
    mm_known_rev *r = NULL;
    HASH_FIND(hh, e->revisions, k, klen, r);
    if (r && strcmp(r->revision, loaded) != 0) {
        size_t plen = strlen(name) + strlen(r->revision) + 2;
        char *old = mm_malloc(plen + 1);
        if (old) {
            snprintf(old, plen + 1, "%s%c%s%c", name, SEP, r->revision, SEP);
            mm_embcache_purge_prefix(e->cache, old, plen);
            mm_free(old);
        }
    }
    if (!r) {
        r = mm_calloc(1, sizeof *r + klen + 1);
        if (!r) {
            mm_free(k);
            return;
        }
        memcpy(r->key, k, klen + 1);
        mm_hash_oom = 0;
        HASH_ADD(hh, e->revisions, key[0], klen, r);
        if (mm_hash_oom) {
            mm_free(r);
            mm_free(k);
            return;
        }
    }
    snprintf(r->revision, sizeof r->revision, "%s", loaded);
    mm_free(k);
}

void mm__cache_free_revisions(mm_engine_t *e) {
    mm_known_rev *r, *tmp;
    HASH_ITER(hh, e->revisions, r, tmp) {
        HASH_DEL(e->revisions, r);
        mm_free(r);
    }
}

int mm__cache_lookup(mm_engine_t *e, mm_task_t *t, const char *revision,
                     const char *model_options) {
    size_t plen;
    char *prefix = make_prefix(t->model_name, revision, model_options, t->params_json, &plen);
    if (!prefix)
        return 0;
    size_t n = t->n_items, hits = 0, dim = 0;
    uint64_t cached_tokens = 0;
    float *cached = NULL;
    unsigned char *hit = mm_calloc(n, 1);
    float *tmp = mm_malloc(65536 * sizeof(float));
    if (!hit || !tmp)
        goto out;
    for (size_t i = 0; i < n; i++) {
        size_t d = 0;
        uint32_t ntok = 0;
        if (!mm_embcache_get_tok(e->cache, prefix, plen, t->blob + t->item_off[i],
                                 t->item_len[i], tmp, 65536, &d, &ntok))
            continue;
        if (!cached) {
            dim = d;
            cached = mm_calloc(n * dim, sizeof(float));
            if (!cached)
                goto out;
        }
        if (d != dim)
            continue; /* cannot happen for one prefix; treat as a miss */
        memcpy(cached + i * dim, tmp, dim * sizeof(float));
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
    mm_free(tmp);
    mm_free(prefix);
    return n > 0 && hits == n;
}

void mm__cache_after_run(mm_engine_t *e, mm_task_t *t, const char *revision,
                         const char *model_options) {
    if (!t->cache_insert || t->err_code || t->rkind != MM_RESULT_EMBEDDINGS || !t->vecs)
        return;
    size_t dim = t->dim;
    size_t plen;
    char *prefix = make_prefix(t->model_name, revision, model_options, t->params_json, &plen);
    if (prefix) {
        for (size_t i = 0; i < t->n_items; i++)
            mm_embcache_put_tok(e->cache, prefix, plen, t->blob + t->item_off[i],
                                t->item_len[i], t->vecs + i * dim, dim,
                                t->item_tokens ? t->item_tokens[i] : 0);
        mm_free(prefix);
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
