/* py_future.c: _core.TaskFuture, what ModelManager.task() returns inside a running event
 * loop, and the table of pending futures a completion channel keeps.
 *
 * A task that does no model work (a synthetic model, an embedding-cache hit) costs what its
 * round trip costs, so the future is C: asyncio takes it as a future (the class has
 * _asyncio_future_blocking; get_loop, add_done_callback/remove_done_callback, result,
 * exception, cancel, cancelled, done, set_result/set_exception behave as asyncio.Future's)
 * and gather wraps no Task around it.  It is also a coroutine object (__await__ returns the
 * future itself, with send/throw/close), so asyncio.create_task() and TaskGroup take it too;
 * the consequence is asyncio.wait(), which refuses coroutines, wants Tasks of it.
 *
 * Resolution happens in bulk: Channel.drain() pops each completed task's future from its
 * channel's table, builds the Result, settles the future and gathers every done callback of
 * the burst into one list that a single loop.call_soon runs in order, each callback in its
 * own context, with exceptions reported through loop.call_exception_handler as a Handle
 * would (SystemExit and KeyboardInterrupt propagate, the rest of the batch is rescheduled).
 * That is the order asyncio gives (the callbacks of futures settled in one loop iteration run
 * in the next one, in settling order) without a Handle per callback.  Futures settled any
 * other way (cancel(), set_result()) schedule each callback with loop.call_soon as asyncio
 * does.
 *
 * Cancelling a pending future takes it out of its channel's table and asks the engine to
 * cancel the C task (a queued task leaves its queue and completes as CANCELLED, which drain
 * then ignores): every task completes exactly once, on the C side and on this one.  throw()
 * and close() (the coroutine being abandoned: a Task cancelled before its first step)
 * cancel it too.
 *
 * Ownership: a pending future of a channel is referenced by the table (strongly) and points
 * back at its channel (weakly: fut->chan is set exactly while the future is in that table).
 * Everything here runs on the loop thread with the GIL held.
 */
#include <string.h>

#include "mm_alloc.h"
#include "mmpy.h"
#include "structmember.h"

/* The raised exception as one object, and back (PyErr_GetRaisedException is 3.12+). */
PyObject *mmpy_take_exc(void) {
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    PyErr_NormalizeException(&t, &v, &tb);
    if (v && tb)
        PyException_SetTraceback(v, tb);
    Py_XDECREF(t);
    Py_XDECREF(tb);
    return v;
}

static void restore_exc(PyObject *v) {
    if (v)
        PyErr_Restore(Py_NewRef(Py_TYPE(v)), v, PyException_GetTraceback(v));
}

enum { FUT_PENDING = 0, FUT_CANCELLED = 1, FUT_FINISHED = 2 };

struct mmpy_future {
    PyObject_HEAD
    PyObject *loop;
    PyObject *result;     /* FINISHED without an exception */
    PyObject *exception;  /* FINISHED with one */
    PyObject *cancel_msg; /* CANCELLED: cancel(msg)'s message, or NULL */
    PyObject *cb0, *ctx0; /* the first done callback and its context (most have one) */
    PyObject *callbacks;  /* the others: a list of (callback, context) tuples, or NULL */
    PyObject *engine;     /* whom cancel() asks to cancel the C task; NULL once settled */
    mmpy_channel *chan;   /* set while in chan's table (borrowed: the table owns us) */
    PyObject *weakreflist;
    uint64_t tid;
    unsigned char state;
    unsigned char blocking; /* _asyncio_future_blocking */
};

/* ---- the table --------------------------------------------------------------------------- */

/* Fibonacci hashing: consecutive task ids land far apart, so runs stay short at load <= 1/2
 * (with the id itself as the slot, a burst of consecutive ids would be one long run, and
 * every deletion's backward shift would walk all of it). */
static size_t home(uint64_t tid, size_t mask) {
    return (size_t)((tid * 0x9E3779B97F4A7C15ull) >> 29) & mask;
}

