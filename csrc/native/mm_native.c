/* mm_native.c: the native backend: real Hugging Face embedding models run
 * from C worker threads through the libtorch shim.
 *
 * load():  hub snapshot (or a local directory) -> tokenizer.json through the
 *          C tokenizer -> libmm_torch.so, dlopened once per process on the
 *          first real model, then mm_torch_embedder_load() for the worker's
 *          device.  CPU workers of one model share the shim's one copy of
 *          the weights.  A worker's intra-op threads are the engine's
 *          dev->cpu_threads, so N workers never oversubscribe the cores.
 * run():   the engine hands over a batch of tasks (its token budget counts
 *          cost() units).  Every item of every task is tokenized here, on the
 *          worker thread, then all rows are sorted by length and cut into
 *          micro-batches of at most micro_batch_tokens padded tokens and
 *          micro_batch_items rows, so short sentences are never padded to a
 *          long neighbour and 1,000 one-sentence tasks cost about what one
 *          1,000-sentence task costs.  Each micro-batch is one forward; the
 *          vectors go back to their tasks by (task, item) index, so a result
 *          never depends on which other requests shared its batch.
 *          Normalization and Matryoshka `dimensions` are applied per task.
 * check(): validates the kwargs on the submitting thread (no model needed).
 *
 * Text-generation models go to mm_native_gen_backend (weak; issue 6).
 */
#include "mm_native.h"

#include <dlfcn.h>
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <utf8proc.h>

#include "mm_alloc.h"
#include "mm_err.h"
#include "mm_hub.h"
#include "mm_log.h"
#include "mm_native_batch.h"
#include "mm_native_tok.h"
#include "../torch/mm_torch.h"

#define SHIM_NAME "libmm_torch.so"

/* ------------------------------------------------------------------ shim */

static pthread_mutex_t g_shim_mu = PTHREAD_MUTEX_INITIALIZER;
static char *g_lib_dir;  /* guarded by g_shim_mu */
static char *g_torch_dir; /* guarded by g_shim_mu: the torch package's lib folder */
static void *g_shim;     /* guarded by g_shim_mu; never closed once open */

static struct {
    mm_torch_embedder_default_params_fn default_params;
    mm_torch_embedder_load_fn load;
    mm_torch_embedder_info_get_fn info;
    mm_torch_embed_fn embed;
    mm_torch_embed_many_fn embed_many; /* optional (older shims lack it) */
    mm_torch_embedder_free_fn free;
} g_api; /* written once under g_shim_mu before g_shim is set */

/* Replaces *slot (g_lib_dir or g_torch_dir) with a copy of dir. */
static int set_dir(char **slot, const char *dir) {
    if (!dir)
        return MM_EINVAL;
    char *copy = mm_strdup(dir);
    if (!copy)
        return MM_ENOMEM;
    pthread_mutex_lock(&g_shim_mu);
    mm_free(*slot);
    *slot = copy;
    pthread_mutex_unlock(&g_shim_mu);
    return 0;
}

int mm_native_set_lib_dir(const char *dir) { return set_dir(&g_lib_dir, dir); }

int mm_native_set_torch_dir(const char *dir) { return set_dir(&g_torch_dir, dir); }

/* g_shim_mu held.  Loads the torch package's own libraries by path (as
 * `import torch` would), so that the shim's NEEDED entries match them by
 * soname.  Missing files are skipped (a CPU torch has no CUDA libraries);
 * the handles stay open for the life of the process, like the shim's. */
static void torch_preload_locked(void) {
    static const char *const libs[] = {"libc10.so", "libtorch_cpu.so", "libc10_cuda.so",
                                       "libtorch_cuda.so", "libtorch.so"};
    if (!g_torch_dir)
        return;
    for (size_t i = 0; i < sizeof libs / sizeof libs[0]; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", g_torch_dir, libs[i]);
        if (access(path, R_OK) == 0 && !dlopen(path, RTLD_NOW | RTLD_LOCAL)) {
            const char *why = dlerror();
            mm_log(MM_LOG_WARNING, "cannot preload %s: %s", path, why ? why : "unknown error");
        }
    }
}

