/* tok_pretok.c: the pre-tokenizers of tokenizer.json.
 *
 * A pre-tokenizer turns the list of pieces (free text, or added tokens that
 * are already decided and pass through untouched) into finer pieces.  Almost
 * all of them are "find matches, then apply a delimiter behavior"
 * (tk_split_matches); Metaspace and ByteLevel also rewrite the text of each
 * piece, keeping the alignment to the original bytes.
 */
#include "tok_internal.h"

#include <string.h>

#include "mm_err.h"

typedef int (*char_pred)(const tk_pre *p, uint32_t c);

typedef struct {
    size_t *m;
    size_t n, cap;
} mvec;

static void mv_push(tk_ctx *cx, mvec *m, size_t s, size_t e) {
    if (m->n == m->cap) {
        size_t nc = m->cap ? m->cap * 2 : 32;
        m->m = tk_grow(cx, m->m, m->n * 2 * sizeof(size_t), nc * 2 * sizeof(size_t));
        m->cap = nc;
    }
    m->m[2 * m->n] = s;
    m->m[2 * m->n + 1] = e;
    m->n++;
}

static void mv_cb(tk_ctx *cx, void *ud, size_t s, size_t e) { mv_push(cx, ud, s, e); }

/* Each character satisfying pred is one match. */
static void split_pred(tk_ctx *cx, const tk_pre *p, tk_pieces *out, tk_nstr s, char_pred pred,
                       int behavior) {
    mvec m = {0};
    size_t i = 0;
    while (i < s.n) {
        int l;
        uint32_t c = tk_u8dec((const unsigned char *)s.s + i, &l);
        if (pred(p, c))
            mv_push(cx, &m, i, i + (size_t)l);
        i += (size_t)l;
    }
    if (!m.n && behavior != TK_B_REMOVED) {
        if (s.n)
            tk_pieces_push(cx, out, s, -1);
        return;
    }
    tk_split_matches(cx, out, s, m.m, m.n, behavior, 0);
}

static void split_regex(tk_ctx *cx, regex_t *re, tk_pieces *out, tk_nstr s, int behavior,
                        int invert) {
    mvec m = {0};
    if (s.n)
        tk_regex_each(cx, re, s.s, s.n, mv_cb, &m);
    tk_split_matches(cx, out, s, m.m, m.n, behavior, invert);
}

static void split_literal(tk_ctx *cx, const tk_pre *p, tk_pieces *out, tk_nstr s) {
    mvec m = {0};
    size_t i = 0, pl = p->pattern_len;
    if (pl) {
        while (i + pl <= s.n) {
            if (memcmp(s.s + i, p->pattern, pl) == 0) {
                mv_push(cx, &m, i, i + pl);
                i += pl;
            } else {
                i++;
            }
        }
    }
    tk_split_matches(cx, out, s, m.m, m.n, p->behavior, p->invert);
}

static int pr_ws(const tk_pre *p, uint32_t c) { (void)p; return tk_is_whitespace(c); }
static int pr_punct(const tk_pre *p, uint32_t c) { (void)p; return tk_is_bert_punct(c); }
static int pr_digit(const tk_pre *p, uint32_t c) { (void)p; return tk_is_numeric(c); }
static int pr_delim(const tk_pre *p, uint32_t c) { return c == p->delim; }

/* Metaspace: ' ' -> replacement, maybe prepend it, maybe split on it. */
static void metaspace(tk_ctx *cx, const tk_pre *p, tk_pieces *out, tk_nstr s) {
    char rep[4];
    size_t rl = (size_t)tk_u8enc(p->replacement, rep);
    tk_nbuf b = {0};
    int starts_with_rep = 0;
    if (s.n) {
        int l;
        uint32_t c0 = tk_u8dec((const unsigned char *)s.s, &l);
        starts_with_rep = c0 == ' ' || c0 == p->replacement;
        int prepend = 0;
        if (!starts_with_rep) {
            if (p->prepend_scheme == TK_PREPEND_ALWAYS)
                prepend = 1;
            else if (p->prepend_scheme == TK_PREPEND_FIRST && s.a[0] == 0)
                prepend = 1;
        }
        if (prepend)
            tk_nbuf_put(cx, &b, rep, rl, s.a[0], s.a[1]);
    }
    for (size_t i = 0; i < s.n; i++) {
        if (s.s[i] == ' ')
            tk_nbuf_put(cx, &b, rep, rl, s.a[2 * i], s.a[2 * i + 1]);
        else
            tk_nbuf_put(cx, &b, s.s + i, 1, s.a[2 * i], s.a[2 * i + 1]);
    }
    tk_nstr t = b.t;
    if (!p->split) {
        if (t.n)
            tk_pieces_push(cx, out, t, -1);
        return;
    }
    mvec m = {0};
    for (size_t i = 0; i + rl <= t.n;) {
        if (memcmp(t.s + i, rep, rl) == 0) {
            mv_push(cx, &m, i, i + rl);
            i += rl;
        } else {
            i++;
        }
    }
    tk_split_matches(cx, out, t, m.m, m.n, TK_B_NEXT, 0);
}

