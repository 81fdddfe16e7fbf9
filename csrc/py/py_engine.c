/* py_engine.c: the _core.Engine type, a thin handle on mm_engine_t.
 *
 * submit() copies the inputs into C memory (UTF-8) and returns at once: a
 * task id, or a (code_name, message) tuple for an immediate error, which
 * is cheaper than raising on the hot path.  Every call here returns
 * without waiting for model work; only close() blocks (joining threads),
 * and it releases the GIL while it does.
 *
 * After fork() the child has the engine's memory but none of its threads
 * (and maybe a mutex some worker held at the fork): a pthread_atfork
 * handler bumps a generation counter, and every call compares it first, so
 * a child that uses its parent's manager gets an error at once instead of
 * hanging, and never tries to join threads it does not have.
 */
#include <math.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>

#include "mm_alloc.h"
#include "mm_embcache.h"
#include "mm_err.h"
#ifdef MM_HAVE_hub
#include "mm_hub.h"
#endif
#include "mmpy.h"

typedef struct mmpy_engine {
    PyObject_HEAD
    mm_engine_t *e;
    PyTypeObject *channel_type; /* strong reference */
    PyTypeObject *future_type;  /* strong reference */
    unsigned fork_gen;          /* fork_generation when the engine was made */
    long owner_pid;
} mmpy_engine;

/* Bumped in every child after fork(); read with the GIL held. */
static volatile unsigned fork_generation;
static void after_fork_child(void) { fork_generation++; }

static int forked(const mmpy_engine *self) { return self->fork_gen != fork_generation; }

static void forked_message(const mmpy_engine *self, char *buf, size_t cap) {
    snprintf(buf, cap,
             "this ModelManager was created in process %ld and cannot be used after fork() (this "
             "is process %ld): create a new ModelManager in the child process",
             self->owner_pid, (long)getpid());
}

/* A copy of a str argument as UTF-8 with no NUL byte inside (C would cut the
 * name there and serve another model).  NULL with msg filled otherwise. */
static const char *c_string(PyObject *o, const char *what, char *msg, size_t cap) {
    if (!PyUnicode_Check(o)) {
        snprintf(msg, cap, "%s must be a string, got %.60s", what, Py_TYPE(o)->tp_name);
        return NULL;
    }
    Py_ssize_t len;
    const char *s = PyUnicode_AsUTF8AndSize(o, &len);
    if (!s) {
        PyErr_Clear();
        PyObject *r = PyObject_Repr(o);
        const char *rs = r ? PyUnicode_AsUTF8(r) : NULL;
        if (!rs)
            PyErr_Clear();
        snprintf(msg, cap, "%s %.200s is not valid Unicode (it contains a lone surrogate)", what,
                 rs ? rs : "?");
        Py_XDECREF(r);
        return NULL;
    }
    if (strlen(s) != (size_t)len) {
        PyObject *r = PyObject_Repr(o);
        const char *rs = r ? PyUnicode_AsUTF8(r) : NULL;
        if (!rs)
            PyErr_Clear();
        snprintf(msg, cap, "%s %.200s contains a NUL byte", what, rs ? rs : "?");
        Py_XDECREF(r);
        return NULL;
    }
    return s;
}

#define STACK_ITEMS 64

static mm_channel_t *get_channel(mmpy_engine *self, PyObject *obj) {
    if (!PyObject_TypeCheck(obj, self->channel_type)) {
        PyErr_SetString(PyExc_TypeError, "expected a pymodelmgr._core.Channel");
        return NULL;
    }
    mm_channel_t *ch = ((mmpy_channel *)obj)->ch;
    if (!ch)
        PyErr_SetString(PyExc_ValueError, "channel is closed");
    return ch;
}

static int check_open(mmpy_engine *self) {
    if (self->e && forked(self)) {
        char msg[300];
        forked_message(self, msg, sizeof msg);
        PyErr_SetString(PyExc_RuntimeError, msg);
        return -1;
    }
    if (!self->e) {
        PyErr_SetString(PyExc_RuntimeError, "the engine is closed");
        return -1;
    }
    return 0;
}

static PyObject *err_tuple(int code, const char *msg) {
    return Py_BuildValue("(ss)", mm_err_name(code), msg);
}