/* g_shim_mu held. */
static int shim_open_locked(char *err, size_t errlen) {
    if (g_shim)
        return 0;
    char path[4096];
    if (g_lib_dir) {
        snprintf(path, sizeof path, "%s/%s", g_lib_dir, SHIM_NAME);
        if (access(path, R_OK) != 0) {
            snprintf(err, errlen,
                     "the native backend needs the libtorch shim %s, which is not in %s: "
                     "pymodelmgr was built without torch; install torch, then reinstall "
                     "pymodelmgr (pip install . from its clone, or make build there)",
                     SHIM_NAME, g_lib_dir);
            return MM_ELOAD;
        }
    } else {
        snprintf(path, sizeof path, "%s", SHIM_NAME);
    }
    torch_preload_locked();
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *why = dlerror();
        snprintf(err, errlen,
                 "cannot load the libtorch shim %s: %s (%s)", path, why ? why : "unknown error",
                 g_torch_dir ? "is this the torch version pymodelmgr was built against? "
                               "reinstall pymodelmgr after changing torch"
                             : "torch is not installed in this environment: install the torch "
                               "pymodelmgr was built against");
        return MM_ELOAD;
    }
    mm_torch_abi_version_fn abi = (mm_torch_abi_version_fn)dlsym(h, "mm_torch_abi_version");
    if (!abi || abi() != MM_TORCH_ABI_VERSION) {
        snprintf(err, errlen, "%s is from another build (ABI %d, expected %d): rebuild", path,
                 abi ? abi() : -1, MM_TORCH_ABI_VERSION);
        dlclose(h);
        return MM_ELOAD;
    }
    g_api.default_params =
        (mm_torch_embedder_default_params_fn)dlsym(h, "mm_torch_embedder_default_params");
    g_api.load = (mm_torch_embedder_load_fn)dlsym(h, "mm_torch_embedder_load");
    g_api.info = (mm_torch_embedder_info_get_fn)dlsym(h, "mm_torch_embedder_info_get");
    g_api.embed = (mm_torch_embed_fn)dlsym(h, "mm_torch_embed");
    g_api.free = (mm_torch_embedder_free_fn)dlsym(h, "mm_torch_embedder_free");
    g_api.embed_many = (mm_torch_embed_many_fn)dlsym(h, "mm_torch_embed_many");
    if (!g_api.default_params || !g_api.load || !g_api.info || !g_api.embed || !g_api.free) {
        snprintf(err, errlen, "%s lacks the embedding entry points: rebuild", path);
        dlclose(h);
        return MM_ELOAD;
    }
    g_shim = h;
    mm_log(MM_LOG_INFO, "loaded the libtorch shim %s", path);
    return 0;
}

void *mm_native_shim_sym(const char *symbol, char *err, size_t errlen) {
    pthread_mutex_lock(&g_shim_mu);
    int rc = shim_open_locked(err, errlen);
    void *h = g_shim;
    pthread_mutex_unlock(&g_shim_mu);
    if (rc != 0)
        return NULL;
    void *p = dlsym(h, symbol);
    if (!p)
        snprintf(err, errlen, "the libtorch shim lacks %s: rebuild", symbol);
    return p;
}

/* ------------------------------------------------------------------ hub */

/* Download progress goes to the log (the pymodelmgr logger), at most every
 * two seconds and once at the end, so a long first load is never silent. */
typedef struct progress_log {
    const mm_model_spec *spec;
    const char *model;
    int64_t last_ns;
    int started;
} progress_log;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void log_progress_line(const mm_hub_progress *p, progress_log *pl) {
    if (p->model_total == 0)
        return;
    if (pl->spec->progress)
        pl->spec->progress(pl->spec->progress_ctx, p->model_done, p->model_total);
    int64_t now = now_ns();
    int done = p->model_done >= p->model_total;
    if (!pl->started) {
        pl->started = 1;
        pl->last_ns = now;
        if (done)
            return;
        mm_log(MM_LOG_INFO, "downloading %s: %d file(s), %.1f MB", pl->model, p->file_count,
               p->model_total / 1e6);
        return;
    }
    if (done || now - pl->last_ns >= 2000000000LL) {
        pl->last_ns = now;
        mm_log(MM_LOG_INFO, "downloading %s: %.1f / %.1f MB (%.0f%%), file %d of %d%s%s",
               pl->model, p->model_done / 1e6, p->model_total / 1e6,
               100.0 * (double)p->model_done / (double)p->model_total, p->file_index + 1,
               p->file_count, p->file && p->file[0] ? ": " : "", p->file ? p->file : "");
    }
}

/* The hub's callback: logs, reports to the engine, and cancels the download
 * once the engine no longer wants this load (the partial file stays for a
 * resume). */
static int log_progress(const mm_hub_progress *p, void *ud) {
    progress_log *pl = ud;
    log_progress_line(p, pl);
    return pl->spec->cancelled && pl->spec->cancelled(pl->spec->progress_ctx);
}

