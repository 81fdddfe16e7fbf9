/* py_channel.c: the _core.Channel type, one completion channel per event
 * loop.
 *
 * drain() is the only place results become Python objects, on the loop
 * thread: it takes every completed task at once and returns a list of
 * (task_id, status, payload) tuples, where status is 0 success (payload: the
 * result dict), 1 error (payload: (code_name, message)), 2 dropped (payload:
 * the reason), 3 cancelled (payload: None) or 4 success whose "embeddings"
 * is (float32 bytes, n, dim), for output="numpy".
 *
 * A channel made for an event loop also keeps that loop's TaskFutures by task
 * id (py_future.c): drain() settles those itself, building each Result
 * straight into its future and running the burst's done callbacks from one
 * loop callback, so a task's round trip makes no tuple, no int and no Handle;
 * only the other completions (stream pieces, numpy results, the manager's
 * control tasks, tasks whose future was cancelled) come back as tuples.
 */
#include <string.h>

#include "mm_alloc.h"
#include "mm_err.h"
#include "mmpy.h"

static PyObject *vectors_to_lists(const float *v, size_t n, size_t dim) {
    PyObject *outer = PyList_New((Py_ssize_t)n);
    if (!outer)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        PyObject *row = PyList_New((Py_ssize_t)dim);
        if (!row) {
            Py_DECREF(outer);
            return NULL;
        }
        for (size_t j = 0; j < dim; j++) {
            PyObject *f = PyFloat_FromDouble(v[i * dim + j]);
            if (!f) {
                Py_DECREF(row);
                Py_DECREF(outer);
                return NULL;
            }
            PyList_SET_ITEM(row, (Py_ssize_t)j, f);
        }
        PyList_SET_ITEM(outer, (Py_ssize_t)i, row);
    }
    return outer;
}

static PyObject *text_at(const mm_task_t *t, size_t i) {
    size_t len;
    const char *s = mm_task_result_text_at(t, i, &len);
    return PyUnicode_DecodeUTF8(s, (Py_ssize_t)len, "replace");
}

static PyObject *texts_result(const mm_task_t *t) {
    size_t per;
    size_t n = mm_task_result_n_texts(t, &per);
    if (per <= 1 && mm_task_single_input(t))
        return text_at(t, 0);
    size_t n_items = per ? n / per : n;
    PyObject *out = PyList_New((Py_ssize_t)(per <= 1 ? n : n_items));
    if (!out)
        return NULL;
    if (per <= 1) {
        for (size_t i = 0; i < n; i++) {
            PyObject *s = text_at(t, i);
            if (!s) {
                Py_DECREF(out);
                return NULL;
            }
            PyList_SET_ITEM(out, (Py_ssize_t)i, s);
        }
        if (mm_task_single_input(t))
            return out;
        return out;
    }
    /* num_return_sequences > 1: a list per input (flat list for one input). */
    if (mm_task_single_input(t)) {
        Py_DECREF(out);
        out = PyList_New((Py_ssize_t)per);
        if (!out)
            return NULL;
        for (size_t r = 0; r < per; r++) {
            PyObject *s = text_at(t, r);
            if (!s) {
                Py_DECREF(out);
                return NULL;
            }
            PyList_SET_ITEM(out, (Py_ssize_t)r, s);
        }
        return out;
    }
    for (size_t i = 0; i < n_items; i++) {
        PyObject *inner = PyList_New((Py_ssize_t)per);
        if (!inner) {
            Py_DECREF(out);
            return NULL;
        }
        for (size_t r = 0; r < per; r++) {
            PyObject *s = text_at(t, i * per + r);
            if (!s) {
                Py_DECREF(inner);
                Py_DECREF(out);
                return NULL;
            }
            PyList_SET_ITEM(inner, (Py_ssize_t)r, s);
        }
        PyList_SET_ITEM(out, (Py_ssize_t)i, inner);
    }
    return out;
}

