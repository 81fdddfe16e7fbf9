/* mm_memory.c: the memory policy: budgets, fit-then-evict, verified
 * release, out-of-memory recovery.
 *
 * Every device is a slot (0: the CPU, 1 + i: GPU i) with a budget, a
 * fraction of its total (memory_fraction), and `used`, the sum of what the
 * models not yet reaped hold against it.  A model reserves its estimate
 * (backend->estimate: weights once per CPU, plus an activation bound per
 * worker) before any worker loads, under engine->mu, so two loads never
 * count the same free memory; the reservation grows to the measured
 * footprint after load and is given back when the model is reaped, i.e.
 * after its workers unloaded and the release was verified.
 *
 * A load that does not fit evicts idle models on that slot (nothing queued
 * or running, not pinned) least recently used first; with device="gpu" it
 * first picks the GPUs needing the fewest evictions.  The evicting load
 * reserves at once (the slot may run over budget for a moment) and waits
 * until the models it evicted are gone; another load that needs to evict
 * on the same slot meanwhile waits its turn (slot->evicting).  A load that
 * cannot fit until busy models go idle waits (waiting_for_memory) up to
 * queue_timeout; one that cannot fit even if every unpinned model left
 * fails at once with INSUFFICIENT_MEMORY naming the device, the need, the
 * free memory and the holders.
 *
 * Simulated GPUs (fake_gpus) have no memory of their own: the accounting is
 * their truth, so every rule here runs in CI.  The CPU is measured (the
 * process's resident set), real GPUs through NVML's free memory.
 */
#define _GNU_SOURCE
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "mm_alloc.h"
#include "mm_engine_internal.h"
#include "mm_err.h"
#include "mm_log.h"
#include "mm_time.h"

#ifdef __GLIBC__
#include <malloc.h>
#endif

#define MIB(x) ((double)(x) / 1048576.0)
#define RELEASE_WAIT_NS (5LL * 1000000000LL)
#define MAX_VICTIMS 64

typedef struct mm_release_rec {
    UT_hash_handle hh;
    mm_release_record r; /* keyed by r.model_name */
} mm_release_rec;

/* ---- slots ---- */

void mm__mem_init(mm_engine_t *e) {
    double frac = e->params.memory_fraction;
    if (!(frac > 0 && frac <= 1))
        frac = 0.9;
    mm_memdev *c = &e->mem[0];
    memset(c, 0, sizeof *c);
    snprintf(c->name, sizeof c->name, "cpu");
    c->gpu = -1;
    c->total = e->params.cpu_total_bytes ? e->params.cpu_total_bytes : mm_devices_ram_total();
    c->budget = (uint64_t)((double)c->total * frac);
    for (int i = 0; i < e->gpus.n; i++) {
        mm_memdev *d = &e->mem[1 + i];
        memset(d, 0, sizeof *d);
        snprintf(d->name, sizeof d->name, "cuda:%d", e->gpus.gpus[i].index);
        d->is_gpu = 1;
        d->gpu = i;
        d->total = e->gpus.gpus[i].total_bytes;
        d->budget = (uint64_t)((double)d->total * frac);
    }
    e->n_mem = 1 + e->gpus.n;
}

void mm__mem_free(mm_engine_t *e) {
    mm_release_rec *r, *tmp;
    HASH_ITER(hh, e->releases, r, tmp) {
        HASH_DEL(e->releases, r);
        mm_free(r);
    }
}

int mm__mem_slot(const mm_engine_t *e, const mm_device *d) {
    if (!d->is_gpu)
        return 0;
    for (int i = 0; i < e->gpus.n; i++)
        if (e->gpus.gpus[i].index == d->index)
            return 1 + i;
    return 0;
}

static int slot_simulated(const mm_engine_t *e, int s) { return s > 0 && e->gpus.simulated; }

void mm__mem_changed(mm_engine_t *e) {
    if (e->mem_waiters)
        pthread_cond_broadcast(&e->mem_cv);
}