/* submit(channel, model_name, task_type, task_data, device, num_workers,
 *        keep_alive_minutes, revision, params_json, flags[, model_options_json])
 *   -> int | TaskFuture | (code, message)
 * flags bit MMPY_FLAG_FUTURE (the channel was made for an event loop): a TaskFuture in that
 * channel's table instead of the id.
 * model_options_json: None or a JSON object text of load options for a model
 * this submit creates ({"backend", "trust_remote_code"}).
 * flags bit MMPY_FLAG_DEFER_WAKE: the caller will call kick() after the burst. */
static PyObject *engine_submit(mmpy_engine *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 10 && nargs != 11) {
        PyErr_SetString(PyExc_TypeError, "submit() takes 10 or 11 arguments");
        return NULL;
    }
    char smsg[400];
    if (self->e && forked(self)) {
        forked_message(self, smsg, sizeof smsg);
        return err_tuple(MM_EUNSUPPORTED, smsg);
    }
    if (check_open(self) < 0)
        return NULL;
    mm_channel_t *ch = get_channel(self, args[0]);
    if (!ch)
        return NULL;
    const char *model = c_string(args[1], "model_name", smsg, sizeof smsg);
    if (!model)
        return err_tuple(MM_EINVAL, smsg);
    if (!PyUnicode_Check(args[2])) {
        snprintf(smsg, sizeof smsg,
                 "task_type must be a string: \"embedding\", \"text_generation\", \"rerank\" or "
                 "\"classification\", got %.60s",
                 Py_TYPE(args[2])->tp_name);
        return err_tuple(MM_EINVAL, smsg);
    }
    mm_task_type type;
    const char *tt = c_string(args[2], "task_type", smsg, sizeof smsg);
    if (!tt)
        return err_tuple(MM_EINVAL, smsg);
    if (mm_task_type_parse(tt, &type) < 0) {
        char msg[200];
        snprintf(msg, sizeof msg,
                 "unknown task_type \"%.60s\": use \"embedding\", \"text_generation\", "
                 "\"rerank\" or \"classification\"",
                 tt);
        return err_tuple(MM_EINVAL, msg);
    }
    if (!PyUnicode_Check(args[4])) {
        snprintf(smsg, sizeof smsg,
                 "device must be a string: \"gpu\", \"cpu\" or \"cuda:N\", got %.60s",
                 Py_TYPE(args[4])->tp_name);
        return err_tuple(MM_EINVAL, smsg);
    }
    const char *device = c_string(args[4], "device", smsg, sizeof smsg);
    if (!device)
        return err_tuple(MM_EINVAL, smsg);
    long nw = -1;
    if (PyLong_Check(args[5]) && !PyBool_Check(args[5])) {
        nw = PyLong_AsLong(args[5]);
        if (nw == -1 && PyErr_Occurred()) {
            PyErr_Clear();
            nw = -1;
        }
    }
    if (nw < 1 || nw > 1000000) {
        PyObject *r = PyObject_Repr(args[5]);
        const char *rs = r ? PyUnicode_AsUTF8(r) : NULL;
        if (!rs)
            PyErr_Clear();
        snprintf(smsg, sizeof smsg, "num_workers must be an integer >= 1 (or None), got %.80s",
                 rs ? rs : "?");
        Py_XDECREF(r);
        return err_tuple(MM_EINVAL, smsg);
    }

    mm_submit_args a;
    memset(&a, 0, sizeof a);
    a.model_name = model;
    a.type = type;
    a.device = device;
    a.num_workers = nw > 1000000 ? 1000000 : (int)nw;
    if (args[6] != Py_None) {
        double minutes = PyFloat_AsDouble(args[6]);
        if (minutes == -1.0 && PyErr_Occurred()) {
            PyErr_Clear();
            return err_tuple(MM_EINVAL, "keep_alive must be a number of minutes or None, and "
                                        "at most 1e9 minutes (negative: never release)");
        }
        if (isnan(minutes))
            return err_tuple(MM_EINVAL, "keep_alive must be a number of minutes, not NaN");
        if (!isinf(minutes) && minutes > 1e9) {
            snprintf(smsg, sizeof smsg,
                     "keep_alive=%g minutes is out of range: at most 1e9 minutes (a negative "
                     "value or inf never releases the model)",
                     minutes);
            return err_tuple(MM_EINVAL, smsg);
        }
        a.has_keep_alive = 1;
        a.keep_alive_ms = minutes < 0 || isinf(minutes) ? -1 : (int64_t)(minutes * 60000.0);
    }
    if (args[7] != Py_None) {
        a.revision = c_string(args[7], "revision", smsg, sizeof smsg);
        if (!a.revision)
            return err_tuple(MM_EINVAL, smsg);
#ifdef MM_HAVE_hub
        if (a.revision[0] && mm_hub_validate_revision(a.revision, smsg, sizeof smsg) != 0)
            return err_tuple(MM_EINVAL, smsg);
#endif
    }
    if (args[8] != Py_None) {
        a.params_json = PyUnicode_AsUTF8(args[8]);
        if (!a.params_json)
            return NULL;
    }
    if (nargs == 11 && args[10] != Py_None) {
        if (!PyUnicode_Check(args[10]))
            return err_tuple(MM_EINVAL, "model options must be a JSON text");
        a.model_options_json = PyUnicode_AsUTF8(args[10]);
        if (!a.model_options_json)
            return NULL;
    }
    a.user_flags = (unsigned)PyLong_AsUnsignedLong(args[9]);
    if (PyErr_Occurred())
        return NULL;
    a.defer_wake = (a.user_flags & MMPY_FLAG_DEFER_WAKE) != 0;

    PyObject *data = args[3];
    const char *stack_items[STACK_ITEMS];
    size_t stack_lens[STACK_ITEMS];
    const char **items = stack_items;
    size_t *lens = stack_lens;
    PyObject *result = NULL;
    char msg[600];
    if (data == Py_None) {
        a.kind = MM_KIND_PRELOAD;
    } else if (PyUnicode_Check(data)) {
        Py_ssize_t len;
        const char *s = PyUnicode_AsUTF8AndSize(data, &len);
        if (!s) {
            PyErr_Clear();
            return err_tuple(MM_EINVAL, "task_data is not valid Unicode (it contains a lone "
                                        "surrogate)");
        }
        items[0] = s;
        lens[0] = (size_t)len;
        a.items = items;
        a.item_lens = lens;
        a.n_items = 1;
        a.single_input = 1;
    } else if (PyList_Check(data) || PyTuple_Check(data)) {
        PyObject *seq = data;
        Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
        if (n == 0)
            return err_tuple(MM_EINVAL, "task_data is an empty list: give at least one text");
        if (n > STACK_ITEMS) {
            items = mm_malloc((size_t)n * sizeof *items);
            lens = mm_malloc((size_t)n * sizeof *lens);
            if (!items || !lens) {
                result = PyErr_NoMemory();
                goto out;
            }
        }
        PyObject **elems = PySequence_Fast_ITEMS(seq);
        for (Py_ssize_t i = 0; i < n; i++) {
            if (!PyUnicode_Check(elems[i])) {
                snprintf(msg, sizeof msg, "task_data[%zd] is %.60s, expected str", i,
                         Py_TYPE(elems[i])->tp_name);
                result = err_tuple(MM_EINVAL, msg);
                goto out;
            }
            Py_ssize_t len;
            items[i] = PyUnicode_AsUTF8AndSize(elems[i], &len);
            if (!items[i]) {
                PyErr_Clear();
                snprintf(msg, sizeof msg,
                         "task_data[%zd] is not valid Unicode (it contains a lone surrogate)", i);
                result = err_tuple(MM_EINVAL, msg);
                goto out;
            }
            lens[i] = (size_t)len;
        }
        a.items = items;
        a.item_lens = lens;
        a.n_items = (size_t)n;
    } else {
        snprintf(msg, sizeof msg,
                 "task_data must be a string, a list of strings, or None to pre-load; got %.60s",
                 Py_TYPE(data)->tp_name);
        return err_tuple(MM_EINVAL, msg);
    }
    a.kind = data == Py_None ? MM_KIND_PRELOAD : MM_KIND_RUN;
    uint64_t id;
    mmpy_channel *cho = (mmpy_channel *)args[0];
    if ((a.user_flags & MMPY_FLAG_FUTURE) && !cho->loop) {
        PyErr_SetString(PyExc_ValueError, "a TaskFuture needs a channel made for an event loop");
        goto out;
    }
    int rc = mm_engine_submit(self->e, ch, &a, &id, msg, sizeof msg);
    if (rc < 0) {
        result = err_tuple(rc, msg[0] ? msg : mm_strerror(rc));
    } else if (a.user_flags & MMPY_FLAG_FUTURE) {
        /* the future, registered where drain() finds it by id */
        result = mmpy_future_new(self->future_type, cho->loop, (PyObject *)self, id);
        if (!result || mmpy_ftable_put(&cho->futures, cho, (mmpy_future *)result) < 0) {
            Py_CLEAR(result);
            mm_engine_cancel(self->e, id); /* its completion finds no future and is dropped */
        }
    } else {
        result = PyLong_FromUnsignedLongLong(id);
    }