extern regex_t *tk_gpt2_re;

/* ByteLevel: optional prefix space, GPT-2 regex split, then every byte is
 * mapped to its printable stand-in character. */
static void bytelevel(tk_ctx *cx, const tk_pre *p, tk_pieces *out, tk_nstr s) {
    if (p->add_prefix_space && s.n && s.s[0] != ' ') {
        tk_nbuf b = {0};
        tk_nbuf_put(cx, &b, " ", 1, s.a[0], s.a[1]);
        for (size_t i = 0; i < s.n; i++)
            tk_nbuf_put(cx, &b, s.s + i, 1, s.a[2 * i], s.a[2 * i + 1]);
        s = b.t;
    }
    tk_pieces tmp = {0};
    if (p->use_regex)
        split_regex(cx, tk_gpt2_re, &tmp, s, TK_B_ISOLATED, 0);
    else if (s.n)
        tk_pieces_push(cx, &tmp, s, -1);
    for (size_t k = 0; k < tmp.n; k++) {
        tk_nstr t = tmp.v[k].t;
        tk_nbuf b = {0};
        for (size_t i = 0; i < t.n; i++)
            tk_nbuf_putc(cx, &b, tk_byte2cp[(unsigned char)t.s[i]], t.a[2 * i], t.a[2 * i + 1]);
        tk_pieces_push(cx, out, b.t, -1);
    }
}

/* Whitespace: the pieces of \\w+|[^\\w\\s]+ with the reference's (Rust regex)
 * classes -- runs of word characters, runs of other non-space characters,
 * spaces dropped. */
static void whitespace(tk_ctx *cx, tk_pieces *out, tk_nstr s) {
    size_t i = 0, start = 0;
    int cur = 0; /* 0 none, 1 word run, 2 other run */
    while (i < s.n) {
        int l;
        uint32_t c = tk_u8dec((const unsigned char *)s.s + i, &l);
        int k = tk_is_rust_word(c) ? 1 : tk_is_rust_space(c) ? 0 : 2;
        if (k != cur) {
            if (cur)
                tk_pieces_push(cx, out, tk_nstr_sub(s, start, i), -1);
            cur = k;
            start = i;
        }
        i += (size_t)l;
    }
    if (cur)
        tk_pieces_push(cx, out, tk_nstr_sub(s, start, s.n), -1);
}

static void pre_one(tk_ctx *cx, const tk_pre *p, tk_pieces *out, tk_nstr s) {
    switch (p->type) {
    case TK_P_BERT: {
        tk_pieces tmp = {0};
        split_pred(cx, p, &tmp, s, pr_ws, TK_B_REMOVED);
        for (size_t i = 0; i < tmp.n; i++)
            split_pred(cx, p, out, tmp.v[i].t, pr_punct, TK_B_ISOLATED);
        break;
    }
    case TK_P_WHITESPACE:
        whitespace(cx, out, s);
        break;
    case TK_P_WSSPLIT:
        split_pred(cx, p, out, s, pr_ws, TK_B_REMOVED);
        break;
    case TK_P_PUNCT:
        split_pred(cx, p, out, s, pr_punct, p->behavior);
        break;
    case TK_P_DIGITS:
        split_pred(cx, p, out, s, pr_digit, p->individual_digits ? TK_B_ISOLATED : TK_B_CONTIG);
        break;
    case TK_P_CHARDELIM:
        split_pred(cx, p, out, s, pr_delim, TK_B_REMOVED);
        break;
    case TK_P_SPLIT:
        if (p->re)
            split_regex(cx, p->re, out, s, p->behavior, p->invert);
        else
            split_literal(cx, p, out, s);
        break;
    case TK_P_METASPACE:
        metaspace(cx, p, out, s);
        break;
    case TK_P_BYTELEVEL:
        bytelevel(cx, p, out, s);
        break;
    default:
        tk_fail(cx, MM_EINTERNAL, "bad pre-tokenizer");
    }
}

void tk_pretokenize(tk_ctx *cx, const tk_pre *p, tk_pieces *ps) {
    if (!p)
        return;
    if (p->type == TK_P_SEQ) {
        for (size_t i = 0; i < p->nsub; i++)
            tk_pretokenize(cx, &p->sub[i], ps);
        return;
    }
    tk_pieces out = {0};
    for (size_t i = 0; i < ps->n; i++) {
        if (ps->v[i].id >= 0)
            tk_pieces_push(cx, &out, ps->v[i].t, ps->v[i].id);
        else
            pre_one(cx, p, &out, ps->v[i].t);
    }
    *ps = out;
}