const char *mm__mem_last_reason(mm_engine_t *e, const char *name) {
    mm_release_rec *r = NULL;
    HASH_FIND_STR(e->releases, name, r);
    return r ? r->r.reason : NULL;
}

/* ---- the plan ---- */

static int evictable(const mm_model *c) {
    return c->in_registry && c->state == MM_MS_READY && c->qlen == 0 && c->in_flight == 0 &&
           c->keep_alive_ms >= 0 && c->fit_state == 1 && c->n_load_done == c->n_workers;
}

static int is_victim(mm_model *const *v, int nv, const mm_model *c) {
    for (int i = 0; i < nv; i++)
        if (v[i] == c)
            return 1;
    return 0;
}

/* Memory of slot s that models already retiring will give back. */
static uint64_t retiring_on(const mm_engine_t *e, int s) {
    uint64_t sum = 0;
    for (const mm_model *r = e->retiring; r; r = r->retire_next)
        sum += r->resv[s];
    return sum;
}

/* The least recently used evictable model holding memory on slot s (any
 * slot when s < 0), not m, not already a victim. */
static mm_model *lru_candidate(mm_engine_t *e, const mm_model *m, int s, mm_model *const *v,
                               int nv) {
    mm_model *best = NULL;
    for (mm_model *c = e->models; c; c = c->hh.next) {
        if (c == m || !evictable(c) || is_victim(v, nv, c))
            continue;
        if (s >= 0 && c->resv[s] == 0)
            continue;
        if (!best || c->last_used_ns < best->last_used_ns)
            best = c;
    }
    return best;
}

enum { PLAN_FIT = 0, PLAN_WAIT = 1, PLAN_NEVER = 2 };

/* Lists who holds slot s, for INSUFFICIENT_MEMORY. */
static void holders(mm_engine_t *e, const mm_model *m, int s, char *buf, size_t cap) {
    size_t off = 0;
    int k = 0;
    buf[0] = '\0';
    for (int pass = 0; pass < 2; pass++) {
        for (mm_model *c = pass ? e->retiring : e->models; c;
             c = pass ? c->retire_next : c->hh.next) {
            if (c == m || c->resv[s] == 0 || off + 80 >= cap)
                continue;
            const char *why = pass                              ? "releasing"
                              : c->keep_alive_ms < 0             ? "pinned"
                              : c->state != MM_MS_READY          ? "loading"
                              : (c->qlen || c->in_flight)        ? "busy"
                                                                 : "idle";
            off += (size_t)snprintf(buf + off, cap - off, "%s%.120s (%.0f MiB, %s)",
                                    k++ ? ", " : "", c->name, MIB(c->resv[s]), why);
        }
    }
    if (!k)
        snprintf(buf, cap, "no other model");
}

static void never_msg(mm_engine_t *e, const mm_model *m, int s, uint64_t need, const char *tail,
                      char *err, size_t errlen) {
    const mm_memdev *d = &e->mem[s];
    char who[600];
    holders(e, m, s, who, sizeof who);
    int64_t avail = (int64_t)d->budget - (int64_t)d->used;
    snprintf(err, errlen,
             "not enough memory on %s for \"%.150s\": it needs %.0f MiB (weights %.0f + "
             "activations %.0f per worker), %.0f MiB is free of a %.0f MiB budget "
             "(memory_fraction of %.0f MiB); held by: %s%s",
             d->name, m->name, MIB(need), MIB(m->fp.weights_bytes), MIB(m->fp.activation_bytes),
             avail > 0 ? MIB(avail) : 0.0, MIB(d->budget), MIB(d->total), who, tail);
}

/* Plans the load of m with need[] per slot: fills victims and returns
 * PLAN_FIT, or PLAN_WAIT / PLAN_NEVER (err filled for NEVER and WAIT). */
