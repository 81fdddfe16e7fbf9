/* mm_backend.h: the interface between the engine and a model backend.
 *
 * A backend is a small vtable.  The engine calls load() on each worker
 * thread for that worker's device, then run() with batches of tasks, then
 * unload() on the same thread.  Backends never see the queue or the locks;
 * they read inputs and write results through mm_task.h.  A backend that
 * wants one copy of read-only weights shared by several CPU workers keeps a
 * reference-counted cache of its own keyed by spec->model_name.
 *
 * Entry points never throw, never print and never take the GIL.
 */
#ifndef MM_BACKEND_H
#define MM_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "mm_task.h"

/* Where a worker runs. */
typedef struct mm_device {
    int is_gpu;      /* 0: CPU */
    int index;       /* CUDA ordinal as the process sees it; -1 for CPU */
    char name[32];   /* "cpu", "cuda:0" */
    int cpu_threads; /* intra-op threads this worker may use (CPU) */
} mm_device;

/* What the model is, as the caller asked for it (read-only to backends). */
typedef struct mm_model_spec {
    const char *model_name; /* as given: "org/name", a local dir, "synthetic/..." */
    mm_task_type task_type;
    const char *revision;   /* "main" unless the task said otherwise */
    const char *cache_dir;  /* model cache root */
    const char *options_json; /* backend-wide settings as JSON ("{}" when none) */
    const char *model_options_json; /* this model's load options, from the task that created
                                       it: {"backend", "trust_remote_code"} ("{}" when none) */
    int n_workers;          /* how many workers share this model */

    /* For load(): report download progress (bytes done and total; any
     * thread, as often as convenient: it only stores two counters), so
     * status() can show a model that is still downloading.  May be NULL. */
    void (*progress)(void *progress_ctx, uint64_t done, uint64_t total);
    void *progress_ctx;

    /* For load(): nonzero once nobody wants this load any more (shutdown with
     * cancel_pending, every waiting task cancelled, released while loading).
     * A backend asks between steps (each downloaded chunk, each file) and
     * returns MM_ECANCELLED; partial downloads stay for a later resume.  One
     * atomic load; may be NULL. */
    int (*cancelled)(void *progress_ctx);
} mm_model_spec;

/* Limits and footprint a loaded backend reports. */
typedef struct mm_backend_info {
    size_t max_batch_items;  /* 0: no limit of its own */
    size_t max_batch_tokens; /* 0: no limit of its own */
    uint64_t memory_bytes;   /* weights + buffers held on its device */
    size_t embedding_dim;    /* 0 when not an embedding model */
    char revision[64];       /* what was loaded: the resolved commit, or any id that changes
                                when the weights change ("" = the requested revision) */
    char backend[16];        /* the backend that serves it, for status(), when the vtable
                                chose one per model ("" = the vtable's name) */
} mm_backend_info;

/* A model's memory on one device before it is loaded: weights (shared by
 * the CPU workers of one model, so counted once on the CPU) and a bound on
 * one worker's activations at the batch budget. */
typedef struct mm_footprint {
    uint64_t weights_bytes;
    uint64_t activation_bytes;
} mm_footprint;

typedef struct mm_backend_vtable {
    const char *name;

    /* Does this backend serve model_name?  Called at submit; must be cheap. */
    int (*accepts)(const char *model_name);

    /* Optional.  Validates a task before it is queued (kwargs, input shape),
     * without a loaded model, on the submitting thread.  0, or a negative
     * code with a message written to err (errlen bytes). */
    int (*check)(const mm_model_spec *spec, const mm_task_t *task, char *err, size_t errlen);

    /* Loads the model for one worker on dev.  Blocks (downloads, reads
     * weights).  On success sets *state.  On failure returns a negative code
     * and writes a message a person can act on into err. */
    int (*load)(const mm_model_spec *spec, const mm_device *dev, void **state, char *err,
                size_t errlen);

    /* Runs a batch.  Writes each task's result or fails it (mm_task_fail);
     * a task left without either is failed by the engine as INTERNAL_ERROR. */
    void (*run)(void *state, mm_task_t **tasks, size_t n);

    /* Frees everything load() made, on the thread that loaded it. */
    void (*unload)(void *state);

    /* Optional.  Fills limits and footprint; 0 or a negative code. */
    int (*info)(void *state, mm_backend_info *info);

    /* Optional.  Cost of a task against max_batch_tokens (tokens, or an
     * estimate).  Without it the engine uses input bytes / 4 + 2 per item. */
    size_t (*cost)(void *state, const mm_task_t *task);

    /* Nonzero when equal (revision, kwargs, text) always give the same vector,
     * so the engine may serve embeddings from its cache (settings
     * embedding_cache) and hand run() only the texts it has not seen. */
    int embed_cacheable;

    /* Optional.  Estimates the footprint of one worker on dev before load()
     * (may block like load: it may resolve or download the files), on the
     * worker thread, no lock held.  0, or a negative code (the engine then
     * loads without an estimate).  A backend whose load() or run() runs out
     * of device memory returns / fails the task with MM_ENOMEM: the engine
     * evicts and retries the load once, and splits a batch down to one task. */
    int (*estimate)(const mm_model_spec *spec, const mm_device *dev, mm_footprint *fp, char *err,
                    size_t errlen);
} mm_backend_vtable;

#endif