/* An id for what a local folder holds now: weights' size and mtime, so the
 * embedding cache forgets vectors when the folder's weights change. */
static void local_revision(const char *dir, char *out, size_t cap) {
    static const char *const names[] = {"model.safetensors", "model.safetensors.index.json",
                                        "config.json", NULL};
    unsigned long long h = 1469598103934665603ULL;
    for (const char *const *n = names; *n; n++) {
        char path[4200];
        struct stat sb;
        snprintf(path, sizeof path, "%s/%s", dir, *n);
        if (stat(path, &sb) != 0)
            continue;
        unsigned long long v[3] = {(unsigned long long)sb.st_size,
                                   (unsigned long long)sb.st_mtim.tv_sec,
                                   (unsigned long long)sb.st_mtim.tv_nsec};
        for (int i = 0; i < 3; i++) {
            h ^= v[i];
            h *= 1099511628211ULL;
        }
    }
    snprintf(out, cap, "local-%016llx", h);
}

int mm_native_resolve_model(const mm_model_spec *spec, char *dir, size_t cap, char *err,
                            size_t errlen) {
    return mm_native_resolve_model_rev(spec, dir, cap, NULL, 0, err, errlen);
}

int mm_native_resolve_model_rev(const mm_model_spec *spec, char *dir, size_t cap, char *rev,
                                size_t revcap, char *err, size_t errlen) {
    mm_hub_params *hp = mm_malloc(sizeof *hp);
    mm_hub_result *res = mm_malloc(sizeof *res);
    int rc = MM_ENOMEM;
    if (!hp || !res) {
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    mm_hub_default_params(hp);
    if (spec->cache_dir && spec->cache_dir[0])
        snprintf(hp->cache_dir, sizeof hp->cache_dir, "%s", spec->cache_dir);
    progress_log pl = {spec, spec->model_name, 0, 0};
    hp->progress = log_progress;
    hp->progress_ud = &pl;
    rc = mm_hub_snapshot(hp, spec->model_name, spec->revision, res, err, errlen);
    if (rc == 0) {
        if (strlen(res->path) >= cap) {
            snprintf(err, errlen, "model path too long");
            rc = MM_ENOBUFS;
        } else {
            memcpy(dir, res->path, strlen(res->path) + 1);
            if (rev && revcap) {
                if (res->commit[0])
                    snprintf(rev, revcap, "%s", res->commit);
                else
                    local_revision(res->path, rev, revcap);
            }
        }
    }
out:
    mm_free(hp);
    mm_free(res);
    return rc;
}

/* ------------------------------------------------------------------ kwargs */

typedef struct embed_opts {
    int normalize;      /* -1: as the model says */
    int truncate;       /* default 1 */
    size_t dimensions;  /* 0: all */
    const char *prompt; /* text (borrowed from the JSON / model), or NULL */
    const char *prompt_name;
} embed_opts;

static const char *const KNOWN_KWARGS[] = {"normalize", "prompt_name", "prompt", "truncate",
                                           "dimensions", NULL};

/* Parses the task's kwargs JSON into o (strings borrowed from *root, which
 * the caller frees).  Shape errors only; model-dependent checks (prompt
 * names, dimensions <= dim) happen in run(). */
/* "k=<v as JSON>" for messages that must quote what the caller passed. */
static const char *kv_text(const char *k, const json_t *v, char *buf, size_t cap) {
    char *s = json_dumps(v, JSON_ENCODE_ANY | JSON_COMPACT);
    snprintf(buf, cap, "%s=%.80s", k, s ? s : "?");
    free(s);
    return buf;
}

static int parse_opts(const char *json, json_t **root, embed_opts *o, char *err, size_t errlen) {
    memset(o, 0, sizeof *o);
    o->normalize = -1;
    o->truncate = 1;
    json_error_t je;
    *root = json_loads(json ? json : "{}", 0, &je);
    if (!*root || !json_is_object(*root)) {
        snprintf(err, errlen, "embedding parameters %.80s are not a JSON object (%s)",
                 json ? json : "{}", je.text);
        return MM_EINVAL;
    }
    char unknown[256] = "", kv[128];
    const char *k;
    json_t *v;
    json_object_foreach(*root, k, v) {
        int known = 0;
        for (int i = 0; KNOWN_KWARGS[i]; i++)
            if (!strcmp(k, KNOWN_KWARGS[i]))
                known = 1;
        if (!known) {
            size_t u = strlen(unknown);
            snprintf(unknown + u, sizeof unknown - u, "%s%s", u ? ", " : "", k);
            continue;
        }
        if (json_is_null(v))
            continue;
        if (!strcmp(k, "normalize") || !strcmp(k, "truncate")) {
            if (!json_is_boolean(v)) {
                snprintf(err, errlen, "%s must be True or False", kv_text(k, v, kv, sizeof kv));
                return MM_EINVAL;
            }
            if (k[0] == 'n')
                o->normalize = json_is_true(v);
            else
                o->truncate = json_is_true(v);
        } else if (!strcmp(k, "dimensions")) {
            if (!json_is_integer(v) || json_integer_value(v) <= 0) {
                snprintf(err, errlen, "%s: dimensions must be a positive integer",
                         kv_text(k, v, kv, sizeof kv));
                return MM_EINVAL;
            }
            o->dimensions = (size_t)json_integer_value(v);
        } else { /* prompt, prompt_name */
            if (!json_is_string(v)) {
                snprintf(err, errlen, "%s must be a string", kv_text(k, v, kv, sizeof kv));
                return MM_EINVAL;
            }
            if (!strcmp(k, "prompt"))
                o->prompt = json_string_value(v);
            else
                o->prompt_name = json_string_value(v);
        }
    }
    if (unknown[0]) {
        snprintf(err, errlen,
                 "unknown keyword argument(s) for an embedding task: %s (known: normalize, "
                 "prompt_name, prompt, truncate, dimensions, output)",
                 unknown);
        return MM_EINVAL;
    }
    if (o->prompt && o->prompt_name) {
        snprintf(err, errlen, "give prompt or prompt_name, not both");
        return MM_EINVAL;
    }
    return 0;
}

/* ------------------------------------------------------------------ state */

#define PCACHE 8

typedef struct nstate {
    /* generation models: forwarded */
    const mm_backend_vtable *gen;
    void *gen_state;
    /* embedding models (worker thread only) */
    mm_torch_embedder_t *emb;
    mm_torch_embedder_info info;
    mm__ntok *tok;
    json_t *prompts;            /* {"query": "query: "} */
    const char *default_prompt; /* borrowed from prompts, or NULL */
    char revision[64];          /* the commit loaded (or a local folder's content id) */
    size_t micro_tokens, micro_items;
    int threads; /* intra-op threads of this CPU worker (0: GPU or unknown) */
    struct {
        char *text;
        size_t n;
    } pcache[PCACHE];
    size_t pcache_next;
    char dir[MM_HUB_PATH_MAX];
} nstate;

static size_t opt_size(const char *options_json, const char *key, size_t def) {
    json_t *o = json_loads(options_json ? options_json : "{}", 0, NULL);
    size_t v = def;
    json_t *x = o ? json_object_get(o, key) : NULL;
    if (json_is_integer(x) && json_integer_value(x) > 0)
        v = (size_t)json_integer_value(x);
    json_decref(o);
    return v;
}

static void opt_str(const char *options_json, const char *key, char *out, size_t cap) {
    json_t *o = json_loads(options_json ? options_json : "{}", 0, NULL);
    json_t *x = o ? json_object_get(o, key) : NULL;
    if (json_is_string(x))
        snprintf(out, cap, "%s", json_string_value(x));
    json_decref(o);
}

/* Task types another vtable runs (generation; rerank and classification,
 * mm_native_heads.c). */
static int forwarded(mm_task_type t) {
    return t == MM_TASK_TEXT_GENERATION || t == MM_TASK_RERANK || t == MM_TASK_CLASSIFICATION;
}

/* That vtable, or NULL when the generation part is not linked in. */
static const mm_backend_vtable *gen_backend_for(mm_task_type t) {
    return t == MM_TASK_TEXT_GENERATION ? &mm_native_gen_backend : &mm_native_heads_backend;
}

static int native_accepts(const char *model_name) {
    return model_name && model_name[0] && strncmp(model_name, "synthetic/", 10) != 0;
}

static int native_check(const mm_model_spec *spec, const mm_task_t *task, char *err,
                        size_t errlen) {
    if (forwarded(spec->task_type)) {
        const mm_backend_vtable *g = gen_backend_for(spec->task_type);
        if (!g) {
            snprintf(err, errlen, "native text generation is not built into this pymodelmgr");
            return MM_EUNSUPPORTED;
        }
        return g->check ? g->check(spec, task, err, errlen) : 0;
    }
    if (mm_task_get_kind(task) != MM_KIND_RUN)
        return 0;
    json_t *root = NULL;
    embed_opts o;
    int rc = parse_opts(mm_task_params_json(task), &root, &o, err, errlen);
    json_decref(root);
    return rc;
}

static void unload_embed(nstate *s) {
    if (s->emb)
        g_api.free(s->emb);
    mm__ntok_free(s->tok);
    json_decref(s->prompts);
    for (size_t i = 0; i < PCACHE; i++)
        mm_free(s->pcache[i].text);
    mm_free(s);
}

static int native_load(const mm_model_spec *spec, const mm_device *dev, void **state,
                       char *err, size_t errlen) {
    *state = NULL;
    nstate *s = mm_calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return MM_ENOMEM;
    }
    if (forwarded(spec->task_type)) {
        s->gen = gen_backend_for(spec->task_type);
        if (!s->gen) {
            mm_free(s);
            snprintf(err, errlen, "native text generation is not built into this pymodelmgr");
            return MM_EUNSUPPORTED;
        }
        int rc = s->gen->load(spec, dev, &s->gen_state, err, errlen);
        if (rc != 0) {
            mm_free(s);
            return rc;
        }
        *state = s;
        return 0;
    }

    int rc = mm_native_resolve_model_rev(spec, s->dir, sizeof s->dir, s->revision,
                                         sizeof s->revision, err, errlen);
    if (rc != 0)
        goto fail;
    pthread_mutex_lock(&g_shim_mu);
    rc = shim_open_locked(err, errlen);
    pthread_mutex_unlock(&g_shim_mu);
    if (rc != 0)
        goto fail;
    rc = mm__ntok_load(s->dir, &s->tok, err, errlen);
    if (rc != 0)
        goto fail;
    if (spec->cancelled && spec->cancelled(spec->progress_ctx)) {
        /* Nobody waits for this model any more: skip reading the weights. */
        snprintf(err, errlen, "load of \"%.200s\" was cancelled", spec->model_name);
        rc = MM_ECANCELLED;
        goto fail;
    }

    mm_torch_embedder_params p;
    g_api.default_params(&p);
    char dtype[32] = "auto";
    opt_str(spec->options_json, "dtype", dtype, sizeof dtype);
    opt_str(spec->model_options_json, "dtype", dtype, sizeof dtype); /* the task's dtype= */
    p.device = dev->is_gpu ? dev->name : "cpu";
    p.dtype = dtype;
    p.num_threads = dev->is_gpu ? 0 : (dev->cpu_threads > 0 ? dev->cpu_threads : 0);
    rc = g_api.load(s->dir, &p, &s->emb, err, errlen);
    if (rc != 0)
        goto fail;
    g_api.info(s->emb, &s->info);
    s->prompts = json_loads(s->info.prompts_json ? s->info.prompts_json : "{}", 0, NULL);
    if (s->prompts && s->info.default_prompt_name && s->info.default_prompt_name[0]) {
        json_t *d = json_object_get(s->prompts, s->info.default_prompt_name);
        if (json_is_string(d))
            s->default_prompt = json_string_value(d);
    }
    s->micro_tokens = opt_size(spec->options_json, "micro_batch_tokens", dev->is_gpu ? 16384 : 2048);
    s->micro_items = opt_size(spec->options_json, "micro_batch_items", dev->is_gpu ? 512 : 32);
    s->threads = dev->is_gpu ? 0 : dev->cpu_threads;
    mm_log(MM_LOG_INFO, "native: %s loaded on %s (%s, %s pooling, dim %zu, max_seq_length %zu)",
           spec->model_name, s->info.device, s->info.arch, s->info.pooling, s->info.dim,
           s->info.max_seq_length);
    *state = s;
    return 0;
fail:
    unload_embed(s);
    return rc;
}

