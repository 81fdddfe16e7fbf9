/* mm_reaper.c: the one timer thread of an engine.
 *
 * It sleeps on a condition variable until the earliest deadline among all
 * models (a queued task's queue_timeout, a model's keep-alive), or until
 * something changes them, then: fails tasks that waited too long in the
 * queue of a ready model with QUEUE_TIMEOUT (on time, not when dequeued),
 * releases models idle for longer than their keep-alive, joins the threads
 * of released models and frees them, completes release and shutdown
 * control tasks.  One thread for the whole manager, however many models.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "mm_alloc.h"
#include "mm_engine_internal.h"
#include "mm_err.h"
#include "mm_log.h"
#include "mm_time.h"

#define IDLE_WAIT_NS (3600LL * 1000000000LL)

static int64_t expire_queue(mm_engine_t *e, mm_model *m, int64_t now, int64_t next) {
    int64_t qt = e->params.queue_timeout_ms * 1000000LL;
    if (qt <= 0 || m->ready_ns == 0 || m->state == MM_MS_FAILED)
        return next;
    mm_task_t *t;
    while ((t = m->qhead)) {
        int64_t start = t->enqueue_ns > m->ready_ns ? t->enqueue_ns : m->ready_ns;
        int64_t dl = start + qt;
        if (dl > now)
            return dl < next ? dl : next;
        mm__queue_pop(e, m);
        m->timed_out++;
        char msg[400];
        snprintf(msg, sizeof msg,
                 "task waited %.1f s in the queue of \"%.150s\" (queue_timeout is %.1f s); the "
                 "model is overloaded: add workers, raise queue_timeout, or send fewer requests",
                 (now - t->enqueue_ns) / 1e9, m->name, e->params.queue_timeout_ms / 1e3);
        mm__complete(e, t, MM_TS_FAILED, MM_ETIMEDOUT, msg);
    }
    return next;
}

static int64_t check_idle(mm_engine_t *e, mm_model *m, int64_t now, int64_t next) {
    if (m->state != MM_MS_READY || m->qlen || m->in_flight || m->keep_alive_ms < 0 ||
        m->n_load_done < m->n_workers)
        return next;
    int64_t dl = m->last_used_ns + m->keep_alive_ms * 1000000LL;
    if (dl <= now) {
        mm_log(MM_LOG_INFO, "releasing model %s after %.2f min idle (keep_alive)", m->name,
               m->keep_alive_ms / 60000.0);
        mm__mem_retire(e, m, "idle");
        return next;
    }
    return dl < next ? dl : next;
}

static void reap(mm_engine_t *e) {
    mm_model **pp = &e->retiring;
    while (*pp) {
        mm_model *m = *pp;
        if (m->n_exited < m->n_workers) {
            pp = &m->retire_next;
            continue;
        }
        *pp = m->retire_next;
        for (int i = 0; i < m->n_workers; i++)
            if (m->workers[i].started)
                pthread_join(m->workers[i].thread, NULL);
        /* Anything still queued (a failed model's late arrivals) fails. */
        if (m->load_err)
            mm__model_fail_queue(e, m, MM_TS_FAILED, MM_ELOAD, m->errmsg);
        else
            mm__model_fail_queue(e, m, MM_TS_FAILED, MM_ESHUTDOWN, "the model was released");
        mm__model_complete_waiters(e, m, MM_KIND_PRELOAD, MM_ECANCELLED,
                                   "the model was released before it finished loading");
        mm__mem_reaped(e, m);
        mm__model_complete_waiters(e, m, MM_KIND_RELEASE, 0, NULL);
        mm__model_destroy(m);
        pthread_cond_broadcast(&e->retire_cv);
    }
}

void *mm__reaper_main(void *arg) {
    mm_engine_t *e = arg;
    pthread_mutex_lock(&e->mu);
    while (!e->stop_reaper) {
        int64_t now = mm_now_ns();
        int64_t next = now + IDLE_WAIT_NS;
        mm_model *m, *tmp;
        HASH_ITER(hh, e->models, m, tmp) {
            next = expire_queue(e, m, now, next);
            next = check_idle(e, m, now, next);
        }
        for (m = e->retiring; m; m = m->retire_next)
            next = expire_queue(e, m, now, next);
        reap(e);
        if (e->shutting_down && !e->models && !e->retiring) {
            while (e->shutdown_waiters) {
                mm_task_t *t = e->shutdown_waiters;
                e->shutdown_waiters = t->next;
                mm__complete(e, t, MM_TS_DONE, 0, NULL);
            }
            pthread_cond_broadcast(&e->retire_cv);
        }
        if (e->stop_reaper)
            break;
        struct timespec ts = mm_ns_to_timespec(next);
        pthread_cond_timedwait(&e->reaper_cv, &e->mu, &ts);
    }
    pthread_mutex_unlock(&e->mu);
    return NULL;
}
