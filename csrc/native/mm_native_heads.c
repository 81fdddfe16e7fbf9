/* mm_native_heads.c: rerank and classification for the native backend
 * (issue 16): BERT / RoBERTa / XLM-RoBERTa / DistilBERT
 * ...ForSequenceClassification models through the libtorch shim.
 *
 * mm_native.c forwards MM_TASK_RERANK and MM_TASK_CLASSIFICATION models here.
 * load() resolves the model through the hub like every native model, reads
 * its tokenizer with the C tokenizer and loads the encoder with its
 * classification head (mm_torch_classifier_load: the "vectors" are the
 * head's logits).  What the activation is comes from config.json:
 *
 *   rerank          sentence-transformers CrossEncoder's default: the
 *                   config's sentence_transformers.activation_fn when it
 *                   names Sigmoid or Identity, else Sigmoid for one label;
 *                   a model with more labels is not a reranker (UNSUPPORTED);
 *   classification  transformers' text-classification pipeline: the task's
 *                   function_to_apply, else sigmoid for one label or a
 *                   multi-label problem_type, softmax otherwise; labels from
 *                   id2label, best first, the first top_k (default 1).
 *
 * run() encodes every (query, document) pair (longest-first truncation at
 * the model's limit, as the tokenizer of a CrossEncoder does) or text, sorts
 * the rows by length, runs micro-batches of at most 2,048 padded tokens / 32
 * rows (GPU: 16,384 / 512) and writes each task's ranked results or labels
 * as result fields.  mm_native_check_fields_task validates kwargs and inputs
 * on the submitting thread, for this backend and the transformers fallback.
 */
#include <jansson.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mm_alloc.h"
#include "mm_engine.h"
#include "mm_err.h"
#include "mm_hub.h"
#include "mm_log.h"
#include "mm_native.h"
#include "mm_native_batch.h"
#include "mm_native_tok.h"
#include "../torch/mm_torch.h"

typedef enum { F_NONE, F_SIGMOID, F_SOFTMAX } fn_t;

typedef struct hstate {
    mm_torch_embedder_t *h;
    mm_torch_embedder_info info;
    mm_torch_embedder_free_fn free_fn;
    mm_torch_embed_fn embed;
    mm_torch_embed_many_fn embed_many; /* optional (older shims lack it) */
    int threads;                       /* intra-op threads of this CPU worker (0: GPU) */
    mm__ntok *tok;
    mm_task_type type;
    size_t labels;
    char **label_names; /* labels entries */
    fn_t default_fn;
    size_t micro_tokens, micro_items;
    char revision[64];
} hstate;

/* ------------------------------------------------------------------ checks */

static int check_top_k(json_t *v, char *err, size_t errlen) {
    if (json_is_null(v))
        return 0;
    if (!json_is_integer(v) || json_integer_value(v) < 1) {
        snprintf(err, errlen, "top_k must be a positive integer or None");
        return MM_EINVAL;
    }
    return 0;
}