static int plan(mm_engine_t *e, mm_model *m, const uint64_t *need, mm_model **v, int *nvp,
                int *slot_of_victims, char *err, size_t errlen) {
    int nv = 0, verdict = PLAN_FIT;
    for (int s = 0; s < e->n_mem; s++) {
        if (!need[s])
            continue;
        mm_memdev *d = &e->mem[s];
        int64_t avail = (int64_t)d->budget - (int64_t)d->used;
        if ((int64_t)need[s] <= avail)
            continue;
        int64_t coming = avail + (int64_t)retiring_on(e, s);
        for (int i = 0; i < nv; i++)
            coming += (int64_t)v[i]->resv[s];
        if ((int64_t)need[s] <= coming) {
            if (verdict == PLAN_FIT)
                verdict = PLAN_WAIT; /* memory is on its way back */
            never_msg(e, m, s, need[s], "; waiting for released models to unload", err, errlen);
            continue;
        }
        if (d->evicting && d->evicting != m) {
            if (verdict == PLAN_FIT)
                verdict = PLAN_WAIT; /* another load is evicting here: take turns */
            never_msg(e, m, s, need[s], "; another load is evicting on this device", err,
                      errlen);
            continue;
        }
        mm_model *c;
        while ((int64_t)need[s] > coming && nv < MAX_VICTIMS &&
               (c = lru_candidate(e, m, s, v, nv))) {
            slot_of_victims[nv] = s;
            v[nv++] = c;
            coming += (int64_t)c->resv[s];
        }
        if ((int64_t)need[s] > coming) {
            uint64_t pinned = 0;
            for (mm_model *h = e->models; h; h = h->hh.next)
                if (h != m && h->keep_alive_ms < 0)
                    pinned += h->resv[s];
            if (need[s] + pinned > d->budget) {
                never_msg(e, m, s, need[s], "", err, errlen);
                return PLAN_NEVER;
            }
            verdict = PLAN_WAIT; /* busy or loading models may go idle */
            never_msg(e, m, s, need[s], "; waiting for busy models to go idle", err, errlen);
        }
    }
    int cap = e->params.max_loaded_models;
    if (cap > 0) {
        int count = 0, pinned = 0;
        for (mm_model *c = e->models; c; c = c->hh.next)
            if (c != m && c->fit_state == 1 && !is_victim(v, nv, c)) {
                count++;
                pinned += c->keep_alive_ms < 0;
            }
        mm_model *c;
        while (count >= cap && nv < MAX_VICTIMS && (c = lru_candidate(e, m, -1, v, nv))) {
            slot_of_victims[nv] = -1;
            v[nv++] = c;
            count--;
        }
        if (count >= cap) {
            if (pinned >= cap) {
                snprintf(err, errlen,
                         "cannot load \"%.150s\": max_loaded_models is %d and %d pinned model(s) "
                         "(keep_alive < 0) are loaded",
                         m->name, cap, pinned);
                return PLAN_NEVER;
            }
            if (verdict == PLAN_FIT)
                snprintf(err, errlen,
                         "cannot load \"%.150s\": max_loaded_models (%d) models are loaded and "
                         "none of them went idle",
                         m->name, cap);
            verdict = PLAN_WAIT;
        }
    }
    *nvp = nv;
    return verdict;
}

/* What m needs per slot with its current placement. */
static void needs(mm_engine_t *e, const mm_model *m, uint64_t *need) {
    memset(need, 0, sizeof(uint64_t) * MM_MEM_SLOTS);
    int cpu_workers = 0;
    uint64_t one = m->fp.weights_bytes + m->fp.activation_bytes;
    for (int k = 0; k < m->n_workers; k++) {
        int s = mm__mem_slot(e, &m->placement.devs[k]);
        if (s == 0)
            cpu_workers++;
        else
            need[s] += one;
    }
    if (cpu_workers && one)
        need[0] = m->fp.weights_bytes + m->fp.activation_bytes * (uint64_t)cpu_workers;
}

/* device="gpu": the GPUs where m fits with the fewest evictions (then the
 * most free), one worker each. */
