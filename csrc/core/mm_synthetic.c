/* mm_synthetic.c: the synthetic backend, a real feature for tests.
 *
 * Model names "synthetic/<task_type>?key=value&..." give a model with no
 * weights: deterministic unit-norm hash embeddings (the same text always
 * gives the same vector) or deterministic generated text, with tunable
 * costs and injected failures, so apps can test their use of the manager
 * (and we can test and benchmark the engine) without downloading anything.
 *
 * Options: dim (16), load_ms (0), item_us (0, per input item), batch_us (0,
 * per batch), max_items / max_tokens (batch limits it reports), mem_mb (0,
 * its footprint: the estimate before load and what it reports after; on the
 * CPU it really allocates and touches that much, once per model name however
 * many workers share it, so resident-memory measurements and releases are
 * real), download_mb (load_ms becomes a pretend download of that
 * size, reported as progress), fail=load (every load fails), fail_loads=N (the first
 * N loads of this name in this process fail), fail=oom_over=N (a batch of
 * more than N items fails every task with OUT_OF_MEMORY, as a GPU would),
 * oom_loads=N (the first N loads of this name fail with OUT_OF_MEMORY), word_us
 * (0, generation: the time each word takes, so streams arrive word by word
 * and a cancelled task stops between two words), continuous=N (generation:
 * continuous batching with N slots, as decoder-only models run: run() keeps
 * a running batch, takes queued tasks into free slots between two words
 * (mm_worker_take_more), produces one word for every running task per
 * word_us step, and finishes each task the moment its words are done or it
 * is cancelled (mm_worker_finish)).  An input item containing "__fail__"
 * fails its task with TASK_FAILED.
 */
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "mm_alloc.h"
#include "mm_backends.h"
#include "mm_err.h"

typedef struct synth_opts {
    mm_task_type type;
    long dim, load_ms, item_us, batch_us, max_items, max_tokens, mem_mb, fail_loads, download_mb;
    long word_us;
    long continuous; /* generation: running-batch slots (0: off) */
    long oom_over, oom_loads; /* oom_over: 0 = never */
    int fail_load;
} synth_opts;

struct host_block;

typedef struct synth_state {
    synth_opts o;
    struct host_block *block; /* CPU: the shared pretend weights, or NULL */
    int owns_block;           /* this worker allocated it (reports it; others share) */
} synth_state;

static int parse_long(const char *v, long lo, long hi, long *out) {
    char *end;
    long x = strtol(v, &end, 10);
    if (end == v || *end || x < lo || x > hi)
        return -1;
    *out = x;
    return 0;
}