static int merge_extras(PyObject *d, const mm_task_t *t, PyObject *json_loads,
                        PyObject *json_scan) {
    const char *extras = mm_task_result_extras(t);
    if (!extras)
        return 0;
    PyObject *obj = NULL;
    if (json_scan && extras[0] == '{') { /* the engine's extras: compact JSON objects */
        PyObject *pair = PyObject_CallFunction(json_scan, "si", extras, 0);
        if (pair && PyTuple_Check(pair) && PyTuple_GET_SIZE(pair) == 2 &&
            PyLong_AsSsize_t(PyTuple_GET_ITEM(pair, 1)) == (Py_ssize_t)strlen(extras))
            obj = Py_NewRef(PyTuple_GET_ITEM(pair, 0));
        Py_XDECREF(pair);
        PyErr_Clear(); /* anything unusual: json.loads below says what */
    }
    if (!obj)
        obj = PyObject_CallFunction(json_loads, "s", extras);
    if (!obj)
        return -1;
    int rc = PyDict_Check(obj) ? PyDict_Update(d, obj) : 0;
    Py_DECREF(obj);
    return rc;
}

/* A str for s, reused while s repeats (cache: *last / *last_obj). */
static PyObject *cached_str(const char *s, char **last, PyObject **last_obj) {
    if (*last_obj && *last && !strcmp(*last, s))
        return Py_NewRef(*last_obj);
    PyObject *o = PyUnicode_DecodeUTF8(s, (Py_ssize_t)strlen(s), "replace");
    char *copy = mm_strdup(s);
    if (o && copy) {
        mm_free(*last);
        Py_XSETREF(*last_obj, Py_NewRef(o));
        *last = copy;
    } else {
        mm_free(copy);
    }
    return o;
}

static PyObject *cached_device(mmpy_channel *c, const char *dev) {
    if (c->last_device_obj && !strcmp(c->last_device, dev))
        return Py_NewRef(c->last_device_obj);
    PyObject *o = PyUnicode_FromString(dev);
    if (o && strlen(dev) < sizeof c->last_device) {
        strcpy(c->last_device, dev);
        Py_XSETREF(c->last_device_obj, Py_NewRef(o));
    }
    return o;
}

static int set_obj(PyObject *d, PyObject *key, PyObject *v) {
    if (!v)
        return -1;
    int rc = PyDict_SetItem(d, key, v);
    Py_DECREF(v);
    return rc;
}

/* The success payload: the result dict of task(). */
static PyObject *success_dict(mmpy_channel *c, const mm_task_t *t, PyObject *json_loads,
                              unsigned flags) {
    PyObject *d = PyDict_New();
    if (!d)
        return NULL;
    PyObject *v = NULL;
    PyObject *key = NULL;
    switch (mm_task_result_kind(t)) {
    case MM_RESULT_EMBEDDINGS: {
        size_t n, dim;
        const float *vec = mm_task_result_vectors(t, &n, &dim);
        if (flags & MMPY_FLAG_NUMPY) {
            /* a bytearray, so the numpy array made over it is writable */
            PyObject *raw = PyByteArray_FromStringAndSize((const char *)vec,
                                                          (Py_ssize_t)(n * dim * sizeof(float)));
            v = raw ? Py_BuildValue("(Nnn)", raw, (Py_ssize_t)n, (Py_ssize_t)dim) : NULL;
        } else {
            v = vectors_to_lists(vec, n, dim);
        }
        key = c->k_embeddings;
        break;
    }
    case MM_RESULT_TEXTS: {
        size_t per;
        mm_task_result_n_texts(t, &per);
        v = texts_result(t);
        key = (mm_task_single_input(t) && per <= 1) ? c->k_generated_text : c->k_generated_texts;
        break;
    }
    case MM_RESULT_NONE:
    case MM_RESULT_FIELDS: /* the extras below are the result */
        break;
    }
    if (key && (!v || PyDict_SetItem(d, key, v) < 0))
        goto fail;
    Py_CLEAR(v);
    if (merge_extras(d, t, json_loads, c->json_scan) < 0)
        goto fail;
    mm_task_kind kind = mm_task_get_kind(t);
    if (kind != MM_KIND_SHUTDOWN &&
        set_obj(d, c->k_model_name,
                cached_str(mm_task_model_name(t), &c->last_model, &c->last_model_obj)) < 0)
        goto fail;
    if (kind == MM_KIND_RUN && mm_task_device(t) &&
        set_obj(d, c->k_device, cached_device(c, mm_task_device(t))) < 0)
        goto fail;
    if (mm_task_warning(t)) {
        PyObject *w = Py_BuildValue("[s]", mm_task_warning(t));
        if (!w || PyDict_SetItemString(d, "warnings", w) < 0) {
            Py_XDECREF(w);
            goto fail;
        }
        Py_DECREF(w);
    }
    return d;
fail:
    Py_XDECREF(v);
    Py_DECREF(d);
    return NULL;
}

