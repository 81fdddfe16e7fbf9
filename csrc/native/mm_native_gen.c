/* mm_native_gen.c: text generation for the native backend (issue 6).
 *
 * Defines mm_native_gen_backend, the vtable mm_native.c forwards
 * MM_TASK_TEXT_GENERATION models to.  A worker's state holds the model
 * directory, the C tokenizer (mm_native_tok: encoding with Hugging Face
 * truncation, decoding with special tokens skipped) and a libmm_torch.so generation handle (mm_torch_gen.h, resolved through
 * mm_native_shim_sym, so libtorch is loaded only with the first real model).
 *
 * run() groups the batch's tasks by their kwargs text: tasks asking for the
 * same settings share one mm_torch_gen_run call (one encoder pass, one
 * decoder step per token for all of their inputs); each group's inputs are
 * encoded (truncated at the model's input limit unless truncate=false, which
 * makes an over-long input an INVALID_ARGUMENT error), generated, decoded
 * and written back as num_return_sequences texts per input, with each
 * text's finish_reason and token counts as result fields.  Decoder-only
 * models (Llama, Qwen2, ...) are the same path: the shim continues the
 * prompt; here a prompt must leave room for max_new_tokens in the model's
 * context (cut to fit only with truncate=true), and stop strings are
 * watched through the shim's token callback, which decodes a sequence's new
 * tokens and ends it once its text holds one (the text is cut before it).
 *
 * check() validates kwargs on the submitting thread without a model: known
 * keys only, each of the right type and range, inputs non-empty strings.
 * Limits that depend on the model (max_new_tokens against the position
 * table) are checked by the shim at run time and fail the task with its
 * message.
 */
#include "mm_native.h"
#include "mm_native_tok.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../torch/mm_torch_gen.h"
#include "mm_alloc.h"
#include "mm_err.h"
#include "mm_log.h"
#include "mm_task.h"

typedef struct gen_api {
    mm_torch_gen_default_load_params_fn default_load_params;
    mm_torch_gen_load_fn load;
    mm_torch_gen_info_get_fn info;
    mm_torch_gen_default_params_fn default_params;
    mm_torch_gen_check_params_fn check_params;
    mm_torch_gen_run_fn run;
    mm_torch_gen_run_cb_fn run_cb;
    mm_torch_gen_result_free_fn result_free;
    mm_torch_gen_free_fn free;
    /* continuous batching (ABI 3); NULL with an older shim */
    mm_torch_gen_kv_budget_fn kv_budget;
    mm_torch_gen_kv_get_fn kv_get;
    mm_torch_gen_batch_new_fn batch_new;
    mm_torch_gen_batch_add_fn batch_add;
    mm_torch_gen_batch_step_fn batch_step;
    mm_torch_gen_batch_result_fn batch_result;
    mm_torch_gen_batch_drop_fn batch_drop;
    mm_torch_gen_batch_free_fn batch_free;
} gen_api;

typedef struct gstate {
    gen_api api;          /* resolved at load; owned by this worker */
    char dir[4096];
    mm__ntok *tok;
    mm_torch_gen_t *gen;
    mm_torch_gen_info info;
    int64_t prefill_tokens; /* prompt tokens prefilled per round of a running batch */
} gstate;

static int resolve_api(gen_api *a, char *err, size_t errlen) {
#define SYM(field, name)                                   \
    do {                                                   \
        a->field = mm_native_shim_sym(name, err, errlen);  \
        if (!a->field)                                     \
            return MM_ELOAD;                               \
    } while (0)
    SYM(default_load_params, "mm_torch_gen_default_load_params");
    SYM(load, "mm_torch_gen_load");
    SYM(info, "mm_torch_gen_info_get");
    SYM(default_params, "mm_torch_gen_default_params");
    SYM(check_params, "mm_torch_gen_check_params");
    SYM(run, "mm_torch_gen_run");
    SYM(run_cb, "mm_torch_gen_run_cb");
    SYM(result_free, "mm_torch_gen_result_free");
    SYM(free, "mm_torch_gen_free");
#undef SYM
    char e2[16];
#define OPT(field, name) a->field = mm_native_shim_sym(name, e2, sizeof e2)
    OPT(kv_budget, "mm_torch_gen_kv_budget");
    OPT(kv_get, "mm_torch_gen_kv_get");
    OPT(batch_new, "mm_torch_gen_batch_new");
    OPT(batch_add, "mm_torch_gen_batch_add");
    OPT(batch_step, "mm_torch_gen_batch_step");
    OPT(batch_result, "mm_torch_gen_batch_result");
    OPT(batch_drop, "mm_torch_gen_batch_drop");
    OPT(batch_free, "mm_torch_gen_batch_free");
#undef OPT
    if (!a->kv_budget || !a->kv_get || !a->batch_new || !a->batch_add || !a->batch_step ||
        !a->batch_result || !a->batch_drop || !a->batch_free)
        a->batch_new = NULL; /* all or nothing */
    return 0;
}

/* ---- kwargs ---- */

typedef enum { K_INT, K_NUM, K_BOOL, K_EARLY, K_TOKEN } kind;

typedef struct kwdef {
    const char *name;
    kind k;
    size_t off; /* into mm_torch_gen_params */
    long long min;
} kwdef;

#define OFF(f) offsetof(mm_torch_gen_params, f)
static const kwdef KW[] = {
    {"max_length", K_INT, OFF(max_length), 1},
    {"max_new_tokens", K_INT, OFF(max_new_tokens), 1},
    {"min_length", K_INT, OFF(min_length), 0},
    {"min_new_tokens", K_INT, OFF(min_new_tokens), 0},
    {"num_beams", K_INT, OFF(num_beams), 1},
    {"length_penalty", K_NUM, OFF(length_penalty), 0},
    {"early_stopping", K_EARLY, OFF(early_stopping), 0},
    {"no_repeat_ngram_size", K_INT, OFF(no_repeat_ngram_size), 0},
    {"repetition_penalty", K_NUM, OFF(repetition_penalty), 0},
    {"forced_bos_token_id", K_TOKEN, OFF(forced_bos_token_id), 0},
    {"forced_eos_token_id", K_TOKEN, OFF(forced_eos_token_id), 0},
    {"do_sample", K_BOOL, OFF(do_sample), 0},
    {"temperature", K_NUM, OFF(temperature), 0},
    {"top_k", K_INT, OFF(top_k), 0},
    {"top_p", K_NUM, OFF(top_p), 0},
    {"seed", K_INT, OFF(seed), 0},
    {"num_return_sequences", K_INT, OFF(num_return_sequences), 1},
    {"min_p", K_NUM, OFF(min_p), 0},
};

