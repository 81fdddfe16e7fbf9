/* mm_metrics.h: the engine's operational metrics (Prometheus-shaped).
 *
 * One series record per model name, kept for the engine's lifetime so that
 * counters only grow across releases and reloads (what Prometheus expects).
 * Counters: tasks by outcome, items, batches, tokens in and out, loads by
 * result, releases by reason.  Histograms with fixed buckets: queue wait,
 * batch run time, batch size (items), load time.  Gauges (queue depth, in
 * flight, workers, memory bytes per device) are not stored: the snapshot
 * reads them from the registry.
 *
 * Threading: every hook and the series store are guarded by engine->mu,
 * which every hook site already holds (the core's one-lock rule); the hooks
 * are a few additions each, no allocation except the first task of a new
 * model name.  A hook given a NULL series (out of memory at creation) does
 * nothing: metrics never fail a task.
 */
#ifndef MM_METRICS_H
#define MM_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "mm_hash.h"
#include "mm_task.h"

/* How a run task ended. */
typedef enum mm_outcome {
    MM_OUT_SUCCESS = 0,
    MM_OUT_FAILED,    /* backend or load error */
    MM_OUT_TIMED_OUT, /* QUEUE_TIMEOUT */
    MM_OUT_CANCELLED, /* the caller cancelled it while queued */
    MM_OUT_DROPPED,   /* drop_model_queue */
    MM_OUT_REJECTED,  /* refused at submit: QUEUE_FULL */
    MM_OUT_SHUTDOWN,  /* failed because the manager or model shut down */
    MM_OUT_N
} mm_outcome;

/* Why a model instance left the registry.  MM_REL_EVICTED is for the memory
 * policy (it makes room for another model); MM_REL_OOM for an instance
 * dropped after an out-of-memory error.  Append new reasons at the end. */
typedef enum mm_release_reason {
    MM_REL_MANUAL = 0, /* release_model() */
    MM_REL_IDLE,       /* keep_alive ran out */
    MM_REL_SHUTDOWN,   /* close() */
    MM_REL_LOAD_FAILED,
    MM_REL_EVICTED,
    MM_REL_OOM,
    MM_REL_N
} mm_release_reason;

/* Bucket upper bounds (the +Inf bucket is implicit, last). */
#define MM_MET_LAT_NB 16   /* seconds: 0.0005 .. 60 */
#define MM_MET_BATCH_NB 12 /* items: 1 .. 2048 */
#define MM_MET_MAX_NB 16
extern const double mm_metrics_lat_bounds[MM_MET_LAT_NB];
extern const double mm_metrics_batch_bounds[MM_MET_BATCH_NB];

typedef struct mm_hist {
    uint64_t bucket[MM_MET_MAX_NB + 1]; /* per bucket, not cumulative; last is +Inf */
    uint64_t count;
    double sum;
} mm_hist;

typedef struct mm_metrics_series {
    UT_hash_handle hh;
    mm_task_type task_type;
    uint64_t tasks[MM_OUT_N];
    uint64_t items, batches, tokens_in, tokens_out;
    uint64_t loads_ok, loads_failed;
    uint64_t releases[MM_REL_N];
    mm_hist queue_wait; /* seconds from enqueue (or the model ready) to a worker taking it */
    mm_hist run;        /* seconds of one backend run() call (one batch) */
    mm_hist batch;      /* items per batch */
    mm_hist load;       /* seconds of one worker's load() */
    char name[512];
} mm_metrics_series;

typedef struct mm_metrics {
    mm_metrics_series *by_name; /* guarded by engine->mu */
} mm_metrics;

/* Names for labels: "success", "failed", ...; "manual", "idle", ... */
const char *mm_outcome_name(mm_outcome o);
const char *mm_release_reason_name(mm_release_reason r);

/* ---- the store (engine->mu held for all of these) ---- */

/* Finds or creates the series of a model name; NULL when out of memory. */
mm_metrics_series *mm_metrics_series_get(mm_metrics *mx, const char *name, mm_task_type type);
/* Frees every series (engine teardown). */
void mm_metrics_close(mm_metrics *mx);

/* ---- hooks (engine->mu held; s may be NULL) ---- */

void mm_metrics_hist_observe(mm_hist *h, const double *bounds, int nb, double v);
/* A run task completed with status st (MM_TS_*) and error code err. */
void mm_metrics_on_complete(mm_metrics_series *s, int st, int err, uint64_t tokens_in,
                            uint64_t tokens_out);
/* A worker took a task that waited wait_s seconds. */
void mm_metrics_on_dequeue(mm_metrics_series *s, double wait_s);
/* A worker ran a batch of n_items items in run_s seconds. */
void mm_metrics_on_batch(mm_metrics_series *s, size_t n_items, double run_s);
/* A worker's load() returned (ok nonzero on success) after load_s seconds. */
void mm_metrics_on_load(mm_metrics_series *s, int ok, double load_s);
/* A model instance left the registry for reason r. */
void mm_metrics_on_release(mm_metrics_series *s, mm_release_reason r);
/* submit refused a task (QUEUE_FULL). */
void mm_metrics_on_reject(mm_metrics_series *s);

/* ---- the snapshot (any thread; takes engine->mu) ---- */

typedef struct mm_metrics_gauges {
    char name[512];
    size_t queue_depth, in_flight;
    int workers, workers_loaded;
} mm_metrics_gauges;

typedef struct mm_metrics_memory {
    char name[512];
    char device[32];
    uint64_t bytes;
} mm_metrics_memory;

typedef struct mm_metrics_snapshot {
    mm_metrics_series *series; /* n_series copies (hh is meaningless) */
    size_t n_series;
    mm_metrics_gauges *gauges; /* one per live or retiring model instance */
    size_t n_gauges;
    mm_metrics_memory *memory; /* one per (model instance, device) with bytes loaded */
    size_t n_memory;
} mm_metrics_snapshot;

struct mm_engine;
/* Copies everything out under engine->mu.  0 or MM_ENOMEM; free with
 * mm_metrics_snapshot_free. */
int mm_engine_metrics(struct mm_engine *e, mm_metrics_snapshot *out);
void mm_metrics_snapshot_free(mm_metrics_snapshot *s);

#endif