static int parse_opts(const char *name, synth_opts *o, char *err, size_t errlen) {
    memset(o, 0, sizeof *o);
    o->dim = 16;
    const char *p = name + strlen("synthetic/");
    const char *q = strchr(p, '?');
    size_t tlen = q ? (size_t)(q - p) : strlen(p);
    if (tlen == 9 && !strncmp(p, "embedding", 9))
        o->type = MM_TASK_EMBEDDING;
    else if (tlen == 15 && !strncmp(p, "text_generation", 15))
        o->type = MM_TASK_TEXT_GENERATION;
    else {
        snprintf(err, errlen,
                 "synthetic model names are \"synthetic/embedding?...\" or "
                 "\"synthetic/text_generation?...\", got \"%.200s\"",
                 name);
        return MM_EINVAL;
    }
    if (!q)
        return 0;
    char buf[512];
    snprintf(buf, sizeof buf, "%s", q + 1);
    char *save = NULL;
    for (char *kv = strtok_r(buf, "&", &save); kv; kv = strtok_r(NULL, "&", &save)) {
        char *eq = strchr(kv, '=');
        if (!eq) {
            snprintf(err, errlen, "synthetic option \"%.60s\" needs a value (key=value)", kv);
            return MM_EINVAL;
        }
        *eq = '\0';
        const char *k = kv, *v = eq + 1;
        int bad = 0;
        if (!strcmp(k, "dim"))
            bad = parse_long(v, 1, 65536, &o->dim);
        else if (!strcmp(k, "load_ms"))
            bad = parse_long(v, 0, 600000, &o->load_ms);
        else if (!strcmp(k, "item_us"))
            bad = parse_long(v, 0, 60000000, &o->item_us);
        else if (!strcmp(k, "batch_us"))
            bad = parse_long(v, 0, 60000000, &o->batch_us);
        else if (!strcmp(k, "word_us"))
            bad = parse_long(v, 0, 60000000, &o->word_us);
        else if (!strcmp(k, "continuous"))
            bad = parse_long(v, 0, 4096, &o->continuous);
        else if (!strcmp(k, "max_items"))
            bad = parse_long(v, 0, 1L << 30, &o->max_items);
        else if (!strcmp(k, "max_tokens"))
            bad = parse_long(v, 0, 1L << 30, &o->max_tokens);
        else if (!strcmp(k, "mem_mb"))
            bad = parse_long(v, 0, 1L << 30, &o->mem_mb);
        else if (!strcmp(k, "fail_loads"))
            bad = parse_long(v, 0, 1L << 30, &o->fail_loads);
        else if (!strcmp(k, "download_mb"))
            bad = parse_long(v, 0, 1L << 20, &o->download_mb);
        else if (!strcmp(k, "oom_loads"))
            bad = parse_long(v, 0, 1L << 30, &o->oom_loads);
        else if (!strcmp(k, "fail")) {
            if (!strcmp(v, "load"))
                o->fail_load = 1;
            else if (!strncmp(v, "oom_over=", 9))
                bad = parse_long(v + 9, 1, 1L << 30, &o->oom_over);
            else
                bad = 1;
        } else {
            snprintf(err, errlen,
                     "unknown synthetic option \"%.60s\" (known: dim, load_ms, item_us, "
                     "batch_us, word_us, continuous, max_items, max_tokens, mem_mb, download_mb, "
                     "fail=load, fail=oom_over=N, fail_loads, oom_loads)",
                     k);
            return MM_EINVAL;
        }
        if (bad) {
            snprintf(err, errlen, "bad value \"%.60s\" for synthetic option %s", v, k);
            return MM_EINVAL;
        }
    }
    return 0;
}

static int synth_accepts(const char *name) { return !strncmp(name, "synthetic/", 10); }

static const char *const EMBED_KW[] = {"normalize", "dimensions", NULL};
static const char *const GEN_KW[] = {"max_length",     "max_new_tokens",       "min_length",
                                     "min_new_tokens", "num_beams",            "do_sample",
                                     "temperature",    "top_k",                "top_p",
                                     "seed",           "num_return_sequences", "repetition_penalty",
                                     "no_repeat_ngram_size", "length_penalty", "early_stopping",
                                     "stream", NULL};

static int check_kwargs(const synth_opts *o, const char *json, char *err, size_t errlen) {
    if (!strcmp(json, "{}"))
        return 0;
    json_error_t je;
    json_t *obj = json_loads(json, 0, &je);
    if (!obj || !json_is_object(obj)) {
        json_decref(obj);
        snprintf(err, errlen, "task parameters %.80s are not a JSON object (%s)", json, je.text);
        return MM_EINVAL;
    }
    const char *const *known = o->type == MM_TASK_EMBEDDING ? EMBED_KW : GEN_KW;
    const char *key;
    json_t *val;
    int rc = 0;
    json_object_foreach(obj, key, val) {
        int ok = 0;
        for (const char *const *k = known; *k; k++)
            if (!strcmp(*k, key))
                ok = 1;
        if (!ok) {
            snprintf(err, errlen, "unknown parameter \"%.60s\" for %s task", key,
                     o->type == MM_TASK_EMBEDDING ? "an embedding" : "a text_generation");
            rc = MM_EINVAL;
            break;
        }
        if (!strcmp(key, "normalize") && !json_is_boolean(val)) {
            char *vs = json_dumps(val, JSON_ENCODE_ANY | JSON_COMPACT);
            snprintf(err, errlen, "normalize must be True or False, got %.60s", vs ? vs : "?");
            free(vs);
            rc = MM_EINVAL;
            break;
        }
        if (!strcmp(key, "dimensions") &&
            (!json_is_integer(val) || json_integer_value(val) < 1)) {
            char *vs = json_dumps(val, JSON_ENCODE_ANY | JSON_COMPACT);
            snprintf(err, errlen, "dimensions must be a positive integer, got %.60s",
                     vs ? vs : "?");
            free(vs);
            rc = MM_EINVAL;
            break;
        }
        if ((!strcmp(key, "max_length") || !strcmp(key, "max_new_tokens")) &&
            (!json_is_integer(val) || json_integer_value(val) < 1 ||
             json_integer_value(val) > 4096)) {
            char *vs = json_dumps(val, JSON_ENCODE_ANY | JSON_COMPACT);
            snprintf(err, errlen, "%s must be an integer between 1 and 4096, got %.60s", key,
                     vs ? vs : "?");
            free(vs);
            rc = MM_EINVAL;
            break;
        }
    }
    json_decref(obj);
    return rc;
}

