/* mm_fallback.h: the transformers fallback backend and the per-model router.
 *
 * mm_router_backend is the backend the engine finds for every Hugging Face
 * model name (it is registered ahead of the native backend).  It holds no
 * model of its own: its load() picks, per model, the native backend or the
 * transformers fallback (model option "backend": "native", "transformers",
 * or "auto" = native when the architecture has a native graph), and every
 * other entry point forwards to the one it picked.  Results say which one
 * served them (data["backend"]).  It never calls Python.
 *
 * mm_fallback_backend runs a model with sentence-transformers / transformers
 * through the Python module pymodelmgr.fallback, from the engine's worker
 * thread, holding the GIL only around each call into that module.  It is
 * defined in mm_fallback.c, the one file of this folder that includes
 * Python.h; the folder is compiled into the _core extension, never into
 * the Python-free C libraries.
 */
#ifndef MM_FALLBACK_H
#define MM_FALLBACK_H

#include "mm_backend.h"

extern const mm_backend_vtable mm_router_backend;
extern const mm_backend_vtable mm_fallback_backend;

#endif
