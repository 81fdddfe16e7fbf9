/* mm_engine.h: the model manager's core.
 *
 * An engine owns a registry of models (one entry per model name), each with
 * a FIFO queue, worker threads and a lifecycle state; one reaper thread
 * that enforces queue timeouts and keep-alive; and nothing of Python.
 * Tasks complete through completion channels (mm_channel.h).
 *
 * Threading: every function here may be called from any thread and returns
 * without waiting for model work (loading, running, unloading happen on
 * worker threads; completion arrives on the channel).  mm_engine_free is
 * the only call that blocks on threads.
 */
#ifndef MM_ENGINE_H
#define MM_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "mm_channel.h"
#include "mm_task.h"

typedef struct mm_engine mm_engine_t;

typedef struct mm_engine_params {
    size_t max_queue_size;         /* per model; 0: unbounded */
    int64_t queue_timeout_ms;      /* time a task may wait in a ready model's queue; <= 0: none */
    int64_t default_keep_alive_ms; /* for new models; < 0: never released */
    size_t max_batch_items;        /* per worker batch; 0: unbounded */
    size_t max_batch_tokens;       /* per worker batch (backend cost units); 0: unbounded */
    int cpu_threads;               /* intra-op threads per CPU worker; 0: cores / workers */
    const char *cache_dir;         /* model cache root (copied) */
    const char *fake_gpus;         /* simulated GPU list, or NULL (see mm_devices.h) */
    const char *allowed_gpus;      /* "0,2": GPUs that "gpu" may use; NULL: all visible */
    const char *backend_options_json; /* passed to backends as spec->options_json (copied) */
    size_t embed_cache_entries;    /* embedding cache size; 0: no cache */
    int64_t embed_cache_ttl_ms;    /* embedding cache entry lifetime */
    double memory_fraction;        /* budget per device: this fraction of a GPU's total, or of
                                      the RAM (cgroup limit respected) for the CPU; 0: 0.9 */
    int max_loaded_models;         /* models loaded at once; 0: no cap */
    uint64_t cpu_total_bytes;      /* the CPU's total for the budget; 0: the machine's */
} mm_engine_params;

/* Fills the defaults: unbounded queue, 30 s queue timeout, 5 min keep-alive,
 * 256 items / 16384 tokens per batch, automatic threads, "data/models". */
void mm_engine_default_params(mm_engine_params *p);

/* Creates an engine and starts its reaper thread.  0, MM_ENOMEM, or MM_EINVAL
 * (malformed fake_gpus). */
int mm_engine_new(const mm_engine_params *p, mm_engine_t **out);

/* Stops everything now: pending tasks fail with SHUTTING_DOWN, running
 * batches finish, workers unload, threads are joined, memory is freed.
 * Blocks until done.  No other call may race with or follow it. */
void mm_engine_free(mm_engine_t *e);

/* What task() asks for. */
typedef struct mm_submit_args {
    const char *model_name;
    mm_task_type type;
    mm_task_kind kind;  /* MM_KIND_RUN or MM_KIND_PRELOAD */
    const char *device; /* "gpu", "cpu", "cuda:N" */
    int num_workers;
    int has_keep_alive;
    int64_t keep_alive_ms; /* < 0: never release; 0: as soon as idle */
    const char *revision;  /* NULL: "main" */
    const char *const *items;
    const size_t *item_lens;
    size_t n_items;
    int single_input;
    const char *params_json; /* NULL or "{...}" */
    unsigned user_flags;     /* opaque to the core, read back with mm_task_user_flags */
    const char *model_options_json; /* NULL or "{...}": load options for a model this
                                       submit creates (spec->model_options_json) */
    int defer_wake;          /* don't wake a worker now: the caller calls mm_engine_kick()
                                once after a burst of submits (an event-loop iteration), so
                                the burst becomes one batch and costs one wake-up */
} mm_submit_args;

/* Submits a task.  On success returns 0 and *id; the task completes later
 * on ch (exactly once).  Immediate failures (bad arguments, QUEUE_FULL,
 * SHUTTING_DOWN) return a negative code with a message in err and create
 * nothing. */
int mm_engine_submit(mm_engine_t *e, mm_channel_t *ch, const mm_submit_args *a, uint64_t *id,
                     char *err, size_t errlen);

/* Wakes the workers of every model that received deferred submits.  Cheap
 * when there is nothing to do. */
void mm_engine_kick(mm_engine_t *e);

/* Cancels a task that has not started: it leaves its queue and completes
 * as CANCELLED.  Returns 1 when it was removed, 0 when it had already
 * started or finished. */
int mm_engine_cancel(mm_engine_t *e, uint64_t id);

/* Releases a model: queued tasks finish, workers stop and unload, the entry
 * goes; a control task completes on ch when the model is gone (its extras
 * say {"released": true/false}).  0 and *id. */
