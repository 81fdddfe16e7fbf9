/* mm_router.c: chooses, per model, the native backend or the transformers
 * fallback, and forwards to it.
 *
 * Why a router: the engine finds a backend by model name at submit, but
 * whether a model has a native graph is only known once its config.json is
 * on disk, i.e. on the worker thread inside load().  So the engine always
 * gets this vtable for Hugging Face names, and load() decides:
 *
 *   model option backend="native"        -> the native backend (its errors
 *                                           are the caller's);
 *   backend="transformers"               -> the fallback;
 *   backend="auto" (or none)             -> the fallback when config.json
 *       names custom code (auto_map: the native graphs would run a look-alike
 *       architecture wrongly); otherwise the native backend, and the fallback
 *       when the native one cannot load the model (no native graph for its
 *       architecture, a tokenizer it does not read ...).  The first load logs
 *       why the fallback was chosen.  A build without the libtorch shim fails
 *       as it always did (the message says why); "transformers" still works.
 *
 * Rerank and classification models take the same path: the native backend
 * runs BERT-family ...ForSequenceClassification heads, the fallback the rest.
 * check() runs on the submitting thread without a model: kwargs and inputs
 * are checked as the native backend checks them whatever the backend (one
 * contract).  run() forwards the batch and adds "backend" to every
 * successful result.  No Python here.
 */
#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "mm_alloc.h"
#include "mm_err.h"
#include "mm_fallback.h"
#include "mm_hub.h"
#include "mm_log.h"
#include "mm_native.h"

typedef enum { B_AUTO, B_NATIVE, B_TRANSFORMERS } bchoice;

typedef struct rstate {
    const mm_backend_vtable *vt; /* what serves this worker */
    void *inner;
    const char *json_name; /* "\"native\"" or "\"transformers\"" */
} rstate;

/* The model option "backend"; -1 with a message for an unknown value. */
static int backend_choice(const mm_model_spec *spec, bchoice *out, char *err, size_t errlen) {
    *out = B_AUTO;
    const char *opts = spec->model_options_json ? spec->model_options_json : "{}";
    json_t *o = json_loads(opts, 0, NULL);
    json_t *b = o ? json_object_get(o, "backend") : NULL;
    int rc = 0;
    if (b && !json_is_null(b)) {
        const char *s = json_is_string(b) ? json_string_value(b) : "";
        if (!strcmp(s, "native"))
            *out = B_NATIVE;
        else if (!strcmp(s, "transformers"))
            *out = B_TRANSFORMERS;
        else if (strcmp(s, "auto") != 0) {
            snprintf(err, errlen,
                     "backend must be \"auto\", \"native\" or \"transformers\", got %.60s",
                     json_is_string(b) ? s : "a non-string");
            rc = MM_EINVAL;
        }
    }
    json_decref(o);
    return rc;
}

static int router_accepts(const char *model_name) {
    return mm_native_backend.accepts(model_name);
}

static int router_check(const mm_model_spec *spec, const mm_task_t *task, char *err,
                        size_t errlen) {
    bchoice b;
    int rc = backend_choice(spec, &b, err, errlen);
    if (rc != 0)
        return rc;
    return mm_native_backend.check ? mm_native_backend.check(spec, task, err, errlen) : 0;
}

/* Does config.json in dir name custom code (auto_map)?  Writes the class it
 * names into what. */
