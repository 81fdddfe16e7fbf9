/* mm_engine.c: the registry of models and everything a caller can ask of
 * it: submit, cancel, release, drop, status, shutdown.
 *
 * Each call takes engine->mu for a few pointer moves and returns; loading,
 * running and unloading happen on worker threads (mm_worker.c), timeouts
 * and idle release on the reaper (mm_reaper.c).  A released or failed
 * model leaves the registry at once, so the next task for that name
 * creates a fresh entry with its own configuration; the fresh entry's
 * workers wait until the old one has unloaded, so two copies of one model
 * never hold memory at the same time.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <stdatomic.h>
#include <sys/stat.h>

#include "mm_alloc.h"
#include "mm_backends.h"
#include "mm_engine_internal.h"
#include "mm_err.h"
#include "mm_log.h"
#include "mm_time.h"

#define MAX_NAME_LEN 400

void mm_engine_default_params(mm_engine_params *p) {
    memset(p, 0, sizeof *p);
    p->max_queue_size = 0;
    p->queue_timeout_ms = 30000;
    p->default_keep_alive_ms = 5 * 60 * 1000;
    p->max_batch_items = 256;
    p->max_batch_tokens = 16384;
    p->cpu_threads = 0;
    p->cache_dir = "data/models";
    p->fake_gpus = NULL;
    p->allowed_gpus = NULL;
    p->backend_options_json = "{}";
}

int mm_task_type_parse(const char *s, mm_task_type *out) {
    if (s && !strcmp(s, "embedding")) {
        *out = MM_TASK_EMBEDDING;
        return 0;
    }
    if (s && !strcmp(s, "text_generation")) {
        *out = MM_TASK_TEXT_GENERATION;
        return 0;
    }
    if (s && !strcmp(s, "rerank")) {
        *out = MM_TASK_RERANK;
        return 0;
    }
    if (s && !strcmp(s, "classification")) {
        *out = MM_TASK_CLASSIFICATION;
        return 0;
    }
    return MM_EINVAL;
}

const char *mm_task_type_name(mm_task_type t) {
    switch (t) {
    case MM_TASK_EMBEDDING:
        return "embedding";
    case MM_TASK_TEXT_GENERATION:
        return "text_generation";
    case MM_TASK_RERANK:
        return "rerank";
    case MM_TASK_CLASSIFICATION:
        return "classification";
    }
    return "unknown";
}

/* Frees what mm_engine_new made; the threads are gone (or never started). */
static void engine_destroy(mm_engine_t *e) {
    mm_metrics_close(&e->metrics);
    mm__cache_free_revisions(e);
    mm_embcache_free(e->cache);
    mm__mem_free(e);
    pthread_cond_destroy(&e->mem_cv);
    pthread_cond_destroy(&e->reaper_cv);
    pthread_cond_destroy(&e->retire_cv);
    pthread_mutex_destroy(&e->mu);
    mm_free((char *)e->params.cache_dir);
    mm_free((char *)e->params.backend_options_json);
    mm_free(e);
}

