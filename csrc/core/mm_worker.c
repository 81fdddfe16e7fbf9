/* mm_worker.c: the worker thread: load the backend on its device, then
 * take batches from the model's queue until the model is released.
 *
 * A worker waits for any older instance of the same model name to finish
 * unloading before it loads (release-then-reload never holds two copies).
 * It pops as many queued tasks as fit the batch budget (items and backend
 * cost units), so a burst of small requests becomes one forward pass, and
 * runs the backend with no lock held.  A load failure fails everything the
 * model holds with MODEL_LOAD_FAILED and retires the entry, so the next
 * task starts over with a fresh one.  A task larger than one batch runs in
 * chunks, one batch from the queue between two chunks (mm_chunk.c).  Idle
 * for a second after its load or its last batch, a worker gives the freed
 * heap back to the system once (mm__mem_idle_trim), never between batches
 * that follow one another.
 *
 * Continuous batching: a backend's run() may take more queued tasks of its
 * model (mm_worker_take_more) and finish tasks early (mm_worker_finish), so
 * a decoder-only generation keeps one running batch that requests join and
 * leave between decoding steps.  The worker then owns a growing batch
 * (w->cur); a task finished early leaves a NULL slot there, and whatever
 * run() left unfinished is finished when it returns, exactly once either
 * way (a stopped task with its stop code).
 */
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "mm_alloc.h"
#include "mm_engine_internal.h"
#include "mm_err.h"
#include "mm_log.h"
#include "mm_time.h"

#define MAX_BATCH_TASKS 1024

static int older_instance_retiring(mm_engine_t *e, mm_model *m) {
    for (mm_model *r = e->retiring; r; r = r->retire_next)
        if (r->generation < m->generation && r->state != MM_MS_RELEASED &&
            !strcmp(r->name, m->name))
            return 1;
    return 0;
}

static size_t task_cost(const mm_backend_vtable *vt, void *st, const mm_task_t *t) {
    if (vt->cost)
        return vt->cost(st, t);
    return t->total_bytes / 4 + 2 * t->n_items;
}

/* Pops the next batch into out (capacity cap); engine->mu held.  A task
 * that must run in chunks ends the batch; at the head of the queue it
 * becomes *big when big is non-NULL (this worker holds none yet). */
static size_t pop_batch(mm_engine_t *e, mm_model *m, void *st, mm_task_t **out, size_t cap,
                        mm_task_t **big) {
    size_t n = 0, items = 0, cost = 0;
    int64_t now = mm_now_ns();
    while (m->qhead && n < cap) {
        mm_task_t *t = m->qhead;
        if (mm__chunk_wanted(m, t)) {
            if (n == 0 && big) {
                mm__queue_pop(e, m);
                mm_metrics_on_dequeue(m->met, (double)(now - t->enqueue_ns) / 1e9);
                t->status = MM_TS_RUNNING;
                t->chunked = 1;
                mm__running_add(e, t);
                m->in_flight++;
                *big = t;
            }
            break;
        }
        size_t c = task_cost(m->vt, st, t);
        if (n > 0 && ((m->batch_items && items + t->n_items > m->batch_items) ||
                      (m->batch_tokens && cost + c > m->batch_tokens)))
            break;
        mm__queue_pop(e, m);
        mm_metrics_on_dequeue(m->met, (double)(now - t->enqueue_ns) / 1e9);
        t->status = MM_TS_RUNNING;
        mm__running_add(e, t);
        out[n++] = t;
        items += t->n_items;
        cost += c;
    }
    return n;
}