static int table_grow(mmpy_ftable *t) {
    size_t cap = t->cap ? t->cap * 2 : 64;
    mmpy_future **slots = mm_calloc(cap, sizeof *slots);
    if (!slots)
        return -1;
    for (size_t i = 0; i < t->cap; i++) {
        mmpy_future *f = t->slots[i];
        if (!f)
            continue;
        size_t j = home(f->tid, cap - 1);
        while (slots[j])
            j = (j + 1) & (cap - 1);
        slots[j] = f;
    }
    mm_free(t->slots);
    t->slots = slots;
    t->cap = cap;
    return 0;
}

int mmpy_ftable_put(mmpy_ftable *t, mmpy_channel *owner, mmpy_future *f) {
    if ((t->n + 1) * 2 > t->cap && table_grow(t) < 0) {
        PyErr_NoMemory();
        return -1;
    }
    size_t mask = t->cap - 1, j = home(f->tid, mask);
    while (t->slots[j])
        j = (j + 1) & mask;
    t->slots[j] = (mmpy_future *)Py_NewRef(f);
    t->n++;
    f->chan = owner;
    return 0;
}

static size_t table_find(const mmpy_ftable *t, uint64_t tid) {
    if (!t->n)
        return SIZE_MAX;
    size_t mask = t->cap - 1;
    for (size_t j = home(tid, mask);; j = (j + 1) & mask) {
        if (!t->slots[j])
            return SIZE_MAX;
        if (t->slots[j]->tid == tid)
            return j;
    }
}

mmpy_future *mmpy_ftable_get(const mmpy_ftable *t, uint64_t tid) {
    size_t j = table_find(t, tid);
    return j == SIZE_MAX ? NULL : t->slots[j];
}

mmpy_future *mmpy_ftable_pop(mmpy_ftable *t, uint64_t tid) {
    size_t j = table_find(t, tid);
    if (j == SIZE_MAX)
        return NULL;
    mmpy_future *f = t->slots[j];
    t->slots[j] = NULL;
    t->n--;
    f->chan = NULL;
    /* Backward-shift deletion: move up the entries of the run after j that would not be
     * found past the hole. */
    size_t mask = t->cap - 1;
    for (size_t k = (j + 1) & mask; t->slots[k]; k = (k + 1) & mask) {
        size_t h = home(t->slots[k]->tid, mask);
        /* the entry at k may move to j when its home is not cyclically in (j, k] */
        if ((k > j && (h <= j || h > k)) || (k < j && (h <= j && h > k))) {
            t->slots[j] = t->slots[k];
            t->slots[k] = NULL;
            j = k;
        }
    }
    return f;
}

void mmpy_ftable_clear(mmpy_ftable *t) {
    mmpy_future **slots = t->slots;
    size_t cap = t->cap;
    t->slots = NULL;
    t->cap = t->n = 0;
    for (size_t i = 0; i < cap; i++) {
        if (slots[i]) {
            slots[i]->chan = NULL;
            Py_DECREF(slots[i]);
        }
    }
    mm_free(slots);
}

int mmpy_ftable_traverse(const mmpy_ftable *t, visitproc visit, void *arg) {
    for (size_t i = 0; i < t->cap; i++)
        Py_VISIT(t->slots[i]);
    return 0;
}

/* ---- settling and callbacks -------------------------------------------------------------- */

/* Takes the future out of its channel's table and lets the engine go: it is settled. */
static void detach(mmpy_future *f, int cancel_task) {
    if (f->chan) {
        mmpy_future *own = mmpy_ftable_pop(&f->chan->futures, f->tid);
        Py_XDECREF(own); /* f is still referenced by its caller */
    }
    if (cancel_task && f->engine)
        mmpy_engine_cancel_task(f->engine, f->tid);
    Py_CLEAR(f->engine);
}

/* loop.call_soon(cb[, arg][, context=ctx]) */
static int call_soon(PyObject *loop, PyObject *cb, PyObject *arg, PyObject *ctx) {
    PyObject *meth = PyObject_GetAttrString(loop, "call_soon");
    if (!meth)
        return -1;
    PyObject *args[3] = {cb, NULL, NULL};
    size_t nargs = 1;
    if (arg)
        args[nargs++] = arg;
    PyObject *kw = ctx ? Py_BuildValue("(s)", "context") : NULL;
    if (ctx)
        args[nargs] = ctx;
    PyObject *r = NULL;
    if (!ctx || kw)
        r = PyObject_Vectorcall(meth, args, nargs, kw);
    Py_XDECREF(kw);
    Py_DECREF(meth);
    if (!r)
        return -1;
    Py_DECREF(r);
    return 0;
}