static void choose_gpus(mm_engine_t *e, mm_model *m) {
    if (!m->placement.devs[0].is_gpu || strncmp(m->device_request, "cuda:", 5) == 0 ||
        e->gpus.n < 2)
        return;
    uint64_t one = m->fp.weights_bytes + m->fp.activation_bytes;
    if (!one)
        return;
    int order[MM_MAX_GPUS], cost[MM_MAX_GPUS];
    int64_t free_[MM_MAX_GPUS];
    for (int i = 0; i < e->gpus.n; i++) {
        int s = 1 + i;
        mm_memdev *d = &e->mem[s];
        int64_t avail = (int64_t)d->budget - (int64_t)d->used;
        int64_t coming = avail + (int64_t)retiring_on(e, s);
        int n = 0;
        mm_model *v[MAX_VICTIMS];
        mm_model *c;
        while ((int64_t)one > coming && n < MAX_VICTIMS && (c = lru_candidate(e, m, s, v, n))) {
            v[n++] = c;
            coming += (int64_t)c->resv[s];
        }
        order[i] = i;
        cost[i] = (int64_t)one > coming ? 100000 : n;
        free_[i] = avail;
    }
    for (int i = 1; i < e->gpus.n; i++) { /* insertion sort: fewest evictions, most free */
        int x = order[i], j = i - 1;
        while (j >= 0 && (cost[order[j]] > cost[x] ||
                          (cost[order[j]] == cost[x] && free_[order[j]] < free_[x]))) {
            order[j + 1] = order[j];
            j--;
        }
        order[j + 1] = x;
    }
    for (int k = 0; k < m->n_workers && k < e->gpus.n; k++) {
        mm_device *d = &m->placement.devs[k];
        int idx = e->gpus.gpus[order[k]].index;
        d->index = idx;
        snprintf(d->name, sizeof d->name, "cuda:%d", idx);
        m->workers[k].dev = *d;
    }
}

/* Slots of m over budget while models retiring there may still give back,
 * or models it evicted not yet gone (their memory may not be accounted). */
static int must_wait_for_release(mm_engine_t *e, const mm_model *m, const uint64_t *gens,
                                 int ng) {
    for (int s = 0; s < e->n_mem; s++)
        if (m->resv[s] && e->mem[s].used > e->mem[s].budget && retiring_on(e, s))
            return 1;
    for (const mm_model *r = e->retiring; r; r = r->retire_next)
        for (int i = 0; i < ng; i++)
            if (r->generation == gens[i])
                return 1;
    return 0;
}

static void timed_wait(mm_engine_t *e, int64_t deadline_ns) {
    struct timespec ts = mm_ns_to_timespec(deadline_ns);
    e->mem_waiters++;
    pthread_cond_timedwait(&e->mem_cv, &e->mu, &ts);
    e->mem_waiters--;
}

