/* py_hub.c: the hub client's functions in pymodelmgr._core.
 *
 *   hub_snapshot(model, revision="main", *, cache_dir=None, endpoint=None,
 *                token=None, offline=None, refresh=False, progress=None,
 *                max_retries=None, retry_base_s=None, retry_max_s=None,
 *                connect_timeout_s=None, read_timeout_s=None) -> dict
 *   hub_default_params() -> dict   (the settings from the environment,
 *                                   with has_token instead of the token)
 *   HubError(RuntimeError)          .code is the stable name ("AUTH_REQUIRED")
 *
 * hub_snapshot() runs mm_hub_snapshot() on the calling thread with the GIL
 * released.  Progress reaches the Python callable through the C progress
 * callback, which runs on that same thread: at most every 100 ms (and at
 * each file end) it takes the GIL back, calls the callable with a dict,
 * checks for signals (so Ctrl-C cancels a download), and releases the GIL
 * again.  Nothing here touches Python from any other thread.  The call is
 * not meant for the event loop thread: the Python layer runs it in an
 * executor or a CLI.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <string.h>

#include "mm_err.h"
#include "mm_hub.h"
#include "mm_time.h"

typedef struct py_progress {
    PyObject *callable;      /* borrowed; NULL: only check signals */
    PyThreadState *saved;    /* this thread's state while the GIL is released */
    int64_t last_ns;
    int failed;              /* a Python exception is pending */
} py_progress;

static int progress_cb(const mm_hub_progress *pr, void *ud) {
    py_progress *pp = ud;
    int64_t now = mm_now_ns();
    /* Always deliver a finished file and the final report; throttle the rest. */
    int final = !pr->file[0] && pr->model_total && pr->model_done == pr->model_total;
    int boundary = final || (pr->file[0] && pr->file_total && pr->file_done == pr->file_total);
    if (!boundary && now - pp->last_ns < 100000000)
        return 0;
    pp->last_ns = now;
    PyEval_RestoreThread(pp->saved);
    int rc = 0;
    if (PyErr_CheckSignals() != 0) {
        rc = 1;
    } else if (pp->callable) {
        PyObject *d = Py_BuildValue("{s:s,s:K,s:K,s:K,s:K,s:i,s:i}", "file", pr->file, "file_done",
                                    (unsigned long long)pr->file_done, "file_total",
                                    (unsigned long long)pr->file_total, "model_done",
                                    (unsigned long long)pr->model_done, "model_total",
                                    (unsigned long long)pr->model_total, "file_index", pr->file_index,
                                    "file_count", pr->file_count);
        PyObject *r = d ? PyObject_CallOneArg(pp->callable, d) : NULL;
        Py_XDECREF(d);
        if (!r)
            rc = 1;
        Py_XDECREF(r);
    }
    if (rc)
        pp->failed = 1;
    pp->saved = PyEval_SaveThread();
    return rc;
}

static int raise_hub_error(PyObject *module, int code, const char *msg) {
    PyObject *type = PyObject_GetAttrString(module, "HubError");
    if (!type)
        return -1;
    PyObject *exc = PyObject_CallFunction(type, "s", msg && *msg ? msg : mm_strerror(code));
    if (exc) {
        PyObject *name = PyUnicode_FromString(mm_err_name(code));
        PyObject *num = PyLong_FromLong(code);
        if (name && num && PyObject_SetAttrString(exc, "code", name) == 0 &&
            PyObject_SetAttrString(exc, "errno", num) == 0)
            PyErr_SetObject(type, exc);
        Py_XDECREF(name);
        Py_XDECREF(num);
        Py_DECREF(exc);
    }
    Py_DECREF(type);
    return -1;
}

/* Copies an optional str argument into a fixed field. */
static int set_str(PyObject *obj, char *dst, size_t cap, const char *what) {
    if (!obj || obj == Py_None)
        return 0;
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(obj, &n);
    if (!s)
        return -1;
    if ((size_t)n >= cap) {
        PyErr_Format(PyExc_ValueError, "%s is too long", what);
        return -1;
    }
    memcpy(dst, s, (size_t)n + 1);
    return 0;
}