int mm_engine_release(mm_engine_t *e, mm_channel_t *ch, const char *model_name, uint64_t *id);

/* Drops every queued task of a model: each completes as DROPPED carrying
 * reason.  Workers and the model stay.  *ids (caller frees with mm_free)
 * gets their ids.  0, MM_ENOTFOUND when no such model, MM_ENOMEM. */
int mm_engine_drop(mm_engine_t *e, const char *model_name, const char *reason, uint64_t **ids,
                   size_t *n);

/* Begins shutdown: new submits fail with SHUTTING_DOWN; with cancel_pending
 * queued tasks fail with SHUTTING_DOWN, otherwise they finish; every model
 * is released; a control task completes on ch when all are gone. */
int mm_engine_shutdown(mm_engine_t *e, mm_channel_t *ch, int cancel_pending, uint64_t *id);

/* A snapshot of one model for status(). */
typedef struct mm_model_status {
    char model_name[512];
    mm_task_type task_type;
    char state[24];
    char device_request[32];
    int n_devices;
    char devices[16][32];
    int workers;
    int workers_loaded;
    size_t queue_depth;
    size_t in_flight;
    int64_t keep_alive_ms;       /* < 0: pinned */
    double seconds_until_release; /* < 0 when not counting down */
    double last_used;            /* wall-clock seconds, 0 if never */
    double loaded_at;            /* wall-clock seconds, 0 if not yet */
    uint64_t submitted, done, failed, dropped, timed_out, cancelled, batches, items;
    uint64_t memory_bytes;       /* all devices */
    int n_mem;                   /* per-device footprint: mem_dev[i] bytes on mem_dev_name[i] */
    char mem_dev_name[16][32];
    uint64_t mem_dev[16];
    uint64_t est_weights, est_activation; /* the estimate before load (0: none) */
    char last_release_reason[96]; /* this entry's, or the name's previous instance's; "" none */
    uint64_t download_done, download_total; /* bytes, while (or after) loading downloads */
    char backend[32];
    char error[512];
    uint64_t kv_blocks_used, kv_blocks_total; /* decoder-only generation's KV-cache blocks
                                                 (mm_worker_kv_report); 0/0: none */
} mm_model_status;

/* Copies a snapshot of every model (including ones still draining).  *out is
 * freed by the caller with mm_free.  0 or MM_ENOMEM. */
int mm_engine_status(mm_engine_t *e, mm_model_status **out, size_t *n);

/* One device's memory for status(): the budget is what the manager may
 * fill, used what its own models hold (measured after load, estimated
 * before), free the budget left (simulated GPUs) or the device's free
 * memory now (real GPUs, CPU), whichever is smaller. */
typedef struct mm_device_status {
    char name[32];     /* "cpu", "cuda:0" */
    char label[64];    /* the GPU's name; "" for the CPU */
    int simulated;
    uint64_t total_bytes, free_bytes, budget_bytes, used_bytes;
    int n_models;
    char models[16][128]; /* names of the models holding memory on it (first 16) */
} mm_device_status;

/* Copies every device's memory snapshot; *out freed with mm_free.  0 or
 * MM_ENOMEM. */
int mm_engine_devices(mm_engine_t *e, mm_device_status **out, size_t *n);

/* A model's last release, kept after it left the registry. */
typedef struct mm_release_record {
    char model_name[400];
    char reason[96];          /* idle, manual, evicted_for=<model>, shutdown, oom, failed */
    uint64_t released_bytes;  /* memory the devices got back */
    double seconds;           /* from the release decision to memory back */
    double at;                /* wall clock */
} mm_release_record;

/* Copies the release records (most recent release per name); *out freed
 * with mm_free.  0 or MM_ENOMEM. */
int mm_engine_releases(mm_engine_t *e, mm_release_record **out, size_t *n);

/* Task accounting, for tests that check every task completes exactly once. */
typedef struct mm_engine_stats {
    uint64_t created;            /* tasks created by submit/release/shutdown */
    uint64_t completed;          /* handed to a channel */
    uint64_t double_completions; /* must stay 0 */
    uint64_t live_models;
    uint64_t retiring_models;
    uint64_t idle_trims;         /* heap trims by idle workers (freed heap given back) */
} mm_engine_stats;

void mm_engine_stats_get(mm_engine_t *e, mm_engine_stats *s);

/* The embedding cache's counters; 0, or MM_ENOTFOUND when it is off. */
struct mm_embcache_stats;
int mm_engine_cache_stats(mm_engine_t *e, struct mm_embcache_stats *s);

/* Names for task types ("embedding", "text_generation", "rerank",
 * "classification"); 0 or MM_EINVAL. */
int mm_task_type_parse(const char *s, mm_task_type *out);
const char *mm_task_type_name(mm_task_type t);

#endif
