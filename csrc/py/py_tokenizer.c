/* py_tokenizer.c: pymodelmgr._core.Tokenizer, the C tokenizer (csrc/tok)
 * as a Python heap type.
 *
 *   Tokenizer.from_file(path) / Tokenizer.from_str(json)
 *   t.encode_batch(texts, pairs=None, add_special_tokens=True,
 *                  max_length=0, truncation="longest_first", truncation_side="right",
 *                  padding=None|"longest"|"max_length", pad_length=0,
 *                  pad_to_multiple_of=0, padding_side="right", pad_id=None,
 *                  pad_type_id=0, offsets=True, tokens=True, num_threads=1)
 *       -> list of (ids, type_ids, attention_mask, special_tokens_mask,
 *                   offsets|None, tokens|None)
 *   t.decode(ids, skip_special_tokens=True) -> str
 *   t.id_to_token(id), t.token_to_id(token), t.vocab_size
 *
 * The work runs with the GIL released.  Inputs are copied into one tuple
 * first (so nobody can mutate the list under us) and their UTF-8 buffers
 * are only read.  Offsets come back as character offsets into the Python
 * strings, as the reference's Encoding has them.  A batch may be split over
 * num_threads pthreads; the tokenizer is immutable so they share it.
 * The friendly wrapper (Encoding objects, docstrings) is
 * pymodelmgr/tokenizer.py.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#ifdef MM_HAVE_tok

#include <pthread.h>
#include <string.h>

#include "mm_alloc.h"
#include "mm_err.h"
#include "mm_tok.h"

int mmpy_tok_add(PyObject *module);

typedef struct {
    PyObject_HEAD
    mm_tok_t *tok;
} py_tok;

static PyObject *raise_code(int rc, const char *msg) {
    PyObject *exc = rc == MM_ENOMEM ? PyExc_MemoryError
                    : rc == MM_EIO  ? PyExc_OSError
                                    : PyExc_ValueError;
    PyErr_Format(exc, "%s (%s)", msg && msg[0] ? msg : mm_strerror(rc), mm_err_name(rc));
    return NULL;
}

static PyObject *new_from(PyTypeObject *type, mm_tok_t *t) {
    py_tok *self = (py_tok *)type->tp_alloc(type, 0);
    if (!self) {
        mm_tok_free(t);
        return NULL;
    }
    self->tok = t;
    return (PyObject *)self;
}

static PyObject *tok_from_file(PyObject *cls, PyObject *arg) {
    PyObject *b = NULL;
    if (!PyUnicode_FSConverter(arg, &b))
        return NULL;
    char err[512] = "";
    mm_tok_t *t = NULL;
    int rc;
    const char *path = PyBytes_AS_STRING(b);
    Py_BEGIN_ALLOW_THREADS
    rc = mm_tok_new_from_file(path, &t, err, sizeof err);
    Py_END_ALLOW_THREADS
    Py_DECREF(b);
    if (rc)
        return raise_code(rc, err);
    return new_from((PyTypeObject *)cls, t);
}

static PyObject *tok_from_str(PyObject *cls, PyObject *arg) {
    Py_ssize_t n;
    const char *s;
    if (PyUnicode_Check(arg)) {
        s = PyUnicode_AsUTF8AndSize(arg, &n);
        if (!s)
            return NULL;
    } else if (PyBytes_Check(arg)) {
        s = PyBytes_AS_STRING(arg);
        n = PyBytes_GET_SIZE(arg);
    } else {
        PyErr_SetString(PyExc_TypeError, "from_str() takes str or bytes");
        return NULL;
    }
    char err[512] = "";
    mm_tok_t *t = NULL;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = mm_tok_new_from_json(s, (size_t)n, &t, err, sizeof err);
    Py_END_ALLOW_THREADS
    if (rc)
        return raise_code(rc, err);
    return new_from((PyTypeObject *)cls, t);
}

static void tok_dealloc(PyObject *o) {
    PyTypeObject *tp = Py_TYPE(o);
    mm_tok_free(((py_tok *)o)->tok);
    tp->tp_free(o);
    Py_DECREF(tp);
}

/* ------------------------------------------------------------ encode */

typedef struct {
    const mm_tok_t *tok;
    const char **texts, **pairs;
    size_t *lens, *plens;
    const mm_tok_params *p;
    mm_tok_encoding *outs;
    size_t from, to;
    int rc;
    char err[256];
} job_t;

