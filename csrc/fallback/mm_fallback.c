/* mm_fallback.c: the transformers fallback backend (C side).
 *
 * Runs any model that sentence-transformers / transformers can run, through
 * the Python module pymodelmgr.fallback, on the engine's worker threads, so
 * queueing, batching, keep-alive, memory accounting and release stay in the
 * C engine exactly as for native models.  Each entry point does its C work
 * (hub download, result copies' bookkeeping) without the GIL and takes it
 * (PyGILState_Ensure) only around the call into Python:
 *
 *   load():   hub snapshot (same client and cache as native models), then
 *             pymodelmgr.fallback.load(dir, task_type, device, ...) -> a
 *             model object kept in the worker's state;
 *   run():    model.run([(items, params_json, single_input), ...]) once per
 *             batch; the per-task answers are copied into the tasks before
 *             the GIL is let go (see pymodelmgr/fallback.py for their shape);
 *   unload(): model.close() and the last reference dropped, on the thread
 *             that loaded it, so the weights (and the CUDA cache) are freed.
 *
 * From the interpreter's atexit on no Python is called (see py_enter): a
 * model still loaded then is left to the process exit.  Also registers the router
 * (mm_router.c) ahead of the native backend (mmpy_fallback_add).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "mm_alloc.h"
#include "mm_backends.h"
#include "mm_engine.h"
#include "mm_err.h"
#include "mm_fallback.h"
#include "mm_hub.h"
#include "mm_log.h"
#include "mm_native.h"
#include "mmpy.h"

typedef struct fstate {
    PyObject *model; /* pymodelmgr.fallback model object (owned; GIL to touch) */
    uint64_t memory_bytes;
    size_t embedding_dim;
    char revision[64];
} fstate;

/* Entering Python from a worker: once the interpreter begins to finalize, a
 * thread that takes the GIL is made to exit on the spot (from inside whatever
 * it was running: a hang in the engine's join, or std::terminate when that
 * was a C++ frame of torch).  So an atexit hook (registered below; atexit runs
 * before finalization begins) closes the gate and waits for the calls in
 * flight; after it, workers never enter Python again and a model still loaded
 * is left to the process exit. */
static pthread_mutex_t g_gate_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_gate_cv = PTHREAD_COND_INITIALIZER;
static int g_gate_closed; /* guarded by g_gate_mu */
static int g_in_python;   /* worker calls between py_enter and py_leave */

static int py_running(void) {
#if PY_VERSION_HEX >= 0x030D0000
    return Py_IsInitialized() && !Py_IsFinalizing();
#else
    return Py_IsInitialized() && !_Py_IsFinalizing();
#endif
}

/* 1 with the GIL taken (*g set), or 0 when Python may no longer be entered. */
static int py_enter(PyGILState_STATE *g) {
    pthread_mutex_lock(&g_gate_mu);
    int ok = !g_gate_closed && py_running();
    if (ok)
        g_in_python++;
    pthread_mutex_unlock(&g_gate_mu);
    if (ok)
        *g = PyGILState_Ensure();
    return ok;
}

static void py_leave(PyGILState_STATE g) {
    PyGILState_Release(g);
    pthread_mutex_lock(&g_gate_mu);
    if (--g_in_python == 0)
        pthread_cond_broadcast(&g_gate_cv);
    pthread_mutex_unlock(&g_gate_mu);
}

/* atexit: close the gate, wait (GIL released) for the calls in flight. */
static PyObject *close_gate(PyObject *self, PyObject *unused) {
    (void)self, (void)unused;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&g_gate_mu);
    g_gate_closed = 1;
    while (g_in_python > 0)
        pthread_cond_wait(&g_gate_cv, &g_gate_mu);
    pthread_mutex_unlock(&g_gate_mu);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyMethodDef close_gate_def = {"_fallback_close_gate", close_gate, METH_NOARGS,
                                     "atexit hook: no fallback call into Python after this."};

/* The stable name "INVALID_ARGUMENT" -> its code; MM_ETASK when unknown. */
static int code_from_name(const char *name) {
#define MMF_CODE(sym, val, nm, phrase)                                                        \
    if (name && !strcmp(name, nm))                                                            \
        return (val);
    MM_ERROR_TABLE(MMF_CODE)
#undef MMF_CODE
    return MM_ETASK;
}