static void native_unload(void *state) {
    nstate *s = state;
    if (!s)
        return;
    if (s->gen) {
        s->gen->unload(s->gen_state);
        mm_free(s);
        return;
    }
    unload_embed(s);
}

static int native_info(void *state, mm_backend_info *info) {
    nstate *s = state;
    if (s->gen)
        return s->gen->info ? s->gen->info(s->gen_state, info) : 0;
    info->memory_bytes = s->info.memory_bytes;
    info->embedding_dim = s->info.dim;
    snprintf(info->revision, sizeof info->revision, "%s", s->revision);
    return 0;
}

static size_t native_cost(void *state, const mm_task_t *t) {
    nstate *s = state;
    if (s && s->gen && s->gen->cost)
        return s->gen->cost(s->gen_state, t);
    size_t cap = s && s->info.max_seq_length ? s->info.max_seq_length : 512;
    size_t n = mm_task_n_items(t), c = 0;
    for (size_t i = 0; i < n; i++) {
        size_t len = 0;
        mm_task_item(t, i, &len);
        size_t est = len / 4 + 2;
        c += est < cap ? est : cap;
    }
    return c;
}

/* ------------------------------------------------------------------ run */

typedef struct row {
    uint32_t task, item;
    size_t off, len; /* into the token arrays */
    int64_t plen;    /* prompt tokens at the start */
} row;