static void *job_run(void *ud) {
    job_t *j = ud;
    j->rc = mm_tok_encode_batch(j->tok, j->to - j->from, j->texts + j->from, j->lens + j->from,
                                j->pairs ? j->pairs + j->from : NULL, j->plens ? j->plens + j->from : NULL,
                                j->p, j->outs + j->from, j->err, sizeof j->err);
    return NULL;
}

static int utf8_of(PyObject *o, const char **s, size_t *n) {
    Py_ssize_t l;
    if (PyUnicode_Check(o)) {
        *s = PyUnicode_AsUTF8AndSize(o, &l);
        if (!*s) {
            /* lone surrogates and the like: say what was wrong */
            PyErr_Clear();
            PyErr_SetString(PyExc_ValueError, "text is not valid Unicode (cannot be encoded as UTF-8)");
            return -1;
        }
    } else if (PyBytes_Check(o)) {
        *s = PyBytes_AS_STRING(o);
        l = PyBytes_GET_SIZE(o);
    } else {
        PyErr_Format(PyExc_TypeError, "text must be str or bytes, not %.100s", Py_TYPE(o)->tp_name);
        return -1;
    }
    *n = (size_t)l;
    return 0;
}

static int parse_side(PyObject *o, int *out, const char *what) {
    if (!o || o == Py_None)
        return 0;
    const char *s = PyUnicode_Check(o) ? PyUnicode_AsUTF8(o) : NULL;
    if (s && !strcmp(s, "right"))
        *out = MM_TOK_RIGHT;
    else if (s && !strcmp(s, "left"))
        *out = MM_TOK_LEFT;
    else {
        PyErr_Format(PyExc_ValueError, "%s must be 'right' or 'left'", what);
        return -1;
    }
    return 0;
}

/* Byte offset -> character offset within one UTF-8 text. */
static size_t char_at(const char *s, size_t byte, size_t *cache_b, size_t *cache_c) {
    size_t b = *cache_b, c = *cache_c;
    if (byte < b) {
        b = 0;
        c = 0;
    }
    while (b < byte) {
        if (((unsigned char)s[b] & 0xC0) != 0x80)
            c++;
        b++;
    }
    *cache_b = b;
    *cache_c = c;
    return c;
}

static PyObject *int_list32(const int32_t *v, size_t n) {
    PyObject *l = PyList_New((Py_ssize_t)n);
    if (!l)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        PyObject *x = PyLong_FromLong(v[i]);
        if (!x) {
            Py_DECREF(l);
            return NULL;
        }
        PyList_SET_ITEM(l, (Py_ssize_t)i, x);
    }
    return l;
}

static PyObject *int_list8(const uint8_t *v, size_t n) {
    PyObject *l = PyList_New((Py_ssize_t)n);
    if (!l)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        PyObject *x = PyLong_FromLong(v[i]);
        if (!x) {
            Py_DECREF(l);
            return NULL;
        }
        PyList_SET_ITEM(l, (Py_ssize_t)i, x);
    }
    return l;
}

static PyObject *to_python(const mm_tok_encoding *e, const char *text, const char *pair) {
    PyObject *ids = int_list32(e->ids, e->len);
    PyObject *tids = int_list32(e->type_ids, e->len);
    PyObject *am = int_list8(e->attention_mask, e->len);
    PyObject *sm = int_list8(e->special_tokens_mask, e->len);
    PyObject *offs = Py_None, *toks = Py_None;
    Py_INCREF(Py_None);
    Py_INCREF(Py_None);
    if (!ids || !tids || !am || !sm)
        goto fail;
    if (e->offsets) {
        Py_DECREF(offs);
        offs = PyList_New((Py_ssize_t)e->len);
        if (!offs)
            goto fail;
        size_t cb[2] = {0, 0}, cc[2] = {0, 0};
        for (size_t i = 0; i < e->len; i++) {
            int sq = e->sequence_ids[i];
            size_t a = 0, b = 0;
            if (sq >= 0) {
                const char *s = sq ? pair : text;
                a = char_at(s, e->offsets[2 * i], &cb[sq], &cc[sq]);
                b = char_at(s, e->offsets[2 * i + 1], &cb[sq], &cc[sq]);
            }
            PyObject *t = Py_BuildValue("(nn)", (Py_ssize_t)a, (Py_ssize_t)b);
            if (!t)
                goto fail;
            PyList_SET_ITEM(offs, (Py_ssize_t)i, t);
        }
    }
    if (e->tokens) {
        Py_DECREF(toks);
        toks = PyList_New((Py_ssize_t)e->len);
        if (!toks)
            goto fail;
        for (size_t i = 0; i < e->len; i++) {
            PyObject *t = PyUnicode_DecodeUTF8(e->tokens[i], (Py_ssize_t)e->token_lens[i], "replace");
            if (!t)
                goto fail;
            PyList_SET_ITEM(toks, (Py_ssize_t)i, t);
        }
    }
    return Py_BuildValue("(NNNNNN)", ids, tids, am, sm, offs, toks);
fail:
    Py_XDECREF(ids);
    Py_XDECREF(tids);
    Py_XDECREF(am);
    Py_XDECREF(sm);
    Py_XDECREF(offs);
    Py_XDECREF(toks);
    return NULL;
}