static PyObject *convert(mmpy_channel *c, const mm_task_t *t, PyObject *json_loads) {
    unsigned flags = mm_task_user_flags(t);
    unsigned long long id = mm_task_id(t);
    if (mm_task_get_kind(t) == MM_KIND_PARTIAL) { /* status 5: (index, streamed text piece) */
        size_t len = 0;
        const char *s = mm_task_item(t, 0, &len);
        PyObject *piece = PyUnicode_DecodeUTF8(s, (Py_ssize_t)len, "replace");
        return piece ? Py_BuildValue("(Ki(nN))", id, 5, (Py_ssize_t)mm_task_stream_index(t), piece)
                     : NULL;
    }
    switch (mm_task_get_status(t)) {
    case MM_TS_DONE: {
        PyObject *d = success_dict(c, t, json_loads, flags);
        /* status 4: success whose "embeddings" is (bytes, n, dim) for numpy */
        int st = (flags & MMPY_FLAG_NUMPY) && mm_task_result_kind(t) == MM_RESULT_EMBEDDINGS ? 4 : 0;
        return d ? Py_BuildValue("(KiN)", id, st, d) : NULL;
    }
    case MM_TS_DROPPED:
        return Py_BuildValue("(Kis)", id, 2, mm_task_error_message(t));
    case MM_TS_CANCELLED:
        return Py_BuildValue("(KiO)", id, 3, Py_None);
    default:
        return Py_BuildValue("(Ki(ss))", id, 1, mm_err_name(mm_task_error_code(t)),
                             mm_task_error_message(t));
    }
}

/* A Result(ok, data, error) of the channel's Result type. */
static PyObject *make_result(mmpy_channel *c, PyObject *ok, PyObject *data, PyObject *error) {
    if (c->r_ok) { /* the slots directly: Result.__init__ only assigns them */
        PyTypeObject *tp = (PyTypeObject *)c->result_type;
        PyObject *r = tp->tp_alloc(tp, 0);
        if (!r)
            return NULL;
        if (Py_TYPE(c->r_ok)->tp_descr_set(c->r_ok, r, ok) < 0 ||
            Py_TYPE(c->r_data)->tp_descr_set(c->r_data, r, data) < 0 ||
            Py_TYPE(c->r_error)->tp_descr_set(c->r_error, r, error) < 0) {
            Py_DECREF(r);
            return NULL;
        }
        return r;
    }
    PyObject *args[] = {ok, data, error};
    return PyObject_Vectorcall(c->result_type, args, 3, NULL);
}

/* Settles f from its finished task t, as manager._drain_all does for other futures: a Result
 * (success or error), RuntimeError for a dropped task, cancelled for a cancelled one.  The
 * caller's alias name replaces the model name.  When building the
 * Result fails (out of memory), the future gets that exception: its awaiter never hangs. */
static int resolve(mmpy_channel *c, mmpy_future *f, const mm_task_t *t, PyObject *app_names,
                   PyObject *batch) {
    PyObject *key = NULL, *name = NULL, *res = NULL, *exc = NULL;
    if (app_names && PyDict_GET_SIZE(app_names)) {
        key = PyLong_FromUnsignedLongLong(mm_task_id(t));
        if (!key)
            goto settle;
        name = PyDict_GetItemWithError(app_names, key);
        if (name) {
            Py_INCREF(name);
            if (PyDict_DelItem(app_names, key) < 0)
                goto settle;
        } else if (PyErr_Occurred()) {
            goto settle;
        }
    }
    switch (mm_task_get_status(t)) {
    case MM_TS_DONE: {
        PyObject *d = success_dict(c, t, c->json_loads, mm_task_user_flags(t));
        if (d && name && PyDict_Contains(d, c->k_model_name) == 1 &&
            PyDict_SetItem(d, c->k_model_name, name) < 0)
            Py_CLEAR(d);
        res = d ? make_result(c, Py_True, d, Py_None) : NULL;
        Py_XDECREF(d);
        break;
    }
    case MM_TS_DROPPED: {
        PyObject *msg = PyUnicode_FromFormat("Task dropped: %s", mm_task_error_message(t));
        exc = msg ? PyObject_CallOneArg(PyExc_RuntimeError, msg) : NULL;
        Py_XDECREF(msg);
        break;
    }
    case MM_TS_CANCELLED:
        break;
    default: {
        PyObject *ei = PyObject_CallFunction(c->errinfo_type, "ssO",
                                             mm_err_name(mm_task_error_code(t)),
                                             mm_task_error_message(t), Py_None);
        PyObject *d = ei ? PyDict_New() : NULL;
        res = d ? make_result(c, Py_False, d, ei) : NULL;
        Py_XDECREF(d);
        Py_XDECREF(ei);
        break;
    }
    }
settle:
    if (!res && !exc && PyErr_Occurred())
        exc = mmpy_take_exc();
    int rc = mmpy_future_settle(f, res, exc, batch);
    Py_XDECREF(res);
    Py_XDECREF(exc);
    Py_XDECREF(name);
    Py_XDECREF(key);
    return rc;
}