static int names_custom_code(const char *dir, char *what, size_t cap) {
    char path[MM_HUB_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/config.json", dir);
    json_t *c = json_load_file(path, 0, NULL);
    json_t *am = c ? json_object_get(c, "auto_map") : NULL;
    int yes = json_is_object(am) && json_object_size(am) > 0;
    if (yes) {
        const char *k;
        json_t *v;
        what[0] = '\0';
        json_object_foreach(am, k, v) {
            snprintf(what, cap, "%s: %s", k,
                     json_is_string(v) ? json_string_value(v) : "(a list)");
            break;
        }
    }
    json_decref(c);
    return yes;
}

/* Codes that say the model is out of reach, not that the native backend
 * cannot run it: the fallback would fail the same way. */
static int unreachable(int rc) {
    return rc == MM_ENOTFOUND || rc == MM_EAUTH || rc == MM_EBADTOKEN || rc == MM_ENETWORK ||
           rc == MM_EDISKFULL || rc == MM_ECORRUPT || rc == MM_EREVISION || rc == MM_ENOMEM ||
           rc == MM_EFORMAT || rc == MM_EFILE;
}

static int load_with(rstate *s, const mm_backend_vtable *vt, const mm_model_spec *spec,
                     const mm_device *dev, char *err, size_t errlen) {
    s->vt = vt;
    s->json_name = vt == &mm_native_backend ? "\"native\"" : "\"transformers\"";
    return vt->load(spec, dev, &s->inner, err, errlen);
}

static int router_load(const mm_model_spec *spec, const mm_device *dev, void **state, char *err,
                       size_t errlen) {
    *state = NULL;
    bchoice b;
    int rc = backend_choice(spec, &b, err, errlen);
    if (rc != 0)
        return rc;
    rstate *s = mm_calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return MM_ENOMEM;
    }
    if (b == B_NATIVE) {
        rc = load_with(s, &mm_native_backend, spec, dev, err, errlen);
    } else if (b == B_TRANSFORMERS) {
        rc = load_with(s, &mm_fallback_backend, spec, dev, err, errlen);
    } else {
        char dir[MM_HUB_PATH_MAX], what[256];
        rc = mm_native_resolve_model(spec, dir, sizeof dir, err, errlen);
        if (rc == 0 && names_custom_code(dir, what, sizeof what)) {
            mm_log(MM_LOG_INFO,
                   "%s: no native graph for custom code (config.json auto_map %s); using the "
                   "transformers fallback",
                   spec->model_name, what);
            rc = load_with(s, &mm_fallback_backend, spec, dev, err, errlen);
        } else if (rc == 0 && !mm_native_shim_sym("mm_torch_abi_version", err, errlen)) {
            /* A build without the libtorch shim: say so, as without the fallback
             * (backend="transformers" still runs the model). */
            rc = MM_ELOAD;
        } else if (rc == 0) {
            char nerr[512] = "";
            rc = load_with(s, &mm_native_backend, spec, dev, nerr, sizeof nerr);
            if (rc != 0 && !unreachable(rc)) {
                mm_log(MM_LOG_INFO, "%s: no native graph (%s); using the transformers fallback",
                       spec->model_name, nerr);
                rc = load_with(s, &mm_fallback_backend, spec, dev, err, errlen);
                if (rc != 0) {
                    size_t u = strlen(err);
                    snprintf(err + u, errlen - u, " (the native backend could not load it either: %s)",
                             nerr);
                }
            } else if (rc != 0) {
                snprintf(err, errlen, "%s", nerr);
            }
        }
    }
    if (rc != 0) {
        mm_free(s);
        return rc;
    }
    *state = s;
    return 0;
}

/* Names the backend that served t in its result. */
static void mark_backend(void *state, mm_task_t *t) {
    rstate *s = state;
    if (mm_task_error_code(t) == 0 && mm_task_result_kind(t) != MM_RESULT_NONE)
        mm_task_result_extra(t, "backend", s->json_name);
}

static void router_run(void *state, mm_task_t **tasks, size_t n) {
    rstate *s = state;
    mm_worker_on_finish(mark_backend, s); /* tasks finished early (continuous batching) */
    s->vt->run(s->inner, tasks, n);
    mm_worker_on_finish(NULL, NULL);
    for (size_t i = 0; i < n; i++)
        if (tasks[i]) /* NULL: finished early */
            mark_backend(s, tasks[i]);
}

static void router_unload(void *state) {
    rstate *s = state;
    if (!s)
        return;
    s->vt->unload(s->inner);
    mm_free(s);
}

static int router_info(void *state, mm_backend_info *info) {
    rstate *s = state;
    int rc = s->vt->info ? s->vt->info(s->inner, info) : 0;
    snprintf(info->backend, sizeof info->backend, "%s",
             s->vt == &mm_native_backend ? "native" : "transformers");
    return rc;
}

static size_t router_cost(void *state, const mm_task_t *t) {
    rstate *s = state;
    if (s && s->vt->cost)
        return s->vt->cost(s->inner, t);
    return mm_task_total_bytes(t) / 4 + 2 * mm_task_n_items(t);
}

/* The memory policy's estimate: the safetensors headers and config.json
 * describe the model whichever backend runs it (mm_native_mem.c). */
static int router_estimate(const mm_model_spec *spec, const mm_device *dev, mm_footprint *fp,
                           char *err, size_t errlen) {
    return mm_native_estimate(spec, dev, fp, err, errlen);
}

const mm_backend_vtable mm_router_backend = {
    .name = "auto",
    .accepts = router_accepts,
    .check = router_check,
    .load = router_load,
    .run = router_run,
    .unload = router_unload,
    .info = router_info,
    .cost = router_cost,
    .embed_cacheable = 1,
    .estimate = router_estimate,
};