/* Stop strings of a task: generation of a sequence ends once its text holds
 * one, and the text is cut before it. */
#define MAX_STOPS 16
#define MAX_STOP_BYTES 256
typedef struct stops {
    size_t n;
    char s[MAX_STOPS][MAX_STOP_BYTES + 1];
    size_t len[MAX_STOPS];
} stops;

/* Reads "stop" (a string or a list of strings) into *st (may be NULL). */
static int parse_stop(json_t *v, stops *st, char *bad, size_t cap) {
    stops tmp;
    memset(&tmp, 0, sizeof tmp);
    json_t *one[1] = {v};
    size_t n = json_is_array(v) ? json_array_size(v) : 1;
    if (!json_is_string(v) && !json_is_array(v)) {
        snprintf(bad, cap, "stop must be a string or a list of strings");
        return -1;
    }
    if (n > MAX_STOPS) {
        snprintf(bad, cap, "stop holds %zu strings, at most %d are allowed", n, MAX_STOPS);
        return -1;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_is_array(v) ? json_array_get(v, i) : one[0];
        if (!json_is_string(e)) {
            snprintf(bad, cap, "stop[%zu] is not a string", i);
            return -1;
        }
        size_t l = json_string_length(e);
        if (l == 0 || l > MAX_STOP_BYTES) {
            snprintf(bad, cap, "stop[%zu] must be 1 to %d bytes long (got %zu)", i, MAX_STOP_BYTES,
                     l);
            return -1;
        }
        memcpy(tmp.s[i], json_string_value(e), l);
        tmp.len[i] = l;
    }
    tmp.n = n;
    if (st)
        *st = tmp;
    return 0;
}
#undef OFF

/* Applies the kwargs in json over *p (p may be NULL: validate only) and
 * reads truncate (-1 when not given) and stop (st may be NULL).  0, or
 * MM_EINVAL naming every bad key in err. */
static int apply_kwargs(const char *json, mm_torch_gen_params *p, int *truncate, stops *st,
                        int *add_special, char *err, size_t errlen) {
    json_error_t je;
    json_t *root = json_loads(json ? json : "{}", 0, &je);
    if (!root || !json_is_object(root)) {
        json_decref(root);
        snprintf(err, errlen, "generation kwargs are not a JSON object");
        return MM_EINVAL;
    }
    char bad[400] = "";
    size_t used = 0;
#define BAD(...)                                                                           \
    do {                                                                                   \
        if (used < sizeof bad)                                                             \
            used += (size_t)snprintf(bad + used, sizeof bad - used, "%s", used ? "; " : ""); \
        if (used < sizeof bad)                                                             \
            used += (size_t)snprintf(bad + used, sizeof bad - used, __VA_ARGS__);          \
    } while (0)
    if (truncate)
        *truncate = -1;
    if (st)
        st->n = 0;
    if (add_special)
        *add_special = 1;
    const char *key;
    json_t *v;
    json_object_foreach(root, key, v) {
        if (!strcmp(key, "truncate")) {
            if (!json_is_boolean(v))
                BAD("truncate must be true or false");
            else if (truncate)
                *truncate = json_is_true(v);
            continue;
        }
        if (!strcmp(key, "stream")) { /* set by ModelManager.stream() */
            if (!json_is_boolean(v))
                BAD("stream must be true or false");
            continue;
        }
        if (!strcmp(key, "add_special_tokens")) {
            if (!json_is_boolean(v))
                BAD("add_special_tokens must be true or false");
            else if (add_special)
                *add_special = json_is_true(v);
            continue;
        }
        if (!strcmp(key, "stop")) {
            char why[160];
            if (parse_stop(v, st, why, sizeof why) != 0)
                BAD("%s", why);
            continue;
        }
        const kwdef *d = NULL;
        for (size_t i = 0; i < sizeof KW / sizeof KW[0]; i++)
            if (!strcmp(KW[i].name, key))
                d = &KW[i];
        if (!d) {
            BAD("unknown argument %s", key);
            continue;
        }
        char *f = p ? (char *)p + d->off : NULL;
        switch (d->k) {
        case K_INT:
            if (!json_is_integer(v) || json_integer_value(v) < d->min) {
                BAD("%s must be an integer >= %lld", key, d->min);
                break;
            }
            if (f)
                *(int64_t *)f = (int64_t)json_integer_value(v);
            break;
        case K_TOKEN:
            if (json_is_null(v)) {
                if (f)
                    *(int64_t *)f = -1;
            } else if (!json_is_integer(v) || json_integer_value(v) < 0) {
                BAD("%s must be a token id or null", key);
            } else if (f) {
                *(int64_t *)f = (int64_t)json_integer_value(v);
            }
            break;
        case K_NUM:
            if (!json_is_number(v)) {
                BAD("%s must be a number", key);
                break;
            }
            if (f)
                *(double *)f = json_number_value(v);
            break;
        case K_BOOL:
            if (!json_is_boolean(v)) {
                BAD("%s must be true or false", key);
                break;
            }
            if (f)
                *(int *)f = json_is_true(v);
            break;
        case K_EARLY:
            if (json_is_boolean(v)) {
                if (f)
                    *(int *)f = json_is_true(v) ? MM_GEN_EARLY_TRUE : MM_GEN_EARLY_FALSE;
            } else if (json_is_string(v) && !strcmp(json_string_value(v), "never")) {
                if (f)
                    *(int *)f = MM_GEN_EARLY_NEVER;
            } else {
                BAD("early_stopping must be true, false or \"never\"");
            }
            break;
        }
    }
    /* contradictions visible without the model */
    json_t *mx = json_object_get(root, "max_length"), *mn = json_object_get(root, "min_length");
    if (json_is_integer(mx) && json_is_integer(mn) &&
        json_integer_value(mn) > json_integer_value(mx))
        BAD("min_length (%lld) is larger than max_length (%lld)",
            (long long)json_integer_value(mn), (long long)json_integer_value(mx));
#undef BAD
    json_decref(root);
    if (used) {
        snprintf(err, errlen, "invalid generation arguments: %s", bad);
        return MM_EINVAL;
    }
    return 0;
}

/* ---- vtable ---- */