/* The pending exception, normalized (a new reference), or NULL; clears it. */
static PyObject *fetch_exception(void) {
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    if (!type)
        return NULL;
    PyErr_NormalizeException(&type, &value, &tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
#endif
}

/* The pending Python exception as (code, "Type: message"); clears it.  A
 * pymodelmgr.fallback.FallbackError carries its own code and message. */
static int take_exception(int default_code, char *err, size_t errlen) {
    PyObject *exc = fetch_exception();
    int code = default_code;
    if (!exc) {
        snprintf(err, errlen, "the fallback failed without an exception");
        return code;
    }
    PyObject *cname = PyObject_GetAttrString(exc, "code");
    if (cname && PyUnicode_Check(cname)) {
        code = code_from_name(PyUnicode_AsUTF8(cname));
        PyObject *msg = PyObject_Str(exc);
        snprintf(err, errlen, "%s", msg && PyUnicode_AsUTF8(msg) ? PyUnicode_AsUTF8(msg) : "?");
        Py_XDECREF(msg);
    } else {
        PyErr_Clear();
        PyObject *msg = PyObject_Str(exc);
        const char *m = msg ? PyUnicode_AsUTF8(msg) : NULL;
        snprintf(err, errlen, "%s: %s", Py_TYPE(exc)->tp_name, m ? m : "?");
        Py_XDECREF(msg);
    }
    Py_XDECREF(cname);
    Py_DECREF(exc);
    PyErr_Clear();
    return code;
}

static int fb_accepts(const char *model_name) { return mm_native_backend.accepts(model_name); }

static int fb_check(const mm_model_spec *spec, const mm_task_t *task, char *err, size_t errlen) {
    return mm_native_backend.check ? mm_native_backend.check(spec, task, err, errlen) : 0;
}

static int fb_load(const mm_model_spec *spec, const mm_device *dev, void **state, char *err,
                   size_t errlen) {
    *state = NULL;
    fstate *s = mm_calloc(1, sizeof *s);
    char *dir = mm_malloc(MM_HUB_PATH_MAX);
    if (!s || !dir) {
        mm_free(s);
        mm_free(dir);
        snprintf(err, errlen, "out of memory");
        return MM_ENOMEM;
    }
    int rc = mm_native_resolve_model_rev(spec, dir, MM_HUB_PATH_MAX, s->revision,
                                         sizeof s->revision, err, errlen);
    if (rc != 0)
        goto fail;
    PyGILState_STATE g;
    if (!py_enter(&g)) {
        snprintf(err, errlen, "the Python interpreter is shutting down");
        rc = MM_ESHUTDOWN;
        goto fail;
    }
    PyObject *mod = PyImport_ImportModule("pymodelmgr.fallback");
    PyObject *model = mod ? PyObject_CallMethod(mod, "load", "sssisss", dir,
                                                mm_task_type_name(spec->task_type),
                                                dev->is_gpu ? dev->name : "cpu",
                                                dev->is_gpu ? 0 : dev->cpu_threads,
                                                spec->options_json ? spec->options_json : "{}",
                                                spec->model_options_json
                                                    ? spec->model_options_json
                                                    : "{}",
                                                spec->model_name)
                          : NULL;
    if (!model) {
        rc = take_exception(MM_ELOAD, err, errlen);
    } else {
        PyObject *mem = PyObject_GetAttrString(model, "memory_bytes");
        PyObject *dim = mem ? PyObject_GetAttrString(model, "embedding_dim") : NULL;
        if (mem && dim) {
            s->memory_bytes = PyLong_AsUnsignedLongLong(mem);
            s->embedding_dim = PyLong_AsSize_t(dim);
        }
        if (!mem || !dim || PyErr_Occurred()) {
            rc = take_exception(MM_ELOAD, err, errlen);
            Py_DECREF(model);
            model = NULL;
        }
        Py_XDECREF(mem);
        Py_XDECREF(dim);
    }
    Py_XDECREF(mod);
    s->model = model;
    py_leave(g);
    if (rc != 0)
        goto fail;
    mm_log(MM_LOG_INFO, "transformers fallback: %s loaded on %s for %s tasks", spec->model_name,
           dev->name, mm_task_type_name(spec->task_type));
    mm_free(dir);
    *state = s;
    return 0;
fail:
    mm_free(dir);
    mm_free(s);
    return rc;
}

/* One task's answer from Python (GIL held). */
static void store_result(mm_task_t *t, PyObject *r) {
    const char *kind = NULL;
    if (!PyTuple_Check(r) || PyTuple_GET_SIZE(r) < 2 ||
        !(kind = PyUnicode_AsUTF8(PyTuple_GET_ITEM(r, 0)))) {
        PyErr_Clear();
        mm_task_fail(t, MM_EINTERNAL, "the fallback returned a malformed result");
        return;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(r);
    if (!strcmp(kind, "error") && n == 3) {
        const char *code = PyUnicode_AsUTF8(PyTuple_GET_ITEM(r, 1));
        const char *msg = code ? PyUnicode_AsUTF8(PyTuple_GET_ITEM(r, 2)) : NULL;
        PyErr_Clear();
        mm_task_fail(t, code_from_name(code), "%s", msg ? msg : "the fallback failed");
        return;
    }
    PyObject *extras = PyTuple_GET_ITEM(r, n - 1);
    if (!strcmp(kind, "embeddings") && n == 5) {
        char *buf;
        Py_ssize_t blen;
        size_t rows = PyLong_AsSize_t(PyTuple_GET_ITEM(r, 2));
        size_t dim = PyLong_AsSize_t(PyTuple_GET_ITEM(r, 3));
        if (PyErr_Occurred() || PyBytes_AsStringAndSize(PyTuple_GET_ITEM(r, 1), &buf, &blen) < 0 ||
            rows != mm_task_n_items(t) || (size_t)blen != rows * dim * sizeof(float)) {
            PyErr_Clear();
            mm_task_fail(t, MM_EINTERNAL, "the fallback returned embeddings of the wrong shape");
            return;
        }
        float *out = mm_task_result_embeddings(t, dim);
        if (!out) {
            mm_task_fail(t, MM_ENOMEM, "out of memory");
            return;
        }
        memcpy(out, buf, (size_t)blen);
    } else if (!strcmp(kind, "texts") && n == 4) {
        PyObject *texts = PyTuple_GET_ITEM(r, 1);
        size_t per = PyLong_AsSize_t(PyTuple_GET_ITEM(r, 2));
        if (PyErr_Occurred() || !PyList_Check(texts) || per == 0 ||
            (size_t)PyList_GET_SIZE(texts) != per * mm_task_n_items(t)) {
            PyErr_Clear();
            mm_task_fail(t, MM_EINTERNAL, "the fallback returned the wrong number of texts");
            return;
        }
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(texts); i++) {
            Py_ssize_t len;
            const char *s = PyUnicode_AsUTF8AndSize(PyList_GET_ITEM(texts, i), &len);
            if (!s || mm_task_result_text(t, (size_t)i, per, s, (size_t)len) != 0) {
                PyErr_Clear();
                mm_task_fail(t, MM_ENOMEM, "could not store generated text %zd", i);
                return;
            }
        }
    } else if (strcmp(kind, "fields") != 0 || n != 2) {
        mm_task_fail(t, MM_EINTERNAL, "the fallback returned an unknown result kind %.40s", kind);
        return;
    }
    /* extras: [(key, json_text), ...] */
    if (PyList_Check(extras)) {
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(extras); i++) {
            PyObject *kv = PyList_GET_ITEM(extras, i);
            const char *k = PyTuple_Check(kv) && PyTuple_GET_SIZE(kv) == 2
                                ? PyUnicode_AsUTF8(PyTuple_GET_ITEM(kv, 0))
                                : NULL;
            const char *v = k ? PyUnicode_AsUTF8(PyTuple_GET_ITEM(kv, 1)) : NULL;
            if (!v || mm_task_result_extra(t, k, v) != 0) {
                PyErr_Clear();
                mm_task_fail(t, MM_ENOMEM, "could not store the result fields");
                return;
            }
        }
    }
    if (!strcmp(kind, "fields"))
        mm_task_result_fields(t);
}