static int set_ms(PyObject *obj, long *dst) {
    if (!obj || obj == Py_None)
        return 0;
    double s = PyFloat_AsDouble(obj);
    if (s == -1.0 && PyErr_Occurred())
        return -1;
    if (s < 0) {
        PyErr_SetString(PyExc_ValueError, "durations must be >= 0");
        return -1;
    }
    *dst = (long)(s * 1000.0);
    return 0;
}

static PyObject *result_dict(const mm_hub_result *r) {
    return Py_BuildValue("{s:s,s:s,s:O,s:O,s:O,s:i,s:K,s:K,s:i}", "path", r->path, "commit", r->commit, "local_dir",
                         r->local_dir ? Py_True : Py_False, "from_cache", r->from_cache ? Py_True : Py_False, "stale",
                         r->stale ? Py_True : Py_False, "n_files", r->n_files, "bytes_total",
                         (unsigned long long)r->bytes_total, "bytes_downloaded",
                         (unsigned long long)r->bytes_downloaded, "n_requests", r->n_requests);
}

static PyObject *hub_snapshot(PyObject *module, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"model", "revision", "cache_dir", "endpoint", "token", "offline", "refresh",
                             "progress", "max_retries", "retry_base_s", "retry_max_s", "connect_timeout_s",
                             "read_timeout_s", NULL};
    const char *model;
    PyObject *revision = Py_None, *cache_dir = Py_None, *endpoint = Py_None, *token = Py_None;
    PyObject *offline = Py_None, *progress = Py_None, *max_retries = Py_None;
    PyObject *retry_base = Py_None, *retry_max = Py_None, *ct = Py_None, *rt = Py_None;
    int refresh = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "s|O$OOOOpOOOOOO:hub_snapshot", kwlist, &model, &revision,
                                     &cache_dir, &endpoint, &token, &offline, &refresh, &progress, &max_retries,
                                     &retry_base, &retry_max, &ct, &rt))
        return NULL;
    if (progress != Py_None && !PyCallable_Check(progress)) {
        PyErr_SetString(PyExc_TypeError, "progress must be callable or None");
        return NULL;
    }
    mm_hub_params *p = PyMem_Calloc(1, sizeof *p);
    mm_hub_result *res = PyMem_Calloc(1, sizeof *res);
    char rev[256] = "main";
    char err[1024] = "";
    PyObject *ret = NULL;
    if (!p || !res) {
        PyErr_NoMemory();
        goto out;
    }
    mm_hub_default_params(p);
    if (set_str(revision, rev, sizeof rev, "revision") || set_str(cache_dir, p->cache_dir, sizeof p->cache_dir, "cache_dir") ||
        set_str(endpoint, p->endpoint, sizeof p->endpoint, "endpoint") ||
        set_str(token, p->token, sizeof p->token, "token") || set_ms(retry_base, &p->retry_base_ms) ||
        set_ms(retry_max, &p->retry_max_ms) || set_ms(ct, &p->connect_timeout_ms) ||
        set_ms(rt, &p->read_timeout_ms))
        goto out;
    size_t el = strlen(p->endpoint);
    while (el > 0 && p->endpoint[el - 1] == '/')
        p->endpoint[--el] = 0;
    if (offline != Py_None) {
        int t = PyObject_IsTrue(offline);
        if (t < 0)
            goto out;
        p->offline = t;
    }
    if (max_retries != Py_None) {
        long n = PyLong_AsLong(max_retries);
        if (n == -1 && PyErr_Occurred())
            goto out;
        p->max_retries = n < 0 ? 0 : (int)n;
    }
    p->refresh = refresh;
    py_progress pp = {.callable = progress == Py_None ? NULL : progress, .last_ns = mm_now_ns()};
    p->progress = progress_cb;
    p->progress_ud = &pp;
    pp.saved = PyEval_SaveThread();
    int rc = mm_hub_snapshot(p, model, rev, res, err, sizeof err);
    PyEval_RestoreThread(pp.saved);
    memset(p->token, 0, sizeof p->token);
    if (pp.failed && PyErr_Occurred())
        goto out; /* the callable raised, or KeyboardInterrupt */
    if (rc != 0) {
        raise_hub_error(module, rc, err);
        goto out;
    }
    ret = result_dict(res);