int mm__mem_fit(mm_engine_t *e, mm_model *m, char *err, size_t errlen) {
    mm_device dev0 = m->placement.devs[0];
    mm_footprint fp = {0, 0};
    if (m->vt->estimate) {
        char eerr[256] = "";
        pthread_mutex_unlock(&e->mu);
        int rc = m->vt->estimate(&m->spec, &dev0, &fp, eerr, sizeof eerr);
        pthread_mutex_lock(&e->mu);
        if (rc < 0) {
            mm_log(MM_LOG_WARNING, "model %s: no memory estimate (%s); loading without one",
                   m->name, eerr[0] ? eerr : mm_strerror(rc));
            memset(&fp, 0, sizeof fp);
        }
    }
    m->fp = fp;
    int64_t start = mm_now_ns();
    int64_t qt = e->params.queue_timeout_ms * 1000000LL;
    int64_t deadline = qt > 0 ? start + qt : INT64_MAX;
    uint64_t need[MM_MEM_SLOTS];
    mm_model *v[MAX_VICTIMS];
    int vslot[MAX_VICTIMS];
    int nv = 0;
    for (;;) {
        if (m->state == MM_MS_FAILED || (m->state == MM_MS_DRAINING && m->qlen == 0)) {
            m->waiting_mem = 0;
            return 1;
        }
        choose_gpus(e, m);
        needs(e, m, need);
        int verdict = plan(e, m, need, v, &nv, vslot, err, errlen);
        if (verdict == PLAN_FIT)
            break;
        if (verdict == PLAN_NEVER) {
            m->waiting_mem = 0;
            return MM_ENOSPACE;
        }
        int64_t now = mm_now_ns();
        if (now >= deadline) {
            m->waiting_mem = 0;
            size_t len = strlen(err);
            snprintf(err + len, errlen - len, " (gave up after %.1f s, queue_timeout)",
                     (now - start) / 1e9);
            return MM_ENOSPACE;
        }
        if (!m->waiting_mem) {
            m->waiting_mem = 1;
            mm_log(MM_LOG_INFO, "model %s is waiting for memory: %s", m->name, err);
        }
        /* Wake at least every second: a pinned model's keep_alive may change. */
        int64_t wake = now + 1000000000LL;
        timed_wait(e, wake < deadline ? wake : deadline);
    }
    err[0] = '\0';
    char why[160];
    snprintf(why, sizeof why, "evicted_for=%.140s", m->name);
    uint64_t gens[MAX_VICTIMS];
    for (int i = 0; i < nv; i++) {
        gens[i] = v[i]->generation;
        int s = vslot[i] >= 0 ? vslot[i] : 0;
        mm_log(MM_LOG_INFO, "evicting idle model %s (%.0f MiB on %s, idle %.1f s) to load %s",
               v[i]->name, MIB(v[i]->resv[s]), e->mem[s].name,
               (mm_now_ns() - v[i]->last_used_ns) / 1e9, m->name);
        mm__mem_retire(e, v[i], why);
        if (vslot[i] >= 0)
            e->mem[vslot[i]].evicting = m;
    }
    for (int s = 0; s < e->n_mem; s++) {
        m->resv[s] = need[s];
        e->mem[s].used += need[s];
    }
    while (must_wait_for_release(e, m, gens, nv) && m->state != MM_MS_FAILED) {
        m->waiting_mem = 1;
        timed_wait(e, mm_now_ns() + 1000000000LL);
    }
    m->waiting_mem = 0;
    for (int s = 0; s < e->n_mem; s++)
        if (e->mem[s].evicting == m)
            e->mem[s].evicting = NULL;
    mm__mem_changed(e);
    return 0;
}

int mm__mem_evict_for_oom(mm_engine_t *e, mm_model *m, const mm_device *dev) {
    int s = mm__mem_slot(e, dev);
    uint64_t gens[MAX_VICTIMS];
    int n = 0;
    mm_model *c;
    mm_model *none[1] = {NULL};
    while (n < MAX_VICTIMS && (c = lru_candidate(e, m, s, none, 0))) {
        gens[n++] = c->generation;
        mm_log(MM_LOG_WARNING, "out of memory loading %s on %s: evicting idle model %s", m->name,
               e->mem[s].name, c->name);
        mm__mem_retire(e, c, "oom");
    }
    int64_t deadline = mm_now_ns() + 2 * RELEASE_WAIT_NS;
    for (;;) {
        int left = 0;
        for (mm_model *r = e->retiring; r; r = r->retire_next)
            for (int i = 0; i < n; i++)
                left += r->generation == gens[i];
        if (!left || mm_now_ns() >= deadline)
            break;
        timed_wait(e, deadline);
    }
    return n;
}

/* ---- measuring ---- */

uint64_t mm__mem_probe(mm_engine_t *e, const mm_device *dev) {
    int s = mm__mem_slot(e, dev);
    if (s == 0)
        return mm_devices_rss();
    uint64_t f = 0;
    if (!slot_simulated(e, s) && mm_devices_gpu_free(&e->gpus.gpus[s - 1], &f) == 0)
        return f;
    return 0;
}