int mm_engine_new(const mm_engine_params *p, mm_engine_t **out) {
    *out = NULL;
    mm_engine_params defaults;
    if (!p) {
        mm_engine_default_params(&defaults);
        p = &defaults;
    }
    mm_engine_t *e = mm_calloc(1, sizeof *e);
    if (!e)
        return MM_ENOMEM;
    pthread_mutex_init(&e->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&e->reaper_cv, &ca);
    pthread_cond_init(&e->mem_cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_cond_init(&e->retire_cv, NULL);
    e->next_id = 1;
    e->params = *p;
    e->params.cache_dir = mm_strdup(p->cache_dir ? p->cache_dir : "data/models");
    e->params.backend_options_json =
        mm_strdup(p->backend_options_json ? p->backend_options_json : "{}");
    e->params.fake_gpus = NULL;
    e->params.allowed_gpus = NULL;
    int rc = 0;
    if (!e->params.cache_dir || !e->params.backend_options_json)
        rc = MM_ENOMEM;
    if (rc == 0)
        rc = mm_devices_discover(p->fake_gpus, &e->gpus);
    if (rc == 0 && p->allowed_gpus)
        rc = mm_devices_restrict(&e->gpus, p->allowed_gpus);
    if (rc == 0)
        mm__mem_init(e);
    if (rc == 0 && p->embed_cache_entries > 0)
        rc = mm_embcache_new(p->embed_cache_entries,
                             p->embed_cache_ttl_ms > 0 ? p->embed_cache_ttl_ms : 3600000,
                             &e->cache);
    if (rc == 0 && pthread_create(&e->reaper, NULL, mm__reaper_main, e) != 0)
        rc = MM_ENOMEM;
    if (rc < 0) {
        engine_destroy(e);
        return rc;
    }
    *out = e;
    return 0;
}

/* ---- helpers (engine->mu held) ---- */

void mm__complete(mm_engine_t *e, mm_task_t *t, mm_task_status st, int code, const char *msg) {
    if (t->status >= MM_TS_DONE) {
        e->double_completions++;
        mm_log(MM_LOG_ERROR, "task %" PRIu64 " completed twice (ignored)", t->id);
        return;
    }
    if (code)
        mm__task_set_error(t, code, msg);
    mm__running_remove(e, t);
    t->status = st;
    if (t->kind == MM_KIND_RUN)
        mm_metrics_on_complete(t->model ? t->model->met
                                        : mm_metrics_series_get(&e->metrics, t->model_name, t->type),
                               st, t->err_code, t->tokens_in, t->tokens_out);
    t->next = t->prev = NULL;
    t->model = NULL;
    e->completed++;
    mm__channel_push(t->channel, t);
}

static void queue_unlink(mm_engine_t *e, mm_model *m, mm_task_t *t) {
    if (t->prev)
        t->prev->next = t->next;
    else
        m->qhead = t->next;
    if (t->next)
        t->next->prev = t->prev;
    else
        m->qtail = t->prev;
    t->next = t->prev = NULL;
    m->qlen--;
    HASH_DEL(e->queued_by_id, t);
}

mm_task_t *mm__queue_pop(mm_engine_t *e, mm_model *m) {
    mm_task_t *t = m->qhead;
    if (t)
        queue_unlink(e, m, t);
    return t;
}

void mm__model_fail_queue(mm_engine_t *e, mm_model *m, mm_task_status st, int code,
                          const char *msg) {
    mm_task_t *t;
    while ((t = mm__queue_pop(e, m))) {
        if (st == MM_TS_DROPPED)
            m->dropped++;
        else if (st == MM_TS_CANCELLED)
            m->cancelled++;
        else
            m->failed++;
        mm__complete(e, t, st, code, msg);
    }
}

static void preload_extras(mm_model *m, mm_task_t *t) {
    char buf[1024];
    int off = snprintf(buf, sizeof buf,
                       "{\"preloaded\":true,\"workers\":%d,\"device\":\"%s\",\"devices\":[",
                       m->n_workers, m->device_request);
    for (int i = 0; i < m->n_workers && off < (int)sizeof buf - 64; i++)
        off += snprintf(buf + off, sizeof buf - off, "%s\"%s\"", i ? "," : "",
                        m->placement.devs[i].name);
    snprintf(buf + off, sizeof buf - off, "],\"keep_alive_minutes\":%.6g}",
             m->keep_alive_ms < 0 ? -1.0 : m->keep_alive_ms / 60000.0);
    mm_free(t->extras);
    t->extras = mm_strdup(buf);
    snprintf(t->device, sizeof t->device, "%s", m->placement.devs[0].name);
}

void mm__model_complete_waiters(mm_engine_t *e, mm_model *m, mm_task_kind kind, int code,
                                const char *msg) {
    mm_task_t **pp = &m->waiters;
    while (*pp) {
        mm_task_t *t = *pp;
        if (t->kind != kind) {
            pp = &t->next;
            continue;
        }
        *pp = t->next;
        if (code) {
            mm__complete(e, t, MM_TS_FAILED, code, msg);
        } else {
            if (kind == MM_KIND_PRELOAD)
                preload_extras(m, t);
            else if (!t->extras)
                t->extras = mm_strdup("{\"released\":true}");
            mm__complete(e, t, MM_TS_DONE, 0, NULL);
        }
    }
}

void mm__model_retire(mm_engine_t *e, mm_model *m, mm_model_state st) {
    if (m->in_registry) {
        HASH_DEL(e->models, m);
        m->in_registry = 0;
        m->retire_next = e->retiring;
        e->retiring = m;
    }
    if (m->state != MM_MS_FAILED)
        m->state = st;
    pthread_cond_broadcast(&m->work_cv);
    pthread_cond_signal(&e->reaper_cv);
}

void mm__model_destroy(mm_model *m) {
    if (!m)
        return;
    pthread_cond_destroy(&m->work_cv);
    mm_free(m->workers);
    mm_free(m->name);
    mm_free(m->revision);
    mm_free(m->model_options);
    mm_free(m);
}

/* A model name is either a local directory (absolute or ./ relative path)
 * or a hub-style id: letters, digits, '-', '_', '.', at most one '/' between
 * non-empty parts, no "..".  Backends with their own scheme
 * ("synthetic/...?k=v") validate the rest of their names themselves. */
static int validate_name(const char *name, char *err, size_t errlen) {
    size_t len = name ? strlen(name) : 0;
    if (len == 0) {
        snprintf(err, errlen, "model_name is empty: give a Hugging Face repo id such as "
                              "\"sentence-transformers/all-MiniLM-L6-v2\"");
        return MM_EINVAL;
    }
    if (len > MAX_NAME_LEN) {
        snprintf(err, errlen, "model_name is %zu characters long (at most %d)", len, MAX_NAME_LEN);
        return MM_EINVAL;
    }
    for (const char *p = name; *p; p++) {
        if ((unsigned char)*p < 0x20 || *p == 0x7f) {
            snprintf(err, errlen, "model_name contains a control character");
            return MM_EINVAL;
        }
    }
    if (!strncmp(name, "synthetic/", 10))
        return 0;
    if (name[0] == '/' || !strncmp(name, "./", 2)) {
        if (strstr(name, "/../") || (len >= 3 && !strcmp(name + len - 3, "/..")) ||
            !strncmp(name, "../", 3)) {
            snprintf(err, errlen, "model path \"%.200s\" must not contain \"..\"", name);
            return MM_EINVAL;
        }
        struct stat sb;
        if (stat(name, &sb) != 0) {
            snprintf(err, errlen, "model directory \"%.200s\" does not exist", name);
            return MM_ENOTFOUND;
        }
        if (!S_ISDIR(sb.st_mode)) {
            snprintf(err, errlen,
                     "model path \"%.200s\" is a file, not a directory: give the folder that "
                     "holds config.json and the weights",
                     name);
            return MM_EINVAL;
        }
        return 0;
    }
    int slashes = 0;
    const char *part = name;
    for (const char *p = name;; p++) {
        if (*p == '/' || *p == '\0') {
            size_t plen = (size_t)(p - part);
            if (plen == 0 || (plen == 2 && part[0] == '.' && part[1] == '.') ||
                (plen == 1 && part[0] == '.')) {
                snprintf(err, errlen,
                         "model_name \"%.200s\" is malformed: expected \"org/name\" (no empty "
                         "parts, no \"..\")",
                         name);
                return MM_EINVAL;
            }
            if (*p == '\0')
                break;
            slashes++;
            part = p + 1;
            continue;
        }
        if (!isalnum((unsigned char)*p) && *p != '-' && *p != '_' && *p != '.') {
            snprintf(err, errlen,
                     "model_name \"%.200s\" has the character '%c': repo ids use letters, "
                     "digits, '-', '_' and '.'",
                     name, *p);
            return MM_EINVAL;
        }
    }
    if (slashes > 1) {
        snprintf(err, errlen,
                 "model_name \"%.200s\" is malformed: expected \"org/name\" or a local directory",
                 name);
        return MM_EINVAL;
    }
    if (strstr(name, "..")) {
        snprintf(err, errlen, "model_name \"%.200s\" must not contain \"..\"", name);
        return MM_EINVAL;
    }
    return 0;
}

static mm_model *model_find(mm_engine_t *e, const char *name) {
    mm_model *m = NULL;
    HASH_FIND_STR(e->models, name, m);
    return m;
}

/* spec.cancelled: one atomic load, so a backend may call it per chunk. */
static int model_load_cancelled(void *ctx) {
    mm_model *m = ctx;
    return atomic_load_explicit(&m->abort_load, memory_order_relaxed);
}

/* spec.progress: two relaxed stores, so a backend may call it per chunk. */
static void model_progress(void *ctx, uint64_t done, uint64_t total) {
    mm_model *m = ctx;
    atomic_store_explicit(&m->dl_total, total, memory_order_relaxed);
    atomic_store_explicit(&m->dl_done, done, memory_order_relaxed);
}

static int model_create(mm_engine_t *e, const mm_submit_args *a, const mm_backend_vtable *vt,
                        const mm_placement *pl, mm_model **out, char *err, size_t errlen) {
    mm_model *m = mm_calloc(1, sizeof *m);
    if (!m)
        return MM_ENOMEM;
    m->name = mm_strdup(a->model_name);
    m->revision = mm_strdup(a->revision && *a->revision ? a->revision : "main");
    m->model_options = mm_strdup(a->model_options_json ? a->model_options_json : "{}");
    m->workers = mm_calloc((size_t)pl->n_workers, sizeof(mm_worker));
    if (!m->name || !m->revision || !m->model_options || !m->workers) {
        mm__model_destroy(m);
        return MM_ENOMEM;
    }
    pthread_condattr_t ca; /* monotonic: idle workers wait with a deadline */
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&m->work_cv, &ca);
    pthread_condattr_destroy(&ca);
    m->engine = e;
    m->generation = ++e->next_generation;
    m->vt = vt;
    m->placement = *pl;
    m->n_workers = pl->n_workers;
    snprintf(m->device_request, sizeof m->device_request, "%s", a->device ? a->device : "gpu");
    m->spec.model_name = m->name;
    m->spec.task_type = a->type;
    m->spec.revision = m->revision;
    m->spec.cache_dir = e->params.cache_dir;
    m->spec.options_json = e->params.backend_options_json;
    m->spec.model_options_json = m->model_options;
    m->spec.n_workers = pl->n_workers;
    m->spec.progress = model_progress;
    m->spec.progress_ctx = m;
    m->spec.cancelled = model_load_cancelled;
    m->keep_alive_ms = a->has_keep_alive ? a->keep_alive_ms : e->params.default_keep_alive_ms;
    m->batch_items = e->params.max_batch_items;
    m->batch_tokens = e->params.max_batch_tokens;
    m->state = MM_MS_LOADING;
    m->last_used_ns = mm_now_ns();
    m->met = mm_metrics_series_get(&e->metrics, m->name, a->type);

    mm_hash_oom = 0;
    HASH_ADD_KEYPTR(hh, e->models, m->name, strlen(m->name), m);
    if (mm_hash_oom) {
        mm__model_destroy(m);
        return MM_ENOMEM;
    }
    m->in_registry = 1;
    for (int i = 0; i < m->n_workers; i++) {
        mm_worker *w = &m->workers[i];
        w->model = m;
        w->dev = pl->devs[i];
        if (pthread_create(&w->thread, NULL, mm__worker_main, w) != 0) {
            snprintf(err, errlen, "could not start worker thread %d for %s", i, m->name);
            /* Workers already started see FAILED and exit; the reaper joins
             * them and frees the model. */
            m->n_workers = i;
            m->load_err = MM_ENOMEM;
            snprintf(m->errmsg, sizeof m->errmsg, "%s", err);
            mm__model_count_release(m, MM_REL_LOAD_FAILED);
            mm__model_retire(e, m, MM_MS_FAILED);
            m->state = MM_MS_FAILED;
            return MM_ENOMEM;
        }
        w->started = 1;
    }
    *out = m;
    return 0;
}