static PyObject *tok_encode_batch(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"texts", "pairs", "add_special_tokens", "max_length", "truncation",
                             "truncation_side", "padding", "pad_length", "pad_to_multiple_of",
                             "padding_side", "pad_id", "pad_type_id", "offsets", "tokens",
                             "num_threads", NULL};
    PyObject *texts, *pairs = Py_None, *trunc = Py_None, *tside = Py_None, *padding = Py_None,
                     *pside = Py_None, *pad_id = Py_None;
    int add_special = 1, want_off = 1, want_tok = 1, nthreads = 1, pad_type_id = 0;
    Py_ssize_t max_length = 0, pad_length = 0, pad_multiple = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|OpnOOOnnOOipp$i", kwlist, &texts, &pairs,
                                     &add_special, &max_length, &trunc, &tside, &padding, &pad_length,
                                     &pad_multiple, &pside, &pad_id, &pad_type_id, &want_off, &want_tok,
                                     &nthreads))
        return NULL;
    const mm_tok_t *tok = ((py_tok *)self)->tok;
    mm_tok_params p;
    mm_tok_default_params(tok, &p);
    p.add_special_tokens = add_special;
    if (max_length < 0 || pad_length < 0 || pad_multiple < 0) {
        PyErr_SetString(PyExc_ValueError, "lengths must be >= 0");
        return NULL;
    }
    p.max_length = (size_t)max_length;
    if (trunc != Py_None) {
        const char *s = PyUnicode_Check(trunc) ? PyUnicode_AsUTF8(trunc) : NULL;
        if (s && !strcmp(s, "longest_first"))
            p.trunc_strategy = MM_TOK_TRUNC_LONGEST_FIRST;
        else if (s && !strcmp(s, "only_first"))
            p.trunc_strategy = MM_TOK_TRUNC_ONLY_FIRST;
        else if (s && !strcmp(s, "only_second"))
            p.trunc_strategy = MM_TOK_TRUNC_ONLY_SECOND;
        else {
            PyErr_SetString(PyExc_ValueError,
                            "truncation must be 'longest_first', 'only_first' or 'only_second'");
            return NULL;
        }
    }
    if (parse_side(tside, &p.trunc_side, "truncation_side") < 0 ||
        parse_side(pside, &p.pad_side, "padding_side") < 0)
        return NULL;
    if (padding != Py_None) {
        const char *s = PyUnicode_Check(padding) ? PyUnicode_AsUTF8(padding) : NULL;
        if (s && !strcmp(s, "longest"))
            p.padding = MM_TOK_PAD_LONGEST;
        else if (s && !strcmp(s, "max_length"))
            p.padding = MM_TOK_PAD_FIXED;
        else {
            PyErr_SetString(PyExc_ValueError, "padding must be None, 'longest' or 'max_length'");
            return NULL;
        }
    }
    p.pad_length = (size_t)pad_length;
    p.pad_to_multiple_of = (size_t)pad_multiple;
    if (pad_id != Py_None) {
        long v = PyLong_AsLong(pad_id);
        if (v == -1 && PyErr_Occurred())
            return NULL;
        p.pad_id = (int32_t)v;
    }
    p.pad_type_id = pad_type_id;
    p.want_offsets = want_off;
    p.want_tokens = want_tok;

    PyObject *tt = PySequence_Tuple(texts);
    if (!tt)
        return NULL;
    PyObject *pt = NULL;
    if (pairs != Py_None) {
        pt = PySequence_Tuple(pairs);
        if (!pt) {
            Py_DECREF(tt);
            return NULL;
        }
        if (PyTuple_GET_SIZE(pt) != PyTuple_GET_SIZE(tt)) {
            Py_DECREF(tt);
            Py_DECREF(pt);
            PyErr_SetString(PyExc_ValueError, "pairs must have as many items as texts");
            return NULL;
        }
    }
    size_t n = (size_t)PyTuple_GET_SIZE(tt);
    PyObject *result = NULL;
    const char **ts = PyMem_Calloc(n ? n : 1, sizeof(char *));
    const char **ps = pt ? PyMem_Calloc(n ? n : 1, sizeof(char *)) : NULL;
    size_t *tl = PyMem_Calloc(n ? n : 1, sizeof(size_t));
    size_t *pl = pt ? PyMem_Calloc(n ? n : 1, sizeof(size_t)) : NULL;
    mm_tok_encoding *outs = PyMem_Calloc(n ? n : 1, sizeof(mm_tok_encoding));
    if (!ts || !tl || !outs || (pt && (!ps || !pl))) {
        PyErr_NoMemory();
        goto done;
    }
    for (size_t i = 0; i < n; i++) {
        if (utf8_of(PyTuple_GET_ITEM(tt, (Py_ssize_t)i), &ts[i], &tl[i]) < 0)
            goto done;
        if (pt && utf8_of(PyTuple_GET_ITEM(pt, (Py_ssize_t)i), &ps[i], &pl[i]) < 0)
            goto done;
    }
    if (nthreads <= 0) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        nthreads = c > 0 ? (int)c : 1;
    }
    if ((size_t)nthreads > n / 16)
        nthreads = (int)(n / 16) > 1 ? (int)(n / 16) : 1;
    if (nthreads > 64)
        nthreads = 64;
    int rc = 0;
    char err[256] = "";
    job_t jobs[64];
    mm_tok_params pj = p;
    pj.padding = MM_TOK_PAD_NONE; /* padded together below */
    Py_BEGIN_ALLOW_THREADS
    pthread_t th[64];
    int started[64] = {0};
    for (int k = 0; k < nthreads; k++) {
        jobs[k] = (job_t){.tok = tok, .texts = ts, .pairs = pt ? ps : NULL, .lens = tl, .plens = pl,
                          .p = &pj, .outs = outs, .from = n * (size_t)k / (size_t)nthreads,
                          .to = n * (size_t)(k + 1) / (size_t)nthreads, .rc = 0};
        if (k > 0 && pthread_create(&th[k], NULL, job_run, &jobs[k]) == 0)
            started[k] = 1;
        else if (k > 0)
            job_run(&jobs[k]);
    }
    job_run(&jobs[0]);
    for (int k = 1; k < nthreads; k++)
        if (started[k])
            pthread_join(th[k], NULL);
    for (int k = 0; k < nthreads && !rc; k++)
        if (jobs[k].rc) {
            rc = jobs[k].rc;
            memcpy(err, jobs[k].err, sizeof err);
        }
    if (!rc)
        rc = mm_tok_pad(tok, outs, n, &p);
    Py_END_ALLOW_THREADS
    if (rc) {
        raise_code(rc, err);
        goto done;
    }
    result = PyList_New((Py_ssize_t)n);
    if (!result)
        goto done;
    /* Building a few lists per text would trigger the cyclic GC over and
     * over (it was a fifth of the time); these objects hold no cycles. */
    int gc_was = PyGC_Disable();
    for (size_t i = 0; i < n; i++) {
        PyObject *e = to_python(&outs[i], ts[i], pt ? ps[i] : NULL);
        if (!e) {
            Py_CLEAR(result);
            break;
        }
        PyList_SET_ITEM(result, (Py_ssize_t)i, e);
    }
    if (gc_was)
        PyGC_Enable();