/* [(items, params_json, single_input), ...] for the batch (GIL held). */
static PyObject *batch_args(mm_task_t **tasks, size_t n) {
    PyObject *batch = PyList_New((Py_ssize_t)n);
    for (size_t ti = 0; batch && ti < n; ti++) {
        mm_task_t *t = tasks[ti];
        size_t items = mm_task_n_items(t);
        PyObject *lst = PyList_New((Py_ssize_t)items);
        for (size_t i = 0; lst && i < items; i++) {
            size_t len = 0;
            const char *s = mm_task_item(t, i, &len);
            PyObject *u = PyUnicode_DecodeUTF8(s, (Py_ssize_t)len, "replace");
            if (!u) {
                Py_CLEAR(lst);
                break;
            }
            PyList_SET_ITEM(lst, (Py_ssize_t)i, u);
        }
        PyObject *tup = lst ? Py_BuildValue("(Nsi)", lst, mm_task_params_json(t),
                                            mm_task_single_input(t))
                            : NULL;
        if (!tup) {
            Py_CLEAR(batch);
            break;
        }
        PyList_SET_ITEM(batch, (Py_ssize_t)ti, tup);
    }
    return batch;
}

static void fb_run(void *state, mm_task_t **all, size_t n_all) {
    fstate *s = state;
    char err[1024];
    /* Tasks whose callers gave up (cancelled, dropped) are left without a result:
     * the engine completes them with their stop code. */
    mm_task_t **tasks = mm_malloc((n_all ? n_all : 1) * sizeof *tasks);
    size_t n = 0;
    if (!tasks) {
        for (size_t i = 0; i < n_all; i++)
            mm_task_fail(all[i], MM_ENOMEM, "out of memory");
        return;
    }
    for (size_t i = 0; i < n_all; i++)
        if (!mm_task_cancelled(all[i]))
            tasks[n++] = all[i];
    PyGILState_STATE g;
    if (n == 0) {
        mm_free(tasks);
        return;
    }
    if (!py_enter(&g)) {
        for (size_t i = 0; i < n; i++)
            mm_task_fail(tasks[i], MM_ESHUTDOWN, "the Python interpreter is shutting down");
        mm_free(tasks);
        return;
    }
    PyObject *batch = batch_args(tasks, n);
    PyObject *res = batch ? PyObject_CallMethod(s->model, "run", "O", batch) : NULL;
    if (!res || !PyList_Check(res) || (size_t)PyList_GET_SIZE(res) != n) {
        int code = res ? MM_EINTERNAL : take_exception(MM_ETASK, err, sizeof err);
        if (res)
            snprintf(err, sizeof err, "the fallback returned %zd results for %zu tasks",
                     PyList_Check(res) ? PyList_GET_SIZE(res) : (Py_ssize_t)-1, n);
        for (size_t i = 0; i < n; i++)
            mm_task_fail(tasks[i], code, "%s", err);
    } else {
        for (size_t i = 0; i < n; i++)
            store_result(tasks[i], PyList_GET_ITEM(res, (Py_ssize_t)i));
    }
    Py_XDECREF(res);
    Py_XDECREF(batch);
    py_leave(g);
    mm_free(tasks);
}