static int gen_check(const mm_model_spec *spec, const mm_task_t *task, char *err, size_t errlen) {
    (void)spec;
    if (mm_task_get_kind(task) != MM_KIND_RUN)
        return 0;
    size_t n = mm_task_n_items(task);
    if (n == 0) {
        snprintf(err, errlen, "text_generation needs at least one input text");
        return MM_EINVAL;
    }
    for (size_t i = 0; i < n; i++) {
        size_t len = 0;
        mm_task_item(task, i, &len);
        if (len == 0) {
            snprintf(err, errlen, "input %zu is an empty string", i);
            return MM_EINVAL;
        }
    }
    return apply_kwargs(mm_task_params_json(task), NULL, NULL, NULL, NULL, err, errlen);
}

static void gen_unload(void *state) {
    gstate *s = state;
    if (!s)
        return;
    if (s->gen)
        s->api.free(s->gen);
    mm__ntok_free(s->tok);
    mm_free(s);
}

static int opt_dtype(const char *options_json, char *out, size_t cap) {
    json_t *o = json_loads(options_json ? options_json : "{}", 0, NULL);
    json_t *x = o ? json_object_get(o, "dtype") : NULL;
    int found = json_is_string(x);
    if (found)
        snprintf(out, cap, "%s", json_string_value(x));
    json_decref(o);
    return found;
}

/* Whether the loaded model is decoder-only (prompts are continued). */
static int is_causal(const gstate *s);

/* The KV-cache budget of a decoder-only model, from the settings' generation
 * section (options_json {"generation": {"kv_cache_mb", "prefill_tokens_per_step"}}):
 * kv_cache_mb > 0 is the budget; 0 (auto) is the memory policy's budget
 * left on the worker's device once the model's weights are counted
 * (mm_worker_memory_free). */
static void set_kv_budget(gstate *s, const char *options_json) {
    double mb = 0;
    s->prefill_tokens = 512;
    json_t *o = json_loads(options_json ? options_json : "{}", 0, NULL);
    json_t *g = o ? json_object_get(o, "generation") : NULL;
    if (json_is_number(json_object_get(g, "kv_cache_mb")))
        mb = json_number_value(json_object_get(g, "kv_cache_mb"));
    if (json_is_integer(json_object_get(g, "prefill_tokens_per_step")))
        s->prefill_tokens = (int64_t)json_integer_value(json_object_get(g, "prefill_tokens_per_step"));
    json_decref(o);
    uint64_t bytes = mb > 0 ? (uint64_t)(mb * 1048576.0) : mm_worker_memory_free();
    s->api.kv_budget(s->gen, bytes);
    mm_torch_gen_kv kv;
    if (s->api.kv_get(s->gen, &kv) == 0) {
        mm_worker_kv_report((uint64_t)kv.used_blocks, (uint64_t)kv.total_blocks);
        mm_log(MM_LOG_INFO, "native: KV cache of %lld blocks of %lld positions (%.1f MiB, %s)",
               (long long)kv.total_blocks, (long long)kv.block_positions,
               (double)kv.total_blocks * (double)kv.block_bytes / 1048576.0,
               mb > 0 ? "generation.kv_cache_mb" : "the device's memory budget left");
    }
}

static int gen_load(const mm_model_spec *spec, const mm_device *dev, void **state, char *err,
                    size_t errlen) {
    *state = NULL;
    gstate *s = mm_calloc(1, sizeof *s);
    if (!s) {
        snprintf(err, errlen, "out of memory");
        return MM_ENOMEM;
    }
    int rc = mm_native_resolve_model(spec, s->dir, sizeof s->dir, err, errlen);
    if (rc == 0)
        rc = resolve_api(&s->api, err, errlen);
    if (rc == 0)
        rc = mm__ntok_load(s->dir, &s->tok, err, errlen);
    if (rc == 0) {
        mm_torch_gen_load_params p;
        s->api.default_load_params(&p);
        char dtype[32] = "auto";
        opt_dtype(spec->options_json, dtype, sizeof dtype);
        opt_dtype(spec->model_options_json, dtype, sizeof dtype); /* the task's dtype= */
        p.device = dev->is_gpu ? dev->name : "cpu";
        p.dtype = dtype;
        p.num_threads = dev->is_gpu ? 0 : (dev->cpu_threads > 0 ? dev->cpu_threads : 0);
        rc = s->api.load(s->dir, &p, &s->gen, err, errlen);
    }
    if (rc != 0) {
        gen_unload(s);
        return rc;
    }
    s->api.info(s->gen, &s->info);
    mm_log(MM_LOG_INFO, "native: %s loaded for text generation on %s (%s, %s)",
           spec->model_name, s->info.device, s->info.arch, s->info.dtype);
    if (is_causal(s) && s->api.batch_new)
        set_kv_budget(s, spec->options_json);
    *state = s;
    return 0;
}

static int is_causal(const gstate *s) {
    return strcmp(s->info.arch, "t5") != 0 && strcmp(s->info.arch, "bart") != 0;
}

/* The earliest byte offset in text[0 .. len) where a stop string starts, or
 * len when none does. */
static size_t stop_at(const stops *st, const char *text, size_t len) {
    size_t best = len;
    for (size_t k = 0; k < st->n; k++) {
        size_t l = st->len[k];
        for (size_t i = 0; i + l <= len && i < best; i++)
            if (text[i] == st->s[k][0] && !memcmp(text + i, st->s[k], l)) {
                best = i;
                break;
            }
    }
    return best;
}

/* One output sequence of a run: its task, its text index there, and for a
 * streamed task the text already sent (a prefix the final text keeps). */
typedef struct seq_state {
    mm_task_t *task;
    size_t out;
    int stream;
    char *sent; /* mm_malloc'd; sent_len bytes */
    size_t sent_len;
    char *prev; /* the stable text after the previous token; prev_len bytes */
    size_t prev_len;
} seq_state;

typedef struct cb_ctx {
    const gstate *s;
    const stops *st;
    seq_state *seqs; /* by the shim's sequence number */
    size_t n_seqs;
} cb_ctx;

/* Decodes ids[0 .. n) (special tokens skipped); NULL on failure. */
static char *decode_ids(const gstate *s, const int64_t *ids, size_t n, size_t *len) {
    int32_t small[256] = {0};
    int32_t *buf = n <= 256 ? small : mm_malloc(n * sizeof *buf);
    if (!buf)
        return NULL;
    for (size_t i = 0; i < n; i++)
        buf[i] = (int32_t)ids[i];
    char *text = NULL, err[64];
    if (mm__ntok_decode(s->tok, buf, n, &text, len, err, sizeof err) != 0)
        text = NULL;
    if (buf != small)
        mm_free(buf);
    return text;
}