out:
    if (items != stack_items)
        mm_free((void *)items);
    if (lens != stack_lens)
        mm_free(lens);
    return result;
}

void mmpy_engine_cancel_task(PyObject *engine, uint64_t tid) {
    mmpy_engine *self = (mmpy_engine *)engine;
    if (self->e && !forked(self))
        mm_engine_cancel(self->e, tid);
}

static PyObject *engine_kick(mmpy_engine *self, PyObject *unused) {
    (void)unused;
    if (self->e && !forked(self))
        mm_engine_kick(self->e);
    Py_RETURN_NONE;
}

static PyObject *engine_cancel(mmpy_engine *self, PyObject *arg) {
    if (check_open(self) < 0)
        return NULL;
    unsigned long long id = PyLong_AsUnsignedLongLong(arg);
    if (PyErr_Occurred())
        return NULL;
    return PyBool_FromLong(mm_engine_cancel(self->e, id));
}

static PyObject *engine_release(mmpy_engine *self, PyObject *args) {
    PyObject *cho;
    const char *name;
    if (check_open(self) < 0 || !PyArg_ParseTuple(args, "Os:release", &cho, &name))
        return NULL;
    mm_channel_t *ch = get_channel(self, cho);
    if (!ch)
        return NULL;
    uint64_t id;
    int rc = mm_engine_release(self->e, ch, name, &id);
    if (rc < 0)
        return PyErr_NoMemory();
    return PyLong_FromUnsignedLongLong(id);
}