typedef struct vec64 {
    int64_t *p;
    size_t n, cap;
} vec64;

static int vec_reserve(vec64 *v, size_t extra) {
    if (v->n + extra <= v->cap)
        return 0;
    size_t cap = v->cap ? v->cap * 2 : 4096;
    while (cap < v->n + extra)
        cap *= 2;
    int64_t *p = mm_realloc(v->p, cap * sizeof *p);
    if (!p)
        return MM_ENOMEM;
    v->p = p;
    v->cap = cap;
    return 0;
}

static int cmp_row(const void *a, const void *b) {
    const row *x = a, *y = b;
    if (x->len != y->len)
        return x->len < y->len ? -1 : 1;
    if (x->task != y->task)
        return x->task < y->task ? -1 : 1;
    return x->item < y->item ? -1 : (x->item > y->item);
}

static int prompt_tokens(nstate *s, const char *prompt, size_t *out, char *err, size_t errlen) {
    for (size_t i = 0; i < PCACHE; i++) {
        if (s->pcache[i].text && !strcmp(s->pcache[i].text, prompt)) {
            *out = s->pcache[i].n;
            return 0;
        }
    }
    int rc = mm__ntok_prompt_len(s->tok, prompt, out, err, errlen);
    if (rc != 0)
        return rc;
    char *copy = mm_strdup(prompt);
    if (copy) {
        size_t k = s->pcache_next++ % PCACHE;
        mm_free(s->pcache[k].text);
        s->pcache[k].text = copy;
        s->pcache[k].n = *out;
    }
    return 0;
}

