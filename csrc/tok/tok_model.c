/* tok_model.c: WordPiece and WordLevel, and the dispatch to every model.
 *
 * A model turns one pre-tokenized piece into tokens.  WordPiece is greedy
 * longest-match-first from the left; non-initial pieces are looked up with
 * the continuing-subword prefix; if any position cannot be matched, or the
 * word has more than max_input_chars_per_word characters, the whole word
 * becomes one unknown token (the reference's rule, not a partial split).
 * The longest vocabulary entry bounds the search so long words stay linear.
 */
#include "tok_internal.h"

#include <string.h>

#include "mm_err.h"

void tk_bpe_tokenize(tk_ctx *cx, const tk_model *m, tk_nstr s, tk_tokens *out);
void tk_unigram_tokenize(tk_ctx *cx, const tk_model *m, tk_nstr s, tk_tokens *out);

const char *tk_model_id_to_token(const tk_model *m, int32_t id, size_t *len) {
    if (id < 0 || (size_t)id >= m->nids || !m->id2tok[id])
        return NULL;
    if (len)
        *len = m->id2len[id];
    return m->id2tok[id];
}

static void push_unk(tk_ctx *cx, const tk_model *m, tk_nstr s, tk_tokens *out) {
    if (m->unk_id < 0)
        tk_fail(cx, MM_EINVAL, "the model has no unknown token and the input has no match");
    size_t l = 0;
    const char *t = tk_model_id_to_token(m, m->unk_id, &l);
    tk_tokens_push(cx, out, m->unk_id, t ? t : "", l, s.a[0], s.a[2 * (s.n - 1) + 1]);
}

static void wordpiece(tk_ctx *cx, const tk_model *m, tk_nstr s, tk_tokens *out) {
    size_t nchars = 0;
    for (size_t i = 0; i < s.n; i++)
        nchars += ((unsigned char)s.s[i] & 0xC0) != 0x80;
    if (nchars > m->max_chars) {
        push_unk(cx, m, s, out);
        return;
    }
    size_t mark = out->n;
    char stackbuf[256];
    char *key = s.n + m->prefix_len <= sizeof(stackbuf) ? stackbuf : tk_alloc(cx, s.n + m->prefix_len);
    memcpy(key, m->prefix, m->prefix_len);
    size_t start = 0;
    while (start < s.n) {
        size_t pl = start ? m->prefix_len : 0;
        size_t end = s.n;
        if (end - start > m->max_tok_len) {
            end = start + m->max_tok_len;
            while (end > start && ((unsigned char)s.s[end] & 0xC0) == 0x80)
                end--;
        }
        int32_t id = -1;
        while (end > start) {
            memcpy(key + m->prefix_len, s.s + start, end - start);
            id = tk_map_get(&m->vocab, key + m->prefix_len - pl, pl + end - start);
            if (id >= 0)
                break;
            end--;
            while (end > start && ((unsigned char)s.s[end] & 0xC0) == 0x80)
                end--;
        }
        if (id < 0) {
            out->n = mark;
            push_unk(cx, m, s, out);
            return;
        }
        size_t tl = 0;
        const char *t = tk_model_id_to_token(m, id, &tl);
        tk_tokens_push(cx, out, id, t, tl, s.a[2 * start], s.a[2 * (end - 1) + 1]);
        start = end;
    }
}

static void wordlevel(tk_ctx *cx, const tk_model *m, tk_nstr s, tk_tokens *out) {
    int32_t id = tk_map_get(&m->vocab, s.s, s.n);
    if (id < 0) {
        push_unk(cx, m, s, out);
        return;
    }
    size_t tl = 0;
    const char *t = tk_model_id_to_token(m, id, &tl);
    tk_tokens_push(cx, out, id, t, tl, s.a[0], s.a[2 * (s.n - 1) + 1]);
}

void tk_model_tokenize(tk_ctx *cx, const tk_model *m, tk_nstr s, tk_tokens *out) {
    if (!s.n)
        return;
    switch (m->type) {
    case TK_M_WORDPIECE:
        wordpiece(cx, m, s, out);
        break;
    case TK_M_WORDLEVEL:
        wordlevel(cx, m, s, out);
        break;
    case TK_M_BPE:
        tk_bpe_tokenize(cx, m, s, out);
        break;
    case TK_M_UNIGRAM:
        tk_unigram_tokenize(cx, m, s, out);
        break;
    }
}