/* A list of n objects, the i-th made by make() from the element at
 * arr + i * size (a new reference, or NULL with an exception set, which drops
 * the list). */
static PyObject *build_list(const void *arr, size_t n, size_t size,
                            PyObject *(*make)(const void *elem)) {
    PyObject *out = PyList_New((Py_ssize_t)n);
    for (size_t i = 0; out && i < n; i++) {
        PyObject *v = make((const char *)arr + i * size);
        if (!v) {
            Py_CLEAR(out);
            break;
        }
        PyList_SET_ITEM(out, (Py_ssize_t)i, v);
    }
    return out;
}

static PyObject *id_obj(const void *elem) {
    return PyLong_FromUnsignedLongLong(*(const uint64_t *)elem);
}

/* A NUL-terminated name (device, model): invalid UTF-8 is replaced. */
static PyObject *name_obj(const void *elem) {
    return PyUnicode_DecodeUTF8(elem, (Py_ssize_t)strlen(elem), "replace");
}

static PyObject *engine_drop(mmpy_engine *self, PyObject *args) {
    const char *name, *reason;
    if (check_open(self) < 0 || !PyArg_ParseTuple(args, "ss:drop", &name, &reason))
        return NULL;
    uint64_t *ids;
    size_t n;
    int rc = mm_engine_drop(self->e, name, reason, &ids, &n);
    if (rc == MM_ENOTFOUND)
        Py_RETURN_NONE;
    if (rc < 0)
        return PyErr_NoMemory();
    PyObject *out = build_list(ids, n, sizeof *ids, id_obj);
    mm_free(ids);
    return out;
}