void mm__mem_loaded(mm_engine_t *e, mm_model *m, const mm_device *dev, uint64_t before,
                    uint64_t after, uint64_t reported) {
    int s = mm__mem_slot(e, dev);
    uint64_t measured = 0;
    m->mem_reported[s] += reported;
    if (s == 0) {
        /* CPU workers share one copy of the weights: the first worker to
         * finish measures the resident growth of its load; later ones add
         * what their backend says it holds of its own (0 for a shared
         * copy), as their window also sees the first one's batches. */
        if (m->mem_dev[0] == 0)
            measured = after > before ? after - before : 0;
        if (!measured)
            measured = reported;
    } else if (!slot_simulated(e, s)) {
        measured = before > after ? before - after : 0; /* the GPU's free memory fell */
        if (!measured)
            measured = reported;
    } else {
        measured = reported; /* a simulated GPU holds what the backend says */
    }
    m->mem_dev[s] += measured;
    if (m->mem_dev[s] > m->resv[s]) {
        e->mem[s].used += m->mem_dev[s] - m->resv[s];
        m->resv[s] = m->mem_dev[s];
    }
    uint64_t total = 0;
    for (int i = 0; i < e->n_mem; i++)
        total += m->mem_dev[i];
    m->memory_bytes = total;
}

void mm__mem_trim(void) {
#ifdef __GLIBC__
    /* glibc keeps freed heap (every arena's free chunks, the main heap's
     * top) resident until a trim: 85-180 MiB after releasing MiniLM from a
     * batch of long texts, 35-100 MiB of an idle model's last activations. */
    malloc_trim(0);
#endif
}

int mm__mem_idle_trim(mm_engine_t *e) {
    if (e->heap_trimming)
        return 1; /* the heap is the process's: one trim serves every worker */
    if (e->cpu_loads)
        return 0;
    e->heap_trimming = 1;
    pthread_mutex_unlock(&e->mu);
    mm__mem_trim();
    pthread_mutex_lock(&e->mu);
    e->heap_trimming = 0;
    e->idle_trims++;
    mm__mem_changed(e); /* a CPU load waiting for the trim to end */
    return 1;
}

uint64_t mm__mem_unload(mm_engine_t *e, mm_model *m, const mm_device *dev, void *state) {
    int s = mm__mem_slot(e, dev);
    uint64_t before = mm__mem_probe(e, dev);
    m->vt->unload(state);
    mm__mem_trim(); /* a GPU model's host-side heap too */
    if (s == 0) {
        uint64_t after = mm_devices_rss();
        return before > after ? before - after : 0;
    }
    if (slot_simulated(e, s) || !before)
        return 0; /* the reaper counts the reservation */
    /* A real GPU: the backend emptied its caching allocator; the driver's
     * free memory may lag behind, so wait (bounded) until it is back.  The
     * first load of a process also paid for the CUDA context, which stays:
     * expect no more than the backend said it holds. */
    pthread_mutex_lock(&e->mu);
    uint64_t expect = m->mem_dev[s];
    if (m->mem_reported[s] && m->mem_reported[s] < expect)
        expect = m->mem_reported[s];
    expect /= (uint64_t)(m->n_workers > 0 ? m->n_workers : 1);
    pthread_mutex_unlock(&e->mu);
    int64_t deadline = mm_now_ns() + RELEASE_WAIT_NS;
    uint64_t now_free = before;
    for (;;) {
        mm_devices_gpu_free(&e->gpus.gpus[s - 1], &now_free);
        uint64_t got = now_free > before ? now_free - before : 0;
        if (got * 100 >= expect * 95 || mm_now_ns() >= deadline) {
            if (got * 100 < expect * 95)
                mm_log(MM_LOG_WARNING,
                       "model %s on %s: %.0f MiB of %.0f MiB came back within 5 s of unloading",
                       m->name, e->mem[s].name, MIB(got), MIB(expect));
            return got;
        }
        struct timespec ts = {0, 20 * 1000000L};
        nanosleep(&ts, NULL);
    }
}

