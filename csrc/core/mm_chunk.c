/* mm_chunk.c: stopping work that already started, and running large
 * embedding tasks in chunks.
 *
 * A task a worker takes leaves its queue, where cancel() and drop() look for
 * it; so it is indexed in engine->running_by_id until it completes, and a
 * stop request (cancel, drop, shutdown with cancel_pending) sets its
 * stop_code, which the worker reads at the next batch or chunk boundary
 * (backends may poll it through mm_task_cancelled).  A stopped task
 * completes with its stop code, never with a result, and exactly once.
 *
 * A task with more items than one batch takes (max_batch_items, or
 * max_batch_tokens by the engine's bytes/4 estimate) is not handed to the
 * backend whole: its worker runs it a chunk at a time through a view task
 * (the same input blob, a window of its items), copies each chunk's vectors
 * into the task's result, and between two chunks serves one batch from the
 * queue.  Chunks take the items in order of length (the order is made once),
 * so they pad as little as the whole task would have.  So a 20,000-text task cannot starve a small task queued behind
 * it, and a cancelled one stops within one chunk.  Only embedding tasks are
 * chunked: their rows are independent and their result is one matrix.
 *
 * A load nobody waits for any more (its only tasks cancelled, released or
 * shut down while loading) is aborted: spec.cancelled turns true, and the
 * backend's download or load stops at its next check.
 *
 * Every function here runs with engine->mu held, except mm__chunk_run.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mm_alloc.h"
#include "mm_engine_internal.h"
#include "mm_err.h"
#include "mm_log.h"

void mm__running_add(mm_engine_t *e, mm_task_t *t) {
    mm_hash_oom = 0;
    HASH_ADD(rh, e->running_by_id, id, sizeof(uint64_t), t);
    /* Not indexed on out-of-memory: it cannot be stopped early, it still completes. */
    t->running_indexed = !mm_hash_oom;
}

void mm__running_remove(mm_engine_t *e, mm_task_t *t) {
    if (t->running_indexed) {
        HASH_DELETE(rh, e->running_by_id, t);
        t->running_indexed = 0;
    }
}

mm_task_t *mm__running_find(mm_engine_t *e, uint64_t id) {
    mm_task_t *t = NULL;
    HASH_FIND(rh, e->running_by_id, &id, sizeof id, t);
    return t;
}

void mm__running_stop(mm_task_t *t, int code, const char *msg) {
    int expected = 0;
    if (atomic_compare_exchange_strong(&t->stop_code, &expected, code) && msg)
        t->stop_msg = mm_strdup(msg);
}

size_t mm__running_stop_chunked(mm_engine_t *e, mm_model *m, int code, const char *msg,
                                uint64_t *ids, size_t cap) {
    size_t k = 0;
    mm_task_t *t, *tmp;
    HASH_ITER(rh, e->running_by_id, t, tmp) {
        if (!t->chunked || (m && t->model != m) || atomic_load(&t->stop_code))
            continue;
        if (code) {
            if (ids && k == cap)
                break;
            if (ids)
                ids[k] = t->id;
            mm__running_stop(t, code, msg);
        }
        k++;
    }
    return k;
}

int mm__complete_if_stopped(mm_engine_t *e, mm_model *m, mm_task_t *t) {
    int code = atomic_load(&t->stop_code);
    if (!code)
        return 0;
    mm_task_status st;
    const char *msg = t->stop_msg;
    if (code == MM_ECANCELLED) {
        st = MM_TS_CANCELLED;
        m->cancelled++;
        msg = msg ? msg : "cancelled by the caller";
    } else if (code == MM_EDROPPED) {
        st = MM_TS_DROPPED;
        m->dropped++;
        msg = msg ? msg : "Manual drop";
    } else {
        st = MM_TS_FAILED;
        m->failed++;
        msg = msg ? msg : "the model manager is shutting down";
    }
    mm__complete(e, t, st, code, msg);
    return 1;
}