static PyObject *engine_shutdown(mmpy_engine *self, PyObject *args) {
    PyObject *cho;
    int cancel;
    if (check_open(self) < 0 || !PyArg_ParseTuple(args, "Op:shutdown", &cho, &cancel))
        return NULL;
    mm_channel_t *ch = get_channel(self, cho);
    if (!ch)
        return NULL;
    uint64_t id;
    if (mm_engine_shutdown(self->e, ch, cancel, &id) < 0)
        return PyErr_NoMemory();
    return PyLong_FromUnsignedLongLong(id);
}

static PyObject *status_dict(const void *elem) {
    const mm_model_status *s = elem;
    PyObject *devices = build_list(s->devices, (size_t)s->n_devices, sizeof s->devices[0],
                                   name_obj);
    if (!devices)
        return NULL;
    PyObject *keep = s->keep_alive_ms < 0 ? Py_NewRef(Py_None)
                                          : PyFloat_FromDouble(s->keep_alive_ms / 60000.0);
    PyObject *until = s->seconds_until_release < 0 ? Py_NewRef(Py_None)
                                                   : PyFloat_FromDouble(s->seconds_until_release);
    PyObject *last = s->last_used > 0 ? PyFloat_FromDouble(s->last_used) : Py_NewRef(Py_None);
    PyObject *loaded = s->loaded_at > 0 ? PyFloat_FromDouble(s->loaded_at) : Py_NewRef(Py_None);
    PyObject *error = s->error[0] ? PyUnicode_FromString(s->error) : Py_NewRef(Py_None);
    PyObject *download =
        s->download_total
            ? Py_BuildValue("{s:K,s:K,s:d}", "done_bytes", (unsigned long long)s->download_done,
                            "total_bytes", (unsigned long long)s->download_total, "fraction",
                            (double)s->download_done / (double)s->download_total)
            : Py_NewRef(Py_None);
    PyObject *by_dev = PyDict_New();
    for (int i = 0; by_dev && i < s->n_mem; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(s->mem_dev[i]);
        if (!v || PyDict_SetItemString(by_dev, s->mem_dev_name[i], v) < 0)
            Py_CLEAR(by_dev);
        Py_XDECREF(v);
    }
    PyObject *estimate =
        s->est_weights || s->est_activation
            ? Py_BuildValue("{s:K,s:K}", "weights_bytes", (unsigned long long)s->est_weights,
                            "activation_bytes", (unsigned long long)s->est_activation)
            : Py_NewRef(Py_None);
    PyObject *reason = s->last_release_reason[0] ? PyUnicode_FromString(s->last_release_reason)
                                                 : Py_NewRef(Py_None);
    if (!keep || !until || !last || !loaded || !error || !download || !by_dev || !reason ||
        !estimate) {
        Py_XDECREF(estimate);
        Py_XDECREF(by_dev);
        Py_XDECREF(reason);
        Py_XDECREF(download);
        Py_XDECREF(keep);
        Py_XDECREF(until);
        Py_XDECREF(last);
        Py_XDECREF(loaded);
        Py_XDECREF(error);
        Py_DECREF(devices);
        return NULL;
    }
    PyObject *d = Py_BuildValue(
        "{s:s,s:s,s:s,s:s,s:N,s:i,s:i,s:n,s:n,s:N,s:N,s:N,s:N,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,"
        "s:K,s:s,s:N,s:N,s:N,s:N,s:N}",
        "model_name", s->model_name, "task_type", mm_task_type_name(s->task_type), "state",
        s->state, "device", s->device_request, "devices", devices, "workers", s->workers,
        "workers_loaded", s->workers_loaded, "queue_depth", (Py_ssize_t)s->queue_depth,
        "in_flight", (Py_ssize_t)s->in_flight, "keep_alive_minutes", keep,
        "seconds_until_release", until, "last_used", last, "loaded_at", loaded, "submitted",
        (unsigned long long)s->submitted, "done", (unsigned long long)s->done, "failed",
        (unsigned long long)s->failed, "dropped", (unsigned long long)s->dropped, "timed_out",
        (unsigned long long)s->timed_out, "cancelled", (unsigned long long)s->cancelled,
        "batches", (unsigned long long)s->batches, "items", (unsigned long long)s->items,
        "memory_bytes", (unsigned long long)s->memory_bytes, "backend", s->backend, "error",
        error, "download", download, "memory_bytes_by_device", by_dev, "last_release_reason",
        reason, "memory_estimate", estimate);
    if (d && s->kv_blocks_total) { /* decoder-only generation: the KV-cache block budget */
        PyObject *kv = Py_BuildValue("{s:K,s:K}", "used", (unsigned long long)s->kv_blocks_used,
                                     "total", (unsigned long long)s->kv_blocks_total);
        if (!kv || PyDict_SetItemString(d, "kv_blocks", kv) < 0)
            Py_CLEAR(d);
        Py_XDECREF(kv);
    }
    return d;
}