/* ---- release ---- */

void mm__mem_retire(mm_engine_t *e, mm_model *m, const char *reason) {
    mm_release_reason r = !strcmp(reason, "idle")       ? MM_REL_IDLE
                          : !strcmp(reason, "shutdown") ? MM_REL_SHUTDOWN
                          : !strcmp(reason, "oom")      ? MM_REL_OOM
                          : !strncmp(reason, "evicted_for=", 12) ? MM_REL_EVICTED
                                                                 : MM_REL_MANUAL;
    mm__model_count_release(m, r);
    if (m->in_registry) {
        snprintf(m->release_reason, sizeof m->release_reason, "%s", reason);
        m->retire_ns = mm_now_ns();
    }
    mm__model_retire(e, m, MM_MS_DRAINING);
    mm__mem_changed(e); /* a load waiting for memory may be this model's own */
}

void mm__mem_reaped(mm_engine_t *e, mm_model *m) {
    int held = 0;
    for (int s = 0; s < e->n_mem; s++) {
        if (!m->resv[s])
            continue;
        held = 1;
        if (slot_simulated(e, s))
            m->released_bytes += m->resv[s];
        e->mem[s].used -= m->resv[s] < e->mem[s].used ? m->resv[s] : e->mem[s].used;
        m->resv[s] = 0;
    }
    if (held || m->fit_state == 1) {
        if (!m->release_reason[0])
            snprintf(m->release_reason, sizeof m->release_reason, "%s",
                     m->load_err ? "failed" : "manual");
        double secs = m->retire_ns ? (mm_now_ns() - m->retire_ns) / 1e9 : 0;
        mm_release_rec *r = NULL;
        HASH_FIND_STR(e->releases, m->name, r);
        if (!r && strlen(m->name) < sizeof r->r.model_name) {
            r = mm_calloc(1, sizeof *r);
            if (r) {
                snprintf(r->r.model_name, sizeof r->r.model_name, "%s", m->name);
                mm_hash_oom = 0;
                HASH_ADD_STR(e->releases, r.model_name, r);
                if (mm_hash_oom) {
                    mm_free(r);
                    r = NULL;
                }
            }
        }
        if (r) {
            snprintf(r->r.reason, sizeof r->r.reason, "%s", m->release_reason);
            r->r.released_bytes = m->released_bytes;
            r->r.seconds = secs;
            r->r.at = mm_wall_s();
        }
        mm_log(MM_LOG_INFO, "model %s released (%s): %.1f MiB back in %.3f s", m->name,
               m->release_reason, MIB(m->released_bytes), secs);
        char extras[256];
        snprintf(extras, sizeof extras,
                 "{\"released\":true,\"released_bytes\":%" PRIu64
                 ",\"release_seconds\":%.6f,\"reason\":\"%s\"}",
                 m->released_bytes, secs,
                 strncmp(m->release_reason, "evicted_for=", 12) ? m->release_reason : "evicted");
        for (mm_task_t *t = m->waiters; t; t = t->next)
            if (t->kind == MM_KIND_RELEASE && !t->extras)
                t->extras = mm_strdup(extras);
    }
    if (e->mem_waiters)
        pthread_cond_broadcast(&e->mem_cv);
}

/* ---- out of memory while running ---- */

/* Clears a task's result and error so that it can run again; extras stay. */
static void task_reset(mm_task_t *t) {
    mm_free(t->vecs);
    t->vecs = NULL;
    t->dim = 0;
    if (t->texts)
        for (size_t i = 0; i < t->n_texts; i++)
            mm_free(t->texts[i]);
    mm_free(t->texts);
    mm_free(t->text_lens);
    t->texts = NULL;
    t->text_lens = NULL;
    t->n_texts = t->per_item = 0;
    t->rkind = MM_RESULT_NONE;
    t->err_code = 0;
    mm_free(t->err_msg);
    t->err_msg = NULL;
    t->tokens_in = t->tokens_out = 0;
    if (t->item_tokens)
        memset(t->item_tokens, 0, t->n_items * sizeof *t->item_tokens);
}

