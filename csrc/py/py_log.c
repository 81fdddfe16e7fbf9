/* py_log.c: carries the C layers' log lines to Python's logging.
 *
 * The C sink may run on any thread with core locks held, so it never takes
 * the GIL: it appends the line to a bounded buffer and pokes every live
 * completion channel, whose drain on the event-loop thread then hands the
 * lines to logging.getLogger("pymodelmgr") (via _core.take_logs()).  Code
 * without an event loop can call take_logs() itself.  Lines beyond the
 * bound are counted and reported as one summary line.
 */
#include <pthread.h>
#include <string.h>

#include "mm_alloc.h"
#include "mm_log.h"
#include "mmpy.h"

#define MAX_LINES 2000
#define MAX_CHANNELS 64

typedef struct log_line {
    struct log_line *next;
    int level;
    char msg[];
} log_line;

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static log_line *head, *tail;                /* guarded by log_mu */
static int n_lines, n_dropped;               /* guarded by log_mu */
static mm_channel_t *channels[MAX_CHANNELS]; /* guarded by log_mu */

void mmpy_log_register_channel(mm_channel_t *ch) {
    pthread_mutex_lock(&log_mu);
    for (int i = 0; i < MAX_CHANNELS; i++) {
        if (!channels[i]) {
            channels[i] = ch;
            break;
        }
    }
    pthread_mutex_unlock(&log_mu);
}

void mmpy_log_unregister_channel(mm_channel_t *ch) {
    pthread_mutex_lock(&log_mu);
    for (int i = 0; i < MAX_CHANNELS; i++)
        if (channels[i] == ch)
            channels[i] = NULL;
    pthread_mutex_unlock(&log_mu);
}

static void sink(int level, const char *msg, void *ud) {
    (void)ud;
    size_t len = strlen(msg);
    log_line *l = mm_malloc(sizeof *l + len + 1);
    pthread_mutex_lock(&log_mu);
    if (!l || n_lines >= MAX_LINES) {
        n_dropped++;
        pthread_mutex_unlock(&log_mu);
        mm_free(l);
        return;
    }
    l->next = NULL;
    l->level = level;
    memcpy(l->msg, msg, len + 1);
    if (tail)
        tail->next = l;
    else
        head = l;
    tail = l;
    n_lines++;
    for (int i = 0; i < MAX_CHANNELS; i++)
        if (channels[i])
            mm_channel_poke(channels[i]);
    pthread_mutex_unlock(&log_mu);
}

static PyObject *take_logs(PyObject *mod, PyObject *unused) {
    (void)mod;
    (void)unused;
    pthread_mutex_lock(&log_mu);
    log_line *l = head;
    int dropped = n_dropped;
    head = tail = NULL;
    n_lines = 0;
    n_dropped = 0;
    pthread_mutex_unlock(&log_mu);
    PyObject *out = PyList_New(0);
    if (!out)
        goto fail;
    if (dropped) {
        PyObject *item = Py_BuildValue("(is)", 30, "log lines were dropped: buffer full");
        if (!item || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            goto fail;
        }
        Py_DECREF(item);
    }
    while (l) {
        log_line *next = l->next;
        PyObject *item = Py_BuildValue("(is)", l->level, l->msg);
        mm_free(l);
        l = next;
        if (!item || PyList_Append(out, item) < 0) {
            Py_XDECREF(item);
            goto fail;
        }
        Py_DECREF(item);
    }
    return out;
fail:
    while (l) {
        log_line *next = l->next;
        mm_free(l);
        l = next;
    }
    Py_XDECREF(out);
    return NULL;
}

static PyMethodDef log_methods[] = {
    {"take_logs", take_logs, METH_NOARGS,
     "take_logs() -> list[(level, message)]\n\nTakes the log lines the C layers produced since "
     "the last call (oldest first)."},
    {NULL, NULL, 0, NULL},
};

int mmpy_log_init(PyObject *module) {
    mm_log_set_sink(sink, NULL);
    return PyModule_AddFunctions(module, log_methods);
}