/* Per-task settings resolved against the model. */
typedef struct task_plan {
    int ok;
    int normalize;
    size_t out_dim;
    float *out;
} task_plan;

static void post_process(const float *v, size_t dim, const task_plan *tp, float *dst) {
    size_t d = tp->out_dim;
    if (!tp->normalize) {
        memcpy(dst, v, d * sizeof(float));
        return;
    }
    double ss = 0;
    for (size_t j = 0; j < d; j++)
        ss += (double)v[j] * v[j];
    double nrm = sqrt(ss);
    if (nrm < 1e-12)
        nrm = 1e-12;
    for (size_t j = 0; j < d; j++)
        dst[j] = (float)(v[j] / nrm);
    (void)dim;
}

/* sentence_bert_config.json do_lower_case: sentence-transformers puts a
 * Lowercase normalizer in front of the tokenizer's own, i.e. it lowercases
 * the whole text, code point by code point.  Writes the lowercased copy of
 * text[0..len) into *buf (grown as needed); invalid UTF-8 is copied as is
 * (the tokenizer rejects it with a message).  0 or MM_ENOMEM. */
static int lowercase_utf8(const char *text, size_t len, char **buf, size_t *cap, size_t *out_len) {
    if (len * 4 + 1 > *cap) {
        size_t ncap = len * 4 + 1;
        char *nb = mm_realloc(*buf, ncap);
        if (!nb)
            return MM_ENOMEM;
        *buf = nb;
        *cap = ncap;
    }
    const utf8proc_uint8_t *p = (const utf8proc_uint8_t *)text;
    size_t i = 0, o = 0;
    while (i < len) {
        utf8proc_int32_t cp;
        utf8proc_ssize_t k = utf8proc_iterate(p + i, (utf8proc_ssize_t)(len - i), &cp);
        if (k <= 0) {
            (*buf)[o++] = text[i++];
            continue;
        }
        o += (size_t)utf8proc_encode_char(utf8proc_tolower(cp), (utf8proc_uint8_t *)*buf + o);
        i += (size_t)k;
    }
    (*buf)[o] = '\0';
    *out_len = o;
    return 0;
}

typedef struct embed_done_ctx {
    mm_task_t **tasks;
    task_plan *plans;
    const row *rows;
    const float *bout;
    size_t dim;
} embed_done_ctx;