static void on_load_failed(mm_engine_t *e, mm_model *m, int rc, const char *err) {
    if (m->state == MM_MS_FAILED)
        return;
    m->load_err = rc;
    snprintf(m->errmsg, sizeof m->errmsg, "%s", err[0] ? err : mm_strerror(rc));
    char msg[700];
    snprintf(msg, sizeof msg, "could not load model \"%.150s\": %s", m->name, m->errmsg);
    mm_log(atomic_load(&m->abort_load) ? MM_LOG_INFO : MM_LOG_ERROR, "%s", msg);
    /* The backend's own code (e.g. MODEL_NOT_FOUND, AUTH_REQUIRED) says more
     * than a generic one; anything vague becomes MODEL_LOAD_FAILED. */
    int code = (rc == MM_EINVAL || rc == MM_EINTERNAL || rc == MM_EIO)
                   ? MM_ELOAD
                   : rc;
    mm__model_fail_queue(e, m, MM_TS_FAILED, code, msg);
    mm__model_complete_waiters(e, m, MM_KIND_PRELOAD, code, msg);
    mm__model_count_release(m, MM_REL_LOAD_FAILED);
    mm__model_retire(e, m, MM_MS_FAILED);
    m->state = MM_MS_FAILED;
}

static void on_loaded(mm_engine_t *e, mm_model *m, mm_worker *w, void *st, uint64_t before,
                      uint64_t after) {
    m->n_loaded++;
    snprintf(w->revision, sizeof w->revision, "%s", m->revision);
    uint64_t reported = 0;
    if (m->vt->info) {
        mm_backend_info info;
        memset(&info, 0, sizeof info);
        if (m->vt->info(st, &info) == 0) {
            if (info.revision[0])
                snprintf(w->revision, sizeof w->revision, "%s", info.revision);
            w->memory_bytes = info.memory_bytes;
            reported = info.memory_bytes;
            if (info.backend[0])
                snprintf(m->backend_name, sizeof m->backend_name, "%s", info.backend);
            if (info.max_batch_items && (!m->batch_items || info.max_batch_items < m->batch_items))
                m->batch_items = info.max_batch_items;
            if (info.max_batch_tokens &&
                (!m->batch_tokens || info.max_batch_tokens < m->batch_tokens))
                m->batch_tokens = info.max_batch_tokens;
        }
    }
    mm__mem_loaded(e, m, &w->dev, before, after, reported);
    mm__cache_note_revision(e, m->name, m->revision, w->revision);
    if (m->state == MM_MS_LOADING) {
        m->state = MM_MS_READY;
        m->ready_ns = mm_now_ns();
        m->last_used_ns = m->ready_ns;
        m->loaded_wall = mm_wall_s();
        m->last_used_wall = m->loaded_wall;
        mm_log(MM_LOG_INFO, "model %s ready on %s", m->name, m->placement.devs[0].name);
    } else if (m->ready_ns == 0) {
        m->ready_ns = mm_now_ns(); /* released while loading: still drain */
    }
    pthread_cond_signal(&e->reaper_cv);
}

/* Completes the tasks of batch[0 .. n) (NULL slots: finished early);
 * returns their items. */
static size_t finish_tasks(mm_engine_t *e, mm_model *m, mm_worker *w, mm_task_t **batch,
                           size_t n) {
    size_t items = 0, k = 0;
    for (size_t i = 0; i < n; i++) {
        mm_task_t *t = batch[i];
        if (!t)
            continue;
        k++;
        snprintf(t->device, sizeof t->device, "%s", w->dev.name);
        if (mm__complete_if_stopped(e, m, t))
            continue;
        m->items += t->n_items;
        items += t->n_items;
        if (!t->err_code)
            mm__task_add_usage(t);
        if (t->cache_hits && !t->err_code) {
            char hits[32];
            snprintf(hits, sizeof hits, "%zu", t->cache_hits);
            mm__task_add_extra(t, "cache_hits", hits);
        }
        if (t->err_code) {
            m->failed++;
            mm__complete(e, t, MM_TS_FAILED, 0, NULL);
        } else if (t->rkind == MM_RESULT_NONE) {
            m->failed++;
            mm__complete(e, t, MM_TS_FAILED, MM_EINTERNAL,
                         "the backend returned no result for this task");
        } else {
            m->done++;
            mm__complete(e, t, MM_TS_DONE, 0, NULL);
        }
    }
    m->in_flight -= k;
    return items;
}