static int config_differs(const mm_model *m, const mm_submit_args *a, const mm_placement *pl) {
    return strcmp(m->device_request, a->device ? a->device : "gpu") != 0 ||
           pl->n_workers != m->n_workers ||
           strcmp(m->model_options, a->model_options_json ? a->model_options_json : "{}") != 0;
}

int mm_engine_submit(mm_engine_t *e, mm_channel_t *ch, const mm_submit_args *a, uint64_t *id,
                     char *err, size_t errlen) {
    err[0] = '\0';
    int rc = validate_name(a->model_name, err, errlen);
    if (rc < 0)
        return rc;
    if (a->type != MM_TASK_EMBEDDING && a->type != MM_TASK_TEXT_GENERATION &&
        a->type != MM_TASK_RERANK && a->type != MM_TASK_CLASSIFICATION) {
        snprintf(err, errlen, "unknown task_type: use \"embedding\", \"text_generation\", "
                              "\"rerank\" or \"classification\"");
        return MM_EINVAL;
    }
    if (a->kind != MM_KIND_RUN && a->kind != MM_KIND_PRELOAD) {
        snprintf(err, errlen, "submit takes run or preload tasks");
        return MM_EINVAL;
    }
    if (a->kind == MM_KIND_RUN && a->n_items == 0) {
        snprintf(err, errlen, "task_data is empty: give at least one text");
        return MM_EINVAL;
    }
    const mm_backend_vtable *vt = mm_backends_find(a->model_name);
    if (!vt) {
        snprintf(err, errlen,
                 "no backend can serve \"%.200s\": the native model backend is not available in "
                 "this build",
                 a->model_name);
        return MM_ENOTFOUND;
    }
    mm_placement pl;
    rc = mm_devices_place(&e->gpus, a->device ? a->device : "gpu", a->num_workers,
                          e->params.cpu_threads, &pl, err, errlen);
    if (rc < 0)
        return rc;

    mm_task_t *t = mm__task_new(0, a->type, a->kind, a->model_name, a->items, a->item_lens,
                                a->n_items, a->params_json);
    if (!t) {
        snprintf(err, errlen, "out of memory copying the task's inputs");
        return MM_ENOMEM;
    }
    t->single_input = a->single_input;
    t->user_flags = a->user_flags;
    if (vt->check && a->kind == MM_KIND_RUN) {
        mm_model_spec spec;
        memset(&spec, 0, sizeof spec);
        spec.model_name = a->model_name;
        spec.task_type = a->type;
        spec.revision = a->revision ? a->revision : "main";
        spec.cache_dir = e->params.cache_dir;
        spec.options_json = e->params.backend_options_json;
        spec.model_options_json = a->model_options_json ? a->model_options_json : "{}";
        spec.n_workers = pl.n_workers;
        rc = vt->check(&spec, t, err, errlen);
        if (rc < 0) {
            mm__task_destroy(t);
            return rc;
        }
    }

    int all_cached = 0;
    if (e->cache && a->kind == MM_KIND_RUN && a->type == MM_TASK_EMBEDDING &&
        vt->embed_cacheable) {
        char rev[64];
        const char *requested = a->revision && *a->revision ? a->revision : "main";
        t->cache_insert = 1;
        pthread_mutex_lock(&e->mu);
        int known = mm__cache_known_revision(e, a->model_name, requested, rev);
        pthread_mutex_unlock(&e->mu);
        if (known)
            all_cached = mm__cache_lookup(e, t, rev, a->model_options_json);
    }

    pthread_mutex_lock(&e->mu);
    if (e->shutting_down) {
        pthread_mutex_unlock(&e->mu);
        mm__task_destroy(t);
        snprintf(err, errlen, "the model manager is shutting down");
        return MM_ESHUTDOWN;
    }
    if (all_cached) {
        /* Served from the cache: no queue, no worker, no model load. */
        t->id = e->next_id++;
        t->channel = ch;
        mm__channel_ref(ch);
        e->created++;
        *id = t->id;
        snprintf(t->device, sizeof t->device, "cache");
        char hits[32];
        snprintf(hits, sizeof hits, "%zu", t->cache_hits);
        mm__task_add_extra(t, "cache_hits", hits);
        mm__task_add_extra(t, "backend", "\"cache\""); /* no backend ran it */
        mm__task_add_usage(t);
        mm__complete(e, t, MM_TS_DONE, 0, NULL);
        pthread_mutex_unlock(&e->mu);
        return 0;
    }
    mm_model *m = model_find(e, a->model_name);
    if (m && m->spec.task_type != a->type) {
        snprintf(err, errlen,
                 "model \"%.200s\" is loaded for %s tasks; release it before using it for %s",
                 a->model_name, mm_task_type_name(m->spec.task_type), mm_task_type_name(a->type));
        pthread_mutex_unlock(&e->mu);
        mm__task_destroy(t);
        return MM_EINVAL;
    }
    if (m && config_differs(m, a, &pl)) {
        char w[640];
        snprintf(w, sizeof w,
                 "model already loaded with device=\"%s\", num_workers=%d%s%.200s; served by the "
                 "loaded instance (release_model() to change its configuration)",
                 m->device_request, m->n_workers, strcmp(m->model_options, "{}") ? ", " : "",
                 strcmp(m->model_options, "{}") ? m->model_options : "");
        t->warning = mm_strdup(w);
    }
    if (!m) {
        rc = model_create(e, a, vt, &pl, &m, err, errlen);
        if (rc < 0) {
            pthread_mutex_unlock(&e->mu);
            mm__task_destroy(t);
            if (!err[0])
                snprintf(err, errlen, "out of memory creating the model entry");
            return rc;
        }
        if (pl.fell_back_to_cpu) {
            mm_log(MM_LOG_WARNING,
                   "model %s: device=\"%s\" asked but no GPU is visible; running %d worker(s) on "
                   "the CPU",
                   m->name, m->device_request, m->n_workers);
            t->warning = mm_strdup("no GPU is visible: this model runs on the CPU");
        }
    }
    if (a->has_keep_alive && m->keep_alive_ms != a->keep_alive_ms) {
        m->keep_alive_ms = a->keep_alive_ms;
        pthread_cond_signal(&e->reaper_cv);
        mm__mem_changed(e); /* an unpinned model may now be evicted */
    }
    if (a->kind == MM_KIND_RUN && e->params.max_queue_size && m->qlen >= e->params.max_queue_size) {
        snprintf(err, errlen,
                 "the queue of model \"%.200s\" is full (%zu tasks, max_queue_size); retry later",
                 m->name, m->qlen);
        mm_metrics_on_reject(m->met);
        pthread_mutex_unlock(&e->mu);
        mm__task_destroy(t);
        return MM_EQUEUEFULL;
    }
    t->id = e->next_id++;
    t->channel = ch;
    mm__channel_ref(ch);
    e->created++;
    *id = t->id;
    if (a->kind == MM_KIND_PRELOAD) {
        if (m->state == MM_MS_READY && m->n_load_done == m->n_workers) {
            preload_extras(m, t);
            mm__complete(e, t, MM_TS_DONE, 0, NULL);
        } else {
            t->next = m->waiters;
            m->waiters = t;
        }
        pthread_mutex_unlock(&e->mu);
        return 0;
    }
    t->status = MM_TS_QUEUED;
    t->enqueue_ns = mm_now_ns();
    t->model = m;
    mm_hash_oom = 0;
    HASH_ADD(hh, e->queued_by_id, id, sizeof(uint64_t), t);
    if (mm_hash_oom) {
        /* Cannot index it for cancel: fail it through the normal path. */
        mm__complete(e, t, MM_TS_FAILED, MM_ENOMEM, "out of memory queueing the task");
        pthread_mutex_unlock(&e->mu);
        return 0;
    }
    int was_empty = m->qhead == NULL;
    t->prev = m->qtail;
    t->next = NULL;
    if (m->qtail)
        m->qtail->next = t;
    else
        m->qhead = t;
    m->qtail = t;
    m->qlen++;
    m->submitted++;
    /* Wake one worker on the empty -> non-empty edge only: a worker that
     * takes a batch and leaves work behind wakes the next one, so a burst
     * of submits costs one wake-up instead of one per task. */
    if (was_empty && a->defer_wake) {
        m->kick_pending = 1;
        e->kicks_pending = 1;
    } else if (was_empty) {
        pthread_cond_signal(&m->work_cv);
        if (e->params.queue_timeout_ms > 0)
            pthread_cond_signal(&e->reaper_cv);
    }
    pthread_mutex_unlock(&e->mu);
    return 0;
}