/* Rows r0 .. r1 - 1 came back from one forward call: post-process their
 * vectors into their tasks' results, or fail those tasks. */
static void embed_done(void *ctx, size_t r0, size_t r1, int rc, const char *err) {
    embed_done_ctx *c = ctx;
    for (size_t r = r0; r < r1; r++) {
        const row *rw = &c->rows[r];
        task_plan *tp = &c->plans[rw->task];
        if (!tp->ok)
            continue;
        if (rc != 0) {
            mm_task_fail(c->tasks[rw->task], rc, "%s", err);
            tp->ok = 0;
            continue;
        }
        post_process(c->bout + r * c->dim, c->dim, tp, tp->out + (size_t)rw->item * tp->out_dim);
    }
}

static void run_embed(nstate *s, mm_task_t **tasks, size_t n) {
    const size_t maxlen = s->info.max_seq_length;
    const size_t dim = s->info.dim;
    char err[512];
    task_plan *plans = mm_calloc(n ? n : 1, sizeof *plans);
    vec64 ids = {0}, types = {0};
    row *rows = NULL;
    size_t nrows = 0, rows_cap = 0;
    char *textbuf = NULL, *lowbuf = NULL;
    size_t textcap = 0, lowcap = 0;
    int64_t *bplen = NULL;
    float *bout = NULL;
    mm__nbatches mb = {0};
    if (!plans)
        goto oom;

    /* 1. Resolve options, tokenize every item. */
    for (size_t ti = 0; ti < n; ti++) {
        mm_task_t *t = tasks[ti];
        if (mm_task_cancelled(t))
            continue; /* its caller is gone: no rows; the engine completes it */
        json_t *root = NULL;
        embed_opts o;
        err[0] = '\0';
        int rc = parse_opts(mm_task_params_json(t), &root, &o, err, sizeof err);
        if (rc != 0) {
            mm_task_fail(t, rc, "%s", err);
            json_decref(root);
            continue;
        }
        const char *prompt = o.prompt;
        if (o.prompt_name) {
            json_t *p = s->prompts ? json_object_get(s->prompts, o.prompt_name) : NULL;
            if (!json_is_string(p)) {
                char names[256] = "";
                const char *k;
                json_t *v;
                if (s->prompts)
                    json_object_foreach(s->prompts, k, v) {
                        size_t u = strlen(names);
                        snprintf(names + u, sizeof names - u, "%s%s", u ? ", " : "", k);
                    }
                mm_task_fail(t, MM_EINVAL, "prompt_name %s is not one of this model's prompts (%s)",
                             o.prompt_name, names[0] ? names : "it has none");
                json_decref(root);
                continue;
            }
            prompt = json_string_value(p);
        } else if (!prompt) {
            prompt = s->default_prompt;
        }
        if (o.dimensions > dim) {
            mm_task_fail(t, MM_EINVAL, "dimensions=%zu exceeds the model's %zu", o.dimensions, dim);
            json_decref(root);
            continue;
        }
        size_t plen_tok = 0, plen_bytes = prompt ? strlen(prompt) : 0;
        if (plen_bytes && (rc = prompt_tokens(s, prompt, &plen_tok, err, sizeof err)) != 0) {
            mm_task_fail(t, rc, "%s", err);
            json_decref(root);
            continue;
        }
        task_plan *tp = &plans[ti];
        tp->normalize = o.normalize < 0 ? s->info.normalize : o.normalize;
        tp->out_dim = o.dimensions ? o.dimensions : dim;
        tp->out = mm_task_result_embeddings(t, tp->out_dim);
        if (!tp->out) {
            mm_task_fail(t, MM_ENOMEM, "out of memory");
            json_decref(root);
            continue;
        }
        size_t items = mm_task_n_items(t);
        int failed = 0;
        for (size_t i = 0; i < items && !failed; i++) {
            size_t len = 0;
            const char *text = mm_task_item(t, i, &len);
            if (plen_bytes) {
                if (plen_bytes + len + 1 > textcap) {
                    size_t cap = (plen_bytes + len + 1) * 2;
                    char *nb = mm_realloc(textbuf, cap);
                    if (!nb) {
                        mm_task_fail(t, MM_ENOMEM, "out of memory");
                        failed = 1;
                        break;
                    }
                    textbuf = nb;
                    textcap = cap;
                }
                memcpy(textbuf, prompt, plen_bytes);
                memcpy(textbuf + plen_bytes, text, len);
                textbuf[plen_bytes + len] = '\0';
                text = textbuf;
                len += plen_bytes;
            }
            if (s->info.do_lower_case) {
                size_t lo_len = 0;
                if (lowercase_utf8(text, len, &lowbuf, &lowcap, &lo_len) != 0) {
                    mm_task_fail(t, MM_ENOMEM, "out of memory");
                    failed = 1;
                    break;
                }
                text = lowbuf;
                len = lo_len;
            }
            if (vec_reserve(&ids, maxlen) || vec_reserve(&types, maxlen)) {
                mm_task_fail(t, MM_ENOMEM, "out of memory");
                failed = 1;
                break;
            }
            size_t got = 0;
            rc = mm__ntok_encode(s->tok, text, len, o.truncate ? maxlen : 0, ids.p + ids.n,
                                 types.p + types.n, maxlen, &got, err, sizeof err);
            if (rc != 0) {
                mm_task_fail(t, rc, "item %zu: %s", i, err);
                failed = 1;
                break;
            }
            if (got > maxlen) {
                size_t full = got;
                mm_task_fail(t, MM_EINVAL,
                             "item %zu is %zu tokens, longer than the model's max_seq_length %zu "
                             "(truncate=False)",
                             i, full, maxlen);
                failed = 1;
                break;
            }
            row *nr = mm__ngrow(rows, &rows_cap, nrows + 1, sizeof *rows);
            if (!nr) {
                mm_task_fail(t, MM_ENOMEM, "out of memory");
                failed = 1;
                break;
            }
            rows = nr;
            mm_task_add_item_tokens(t, i, got);
            rows[nrows++] = (row){(uint32_t)ti, (uint32_t)i, ids.n, got,
                                  (int64_t)(plen_tok < got ? plen_tok : got)};
            ids.n += got;
            types.n += got;
        }
        if (!failed)
            tp->ok = 1;
        else /* drop this task's rows */
            while (nrows && rows[nrows - 1].task == ti)
                nrows--;
        json_decref(root);
    }

    /* 2. Sort by length; micro-batches under the padded-token budget. */
    if (nrows)
        qsort(rows, nrows, sizeof *rows, cmp_row);
    /* On a CPU worker with T intra-op threads the shim runs micro-batches
     * concurrently, one thread each, so a batch is cut into at least T of
     * them when it has the rows. */
    const int many = g_api.embed_many && s->threads > 1;
    bplen = mm_malloc((nrows ? nrows : 1) * sizeof *bplen);
    bout = mm_malloc((nrows ? nrows : 1) * dim * sizeof *bout);
    const mm__nrows rs = {rows, nrows, sizeof *rows, offsetof(row, off), offsetof(row, len)};
    if (!bplen || !bout ||
        mm__nbatches_build(&mb, &rs, ids.p, types.p, s->info.pad_token_id, s->info.uses_type_ids,
                           s->micro_items, s->micro_tokens, many ? (size_t)s->threads : 1, bout,
                           dim) != 0)
        goto oom;
    for (size_t r = 0; r < nrows; r++)
        bplen[r] = rows[r].plen;
    if (!s->info.include_prompt)
        for (size_t k = 0; k < mb.n; k++)
            mb.mbs[k].prompt_lens = bplen + mb.first[k];
    /* 3. Forwards; a failed call fails the tasks of the rows it covered. */
    embed_done_ctx dc = {tasks, plans, rows, bout, dim};
    mm__nbatches_run(&mb, s->emb, g_api.embed, g_api.embed_many, many, embed_done, &dc);
    goto done;
oom:
    for (size_t ti = 0; ti < n; ti++)
        if (!plans || plans[ti].ok)
            mm_task_fail(tasks[ti], MM_ENOMEM, "out of memory");
done:
    mm_free(plans);
    mm_free(ids.p);
    mm_free(types.p);
    mm_free(rows);
    mm_free(textbuf);
    mm_free(lowbuf);
    mm_free(bplen);
    mm_free(bout);
    mm__nbatches_free(&mb);
}

static void native_run(void *state, mm_task_t **tasks, size_t n) {
    nstate *s = state;
    if (s->gen) {
        s->gen->run(s->gen_state, tasks, n);
        return;
    }
    run_embed(s, tasks, n);
}

const mm_backend_vtable mm_native_backend = {
    .name = "native",
    .accepts = native_accepts,
    .check = native_check,
    .load = native_load,
    .run = native_run,
    .unload = native_unload,
    .info = native_info,
    .cost = native_cost,
    .embed_cacheable = 1,
    .estimate = mm_native_estimate,
};
