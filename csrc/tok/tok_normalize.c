/* tok_normalize.c: the normalizers of tokenizer.json.
 *
 * Each normalizer rewrites one aligned string (tk_nstr) into a new one in
 * the call's arena, carrying every output byte's original range along, so
 * offsets survive any chain of normalizers.  Per-character rules follow the
 * reference library (Rust `tokenizers`): BertNormalizer does clean_text,
 * CJK padding, accent stripping (NFD + drop Mn) and full lowercasing in that
 * order; Unicode normal forms use utf8proc's per-character decomposition and
 * composition so every output character keeps the original range of the
 * character it came from.
 */
#include "tok_internal.h"

#include <string.h>
#include <utf8proc.h>

#include "mm_err.h"

/* Full lowercase of one code point (the only unconditional multi-char
 * mapping in SpecialCasing is U+0130). */
static int lower_full(uint32_t c, uint32_t out[3]) {
    if (c < 0x80) {
        out[0] = (c >= 'A' && c <= 'Z') ? c + 32 : c;
        return 1;
    }
    if (c == 0x130) {
        out[0] = 0x69;
        out[1] = 0x307;
        return 2;
    }
    out[0] = tk_lower_fix(c);
    if (!out[0])
        out[0] = (uint32_t)utf8proc_tolower((utf8proc_int32_t)c);
    return 1;
}

/* Replays a (char, change) list over s the way the reference's
 * NormalizedString::transform does: change <= 0 takes the range of the next
 * input char and consumes 1 - change chars; change > 0 is an insertion that
 * copies the range of the byte before the cursor. */
void tk_replay_changes(tk_ctx *cx, tk_nstr *s, const uint32_t *cp, const int32_t *chg, size_t n) {
    tk_nbuf b = {0};
    size_t off = 0;
    for (size_t q = 0; q < n; q++) {
        uint32_t os = 0, oe = 0;
        if (chg[q] > 0) {
            if (off) {
                os = s->a[2 * (off - 1)];
                oe = s->a[2 * (off - 1) + 1];
            }
        } else if (s->n) {
            size_t at = off < s->n ? off : s->n - 1;
            os = s->a[2 * at];
            oe = s->a[2 * at + 1];
            size_t consume = 1 + (size_t)(-chg[q]);
            while (consume-- > 0 && off < s->n)
                off += (size_t)tk_u8len((unsigned char)s->s[off]);
        }
        tk_nbuf_putc(cx, &b, cp[q], os, oe);
    }
    *s = b.t;
}

typedef int (*char_map_fn)(const tk_norm *n, uint32_t c, uint32_t out[8]);

/* Generic per-character rewrite: fn returns how many chars replace c. */
static void map_chars(tk_ctx *cx, const tk_norm *n, tk_nstr *s, char_map_fn fn) {
    tk_nbuf b = {0};
    size_t i = 0;
    while (i < s->n) {
        int l;
        uint32_t c = tk_u8dec((const unsigned char *)s->s + i, &l);
        uint32_t out[8];
        int k = fn(n, c, out);
        uint32_t os = s->a[2 * i], oe = s->a[2 * (i + (size_t)l - 1) + 1];
        for (int j = 0; j < k; j++)
            tk_nbuf_putc(cx, &b, out[j], os, oe);
        i += (size_t)l;
    }
    *s = b.t;
}

static int m_clean(const tk_norm *n, uint32_t c, uint32_t out[8]) {
    (void)n;
    if (c == 0 || c == 0xFFFD || tk_is_control_bert(c))
        return 0;
    out[0] = tk_is_whitespace(c) ? ' ' : c;
    return 1;
}

static int m_cjk(const tk_norm *n, uint32_t c, uint32_t out[8]) {
    (void)n;
    if (tk_is_cjk(c)) {
        out[0] = ' ';
        out[1] = c;
        out[2] = ' ';
        return 3;
    }
    out[0] = c;
    return 1;
}

static int m_lower(const tk_norm *n, uint32_t c, uint32_t out[8]) {
    (void)n;
    return lower_full(c, out);
}

static int m_drop_mn(const tk_norm *n, uint32_t c, uint32_t out[8]) {
    (void)n;
    if (tk_is_mn(c))
        return 0;
    out[0] = c;
    return 1;
}

/* The StripAccents normalizer drops every combining mark (M*), unlike
 * BertNormalizer's accent stripping, which drops only Mn. */
static int m_drop_marks(const tk_norm *n, uint32_t c, uint32_t out[8]) {
    (void)n;
    if (tk_is_mark(c))
        return 0;
    out[0] = c;
    return 1;
}

static int is_ascii_only(const tk_nstr *s) {
    for (size_t i = 0; i < s->n; i++)
        if ((unsigned char)s->s[i] >= 0x80)
            return 0;
    return 1;
}