void mm_engine_kick(mm_engine_t *e) {
    pthread_mutex_lock(&e->mu);
    if (e->kicks_pending) {
        e->kicks_pending = 0;
        for (mm_model *m = e->models; m; m = m->hh.next) {
            if (m->kick_pending) {
                m->kick_pending = 0;
                pthread_cond_signal(&m->work_cv);
            }
        }
        if (e->params.queue_timeout_ms > 0)
            pthread_cond_signal(&e->reaper_cv);
    }
    pthread_mutex_unlock(&e->mu);
}

/* A pre-load (task_data=None) waiting for its model: completes it as
 * cancelled, and aborts the load when nothing else wants it.  Only on the
 * rare path of a cancel that found no queued or running task. */
static mm_task_t *cancel_preload(mm_engine_t *e, uint64_t id) {
    for (mm_model *m = e->models; m; m = m->hh.next) {
        for (mm_task_t **pp = &m->waiters; *pp; pp = &(*pp)->next) {
            mm_task_t *t = *pp;
            if (t->id != id || t->kind != MM_KIND_PRELOAD)
                continue;
            *pp = t->next;
            m->cancelled++;
            mm__complete(e, t, MM_TS_CANCELLED, MM_ECANCELLED, "cancelled by the caller");
            if (m->state == MM_MS_LOADING && mm__model_abort_if_unwanted(m))
                mm__mem_retire(e, m, "manual");
            return t;
        }
    }
    return NULL;
}