static PyObject *engine_status(mmpy_engine *self, PyObject *unused) {
    (void)unused;
    if (check_open(self) < 0)
        return NULL;
    mm_model_status *arr;
    size_t n;
    if (mm_engine_status(self->e, &arr, &n) < 0)
        return PyErr_NoMemory();
    PyObject *out = build_list(arr, n, sizeof *arr, status_dict);
    mm_free(arr);
    return out;
}

static PyObject *device_dict(const void *elem) {
    const mm_device_status *d = elem;
    PyObject *models = build_list(d->models, (size_t)d->n_models, sizeof d->models[0], name_obj);
    if (!models)
        return NULL;
    return Py_BuildValue("{s:s,s:s,s:O,s:K,s:K,s:K,s:K,s:N}", "name", d->name, "label",
                         d->label, "simulated", d->simulated ? Py_True : Py_False, "total_bytes",
                         (unsigned long long)d->total_bytes, "free_bytes",
                         (unsigned long long)d->free_bytes, "budget_bytes",
                         (unsigned long long)d->budget_bytes, "used_bytes",
                         (unsigned long long)d->used_bytes, "models", models);
}

static PyObject *engine_devices(mmpy_engine *self, PyObject *unused) {
    (void)unused;
    if (check_open(self) < 0)
        return NULL;
    mm_device_status *arr;
    size_t n;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = mm_engine_devices(self->e, &arr, &n);
    Py_END_ALLOW_THREADS
    if (rc < 0)
        return PyErr_NoMemory();
    PyObject *out = build_list(arr, n, sizeof *arr, device_dict);
    mm_free(arr);
    return out;
}

static PyObject *release_dict(const void *elem) {
    const mm_release_record *r = elem;
    return Py_BuildValue("{s:s,s:s,s:K,s:d,s:d}", "model_name", r->model_name, "reason",
                         r->reason, "released_bytes", (unsigned long long)r->released_bytes,
                         "seconds", r->seconds, "at", r->at);
}

static PyObject *engine_releases(mmpy_engine *self, PyObject *unused) {
    (void)unused;
    if (check_open(self) < 0)
        return NULL;
    mm_release_record *arr;
    size_t n;
    if (mm_engine_releases(self->e, &arr, &n) < 0)
        return PyErr_NoMemory();
    PyObject *out = build_list(arr, n, sizeof *arr, release_dict);
    mm_free(arr);
    return out;
}

static PyObject *engine_stats(mmpy_engine *self, PyObject *unused) {
    (void)unused;
    if (check_open(self) < 0)
        return NULL;
    mm_engine_stats s;
    mm_engine_stats_get(self->e, &s);
    unsigned long long pushed, freed;
    mm_channel_global_counts(&pushed, &freed);
    mm_embcache_stats cs;
    PyObject *cache = Py_NewRef(Py_None);
    if (mm_engine_cache_stats(self->e, &cs) == 0) {
        Py_SETREF(cache, Py_BuildValue("{s:K,s:K,s:K,s:K,s:K,s:n,s:n}", "hits",
                                       (unsigned long long)cs.hits, "misses",
                                       (unsigned long long)cs.misses, "inserts",
                                       (unsigned long long)cs.inserts, "evictions",
                                       (unsigned long long)cs.evictions, "expirations",
                                       (unsigned long long)cs.expirations, "size",
                                       (Py_ssize_t)cs.size, "capacity",
                                       (Py_ssize_t)cs.capacity));
        if (!cache)
            return NULL;
    }
    return Py_BuildValue("{s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:N}", "created",
                         (unsigned long long)s.created, "completed",
                         (unsigned long long)s.completed, "double_completions",
                         (unsigned long long)s.double_completions, "live_models",
                         (unsigned long long)s.live_models, "retiring_models",
                         (unsigned long long)s.retiring_models, "channel_pushed", pushed,
                         "channel_freed", freed, "embedding_cache", cache);
}

