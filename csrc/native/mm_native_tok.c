/* mm_native_tok.c: the native backend's adapter over the C tokenizer
 * (csrc/tok/mm_tok.h); see mm_native_tok.h for why it exists.
 *
 * Built against mm_tok when that layer is in the build (MM_HAVE_TOK); else
 * every load fails with a message saying the tokenizer layer is missing, so
 * the rest of the backend still builds and links.
 */
#include "mm_native_tok.h"

#include <stdio.h>
#include <string.h>

#include "mm_alloc.h"
#include "mm_err.h"

#ifdef MM_HAVE_TOK
#include "mm_tok.h"

struct mm__ntok {
    mm_tok_t *tok;
};

int mm__ntok_load(const char *dir, mm__ntok **out, char *err, size_t errlen) {
    *out = NULL;
    char path[4200];
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    mm__ntok *t = mm_calloc(1, sizeof *t);
    if (!t) {
        snprintf(err, errlen, "out of memory");
        return MM_ENOMEM;
    }
    char why[400] = "";
    int rc = mm_tok_new_from_file(path, &t->tok, why, sizeof why);
    if (rc != 0) {
        snprintf(err, errlen, "tokenizer %s: %s", path, why[0] ? why : mm_strerror(rc));
        mm_free(t);
        return rc == MM_EIO ? MM_ELOAD : rc;
    }
    *out = t;
    return 0;
}

void mm__ntok_free(mm__ntok *t) {
    if (!t)
        return;
    mm_tok_free(t->tok);
    mm_free(t);
}

int mm__ntok_encode(const mm__ntok *t, const char *text, size_t len, size_t max_len,
                    int64_t *ids, int64_t *type_ids, size_t cap, size_t *n, char *err,
                    size_t errlen) {
    return mm__ntok_encode_pair(t, text, len, NULL, 0, max_len, ids, type_ids, cap, n, err,
                                errlen);
}

static int encode_impl(const mm__ntok *t, const char *text, size_t len, const char *pair,
                       size_t pair_len, int add_special, size_t max_len, int64_t *ids,
                       int64_t *type_ids, size_t cap, size_t *n, char *err, size_t errlen);

int mm__ntok_encode_pair(const mm__ntok *t, const char *text, size_t len, const char *pair,
                         size_t pair_len, size_t max_len, int64_t *ids, int64_t *type_ids,
                         size_t cap, size_t *n, char *err, size_t errlen) {
    return encode_impl(t, text, len, pair, pair_len, 1, max_len, ids, type_ids, cap, n, err,
                       errlen);
}

int mm__ntok_encode_ex(const mm__ntok *t, const char *text, size_t len, int add_special,
                       size_t max_len, int64_t *ids, int64_t *type_ids, size_t cap, size_t *n,
                       char *err, size_t errlen) {
    return encode_impl(t, text, len, NULL, 0, add_special, max_len, ids, type_ids, cap, n, err,
                       errlen);
}

static int encode_impl(const mm__ntok *t, const char *text, size_t len, const char *pair,
                       size_t pair_len, int add_special, size_t max_len, int64_t *ids,
                       int64_t *type_ids, size_t cap, size_t *n, char *err, size_t errlen) {
    mm_tok_params p;
    mm_tok_default_params(t->tok, &p);
    p.add_special_tokens = add_special ? 1 : 0;
    p.max_length = max_len;
    mm_tok_encoding enc;
    memset(&enc, 0, sizeof enc);
    p.trunc_strategy = MM_TOK_TRUNC_LONGEST_FIRST;
    int rc = mm_tok_encode(t->tok, text, len, pair, pair_len, &p, &enc, err, errlen);
    if (rc != 0)
        return rc;
    size_t k = enc.len < cap ? enc.len : cap;
    for (size_t i = 0; i < k; i++) {
        ids[i] = enc.ids[i];
        type_ids[i] = enc.type_ids ? enc.type_ids[i] : 0;
    }
    *n = enc.len;
    mm_tok_encoding_clear(&enc);
    return 0;
}