static int numpy_success(const mm_task_t *t) {
    return (mm_task_user_flags(t) & MMPY_FLAG_NUMPY) && mm_task_get_status(t) == MM_TS_DONE &&
           mm_task_result_kind(t) == MM_RESULT_EMBEDDINGS;
}

/* Whether task tid streams (its id is a key of streams); errors count as yes (Python then
 * handles the completion). */
static int is_stream(PyObject *streams, uint64_t tid) {
    PyObject *key = PyLong_FromUnsignedLongLong(tid);
    int r = key ? PyDict_Contains(streams, key) : -1;
    Py_XDECREF(key);
    if (r < 0)
        PyErr_Clear();
    return r != 0;
}

/* drain([app_names, streams]) */
static PyObject *channel_drain(mmpy_channel *self, PyObject *const *args, Py_ssize_t nargs) {
    PyObject *app_names = nargs > 0 && args[0] != Py_None ? args[0] : NULL;
    PyObject *streams = nargs > 1 && args[1] != Py_None ? args[1] : NULL;
    if (nargs > 2 || (app_names && !PyDict_Check(app_names)) ||
        (streams && !PyDict_Check(streams))) {
        PyErr_SetString(PyExc_TypeError, "drain([app_names: dict, streams: dict])");
        return NULL;
    }
    if (!self->ch)
        return PyList_New(0);
    size_t n;
    mm_task_t **arr = mm_channel_take(self->ch, &n);
    PyObject *out = PyList_New(0);
    PyObject *batch = out && self->loop ? PyList_New(1) : NULL;
    if (batch)
        PyList_SET_ITEM(batch, 0, Py_NewRef(self->loop));
    size_t i = 0;
    int ran = out && (batch || !self->loop);
    if (ran) {
        for (; i < n; i++) {
            mm_task_t *t = arr[i];
            mmpy_future *f = NULL;
            /* a stream's end goes to Python after its pieces (in order) */
            if (self->futures.n && mm_task_get_kind(t) != MM_KIND_PARTIAL && !numpy_success(t) &&
                !(streams && PyDict_GET_SIZE(streams) && is_stream(streams, mm_task_id(t))))
                f = mmpy_ftable_pop(&self->futures, mm_task_id(t));
            int rc;
            if (f) {
                rc = resolve(self, f, t, app_names, batch);
                Py_DECREF(f);
            } else { /* the rest go back to Python as (task_id, status, payload) */
                PyObject *item = convert(self, t, self->json_loads);
                rc = item ? PyList_Append(out, item) : -1;
                Py_XDECREF(item);
            }
            mm_channel_task_free(t);
            if (rc < 0)
                break;
        }
    }
    int failed = !ran || i < n;
    for (size_t j = ran ? i + 1 : 0; j < n; j++)
        mm_channel_task_free(arr[j]);
    mm_free(arr);
    if (batch && mmpy_batch_schedule(batch) < 0)
        failed = 1;
    Py_XDECREF(batch);
    if (failed) {
        Py_XDECREF(out);
        return NULL;
    }
    return out;
}