static int ccc(uint32_t c) {
    if (c < 0x300)
        return 0;
    int k = utf8proc_get_property((utf8proc_int32_t)c)->combining_class;
    return k && tk_ccc0(c) ? 0 : k; /* marks newer than the reference's tables */
}

/* Canonical composition of a pair, or 0 when they do not compose. */
static uint32_t compose_pair(uint32_t a, uint32_t b) {
    if (b < 0x300 && !(b >= 0x1100 && b <= 0x11FF))
        return 0;
    utf8proc_int32_t buf[2] = {(utf8proc_int32_t)a, (utf8proc_int32_t)b};
    utf8proc_ssize_t r = utf8proc_normalize_utf32(buf, 2, UTF8PROC_COMPOSE | UTF8PROC_STABLE);
    if (r != 1 || tk_nf_keep((uint32_t)buf[0], 0))
        return 0; /* a composite the reference's tables do not know */
    return (uint32_t)buf[0];
}

/* Unicode normal forms.  Like the reference, we build a list of (char,
 * change) pairs -- each input character's first decomposed char has change
 * 0 and the rest +1; canonical reordering moves pairs, changes included;
 * composing B into starter A leaves A's pair with change(A) + change(B) - 1
 * -- and then replay it over the input (tk_replay_changes) to give every
 * output char the original range the reference gives it. */
static void unicode_nf(tk_ctx *cx, tk_nstr *s, int compose, int compat) {
    if (is_ascii_only(s))
        return;
    utf8proc_option_t dopt = UTF8PROC_DECOMPOSE | (compat ? UTF8PROC_COMPAT : 0);
    size_t cap = s->n + 16, n = 0;
    uint32_t *cp = tk_alloc(cx, cap * sizeof(uint32_t));
    int32_t *chg = tk_alloc(cx, cap * sizeof(int32_t));
    for (size_t i = 0; i < s->n;) {
        int l;
        uint32_t c = tk_u8dec((const unsigned char *)s->s + i, &l);
        utf8proc_int32_t tmp[32];
        utf8proc_ssize_t k;
        if (c < 0x80 || tk_nf_keep(c, compat)) {
            tmp[0] = (utf8proc_int32_t)c;
            k = 1;
        } else {
            int bc = 0;
            k = utf8proc_decompose_char((utf8proc_int32_t)c, tmp, 32, dopt, &bc);
            if (k < 0 || k > 32) {
                tmp[0] = (utf8proc_int32_t)c;
                k = 1;
            }
        }
        if (n + (size_t)k > cap) {
            size_t nc = (n + (size_t)k) * 2;
            cp = tk_grow(cx, cp, n * sizeof(uint32_t), nc * sizeof(uint32_t));
            chg = tk_grow(cx, chg, n * sizeof(int32_t), nc * sizeof(int32_t));
            cap = nc;
        }
        for (utf8proc_ssize_t q = 0; q < k; q++) {
            uint32_t d = (uint32_t)tmp[q];
            int32_t ch = q == 0 ? 0 : 1;
            /* canonical ordering: bubble a mark left past higher classes */
            size_t j = n++;
            int cc = ccc(d);
            while (cc && j > 0 && ccc(cp[j - 1]) > cc) {
                cp[j] = cp[j - 1];
                chg[j] = chg[j - 1];
                j--;
            }
            cp[j] = d;
            chg[j] = ch;
        }
        i += (size_t)l;
    }
    if (compose) {
        size_t w = 0;
        long starter = -1;
        int last = 0;
        for (size_t i = 0; i < n; i++) {
            uint32_t c = cp[i];
            int cc = ccc(c);
            if (starter >= 0) {
                int adjacent = (size_t)starter == w - 1;
                if (adjacent || (last != 0 && last < cc)) {
                    uint32_t m = compose_pair(cp[starter], c);
                    if (m) {
                        cp[starter] = m;
                        chg[starter] += chg[i] - 1;
                        continue;
                    }
                }
            }
            cp[w] = c;
            chg[w] = chg[i];
            if (cc == 0) {
                starter = (long)w;
                last = 0;
            } else {
                last = cc;
            }
            w++;
        }
        n = w;
    }
    tk_replay_changes(cx, s, cp, chg, n);
}

static void strip_ws(tk_nstr *s, int left, int right) {
    size_t a = 0, e = s->n;
    if (left) {
        while (a < e) {
            int l;
            uint32_t c = tk_u8dec((const unsigned char *)s->s + a, &l);
            if (!tk_is_whitespace(c))
                break;
            a += (size_t)l;
        }
    }
    if (right) {
        while (e > a) {
            size_t p = e - 1;
            while (p > a && ((unsigned char)s->s[p] & 0xC0) == 0x80)
                p--;
            int l;
            uint32_t c = tk_u8dec((const unsigned char *)s->s + p, &l);
            if (!tk_is_whitespace(c))
                break;
            e = p;
        }
    }
    *s = tk_nstr_sub(*s, a, e);
}