/* Sends text[ss->sent_len .. upto) to the caller when text still starts with
 * what was sent. */
static void send_piece(seq_state *ss, const char *text, size_t upto) {
    if (upto <= ss->sent_len || memcmp(text, ss->sent, ss->sent_len) != 0)
        return;
    char *grown = mm_realloc(ss->sent, upto);
    if (!grown)
        return;
    memcpy(grown + ss->sent_len, text + ss->sent_len, upto - ss->sent_len);
    if (mm_task_stream_text(ss->task, ss->out, text + ss->sent_len, upto - ss->sent_len) != 0) {
        mm_free(grown);
        ss->sent = NULL;
        ss->sent_len = 0;
        ss->stream = 0; /* out of memory: the caller gets the whole text at the end */
        return;
    }
    ss->sent = grown;
    ss->sent_len = upto;
}

/* How much of a partial text may be streamed now: no text that a later
 * token can still change.  Held back: trailing U+FFFD (bytes of a character
 * still arriving), trailing whitespace (the decoder may drop a space before
 * punctuation), any ending that begins a stop string, and never half of a
 * UTF-8 character. */
static size_t stable_len(const stops *st, const char *text, size_t tl) {
    size_t keep = tl;
    for (;;) {
        if (keep >= 3 && (unsigned char)text[keep - 3] == 0xEF &&
            (unsigned char)text[keep - 2] == 0xBF && (unsigned char)text[keep - 1] == 0xBD)
            keep -= 3;
        else if (keep > 0 && (text[keep - 1] == ' ' || text[keep - 1] == '\t' ||
                              text[keep - 1] == '\n' || text[keep - 1] == '\r'))
            keep--;
        else
            break;
    }
    size_t hold = 0;
    for (size_t k = 0; k < st->n; k++)
        for (size_t m = st->len[k] - 1; m > hold; m--)
            if (m <= keep && !memcmp(text + keep - m, st->s[k], m)) {
                hold = m;
                break;
            }
    keep -= hold;
    while (keep > 0 && keep < tl && ((unsigned char)text[keep] & 0xC0) == 0x80)
        keep--;
    return keep;
}

/* The shim's token callback (any of its threads, one sequence at a time):
 * stops a sequence whose task was cancelled or whose text now holds a stop
 * string, and streams the stable part of a streamed sequence's text. */
static int on_token(void *user, size_t seq, const int64_t *ids, size_t n, int done) {
    const cb_ctx *c = user;
    seq_state *ss = seq < c->n_seqs ? &c->seqs[seq] : NULL;
    if (ss && ss->task && mm_task_cancelled(ss->task))
        return 1;
    if ((c->st->n == 0 && !(ss && ss->stream)) || done || n == 0)
        return 0;
    size_t tl = 0;
    char *text = decode_ids(c->s, ids, n, &tl);
    if (!text)
        return 0;
    int hit = c->st->n && stop_at(c->st, text, tl) < tl;
    if (!hit && ss && ss->stream) {
        /* A trailing run of byte-fallback pieces (special tokens, which the
         * decoder skips, do not end it) may still turn to U+FFFD: stream only
         * the text before it. */
        size_t k = n;
        while (k > 0) {
            size_t el = 0;
            char *one = NULL;
            if (mm__ntok_is_byte_piece(c->s->tok, (int32_t)ids[k - 1]))
                k--;
            else if ((one = decode_ids(c->s, ids + k - 1, 1, &el)) != NULL && el == 0)
                k--;
            else {
                mm_free(one);
                break;
            }
            mm_free(one);
        }
        if (k < n) {
            mm_free(text);
            tl = 0;
            text = k ? decode_ids(c->s, ids, k, &tl) : mm_calloc(1, 1);
            if (!text)
                return 0;
        }
        /* Only text that also stood after the previous token goes out: a
         * byte-fallback piece decodes alone ("K") otherwise than inside an
         * invalid byte run (two U+FFFD), so one token may still revise
         * the last one's text. */
        size_t cand = stable_len(c->st, text, tl), common = 0;
        while (common < cand && common < ss->prev_len && text[common] == ss->prev[common])
            common++;
        while (common > 0 && common < tl && ((unsigned char)text[common] & 0xC0) == 0x80)
            common--;
        send_piece(ss, text, common);
        char *np = mm_realloc(ss->prev, cand ? cand : 1);
        if (np) {
            memcpy(np, text, cand);
            ss->prev = np;
            ss->prev_len = cand;
        }
    }
    mm_free(text);
    return hit;
}

/* Appends to a growing JSON array text. */
typedef struct jbuf {
    char *p;
    size_t len, cap;
    int oom;
} jbuf;

static void jb_add(jbuf *b, const char *s) {
    size_t l = strlen(s);
    if (b->oom)
        return;
    if (b->len + l + 1 > b->cap) {
        size_t nc = (b->cap ? b->cap * 2 : 64) + l;
        char *np = mm_realloc(b->p, nc);
        if (!np) {
            b->oom = 1;
            return;
        }
        b->p = np;
        b->cap = nc;
    }
    memcpy(b->p + b->len, s, l + 1);
    b->len += l;
}

/* One generated sequence as the shim returned it. */
typedef struct seq_view {
    const int64_t *ids;
    size_t n;
    uint8_t finish;
} seq_view;

/* Decodes t's sequences v[0 .. n_items * nrs) (cut at stop strings), sends
 * the rest of each streamed text (seqs: the same sequences' stream state;
 * streamed: whether to), and writes t's texts, finish reasons and token
 * counts (plens: its inputs' prompt tokens).  Fails t on an error. */