static PyObject *engine_forked(mmpy_engine *self, PyObject *unused) {
    (void)unused;
    if (!forked(self))
        Py_RETURN_NONE;
    char msg[300];
    forked_message(self, msg, sizeof msg);
    return PyUnicode_FromString(msg);
}

static PyObject *engine_metrics(mmpy_engine *self, PyObject *unused) {
    (void)unused;
    if (check_open(self) < 0)
        return NULL;
    return mmpy_metrics_snapshot(self->e);
}

static void engine_close_impl(mmpy_engine *self) {
    mm_engine_t *e = self->e;
    self->e = NULL;
    /* In a forked child the engine's threads do not exist (and its mutex may
     * be held forever): leave its memory alone. */
    if (e && !forked(self)) {
        Py_BEGIN_ALLOW_THREADS
        mm_engine_free(e);
        Py_END_ALLOW_THREADS
    }
}

static PyObject *engine_close(mmpy_engine *self, PyObject *unused) {
    (void)unused;
    engine_close_impl(self);
    Py_RETURN_NONE;
}

static PyObject *engine_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"max_queue_size",   "queue_timeout_ms", "default_keep_alive_ms",
                             "max_batch_items",  "max_batch_tokens", "cpu_threads",
                             "cache_dir",        "fake_gpus",        "backend_options_json",
                             "allowed_gpus",     "embed_cache_entries", "embed_cache_ttl_ms",
                             "memory_fraction",  "max_loaded_models", "cpu_total_bytes",
                             NULL};
    mm_engine_params p;
    mm_engine_default_params(&p);
    Py_ssize_t mqs = 0, mbi = (Py_ssize_t)p.max_batch_items, mbt = (Py_ssize_t)p.max_batch_tokens;
    long long qt = p.queue_timeout_ms, ka = p.default_keep_alive_ms;
    int threads = 0;
    const char *cache_dir = p.cache_dir, *fake = NULL, *opts = "{}", *allowed = NULL;
    Py_ssize_t cache_entries = 0;
    long long cache_ttl = 3600000;
    double mem_frac = 0.9;
    int max_loaded = 0;
    unsigned long long cpu_total = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|nLLnnizzzznLdiK:Engine", kwlist, &mqs, &qt, &ka,
                                     &mbi, &mbt, &threads, &cache_dir, &fake, &opts, &allowed,
                                     &cache_entries, &cache_ttl, &mem_frac, &max_loaded,
                                     &cpu_total))
        return NULL;
    if (!(mem_frac > 0 && mem_frac <= 1) || max_loaded < 0) {
        PyErr_Format(PyExc_ValueError,
                     "memory_fraction must be in (0, 1] (got %g) and max_loaded_models >= 0 "
                     "(got %d)",
                     mem_frac, max_loaded);
        return NULL;
    }
    p.memory_fraction = mem_frac;
    p.max_loaded_models = max_loaded;
    p.cpu_total_bytes = cpu_total;
    if (mqs < 0 || mbi < 0 || mbt < 0 || threads < 0 || cache_entries < 0) {
        PyErr_SetString(PyExc_ValueError, "engine limits must not be negative");
        return NULL;
    }
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    long max_threads = 4 * (ncpu > 0 ? ncpu : 1);
    if (max_threads < 8)
        max_threads = 8;
    if (threads > max_threads) {
        PyErr_Format(PyExc_ValueError,
                     "cpu_threads=%d is too many: this machine has %ld CPU core(s), so at most "
                     "%ld threads per worker",
                     threads, ncpu, max_threads);
        return NULL;
    }
    p.max_queue_size = (size_t)mqs;
    p.queue_timeout_ms = qt;
    p.default_keep_alive_ms = ka;
    p.max_batch_items = (size_t)mbi;
    p.max_batch_tokens = (size_t)mbt;
    p.cpu_threads = threads;
    p.cache_dir = cache_dir ? cache_dir : "data/models";
    p.fake_gpus = fake;
    p.backend_options_json = opts ? opts : "{}";
    p.allowed_gpus = allowed;
    p.embed_cache_entries = (size_t)cache_entries;
    p.embed_cache_ttl_ms = cache_ttl;
    PyObject *mod = PyType_GetModule(type);
    mmpy_state *st = mod ? PyModule_GetState(mod) : NULL;
    if (!st)
        return NULL;
    mmpy_engine *self = (mmpy_engine *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    self->channel_type = (PyTypeObject *)Py_NewRef(st->channel_type);
    self->future_type = (PyTypeObject *)Py_NewRef(st->future_type);
    self->fork_gen = fork_generation;
    self->owner_pid = (long)getpid();
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = mm_engine_new(&p, &self->e);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        Py_DECREF(self);
        if (rc == MM_EINVAL)
            PyErr_Format(PyExc_ValueError,
                         "fake_gpus must be a comma list of free MiB per GPU (got \"%s\"), "
                         "allowed_gpus a comma list of ordinals (got \"%s\")",
                         fake ? fake : "", allowed ? allowed : "");
        else
            PyErr_Format(PyExc_RuntimeError, "cannot start the engine: %s", mm_strerror(rc));
        return NULL;
    }
    return (PyObject *)self;
}