static int add_to_batch(PyObject *batch, PyObject *cb, mmpy_future *f, PyObject *ctx) {
    if (PyList_Append(batch, cb) < 0 || PyList_Append(batch, (PyObject *)f) < 0 ||
        PyList_Append(batch, ctx) < 0)
        return -1;
    return 0;
}

/* Hands every callback of a settled future to the loop (or to batch) and forgets them. */
static int schedule_callbacks(mmpy_future *f, PyObject *batch) {
    PyObject *cb0 = f->cb0, *ctx0 = f->ctx0, *rest = f->callbacks;
    f->cb0 = f->ctx0 = f->callbacks = NULL;
    int rc = 0;
    if (cb0) {
        rc = batch ? add_to_batch(batch, cb0, f, ctx0) : call_soon(f->loop, cb0, (PyObject *)f, ctx0);
        Py_DECREF(cb0);
        Py_DECREF(ctx0);
    }
    if (rest) {
        for (Py_ssize_t i = 0; rc == 0 && i < PyList_GET_SIZE(rest); i++) {
            PyObject *pair = PyList_GET_ITEM(rest, i);
            PyObject *cb = PyTuple_GET_ITEM(pair, 0), *ctx = PyTuple_GET_ITEM(pair, 1);
            rc = batch ? add_to_batch(batch, cb, f, ctx) : call_soon(f->loop, cb, (PyObject *)f, ctx);
        }
        Py_DECREF(rest);
    }
    return rc;
}

int mmpy_future_pending(const mmpy_future *f) { return f->state == FUT_PENDING; }

int mmpy_future_settle(mmpy_future *f, PyObject *result, PyObject *exc, PyObject *batch) {
    if (f->state != FUT_PENDING)
        return 0;
    detach(f, 0);
    if (result) {
        f->result = Py_NewRef(result);
        f->state = FUT_FINISHED;
    } else if (exc) {
        f->exception = Py_NewRef(exc);
        f->state = FUT_FINISHED;
    } else {
        f->state = FUT_CANCELLED;
    }
    return schedule_callbacks(f, batch);
}

/* Reports a callback's exception as asyncio's Handle._run does. */
static void report_callback_error(PyObject *loop, PyObject *cb, PyObject *fut) {
    PyObject *exc = mmpy_take_exc();
    PyObject *msg = PyUnicode_FromFormat("Exception in callback %R(%R)", cb, fut);
    PyObject *ctx = msg ? Py_BuildValue("{sOsOsO}", "message", msg, "exception", exc, "future",
                                        fut)
                        : NULL;
    PyObject *r = ctx ? PyObject_CallMethod(loop, "call_exception_handler", "O", ctx) : NULL;
    if (!r)
        PyErr_WriteUnraisable(cb);
    Py_XDECREF(r);
    Py_XDECREF(ctx);
    Py_XDECREF(msg);
    Py_XDECREF(exc);
}

static PyObject *run_batch(PyObject *batch, PyObject *unused);
static PyMethodDef run_batch_def = {"_run_callbacks", run_batch, METH_NOARGS, NULL};

int mmpy_batch_schedule(PyObject *batch) {
    if (PyList_GET_SIZE(batch) <= 1)
        return 0;
    PyObject *fn = PyCFunction_New(&run_batch_def, batch);
    if (!fn)
        return -1;
    int rc = call_soon(PyList_GET_ITEM(batch, 0), fn, NULL, NULL);
    Py_DECREF(fn);
    return rc;
}