typedef struct {
    size_t *m;
    size_t n, cap;
} matches_t;

static void collect_match(tk_ctx *cx, void *ud, size_t s, size_t e) {
    matches_t *m = ud;
    if (m->n == m->cap) {
        size_t nc = m->cap ? m->cap * 2 : 16;
        m->m = tk_grow(cx, m->m, m->n * 2 * sizeof(size_t), nc * 2 * sizeof(size_t));
        m->cap = nc;
    }
    m->m[2 * m->n] = s;
    m->m[2 * m->n + 1] = e;
    m->n++;
}

/* Replace every match with content; new bytes take the alignment of the
 * whole replaced range. */
static void replace(tk_ctx *cx, const tk_norm *n, tk_nstr *s) {
    matches_t m = {0};
    if (n->re) {
        tk_regex_each(cx, n->re, s->s, s->n, collect_match, &m);
    } else if (n->pattern_len) {
        size_t i = 0;
        while (i + n->pattern_len <= s->n) {
            if (memcmp(s->s + i, n->pattern, n->pattern_len) == 0) {
                collect_match(cx, &m, i, i + n->pattern_len);
                i += n->pattern_len;
            } else {
                i++;
            }
        }
    }
    if (!m.n)
        return;
    tk_nbuf b = {0};
    size_t prev = 0;
    for (size_t k = 0; k < m.n; k++) {
        size_t ms = m.m[2 * k], me = m.m[2 * k + 1];
        if (ms > prev) {
            tk_nstr part = tk_nstr_sub(*s, prev, ms);
            for (size_t q = 0; q < part.n; q++)
                tk_nbuf_put(cx, &b, part.s + q, 1, part.a[2 * q], part.a[2 * q + 1]);
        }
        if (n->content_len) {
            uint32_t os, oe;
            if (me > ms) {
                /* the reference aligns inserted text with the last replaced char */
                os = s->a[2 * (me - 1)];
                oe = s->a[2 * (me - 1) + 1];
            } else {
                os = oe = ms < s->n ? s->a[2 * ms] : (s->n ? s->a[2 * (s->n - 1) + 1] : 0);
            }
            tk_nbuf_put(cx, &b, n->content, n->content_len, os, oe);
        }
        prev = me;
    }
    if (prev < s->n) {
        tk_nstr part = tk_nstr_sub(*s, prev, s->n);
        for (size_t q = 0; q < part.n; q++)
            tk_nbuf_put(cx, &b, part.s + q, 1, part.a[2 * q], part.a[2 * q + 1]);
    }
    *s = b.t;
}

void tk_precompiled_normalize(tk_ctx *cx, const tk_norm *n, tk_nstr *s);

void tk_normalize(tk_ctx *cx, const tk_norm *n, tk_nstr *s) {
    if (!n)
        return;
    switch (n->type) {
    case TK_N_BERT:
        if (n->clean_text)
            map_chars(cx, n, s, m_clean);
        if (n->chinese)
            map_chars(cx, n, s, m_cjk);
        if (n->strip_accents) {
            unicode_nf(cx, s, 0, 0);
            map_chars(cx, n, s, m_drop_mn);
        }
        if (n->lowercase)
            map_chars(cx, n, s, m_lower);
        break;
    case TK_N_LOWER:
        map_chars(cx, n, s, m_lower);
        break;
    case TK_N_NFC:
        unicode_nf(cx, s, 1, 0);
        break;
    case TK_N_NFD:
        unicode_nf(cx, s, 0, 0);
        break;
    case TK_N_NFKC:
        unicode_nf(cx, s, 1, 1);
        break;
    case TK_N_NFKD:
        unicode_nf(cx, s, 0, 1);
        break;
    case TK_N_STRIP_ACCENTS:
        map_chars(cx, n, s, m_drop_marks);
        break;
    case TK_N_STRIP:
        strip_ws(s, n->left, n->right);
        break;
    case TK_N_REPLACE:
        replace(cx, n, s);
        break;
    case TK_N_PREPEND:
        if (s->n) {
            tk_nbuf b = {0};
            tk_nbuf_put(cx, &b, n->content, n->content_len, s->a[0], s->a[1]);
            for (size_t q = 0; q < s->n; q++)
                tk_nbuf_put(cx, &b, s->s + q, 1, s->a[2 * q], s->a[2 * q + 1]);
            *s = b.t;
        }
        break;
    case TK_N_PRECOMPILED:
        tk_precompiled_normalize(cx, n, s);
        break;
    case TK_N_SEQ:
        for (size_t i = 0; i < n->nsub; i++)
            tk_normalize(cx, &n->sub[i], s);
        break;
    }
}