/* take(task_id) -> TaskFuture | None: the pending future of a task, out of the table. */
static PyObject *channel_take(mmpy_channel *self, PyObject *arg) {
    unsigned long long id = PyLong_AsUnsignedLongLong(arg);
    if (id == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    mmpy_future *f = mmpy_ftable_pop(&self->futures, id);
    return f ? (PyObject *)f : Py_NewRef(Py_None);
}

/* take_all() -> list of every pending future, out of the table. */
static PyObject *channel_take_all(mmpy_channel *self, PyObject *unused) {
    (void)unused;
    PyObject *out = PyList_New(0);
    if (!out)
        return NULL;
    for (size_t i = 0; i < self->futures.cap; i++) {
        mmpy_future *f = self->futures.slots[i];
        if (f && PyList_Append(out, (PyObject *)f) < 0) {
            Py_DECREF(out);
            return NULL;
        }
    }
    mmpy_ftable_clear(&self->futures);
    return out;
}

static PyObject *channel_fileno(mmpy_channel *self, PyObject *unused) {
    (void)unused;
    if (!self->ch) {
        PyErr_SetString(PyExc_ValueError, "channel is closed");
        return NULL;
    }
    return PyLong_FromLong(mm_channel_fd(self->ch));
}

static void channel_close_impl(mmpy_channel *self) {
    mmpy_ftable_clear(&self->futures); /* their completions are discarded with the channel */
    if (self->ch) {
        mmpy_log_unregister_channel(self->ch);
        mm_channel_close(self->ch);
        self->ch = NULL;
    }
}

static PyObject *channel_close(mmpy_channel *self, PyObject *unused) {
    (void)unused;
    channel_close_impl(self);
    Py_RETURN_NONE;
}

/* Result's three slot descriptors when Results can be made by setting them (see
 * make_result); left NULL otherwise. */
static void find_result_slots(mmpy_channel *self) {
    PyTypeObject *tp = (PyTypeObject *)self->result_type;
    if (!PyType_Check(self->result_type) || tp->tp_new != PyBaseObject_Type.tp_new)
        return;
    PyObject *ok = PyObject_GetAttrString(self->result_type, "_ok");
    PyObject *data = ok ? PyObject_GetAttrString(self->result_type, "data") : NULL;
    PyObject *err = data ? PyObject_GetAttrString(self->result_type, "_error") : NULL;
    PyErr_Clear();
    if (err && PyObject_TypeCheck(ok, &PyMemberDescr_Type) &&
        PyObject_TypeCheck(data, &PyMemberDescr_Type) &&
        PyObject_TypeCheck(err, &PyMemberDescr_Type)) {
        self->r_ok = Py_NewRef(ok);
        self->r_data = Py_NewRef(data);
        self->r_error = Py_NewRef(err);
    }
    Py_XDECREF(ok);
    Py_XDECREF(data);
    Py_XDECREF(err);
}

static PyObject *channel_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"loop", "result_type", "errinfo_type", NULL};
    PyObject *loop = Py_None, *rtype = Py_None, *etype = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|OOO:Channel", kwlist, &loop, &rtype, &etype))
        return NULL;
    if ((loop == Py_None) != (rtype == Py_None) || (loop == Py_None) != (etype == Py_None)) {
        PyErr_SetString(PyExc_TypeError, "Channel(loop, result_type, errinfo_type): all three "
                                         "or none");
        return NULL;
    }
    mmpy_channel *self = (mmpy_channel *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
    if (loop != Py_None) {
        self->loop = Py_NewRef(loop);
        self->result_type = Py_NewRef(rtype);
        self->errinfo_type = Py_NewRef(etype);
        find_result_slots(self);
    }
    PyObject *mod = PyType_GetModule(type);
    mmpy_state *st = mod ? PyModule_GetState(mod) : NULL;
    if (!st) {
        Py_DECREF(self);
        return NULL;
    }
    self->json_loads = Py_NewRef(st->json_loads);
    PyObject *dec_mod = PyImport_ImportModule("json.decoder");
    PyObject *scan_mod = dec_mod ? PyImport_ImportModule("json.scanner") : NULL;
    PyObject *dec = dec_mod ? PyObject_CallMethod(dec_mod, "JSONDecoder", NULL) : NULL;
    self->json_scan = scan_mod && dec ? PyObject_CallMethod(scan_mod, "make_scanner", "O", dec)
                                      : NULL;
    Py_XDECREF(dec);
    Py_XDECREF(scan_mod);
    Py_XDECREF(dec_mod);
    PyErr_Clear(); /* without the scanner, json.loads does it all */
    self->k_embeddings = PyUnicode_InternFromString("embeddings");
    self->k_generated_text = PyUnicode_InternFromString("generated_text");
    self->k_generated_texts = PyUnicode_InternFromString("generated_texts");
    self->k_model_name = PyUnicode_InternFromString("model_name");
    self->k_device = PyUnicode_InternFromString("device");
    if (!self->k_embeddings || !self->k_generated_text || !self->k_generated_texts ||
        !self->k_model_name || !self->k_device) {
        Py_DECREF(self);
        return NULL;
    }
    int rc = mm_channel_new(&self->ch);
    if (rc < 0) {
        Py_DECREF(self);
        return PyErr_Format(PyExc_OSError, "cannot create a completion channel: %s",
                            mm_strerror(rc));
    }
    mmpy_log_register_channel(self->ch);
    return (PyObject *)self;
}

