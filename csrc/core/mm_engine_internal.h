/* mm_engine_internal.h: engine and model structs shared by mm_engine.c,
 * mm_worker.c and mm_reaper.c.
 *
 * Locking: one mutex, engine->mu, guards the registry, every model's queue,
 * state and counters, and the retiring list.  Critical sections are short
 * (pointer moves, counters); backends run with no lock held.  Channel
 * mutexes are leaves taken under engine->mu.  Lock order:
 *     engine->mu  ->  channel->mu  ->  (log sink mutex)
 */
#ifndef MM_ENGINE_INTERNAL_H
#define MM_ENGINE_INTERNAL_H

#include <pthread.h>

#include "mm_backend.h"
#include "mm_devices.h"
#include "mm_embcache.h"
#include "mm_engine.h"
#include "mm_hash.h"
#include "mm_metrics.h"
#include "mm_task_internal.h"

typedef enum mm_model_state {
    MM_MS_LOADING = 0,
    MM_MS_READY,
    MM_MS_DRAINING, /* released: serve what is queued, then stop */
    MM_MS_RELEASED, /* workers gone, waiting to be reaped */
    MM_MS_FAILED,   /* a worker failed to load: stop now */
} mm_model_state;

struct mm_engine;
struct mm_model;

/* Memory slots: 0 is the CPU, 1 + i the engine's GPU i (mm_memory.c). */
#define MM_MEM_SLOTS (MM_MAX_GPUS + 1)

typedef struct mm_memdev {
    char name[32];
    int is_gpu;
    int gpu;                /* index into engine->gpus, -1 for the CPU */
    uint64_t total, budget; /* immutable */
    uint64_t used;          /* sum of the reservations of models not yet reaped; guarded by mu */
    struct mm_model *evicting; /* a load waiting for the models it evicted here; guarded by mu */
} mm_memdev;

typedef struct mm_worker {
    pthread_t thread;       /* written at start, joined by the reaper */
    int started;            /* thread was created */
    struct mm_model *model; /* immutable */
    mm_device dev;          /* immutable */
    char revision[64];      /* what its backend loaded; this worker's thread only */
    uint64_t memory_bytes;  /* what its backend reports holding; guarded by engine->mu */
    /* The batch its backend's run() holds now (continuous batching: run() may
     * take more tasks and finish some early, mm_worker_take_more /
     * mm_worker_finish).  cur[0 .. cur_n): the tasks, NULL once finished
     * early; the first cur_n0 are the batch run() was called with.  Guarded
     * by engine->mu; NULL outside run(). */
    mm_task_t **cur;
    size_t cur_n, cur_n0, cur_cap;
    size_t cur_items; /* items of the tasks finished early, for the batch metrics */
    void (*fin_hook)(void *, mm_task_t *); /* mm_worker_on_finish; this worker's thread only */
    void *fin_hook_user;
} mm_worker;

