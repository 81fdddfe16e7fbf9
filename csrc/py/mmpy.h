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
    PyObject *json_loads; /* json.loads, for backend extras */
} mmpy_state;

typedef struct mmpy_channel {
    PyObject_HEAD
    mm_channel_t *ch;
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
int mmpy_channel_init_type(PyObject *module, mmpy_state *st);
int mmpy_engine_init_type(PyObject *module, mmpy_state *st);
int mmpy_log_init(PyObject *module);
/* Engine.metrics(): the core's counters as dicts (py_metrics.c). */
PyObject *mmpy_metrics_snapshot(mm_engine_t *e);

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

#endif
