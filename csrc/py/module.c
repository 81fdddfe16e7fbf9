/* module.c: the pymodelmgr._core extension module.
 *
 * Multi-phase initialisation with a module state struct; each Python type
 * lives in its own file.  Optional layers (tokenizer, hub, native models)
 * join through weak hooks: a hook is called when its file was compiled in.
 */
#include "mm_err.h"
#include "mmpy.h"

static int core_exec(PyObject *m) {
    mmpy_state *st = PyModule_GetState(m);
    PyObject *json = PyImport_ImportModule("json");
    if (!json)
        return -1;
    st->json_loads = PyObject_GetAttrString(json, "loads");
    Py_DECREF(json);
    if (!st->json_loads)
        return -1;
    if (mmpy_future_init_type(m, st) < 0 || mmpy_channel_init_type(m, st) < 0 || mmpy_engine_init_type(m, st) < 0 ||
        mmpy_log_init(m) < 0)
        return -1;
    PyObject *codes = PyDict_New();
    if (!codes)
        return -1;
#define MMPY_ADD_CODE(sym, val, name, phrase)                               \
    {                                                                       \
        PyObject *v = PyUnicode_FromString(phrase);                         \
        if (!v || PyDict_SetItemString(codes, name, v) < 0) {               \
            Py_XDECREF(v);                                                  \
            Py_DECREF(codes);                                               \
            return -1;                                                      \
        }                                                                   \
        Py_DECREF(v);                                                       \
    }
    MM_ERROR_TABLE(MMPY_ADD_CODE)
#undef MMPY_ADD_CODE
    if (PyModule_AddObject(m, "ERROR_CODES", codes) < 0) {
        Py_DECREF(codes);
        return -1;
    }
    if (mmpy_tok_add && mmpy_tok_add(m) < 0)
        return -1;
    if (mmpy_hub_add && mmpy_hub_add(m) < 0)
        return -1;
    if (mmpy_fallback_add && mmpy_fallback_add(m) < 0) /* ahead of native: it routes */
        return -1;
    if (mmpy_native_add && mmpy_native_add(m) < 0)
        return -1;
    return 0;
}

static int core_traverse(PyObject *m, visitproc visit, void *arg) {
    mmpy_state *st = PyModule_GetState(m);
    Py_VISIT(st->engine_type);
    Py_VISIT(st->channel_type);
    Py_VISIT(st->future_type);
    Py_VISIT(st->json_loads);
    return 0;
}

static int core_clear(PyObject *m) {
    mmpy_state *st = PyModule_GetState(m);
    Py_CLEAR(st->engine_type);
    Py_CLEAR(st->channel_type);
    Py_CLEAR(st->future_type);
    Py_CLEAR(st->json_loads);
    return 0;
}

static void core_free(void *m) { core_clear((PyObject *)m); }

static PyModuleDef_Slot core_slots[] = {
    {Py_mod_exec, core_exec},
    {0, NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "pymodelmgr._core",
    .m_doc = "The C core of pymodelmgr: engine, completion channels and native layers.",
    .m_size = sizeof(mmpy_state),
    .m_slots = core_slots,
    .m_traverse = core_traverse,
    .m_clear = core_clear,
    .m_free = core_free,
};

PyMODINIT_FUNC PyInit__core(void) { return PyModuleDef_Init(&core_module); }