typedef struct mm_model {
    /* Immutable after creation. */
    char *name;
    const mm_backend_vtable *vt;
    mm_model_spec spec;
    char *revision;
    char *model_options; /* spec.model_options_json */
    char backend_name[16]; /* info().backend of a loaded worker ("" = vt->name); engine->mu */
    char device_request[32];
    mm_placement placement;
    struct mm_engine *engine;
    uint64_t generation; /* creation order, to wait only for older instances */

    UT_hash_handle hh;             /* registry link; guarded by engine->mu */
    struct mm_model *retire_next;  /* retiring list; guarded by engine->mu */
    int in_registry;               /* guarded by engine->mu */
    mm_metrics_series *met;        /* this name's metrics (NULL on OOM); guarded by engine->mu */

    /* All below guarded by engine->mu. */
    mm_model_state state;
    int64_t keep_alive_ms;
    mm_task_t *qhead, *qtail;
    size_t qlen;
    mm_task_t *waiters; /* preload and release control tasks (linked by next) */
    pthread_cond_t work_cv;
    mm_worker *workers;
    int n_workers;
    int n_loaded, n_exited, n_load_done;
    int64_t last_used_ns, ready_ns;
    double last_used_wall, loaded_wall;
    size_t in_flight;
    int kick_pending; /* deferred submits wait for mm_engine_kick */
    _Atomic uint64_t dl_done, dl_total; /* download progress, from load(); lock-free */
    _Atomic int abort_load; /* set under mu; read lock-free by load() (spec.cancelled) */
    uint64_t submitted, done, failed, dropped, timed_out, cancelled, batches, items;
    uint64_t memory_bytes;
    /* Memory policy (mm_memory.c).  resv: what the model holds against each
     * slot's budget, from its load until it is reaped (the estimate, then
     * the larger of it and the measured footprint); mem_dev: measured. */
    uint64_t resv[MM_MEM_SLOTS];
    uint64_t mem_dev[MM_MEM_SLOTS];
    uint64_t mem_reported[MM_MEM_SLOTS]; /* what the backends said they hold */
    mm_footprint fp;          /* the estimate for one worker */
    int fit_state;            /* 0 pending, 1 fitted, -1 failed or skipped */
    int cpu_load_busy;        /* a CPU worker of this model is inside load() */
    int waiting_mem;          /* status shows waiting_for_memory */
    uint64_t released_bytes;  /* summed by the workers as they unload */
    int64_t retire_ns;        /* when the release was decided */
    char release_reason[96];  /* why it was retired */
    size_t batch_items, batch_tokens; /* effective budgets */
    uint64_t kv_used, kv_total; /* KV-cache blocks, as its backend reports them (0/0: none) */
    int load_err;
    char errmsg[512];
} mm_model;

/* The revision a model name last loaded at, for cache keys; kept across
 * releases so a released model's cached vectors still serve. */
typedef struct mm_known_rev {
    UT_hash_handle hh;
    char revision[64];
    char key[]; /* name \x1f requested revision */
} mm_known_rev;

struct mm_engine {
    pthread_mutex_t mu;
    pthread_cond_t reaper_cv; /* wakes the reaper: deadlines changed, models to reap */
    pthread_cond_t retire_cv; /* a retiring model was reaped */
    mm_model *models;         /* registry by name; guarded by mu */
    mm_model *retiring;       /* released or failed, not yet reaped; guarded by mu */
    mm_task_t *queued_by_id;  /* every queued task, for cancel; guarded by mu */
    mm_task_t *running_by_id; /* every running task (handle rh), to stop it; guarded by mu */
    mm_task_t *shutdown_waiters; /* guarded by mu */
    int shutting_down;        /* guarded by mu */
    int kicks_pending;        /* some model has kick_pending; guarded by mu */
    int stop_reaper;          /* guarded by mu */
    uint64_t next_id;         /* guarded by mu */
    uint64_t next_generation; /* guarded by mu */
    uint64_t created, completed, double_completions; /* guarded by mu */
    mm_known_rev *revisions;  /* guarded by mu */
    mm_embcache_t *cache;     /* NULL when off; has its own lock */
    mm_metrics metrics;       /* counters and histograms (mm_metrics.h); guarded by mu */
    pthread_t reaper;         /* immutable */
    mm_engine_params params;  /* immutable (strings owned) */
    mm_gpu_list gpus;         /* immutable */
    mm_memdev mem[MM_MEM_SLOTS]; /* slot 0 CPU, 1 + i GPU i; fields guarded as marked */
    int n_mem;                /* immutable */
    pthread_cond_t mem_cv;    /* memory freed, a model went idle, a load fitted (monotonic) */
    int mem_waiters;          /* threads waiting on mem_cv; guarded by mu */
    int cpu_loads;            /* CPU workers inside load(), measuring; guarded by mu */
    int heap_trimming;        /* an idle worker is in mm__mem_trim; guarded by mu */
    uint64_t idle_trims;      /* trims by idle workers; guarded by mu */
    struct mm_release_rec *releases; /* last release per name; guarded by mu */
};

/* ---- the memory policy (mm_memory.c); all with e->mu held unless said ---- */