static int has_preload_waiter(const mm_model *m) {
    for (const mm_task_t *t = m->waiters; t; t = t->next)
        if (t->kind == MM_KIND_PRELOAD)
            return 1;
    return 0;
}

int mm__model_abort_if_unwanted(mm_model *m) {
    if (m->n_loaded > 0 || m->qlen || m->in_flight || has_preload_waiter(m) ||
        m->state == MM_MS_FAILED || m->state == MM_MS_RELEASED)
        return 0;
    if (!atomic_exchange(&m->abort_load, 1))
        mm_log(MM_LOG_INFO, "model %s: no task waits for it any more; its load is cancelled",
               m->name);
    return 1;
}

/* The engine's default cost of one item (mm_worker.c's task_cost, per item). */
static size_t item_cost(size_t len) { return len / 4 + 2; }

/* Item number k of t in chunk order: by length once the order is made. */
static size_t chunk_item(const mm_task_t *t, size_t k) {
    return t->chunk_perm ? t->chunk_perm[k] : k;
}

static const mm_task_t *sort_task; /* qsort has no context argument; under sort_mu */
static pthread_mutex_t sort_mu = PTHREAD_MUTEX_INITIALIZER;

static int by_length(const void *a, const void *b) {
    size_t i = *(const size_t *)a, j = *(const size_t *)b;
    size_t li = sort_task->item_len[i], lj = sort_task->item_len[j];
    return li != lj ? (li < lj ? -1 : 1) : (i < j ? -1 : i > j);
}

int mm__chunk_wanted(const mm_model *m, const mm_task_t *t) {
    if (t->type != MM_TASK_EMBEDDING || t->kind != MM_KIND_RUN || t->n_items < 2)
        return 0;
    if (m->batch_items && t->n_items > m->batch_items)
        return 1;
    return m->batch_tokens && t->total_bytes / 4 + 2 * t->n_items > m->batch_tokens;
}

size_t mm__chunk_next(const mm_model *m, mm_task_t *t) {
    if (t->chunk_next == 0 && !t->chunk_perm) {
        /* Chunks of similar lengths pad as little as the whole task would have:
         * order the items by length once (without it, chunks keep input order). */
        t->chunk_perm = mm_malloc(t->n_items * sizeof *t->chunk_perm);
        if (t->chunk_perm) {
            for (size_t i = 0; i < t->n_items; i++)
                t->chunk_perm[i] = i;
            pthread_mutex_lock(&sort_mu);
            sort_task = t;
            qsort(t->chunk_perm, t->n_items, sizeof *t->chunk_perm, by_length);
            pthread_mutex_unlock(&sort_mu);
        }
    }
    size_t n = 0, cost = 0;
    for (size_t k = t->chunk_next; k < t->n_items; k++) {
        size_t c = item_cost(t->item_len[chunk_item(t, k)]);
        if (n > 0 && ((m->batch_items && n + 1 > m->batch_items) ||
                      (m->batch_tokens && cost + c > m->batch_tokens)))
            break;
        n++;
        cost += c;
    }
    return n;
}

/* A backend's message about "item K" of a chunk, with K made the task's own
 * index; other messages get the chunk's place in the task appended. */
static void chunk_error(mm_task_t *t, const mm_task_t *v, size_t start) {
    const char *msg = v->err_msg ? v->err_msg : "";
    const char *p = strstr(msg, "item ");
    char *end = NULL;
    size_t k = p && p[5] >= '0' && p[5] <= '9' ? (size_t)strtoull(p + 5, &end, 10) : SIZE_MAX;
    char out[1200];
    if (k < v->n_items)
        snprintf(out, sizeof out, "%.*sitem %zu%s", (int)(p - msg), msg, chunk_item(t, start + k),
                 end);
    else
        snprintf(out, sizeof out, "%s (in a chunk of %zu of the task's %zu texts)", msg,
                 v->n_items, t->n_items);
    mm__task_set_error(t, v->err_code, out);
}

