/* mm_task.c: task construction, input access and result storage.
 *
 * Inputs are copied at submit into one blob (one allocation for all the
 * texts plus two small index arrays), so a task with a thousand short texts
 * costs three allocations, and no worker ever touches a Python object.
 * Results are written by the one worker that runs the task, so the setters
 * need no lock; the engine publishes the task to the drainer through a
 * channel mutex, which orders those writes before the reads.
 */
#include "mm_task_internal.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

#include "mm_alloc.h"
#include "mm_channel.h"
#include "mm_err.h"

mm_task_t *mm__task_new(uint64_t id, mm_task_type type, mm_task_kind kind, const char *model_name,
                        const char *const *items, const size_t *lens, size_t n,
                        const char *params_json) {
    mm_task_t *t = mm_calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->id = id;
    t->type = type;
    t->kind = kind;
    t->status = MM_TS_NEW;
    t->n_items = n;
    t->model_name = mm_strdup(model_name ? model_name : "");
    t->params_json = mm_strdup(params_json && *params_json ? params_json : "{}");
    if (!t->model_name || !t->params_json)
        goto oom;
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += lens[i] + 1;
    t->item_off = mm_malloc((n ? n : 1) * sizeof(size_t));
    t->item_len = mm_malloc((n ? n : 1) * sizeof(size_t));
    t->blob = mm_malloc(total ? total : 1);
    if (!t->item_off || !t->item_len || !t->blob)
        goto oom;
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        t->item_off[i] = off;
        t->item_len[i] = lens[i];
        memcpy(t->blob + off, items[i], lens[i]);
        t->blob[off + lens[i]] = '\0';
        off += lens[i] + 1;
        t->total_bytes += lens[i];
    }
    return t;
oom:
    mm__task_destroy(t);
    return NULL;
}

void mm__task_free_results(mm_task_t *t) {
    mm_free(t->vecs);
    if (t->texts) {
        for (size_t i = 0; i < t->n_texts; i++)
            mm_free(t->texts[i]);
        mm_free(t->texts);
    }
    mm_free(t->text_lens);
    mm_free(t->extras);
    mm_free(t->err_msg);
}

void mm__task_destroy(mm_task_t *t) {
    if (!t)
        return;
    mm_free(t->item_off);
    mm_free(t->item_len);
    mm_free(t->blob);
    mm_free(t->params_json);
    mm_free(t->model_name);
    mm__task_free_results(t);
    mm_free(t->warning);
    mm_free(t->orig_index);
    mm_free(t->cached_vecs);
    mm_free(t->stop_msg);
    mm_free(t->item_tokens);
    mm_free(t->chunk_perm);
    mm_free(t);
}

uint64_t mm_task_id(const mm_task_t *t) { return t->id; }
mm_task_type mm_task_get_type(const mm_task_t *t) { return t->type; }
mm_task_kind mm_task_get_kind(const mm_task_t *t) { return t->kind; }
mm_task_status mm_task_get_status(const mm_task_t *t) { return t->status; }
size_t mm_task_n_items(const mm_task_t *t) { return t->n_items; }
size_t mm_task_total_bytes(const mm_task_t *t) { return t->total_bytes; }
const char *mm_task_params_json(const mm_task_t *t) { return t->params_json; }
int mm_task_single_input(const mm_task_t *t) { return t->single_input; }
const char *mm_task_model_name(const mm_task_t *t) { return t->model_name; }
unsigned mm_task_user_flags(const mm_task_t *t) { return t->user_flags; }
int mm_task_cancelled(const mm_task_t *t) { return atomic_load_explicit(&t->stop_code, memory_order_relaxed) != 0; }

const char *mm_task_item(const mm_task_t *t, size_t i, size_t *len) {
    if (i >= t->n_items)
        return NULL;
    if (len)
        *len = t->item_len[i];
    return t->blob + t->item_off[i];
}

float *mm_task_result_embeddings(mm_task_t *t, size_t dim) {
    mm_free(t->vecs);
    size_t count = t->n_items * dim;
    t->vecs = mm_calloc(count ? count : 1, sizeof(float));
    if (!t->vecs)
        return NULL;
    t->dim = dim;
    t->rkind = MM_RESULT_EMBEDDINGS;
    return t->vecs;
}

int mm_task_result_text(mm_task_t *t, size_t i, size_t per_item, const char *s, size_t len) {
    if (!t->texts) {
        if (per_item == 0)
            per_item = 1;
        size_t n = t->n_items * per_item;
        t->texts = mm_calloc(n ? n : 1, sizeof(char *));
        t->text_lens = mm_calloc(n ? n : 1, sizeof(size_t));
        if (!t->texts || !t->text_lens) {
            mm_free(t->texts);
            mm_free(t->text_lens);
            t->texts = NULL;
            t->text_lens = NULL;
            return MM_ENOMEM;
        }
        t->n_texts = n;
        t->per_item = per_item;
        t->rkind = MM_RESULT_TEXTS;
    }
    if (i >= t->n_texts)
        return MM_EINVAL;
    char *copy = mm_strndup(s, len);
    if (!copy)
        return MM_ENOMEM;
    mm_free(t->texts[i]);
    t->texts[i] = copy;
    t->text_lens[i] = len;
    return 0;
}