static void engine_dealloc(mmpy_engine *self) {
    PyTypeObject *tp = Py_TYPE(self);
    engine_close_impl(self);
    Py_CLEAR(self->channel_type);
    Py_CLEAR(self->future_type);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyMethodDef engine_methods[] = {
    {"submit", (PyCFunction)(void (*)(void))engine_submit, METH_FASTCALL,
     "submit(channel, model_name, task_type, task_data, device, num_workers, keep_alive, "
     "revision, params_json, flags[, model_options_json]) -> int | TaskFuture | (code, message)"},
    {"kick", (PyCFunction)engine_kick, METH_NOARGS,
     "kick(): wakes workers for tasks submitted with the defer-wake flag."},
    {"cancel", (PyCFunction)engine_cancel, METH_O,
     "cancel(task_id) -> bool: removes a task that has not started."},
    {"release", (PyCFunction)engine_release, METH_VARARGS,
     "release(channel, model_name) -> control task id"},
    {"drop", (PyCFunction)engine_drop, METH_VARARGS,
     "drop(model_name, reason) -> list of dropped task ids, or None when no such model"},
    {"shutdown", (PyCFunction)engine_shutdown, METH_VARARGS,
     "shutdown(channel, cancel_pending) -> control task id"},
    {"status", (PyCFunction)engine_status, METH_NOARGS, "status() -> list of model dicts"},
    {"devices", (PyCFunction)engine_devices, METH_NOARGS, "devices() -> list of device dicts"},
    {"releases", (PyCFunction)engine_releases, METH_NOARGS,
     "releases() -> the last release of each model name"},
    {"stats", (PyCFunction)engine_stats, METH_NOARGS, "stats() -> task accounting dict"},
    {"forked", (PyCFunction)engine_forked, METH_NOARGS,
     "forked() -> None, or a message when this process is a fork() child of the engine's"},
    {"metrics", (PyCFunction)engine_metrics, METH_NOARGS,
     "metrics() -> the core's counters, histograms and gauges (see py_metrics.c)"},
    {"close", (PyCFunction)engine_close, METH_NOARGS,
     "close(): stops everything, joins threads, frees memory (blocks, GIL released)"},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot engine_slots[] = {
    {Py_tp_doc, "Engine(**limits)\n\nThe C engine behind ModelManager (internal)."},
    {Py_tp_new, engine_new},
    {Py_tp_dealloc, engine_dealloc},
    {Py_tp_methods, engine_methods},
    {0, NULL},
};

static PyType_Spec engine_spec = {
    .name = "pymodelmgr._core.Engine",
    .basicsize = sizeof(mmpy_engine),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = engine_slots,
};

int mmpy_engine_init_type(PyObject *module, mmpy_state *st) {
    static int atfork_registered;
    if (!atfork_registered) {
        atfork_registered = 1;
        pthread_atfork(NULL, NULL, after_fork_child);
    }
    st->engine_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &engine_spec, NULL);
    if (!st->engine_type)
        return -1;
    return PyModule_AddType(module, st->engine_type);
}