static int synth_check(const mm_model_spec *spec, const mm_task_t *task, char *err,
                       size_t errlen) {
    synth_opts o;
    int rc = parse_opts(spec->model_name, &o, err, errlen);
    if (rc < 0)
        return rc;
    if (o.type != spec->task_type) {
        snprintf(err, errlen, "model \"%.200s\" serves %s tasks, not %s", spec->model_name,
                 o.type == MM_TASK_EMBEDDING ? "embedding" : "text_generation",
                 spec->task_type == MM_TASK_EMBEDDING ? "embedding" : "text_generation");
        return MM_EINVAL;
    }
    return check_kwargs(&o, mm_task_params_json(task), err, errlen);
}

static void sleep_us(long us) {
    if (us <= 0)
        return;
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

/* Per-name load counters for fail_loads; a short list under a mutex. */
typedef struct load_count {
    struct load_count *next;
    long n;
    char name[];
} load_count;
static pthread_mutex_t counts_mu = PTHREAD_MUTEX_INITIALIZER;
static load_count *counts; /* guarded by counts_mu */

static long next_load_number(const char *name) {
    pthread_mutex_lock(&counts_mu);
    load_count *c = counts;
    while (c && strcmp(c->name, name))
        c = c->next;
    if (!c) {
        c = mm_malloc(sizeof *c + strlen(name) + 1);
        if (!c) {
            pthread_mutex_unlock(&counts_mu);
            return 0;
        }
        strcpy(c->name, name);
        c->n = 0;
        c->next = counts;
        counts = c;
    }
    long n = ++c->n;
    pthread_mutex_unlock(&counts_mu);
    return n;
}

/* Sleeps us microseconds in slices of at most 20 ms; 1 as soon as the
 * engine cancels the load (spec->cancelled). */
static int load_nap(const mm_model_spec *spec, long us) {
    while (us > 0) {
        if (spec->cancelled && spec->cancelled(spec->progress_ctx))
            return 1;
        long step = us < 20000 ? us : 20000;
        sleep_us(step);
        us -= step;
    }
    return spec->cancelled && spec->cancelled(spec->progress_ctx);
}

/* CPU pretend weights: one touched anonymous mapping per model name,
 * reference counted across its workers (as real backends share weights). */
typedef struct host_block {
    struct host_block *next;
    long refs;
    void *p;
    size_t len;
    char name[];
} host_block;
static host_block *blocks; /* guarded by counts_mu */

static host_block *block_get(const char *name, long mb, int *created) {
    pthread_mutex_lock(&counts_mu);
    host_block *b = blocks;
    while (b && strcmp(b->name, name))
        b = b->next;
    *created = !b;
    if (b) {
        b->refs++;
        pthread_mutex_unlock(&counts_mu);
        return b;
    }
    b = mm_malloc(sizeof *b + strlen(name) + 1);
    void *p = NULL;
    size_t len = (size_t)mb << 20;
    if (b) {
        p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
            mm_free(b);
            b = NULL;
        }
    }
    if (!b) {
        pthread_mutex_unlock(&counts_mu);
        return NULL;
    }
    memset(p, 1, len);
    strcpy(b->name, name);
    b->refs = 1;
    b->p = p;
    b->len = len;
    b->next = blocks;
    blocks = b;
    pthread_mutex_unlock(&counts_mu);
    return b;
}