int mm__ntok_prompt_len(const mm__ntok *t, const char *prompt, size_t *out, char *err,
                        size_t errlen) {
    mm_tok_params p;
    mm_tok_default_params(t->tok, &p);
    p.add_special_tokens = 1;
    mm_tok_encoding enc;
    memset(&enc, 0, sizeof enc);
    int rc = mm_tok_encode(t->tok, prompt, strlen(prompt), NULL, 0, &p, &enc, err, errlen);
    if (rc != 0)
        return rc;
    size_t n = enc.len;
    /* sentence-transformers drops a trailing special token (SEP / EOS). */
    if (n && enc.special_tokens_mask && enc.special_tokens_mask[n - 1])
        n--;
    *out = n;
    mm_tok_encoding_clear(&enc);
    return 0;
}

int mm__ntok_is_byte_piece(const mm__ntok *t, int32_t id) {
    size_t len = 0;
    const char *s = mm_tok_id_to_token_n(t->tok, id, &len);
    return s && len == 6 && s[0] == '<' && s[1] == '0' && s[2] == 'x' && s[5] == '>';
}

int mm__ntok_decode(const mm__ntok *t, const int32_t *ids, size_t n, char **out, size_t *out_len,
                    char *err, size_t errlen) {
    return mm_tok_decode(t->tok, ids, n, 1, out, out_len, err, errlen);
}

#else /* no tokenizer layer */

struct mm__ntok {
    int unused;
};

int mm__ntok_load(const char *dir, mm__ntok **out, char *err, size_t errlen) {
    (void)dir;
    *out = NULL;
    snprintf(err, errlen, "the C tokenizer (csrc/tok) is not built into this pymodelmgr");
    return MM_ELOAD;
}

void mm__ntok_free(mm__ntok *t) { (void)t; }

int mm__ntok_encode_ex(const mm__ntok *t, const char *text, size_t len, int add_special,
                       size_t max_len, int64_t *ids, int64_t *type_ids, size_t cap, size_t *n,
                       char *err, size_t errlen) {
    (void)add_special;
    return mm__ntok_encode(t, text, len, max_len, ids, type_ids, cap, n, err, errlen);
}

int mm__ntok_encode(const mm__ntok *t, const char *text, size_t len, size_t max_len,
                    int64_t *ids, int64_t *type_ids, size_t cap, size_t *n, char *err,
                    size_t errlen) {
    (void)t, (void)text, (void)len, (void)max_len, (void)ids, (void)type_ids, (void)cap;
    *n = 0;
    snprintf(err, errlen, "no tokenizer");
    return MM_EUNSUPPORTED;
}

int mm__ntok_encode_pair(const mm__ntok *t, const char *text, size_t len, const char *pair,
                         size_t pair_len, size_t max_len, int64_t *ids, int64_t *type_ids,
                         size_t cap, size_t *n, char *err, size_t errlen) {
    (void)pair, (void)pair_len;
    return mm__ntok_encode(t, text, len, max_len, ids, type_ids, cap, n, err, errlen);
}

int mm__ntok_prompt_len(const mm__ntok *t, const char *prompt, size_t *out, char *err,
                        size_t errlen) {
    (void)t, (void)prompt;
    *out = 0;
    snprintf(err, errlen, "no tokenizer");
    return MM_EUNSUPPORTED;
}

int mm__ntok_is_byte_piece(const mm__ntok *t, int32_t id) {
    (void)t, (void)id;
    return 0;
}

int mm__ntok_decode(const mm__ntok *t, const int32_t *ids, size_t n, char **out, size_t *out_len,
                    char *err, size_t errlen) {
    (void)t, (void)ids, (void)n;
    *out = NULL;
    *out_len = 0;
    snprintf(err, errlen, "no tokenizer");
    return MM_EUNSUPPORTED;
}
#endif