int mm_native_check_fields_task(const mm_model_spec *spec, const mm_task_t *task, char *err,
                                size_t errlen) {
    const int rerank = spec->task_type == MM_TASK_RERANK;
    json_t *p = json_loads(mm_task_params_json(task), 0, NULL);
    int rc = 0;
    if (!json_is_object(p)) {
        snprintf(err, errlen, "task parameters are not a JSON object");
        rc = MM_EINVAL;
        goto out;
    }
    const char *k;
    json_t *v;
    json_object_foreach(p, k, v) {
        if (!strcmp(k, "top_k")) {
            rc = check_top_k(v, err, errlen);
        } else if (rerank && !strcmp(k, "return_documents")) {
            if (!json_is_boolean(v)) {
                snprintf(err, errlen, "return_documents must be True or False");
                rc = MM_EINVAL;
            }
        } else if (!rerank && !strcmp(k, "function_to_apply")) {
            const char *f = json_string_value(v);
            if (!json_is_null(v) && (!f || (strcmp(f, "none") && strcmp(f, "sigmoid") &&
                                            strcmp(f, "softmax")))) {
                snprintf(err, errlen,
                         "function_to_apply must be \"none\", \"sigmoid\" or \"softmax\"");
                rc = MM_EINVAL;
            }
        } else if (!strcmp(k, "truncate")) {
            if (!json_is_boolean(v)) {
                snprintf(err, errlen, "truncate must be True or False");
                rc = MM_EINVAL;
            }
        } else {
            snprintf(err, errlen, "unknown keyword argument for a %s task: %.80s (known: %s)",
                     rerank ? "rerank" : "classification", k,
                     rerank ? "top_k, return_documents, truncate"
                            : "top_k, function_to_apply, truncate");
            rc = MM_EINVAL;
        }
        if (rc != 0)
            goto out;
    }
    if (!rerank || mm_task_get_kind(task) != MM_KIND_RUN)
        goto out;
    /* Rerank items are {"query": str, "documents": [str, ...]} JSON texts. */
    for (size_t i = 0, n = mm_task_n_items(task); i < n; i++) {
        size_t len = 0;
        const char *s = mm_task_item(task, i, &len);
        json_t *q = json_loadb(s, len, 0, NULL);
        json_t *query = json_is_object(q) ? json_object_get(q, "query") : NULL;
        json_t *docs = json_is_object(q) ? json_object_get(q, "documents") : NULL;
        if (!json_is_string(query) || !json_is_array(docs) || json_array_size(docs) == 0) {
            snprintf(err, errlen,
                     "rerank input %zu must be {\"query\": str, \"documents\": [str, ...]} with "
                     "at least one document",
                     i);
            rc = MM_EINVAL;
        } else {
            size_t j;
            json_t *d;
            json_array_foreach(docs, j, d) {
                if (!json_is_string(d)) {
                    snprintf(err, errlen, "rerank input %zu: documents[%zu] is not a string", i,
                             j);
                    rc = MM_EINVAL;
                    break;
                }
            }
        }
        json_decref(q);
        if (rc != 0)
            break;
    }
out:
    json_decref(p);
    return rc;
}

static int heads_check(const mm_model_spec *spec, const mm_task_t *task, char *err,
                       size_t errlen) {
    return mm_native_check_fields_task(spec, task, err, errlen);
}

/* ------------------------------------------------------------------ load */

static void heads_unload(void *state) {
    hstate *s = state;
    if (!s)
        return;
    if (s->h)
        s->free_fn(s->h);
    mm__ntok_free(s->tok);
    for (size_t i = 0; s->label_names && i < s->labels; i++)
        mm_free(s->label_names[i]);
    mm_free(s->label_names);
    mm_free(s);
}