int mm_engine_cancel(mm_engine_t *e, uint64_t id) {
    pthread_mutex_lock(&e->mu);
    mm_task_t *t = NULL;
    HASH_FIND(hh, e->queued_by_id, &id, sizeof id, t);
    if (!t) {
        /* Running: it stops at the next batch or chunk boundary. */
        t = mm__running_find(e, id);
        if (t)
            mm__running_stop(t, MM_ECANCELLED, NULL);
        else
            t = cancel_preload(e, id);
        pthread_mutex_unlock(&e->mu);
        return t != NULL;
    }
    mm_model *m = t->model;
    queue_unlink(e, m, t);
    m->cancelled++;
    mm__complete(e, t, MM_TS_CANCELLED, MM_ECANCELLED, "cancelled by the caller");
    /* The last task of a model still loading: nobody wants that load now. */
    if (m->in_registry && m->state == MM_MS_LOADING && mm__model_abort_if_unwanted(m))
        mm__mem_retire(e, m, "manual");
    pthread_mutex_unlock(&e->mu);
    return 1;
}

static mm_task_t *control_task(mm_engine_t *e, mm_channel_t *ch, mm_task_kind kind,
                               const char *name) {
    mm_task_t *t = mm__task_new(e->next_id++, MM_TASK_EMBEDDING, kind, name, NULL, NULL, 0, NULL);
    if (!t)
        return NULL;
    t->channel = ch;
    mm__channel_ref(ch);
    e->created++;
    return t;
}

