/* mm_task_internal.h: the task struct, shared by the core's own files.
 *
 * Outside csrc/core a task is opaque (mm_task.h).  Ownership moves between
 * the submitter, a model's queue, a worker's batch and a completion channel;
 * the fields say which owner may touch them.
 */
#ifndef MM_TASK_INTERNAL_H
#define MM_TASK_INTERNAL_H

#include <stdatomic.h>

#include "mm_hash.h"
#include "mm_task.h"

struct mm_channel;
struct mm_model;

struct mm_task {
    uint64_t id;
    mm_task_type type;
    mm_task_kind kind;
    mm_task_status status; /* written by the current owner; terminal once */
    int single_input;
    unsigned user_flags;

    /* Inputs: immutable after submit. */
    size_t n_items;
    size_t *item_off; /* offset of item i in blob */
    size_t *item_len;
    char *blob; /* all items, each NUL-terminated */
    size_t total_bytes;
    char *params_json;
    char *model_name;

    int64_t enqueue_ns;
    struct mm_channel *channel; /* where it completes; holds a reference */
    size_t stream_index;        /* MM_KIND_PARTIAL: which output text the piece extends */

    /* Queue links and id-hash handle: guarded by the engine mutex while the
     * task sits in a queue or waiter list. */
    struct mm_task *next, *prev;
    struct mm_model *model;
    UT_hash_handle hh;

    /* Result: written by the worker running it (or the engine on error),
     * read by the drainer after completion. */
    mm_result_kind rkind;
    float *vecs;
    size_t dim;
    char **texts;
    size_t *text_lens;
    size_t n_texts, per_item;
    char *extras; /* JSON object text, or NULL */
    int err_code;
    char *err_msg;
    char device[32];
    char *warning;
    uint64_t tokens_in, tokens_out; /* mm_task_add_tokens; the worker running it */
    uint32_t *item_tokens;  /* per item (n_items), or NULL; the worker running it */
    uint64_t tokens_cached; /* input tokens of the items the cache served; the engine */

    /* Embedding cache plan (engine-owned): the caller's full item count, the
     * original index of each item still to compute, vectors already served
     * from the cache (orig_n x cached_dim, NULL when none hit). */
    int cache_insert;     /* store computed vectors after run() */
    size_t orig_n;        /* 0: no partial hit, items are the caller's */
    size_t *orig_index;
    float *cached_vecs;
    size_t cached_dim;
    size_t cache_hits;

    /* Stopping work already running (mm_chunk.c).  stop_code is set under the
     * engine mutex (cancel, drop, shutdown) and read by the worker at the next
     * batch or chunk boundary (and by backends through mm_task_cancelled). */
    _Atomic int stop_code;  /* 0, MM_ECANCELLED, MM_EDROPPED or MM_ESHUTDOWN */
    char *stop_msg;         /* the drop reason; guarded by the engine mutex */
    UT_hash_handle rh;      /* engine->running_by_id while running; engine mutex */
    int running_indexed;    /* in running_by_id; engine mutex */
    int chunked;            /* run in chunks by one worker (a large embedding task) */
    size_t chunk_next;      /* first item of the next chunk; that worker only */
    size_t *chunk_perm;     /* items in chunk order (by length), or NULL; that worker */
};

/* Allocates a task with a copy of the inputs; NULL on out-of-memory. */
mm_task_t *mm__task_new(uint64_t id, mm_task_type type, mm_task_kind kind, const char *model_name,
                        const char *const *items, const size_t *lens, size_t n,
                        const char *params_json);
/* Sets the error (code and message copy) without changing status. */
void mm__task_set_error(mm_task_t *t, int code, const char *msg);
/* Adds result["usage"] (OpenAI's object: prompt, completion and total
 * tokens, cached items' input tokens included) when any were counted. */
void mm__task_add_usage(mm_task_t *t);
/* Appends one "key": value pair to the task's extras JSON object. */
int mm__task_add_extra(mm_task_t *t, const char *key, const char *json_value);
/* Frees what run() wrote: vectors, texts, extras, error message (not reset). */
void mm__task_free_results(mm_task_t *t);
/* Frees the task and everything it owns (not its channel reference). */
void mm__task_destroy(mm_task_t *t);

#endif
