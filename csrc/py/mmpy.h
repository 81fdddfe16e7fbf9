/* mmpy.h: declarations shared by the files of the pymodelmgr._core extension.
 *
 * One file per Python type (py_engine.c, py_channel.c) plus the log bridge
 * (py_log.c) and the module itself (module.c).  Optional layers add their
 * own parts through the weak mmpy_*_add hooks called from module.c.
 */
#ifndef MMPY_H
#define MMPY_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "mm_channel.h"
#include "mm_engine.h"

/* Per-module state. */
typedef struct mmpy_state {
    PyTypeObject *engine_type;
    PyTypeObject *channel_type;
    PyTypeObject *future_type; /* TaskFuture (py_future.c) */
    PyObject *json_loads; /* json.loads, for backend extras */
} mmpy_state;

/* What task() returns: an asyncio-compatible future of one C task (py_future.c). */
typedef struct mmpy_future mmpy_future;

/* A channel's pending futures by task id: open addressing, strong references, loop thread
 * (GIL) only.  A future is in at most one table, and its chan says which. */
typedef struct mmpy_ftable {
    mmpy_future **slots; /* cap entries, NULL when free */
    size_t cap;          /* 0 or a power of two */
    size_t n;
} mmpy_ftable;

typedef struct mmpy_channel {
    PyObject_HEAD
    mm_channel_t *ch;
    /* Set when the channel was made for an event loop (Channel(loop, Result, ErrorInfo)):
     * submits can return TaskFutures, and drain() resolves them itself. */
    PyObject *loop;
    PyObject *result_type, *errinfo_type;
    /* Result's slot descriptors (_ok, data, _error): a Result is made without running its
     * Python __init__ when all three are plain slot members (NULL: call Result(...)). */
    PyObject *r_ok, *r_data, *r_error;
    mmpy_ftable futures;
    PyObject *json_loads; /* from module state, a strong reference */
    PyObject *json_scan;  /* json's C scanner, scan(text, 0) -> (obj, end): json.loads without
                             its per-call Python wrapper and whitespace regexes (NULL: none) */
    /* Drain reuses the str objects for repeated model names and devices
     * (bursts come from one model): one small cache each, loop thread only. */
    char *last_model;
    PyObject *last_model_obj;
    char last_device[32];
    PyObject *last_device_obj;
    /* Interned result keys, made once per channel (not per result). */
    PyObject *k_embeddings, *k_generated_text, *k_generated_texts, *k_model_name, *k_device;
} mmpy_channel;

/* Type specs and their registration (each file exports one). */
int mmpy_future_init_type(PyObject *module, mmpy_state *st);
int mmpy_channel_init_type(PyObject *module, mmpy_state *st);
int mmpy_engine_init_type(PyObject *module, mmpy_state *st);
int mmpy_log_init(PyObject *module);
/* Engine.metrics(): the core's counters as dicts (py_metrics.c). */
PyObject *mmpy_metrics_snapshot(mm_engine_t *e);

/* TaskFuture (py_future.c), loop thread only.
 * mmpy_future_new: a pending future of task tid on loop; engine (may be NULL) is whom cancel()
 * asks to cancel the C task.  A new reference, or NULL with an exception. */
PyObject *mmpy_future_new(PyTypeObject *type, PyObject *loop, PyObject *engine, uint64_t tid);
/* Settles a pending future: with result (a new reference is taken), or exc (likewise), or
 * neither for cancelled.  Its callbacks go onto batch (a list: see mmpy_batch_schedule) when
 * batch is not NULL, else each is scheduled with loop.call_soon.  0, or -1 with an exception. */
int mmpy_future_settle(mmpy_future *f, PyObject *result, PyObject *exc, PyObject *batch);
int mmpy_future_pending(const mmpy_future *f);
/* Schedules one loop.call_soon that runs every callback gathered in batch, in order, each in
 * its own context (batch[0] is the loop, then (callback, future, context) triples). */
int mmpy_batch_schedule(PyObject *batch);
/* The raised exception as one object (normalized, its traceback attached), the error
 * indicator cleared; NULL when none. */
PyObject *mmpy_take_exc(void);
/* The table of a channel. */
int mmpy_ftable_put(mmpy_ftable *t, mmpy_channel *owner, mmpy_future *f);
mmpy_future *mmpy_ftable_pop(mmpy_ftable *t, uint64_t tid); /* the table's reference, or NULL */
mmpy_future *mmpy_ftable_get(const mmpy_ftable *t, uint64_t tid); /* borrowed, or NULL */
void mmpy_ftable_clear(mmpy_ftable *t);
int mmpy_ftable_traverse(const mmpy_ftable *t, visitproc visit, void *arg);
/* Engine.cancel(tid) for a future's cancel(): nothing once the engine is closed or forked. */
void mmpy_engine_cancel_task(PyObject *engine, uint64_t tid);

/* The log bridge: channels register so log lines wake their loops. */
void mmpy_log_register_channel(mm_channel_t *ch);
void mmpy_log_unregister_channel(mm_channel_t *ch);

/* Optional parts (weak: defined only when their layer is built). */
int mmpy_tok_add(PyObject *module) __attribute__((weak));
int mmpy_hub_add(PyObject *module) __attribute__((weak));
int mmpy_native_add(PyObject *module) __attribute__((weak));
int mmpy_fallback_add(PyObject *module) __attribute__((weak)); /* before native: the router */

/* Flags an extension caller attaches to a task at submit. */
#define MMPY_FLAG_NUMPY 1u
#define MMPY_FLAG_DEFER_WAKE 2u
#define MMPY_FLAG_FUTURE 4u /* submit() returns a TaskFuture registered on the channel */

#endif