static void write_task(const gstate *s, mm_task_t *t, const stops *st, int streamed, size_t nrs,
                       seq_state *seqs, const seq_view *v, const size_t *plens) {
    char err[512] = "";
    size_t n = mm_task_n_items(t);
    int32_t *buf = NULL;
    size_t bufcap = 0;
    const int single = mm_task_single_input(t) && nrs == 1;
    jbuf fr = {0}, ct = {0}, pt = {0};
    jb_add(&fr, "[");
    jb_add(&ct, "[");
    jb_add(&pt, "[");
    for (size_t i = 0; i < n; i++) {
        char num[32];
        snprintf(num, sizeof num, "%s%zu", i ? "," : "", plens[i]);
        jb_add(&pt, num);
    }
    int ok = 1;
    for (size_t j = 0; j < n * nrs && ok; j++) {
        size_t len = v[j].n;
        if (len > bufcap) {
            int32_t *nb = mm_realloc(buf, len * sizeof *nb);
            if (!nb) {
                mm_task_fail(t, MM_ENOMEM, "out of memory");
                ok = 0;
                break;
            }
            buf = nb;
            bufcap = len;
        }
        for (size_t x = 0; x < len; x++)
            buf[x] = (int32_t)v[j].ids[x];
        mm_task_add_tokens(t, 0, len);
        char *text = NULL;
        size_t tl = 0;
        int rc = mm__ntok_decode(s->tok, buf, len, &text, &tl, err, sizeof err);
        int stopped = v[j].finish != MM_GEN_FINISH_LENGTH;
        if (rc == 0 && st->n) {
            size_t cut = stop_at(st, text, tl);
            if (cut < tl) {
                tl = cut;
                text[tl] = '\0';
                stopped = 1;
            }
        }
        if (rc == 0 && streamed) /* the rest of a streamed text */
            send_piece(&seqs[j], text, tl);
        if (rc == 0)
            rc = mm_task_result_text(t, j, nrs, text, tl);
        mm_free(text);
        if (rc != 0) {
            mm_task_fail(t, rc, "decoding the output failed: %s", err);
            ok = 0;
            break;
        }
        char num[48];
        snprintf(num, sizeof num, "%s\"%s\"", j ? "," : "", stopped ? "stop" : "length");
        jb_add(&fr, num);
        snprintf(num, sizeof num, "%s%zu", j ? "," : "", len);
        jb_add(&ct, num);
        if (single) {
            snprintf(num, sizeof num, "\"%s\"", stopped ? "stop" : "length");
            mm_task_result_extra(t, "finish_reason", num);
            snprintf(num, sizeof num, "%zu", len);
            mm_task_result_extra(t, "completion_tokens", num);
            snprintf(num, sizeof num, "%zu", plens[0]);
            mm_task_result_extra(t, "prompt_tokens", num);
        }
    }
    jb_add(&fr, "]");
    jb_add(&ct, "]");
    jb_add(&pt, "]");
    if (ok && !single) {
        if (fr.oom || ct.oom || pt.oom || mm_task_result_extra(t, "finish_reasons", fr.p) != 0 ||
            mm_task_result_extra(t, "completion_tokens", ct.p) != 0 ||
            mm_task_result_extra(t, "prompt_tokens", pt.p) != 0)
            mm_task_fail(t, MM_ENOMEM, "out of memory");
    }
    mm_free(fr.p);
    mm_free(ct.p);
    mm_free(pt.p);
    mm_free(buf);
}

/* Whether kwargs ask for streamed output (ModelManager.stream()). */
static int json_stream_flag(const char *json) {
    json_t *o = json_loads(json ? json : "{}", 0, NULL);
    int on = json_is_true(json_object_get(o, "stream"));
    json_decref(o);
    return on;
}

/* Encodes every input of t into ids[i] (mm_malloc'd, lens[i] tokens),
 * truncated at maxlen when truncate, else an over-long input is an
 * INVALID_ARGUMENT naming it.  Fails t and returns nonzero on an error. */
static int encode_task(const gstate *s, mm_task_t *t, const mm_torch_gen_params *p,
                       int add_special, int truncate, size_t maxlen, int64_t **ids, size_t *lens,
                       int64_t *scratch, int64_t *tscratch, size_t cap) {
    char err[512];
    const int causal = is_causal(s);
    size_t n = mm_task_n_items(t);
    for (size_t i = 0; i < n; i++) {
        size_t len = 0, full = 0;
        const char *text = mm_task_item(t, i, &len);
        int rc = mm__ntok_encode_ex(s->tok, text, len, add_special, truncate ? maxlen : 0, scratch,
                                    tscratch, cap, &full, err, sizeof err);
        if (rc == 0 && !truncate && full > maxlen) {
            rc = MM_EINVAL;
            if (causal)
                snprintf(err, sizeof err, "input %zu has %zu tokens; the model's context of "
                         "%lld positions leaves room for %zu beside %lld new tokens (pass "
                         "truncate=True to cut it)", i, full,
                         (long long)s->info.max_input_length, maxlen,
                         (long long)(p->max_new_tokens > 0 ? p->max_new_tokens : 1));
            else
                snprintf(err, sizeof err, "input %zu has %zu tokens, more than the model's "
                         "%zu (pass truncate=true to cut it)", i, full, maxlen);
        }
        if (rc == 0 && full == 0) {
            rc = MM_EINVAL;
            snprintf(err, sizeof err, "input %zu encodes to no tokens", i);
        }
        size_t got = full < cap ? full : cap;
        if (truncate && got > maxlen)
            got = maxlen;
        if (rc == 0 && !(ids[i] = mm_malloc(got * sizeof(int64_t))))
            rc = MM_ENOMEM;
        if (rc != 0) {
            mm_task_fail(t, rc, "%s", rc == MM_ENOMEM ? "out of memory" : err);
            return rc;
        }
        memcpy(ids[i], scratch, got * sizeof(int64_t));
        lens[i] = got;
        mm_task_add_tokens(t, got, 0);
    }
    return 0;
}

/* Runs the tasks tasks[idx[0..m)] that share one kwargs text. */
/* A task's generation settings: the kwargs over the model's defaults. */
typedef struct gsettings {
    mm_torch_gen_params p;
    int truncate, add_special, streamed;
    stops st;
    size_t maxlen; /* prompt tokens an input may keep */
} gsettings;

/* Reads kwargs (the task's JSON) into *g and checks them against the model;
 * 0 or an error code with err written.  Input limit: encoder-decoders
 * truncate at the model's input length unless truncate=false; a
 * decoder-only prompt must leave room for its new tokens within the
 * context, and is cut only with truncate=true. */