static void finish_batch(mm_engine_t *e, mm_model *m, mm_worker *w, mm_task_t **batch, size_t n,
                         double run_s) {
    size_t items = finish_tasks(e, m, w, batch, n) + w->cur_items;
    w->cur_items = 0;
    m->batches++;
    mm_metrics_on_batch(m->met, items, run_s);
    m->last_used_ns = mm_now_ns();
    m->last_used_wall = mm_wall_s();
    if (m->qlen == 0 && m->in_flight == 0) {
        pthread_cond_signal(&e->reaper_cv);
        mm__mem_changed(e); /* idle now: a load waiting for memory may evict it */
    }
}

/* ---- continuous batching (mm_task.h) ---- */

/* The worker whose thread this is (NULL on other threads). */
static _Thread_local mm_worker *tl_worker;

size_t mm_worker_take_more(mm_task_t **out, size_t cap) {
    mm_worker *w = tl_worker;
    if (!w || !out || cap == 0)
        return 0;
    mm_model *m = w->model;
    mm_engine_t *e = m->engine;
    size_t k = 0;
    pthread_mutex_lock(&e->mu);
    if (w->cur && m->state != MM_MS_FAILED) {
        int64_t now = mm_now_ns();
        while (k < cap && m->qhead && !mm__chunk_wanted(m, m->qhead)) {
            if (w->cur_n == w->cur_cap) { /* compact the slots finished early */
                size_t j = w->cur_n0;
                for (size_t i = w->cur_n0; i < w->cur_n; i++)
                    if (w->cur[i])
                        w->cur[j++] = w->cur[i];
                w->cur_n = j;
                if (j == w->cur_cap)
                    break;
            }
            mm_task_t *t = m->qhead;
            mm__queue_pop(e, m);
            mm_metrics_on_dequeue(m->met, (double)(now - t->enqueue_ns) / 1e9);
            t->status = MM_TS_RUNNING;
            mm__running_add(e, t);
            m->in_flight++;
            w->cur[w->cur_n++] = t;
            out[k++] = t;
        }
    }
    pthread_mutex_unlock(&e->mu);
    return k;
}

void mm_worker_finish(mm_task_t *t) {
    mm_worker *w = tl_worker;
    if (!w || !t)
        return;
    mm_model *m = w->model;
    mm_engine_t *e = m->engine;
    pthread_mutex_lock(&e->mu);
    size_t i = 0;
    while (w->cur && i < w->cur_n && w->cur[i] != t)
        i++;
    if (!w->cur || i == w->cur_n) {
        pthread_mutex_unlock(&e->mu);
        return; /* not a task of this run */
    }
    w->cur[i] = NULL;
    pthread_mutex_unlock(&e->mu);
    if (w->fin_hook)
        w->fin_hook(w->fin_hook_user, t);
    if (e->cache)
        mm__cache_after_run(e, t, w->revision, m->model_options);
    pthread_mutex_lock(&e->mu);
    w->cur_items += finish_tasks(e, m, w, &t, 1);
    m->last_used_ns = mm_now_ns();
    m->last_used_wall = mm_wall_s();
    pthread_mutex_unlock(&e->mu);
}

void mm_worker_on_finish(void (*fn)(void *user, mm_task_t *t), void *user) {
    mm_worker *w = tl_worker;
    if (!w)
        return;
    w->fin_hook = fn;
    w->fin_hook_user = user;
}

void mm_worker_kv_report(uint64_t used_blocks, uint64_t total_blocks) {
    mm_worker *w = tl_worker;
    if (!w)
        return;
    mm_engine_t *e = w->model->engine;
    pthread_mutex_lock(&e->mu);
    w->model->kv_used = used_blocks;
    w->model->kv_total = total_blocks;
    pthread_mutex_unlock(&e->mu);
}

uint64_t mm_worker_memory_free(void) {
    mm_worker *w = tl_worker;
    if (!w)
        return 0;
    mm_engine_t *e = w->model->engine;
    pthread_mutex_lock(&e->mu);
    int s = mm__mem_slot(e, &w->dev);
    uint64_t free_b = 0;
    if (s >= 0 && s < e->n_mem && e->mem[s].budget > e->mem[s].used)
        free_b = e->mem[s].budget - e->mem[s].used;
    pthread_mutex_unlock(&e->mu);
    return free_b;
}

/* Runs the next chunk of big; engine->mu held on entry and return (dropped
 * meanwhile).  Returns 1 when big completed (finished, failed or stopped). */
