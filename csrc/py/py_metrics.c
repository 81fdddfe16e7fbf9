/* py_metrics.c: Engine.metrics(), the core's counters as Python values.
 *
 * The core copies its metrics out under the engine lock (mm_engine_metrics);
 * this file turns that copy into plain dicts and lists, with the GIL held
 * and no core lock held.  pymodelmgr.metrics builds the Prometheus families
 * from them; nothing here knows Prometheus.
 *
 * Shape: {"series": [{"model", "task_type", "tasks": {outcome: n}, "items",
 * "batches", "tokens_in", "tokens_out", "loads": {"success": n, "failed": n},
 * "releases": {reason: n}, "queue_wait_seconds"/"run_seconds"/"batch_items"/
 * "load_seconds": (bucket counts incl. +Inf, not cumulative; count; sum)}],
 * "gauges": [{"model", "queue_depth", "in_flight", "workers",
 * "workers_loaded"}], "memory": [{"model", "device", "bytes"}],
 * "latency_buckets": [...], "batch_buckets": [...]}
 */
#include "mm_alloc.h"
#include "mm_metrics.h"
#include "mmpy.h"

static PyObject *bounds_list(const double *b, int n) {
    PyObject *l = PyList_New(n);
    for (int i = 0; l && i < n; i++) {
        PyObject *v = PyFloat_FromDouble(b[i]);
        if (!v) {
            Py_CLEAR(l);
            break;
        }
        PyList_SET_ITEM(l, i, v);
    }
    return l;
}

static PyObject *hist_tuple(const mm_hist *h, int nb) {
    PyObject *b = PyList_New(nb + 1);
    for (int i = 0; b && i <= nb; i++) {
        PyObject *v = PyLong_FromUnsignedLongLong(h->bucket[i]);
        if (!v) {
            Py_CLEAR(b);
            break;
        }
        PyList_SET_ITEM(b, i, v);
    }
    return b ? Py_BuildValue("(NKd)", b, (unsigned long long)h->count, h->sum) : NULL;
}

static PyObject *series_dict(const mm_metrics_series *s) {
    PyObject *tasks = PyDict_New(), *rel = PyDict_New(), *d = NULL;
    if (!tasks || !rel)
        goto out;
    for (int o = 0; o < MM_OUT_N; o++) {
        PyObject *v = PyLong_FromUnsignedLongLong(s->tasks[o]);
        if (!v || PyDict_SetItemString(tasks, mm_outcome_name((mm_outcome)o), v) < 0) {
            Py_XDECREF(v);
            goto out;
        }
        Py_DECREF(v);
    }
    for (int r = 0; r < MM_REL_N; r++) {
        PyObject *v = PyLong_FromUnsignedLongLong(s->releases[r]);
        if (!v || PyDict_SetItemString(rel, mm_release_reason_name((mm_release_reason)r), v) < 0) {
            Py_XDECREF(v);
            goto out;
        }
        Py_DECREF(v);
    }
    d = Py_BuildValue("{s:s,s:s,s:O,s:K,s:K,s:K,s:K,s:{s:K,s:K},s:O,s:N,s:N,s:N,s:N}", "model",
                      s->name, "task_type", mm_task_type_name(s->task_type), "tasks", tasks,
                      "items", (unsigned long long)s->items, "batches",
                      (unsigned long long)s->batches, "tokens_in",
                      (unsigned long long)s->tokens_in, "tokens_out",
                      (unsigned long long)s->tokens_out, "loads", "success",
                      (unsigned long long)s->loads_ok, "failed",
                      (unsigned long long)s->loads_failed, "releases", rel,
                      "queue_wait_seconds", hist_tuple(&s->queue_wait, MM_MET_LAT_NB),
                      "run_seconds", hist_tuple(&s->run, MM_MET_LAT_NB), "batch_items",
                      hist_tuple(&s->batch, MM_MET_BATCH_NB), "load_seconds",
                      hist_tuple(&s->load, MM_MET_LAT_NB));
out:
    Py_XDECREF(tasks);
    Py_XDECREF(rel);
    return d;
}

PyObject *mmpy_metrics_snapshot(mm_engine_t *e) {
    mm_metrics_snapshot snap;
    if (mm_engine_metrics(e, &snap) < 0)
        return PyErr_NoMemory();
    PyObject *series = PyList_New((Py_ssize_t)snap.n_series);
    PyObject *gauges = PyList_New((Py_ssize_t)snap.n_gauges);
    PyObject *memory = PyList_New((Py_ssize_t)snap.n_memory);
    PyObject *out = NULL;
    if (!series || !gauges || !memory)
        goto done;
    for (size_t i = 0; i < snap.n_series; i++) {
        PyObject *d = series_dict(&snap.series[i]);
        if (!d)
            goto done;
        PyList_SET_ITEM(series, (Py_ssize_t)i, d);
    }
    for (size_t i = 0; i < snap.n_gauges; i++) {
        const mm_metrics_gauges *g = &snap.gauges[i];
        PyObject *d = Py_BuildValue("{s:s,s:n,s:n,s:i,s:i}", "model", g->name, "queue_depth",
                                    (Py_ssize_t)g->queue_depth, "in_flight",
                                    (Py_ssize_t)g->in_flight, "workers", g->workers,
                                    "workers_loaded", g->workers_loaded);
        if (!d)
            goto done;
        PyList_SET_ITEM(gauges, (Py_ssize_t)i, d);
    }
    for (size_t i = 0; i < snap.n_memory; i++) {
        const mm_metrics_memory *m = &snap.memory[i];
        PyObject *d = Py_BuildValue("{s:s,s:s,s:K}", "model", m->name, "device", m->device,
                                    "bytes", (unsigned long long)m->bytes);
        if (!d)
            goto done;
        PyList_SET_ITEM(memory, (Py_ssize_t)i, d);
    }
    out = Py_BuildValue("{s:O,s:O,s:O,s:N,s:N}", "series", series, "gauges", gauges, "memory",
                        memory, "latency_buckets",
                        bounds_list(mm_metrics_lat_bounds, MM_MET_LAT_NB), "batch_buckets",
                        bounds_list(mm_metrics_batch_bounds, MM_MET_BATCH_NB));
done:
    Py_XDECREF(series);
    Py_XDECREF(gauges);
    Py_XDECREF(memory);
    mm_metrics_snapshot_free(&snap);
    return out;
}