done:
    if (outs)
        for (size_t i = 0; i < n; i++)
            mm_tok_encoding_clear(&outs[i]);
    PyMem_Free(outs);
    PyMem_Free((void *)ts);
    PyMem_Free((void *)ps);
    PyMem_Free(tl);
    PyMem_Free(pl);
    Py_DECREF(tt);
    Py_XDECREF(pt);
    return result;
}

static PyObject *tok_decode(PyObject *self, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"ids", "skip_special_tokens", NULL};
    PyObject *ids;
    int skip = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|p", kwlist, &ids, &skip))
        return NULL;
    PyObject *seq = PySequence_Fast(ids, "ids must be a sequence of ints");
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    int32_t *v = PyMem_Malloc((size_t)(n ? n : 1) * sizeof(int32_t));
    if (!v) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        long x = PyLong_AsLong(PySequence_Fast_GET_ITEM(seq, i));
        if (x == -1 && PyErr_Occurred()) {
            Py_DECREF(seq);
            PyMem_Free(v);
            return NULL;
        }
        v[i] = x < INT32_MIN || x > INT32_MAX ? -1 : (int32_t)x;
    }
    Py_DECREF(seq);
    char *out = NULL;
    size_t ol = 0;
    char err[256] = "";
    int rc;
    const mm_tok_t *tok = ((py_tok *)self)->tok;
    Py_BEGIN_ALLOW_THREADS
    rc = mm_tok_decode(tok, v, (size_t)n, skip, &out, &ol, err, sizeof err);
    Py_END_ALLOW_THREADS
    PyMem_Free(v);
    if (rc)
        return raise_code(rc, err);
    PyObject *r = PyUnicode_DecodeUTF8(out, (Py_ssize_t)ol, "replace");
    mm_free(out);
    return r;
}

