/* mm_log.c: the process-wide log sink.
 *
 * The sink pointer pair is published under a mutex so that installing a new
 * sink while workers log is race-free; formatting happens outside the lock
 * into a stack buffer (long lines are cut, never allocated).
 */
#include "mm_log.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>

static pthread_mutex_t sink_mu = PTHREAD_MUTEX_INITIALIZER;
static mm_log_cb sink_cb; /* guarded by sink_mu */
static void *sink_ud;     /* guarded by sink_mu */

void mm_log_set_sink(mm_log_cb cb, void *ud) {
    pthread_mutex_lock(&sink_mu);
    sink_cb = cb;
    sink_ud = ud;
    pthread_mutex_unlock(&sink_mu);
}

void mm_log(int level, const char *fmt, ...) {
    pthread_mutex_lock(&sink_mu);
    mm_log_cb cb = sink_cb;
    void *ud = sink_ud;
    pthread_mutex_unlock(&sink_mu);
    if (!cb)
        return;
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    cb(level, buf, ud);
}