/* batch: [loop, callback, future, context, ...] */
static PyObject *run_batch(PyObject *batch, PyObject *unused) {
    (void)unused;
    PyObject *loop = PyList_GET_ITEM(batch, 0);
    Py_ssize_t n = PyList_GET_SIZE(batch), i = 1;
    /* As in the drain that made the batch: the burst's callbacks (gather's bookkeeping, Task
     * wake-ups) would run the cyclic collector every few hundred allocations over every live
     * future; it runs once afterwards instead. */
    int gc_was_on = PyGC_Disable();
    for (; i + 2 < n; i += 3) {
        PyObject *cb = Py_NewRef(PyList_GET_ITEM(batch, i));
        PyObject *fut = Py_NewRef(PyList_GET_ITEM(batch, i + 1));
        PyObject *ctx = Py_NewRef(PyList_GET_ITEM(batch, i + 2));
        PyObject *r = NULL;
        if (PyContext_Enter(ctx) == 0) {
            r = PyObject_CallOneArg(cb, fut);
            PyObject *exc = mmpy_take_exc();
            if (PyContext_Exit(ctx) < 0)
                PyErr_Clear();
            restore_exc(exc);
        }
        if (r) {
            Py_DECREF(r);
        } else if (PyErr_ExceptionMatches(PyExc_SystemExit) ||
                   PyErr_ExceptionMatches(PyExc_KeyboardInterrupt)) {
            /* propagates out of the loop, as from a Handle; the rest still runs later */
            PyObject *exc = mmpy_take_exc();
            PyObject *rest = PyList_GetSlice(batch, i + 3, n);
            if (rest && PyList_Insert(rest, 0, loop) == 0 && mmpy_batch_schedule(rest) < 0)
                PyErr_Clear();
            PyErr_Clear();
            Py_XDECREF(rest);
            PyList_SetSlice(batch, 1, n, NULL);
            Py_DECREF(cb);
            Py_DECREF(fut);
            Py_DECREF(ctx);
            if (gc_was_on)
                PyGC_Enable();
            restore_exc(exc);
            return NULL;
        } else {
            report_callback_error(loop, cb, fut);
        }
        Py_DECREF(cb);
        Py_DECREF(fut);
        Py_DECREF(ctx);
    }
    if (gc_was_on)
        PyGC_Enable();
    if (PyList_SetSlice(batch, 1, n, NULL) < 0) /* let the futures and callbacks go now */
        return NULL;
    Py_RETURN_NONE;
}

/* ---- the type ------------------------------------------------------------------------------ */

PyObject *mmpy_future_new(PyTypeObject *type, PyObject *loop, PyObject *engine, uint64_t tid) {
    mmpy_future *f = PyObject_GC_New(mmpy_future, type);
    if (!f)
        return NULL;
    f->loop = Py_NewRef(loop);
    f->result = f->exception = f->cancel_msg = NULL;
    f->cb0 = f->ctx0 = f->callbacks = NULL;
    f->engine = Py_XNewRef(engine);
    f->chan = NULL;
    f->weakreflist = NULL;
    f->tid = tid;
    f->state = FUT_PENDING;
    f->blocking = 0;
    PyObject_GC_Track(f);
    return (PyObject *)f;
}

static PyObject *future_tp_new(PyTypeObject *type, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"loop", NULL};
    PyObject *loop;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O:TaskFuture", kwlist, &loop))
        return NULL;
    return mmpy_future_new(type, loop, NULL, 0);
}

static int future_traverse(mmpy_future *f, visitproc visit, void *arg) {
    Py_VISIT(Py_TYPE(f));
    Py_VISIT(f->loop);
    Py_VISIT(f->result);
    Py_VISIT(f->exception);
    Py_VISIT(f->cancel_msg);
    Py_VISIT(f->cb0);
    Py_VISIT(f->ctx0);
    Py_VISIT(f->callbacks);
    Py_VISIT(f->engine);
    return 0;
}

static int future_clear(mmpy_future *f) {
    Py_CLEAR(f->loop);
    Py_CLEAR(f->result);
    Py_CLEAR(f->exception);
    Py_CLEAR(f->cancel_msg);
    Py_CLEAR(f->cb0);
    Py_CLEAR(f->ctx0);
    Py_CLEAR(f->callbacks);
    Py_CLEAR(f->engine);
    return 0;
}

static void future_dealloc(mmpy_future *f) {
    PyTypeObject *tp = Py_TYPE(f);
    PyObject_GC_UnTrack(f);
    if (f->weakreflist)
        PyObject_ClearWeakRefs((PyObject *)f);
    future_clear(f);
    tp->tp_free(f);
    Py_DECREF(tp);
}

