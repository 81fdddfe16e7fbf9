/* mm_task.h: one unit of work, from submit to completion.
 *
 * A task owns a copy of its inputs (UTF-8 items, copied at submit so no
 * worker ever needs the GIL), its parameters (a JSON object text, the
 * caller's kwargs) and, once run, its result.  It is owned by exactly one
 * place at a time: the submitter, a model's queue, a worker's batch, a
 * completion channel, then the drainer that frees it.  It completes exactly
 * once (success, error, timeout, cancelled or dropped); the engine enforces
 * that and counts any violation.
 *
 * Backends see tasks only inside run(): they read items and parameters and
 * write results through the functions below, from the worker thread that
 * owns the batch.
 */
#ifndef MM_TASK_H
#define MM_TASK_H

#include <stddef.h>
#include <stdint.h>

typedef struct mm_task mm_task_t;

typedef enum mm_task_type {
    MM_TASK_EMBEDDING = 1,
    MM_TASK_TEXT_GENERATION = 2,
    MM_TASK_RERANK = 3,         /* items: {"query", "documents"} JSON texts; result fields */
    MM_TASK_CLASSIFICATION = 4, /* items: texts; result fields ("labels") */
} mm_task_type;

/* What a task asks for. */
typedef enum mm_task_kind {
    MM_KIND_RUN = 0,     /* process items */
    MM_KIND_PRELOAD = 1, /* task_data=None: complete when the model is loaded */
    MM_KIND_RELEASE = 2, /* control: complete when the model is gone */
    MM_KIND_SHUTDOWN = 3, /* control: complete when every model is gone */
    MM_KIND_PARTIAL = 4   /* a streamed piece of a running task's output (its id, one
                             text); travels the channel only (mm_task_stream_text) */
} mm_task_kind;

typedef enum mm_task_status {
    MM_TS_NEW = 0,
    MM_TS_QUEUED,
    MM_TS_RUNNING,
    MM_TS_DONE,      /* success */
    MM_TS_FAILED,    /* error: code and message set */
    MM_TS_CANCELLED, /* caller cancelled before it ran */
    MM_TS_DROPPED,   /* drop_model_queue: callers get RuntimeError(reason) */
} mm_task_status;

/* What a successful task produced. */
typedef enum mm_result_kind {
    MM_RESULT_NONE = 0,       /* preload / control */
    MM_RESULT_EMBEDDINGS = 1, /* n_items x dim float32, row-major */
    MM_RESULT_TEXTS = 2,      /* one string per item (or several, see n_per_item) */
    MM_RESULT_FIELDS = 3,     /* only the fields added with mm_task_result_extra */
} mm_result_kind;

/* ---- read access (backends, the extension) ---- */
uint64_t mm_task_id(const mm_task_t *t);
mm_task_type mm_task_get_type(const mm_task_t *t);
mm_task_kind mm_task_get_kind(const mm_task_t *t);
mm_task_status mm_task_get_status(const mm_task_t *t);
/* Number of input items (texts). */
size_t mm_task_n_items(const mm_task_t *t);
/* Item i as UTF-8 bytes, NUL-terminated; *len receives its length (may be NULL). */
const char *mm_task_item(const mm_task_t *t, size_t i, size_t *len);
/* Total input bytes over all items. */
size_t mm_task_total_bytes(const mm_task_t *t);
/* The caller's kwargs as a JSON object text ("{}" when none); never NULL. */
const char *mm_task_params_json(const mm_task_t *t);
/* True when the input was one string, not a list (generation: generated_text). */
int mm_task_single_input(const mm_task_t *t);
const char *mm_task_model_name(const mm_task_t *t);
/* Opaque flags the submitter attached (mm_submit_args.user_flags). */
unsigned mm_task_user_flags(const mm_task_t *t);
/* Nonzero once the task's caller no longer wants its result (cancelled,
 * dropped, shutting down): a backend in run() may stop working on it and
 * leave it without a result; the engine completes it with the right code.
 * One atomic load; any thread. */
int mm_task_cancelled(const mm_task_t *t);

/* ---- result writing (backends, inside run(), on the worker thread) ---- */

/* Allocates the embeddings result: n_items rows of dim floats, zeroed.
 * Returns the row-major buffer owned by the task, or NULL on out-of-memory. */
float *mm_task_result_embeddings(mm_task_t *t, size_t dim);
/* Sets output text number i (0 <= i < n_items * per_item) to a copy of s.
 * The first call fixes per_item (num_return_sequences); 0 or MM_ENOMEM. */