/* Fills the slot table from e->gpus and the params.  Caller: mm_engine_new. */
void mm__mem_init(struct mm_engine *e);
/* Frees the release records. */
void mm__mem_free(struct mm_engine *e);
/* Slot of a device. */
int mm__mem_slot(const struct mm_engine *e, const mm_device *d);
/* Worker 0, before any worker loads: estimate (drops the lock), choose the
 * GPUs for "gpu", evict idle models, wait for memory, reserve.  0: fitted;
 * 1: nothing to load (released or failed meanwhile); MM_ENOSPACE with a
 * message in err. */
int mm__mem_fit(struct mm_engine *e, struct mm_model *m, char *err, size_t errlen);
/* After an MM_ENOMEM at load: evicts every idle model on dev's slot
 * (reason "oom") and waits until they are gone.  Returns how many. */
int mm__mem_evict_for_oom(struct mm_engine *e, struct mm_model *m, const mm_device *dev);
/* No lock: what a load is measured by: the resident set (CPU) or the free
 * memory (real GPU); 0 for a simulated GPU. */
uint64_t mm__mem_probe(struct mm_engine *e, const mm_device *dev);
/* After a worker's load: records the footprint measured between two probes
 * (or the backend's report where nothing is measurable) and raises the
 * reservation to it. */
void mm__mem_loaded(struct mm_engine *e, struct mm_model *m, const mm_device *dev,
                    uint64_t before, uint64_t after, uint64_t reported);
/* Retires m (mm__model_retire) and records why ("idle", "manual", ...). */
void mm__mem_retire(struct mm_engine *e, struct mm_model *m, const char *reason);
/* At reap: gives back the model's reservations, records its release,
 * wakes loads waiting for memory. */
void mm__mem_reaped(struct mm_engine *e, struct mm_model *m);
/* A model went idle or changed: wake loads waiting for memory. */
void mm__mem_changed(struct mm_engine *e);
/* The previous release reason recorded for name, or NULL. */
const char *mm__mem_last_reason(struct mm_engine *e, const char *name);

/* No lock: the worker's unload plus the verified release (mm__mem_trim; a
 * bounded wait for a real GPU's free memory).  Returns the bytes the device
 * got back. */
uint64_t mm__mem_unload(struct mm_engine *e, struct mm_model *m, const mm_device *dev,
                        void *state);
/* How long a worker stays idle (no queued work) after its load or its last
 * batch before it trims the heap (mm__mem_idle_trim). */
#define MM_IDLE_TRIM_NS (1000LL * 1000000LL)
/* No lock: gives the heap's free pages back to the system (glibc's
 * malloc_trim(0); nothing elsewhere).  Takes milliseconds for hundreds of
 * MiB: never on the hot path, only at a release or an idle worker. */
void mm__mem_trim(void);
/* engine->mu held (released while trimming): an idle worker's trim.  Returns
 * 1 when the heap was trimmed (or another worker is trimming it now), 0 when
 * a CPU load is measuring its resident growth (a trim would hide part of
 * it): try again later. */
int mm__mem_idle_trim(struct mm_engine *e);
/* No lock: runs a batch; tasks that fail with MM_ENOMEM are run again in
 * halves, down to one task, which then keeps OUT_OF_MEMORY. */
void mm__mem_run(struct mm_engine *e, struct mm_model *m, void *state, mm_task_t **batch,
                 size_t n);

/* Completes a task exactly once: sets status (and the error when code != 0),
 * unlinks nothing, hands it to its channel.  Caller holds e->mu. */
void mm__complete(struct mm_engine *e, mm_task_t *t, mm_task_status st, int code,
                  const char *msg);

/* Takes a model out of the registry (if there) and onto the retiring list,
 * in state st (DRAINING or FAILED), waking its workers.  Caller holds e->mu. */
void mm__model_retire(struct mm_engine *e, mm_model *m, mm_model_state st);