static mm_model *retiring_find(mm_engine_t *e, const char *name) {
    for (mm_model *r = e->retiring; r; r = r->retire_next)
        if (!strcmp(r->name, name))
            return r;
    return NULL;
}

int mm_engine_release(mm_engine_t *e, mm_channel_t *ch, const char *model_name, uint64_t *id) {
    pthread_mutex_lock(&e->mu);
    mm_task_t *t = control_task(e, ch, MM_KIND_RELEASE, model_name);
    if (!t) {
        pthread_mutex_unlock(&e->mu);
        return MM_ENOMEM;
    }
    *id = t->id;
    mm_model *m = model_find(e, model_name);
    if (m) {
        mm_log(MM_LOG_INFO, "releasing model %s", m->name);
        mm__mem_retire(e, m, "manual");
        mm__model_abort_if_unwanted(m);
    } else {
        m = retiring_find(e, model_name);
    }
    if (m) {
        t->next = m->waiters;
        m->waiters = t;
    } else {
        t->extras = mm_strdup("{\"released\":false}");
        mm__complete(e, t, MM_TS_DONE, 0, NULL);
    }
    pthread_mutex_unlock(&e->mu);
    return 0;
}

int mm_engine_drop(mm_engine_t *e, const char *model_name, const char *reason, uint64_t **ids,
                   size_t *n) {
    *ids = NULL;
    *n = 0;
    pthread_mutex_lock(&e->mu);
    mm_model *m = model_find(e, model_name);
    if (!m)
        m = retiring_find(e, model_name);
    if (!m) {
        pthread_mutex_unlock(&e->mu);
        return MM_ENOTFOUND;
    }
    /* Queued tasks, and large tasks running in chunks (they stop at the next chunk). */
    size_t cap = m->qlen + mm__running_stop_chunked(e, m, 0, NULL, NULL, 0);
    uint64_t *arr = cap ? mm_malloc(cap * sizeof *arr) : NULL;
    if (cap && !arr) {
        pthread_mutex_unlock(&e->mu);
        return MM_ENOMEM;
    }
    size_t k = 0;
    mm_task_t *t;
    while ((t = mm__queue_pop(e, m))) {
        arr[k++] = t->id;
        m->dropped++;
        mm__complete(e, t, MM_TS_DROPPED, MM_EDROPPED, reason ? reason : "Manual drop");
    }
    k += mm__running_stop_chunked(e, m, MM_EDROPPED, reason ? reason : "Manual drop", arr + k,
                                  cap - k);
    pthread_mutex_unlock(&e->mu);
    mm_log(MM_LOG_INFO, "dropped %zu queued task(s) of %s: %s", k, model_name,
           reason ? reason : "Manual drop");
    *ids = arr;
    *n = k;
    return 0;
}