static void block_put(host_block *b) {
    if (!b)
        return;
    pthread_mutex_lock(&counts_mu);
    if (--b->refs == 0) {
        host_block **pp = &blocks;
        while (*pp != b)
            pp = &(*pp)->next;
        *pp = b->next;
        munmap(b->p, b->len);
        mm_free(b);
    }
    pthread_mutex_unlock(&counts_mu);
}

static int synth_estimate(const mm_model_spec *spec, const mm_device *dev, mm_footprint *fp,
                          char *err, size_t errlen) {
    (void)dev;
    synth_opts o;
    int rc = parse_opts(spec->model_name, &o, err, errlen);
    if (rc < 0)
        return rc;
    fp->weights_bytes = (uint64_t)o.mem_mb << 20;
    fp->activation_bytes = 0;
    return 0;
}

static int synth_load(const mm_model_spec *spec, const mm_device *dev, void **state, char *err,
                      size_t errlen) {
    synth_opts o;
    int rc = parse_opts(spec->model_name, &o, err, errlen);
    if (rc < 0)
        return rc;
    if (o.type != spec->task_type) {
        snprintf(err, errlen, "model serves %s tasks",
                 o.type == MM_TASK_EMBEDDING ? "embedding" : "text_generation");
        return MM_EINVAL;
    }
    if (o.download_mb > 0 && spec->progress) {
        /* A pretend download: load_ms spread over 20 progress steps. */
        uint64_t total = (uint64_t)o.download_mb << 20;
        int cancelled = 0;
        for (int step = 0; step <= 20 && !cancelled; step++) {
            spec->progress(spec->progress_ctx, total * (uint64_t)step / 20, total);
            if (step < 20)
                cancelled = load_nap(spec, o.load_ms * 1000 / 20);
        }
        if (cancelled) {
            snprintf(err, errlen, "download of \"%.200s\" was cancelled", spec->model_name);
            return MM_ECANCELLED;
        }
    } else if (load_nap(spec, o.load_ms * 1000)) {
        snprintf(err, errlen, "load of \"%.200s\" was cancelled", spec->model_name);
        return MM_ECANCELLED;
    }
    long nth = next_load_number(spec->model_name);
    if (o.fail_load || nth <= o.fail_loads) {
        snprintf(err, errlen, "synthetic load failure injected (load #%ld)", nth);
        return MM_ELOAD;
    }
    if (nth <= o.fail_loads + o.oom_loads) {
        snprintf(err, errlen, "synthetic out-of-memory at load injected (load #%ld)", nth);
        return MM_ENOMEM;
    }
    synth_state *s = mm_calloc(1, sizeof *s);
    if (!s)
        return MM_ENOMEM;
    s->o = o;
    if (!dev->is_gpu && o.mem_mb > 0 && !(s->block = block_get(spec->model_name, o.mem_mb, &s->owns_block))) {
        mm_free(s);
        snprintf(err, errlen, "cannot allocate the %ld MiB of host memory mem_mb asks for",
                 o.mem_mb);
        return MM_ENOMEM;
    }
    *state = s;
    return 0;
}