static int prepare(const gstate *s, const char *kw, gsettings *g, char *err, size_t errlen) {
    const int causal = is_causal(s);
    s->api.default_params(s->gen, &g->p);
    int rc = apply_kwargs(kw, &g->p, &g->truncate, &g->st, &g->add_special, err, errlen);
    if (rc == 0)
        rc = s->api.check_params(s->gen, &g->p, err, errlen);
    g->maxlen = (size_t)s->info.max_input_length;
    if (g->truncate < 0)
        g->truncate = !causal;
    if (rc == 0 && causal) {
        int64_t room =
            s->info.max_input_length - (g->p.max_new_tokens > 0 ? g->p.max_new_tokens : 1);
        if (room < 1) {
            rc = MM_EINVAL;
            snprintf(err, errlen, "max_new_tokens (%lld) leaves no room for a prompt in the "
                     "model's context of %lld positions", (long long)g->p.max_new_tokens,
                     (long long)s->info.max_input_length);
        }
        g->maxlen = room > 0 ? (size_t)room : 1;
    }
    g->streamed = json_stream_flag(kw);
    return rc;
}

/* Runs the tasks tasks[idx[0..m)] that share one kwargs text (all at once). */
static void run_group(gstate *s, mm_task_t **tasks, const size_t *idx, size_t m) {
    char err[512];
    err[0] = '\0';
    seq_state *seqs = NULL;
    size_t live = 0, nrs_run_out = 0;
    gsettings g;
    int rc = prepare(s, mm_task_params_json(tasks[idx[0]]), &g, err, sizeof err);
    const mm_torch_gen_params p = g.p;
    const int truncate = g.truncate, add_special = g.add_special;
    const size_t maxlen = g.maxlen;
    const stops *stp = &g.st;
    if (rc != 0) {
        for (size_t k = 0; k < m; k++)
            mm_task_fail(tasks[idx[k]], rc, "%s", err);
        return;
    }
    size_t total = 0;
    for (size_t k = 0; k < m; k++)
        total += mm_task_n_items(tasks[idx[k]]);
    int64_t **ids = mm_calloc(total ? total : 1, sizeof *ids);
    size_t *lens = mm_calloc(total ? total : 1, sizeof *lens);
    size_t *plens = mm_calloc(total ? total : 1, sizeof *plens); /* per input, kept */
    char *failed = mm_calloc(m, 1);
    size_t cap = (size_t)s->info.max_input_length + 8, in = 0;
    int64_t *scratch = mm_malloc(cap * sizeof *scratch);
    int64_t *tscratch = mm_malloc(cap * sizeof *tscratch); /* type ids, unused */
    if (!ids || !lens || !plens || !failed || !scratch || !tscratch) {
        for (size_t k = 0; k < m; k++)
            mm_task_fail(tasks[idx[k]], MM_ENOMEM, "out of memory");
        goto out;
    }
    /* 1. encode */
    for (size_t k = 0; k < m; k++) {
        mm_task_t *t = tasks[idx[k]];
        if (encode_task(s, t, &p, add_special, truncate, maxlen, ids + in, lens + in, scratch,
                        tscratch, cap) != 0)
            failed[k] = 1;
        for (size_t i = 0; i < mm_task_n_items(t) && !failed[k]; i++)
            plens[in + i] = lens[in + i];
        in += mm_task_n_items(t);
    }
    /* 2. generate for the tasks still standing (compact their inputs) */
    in = 0;
    for (size_t k = 0; k < m; k++) {
        size_t n = mm_task_n_items(tasks[idx[k]]);
        for (size_t i = 0; i < n; i++, in++) {
            if (failed[k])
                continue;
            ids[live] = ids[in];
            lens[live] = lens[in];
            if (live != in)
                ids[in] = NULL;
            live++;
        }
    }
    if (live == 0)
        goto out;
    /* sequences as the shim numbers them: input * nrs + r */
    const size_t nrs_run = (p.num_beams > 1 || p.do_sample) ? (size_t)p.num_return_sequences : 1;
    const int streamed = g.streamed;
    seqs = mm_calloc(live * nrs_run, sizeof *seqs);
    nrs_run_out = nrs_run;
    if (!seqs) {
        for (size_t k = 0; k < m; k++)
            if (!failed[k])
                mm_task_fail(tasks[idx[k]], MM_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t k = 0, q = 0; k < m; k++) {
        if (failed[k])
            continue;
        for (size_t i = 0; i < mm_task_n_items(tasks[idx[k]]); i++, q++)
            for (size_t r = 0; r < nrs_run; r++) {
                seq_state *ss = &seqs[q * nrs_run + r];
                ss->task = tasks[idx[k]];
                ss->out = i * nrs_run + r;
                ss->stream = streamed;
            }
    }
    mm_torch_gen_result *res = NULL;
    cb_ctx cbc = {s, stp, seqs, live * nrs_run};
    rc = s->api.run_cb(s->gen, (const int64_t *const *)ids, lens, live, &p, on_token, &cbc, &res,
                       err, sizeof err);
    if (rc != 0) {
        for (size_t k = 0; k < m; k++)
            if (!failed[k])
                mm_task_fail(tasks[idx[k]], rc, "%s", err);
        goto out;
    }
    /* 3. decode, cut at stop strings, write back with finish reasons and counts */
    size_t nrs = res->num_return_sequences, seq = 0;
    in = 0;
    for (size_t k = 0; k < m; k++) {
        mm_task_t *t = tasks[idx[k]];
        size_t n = mm_task_n_items(t);
        if (failed[k]) {
            in += n;
            continue;
        }
        seq_view *v = mm_malloc(n * nrs * sizeof *v);
        if (!v) {
            mm_task_fail(t, MM_ENOMEM, "out of memory");
        } else {
            for (size_t j = 0; j < n * nrs; j++) {
                v[j].ids = res->ids + res->offsets[seq + j];
                v[j].n = res->offsets[seq + j + 1] - res->offsets[seq + j];
                v[j].finish = res->finish[seq + j];
            }
            write_task(s, t, stp, streamed && nrs == nrs_run, nrs, &seqs[seq], v, plens + in);
            mm_free(v);
        }
        seq += n * nrs;
        in += n;
    }
    s->api.result_free(res);
out:
    if (seqs)
        for (size_t i = 0; i < live * nrs_run_out; i++) {
            mm_free(seqs[i].sent);
            mm_free(seqs[i].prev);
        }
    mm_free(seqs);
    if (ids)
        for (size_t i = 0; i < total; i++)
            mm_free(ids[i]);
    mm_free(ids);
    mm_free(lens);
    mm_free(plens);
    mm_free(failed);
    mm_free(scratch);
    mm_free(tscratch);
}

/* ---- continuous batching (decoder-only models) ----
 *
 * run() of a decoder-only model keeps one running batch in the shim
 * (mm_torch_gen_batch_*): between two rounds it takes queued tasks
 * (mm_worker_take_more), each input of a task one request, while the KV
 * budget has room; a round steps every running sequence once and prefills
 * newcomers (prefill_tokens_per_step prompt tokens a round, at least one
 * prompt); a task leaves the moment its last input finishes
 * (mm_worker_finish), a cancelled one before the next round.  The task at
 * the head of the queue that does not fit waits (tokenized, here) until
 * blocks free up; the tasks behind it stay in the queue.  run() returns
 * when nothing is running and nothing is queued. */

#define MAX_RUNNING 256 /* requests in one running batch */

typedef struct ctask {
    mm_task_t *t;
    gsettings g;
    size_t n, nrs_run;       /* inputs; sequences the shim numbers per input */
    int64_t **ids;           /* per input, encoded */
    size_t *lens;
    uint64_t *req;           /* shim request per input (valid below added) */
    mm_torch_gen_result **res; /* per input, once finished */
    seq_state *seqs;         /* n * nrs_run */
    cb_ctx *cbc;             /* per input */
    size_t added, finished;
    struct ctask *next;
} ctask;

static void ctask_free(const gstate *s, ctask *c) {
    for (size_t i = 0; i < c->n; i++) {
        if (c->ids)
            mm_free(c->ids[i]);
        if (c->res && c->res[i])
            s->api.result_free(c->res[i]);
    }
    if (c->seqs)
        for (size_t i = 0; i < c->n * c->nrs_run; i++) {
            mm_free(c->seqs[i].sent);
            mm_free(c->seqs[i].prev);
        }
    mm_free(c->ids);
    mm_free(c->lens);
    mm_free(c->req);
    mm_free(c->res);
    mm_free(c->seqs);
    mm_free(c->cbc);
    mm_free(c);
}

/* A task taken into the batch: settings read and inputs encoded; NULL when
 * it ended there (not a run, cancelled, bad input: finished). */
static ctask *ctask_new(const gstate *s, mm_task_t *t, int64_t *scratch, int64_t *tscratch,
                        size_t cap) {
    if (mm_task_get_kind(t) != MM_KIND_RUN || mm_task_cancelled(t)) {
        mm_worker_finish(t);
        return NULL;
    }
    char err[512] = "";
    ctask *c = mm_calloc(1, sizeof *c);
    size_t n = mm_task_n_items(t);
    int rc = c ? prepare(s, mm_task_params_json(t), &c->g, err, sizeof err) : MM_ENOMEM;
    if (rc == 0) {
        c->t = t;
        c->n = n;
        c->nrs_run = c->g.p.do_sample ? (size_t)c->g.p.num_return_sequences : 1;
        c->ids = mm_calloc(n, sizeof *c->ids);
        c->lens = mm_calloc(n, sizeof *c->lens);
        c->req = mm_calloc(n, sizeof *c->req);
        c->res = mm_calloc(n, sizeof *c->res);
        c->seqs = mm_calloc(n * c->nrs_run, sizeof *c->seqs);
        c->cbc = mm_calloc(n, sizeof *c->cbc);
        if (!c->ids || !c->lens || !c->req || !c->res || !c->seqs || !c->cbc) {
            rc = MM_ENOMEM;
            snprintf(err, sizeof err, "out of memory");
        }
    }
    if (rc != 0) {
        mm_task_fail(t, rc, "%s", err);
    } else if (encode_task(s, t, &c->g.p, c->g.add_special, c->g.truncate, c->g.maxlen, c->ids,
                           c->lens, scratch, tscratch, cap) != 0) {
        rc = MM_EINVAL; /* t failed with its message */
    }
    if (rc != 0) {
        if (c)
            ctask_free(s, c);
        mm_worker_finish(t);
        return NULL;
    }
    for (size_t i = 0; i < n; i++) {
        for (size_t r = 0; r < c->nrs_run; r++) {
            seq_state *ss = &c->seqs[i * c->nrs_run + r];
            ss->task = t;
            ss->out = i * c->nrs_run + r;
            ss->stream = c->g.streamed;
        }
        c->cbc[i] = (cb_ctx){s, &c->g.st, &c->seqs[i * c->nrs_run], c->nrs_run};
    }
    return c;
}

/* Finishes c now: its requests leave the batch; the caller unlinks it. */
static void ctask_end(const gstate *s, mm_torch_gen_batch_t *b, ctask *c) {
    for (size_t i = 0; i < c->added; i++)
        if (!c->res[i])
            s->api.batch_drop(b, c->req[i]);
    mm_task_t *t = c->t;
    ctask_free(s, c);
    mm_torch_gen_kv kv; /* status() shows the blocks back once the caller has the result */
    if (s->api.kv_get(s->gen, &kv) == 0)
        mm_worker_kv_report((uint64_t)kv.used_blocks, (uint64_t)kv.total_blocks);
    mm_worker_finish(t); /* a cancelled task completes with its stop code */
}

/* c's every input finished: writes its texts, then finishes it. */
static void ctask_write(const gstate *s, mm_torch_gen_batch_t *b, ctask *c) {
    size_t nrs = c->res[0]->num_return_sequences;
    seq_view *v = mm_malloc(c->n * nrs * sizeof *v);
    if (!v) {
        mm_task_fail(c->t, MM_ENOMEM, "out of memory");
    } else {
        for (size_t i = 0; i < c->n; i++)
            for (size_t r = 0; r < nrs; r++) {
                const mm_torch_gen_result *res = c->res[i];
                v[i * nrs + r].ids = res->ids + res->offsets[r];
                v[i * nrs + r].n = res->offsets[r + 1] - res->offsets[r];
                v[i * nrs + r].finish = res->finish[r];
            }
        write_task(s, c->t, &c->g.st, c->g.streamed && nrs == c->nrs_run, nrs, c->seqs, v,
                   c->lens);
        mm_free(v);
    }
    ctask_end(s, b, c);
}

static void report_kv(const gstate *s, int64_t *last) {
    mm_torch_gen_kv kv;
    if (s->api.kv_get(s->gen, &kv) == 0 && kv.used_blocks != *last) {
        *last = kv.used_blocks;
        mm_worker_kv_report((uint64_t)kv.used_blocks, (uint64_t)kv.total_blocks);
    }
}

/* Requests of the list in the shim's batch now (added, not yet finished). */
static size_t in_batch(const ctask *list) {
    size_t k = 0;
    for (const ctask *c = list; c; c = c->next)
        k += c->added - c->finished;
    return k;
}

/* Unlinks c from *list and finishes it (written when all its inputs are). */
static void ctask_leave(const gstate *s, mm_torch_gen_batch_t *b, ctask **list, ctask *c,
                        int write) {
    ctask **pp = list;
    while (*pp != c)
        pp = &(*pp)->next;
    *pp = c->next;
    if (write)
        ctask_write(s, b, c);
    else
        ctask_end(s, b, c);
}

static ctask *list_last(ctask *list) {
    while (list && list->next)
        list = list->next;
    return list;
}

static void run_continuous(gstate *s, mm_task_t **first, size_t n0) {
    char err[512] = "";
    mm_torch_gen_batch_t *b = NULL;
    size_t cap = (size_t)s->info.max_input_length + 8;
    int64_t *scratch = mm_malloc(cap * sizeof *scratch);
    int64_t *tscratch = mm_malloc(cap * sizeof *tscratch);
    uint64_t *done = mm_malloc(MAX_RUNNING * sizeof *done);
    int rc = scratch && tscratch && done ? s->api.batch_new(s->gen, &b, err, sizeof err)
                                         : MM_ENOMEM;
    if (rc != 0) {
        for (size_t i = 0; i < n0; i++) {
            mm_task_fail(first[i], rc, "%s", rc == MM_ENOMEM ? "out of memory" : err);
            mm_worker_finish(first[i]);
        }
        goto out;
    }
    ctask *list = NULL; /* admitted, in arrival order; only the last may be partly added
                           (its other inputs wait for blocks) */
    size_t fi = 0;
    int64_t kv_last = -1;
    for (;;) {
        /* 1. admit: the last task's remaining inputs, then tasks from the queue */
        for (;;) {
            if (in_batch(list) >= MAX_RUNNING)
                break;
            ctask *last = list_last(list);
            if (!last || last->added == last->n) {
                mm_task_t *t = NULL;
                if (fi < n0)
                    t = first[fi++];
                else if (mm_worker_take_more(&t, 1) == 0)
                    break;
                ctask *c = ctask_new(s, t, scratch, tscratch, cap);
                if (!c)
                    continue;
                if (last)
                    last->next = c;
                else
                    list = c;
                last = c;
            }
            size_t i = last->added;
            rc = s->api.batch_add(b, last->ids[i], last->lens[i], &last->g.p, on_token,
                                  &last->cbc[i], &last->req[i], err, sizeof err);
            if (rc == MM_EBUSY)
                break; /* waits for blocks; the tasks behind it stay queued */
            if (rc != 0) { /* can never fit, bad settings: the whole task fails */
                mm_task_fail(last->t, rc, "%s", err);
                ctask_leave(s, b, &list, last, 0);
                continue;
            }
            last->added++;
        }
        /* 2. cancelled tasks leave now (their slots and blocks free at once) */
        for (ctask *c = list, *nx; c; c = nx) {
            nx = c->next;
            if (mm_task_cancelled(c->t))
                ctask_leave(s, b, &list, c, 0);
        }
        report_kv(s, &kv_last);
        if (!list)
            break; /* nothing running or waiting: back to the worker */
        if (in_batch(list) == 0) {
            /* the head waits for blocks another worker of this model holds */
            struct timespec ts = {0, 2000000};
            nanosleep(&ts, NULL);
            continue;
        }
        /* 3. one round */
        size_t nd = 0;
        rc = s->api.batch_step(b, s->prefill_tokens, done, MAX_RUNNING, &nd, err, sizeof err);
        if (rc != 0) {
            while (list) {
                mm_task_fail(list->t, rc, "%s", err);
                ctask_leave(s, b, &list, list, 0);
            }
            continue;
        }
        for (size_t k = 0; k < nd; k++) {
            for (ctask *c = list; c; c = c->next) {
                size_t i = 0;
                while (i < c->added && (c->res[i] || c->req[i] != done[k]))
                    i++;
                if (i == c->added)
                    continue;
                rc = s->api.batch_result(b, done[k], &c->res[i], err, sizeof err);
                if (rc != 0) {
                    s->api.batch_drop(b, done[k]);
                    mm_task_fail(c->t, rc, "%s", err);
                    ctask_leave(s, b, &list, c, 0);
                } else if (++c->finished == c->n) {
                    ctask_leave(s, b, &list, c, 1); /* delivered now */
                }
                break;
            }
        }
    }
    report_kv(s, &kv_last);
out:
    if (b)
        s->api.batch_free(b);
    mm_free(scratch);
    mm_free(tscratch);
    mm_free(done);
}

static void gen_run(void *state, mm_task_t **tasks, size_t n) {
    gstate *s = state;
    if (is_causal(s) && s->api.batch_new) {
        run_continuous(s, tasks, n);
        return;
    }
    size_t *idx = mm_calloc(n ? n : 1, sizeof *idx);
    char *done = mm_calloc(n ? n : 1, 1);
    if (!idx || !done) {
        for (size_t i = 0; i < n; i++)
            mm_task_fail(tasks[i], MM_ENOMEM, "out of memory");
        mm_free(idx);
        mm_free(done);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        if (done[i])
            continue;
        if (mm_task_get_kind(tasks[i]) != MM_KIND_RUN || mm_task_cancelled(tasks[i])) {
            done[i] = 1; /* a cancelled task's group is not generated; the engine completes it */
            continue;
        }
        const char *kw = mm_task_params_json(tasks[i]);
        size_t m = 0;
        for (size_t j = i; j < n; j++) {
            if (!done[j] && mm_task_get_kind(tasks[j]) == MM_KIND_RUN &&
                !mm_task_cancelled(tasks[j]) && !strcmp(kw, mm_task_params_json(tasks[j]))) {
                idx[m++] = j;
                done[j] = 1;
            }
        }
        run_group(s, tasks, idx, m);
    }
    mm_free(idx);
    mm_free(done);
}

static int gen_info(void *state, mm_backend_info *info) {
    gstate *s = state;
    info->memory_bytes = s->info.memory_bytes;
    if (is_causal(s) && s->api.batch_new)
        info->max_batch_items = 1; /* run() takes the rest from the queue as room frees up */
    return 0;
}

const mm_backend_vtable mm_native_gen_backend = {
    .name = "native-gen",
    .accepts = NULL,
    .check = gen_check,
    .load = gen_load,
    .run = gen_run,
    .unload = gen_unload,
    .info = gen_info,
    .cost = NULL,
};