int mm_engine_shutdown(mm_engine_t *e, mm_channel_t *ch, int cancel_pending, uint64_t *id) {
    pthread_mutex_lock(&e->mu);
    mm_task_t *t = control_task(e, ch, MM_KIND_SHUTDOWN, "");
    if (!t) {
        pthread_mutex_unlock(&e->mu);
        return MM_ENOMEM;
    }
    *id = t->id;
    e->shutting_down = 1;
    mm_model *m, *tmp;
    HASH_ITER(hh, e->models, m, tmp) {
        if (cancel_pending)
            mm__model_fail_queue(e, m, MM_TS_FAILED, MM_ESHUTDOWN,
                                 "the model manager is shutting down");
        mm__mem_retire(e, m, "shutdown");
    }
    if (cancel_pending)
        for (m = e->retiring; m; m = m->retire_next) {
            mm__model_fail_queue(e, m, MM_TS_FAILED, MM_ESHUTDOWN,
                                 "the model manager is shutting down");
            mm__model_complete_waiters(e, m, MM_KIND_PRELOAD, MM_ESHUTDOWN,
                                       "the model manager is shutting down");
        }
    if (cancel_pending)
        mm__running_stop_chunked(e, NULL, MM_ESHUTDOWN, "the model manager is shutting down",
                                 NULL, 0);
    for (m = e->retiring; m; m = m->retire_next)
        mm__model_abort_if_unwanted(m);
    t->next = e->shutdown_waiters;
    e->shutdown_waiters = t;
    pthread_cond_signal(&e->reaper_cv);
    pthread_mutex_unlock(&e->mu);
    return 0;
}

void mm_engine_free(mm_engine_t *e) {
    if (!e)
        return;
    pthread_mutex_lock(&e->mu);
    e->shutting_down = 1;
    mm_model *m, *tmp;
    HASH_ITER(hh, e->models, m, tmp) {
        mm__model_fail_queue(e, m, MM_TS_FAILED, MM_ESHUTDOWN, "the model manager was closed");
        mm__mem_retire(e, m, "shutdown");
    }
    for (m = e->retiring; m; m = m->retire_next) {
        mm__model_fail_queue(e, m, MM_TS_FAILED, MM_ESHUTDOWN, "the model manager was closed");
        mm__model_complete_waiters(e, m, MM_KIND_PRELOAD, MM_ESHUTDOWN,
                                   "the model manager was closed");
        mm__model_abort_if_unwanted(m);
    }
    mm__running_stop_chunked(e, NULL, MM_ESHUTDOWN, "the model manager was closed", NULL, 0);
    while (e->models || e->retiring)
        pthread_cond_wait(&e->retire_cv, &e->mu);
    e->stop_reaper = 1;
    pthread_cond_signal(&e->reaper_cv);
    pthread_mutex_unlock(&e->mu);
    pthread_join(e->reaper, NULL);
    /* The reaper completed the shutdown waiters before it stopped. */
    engine_destroy(e);
}

static const char *state_name(mm_model_state s) {
    switch (s) {
    case MM_MS_LOADING: return "loading";
    case MM_MS_READY: return "ready";
    case MM_MS_DRAINING: return "draining";
    case MM_MS_RELEASED: return "released";
    case MM_MS_FAILED: return "failed";
    }
    return "unknown";
}

