/* mm_backends.h: the process-wide list of model backends.
 *
 * The engine picks, for each model name, the first registered backend whose
 * accepts() says yes.  The synthetic backend is always registered first (it
 * takes names starting with "synthetic/"); the native backend (hub +
 * tokenizer + libtorch shim) registers itself from the extension's init when
 * it was built, and takes the rest.
 */
#ifndef MM_BACKENDS_H
#define MM_BACKENDS_H

#include "mm_backend.h"

/* Adds vt (static storage, never freed) to the end of the list; registering
 * the same vtable twice is a no-op.  0, or MM_ENOMEM when the list is full.
 * Any thread; usually once at start-up. */
int mm_backends_register(const mm_backend_vtable *vt);

/* The backend for model_name, or NULL when none accepts it.  Any thread. */
const mm_backend_vtable *mm_backends_find(const char *model_name);

/* The synthetic backend (mm_synthetic.c). */
extern const mm_backend_vtable mm_synthetic_backend;

#endif