int mm_task_result_text(mm_task_t *t, size_t i, size_t per_item, const char *s, size_t len);
/* Adds one result field "key": value (JSON text) merged into the result dict
 * (e.g. "usage"); 0 or MM_ENOMEM. */
int mm_task_result_extra(mm_task_t *t, const char *key, const char *json_value);
/* Adds to the task's token counts: tokens the model read (input, after
 * tokenization and truncation) and tokens it wrote (generated, every
 * returned sequence).  Feeds result["usage"] and the metrics; 0 both when a
 * backend does not report them. */
void mm_task_add_tokens(mm_task_t *t, uint64_t tokens_in, uint64_t tokens_out);
/* Marks a task whose whole result is its extra fields (rerank, classification)
 * as having a result; call after mm_task_result_extra. */
void mm_task_result_fields(mm_task_t *t);
/* As mm_task_add_tokens(t, tokens, 0) for input item i, also remembered per
 * item so that the embedding cache can report the tokens of a text it
 * serves later (result["usage"] stays the prompt's count). */
void mm_task_add_item_tokens(mm_task_t *t, size_t i, uint64_t tokens);
/* Streams a piece of output text i of a running task to its caller now,
 * ahead of the result: a MM_KIND_PARTIAL task with the same id and the text
 * as its one item goes onto the task's completion channel (pieces arrive in
 * the order pushed, all before the task's completion).  Any thread that
 * runs the task's work (the backend's helper threads too); 0 or MM_ENOMEM. */
int mm_task_stream_text(mm_task_t *t, size_t i, const char *s, size_t len);
/* Marks the task failed with code and message (printf-style).  A failed task
 * stays failed; the engine completes it after run() returns. */
void mm_task_fail(mm_task_t *t, int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 3, 4)))
#endif
    ;

/* ---- continuous batching (a backend's run(), on the worker thread) ----
 *
 * A backend that keeps a running batch (decoder-only generation) may, from
 * inside run() and on the thread that called it:
 *   - take more queued tasks of its model without blocking: up to cap tasks
 *     from the head of the queue into out (they become part of this run, as
 *     if run() had been called with them); returns how many, 0 when the
 *     queue is empty, the model failed, or the call is not from inside a
 *     worker's run().  A task taken is the backend's to finish.
 *   - finish a task of this run now: its result (or failure, or the stop
 *     code of a cancelled / dropped / shut-down task) is delivered at once,
 *     exactly once; the task must not be touched afterwards.  A task of the
 *     run left unfinished when run() returns is finished by the engine then,
 *     as always.  A task not of this run is ignored.
 *   - report its KV-cache blocks in use and in all (status() shows them).
 * The engine holds no lock while run() runs; these take it briefly. */
size_t mm_worker_take_more(mm_task_t **out, size_t cap);
void mm_worker_finish(mm_task_t *t);
void mm_worker_kv_report(uint64_t used_blocks, uint64_t total_blocks);
/* A backend that wraps another (the router) sets fn to run on each task the
 * inner backend finishes early, just before it is delivered (e.g. to add a
 * result field it adds to the rest after run()); NULL clears it. */
void mm_worker_on_finish(void (*fn)(void *user, mm_task_t *t), void *user);
/* From load() or run() on a worker thread: the memory policy's budget left
 * on this worker's device (its budget minus what every model holds there,
 * this one's weights included); 0 when unknown (not a worker thread). */
uint64_t mm_worker_memory_free(void);

/* ---- result reading (the extension, after completion) ---- */
mm_result_kind mm_task_result_kind(const mm_task_t *t);
const float *mm_task_result_vectors(const mm_task_t *t, size_t *n, size_t *dim);
size_t mm_task_result_n_texts(const mm_task_t *t, size_t *per_item);
const char *mm_task_result_text_at(const mm_task_t *t, size_t i, size_t *len);
/* Extra fields as a JSON object text, or NULL when none. */
const char *mm_task_result_extras(const mm_task_t *t);
/* MM_KIND_PARTIAL: the output text index its piece (item 0) extends. */
size_t mm_task_stream_index(const mm_task_t *t);
int mm_task_error_code(const mm_task_t *t);
const char *mm_task_error_message(const mm_task_t *t);
/* Device that ran the task ("cpu", "cuda:0"); NULL when none did. */
const char *mm_task_device(const mm_task_t *t);
/* Token counts reported by the backend (see mm_task_add_tokens). */
void mm_task_tokens(const mm_task_t *t, uint64_t *tokens_in, uint64_t *tokens_out);
/* Warning attached by the engine (config mismatch, CPU fallback), or NULL. */
const char *mm_task_warning(const mm_task_t *t);

#endif