static void fill_status(mm_engine_t *e, const mm_model *m, int64_t now, double wall,
                        mm_model_status *s) {
    memset(s, 0, sizeof *s);
    snprintf(s->model_name, sizeof s->model_name, "%s", m->name);
    s->task_type = m->spec.task_type;
    snprintf(s->state, sizeof s->state, "%s", state_name(m->state));
    if (m->state == MM_MS_LOADING && m->waiting_mem)
        snprintf(s->state, sizeof s->state, "waiting_for_memory");
    for (int i = 0; i < e->n_mem && s->n_mem < 16; i++) {
        uint64_t b = m->mem_dev[i] ? m->mem_dev[i] : m->resv[i];
        if (!b)
            continue;
        snprintf(s->mem_dev_name[s->n_mem], sizeof s->mem_dev_name[0], "%s", e->mem[i].name);
        s->mem_dev[s->n_mem++] = b;
    }
    s->est_weights = m->fp.weights_bytes;
    s->est_activation = m->fp.activation_bytes;
    const char *why = m->release_reason[0] ? m->release_reason : mm__mem_last_reason(e, m->name);
    snprintf(s->last_release_reason, sizeof s->last_release_reason, "%s", why ? why : "");
    s->download_done = atomic_load_explicit(&m->dl_done, memory_order_relaxed);
    s->download_total = atomic_load_explicit(&m->dl_total, memory_order_relaxed);
    if (m->state == MM_MS_LOADING && !m->waiting_mem && s->download_total &&
        s->download_done < s->download_total)
        snprintf(s->state, sizeof s->state, "downloading");
    snprintf(s->device_request, sizeof s->device_request, "%s", m->device_request);
    s->n_devices = m->n_workers < 16 ? m->n_workers : 16;
    for (int i = 0; i < s->n_devices; i++)
        snprintf(s->devices[i], sizeof s->devices[i], "%s", m->placement.devs[i].name);
    s->workers = m->n_workers;
    s->workers_loaded = m->n_loaded;
    s->queue_depth = m->qlen;
    s->in_flight = m->in_flight;
    s->keep_alive_ms = m->keep_alive_ms;
    s->seconds_until_release = -1;
    if (m->keep_alive_ms >= 0 && m->state == MM_MS_READY && m->qlen == 0 && m->in_flight == 0) {
        double left = (m->last_used_ns + m->keep_alive_ms * 1000000LL - now) / 1e9;
        s->seconds_until_release = left > 0 ? left : 0;
    }
    (void)wall;
    s->last_used = m->last_used_wall;
    s->loaded_at = m->loaded_wall;
    s->submitted = m->submitted;
    s->done = m->done;
    s->failed = m->failed;
    s->dropped = m->dropped;
    s->timed_out = m->timed_out;
    s->cancelled = m->cancelled;
    s->batches = m->batches;
    s->items = m->items;
    s->memory_bytes = m->memory_bytes;
    snprintf(s->backend, sizeof s->backend, "%s",
             m->backend_name[0] ? m->backend_name : m->vt->name);
    snprintf(s->error, sizeof s->error, "%s", m->errmsg);
    s->kv_blocks_used = m->kv_used;
    s->kv_blocks_total = m->kv_total;
}

int mm_engine_cache_stats(mm_engine_t *e, mm_embcache_stats *s) {
    if (!e->cache)
        return MM_ENOTFOUND;
    mm_embcache_stats_get(e->cache, s);
    return 0;
}

int mm_engine_status(mm_engine_t *e, mm_model_status **out, size_t *n) {
    *out = NULL;
    *n = 0;
    pthread_mutex_lock(&e->mu);
    size_t count = HASH_COUNT(e->models);
    for (mm_model *r = e->retiring; r; r = r->retire_next)
        count++;
    mm_model_status *arr = mm_calloc(count ? count : 1, sizeof *arr);
    if (!arr) {
        pthread_mutex_unlock(&e->mu);
        return MM_ENOMEM;
    }
    int64_t now = mm_now_ns();
    double wall = mm_wall_s();
    size_t k = 0;
    for (mm_model *m = e->models; m; m = m->hh.next)
        fill_status(e, m, now, wall, &arr[k++]);
    for (mm_model *r = e->retiring; r; r = r->retire_next)
        fill_status(e, r, now, wall, &arr[k++]);
    pthread_mutex_unlock(&e->mu);
    *out = arr;
    *n = k;
    return 0;
}

void mm_engine_stats_get(mm_engine_t *e, mm_engine_stats *s) {
    pthread_mutex_lock(&e->mu);
    s->created = e->created;
    s->completed = e->completed;
    s->double_completions = e->double_completions;
    s->idle_trims = e->idle_trims;
    s->live_models = HASH_COUNT(e->models);
    s->retiring_models = 0;
    for (mm_model *r = e->retiring; r; r = r->retire_next)
        s->retiring_models++;
    pthread_mutex_unlock(&e->mu);
}