static PyObject *invalid_state(const char *msg) {
    PyObject *mod = PyImport_ImportModule("asyncio");
    PyObject *cls = mod ? PyObject_GetAttrString(mod, "InvalidStateError") : NULL;
    if (cls)
        PyErr_SetString(cls, msg);
    Py_XDECREF(cls);
    Py_XDECREF(mod);
    return NULL;
}

/* A CancelledError carrying cancel()'s message (asyncio's _make_cancelled_error). */
static PyObject *make_cancelled_error(mmpy_future *f, PyObject *unused) {
    (void)unused;
    PyObject *mod = PyImport_ImportModule("asyncio");
    PyObject *cls = mod ? PyObject_GetAttrString(mod, "CancelledError") : NULL;
    PyObject *exc = NULL;
    if (cls)
        exc = f->cancel_msg ? PyObject_CallOneArg(cls, f->cancel_msg) : PyObject_CallNoArgs(cls);
    Py_XDECREF(cls);
    Py_XDECREF(mod);
    return exc;
}

static PyObject *raise_cancelled(mmpy_future *f) {
    PyObject *exc = make_cancelled_error(f, NULL);
    if (exc) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

/* result(): a new reference, or NULL with the future's exception (or CancelledError, or
 * InvalidStateError) set. */
static PyObject *future_result(mmpy_future *f, PyObject *unused) {
    (void)unused;
    if (f->state == FUT_CANCELLED)
        return raise_cancelled(f);
    if (f->state == FUT_PENDING)
        return invalid_state("Result is not ready.");
    if (f->exception) {
        PyErr_SetObject((PyObject *)Py_TYPE(f->exception), f->exception);
        return NULL;
    }
    return Py_NewRef(f->result);
}

static PyObject *future_exception(mmpy_future *f, PyObject *unused) {
    (void)unused;
    if (f->state == FUT_CANCELLED)
        return raise_cancelled(f);
    if (f->state == FUT_PENDING)
        return invalid_state("Exception is not set.");
    return Py_NewRef(f->exception ? f->exception : Py_None);
}

static PyObject *future_done(mmpy_future *f, PyObject *unused) {
    (void)unused;
    return PyBool_FromLong(f->state != FUT_PENDING);
}

static PyObject *future_cancelled(mmpy_future *f, PyObject *unused) {
    (void)unused;
    return PyBool_FromLong(f->state == FUT_CANCELLED);
}

static PyObject *future_get_loop(mmpy_future *f, PyObject *unused) {
    (void)unused;
    return Py_NewRef(f->loop);
}

static PyObject *do_cancel(mmpy_future *f, PyObject *msg) {
    if (f->state != FUT_PENDING)
        Py_RETURN_FALSE;
    f->state = FUT_CANCELLED;
    Py_XSETREF(f->cancel_msg, Py_XNewRef(msg == Py_None ? NULL : msg));
    detach(f, 1);
    if (schedule_callbacks(f, NULL) < 0)
        return NULL;
    Py_RETURN_TRUE;
}

static PyObject *future_cancel(mmpy_future *f, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"msg", NULL};
    PyObject *msg = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|O:cancel", kwlist, &msg))
        return NULL;
    return do_cancel(f, msg);
}

