/* py_native.c: registers the native model backend with the engine.
 *
 * Compiled into pymodelmgr._core always, but only does something when the
 * native layer (csrc/native) was built (MM_HAVE_native).  At module exec it
 * tells the backend where libmm_torch.so lives (next to this extension
 * module, where setup.py puts every built .so) and where the installed torch
 * keeps its libraries (found, not imported), and appends the backend to the
 * engine's list after the synthetic one.  It does not load libtorch:
 * that happens on the first load of a real model.
 */
#ifdef MM_HAVE_native
#include <string.h>

#include "mm_backends.h"
#include "mm_native.h"
#include "mmpy.h"

/* The installed torch package's lib folder, found without importing torch
 * (importlib.util.find_spec), for mm_native_set_torch_dir.  Any failure
 * (torch not installed, a namespace package...) leaves it unset: the shim's
 * RUNPATH and the loader's search path decide then. */
static void set_torch_dir(void) {
    PyObject *util = PyImport_ImportModule("importlib.util");
    PyObject *spec = util ? PyObject_CallMethod(util, "find_spec", "s", "torch") : NULL;
    PyObject *locs = spec && spec != Py_None
                         ? PyObject_GetAttrString(spec, "submodule_search_locations")
                         : NULL;
    PyObject *first = locs && locs != Py_None ? PySequence_GetItem(locs, 0) : NULL;
    const char *dir = first && PyUnicode_Check(first) ? PyUnicode_AsUTF8(first) : NULL;
    if (dir) {
        PyObject *lib = PyUnicode_FromFormat("%s/lib", dir);
        const char *l = lib ? PyUnicode_AsUTF8(lib) : NULL;
        if (l)
            (void)mm_native_set_torch_dir(l);
        Py_XDECREF(lib);
    }
    Py_XDECREF(first);
    Py_XDECREF(locs);
    Py_XDECREF(spec);
    Py_XDECREF(util);
    PyErr_Clear();
}

int mmpy_native_add(PyObject *module) {
    PyObject *file = PyModule_GetFilenameObject(module);
    if (file) {
        const char *path = PyUnicode_AsUTF8(file);
        const char *slash = path ? strrchr(path, '/') : NULL;
        if (slash) {
            PyObject *dir = PyUnicode_FromStringAndSize(path, slash - path);
            const char *d = dir ? PyUnicode_AsUTF8(dir) : NULL;
            int rc = d ? mm_native_set_lib_dir(d) : -1;
            Py_XDECREF(dir);
            if (rc != 0) {
                Py_DECREF(file);
                if (!PyErr_Occurred())
                    PyErr_NoMemory();
                return -1;
            }
        }
        Py_DECREF(file);
    } else {
        PyErr_Clear(); /* no __file__ (embedded): the loader's search path decides */
    }
    set_torch_dir();
    if (mm_backends_register(&mm_native_backend) != 0) {
        PyErr_NoMemory();
        return -1;
    }
    return PyModule_AddIntConstant(module, "HAVE_NATIVE", 1);
}
#endif