int mm__task_add_extra(mm_task_t *t, const char *key, const char *json_value) {
    size_t old = t->extras ? strlen(t->extras) : 0;
    size_t need = old + strlen(key) + strlen(json_value) + 8;
    char *s = mm_malloc(need);
    if (!s)
        return MM_ENOMEM;
    if (old)
        snprintf(s, need, "%.*s,\"%s\":%s}", (int)(old - 1), t->extras, key, json_value);
    else
        snprintf(s, need, "{\"%s\":%s}", key, json_value);
    mm_free(t->extras);
    t->extras = s;
    return 0;
}

int mm_task_stream_text(mm_task_t *t, size_t i, const char *s, size_t len) {
    if (!t->channel)
        return 0;
    const char *items[1] = {s ? s : ""};
    size_t lens[1] = {s ? len : 0};
    mm_task_t *p = mm__task_new(t->id, t->type, MM_KIND_PARTIAL, NULL, items, lens, 1, NULL);
    if (!p)
        return MM_ENOMEM;
    p->stream_index = i;
    p->status = MM_TS_DONE;
    p->channel = t->channel;
    mm__channel_ref(p->channel);
    mm__channel_push(p->channel, p);
    return 0;
}

size_t mm_task_stream_index(const mm_task_t *t) { return t->stream_index; }

int mm_task_result_extra(mm_task_t *t, const char *key, const char *json_value) {
    return mm__task_add_extra(t, key, json_value);
}

void mm_task_add_tokens(mm_task_t *t, uint64_t tokens_in, uint64_t tokens_out) {
    t->tokens_in += tokens_in;
    t->tokens_out += tokens_out;
}

void mm_task_add_item_tokens(mm_task_t *t, size_t i, uint64_t tokens) {
    t->tokens_in += tokens;
    if (i >= t->n_items)
        return;
    if (!t->item_tokens)
        t->item_tokens = mm_calloc(t->n_items, sizeof *t->item_tokens);
    if (t->item_tokens) /* out of memory: the cache just records no count */
        t->item_tokens[i] = tokens > UINT32_MAX ? UINT32_MAX : (uint32_t)tokens;
}

void mm_task_tokens(const mm_task_t *t, uint64_t *tokens_in, uint64_t *tokens_out) {
    if (tokens_in)
        *tokens_in = t->tokens_in;
    if (tokens_out)
        *tokens_out = t->tokens_out;
}

void mm_task_result_fields(mm_task_t *t) {
    if (t->rkind == MM_RESULT_NONE)
        t->rkind = MM_RESULT_FIELDS;
}

void mm__task_add_usage(mm_task_t *t) {
    uint64_t in = t->tokens_in + t->tokens_cached;
    if (!in && !t->tokens_out)
        return;
    char usage[128];
    snprintf(usage, sizeof usage,
             "{\"prompt_tokens\":%" PRIu64 ",\"completion_tokens\":%" PRIu64
             ",\"total_tokens\":%" PRIu64 "}",
             in, t->tokens_out, in + t->tokens_out);
    mm__task_add_extra(t, "usage", usage);
}

void mm__task_set_error(mm_task_t *t, int code, const char *msg) {
    t->err_code = code ? code : MM_EINTERNAL;
    mm_free(t->err_msg);
    t->err_msg = mm_strdup(msg ? msg : mm_strerror(t->err_code));
}

void mm_task_fail(mm_task_t *t, int code, const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    mm__task_set_error(t, code, buf);
}

mm_result_kind mm_task_result_kind(const mm_task_t *t) { return t->rkind; }

const float *mm_task_result_vectors(const mm_task_t *t, size_t *n, size_t *dim) {
    if (n)
        *n = t->orig_n ? t->orig_n : t->n_items;
    if (dim)
        *dim = t->dim;
    return t->vecs;
}

size_t mm_task_result_n_texts(const mm_task_t *t, size_t *per_item) {
    if (per_item)
        *per_item = t->per_item;
    return t->n_texts;
}

const char *mm_task_result_text_at(const mm_task_t *t, size_t i, size_t *len) {
    if (i >= t->n_texts || !t->texts[i]) {
        if (len)
            *len = 0;
        return "";
    }
    if (len)
        *len = t->text_lens[i];
    return t->texts[i];
}

const char *mm_task_result_extras(const mm_task_t *t) { return t->extras; }
int mm_task_error_code(const mm_task_t *t) { return t->err_code; }
const char *mm_task_error_message(const mm_task_t *t) { return t->err_msg ? t->err_msg : ""; }
const char *mm_task_device(const mm_task_t *t) { return t->device[0] ? t->device : NULL; }
const char *mm_task_warning(const mm_task_t *t) { return t->warning; }