/* Counts a model instance leaving the registry for reason r (once: only
 * while it is still registered); call just before mm__model_retire.  The
 * memory policy calls it with MM_REL_EVICTED / MM_REL_OOM.  Caller holds
 * e->mu. */
static inline void mm__model_count_release(mm_model *m, mm_release_reason r) {
    if (m->in_registry)
        mm_metrics_on_release(m->met, r);
}

/* Fails every queued task of m with code and msg.  Caller holds e->mu. */
void mm__model_fail_queue(struct mm_engine *e, mm_model *m, mm_task_status st, int code,
                          const char *msg);

/* Unlinks the queue head; caller holds e->mu. */
mm_task_t *mm__queue_pop(struct mm_engine *e, mm_model *m);

/* Embedding cache steps (mm_engine_cache.c); model_options is the load
 * options JSON (the dtype) the vectors are computed under.  Lookup runs at
 * submit without engine->mu; it returns 1 when every item hit (the task then
 * carries its whole result), 0 otherwise (the task keeps only the misses). */
int mm__cache_lookup(struct mm_engine *e, mm_task_t *t, const char *revision,
                     const char *model_options);
/* Copies the revision last loaded for (name, requested) into out; 0 if none.
 * Caller holds e->mu. */
int mm__cache_known_revision(struct mm_engine *e, const char *name, const char *requested,
                             char out[64]);
/* Records what a model loaded; purges the name's vectors of an older
 * revision.  Caller holds e->mu. */
void mm__cache_note_revision(struct mm_engine *e, const char *name, const char *requested,
                             const char *loaded);
/* After run(), on the worker thread, no lock: stores computed vectors and
 * merges cached ones back into the caller's order. */
void mm__cache_after_run(struct mm_engine *e, mm_task_t *t, const char *revision,
                         const char *model_options);
void mm__cache_free_revisions(struct mm_engine *e);

/* Stopping running work (mm_chunk.c); every one with e->mu held.
 * Indexes a task a worker took, so cancel/drop/shutdown can reach it;
 * mm__complete removes it. */
void mm__running_add(struct mm_engine *e, mm_task_t *t);
void mm__running_remove(struct mm_engine *e, mm_task_t *t);
mm_task_t *mm__running_find(struct mm_engine *e, uint64_t id);
/* Asks a running task to stop at the next boundary (the first code wins). */
void mm__running_stop(mm_task_t *t, int code, const char *msg);
/* Stops the chunked running tasks of m (of every model when m is NULL) with
 * code, writing (at most cap of) their ids into ids unless it is NULL;
 * code 0 only counts them.  Returns how many. */
size_t mm__running_stop_chunked(struct mm_engine *e, mm_model *m, int code, const char *msg,
                                uint64_t *ids, size_t cap);
/* Completes t with its stop code if it has one; returns 1 when it did. */
int mm__complete_if_stopped(struct mm_engine *e, mm_model *m, mm_task_t *t);
/* Aborts the load of a model that no task waits for any more (nothing
 * loaded yet, nothing queued or running, no pre-load); 1 when it did. */
int mm__model_abort_if_unwanted(mm_model *m);
/* Whether t runs in chunks on m (a large embedding task), and the next chunk. */
int mm__chunk_wanted(const mm_model *m, const mm_task_t *t);
size_t mm__chunk_next(const mm_model *m, mm_task_t *t);
/* Runs items [t->chunk_next, +count) of t as a view task on the backend, no
 * lock held, and merges the result into t; returns 1 when t is finished (all
 * items done, or failed). */
int mm__chunk_run(mm_model *m, void *st, mm_task_t *t, size_t count);

/* Worker thread entry (mm_worker.c). */
void *mm__worker_main(void *arg);
/* Reaper thread entry (mm_reaper.c). */
void *mm__reaper_main(void *arg);
/* Frees a model whose threads are all joined (mm_engine.c). */
void mm__model_destroy(mm_model *m);
/* Completes a model's waiters (preload on ready/failure, release on reap). */
void mm__model_complete_waiters(struct mm_engine *e, mm_model *m, mm_task_kind kind, int code,
                                const char *msg);

#endif