static PyObject *tok_id_to_token(PyObject *self, PyObject *arg) {
    long id = PyLong_AsLong(arg);
    if (id == -1 && PyErr_Occurred())
        return NULL;
    if (id < 0 || id > INT32_MAX)
        Py_RETURN_NONE;
    size_t n = 0;
    const char *s = mm_tok_id_to_token_n(((py_tok *)self)->tok, (int32_t)id, &n);
    if (!s)
        Py_RETURN_NONE;
    return PyUnicode_DecodeUTF8(s, (Py_ssize_t)n, "replace");
}

static PyObject *tok_token_to_id(PyObject *self, PyObject *arg) {
    Py_ssize_t n;
    const char *s = PyUnicode_Check(arg) ? PyUnicode_AsUTF8AndSize(arg, &n) : NULL;
    if (!s) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "token must be str");
        return NULL;
    }
    int32_t id = mm_tok_token_to_id(((py_tok *)self)->tok, s, (size_t)n);
    if (id < 0)
        Py_RETURN_NONE;
    return PyLong_FromLong(id);
}

static PyObject *tok_vocab_size(PyObject *self, void *closure) {
    (void)closure;
    return PyLong_FromSize_t(mm_tok_vocab_size(((py_tok *)self)->tok));
}

static PyMethodDef tok_methods[] = {
    {"from_file", (PyCFunction)tok_from_file, METH_O | METH_CLASS,
     "from_file(path) -> Tokenizer: load a tokenizer.json file."},
    {"from_str", (PyCFunction)tok_from_str, METH_O | METH_CLASS,
     "from_str(json) -> Tokenizer: load tokenizer.json text."},
    {"encode_batch", (PyCFunction)(void (*)(void))tok_encode_batch, METH_VARARGS | METH_KEYWORDS,
     "encode_batch(texts, pairs=None, ...) -> list of (ids, type_ids, attention_mask, "
     "special_tokens_mask, offsets, tokens); the GIL is released while encoding."},
    {"decode", (PyCFunction)(void (*)(void))tok_decode, METH_VARARGS | METH_KEYWORDS,
     "decode(ids, skip_special_tokens=True) -> str"},
    {"id_to_token", tok_id_to_token, METH_O, "id_to_token(id) -> str or None"},
    {"token_to_id", tok_token_to_id, METH_O, "token_to_id(token) -> int or None"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef tok_getset[] = {
    {"vocab_size", tok_vocab_size, NULL, "vocabulary size including added tokens", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot tok_slots[] = {
    {Py_tp_dealloc, tok_dealloc},
    {Py_tp_methods, tok_methods},
    {Py_tp_getset, tok_getset},
    {Py_tp_doc, "A Hugging Face tokenizer.json loaded into the C tokenizer (immutable, thread-safe)."},
    {0, NULL},
};

static PyType_Spec tok_spec = {
    .name = "pymodelmgr._core.Tokenizer",
    .basicsize = sizeof(py_tok),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_DISALLOW_INSTANTIATION,
    .slots = tok_slots,
};

int mmpy_tok_add(PyObject *module) {
    PyObject *tp = PyType_FromModuleAndSpec(module, &tok_spec, NULL);
    if (!tp)
        return -1;
    if (PyModule_AddObject(module, "Tokenizer", tp) < 0) {
        Py_DECREF(tp);
        return -1;
    }
    return 0;
}

#endif /* MM_HAVE_tok */