static PyObject *future_set_result(mmpy_future *f, PyObject *result) {
    if (f->state != FUT_PENDING)
        return invalid_state("invalid state");
    if (mmpy_future_settle(f, result, NULL, NULL) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *future_set_exception(mmpy_future *f, PyObject *exc) {
    if (f->state != FUT_PENDING)
        return invalid_state("invalid state");
    PyObject *val;
    if (PyExceptionClass_Check(exc)) {
        val = PyObject_CallNoArgs(exc);
        if (!val)
            return NULL;
    } else if (PyExceptionInstance_Check(exc)) {
        val = Py_NewRef(exc);
    } else {
        PyErr_SetString(PyExc_TypeError, "invalid exception object");
        return NULL;
    }
    if (PyObject_TypeCheck(val, (PyTypeObject *)PyExc_StopIteration)) {
        Py_DECREF(val);
        PyErr_SetString(PyExc_TypeError,
                        "StopIteration interacts badly with generators and cannot be raised "
                        "into a Future");
        return NULL;
    }
    int rc = mmpy_future_settle(f, NULL, val, NULL);
    Py_DECREF(val);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *future_add_done_callback(mmpy_future *f, PyObject *args, PyObject *kw) {
    static char *kwlist[] = {"fn", "context", NULL};
    PyObject *fn, *ctx = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "O|$O:add_done_callback", kwlist, &fn, &ctx))
        return NULL;
    if (ctx == Py_None) {
        ctx = PyContext_CopyCurrent();
        if (!ctx)
            return NULL;
    } else {
        Py_INCREF(ctx);
    }
    int rc = 0;
    if (f->state != FUT_PENDING) {
        rc = call_soon(f->loop, fn, (PyObject *)f, ctx);
    } else if (!f->cb0) {
        f->cb0 = Py_NewRef(fn);
        f->ctx0 = Py_NewRef(ctx);
    } else {
        PyObject *pair = PyTuple_Pack(2, fn, ctx);
        if (!f->callbacks && pair)
            f->callbacks = PyList_New(0);
        rc = pair && f->callbacks ? PyList_Append(f->callbacks, pair) : -1;
        Py_XDECREF(pair);
    }
    Py_DECREF(ctx);
    if (rc < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *future_remove_done_callback(mmpy_future *f, PyObject *fn) {
    Py_ssize_t removed = 0;
    if (f->cb0) {
        int eq = PyObject_RichCompareBool(f->cb0, fn, Py_EQ);
        if (eq < 0)
            return NULL;
        if (eq) {
            Py_CLEAR(f->cb0);
            Py_CLEAR(f->ctx0);
            removed++;
        }
    }
    if (f->callbacks) {
        PyObject *keep = PyList_New(0);
        if (!keep)
            return NULL;
        PyObject *old = Py_NewRef(f->callbacks);
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(old); i++) {
            PyObject *pair = PyList_GET_ITEM(old, i);
            int eq = PyObject_RichCompareBool(PyTuple_GET_ITEM(pair, 0), fn, Py_EQ);
            if (eq < 0 || (!eq && PyList_Append(keep, pair) < 0)) {
                Py_DECREF(old);
                Py_DECREF(keep);
                return NULL;
            }
            removed += eq;
        }
        Py_DECREF(old);
        Py_XSETREF(f->callbacks, keep);
    }
    return PyLong_FromSsize_t(removed);
}

/* The awaitable side: __await__/__iter__ return the future itself, which yields itself once
 * while pending and then returns its result (or raises). */
static PySendResult future_am_send(mmpy_future *f, PyObject *arg, PyObject **presult) {
    (void)arg;
    if (f->state == FUT_PENDING) {
        f->blocking = 1;
        *presult = Py_NewRef(f);
        return PYGEN_NEXT;
    }
    *presult = future_result(f, NULL);
    return *presult ? PYGEN_RETURN : PYGEN_ERROR;
}

static PyObject *future_iternext(mmpy_future *f) {
    PyObject *r;
    PySendResult s = future_am_send(f, Py_None, &r);
    if (s == PYGEN_NEXT || s == PYGEN_ERROR)
        return r;
    /* the result travels in StopIteration (wrapped, so a tuple stays one value) */
    PyObject *stop = PyObject_CallOneArg(PyExc_StopIteration, r);
    Py_DECREF(r);
    if (stop) {
        PyErr_SetObject(PyExc_StopIteration, stop);
        Py_DECREF(stop);
    }
    return NULL;
}

static PyObject *future_await(mmpy_future *f) { return Py_NewRef(f); }

static PyObject *future_send(mmpy_future *f, PyObject *value) {
    (void)value;
    return future_iternext(f);
}

/* throw(): the coroutine is abandoned (a Task cancelled before its first step throws
 * CancelledError in): cancel the C task, then raise what was thrown. */
static PyObject *future_throw(mmpy_future *f, PyObject *args) {
    PyObject *typ, *val = NULL, *tb = NULL;
    if (!PyArg_UnpackTuple(args, "throw", 1, 3, &typ, &val, &tb))
        return NULL;
    if (f->state == FUT_PENDING) {
        PyObject *r = do_cancel(f, NULL);
        if (!r)
            return NULL;
        Py_DECREF(r);
    }
    if (PyExceptionInstance_Check(typ)) {
        PyErr_SetObject((PyObject *)Py_TYPE(typ), typ);
    } else if (PyExceptionClass_Check(typ)) {
        PyObject *exc = val && PyObject_TypeCheck(val, (PyTypeObject *)typ)
                            ? Py_NewRef(val)
                            : (val && val != Py_None ? PyObject_CallOneArg(typ, val)
                                                     : PyObject_CallNoArgs(typ));
        if (!exc)
            return NULL;
        if (tb && tb != Py_None && PyException_SetTraceback(exc, tb) < 0) {
            Py_DECREF(exc);
            return NULL;
        }
        PyErr_SetObject(typ, exc);
        Py_DECREF(exc);
    } else {
        PyErr_SetString(PyExc_TypeError,
                        "exceptions must be classes or instances deriving from BaseException");
    }
    return NULL;
}

/* close(): also called when a coroutine suspended on this future is finalized, maybe after
 * its loop closed: the C task is cancelled, and callbacks a closed loop cannot take are
 * dropped (nobody can run them). */
static PyObject *future_close(mmpy_future *f, PyObject *unused) {
    (void)unused;
    if (f->state == FUT_PENDING) {
        PyObject *r = do_cancel(f, NULL);
        if (!r)
            PyErr_Clear();
        Py_XDECREF(r);
    }
    Py_RETURN_NONE;
}

static PyObject *future_get_blocking(mmpy_future *f, void *closure) {
    (void)closure;
    return PyBool_FromLong(f->blocking);
}

static int future_set_blocking(mmpy_future *f, PyObject *v, void *closure) {
    (void)closure;
    if (!v) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete _asyncio_future_blocking");
        return -1;
    }
    int t = PyObject_IsTrue(v);
    if (t < 0)
        return -1;
    f->blocking = (unsigned char)t;
    return 0;
}

static PyObject *future_get_loop_attr(mmpy_future *f, void *closure) {
    (void)closure;
    return Py_NewRef(f->loop);
}

static PyObject *future_get_cancel_message(mmpy_future *f, void *closure) {
    (void)closure;
    return Py_NewRef(f->cancel_msg ? f->cancel_msg : Py_None);
}

/* asyncio code may set _log_traceback = False on any future; there is nothing to log here. */
static PyObject *future_get_log_traceback(mmpy_future *f, void *closure) {
    (void)f;
    (void)closure;
    Py_RETURN_FALSE;
}

static int future_set_log_traceback(mmpy_future *f, PyObject *v, void *closure) {
    (void)f;
    (void)closure;
    int t = v ? PyObject_IsTrue(v) : 1;
    if (t == 0)
        return 0;
    if (t > 0)
        PyErr_SetString(PyExc_ValueError, "_log_traceback can only be set to False");
    return -1;
}

static PyObject *future_get_task_id(mmpy_future *f, void *closure) {
    (void)closure;
    return PyLong_FromUnsignedLongLong(f->tid);
}

static PyObject *future_repr(mmpy_future *f) {
    static const char *names[] = {"pending", "cancelled", "finished"};
    if (f->state == FUT_FINISHED && f->exception)
        return PyUnicode_FromFormat("<TaskFuture finished task=%llu exception=%R>",
                                    (unsigned long long)f->tid, f->exception);
    if (f->state == FUT_FINISHED)
        return PyUnicode_FromFormat("<TaskFuture finished task=%llu result=%R>",
                                    (unsigned long long)f->tid, f->result);
    return PyUnicode_FromFormat("<TaskFuture %s task=%llu>", names[f->state],
                                (unsigned long long)f->tid);
}

static PyMethodDef future_methods[] = {
    {"result", (PyCFunction)future_result, METH_NOARGS,
     "result()\n\nThe Result; raises CancelledError when cancelled, the exception when one "
     "was set, InvalidStateError while pending."},
    {"exception", (PyCFunction)future_exception, METH_NOARGS,
     "exception()\n\nThe exception set (None if none); raises as result() does when "
     "cancelled or pending."},
    {"done", (PyCFunction)future_done, METH_NOARGS, "done()\n\nTrue once settled."},
    {"cancelled", (PyCFunction)future_cancelled, METH_NOARGS,
     "cancelled()\n\nTrue when cancelled."},
    {"get_loop", (PyCFunction)future_get_loop, METH_NOARGS,
     "get_loop()\n\nThe event loop the future belongs to."},
    {"cancel", (PyCFunction)(void (*)(void))future_cancel, METH_VARARGS | METH_KEYWORDS,
     "cancel(msg=None)\n\nCancels the future and the C task (a queued task leaves its queue); "
     "False when already settled."},
    {"set_result", (PyCFunction)future_set_result, METH_O,
     "set_result(result)\n\nSettles the future (InvalidStateError when settled)."},
    {"set_exception", (PyCFunction)future_set_exception, METH_O,
     "set_exception(exception)\n\nSettles the future with an exception."},
    {"add_done_callback", (PyCFunction)(void (*)(void))future_add_done_callback,
     METH_VARARGS | METH_KEYWORDS,
     "add_done_callback(fn, *, context=None)\n\nfn(future) is scheduled with loop.call_soon "
     "in context (a copy of the current one by default) once the future is settled."},
    {"remove_done_callback", (PyCFunction)future_remove_done_callback, METH_O,
     "remove_done_callback(fn)\n\nRemoves every registration of fn; returns how many."},
    {"send", (PyCFunction)future_send, METH_O,
     "send(value)\n\nThe coroutine protocol: yields the future while pending, then "
     "StopIteration(result)."},
    {"throw", (PyCFunction)future_throw, METH_VARARGS,
     "throw(type[, value[, traceback]])\n\nCancels the task if pending, then raises."},
    {"close", (PyCFunction)future_close, METH_NOARGS,
     "close()\n\nCancels the task if pending (the coroutine is abandoned)."},
    {"_make_cancelled_error", (PyCFunction)make_cancelled_error, METH_NOARGS,
     "_make_cancelled_error()\n\nThe CancelledError to raise (asyncio.gather calls it)."},
    {"__class_getitem__", Py_GenericAlias, METH_O | METH_CLASS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef future_getset[] = {
    {"_asyncio_future_blocking", (getter)future_get_blocking, (setter)future_set_blocking,
     "asyncio's marker of a future (and whether a Task waits on it)", NULL},
    {"_loop", (getter)future_get_loop_attr, NULL, "the event loop", NULL},
    {"_cancel_message", (getter)future_get_cancel_message, NULL, "cancel()'s message", NULL},
    {"_log_traceback", (getter)future_get_log_traceback, (setter)future_set_log_traceback,
     "always False: a TaskFuture logs no unretrieved exception", NULL},
    {"task_id", (getter)future_get_task_id, NULL, "the engine's id of the task (0: none)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef future_members[] = {
    {"__weaklistoffset__", T_PYSSIZET, offsetof(mmpy_future, weakreflist), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot future_slots[] = {
    {Py_tp_doc, "TaskFuture(loop)\n\nAn asyncio future of a ModelManager task's Result that is "
                "also a coroutine object (what task() returns in a running loop)."},
    {Py_tp_new, future_tp_new},
    {Py_tp_dealloc, future_dealloc},
    {Py_tp_traverse, future_traverse},
    {Py_tp_clear, future_clear},
    {Py_tp_repr, future_repr},
    {Py_tp_iter, future_await},
    {Py_tp_iternext, future_iternext},
    {Py_am_await, future_await},
    {Py_am_send, future_am_send},
    {Py_tp_methods, future_methods},
    {Py_tp_getset, future_getset},
    {Py_tp_members, future_members},
    {0, NULL},
};

static PyType_Spec future_spec = {
    .name = "pymodelmgr._core.TaskFuture",
    .basicsize = sizeof(mmpy_future),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = future_slots,
};

int mmpy_future_init_type(PyObject *module, mmpy_state *st) {
    st->future_type = (PyTypeObject *)PyType_FromModuleAndSpec(module, &future_spec, NULL);
    if (!st->future_type)
        return -1;
    return PyModule_AddType(module, st->future_type);
}