static int channel_traverse(mmpy_channel *self, visitproc visit, void *arg) {
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->loop);
    Py_VISIT(self->result_type);
    Py_VISIT(self->errinfo_type);
    Py_VISIT(self->json_loads);
    Py_VISIT(self->json_scan);
    return mmpy_ftable_traverse(&self->futures, visit, arg);
}

/* Breaks cycles through pending futures (future -> callback -> ... -> manager -> channel). */
static int channel_clear(mmpy_channel *self) {
    mmpy_ftable_clear(&self->futures);
    Py_CLEAR(self->loop);
    Py_CLEAR(self->result_type);
    Py_CLEAR(self->errinfo_type);
    Py_CLEAR(self->r_ok);
    Py_CLEAR(self->r_data);
    Py_CLEAR(self->r_error);
    return 0;
}

static void channel_dealloc(mmpy_channel *self) {
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    channel_close_impl(self);
    channel_clear(self);
    Py_CLEAR(self->json_loads);
    Py_CLEAR(self->json_scan);
    Py_CLEAR(self->last_model_obj);
    Py_CLEAR(self->last_device_obj);
    Py_CLEAR(self->k_embeddings);
    Py_CLEAR(self->k_generated_text);
    Py_CLEAR(self->k_generated_texts);
    Py_CLEAR(self->k_model_name);
    Py_CLEAR(self->k_device);
    mm_free(self->last_model);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyMethodDef channel_methods[] = {
    {"drain", (PyCFunction)(void (*)(void))channel_drain, METH_FASTCALL,
     "drain([app_names, streams]) -> list[(task_id, status, payload)]\n\nTakes every "
     "completed task.  The TaskFutures of this channel's table are settled here (their "
     "callbacks run in one batch; app_names: task id -> the name a result carries, entries "
     "removed), except streams' (streams: task id -> queue) and numpy results; the rest "
     "come back as (status 0 success, 1 error, "
     "2 dropped, 3 cancelled, 4 numpy success, 5 stream piece)."},
    {"take", (PyCFunction)channel_take, METH_O,
     "take(task_id) -> TaskFuture | None\n\nThe pending future of a task, out of the table."},
    {"take_all", (PyCFunction)channel_take_all, METH_NOARGS,
     "take_all() -> list[TaskFuture]\n\nEvery pending future, out of the table."},
    {"fileno", (PyCFunction)channel_fileno, METH_NOARGS,
     "fileno() -> int\n\nThe eventfd that becomes readable when completions are waiting."},
    {"close", (PyCFunction)channel_close, METH_NOARGS,
     "close()\n\nCloses the channel; later completions are discarded."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot channel_slots[] = {
    {Py_tp_doc, "Channel(loop=None, result_type=None, errinfo_type=None)\n\nA completion "
                "channel for one event loop (internal); with a loop it keeps the loop's "
                "TaskFutures and settles them in drain()."},
    {Py_tp_new, channel_new},
    {Py_tp_dealloc, channel_dealloc},
    {Py_tp_traverse, channel_traverse},
    {Py_tp_clear, channel_clear},
    {Py_tp_methods, channel_methods},
    {0, NULL},
};

static PyType_Spec channel_spec = {
    .name = "pymodelmgr._core.Channel",
    .basicsize = sizeof(mmpy_channel),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = channel_slots,
};

int mmpy_channel_init_type(PyObject *module, mmpy_state *st) {
    st->channel_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &channel_spec, NULL);
    if (!st->channel_type)
        return -1;
    return PyModule_AddType(module, st->channel_type);
}