static int run_chunk(mm_engine_t *e, mm_model *m, mm_worker *w, void *st, mm_task_t *big) {
    if (atomic_load(&big->stop_code)) {
        finish_batch(e, m, w, &big, 1, 0.0);
        return 1;
    }
    size_t count = mm__chunk_next(m, big);
    pthread_mutex_unlock(&e->mu);
    int64_t t0 = mm_now_ns();
    int finished = mm__chunk_run(m, st, big, count);
    double run_s = (double)(mm_now_ns() - t0) / 1e9;
    if (finished && !big->err_code && e->cache)
        mm__cache_after_run(e, big, w->revision, m->model_options);
    pthread_mutex_lock(&e->mu);
    if (finished) {
        finish_batch(e, m, w, &big, 1, run_s); /* the metrics see the task as one batch */
        return 1;
    }
    m->batches++;
    return 0;
}

void *mm__worker_main(void *arg) {
    mm_worker *w = arg;
    mm_model *m = w->model;
    mm_engine_t *e = m->engine;
    mm_task_t **batch = mm_malloc(MAX_BATCH_TASKS * sizeof *batch);
    void *st = NULL;
    tl_worker = w;
    char err[512] = "";

    pthread_mutex_lock(&e->mu);
    while (older_instance_retiring(e, m) && m->state != MM_MS_FAILED)
        pthread_cond_wait(&e->retire_cv, &e->mu);
    int skip = m->state == MM_MS_FAILED || (m->state == MM_MS_DRAINING && m->qlen == 0);
    int rc = 0;
    /* Worker 0 fits the model into memory (evicting, waiting) for all its
     * workers; the others wait for the verdict, then load in parallel. */
    if (w == &m->workers[0]) {
        rc = skip ? 1 : mm__mem_fit(e, m, err, sizeof err);
        m->fit_state = rc == 0 ? 1 : -1;
        if (rc == 1) {
            skip = 1;
            rc = 0;
        }
        pthread_cond_broadcast(&e->mem_cv);
    } else if (!skip) {
        e->mem_waiters++;
        while (m->fit_state == 0 && m->state != MM_MS_FAILED)
            pthread_cond_wait(&e->mem_cv, &e->mu);
        e->mem_waiters--;
        skip = m->fit_state != 1;
    }
    mm_device dev = w->dev; /* the fit may have moved it to another GPU */
    /* CPU workers of one model load one at a time, so the first one's
     * resident growth is the model's (the others share its weights). */
    int cpu_turn = !skip && rc == 0 && !dev.is_gpu;
    if (cpu_turn) {
        e->mem_waiters++;
        while ((m->cpu_load_busy || e->heap_trimming) && m->state != MM_MS_FAILED)
            pthread_cond_wait(&e->mem_cv, &e->mu);
        e->mem_waiters--;
        m->cpu_load_busy = 1;
        e->cpu_loads++; /* idle workers hold their heap trims meanwhile */
    }
    pthread_mutex_unlock(&e->mu);

    uint64_t before = 0, after = 0;
    int64_t load_t0 = 0;
    if (!batch && rc == 0) {
        rc = MM_ENOMEM;
        snprintf(err, sizeof err, "out of memory starting a worker");
    } else if (!skip && rc == 0) {
        load_t0 = mm_now_ns();
        before = mm__mem_probe(e, &dev);
        rc = m->vt->load(&m->spec, &dev, &st, err, sizeof err);
        if (rc == MM_ENOMEM) {
            /* Out of device memory: evict idle models there, retry once. */
            pthread_mutex_lock(&e->mu);
            int evicted = mm__mem_evict_for_oom(e, m, &dev);
            pthread_mutex_unlock(&e->mu);
            mm_log(MM_LOG_WARNING, "out of memory loading %s on %s; evicted %d idle model(s), "
                   "retrying once", m->name, dev.name, evicted);
            err[0] = '\0';
            before = mm__mem_probe(e, &dev);
            rc = m->vt->load(&m->spec, &dev, &st, err, sizeof err);
        }
        after = mm__mem_probe(e, &dev);
    }

    pthread_mutex_lock(&e->mu);
    m->n_load_done++;
    if (cpu_turn) {
        m->cpu_load_busy = 0;
        e->cpu_loads--;
        pthread_cond_broadcast(&e->mem_cv);
    }
    if (!skip && load_t0)
        mm_metrics_on_load(m->met, rc == 0, (double)(mm_now_ns() - load_t0) / 1e9);
    if (skip) {
        /* nothing loaded */
    } else if (rc < 0) {
        on_load_failed(e, m, rc, err);
    } else {
        on_loaded(e, m, w, st, before, after);
        if (m->n_load_done == m->n_workers && m->state != MM_MS_FAILED)
            mm__model_complete_waiters(e, m, MM_KIND_PRELOAD, 0, NULL);
        mm_task_t *big = NULL; /* a large task this worker runs in chunks */
        int chunk_turn = 0;    /* chunks and queued batches take turns */
        /* Once idle for MM_IDLE_TRIM_NS after the load or after work, the
         * worker trims the heap (the load's staging, the activations of its
         * last batches): then it waits without a deadline until more work. */
        int trim_due = 1;
        int64_t trim_at = 0; /* set when an idle spell starts */
        for (;;) {
            while (!big && m->qlen == 0 && (m->state == MM_MS_READY || m->state == MM_MS_LOADING)) {
                if (!trim_due) {
                    pthread_cond_wait(&m->work_cv, &e->mu);
                    continue;
                }
                int64_t now = mm_now_ns();
                if (!trim_at)
                    trim_at = now + MM_IDLE_TRIM_NS;
                if (now < trim_at) {
                    struct timespec ts = mm_ns_to_timespec(trim_at);
                    pthread_cond_timedwait(&m->work_cv, &e->mu, &ts);
                } else if (mm__mem_idle_trim(e)) {
                    trim_due = 0;
                } else {
                    trim_at = 0; /* a CPU load is measuring: later */
                }
            }
            trim_due = 1; /* work: trim once idle after it */
            trim_at = 0;
            if (!big && (m->state == MM_MS_FAILED || m->qlen == 0))
                break;
            if (big && (chunk_turn || m->qlen == 0 || m->state == MM_MS_FAILED)) {
                chunk_turn = 0;
                if (m->qlen)
                    pthread_cond_signal(&m->work_cv);
                if (run_chunk(e, m, w, st, big))
                    big = NULL;
                continue;
            }
            size_t n = pop_batch(e, m, st, batch, MAX_BATCH_TASKS, big ? NULL : &big);
            chunk_turn = 1;
            if (n == 0)
                continue; /* a task to run in chunks is at the head */
            m->in_flight += n;
            if (m->qlen)
                pthread_cond_signal(&m->work_cv); /* more for another worker */
            w->cur = batch;
            w->cur_n = w->cur_n0 = n;
            w->cur_cap = MAX_BATCH_TASKS;
            w->cur_items = 0;
            pthread_mutex_unlock(&e->mu);
            int64_t run_t0 = mm_now_ns();
            mm__mem_run(e, m, st, batch, n);
            double run_s = (double)(mm_now_ns() - run_t0) / 1e9;
            n = w->cur_n; /* run() may have taken more (only this thread writes it) */
            if (e->cache)
                for (size_t i = 0; i < n; i++)
                    if (batch[i])
                        mm__cache_after_run(e, batch[i], w->revision, m->model_options);
            pthread_mutex_lock(&e->mu);
            w->cur = NULL;
            finish_batch(e, m, w, batch, n, run_s);
        }
    }
    pthread_mutex_unlock(&e->mu);

    uint64_t back = 0;
    if (!skip && rc == 0)
        back = mm__mem_unload(e, m, &dev, st);
    mm_free(batch);

    pthread_mutex_lock(&e->mu);
    tl_worker = NULL;
    w->memory_bytes = 0;
    m->n_exited++;
    m->released_bytes += back;
    if (m->n_exited == m->n_workers) {
        if (m->state != MM_MS_FAILED)
            m->state = MM_MS_RELEASED;
        pthread_cond_signal(&e->reaper_cv);
    }
    pthread_mutex_unlock(&e->mu);
    return NULL;
}