int mm__chunk_run(mm_model *m, void *st, mm_task_t *t, size_t count) {
    size_t start = t->chunk_next;
    size_t *off = mm_malloc(2 * count * sizeof *off);
    if (!off) {
        mm_task_fail(t, MM_ENOMEM, "out of memory for a chunk of %zu texts", count);
        return 1;
    }
    mm_task_t v;
    memset(&v, 0, sizeof v);
    v.id = t->id;
    v.type = t->type;
    v.kind = t->kind;
    v.status = MM_TS_RUNNING;
    v.user_flags = t->user_flags;
    v.n_items = count;
    v.item_off = off;
    v.item_len = off + count;
    v.blob = t->blob;
    for (size_t j = 0; j < count; j++) {
        size_t i = chunk_item(t, start + j);
        v.item_off[j] = t->item_off[i];
        v.item_len[j] = t->item_len[i];
        v.total_bytes += v.item_len[j];
    }
    v.params_json = t->params_json;
    v.model_name = t->model_name;
    atomic_init(&v.stop_code, atomic_load(&t->stop_code));
    mm_task_t *vp = &v;
    m->vt->run(st, &vp, 1);
    while (v.err_code == MM_ENOMEM && count > 1) {
        /* Out of memory on this chunk: run its first half, the rest comes next time. */
        mm_log(MM_LOG_WARNING, "model %s ran out of memory on a chunk of %zu texts: retrying %zu",
               m->name, count, count / 2);
        mm__task_free_results(&v);
        v.vecs = NULL;
        v.texts = NULL;
        v.text_lens = NULL;
        v.extras = v.err_msg = NULL;
        v.n_texts = v.per_item = v.dim = 0;
        v.rkind = MM_RESULT_NONE;
        v.err_code = 0;
        v.tokens_in = v.tokens_out = 0;
        mm_free(v.item_tokens);
        v.item_tokens = NULL;
        count /= 2;
        v.n_items = count;
        v.total_bytes = 0;
        for (size_t j = 0; j < count; j++)
            v.total_bytes += v.item_len[j];
        m->vt->run(st, &vp, 1);
    }

    t->tokens_in += v.tokens_in;
    t->tokens_out += v.tokens_out;
    if (v.item_tokens) { /* the chunk's per-item counts, for the embedding cache */
        if (!t->item_tokens)
            t->item_tokens = mm_calloc(t->n_items, sizeof *t->item_tokens);
        for (size_t j = 0; t->item_tokens && j < count; j++)
            t->item_tokens[chunk_item(t, start + j)] = v.item_tokens[j];
        mm_free(v.item_tokens);
    }
    int finished = 1;
    if (v.err_code) {
        chunk_error(t, &v, start);
    } else if (v.rkind != MM_RESULT_EMBEDDINGS) {
        if (!atomic_load(&t->stop_code))
            mm_task_fail(t, MM_EINTERNAL, "the backend returned no embeddings for a chunk of %zu",
                         count);
    } else if (!t->vecs && !mm_task_result_embeddings(t, v.dim)) {
        mm_task_fail(t, MM_ENOMEM, "out of memory for %zu embeddings of %zu floats", t->n_items,
                     v.dim);
    } else if (t->dim != v.dim) {
        mm_task_fail(t, MM_EINTERNAL, "chunks of one task gave %zu- and %zu-float vectors", t->dim,
                     v.dim);
    } else {
        for (size_t j = 0; j < count; j++)
            memcpy(t->vecs + chunk_item(t, start + j) * t->dim, v.vecs + j * t->dim,
                   t->dim * sizeof(float));
        if (v.extras && !t->extras) {
            t->extras = v.extras; /* the first chunk's extra fields */
            v.extras = NULL;
        }
        t->chunk_next = start + count;
        finished = t->chunk_next >= t->n_items;
    }
    mm__task_free_results(&v);
    mm_free(off);
    return finished;
}