/* Activation and labels from config.json (s->labels already set). */
static int read_config(hstate *s, const char *dir, char *err, size_t errlen) {
    char path[MM_HUB_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/config.json", dir);
    json_t *c = json_load_file(path, 0, NULL);
    int rc = 0;
    s->label_names = mm_calloc(s->labels, sizeof *s->label_names);
    if (!s->label_names) {
        snprintf(err, errlen, "out of memory");
        json_decref(c);
        return MM_ENOMEM;
    }
    json_t *id2label = json_object_get(c, "id2label");
    for (size_t i = 0; i < s->labels; i++) {
        char key[32], def[40];
        snprintf(key, sizeof key, "%zu", i);
        snprintf(def, sizeof def, "LABEL_%zu", i);
        json_t *l = json_object_get(id2label, key);
        s->label_names[i] = mm_strdup(json_is_string(l) ? json_string_value(l) : def);
        if (!s->label_names[i])
            rc = MM_ENOMEM;
    }
    if (s->type == MM_TASK_RERANK) {
        json_t *st = json_object_get(c, "sentence_transformers");
        const char *afn = json_string_value(json_object_get(st, "activation_fn"));
        if (s->labels != 1) {
            snprintf(err, errlen,
                     "%s has %zu output labels: rerank needs a cross-encoder with one score (use "
                     "task_type=\"classification\")",
                     dir, s->labels);
            rc = MM_EUNSUPPORTED;
        } else if (!afn || !strcmp(afn, "torch.nn.modules.activation.Sigmoid")) {
            s->default_fn = F_SIGMOID;
        } else if (!strcmp(afn, "torch.nn.modules.linear.Identity")) {
            s->default_fn = F_NONE;
        } else {
            snprintf(err, errlen, "the native backend does not run the activation %s", afn);
            rc = MM_EUNSUPPORTED;
        }
    } else {
        const char *pt = json_string_value(json_object_get(c, "problem_type"));
        if (s->labels == 1 || (pt && !strcmp(pt, "multi_label_classification")))
            s->default_fn = F_SIGMOID;
        else if (pt && !strcmp(pt, "regression"))
            s->default_fn = F_NONE;
        else
            s->default_fn = F_SOFTMAX;
    }
    json_decref(c);
    if (rc == MM_ENOMEM)
        snprintf(err, errlen, "out of memory");
    return rc;
}

static int heads_load(const mm_model_spec *spec, const mm_device *dev, void **state, char *err,
                      size_t errlen) {
    *state = NULL;
    hstate *s = mm_calloc(1, sizeof *s);
    char *dir = mm_malloc(MM_HUB_PATH_MAX);
    int rc = MM_ENOMEM;
    if (!s || !dir) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    s->type = spec->task_type;
    rc = mm_native_resolve_model_rev(spec, dir, MM_HUB_PATH_MAX, s->revision, sizeof s->revision,
                                     err, errlen);
    if (rc != 0)
        goto fail;
    mm_torch_embedder_load_fn load =
        (mm_torch_embedder_load_fn)mm_native_shim_sym("mm_torch_classifier_load", err, errlen);
    mm_torch_embedder_default_params_fn defaults =
        load ? (mm_torch_embedder_default_params_fn)mm_native_shim_sym(
                   "mm_torch_embedder_default_params", err, errlen)
             : NULL;
    mm_torch_embedder_info_get_fn info =
        defaults ? (mm_torch_embedder_info_get_fn)mm_native_shim_sym("mm_torch_embedder_info_get",
                                                                      err, errlen)
                 : NULL;
    s->embed = info ? (mm_torch_embed_fn)mm_native_shim_sym("mm_torch_embed", err, errlen) : NULL;
    s->free_fn = s->embed ? (mm_torch_embedder_free_fn)mm_native_shim_sym(
                                "mm_torch_embedder_free", err, errlen)
                          : NULL;
    if (!s->free_fn) {
        rc = MM_EARCH; /* an older shim: no native heads (the fallback runs the model) */
        goto fail;
    }
    char ignored[8];
    s->embed_many = (mm_torch_embed_many_fn)mm_native_shim_sym("mm_torch_embed_many", ignored,
                                                               sizeof ignored);
    s->threads = dev->is_gpu ? 0 : dev->cpu_threads;
    rc = mm__ntok_load(dir, &s->tok, err, errlen);
    if (rc != 0)
        goto fail;
    mm_torch_embedder_params p;
    defaults(&p);
    p.device = dev->is_gpu ? dev->name : "cpu";
    p.dtype = "float32"; /* scores within 1e-5 of sentence-transformers' fp32 */
    p.num_threads = dev->is_gpu ? 0 : (dev->cpu_threads > 0 ? dev->cpu_threads : 0);
    rc = load(dir, &p, &s->h, err, errlen);
    if (rc != 0)
        goto fail;
    info(s->h, &s->info);
    s->labels = s->info.dim;
    rc = read_config(s, dir, err, errlen);
    if (rc != 0)
        goto fail;
    s->micro_tokens = dev->is_gpu ? 16384 : 2048;
    s->micro_items = dev->is_gpu ? 512 : 32;
    mm_log(MM_LOG_INFO, "native: %s loaded on %s for %s (%s, %zu label(s), max_seq_length %zu)",
           spec->model_name, s->info.device, mm_task_type_name(spec->task_type),
           s->info.arch, s->labels, s->info.max_seq_length);
    mm_free(dir);
    *state = s;
    return 0;
fail:
    mm_free(dir);
    heads_unload(s);
    return rc;
}

static int heads_info(void *state, mm_backend_info *info) {
    hstate *s = state;
    info->memory_bytes = s->info.memory_bytes;
    snprintf(info->revision, sizeof info->revision, "%s", s->revision);
    return 0;
}

/* ------------------------------------------------------------------ run */

typedef struct hrow {
    uint32_t task, item, doc;
    size_t pos;      /* its place among its task's rows (items, then documents, in order) */
    size_t off, len; /* into the token arrays */
} hrow;

static int cmp_hrow(const void *a, const void *b) {
    const hrow *x = a, *y = b;
    if (x->len != y->len)
        return x->len < y->len ? -1 : 1;
    if (x->task != y->task)
        return x->task < y->task ? -1 : 1;
    if (x->item != y->item)
        return x->item < y->item ? -1 : 1;
    return x->doc < y->doc ? -1 : (x->doc > y->doc);
}

typedef struct tplan {
    int ok;
    json_t *params;  /* owned */
    json_t **queries; /* rerank: parsed items (owned) */
    size_t first_row; /* its rows' logits start here, in submission order */
    size_t n_rows;
} tplan;

typedef struct ranked {
    size_t index;
    double score;
} ranked;

static int cmp_ranked(const void *a, const void *b) {
    const ranked *x = a, *y = b;
    if (x->score != y->score)
        return x->score > y->score ? -1 : 1;
    return x->index < y->index ? -1 : (x->index > y->index);
}

static double sigmoid(double x) { return 1.0 / (1.0 + exp(-x)); }

/* Scores of one row's logits under fn, into out (labels doubles). */
static void activate(const float *logits, size_t n, fn_t fn, double *out) {
    if (fn == F_SOFTMAX) {
        double mx = logits[0], sum = 0;
        for (size_t i = 1; i < n; i++)
            mx = logits[i] > mx ? logits[i] : mx;
        for (size_t i = 0; i < n; i++)
            sum += (out[i] = exp((double)logits[i] - mx));
        for (size_t i = 0; i < n; i++)
            out[i] = (float)(out[i] / sum);
        return;
    }
    for (size_t i = 0; i < n; i++)
        out[i] = (float)(fn == F_SIGMOID ? sigmoid(logits[i]) : logits[i]);
}

static size_t top_k_of(const json_t *params, size_t n, size_t def) {
    json_t *k = json_object_get(params, "top_k");
    if (!k)
        return def < n ? def : n;
    if (json_is_null(k))
        return n;
    size_t v = (size_t)json_integer_value(k);
    return v < n ? v : n;
}

/* Writes one task's result fields from its rows' logits (row-major, labels wide). */
static void write_result(hstate *s, mm_task_t *t, tplan *tp, const float *logits) {
    json_t *out = json_array();
    double *sc = mm_malloc((s->labels + 1) * sizeof *sc);
    ranked *rk = NULL;
    size_t items = mm_task_n_items(t), row = 0;
    int ok = out && sc;
    for (size_t i = 0; ok && i < items; i++) {
        size_t n = s->type == MM_TASK_RERANK
                       ? json_array_size(json_object_get(tp->queries[i], "documents"))
                       : s->labels;
        ranked *nr = mm_realloc(rk, (n ? n : 1) * sizeof *rk);
        if (!nr) {
            ok = 0;
            break;
        }
        rk = nr;
        fn_t fn = s->default_fn;
        const char *f = json_string_value(json_object_get(tp->params, "function_to_apply"));
        if (f)
            fn = !strcmp(f, "sigmoid") ? F_SIGMOID : !strcmp(f, "softmax") ? F_SOFTMAX : F_NONE;
        if (s->type == MM_TASK_RERANK) {
            for (size_t d = 0; d < n; d++, row++) {
                activate(logits + row * s->labels, 1, fn, sc);
                rk[d] = (ranked){d, sc[0]};
            }
        } else {
            activate(logits + row * s->labels, n, fn, sc);
            for (size_t l = 0; l < n; l++)
                rk[l] = (ranked){l, sc[l]};
            row++;
        }
        qsort(rk, n, sizeof *rk, cmp_ranked);
        size_t k = top_k_of(tp->params, n, s->type == MM_TASK_RERANK ? n : 1);
        int with_docs = json_is_true(json_object_get(tp->params, "return_documents"));
        json_t *lst = json_array();
        for (size_t j = 0; lst && j < k; j++) {
            json_t *o;
            if (s->type == MM_TASK_RERANK) {
                o = json_pack("{s:I,s:f}", "index", (json_int_t)rk[j].index, "score",
                              rk[j].score);
                if (o && with_docs)
                    json_object_set(o, "document",
                                    json_array_get(json_object_get(tp->queries[i], "documents"),
                                                   rk[j].index));
            } else {
                o = json_pack("{s:s,s:f}", "label", s->label_names[rk[j].index], "score",
                              rk[j].score);
            }
            if (!o || json_array_append_new(lst, o) != 0)
                ok = 0;
        }
        if (!lst || json_array_append_new(out, lst) != 0)
            ok = 0;
    }
    char *text = NULL;
    if (ok) {
        json_t *val = out;
        if (s->type == MM_TASK_RERANK && mm_task_single_input(t))
            val = json_array_get(out, 0);
        text = json_dumps(val, JSON_COMPACT | JSON_ENCODE_ANY);
    }
    if (!text ||
        mm_task_result_extra(t, s->type == MM_TASK_RERANK ? "results" : "labels", text) != 0)
        mm_task_fail(t, MM_ENOMEM, "out of memory writing the result");
    else
        mm_task_result_fields(t);
    free(text);
    json_decref(out);
    mm_free(sc);
    mm_free(rk);
}

typedef struct heads_done_ctx {
    mm_task_t **tasks;
    tplan *plans;
    const hrow *rows;
    const float *bout;
    float *logits;
    size_t L;
} heads_done_ctx;

/* Rows r0 .. r1 - 1 came back from one forward call: their logits go to
 * their task's place in submission order, or their tasks fail. */
static void heads_done(void *ctx, size_t r0, size_t r1, int rc, const char *err) {
    heads_done_ctx *c = ctx;
    for (size_t r = r0; r < r1; r++) {
        const hrow *rw = &c->rows[r];
        tplan *tp = &c->plans[rw->task];
        if (rc != 0) {
            if (tp->ok)
                mm_task_fail(c->tasks[rw->task], rc, "%s", err);
            tp->ok = 0;
            continue;
        }
        memcpy(c->logits + (tp->first_row + rw->pos) * c->L, c->bout + r * c->L,
               c->L * sizeof *c->logits);
    }
}

static void heads_run(void *state, mm_task_t **tasks, size_t n) {
    hstate *s = state;
    const size_t maxlen = s->info.max_seq_length, L = s->labels;
    char err[512];
    tplan *plans = mm_calloc(n ? n : 1, sizeof *plans);
    hrow *rows = NULL;
    size_t nrows = 0, rows_cap = 0, total_rows = 0;
    int64_t *ids = NULL, *types = NULL;
    size_t ids_n = 0, ids_cap = 0;
    float *logits = NULL, *bout = NULL;
    mm__nbatches mb = {0};
    if (!plans)
        goto oom;
    /* 1. Parse and tokenize. */
    for (size_t ti = 0; ti < n; ti++) {
        mm_task_t *t = tasks[ti];
        tplan *tp = &plans[ti];
        tp->params = json_loads(mm_task_params_json(t), 0, NULL);
        int truncate = !json_is_false(json_object_get(tp->params, "truncate"));
        size_t items = mm_task_n_items(t);
        tp->first_row = total_rows;
        if (s->type == MM_TASK_RERANK && !(tp->queries = mm_calloc(items, sizeof *tp->queries))) {
            mm_task_fail(t, MM_ENOMEM, "out of memory");
            continue;
        }
        int failed = 0;
        size_t r0 = nrows;
        for (size_t i = 0; i < items && !failed; i++) {
            size_t len = 0;
            const char *text = mm_task_item(t, i, &len);
            json_t *q = NULL, *docs = NULL;
            size_t ndocs = 1;
            if (s->type == MM_TASK_RERANK) {
                q = tp->queries[i] = json_loadb(text, len, 0, NULL);
                docs = json_object_get(q, "documents");
                ndocs = json_array_size(docs);
                text = json_string_value(json_object_get(q, "query"));
                if (!text || !ndocs) { /* check() let it through: cannot happen */
                    mm_task_fail(t, MM_EINVAL, "rerank input %zu is malformed", i);
                    failed = 1;
                    break;
                }
                len = json_string_length(json_object_get(q, "query"));
            }
            for (size_t d = 0; d < ndocs; d++) {
                const char *pair = docs ? json_string_value(json_array_get(docs, d)) : NULL;
                size_t plen = docs ? json_string_length(json_array_get(docs, d)) : 0;
                if (ids_n + maxlen > ids_cap) {
                    size_t cap = (ids_cap ? ids_cap * 2 : 8192) + maxlen;
                    int64_t *ni = mm_realloc(ids, cap * sizeof *ni);
                    int64_t *nt = ni ? mm_realloc(types, cap * sizeof *nt) : NULL;
                    if (ni)
                        ids = ni;
                    if (nt)
                        types = nt;
                    if (!ni || !nt) {
                        mm_task_fail(t, MM_ENOMEM, "out of memory");
                        failed = 1;
                        break;
                    }
                    ids_cap = cap;
                }
                size_t got = 0;
                int rc = mm__ntok_encode_pair(s->tok, text, len, pair, plen, truncate ? maxlen : 0,
                                              ids + ids_n, types + ids_n, maxlen, &got, err,
                                              sizeof err);
                if (rc == 0 && got > maxlen) {
                    rc = MM_EINVAL;
                    snprintf(err, sizeof err,
                             "%zu tokens, longer than the model's limit %zu (truncate=False)", got,
                             maxlen);
                }
                if (rc != 0) {
                    if (docs)
                        mm_task_fail(t, rc, "rerank input %zu, document %zu: %s", i, d, err);
                    else
                        mm_task_fail(t, rc, "item %zu: %s", i, err);
                    failed = 1;
                    break;
                }
                hrow *nr = mm__ngrow(rows, &rows_cap, nrows + 1, sizeof *rows);
                if (!nr) {
                    mm_task_fail(t, MM_ENOMEM, "out of memory");
                    failed = 1;
                    break;
                }
                rows = nr;
                rows[nrows] = (hrow){(uint32_t)ti, (uint32_t)i, (uint32_t)d, nrows - r0, ids_n, got};
                nrows++;
                ids_n += got;
            }
        }
        if (failed) {
            nrows = r0;
            continue;
        }
        tp->ok = 1;
        tp->n_rows = nrows - r0;
        total_rows += tp->n_rows;
    }
    /* The logits in submission order (task by task); rows run sorted by length. */
    logits = mm_malloc((total_rows ? total_rows : 1) * L * sizeof *logits);
    if (!logits)
        goto oom;
    if (nrows)
        qsort(rows, nrows, sizeof *rows, cmp_hrow);
    /* 2. Micro-batches over the length-sorted rows: at most micro_items rows and
     * micro_tokens padded tokens; on a CPU worker with T threads at least T of them,
     * run concurrently (one thread each) through embed_many when the shim has it;
     * a failed call fails its rows' tasks. */
    const int many = s->embed_many && s->threads > 1 && nrows > 1;
    bout = mm_malloc((nrows ? nrows : 1) * L * sizeof *bout);
    const mm__nrows rs = {rows, nrows, sizeof *rows, offsetof(hrow, off), offsetof(hrow, len)};
    if (!bout || mm__nbatches_build(&mb, &rs, ids, types, s->info.pad_token_id,
                                    s->info.uses_type_ids, s->micro_items, s->micro_tokens,
                                    many ? (size_t)s->threads : 1, bout, L) != 0)
        goto oom;
    heads_done_ctx dc = {tasks, plans, rows, bout, logits, L};
    mm__nbatches_run(&mb, s->h, s->embed, s->embed_many, many, heads_done, &dc);
    /* 3. Results. */
    for (size_t ti = 0; ti < n; ti++)
        if (plans[ti].ok)
            write_result(s, tasks[ti], &plans[ti], logits + plans[ti].first_row * L);
    goto done;
oom:
    for (size_t ti = 0; ti < n; ti++)
        if (!plans || plans[ti].ok)
            mm_task_fail(tasks[ti], MM_ENOMEM, "out of memory");
done:
    for (size_t ti = 0; plans && ti < n; ti++) {
        json_decref(plans[ti].params);
        for (size_t i = 0; plans[ti].queries && i < mm_task_n_items(tasks[ti]); i++)
            json_decref(plans[ti].queries[i]);
        mm_free(plans[ti].queries);
    }
    mm_free(plans);
    mm_free(rows);
    mm_free(ids);
    mm_free(types);
    mm_free(bout);
    mm__nbatches_free(&mb);
    mm_free(logits);
}

/* A rerank item holds all its documents: its bytes, uncapped, not one text's. */
static size_t heads_cost(void *state, const mm_task_t *t) {
    (void)state;
    size_t c = 0;
    for (size_t i = 0, n = mm_task_n_items(t); i < n; i++) {
        size_t len = 0;
        mm_task_item(t, i, &len);
        c += len / 4 + 2;
    }
    return c;
}

const mm_backend_vtable mm_native_heads_backend = {
    .name = "native",
    .accepts = NULL,
    .check = heads_check,
    .load = heads_load,
    .run = heads_run,
    .unload = heads_unload,
    .info = heads_info,
    .cost = heads_cost,
    .embed_cacheable = 0,
};
