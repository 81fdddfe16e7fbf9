/* mm_metrics.c: counters and histograms the engine keeps for monitoring.
 *
 * Why here and not in Python: queue wait, batch sizes, run time and token
 * counts are only known on the worker threads, inside the core; measuring
 * them around task() in Python would fold event-loop delays into every
 * number and miss batching altogether.  The hooks run where the engine
 * already holds engine->mu (taking a batch, finishing it, completing a task,
 * a load, a release), so they need no lock or atomic of their own and cost a
 * few additions.  Series are per model name and live as long as the engine:
 * a released and reloaded model keeps counting where it left off, as
 * Prometheus counters must.  The snapshot copies everything under the lock
 * and adds the gauges (queue depth, in flight, memory per device) read from
 * the registry at that moment; the Python side (pymodelmgr.metrics) turns it
 * into Prometheus families.
 */
#include <stdio.h>
#include <string.h>

#include "mm_alloc.h"
#include "mm_engine_internal.h"
#include "mm_err.h"
#include "mm_metrics.h"

const double mm_metrics_lat_bounds[MM_MET_LAT_NB] = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                                     0.05,   0.1,   0.25,   0.5,   1,    2.5,
                                                     5,      10,    30,     60};
const double mm_metrics_batch_bounds[MM_MET_BATCH_NB] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512,
                                                         1024, 2048};

static const char *const OUTCOME_NAMES[MM_OUT_N] = {
    "success", "failed", "timed_out", "cancelled", "dropped", "rejected", "shutdown"};
static const char *const REASON_NAMES[MM_REL_N] = {"manual",      "idle",    "shutdown",
                                                   "load_failed", "evicted", "oom"};

const char *mm_outcome_name(mm_outcome o) {
    return (unsigned)o < MM_OUT_N ? OUTCOME_NAMES[o] : "unknown";
}

const char *mm_release_reason_name(mm_release_reason r) {
    return (unsigned)r < MM_REL_N ? REASON_NAMES[r] : "unknown";
}

mm_metrics_series *mm_metrics_series_get(mm_metrics *mx, const char *name, mm_task_type type) {
    mm_metrics_series *s = NULL;
    size_t len = strlen(name);
    if (len >= sizeof s->name)
        len = sizeof s->name - 1;
    HASH_FIND(hh, mx->by_name, name, len, s);
    if (s)
        return s;
    s = mm_calloc(1, sizeof *s);
    if (!s)
        return NULL;
    memcpy(s->name, name, len);
    s->name[len] = '\0';
    s->task_type = type;
    mm_hash_oom = 0;
    HASH_ADD(hh, mx->by_name, name[0], len, s);
    if (mm_hash_oom) {
        mm_free(s);
        return NULL;
    }
    return s;
}

void mm_metrics_close(mm_metrics *mx) {
    mm_metrics_series *s, *tmp;
    HASH_ITER(hh, mx->by_name, s, tmp) {
        HASH_DEL(mx->by_name, s);
        mm_free(s);
    }
}

void mm_metrics_hist_observe(mm_hist *h, const double *bounds, int nb, double v) {
    int i = 0;
    while (i < nb && v > bounds[i])
        i++;
    h->bucket[i]++;
    h->count++;
    h->sum += v;
}

void mm_metrics_on_complete(mm_metrics_series *s, int st, int err, uint64_t tokens_in,
                            uint64_t tokens_out) {
    if (!s)
        return;
    mm_outcome o;
    switch (st) {
    case MM_TS_DONE: o = MM_OUT_SUCCESS; break;
    case MM_TS_CANCELLED: o = MM_OUT_CANCELLED; break;
    case MM_TS_DROPPED: o = MM_OUT_DROPPED; break;
    default:
        o = err == MM_ETIMEDOUT ? MM_OUT_TIMED_OUT
            : err == MM_ESHUTDOWN ? MM_OUT_SHUTDOWN
                                  : MM_OUT_FAILED;
        break;
    }
    s->tasks[o]++;
    s->tokens_in += tokens_in;
    s->tokens_out += tokens_out;
}