out:
    if (p)
        memset(p->token, 0, sizeof p->token);
    PyMem_Free(p);
    PyMem_Free(res);
    return ret;
}

static PyObject *hub_default_params(PyObject *module, PyObject *unused) {
    (void)module, (void)unused;
    mm_hub_params *p = PyMem_Calloc(1, sizeof *p);
    if (!p)
        return PyErr_NoMemory();
    mm_hub_default_params(p);
    char hf_cache[MM_HUB_PATH_MAX] = "";
    mm_hub_hf_cache_dir(hf_cache, sizeof hf_cache);
    PyObject *d = Py_BuildValue("{s:s,s:s,s:s,s:O,s:O,s:d,s:d,s:i}", "endpoint", p->endpoint, "cache_dir",
                                p->cache_dir, "hf_cache_dir", hf_cache, "has_token", p->token[0] ? Py_True : Py_False,
                                "offline", p->offline ? Py_True : Py_False, "connect_timeout_s",
                                p->connect_timeout_ms / 1000.0, "read_timeout_s", p->read_timeout_ms / 1000.0,
                                "max_retries", p->max_retries);
    memset(p->token, 0, sizeof p->token);
    PyMem_Free(p);
    return d;
}

static PyObject *hub_validate_name(PyObject *module, PyObject *arg) {
    (void)module;
    if (!PyUnicode_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "a repo id must be a string, got %.60s", Py_TYPE(arg)->tp_name);
        return NULL;
    }
    Py_ssize_t len;
    const char *s = PyUnicode_AsUTF8AndSize(arg, &len);
    if (!s) {
        PyErr_Clear();
        PyErr_Format(PyExc_ValueError, "repo id %R is not valid Unicode (it contains a lone surrogate)", arg);
        return NULL;
    }
    if (strlen(s) != (size_t)len) {
        PyErr_Format(PyExc_ValueError, "repo id %R contains a NUL byte", arg);
        return NULL;
    }
    char err[512];
    if (mm_hub_validate_repo_id(s, err, sizeof err) != 0) {
        PyErr_SetString(PyExc_ValueError, err);
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef hub_methods[] = {
    {"hub_snapshot", (PyCFunction)(void (*)(void))hub_snapshot, METH_VARARGS | METH_KEYWORDS,
     "hub_snapshot(model, revision='main', *, cache_dir=None, endpoint=None, token=None, offline=None, "
     "refresh=False, progress=None, max_retries=None, retry_base_s=None, retry_max_s=None, "
     "connect_timeout_s=None, read_timeout_s=None) -> dict\n\nResolves a model to a local snapshot "
     "directory, downloading what is missing (blocks; releases the GIL)."},
    {"hub_default_params", hub_default_params, METH_NOARGS,
     "hub_default_params() -> dict: the hub settings read from the environment."},
    {"hub_validate_name", hub_validate_name, METH_O,
     "hub_validate_name(repo_id): raises ValueError when it is not a valid repo id."},
    {NULL, NULL, 0, NULL},
};

int mmpy_hub_add(PyObject *module) {
    PyObject *exc = PyErr_NewExceptionWithDoc(
        "pymodelmgr._core.HubError",
        "A model download or cache lookup failed.  .code is the stable error name (e.g. 'AUTH_REQUIRED').",
        PyExc_RuntimeError, NULL);
    if (!exc)
        return -1;
    if (PyModule_AddObjectRef(module, "HubError", exc) < 0) {
        Py_DECREF(exc);
        return -1;
    }
    Py_DECREF(exc);
    return PyModule_AddFunctions(module, hub_methods);
}
