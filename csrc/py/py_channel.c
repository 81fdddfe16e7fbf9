/* py_channel.c: the _core.Channel type, one completion channel per event
 * loop.
 *
 * drain() is the only place results become Python objects, on the loop
 * thread: it takes every completed task at once and returns a list of
 * (task_id, status, payload) tuples, where status is 0 success (payload: the
 * result dict), 1 error (payload: (code_name, message)), 2 dropped (payload:
 * the reason), 3 cancelled (payload: None) or 4 success whose "embeddings"
 * is (float32 bytes, n, dim), for output="numpy".
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

static PyObject *channel_drain(mmpy_channel *self, PyObject *unused) {
    (void)unused;
    if (!self->ch)
        return PyList_New(0);
    size_t n;
    mm_task_t **arr = mm_channel_take(self->ch, &n);
    PyObject *out = PyList_New((Py_ssize_t)n);
    size_t i = 0;
    if (out) {
        for (; i < n; i++) {
            PyObject *item = convert(self, arr[i], self->json_loads);
            mm_channel_task_free(arr[i]);
            if (!item)
                break;
            PyList_SET_ITEM(out, (Py_ssize_t)i, item);
        }
    }
    int failed = !out || i < n;
    for (size_t j = failed && out ? i + 1 : i; j < n; j++)
        mm_channel_task_free(arr[j]);
    mm_free(arr);
    if (failed) {
        Py_XDECREF(out);
        return NULL;
    }
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

static PyObject *channel_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    if (PyTuple_GET_SIZE(args) || (kw && PyDict_GET_SIZE(kw))) {
        PyErr_SetString(PyExc_TypeError, "Channel() takes no arguments");
        return NULL;
    }
    mmpy_channel *self = (mmpy_channel *)type->tp_alloc(type, 0);
    if (!self)
        return NULL;
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

static void channel_dealloc(mmpy_channel *self) {
    PyTypeObject *tp = Py_TYPE(self);
    channel_close_impl(self);
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
    {"drain", (PyCFunction)channel_drain, METH_NOARGS,
     "drain() -> list[(task_id, status, payload)]\n\nTakes every completed task (status 0 "
     "success, 1 error, 2 dropped, 3 cancelled)."},
    {"fileno", (PyCFunction)channel_fileno, METH_NOARGS,
     "fileno() -> int\n\nThe eventfd that becomes readable when completions are waiting."},
    {"close", (PyCFunction)channel_close, METH_NOARGS,
     "close()\n\nCloses the channel; later completions are discarded."},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot channel_slots[] = {
    {Py_tp_doc, "Channel()\n\nA completion channel for one event loop (internal)."},
    {Py_tp_new, channel_new},
    {Py_tp_dealloc, channel_dealloc},
    {Py_tp_methods, channel_methods},
    {0, NULL},
};

static PyType_Spec channel_spec = {
    .name = "pymodelmgr._core.Channel",
    .basicsize = sizeof(mmpy_channel),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = channel_slots,
};

int mmpy_channel_init_type(PyObject *module, mmpy_state *st) {
    st->channel_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &channel_spec, NULL);
    if (!st->channel_type)
        return -1;
    return PyModule_AddType(module, st->channel_type);
}