static void fb_unload(void *state) {
    fstate *s = state;
    if (!s)
        return;
    PyGILState_STATE g;
    if (s->model && py_enter(&g)) {
        PyObject *r = PyObject_CallMethod(s->model, "close", NULL);
        if (!r)
            PyErr_Clear(); /* nothing to report to: the model is going anyway */
        Py_XDECREF(r);
        Py_CLEAR(s->model);
        py_leave(g);
    }
    mm_free(s);
}

static int fb_info(void *state, mm_backend_info *info) {
    fstate *s = state;
    info->memory_bytes = s->memory_bytes;
    info->embedding_dim = s->embedding_dim;
    snprintf(info->revision, sizeof info->revision, "%s", s->revision);
    return 0;
}

const mm_backend_vtable mm_fallback_backend = {
    .name = "transformers",
    .accepts = fb_accepts,
    .check = fb_check,
    .load = fb_load,
    .run = fb_run,
    .unload = fb_unload,
    .info = fb_info,
    .cost = NULL,
    .embed_cacheable = 1,
};

int mmpy_fallback_add(PyObject *module) {
    if (mm_backends_register(&mm_router_backend) != 0) {
        PyErr_NoMemory();
        return -1;
    }
    PyObject *hook = PyCFunction_New(&close_gate_def, NULL);
    PyObject *atexit = hook ? PyImport_ImportModule("atexit") : NULL;
    PyObject *r = atexit ? PyObject_CallMethod(atexit, "register", "O", hook) : NULL;
    Py_XDECREF(atexit);
    Py_XDECREF(hook);
    if (!r)
        return -1;
    Py_DECREF(r);
    return PyModule_AddIntConstant(module, "HAVE_FALLBACK", 1);
}
