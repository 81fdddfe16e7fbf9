/* mm_native.h: the native model backend (real Hugging Face models in C).
 *
 * mm_native_backend serves every model name the synthetic backend does not:
 * it resolves the name to a local directory through the hub client (a local
 * directory is used in place), tokenizes on the worker thread with the C
 * tokenizer, and runs the model through libmm_torch.so, the libtorch shim,
 * which it dlopens on the first load of a real model (so importing
 * pymodelmgr never loads libtorch).  Embedding tasks are handled here;
 * text-generation tasks are handed to mm_native_gen_backend when that part
 * was linked in (issue 6), and fail with UNSUPPORTED otherwise.
 *
 * Threads: the vtable follows mm_backend.h (load/run/unload on the worker
 * thread, check on the submitting thread).  The helpers below may be called
 * from any thread.
 */
#ifndef MM_NATIVE_H
#define MM_NATIVE_H

#include <stddef.h>

#include "mm_backend.h"

extern const mm_backend_vtable mm_native_backend;

/* Tells the backend which directory holds libmm_torch.so (the extension
 * module's own directory).  Copies dir.  Call once at start-up, before any
 * load; 0 or MM_ENOMEM / MM_EINVAL.  Without it the library is looked up
 * by the dynamic loader's search path. */
int mm_native_set_lib_dir(const char *dir);

/* Tells the backend where the installed torch package keeps its libraries
 * (site-packages/torch/lib), found by the Python layer without importing
 * torch.  Before the shim is dlopened, libtorch is loaded from there, so the
 * shim's NEEDED libc10.so / libtorch_cpu.so resolve to those copies wherever
 * torch is installed (not only next to pymodelmgr, as the shim's RUNPATH
 * $ORIGIN/../torch/lib expects).  Copies dir; 0 or MM_ENOMEM / MM_EINVAL. */
int mm_native_set_torch_dir(const char *dir);

/* ---- for the generation part (a gen file in csrc/native, issue 6) ---- */

/* Optional: a vtable for MM_TASK_TEXT_GENERATION models, defined by the
 * generation part when it is linked in.  mm_native_backend forwards check,
 * load, run, unload, info and cost of generation models to it. */
#ifdef MM_HAVE_NATIVE_GEN
extern const mm_backend_vtable mm_native_gen_backend;
#else
extern const mm_backend_vtable mm_native_gen_backend __attribute__((weak));
#endif

/* Rerank and classification models (mm_native_heads.c): BERT-family
 * ...ForSequenceClassification checkpoints; mm_native_backend forwards them. */
extern const mm_backend_vtable mm_native_heads_backend;

/* Validates a rerank / classification task's kwargs and inputs (any backend
 * that runs these task types); 0 or a negative code with a message in err. */
int mm_native_check_fields_task(const mm_model_spec *spec, const mm_task_t *task, char *err,
                                size_t errlen);

/* Opens libmm_torch.so once (thread-safe) and returns the address of
 * symbol, or NULL with a message in err naming what is missing (the
 * library, libtorch, or the symbol).  Blocks on the first call. */
void *mm_native_shim_sym(const char *symbol, char *err, size_t errlen);

/* Resolves spec's model (hub snapshot at spec->revision in
 * spec->cache_dir, or a local directory) into dir (cap bytes).  0, or the
 * hub's code with a message in err.  Blocks (may download). */
/* The footprint estimate of mm_native_backend (mm_native_mem.c): weights
 * from the safetensors headers, activations bounded from config.json.
 * Resolves (and may download) the model first.  0 or a negative code. */
int mm_native_estimate(const mm_model_spec *spec, const mm_device *dev, mm_footprint *fp,
                       char *err, size_t errlen);

int mm_native_resolve_model(const mm_model_spec *spec, char *dir, size_t cap, char *err,
                            size_t errlen);

/* The same, also writing what was loaded into rev (revcap bytes): the
 * resolved commit, or for a local folder an id of its weights' size and
 * mtime.  Download progress is logged (INFO) every two seconds. */
int mm_native_resolve_model_rev(const mm_model_spec *spec, char *dir, size_t cap, char *rev,
                                size_t revcap, char *err, size_t errlen);

#endif