void mm_metrics_on_dequeue(mm_metrics_series *s, double wait_s) {
    if (s)
        mm_metrics_hist_observe(&s->queue_wait, mm_metrics_lat_bounds, MM_MET_LAT_NB, wait_s);
}

void mm_metrics_on_batch(mm_metrics_series *s, size_t n_items, double run_s) {
    if (!s)
        return;
    s->batches++;
    s->items += n_items;
    mm_metrics_hist_observe(&s->run, mm_metrics_lat_bounds, MM_MET_LAT_NB, run_s);
    mm_metrics_hist_observe(&s->batch, mm_metrics_batch_bounds, MM_MET_BATCH_NB,
                            (double)n_items);
}

void mm_metrics_on_load(mm_metrics_series *s, int ok, double load_s) {
    if (!s)
        return;
    if (ok)
        s->loads_ok++;
    else
        s->loads_failed++;
    mm_metrics_hist_observe(&s->load, mm_metrics_lat_bounds, MM_MET_LAT_NB, load_s);
}

void mm_metrics_on_release(mm_metrics_series *s, mm_release_reason r) {
    if (s && (unsigned)r < MM_REL_N)
        s->releases[r]++;
}

void mm_metrics_on_reject(mm_metrics_series *s) {
    if (s)
        s->tasks[MM_OUT_REJECTED]++;
}

/* ---- snapshot ---- */

static void gauges_of(const mm_model *m, mm_metrics_gauges *g) {
    snprintf(g->name, sizeof g->name, "%s", m->name);
    g->queue_depth = m->qlen;
    g->in_flight = m->in_flight;
    g->workers = m->n_workers;
    g->workers_loaded = m->n_loaded;
}

static size_t memory_of(const mm_model *m, mm_metrics_memory *out) {
    size_t k = 0;
    for (int i = 0; i < m->n_workers; i++) {
        const mm_worker *w = &m->workers[i];
        if (!w->memory_bytes)
            continue;
        size_t j = 0;
        while (j < k && strcmp(out[j].device, w->dev.name) != 0)
            j++;
        if (j == k) {
            snprintf(out[k].name, sizeof out[k].name, "%s", m->name);
            snprintf(out[k].device, sizeof out[k].device, "%s", w->dev.name);
            out[k].bytes = 0;
            k++;
        }
        out[j].bytes += w->memory_bytes;
    }
    return k;
}

int mm_engine_metrics(mm_engine_t *e, mm_metrics_snapshot *out) {
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&e->mu);
    size_t ns = HASH_COUNT(e->metrics.by_name), nm = 0, nw = 0;
    for (mm_model *m = e->models; m; m = m->hh.next, nm++)
        nw += (size_t)m->n_workers;
    for (mm_model *m = e->retiring; m; m = m->retire_next, nm++)
        nw += (size_t)m->n_workers;
    out->series = mm_calloc(ns ? ns : 1, sizeof *out->series);
    out->gauges = mm_calloc(nm ? nm : 1, sizeof *out->gauges);
    out->memory = mm_calloc(nw ? nw : 1, sizeof *out->memory);
    if (!out->series || !out->gauges || !out->memory) {
        pthread_mutex_unlock(&e->mu);
        mm_metrics_snapshot_free(out);
        return MM_ENOMEM;
    }
    for (mm_metrics_series *s = e->metrics.by_name; s; s = s->hh.next) {
        out->series[out->n_series] = *s;
        memset(&out->series[out->n_series].hh, 0, sizeof s->hh);
        out->n_series++;
    }
    for (int pass = 0; pass < 2; pass++) {
        for (mm_model *m = pass ? e->retiring : e->models; m;
             m = pass ? m->retire_next : m->hh.next) {
            if (pass == 0 || m->state != MM_MS_RELEASED)
                gauges_of(m, &out->gauges[out->n_gauges++]);
            out->n_memory += memory_of(m, out->memory + out->n_memory);
        }
    }
    pthread_mutex_unlock(&e->mu);
    return 0;
}

void mm_metrics_snapshot_free(mm_metrics_snapshot *s) {
    mm_free(s->series);
    mm_free(s->gauges);
    mm_free(s->memory);
    memset(s, 0, sizeof *s);
}