static uint64_t fnv1a(const char *s, size_t n, uint64_t salt) {
    uint64_t h = 1469598103934665603ULL ^ salt;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static uint64_t splitmix(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static void embed_one(const char *text, size_t len, float *out, long dim, long keep,
                      int normalize) {
    uint64_t x = fnv1a(text, len, 0);
    for (long j = 0; j < dim; j++)
        out[j] = (float)((splitmix(&x) >> 11) * (2.0 / 9007199254740992.0) - 1.0);
    double norm = 0;
    for (long j = 0; j < dim; j++)
        norm += (double)out[j] * out[j];
    norm = sqrt(norm);
    for (long j = 0; j < dim && normalize && norm > 0; j++)
        out[j] = (float)(out[j] / norm);
    if (keep < dim && normalize) { /* Matryoshka cut: re-normalise the prefix */
        double n2 = 0;
        for (long j = 0; j < keep; j++)
            n2 += (double)out[j] * out[j];
        n2 = sqrt(n2);
        for (long j = 0; j < keep && n2 > 0; j++)
            out[j] = (float)(out[j] / n2);
    }
}

static const char *const WORDS[] = {"alpha", "bravo",  "charlie", "delta", "echo",   "foxtrot",
                                    "golf",  "hotel",  "india",   "juliet", "kilo",  "lima",
                                    "mike",  "novem",  "oscar",   "papa"};

/* A synthetic model's "tokens": whitespace-separated words, plus 2 for
 * the special tokens a real tokenizer adds. */
static uint64_t count_words(const char *s, size_t n) {
    uint64_t w = 0;
    int in_word = 0;
    for (size_t i = 0; i < n; i++) {
        int sp = s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r';
        if (!sp && !in_word)
            w++;
        in_word = !sp;
    }
    return w + 2;
}

static void run_embedding(synth_state *s, mm_task_t *t, json_t *kw) {
    long dim = s->o.dim, keep = dim;
    int normalize = 1;
    json_t *v;
    if ((v = json_object_get(kw, "normalize")))
        normalize = json_is_true(v);
    if ((v = json_object_get(kw, "dimensions")) && json_integer_value(v) < dim)
        keep = (long)json_integer_value(v);
    float *full = mm_malloc((size_t)dim * sizeof(float));
    float *out = mm_task_result_embeddings(t, (size_t)keep);
    if (!full || !out) {
        mm_free(full);
        mm_task_fail(t, MM_ENOMEM, "out of memory for %zu embeddings", mm_task_n_items(t));
        return;
    }
    for (size_t i = 0; i < mm_task_n_items(t); i++) {
        size_t len;
        const char *text = mm_task_item(t, i, &len);
        embed_one(text, len, full, dim, keep, normalize);
        memcpy(out + i * keep, full, (size_t)keep * sizeof(float));
        mm_task_add_item_tokens(t, i, count_words(text, len));
    }
    mm_free(full);
}

static void run_generation(mm_task_t *t, json_t *kw, long word_us) {
    long n_words = 8, per_item = 1;
    json_t *v;
    if ((v = json_object_get(kw, "max_new_tokens")) && json_is_integer(v))
        n_words = (long)json_integer_value(v);
    else if ((v = json_object_get(kw, "max_length")) && json_is_integer(v))
        n_words = (long)json_integer_value(v);
    if ((v = json_object_get(kw, "num_return_sequences")) && json_is_integer(v) &&
        json_integer_value(v) > 0)
        per_item = (long)json_integer_value(v);
    if (n_words > 4096)
        n_words = 4096;
    /* stream=True (mm.stream): each word goes to the caller as it is "produced" */
    int stream = (v = json_object_get(kw, "stream")) && json_is_true(v) && per_item == 1;
    char *buf = mm_malloc((size_t)n_words * 10 + 16);
    if (!buf) {
        mm_task_fail(t, MM_ENOMEM, "out of memory generating text");
        return;
    }
    for (size_t i = 0; i < mm_task_n_items(t); i++) {
        size_t len;
        const char *text = mm_task_item(t, i, &len);
        mm_task_add_tokens(t, count_words(text, len), (uint64_t)(n_words * per_item));
        for (long r = 0; r < per_item; r++) {
            uint64_t x = fnv1a(text, len, (uint64_t)r);
            size_t off = 0;
            for (long w = 0; w < n_words; w++) {
                if (word_us > 0) {
                    if (mm_task_cancelled(t))
                        break; /* the engine completes it as cancelled */
                    sleep_us(word_us);
                }
                size_t at = off;
                off += (size_t)sprintf(buf + off, "%s%s", w ? " " : "", WORDS[splitmix(&x) % 16]);
                if (stream && mm_task_stream_text(t, i, buf + at, off - at) < 0) {
                    mm_task_fail(t, MM_ENOMEM, "out of memory streaming generated text");
                    mm_free(buf);
                    return;
                }
            }
            if (mm_task_result_text(t, i * per_item + r, per_item, buf, off) < 0) {
                mm_task_fail(t, MM_ENOMEM, "out of memory storing generated text");
                mm_free(buf);
                return;
            }
        }
    }
    mm_free(buf);
}

/* Words a generation task asks for (max_new_tokens, else max_length, else 8). */
static long gen_words(mm_task_t *t) {
    long n_words = 8;
    json_t *kw = json_loads(mm_task_params_json(t), 0, NULL), *v;
    if ((v = json_object_get(kw, "max_new_tokens")) && json_is_integer(v))
        n_words = (long)json_integer_value(v);
    else if ((v = json_object_get(kw, "max_length")) && json_is_integer(v))
        n_words = (long)json_integer_value(v);
    json_decref(kw);
    return n_words < 1 ? 1 : n_words > 4096 ? 4096 : n_words;
}

/* continuous=N: a running batch of at most N tasks, one word each per step;
 * a task joins between two steps and leaves (delivered) as soon as it has
 * all its words.  The words are those run_generation gives (streamed too). */
static void run_continuous(synth_state *s, mm_task_t **first, size_t n0) {
    typedef struct slot {
        mm_task_t *t;
        long words, done;
        uint64_t x;
        char *buf;
        size_t off;
        int stream;
    } slot;
    size_t cap = (size_t)s->o.continuous;
    slot *sl = mm_calloc(cap, sizeof *sl);
    mm_task_t **pending = mm_malloc((n0 ? n0 : 1) * sizeof *pending);
    size_t np = 0, pi = 0, live = 0;
    if (!sl || !pending) {
        for (size_t i = 0; i < n0; i++)
            mm_task_fail(first[i], MM_ENOMEM, "out of memory");
        mm_free(sl);
        mm_free(pending);
        return;
    }
    for (size_t i = 0; i < n0; i++)
        pending[np++] = first[i];
    for (;;) {
        /* fill free slots: the batch run() got first, then the queue */
        for (size_t k = 0; k < cap && live < cap; k++) {
            if (sl[k].t)
                continue;
            mm_task_t *t = NULL;
            if (pi < np)
                t = pending[pi++];
            else if (mm_worker_take_more(&t, 1) == 0)
                break;
            size_t len;
            const char *text = mm_task_item(t, 0, &len);
            json_t *kw = json_loads(mm_task_params_json(t), 0, NULL);
            json_t *v = json_object_get(kw, "num_return_sequences");
            int simple = mm_task_n_items(t) == 1 && (!v || json_integer_value(v) <= 1) &&
                         !strstr(text, "__fail__");
            if (!simple) { /* several items or sequences: the classic path, at once */
                if (strstr(text, "__fail__"))
                    mm_task_fail(t, MM_ETASK, "synthetic failure injected for item 0");
                else
                    run_generation(t, kw ? kw : json_object(), 0);
                json_decref(kw);
                mm_worker_finish(t);
                k--; /* the slot is still free */
                continue;
            }
            sl[k].stream = json_is_true(json_object_get(kw, "stream"));
            json_decref(kw);
            sl[k].t = t;
            sl[k].words = gen_words(t);
            sl[k].done = 0;
            sl[k].x = fnv1a(text, len, 0);
            sl[k].off = 0;
            sl[k].buf = mm_malloc((size_t)sl[k].words * 10 + 16);
            mm_task_add_tokens(t, count_words(text, len), (uint64_t)sl[k].words);
            live++;
            if (!sl[k].buf) {
                mm_task_fail(t, MM_ENOMEM, "out of memory generating text");
                sl[k].done = sl[k].words;
            }
        }
        mm_worker_kv_report(live, cap); /* slots stand for KV blocks here */
        if (live == 0)
            break;
        sleep_us(s->o.word_us);
        for (size_t k = 0; k < cap; k++) {
            slot *q = &sl[k];
            if (!q->t)
                continue;
            if (!mm_task_cancelled(q->t) && q->done < q->words && q->buf) {
                size_t at = q->off;
                q->off += (size_t)sprintf(q->buf + q->off, "%s%s", q->done ? " " : "",
                                          WORDS[splitmix(&q->x) % 16]);
                q->done++;
                if (q->stream && mm_task_stream_text(q->t, 0, q->buf + at, q->off - at) < 0) {
                    mm_task_fail(q->t, MM_ENOMEM, "out of memory streaming generated text");
                    q->done = q->words;
                }
                if (q->done == q->words && q->buf &&
                    mm_task_result_text(q->t, 0, 1, q->buf, q->off) < 0)
                    mm_task_fail(q->t, MM_ENOMEM, "out of memory storing generated text");
            }
            if (q->done == q->words || mm_task_cancelled(q->t)) {
                mm_task_t *t = q->t;
                mm_free(q->buf);
                memset(q, 0, sizeof *q);
                live--;
                mm_worker_kv_report(live, cap); /* before its completion is seen */
                mm_worker_finish(t); /* a cancelled one completes with its stop code */
            }
        }
    }
    mm_free(sl);
    mm_free(pending);
}

static void synth_run(void *state, mm_task_t **tasks, size_t n) {
    synth_state *s = state;
    if (s->o.type == MM_TASK_TEXT_GENERATION && s->o.continuous > 0) {
        run_continuous(s, tasks, n);
        return;
    }
    size_t items = 0;
    for (size_t k = 0; k < n; k++)
        items += mm_task_n_items(tasks[k]);
    sleep_us(s->o.batch_us + s->o.item_us * (long)items);
    if (s->o.oom_over > 0 && (long)items > s->o.oom_over) {
        for (size_t k = 0; k < n; k++)
            mm_task_fail(tasks[k], MM_ENOMEM,
                         "synthetic out of memory: a batch of %zu items (more than %ld)", items,
                         s->o.oom_over);
        return;
    }
    for (size_t k = 0; k < n; k++) {
        mm_task_t *t = tasks[k];
        int failed = 0;
        for (size_t i = 0; i < mm_task_n_items(t) && !failed; i++) {
            if (strstr(mm_task_item(t, i, NULL), "__fail__")) {
                mm_task_fail(t, MM_ETASK, "synthetic failure injected for item %zu", i);
                failed = 1;
            }
        }
        if (failed)
            continue;
        json_t *kw = json_loads(mm_task_params_json(t), 0, NULL);
        if (!kw)
            kw = json_object();
        if (s->o.type == MM_TASK_EMBEDDING)
            run_embedding(s, t, kw);
        else
            run_generation(t, kw, s->o.word_us);
        json_decref(kw);
    }
}

static void synth_unload(void *state) {
    synth_state *s = state;
    block_put(s->block);
    mm_free(s);
}

static int synth_info(void *state, mm_backend_info *info) {
    synth_state *s = state;
    info->max_batch_items = (size_t)s->o.max_items;
    info->max_batch_tokens = (size_t)s->o.max_tokens;
    info->memory_bytes = s->block && !s->owns_block ? 0 : (uint64_t)s->o.mem_mb << 20;
    info->embedding_dim = s->o.type == MM_TASK_EMBEDDING ? (size_t)s->o.dim : 0;
    snprintf(info->revision, sizeof info->revision, "synthetic");
    return 0;
}

const mm_backend_vtable mm_synthetic_backend = {
    .name = "synthetic",
    .accepts = synth_accepts,
    .check = synth_check,
    .load = synth_load,
    .run = synth_run,
    .unload = synth_unload,
    .info = synth_info,
    .cost = NULL,
    .embed_cacheable = 1,
    .estimate = synth_estimate,
};