static void run_split(mm_engine_t *e, mm_model *m, void *st, mm_task_t **b, size_t n, int depth) {
    m->vt->run(st, b, n);
    if (n < 2)
        return;
    size_t k = 0; /* move the tasks that ran out of memory to the front */
    for (size_t i = 0; i < n; i++)
        if (b[i] && b[i]->err_code == MM_ENOMEM) { /* NULL: finished early (mm_worker_finish) */
            mm_task_t *t = b[i];
            b[i] = b[k];
            b[k++] = t;
        }
    if (!k)
        return;
    if (depth == 0)
        mm_log(MM_LOG_WARNING,
               "model %s ran out of memory on a batch of %zu task(s): retrying them in halves",
               m->name, n);
    for (size_t i = 0; i < k; i++)
        task_reset(b[i]);
    size_t half = k / 2 ? k / 2 : 1;
    run_split(e, m, st, b, half, depth + 1);
    if (k > half)
        run_split(e, m, st, b + half, k - half, depth + 1);
}

void mm__mem_run(mm_engine_t *e, mm_model *m, void *state, mm_task_t **batch, size_t n) {
    run_split(e, m, state, batch, n, 0);
}

/* ---- snapshots ---- */

int mm_engine_devices(mm_engine_t *e, mm_device_status **out, size_t *n) {
    *out = NULL;
    *n = 0;
    mm_device_status *arr = mm_calloc((size_t)MM_MEM_SLOTS, sizeof *arr);
    if (!arr)
        return MM_ENOMEM;
    pthread_mutex_lock(&e->mu);
    int k = e->n_mem;
    for (int s = 0; s < k; s++) {
        mm_device_status *d = &arr[s];
        mm_memdev *md = &e->mem[s];
        snprintf(d->name, sizeof d->name, "%s", md->name);
        if (md->gpu >= 0)
            snprintf(d->label, sizeof d->label, "%s", e->gpus.gpus[md->gpu].name);
        d->simulated = slot_simulated(e, s);
        d->total_bytes = md->total;
        d->budget_bytes = md->budget;
        d->used_bytes = md->used;
        d->free_bytes = md->budget > md->used ? md->budget - md->used : 0;
        for (int pass = 0; pass < 2; pass++)
            for (mm_model *c = pass ? e->retiring : e->models; c;
                 c = pass ? c->retire_next : c->hh.next)
                if (c->resv[s] && d->n_models < 16)
                    snprintf(d->models[d->n_models++], sizeof d->models[0], "%s", c->name);
    }
    pthread_mutex_unlock(&e->mu);
    for (int s = 0; s < k; s++) { /* a real device's own free memory may be lower */
        uint64_t f = 0;
        if (s == 0)
            f = mm_devices_ram_available();
        else if (!arr[s].simulated && mm_devices_gpu_free(&e->gpus.gpus[s - 1], &f) < 0)
            f = arr[s].free_bytes;
        if (s == 0 || !arr[s].simulated)
            if (f < arr[s].free_bytes)
                arr[s].free_bytes = f;
    }
    *out = arr;
    *n = (size_t)k;
    return 0;
}

int mm_engine_releases(mm_engine_t *e, mm_release_record **out, size_t *n) {
    *out = NULL;
    *n = 0;
    pthread_mutex_lock(&e->mu);
    size_t count = HASH_COUNT(e->releases);
    mm_release_record *arr = mm_calloc(count ? count : 1, sizeof *arr);
    if (!arr) {
        pthread_mutex_unlock(&e->mu);
        return MM_ENOMEM;
    }
    size_t k = 0;
    for (mm_release_rec *r = e->releases; r; r = r->hh.next)
        arr[k++] = r->r;
    pthread_mutex_unlock(&e->mu);
    *out = arr;
    *n = k;
    return 0;
}
