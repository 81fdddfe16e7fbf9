/* tok_decode.c: the decoders of tokenizer.json.
 *
 * Decoding runs a chain over a list of token strings (each decoder maps the
 * list to a new list, as the reference's decode_chain does) and the result
 * is their concatenation.  Strings live in the call's arena.  ByteLevel
 * turns the byte stand-in characters back into bytes and repairs invalid
 * UTF-8 the way Rust's from_utf8_lossy does (one U+FFFD per maximal invalid
 * subpart), so undecodable byte sequences come out identical.
 */
#include "tok_internal.h"

#include <string.h>

#include "mm_err.h"

static char *dupn(tk_ctx *cx, const char *s, size_t n) {
    char *d = tk_alloc(cx, n + 1);
    memcpy(d, s, n);
    d[n] = 0;
    return d;
}

/* Replace every occurrence of pat with rep (literal), returns new string. */
static size_t replace_all(tk_ctx *cx, const char *s, size_t n, const char *pat, size_t pl,
                          const char *rep, size_t rl, const char **out) {
    if (!pl || n < pl) {
        *out = s;
        return n;
    }
    tk_buf b = {0};
    size_t i = 0, last = 0;
    int any = 0;
    while (i + pl <= n) {
        if (memcmp(s + i, pat, pl) == 0) {
            tk_buf_put(cx, &b, s + last, i - last);
            tk_buf_put(cx, &b, rep, rl);
            i += pl;
            last = i;
            any = 1;
        } else {
            i++;
        }
    }
    if (!any) {
        *out = s;
        return n;
    }
    tk_buf_put(cx, &b, s + last, n - last);
    *out = b.p;
    return b.n;
}

static size_t cleanup(tk_ctx *cx, const char *s, size_t n, const char **out) {
    static const char *const rules[][2] = {
        {" .", "."},    {" ?", "?"},   {" !", "!"},   {" ,", ","},   {" ' ", "'"},
        {" n't", "n't"}, {" 'm", "'m"}, {" do not", " don't"}, {" 's", "'s"}, {" 've", "'ve"},
        {" 're", "'re"},
    };
    for (size_t r = 0; r < sizeof(rules) / sizeof(rules[0]); r++)
        n = replace_all(cx, s, n, rules[r][0], strlen(rules[r][0]), rules[r][1], strlen(rules[r][1]), &s);
    *out = s;
    return n;
}

/* Rust String::from_utf8_lossy. */
static void lossy(tk_ctx *cx, tk_buf *b, const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) {
            tk_buf_put(cx, b, s + i, 1);
            i++;
            continue;
        }
        size_t need = 0;
        unsigned lo = 0x80, hi = 0xBF;
        if (c >= 0xC2 && c <= 0xDF) need = 1;
        else if (c == 0xE0) { need = 2; lo = 0xA0; }
        else if (c >= 0xE1 && c <= 0xEC) need = 2;
        else if (c == 0xED) { need = 2; hi = 0x9F; }
        else if (c >= 0xEE && c <= 0xEF) need = 2;
        else if (c == 0xF0) { need = 3; lo = 0x90; }
        else if (c >= 0xF1 && c <= 0xF3) need = 3;
        else if (c == 0xF4) { need = 3; hi = 0x8F; }
        if (!need) {
            tk_buf_putc(cx, b, 0xFFFD);
            i++;
            continue;
        }
        size_t k = 1;
        int ok = 1;
        while (k <= need) {
            if (i + k >= n) { ok = 0; break; }
            unsigned d = s[i + k];
            unsigned l = k == 1 ? lo : 0x80, h = k == 1 ? hi : 0xBF;
            if (d < l || d > h) { ok = 0; break; }
            k++;
        }
        if (ok) {
            tk_buf_put(cx, b, s + i, need + 1);
            i += need + 1;
        } else {
            tk_buf_putc(cx, b, 0xFFFD);
            i += k;
        }
    }
}

static void set_list(tk_ctx *cx, tk_strs *t, size_t count) {
    t->s = tk_alloc(cx, (count ? count : 1) * sizeof(char *));
    t->n = tk_alloc(cx, (count ? count : 1) * sizeof(size_t));
    t->count = count;
}

static void dec_one(tk_ctx *cx, const tk_dec *d, tk_strs *t) {
    switch (d->type) {
    case TK_D_WORDPIECE: {
        size_t pl = strlen(d->prefix);
        for (size_t i = 0; i < t->count; i++) {
            const char *s = t->s[i];
            size_t n = t->n[i];
            if (i != 0) {
                if (n >= pl && memcmp(s, d->prefix, pl) == 0) {
                    s += pl;
                    n -= pl;
                } else {
                    char *x = tk_alloc(cx, n + 2);
                    x[0] = ' ';
                    memcpy(x + 1, s, n);
                    x[n + 1] = 0;
                    s = x;
                    n++;
                }
            }
            if (d->cleanup)
                n = cleanup(cx, s, n, &s);
            t->s[i] = s;
            t->n[i] = n;
        }
        break;
    }
    case TK_D_METASPACE: {
        for (size_t i = 0; i < t->count; i++) {
            tk_buf b = {0};
            const unsigned char *s = (const unsigned char *)t->s[i];
            size_t k = 0;
            while (k < t->n[i]) {
                int l;
                uint32_t c = tk_u8dec(s + k, &l);
                if (c == d->replacement) {
                    if (!(i == 0 && d->prepend_scheme != TK_PREPEND_NEVER))
                        tk_buf_put(cx, &b, " ", 1);
                } else {
                    tk_buf_put(cx, &b, s + k, (size_t)l);
                }
                k += (size_t)l;
            }
            t->s[i] = b.p ? b.p : "";
            t->n[i] = b.n;
        }
        break;
    }
    case TK_D_BYTELEVEL: {
        tk_buf raw = {0};
        for (size_t i = 0; i < t->count; i++) {
            const unsigned char *s = (const unsigned char *)t->s[i];
            size_t start = raw.n, k = 0;
            int ok = 1;
            while (k < t->n[i]) {
                int l;
                uint32_t c = tk_u8dec(s + k, &l);
                int by = tk_cp2byte(c);
                if (by < 0) {
                    ok = 0;
                    break;
                }
                unsigned char ch = (unsigned char)by;
                tk_buf_put(cx, &raw, &ch, 1);
                k += (size_t)l;
            }
            if (!ok) {
                raw.n = start;
                tk_buf_put(cx, &raw, s, t->n[i]);
            }
        }
        tk_buf out = {0};
        lossy(cx, &out, (const unsigned char *)raw.p, raw.n);
        set_list(cx, t, 1);
        t->s[0] = out.p ? out.p : "";
        t->n[0] = out.n;
        break;
    }
    case TK_D_BPE: {
        size_t sl = strlen(d->prefix);
        for (size_t i = 0; i < t->count; i++) {
            const char *rep = i + 1 == t->count ? "" : " ";
            t->n[i] = replace_all(cx, t->s[i], t->n[i], d->prefix, sl, rep, strlen(rep), &t->s[i]);
        }
        break;
    }
    case TK_D_BYTEFALLBACK: {
        tk_strs o;
        set_list(cx, &o, t->count);
        o.count = 0;
        tk_buf bytes = {0};
        size_t nbytes = 0;
        for (size_t i = 0; i <= t->count; i++) {
            int byte = -1;
            if (i < t->count && t->n[i] == 6 && memcmp(t->s[i], "<0x", 3) == 0 && t->s[i][5] == '>') {
                int v = 0, okh = 1;
                for (int q = 3; q < 5; q++) {
                    char c = t->s[i][q];
                    int h = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                          : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
                    if (h < 0) okh = 0;
                    v = v * 16 + h;
                }
                if (okh)
                    byte = v;
            }
            if (byte >= 0) {
                unsigned char ch = (unsigned char)byte;
                tk_buf_put(cx, &bytes, &ch, 1);
                nbytes++;
                continue;
            }
            if (nbytes) {
                if (tk_u8check(bytes.p, bytes.n) == (size_t)-1) {
                    o.s[o.count] = dupn(cx, bytes.p, bytes.n);
                    o.n[o.count++] = bytes.n;
                } else {
                    /* one U+FFFD per byte: grow the list if needed */
                    if (o.count + nbytes + (t->count - i) > t->count) {
                        size_t nc = o.count + nbytes + (t->count - i) + 1;
                        o.s = tk_grow(cx, (void *)o.s, o.count * sizeof(char *), nc * sizeof(char *));
                        o.n = tk_grow(cx, o.n, o.count * sizeof(size_t), nc * sizeof(size_t));
                    }
                    for (size_t q = 0; q < nbytes; q++) {
                        o.s[o.count] = "\xEF\xBF\xBD";
                        o.n[o.count++] = 3;
                    }
                }
                bytes.n = 0;
                nbytes = 0;
            }
            if (i < t->count) {
                o.s[o.count] = t->s[i];
                o.n[o.count++] = t->n[i];
            }
        }
        *t = o;
        break;
    }
    case TK_D_FUSE: {
        tk_buf b = {0};
        for (size_t i = 0; i < t->count; i++)
            tk_buf_put(cx, &b, t->s[i], t->n[i]);
        set_list(cx, t, 1);
        t->s[0] = b.p ? b.p : "";
        t->n[0] = b.n;
        break;
    }
    case TK_D_STRIP: {
        for (size_t i = 0; i < t->count; i++) {
            /* work on code points */
            const unsigned char *s = (const unsigned char *)t->s[i];
            size_t n = t->n[i], nc = 0;
            size_t *pos = tk_alloc(cx, (n + 1) * sizeof(size_t));
            uint32_t *cp = tk_alloc(cx, (n + 1) * sizeof(uint32_t));
            for (size_t k = 0; k < n;) {
                int l;
                cp[nc] = tk_u8dec(s + k, &l);
                pos[nc++] = k;
                k += (size_t)l;
            }
            pos[nc] = n;
            size_t a = 0, e = nc;
            for (size_t q = 0; q < (size_t)d->start && q < nc; q++) {
                if (cp[q] == d->strip_char) a = q + 1;
                else break;
            }
            for (size_t q = 0; q < (size_t)d->stop && q < nc; q++) {
                size_t idx = nc - q - 1;
                if (cp[idx] == d->strip_char) e = idx;
                else break;
            }
            if (e < a) e = a;
            t->s[i] = (const char *)s + pos[a];
            t->n[i] = pos[e] - pos[a];
        }
        break;
    }
    case TK_D_REPLACE: {
        size_t cl = strlen(d->content);
        for (size_t i = 0; i < t->count; i++) {
            if (d->re) {
                /* regex replace via the normalizer machinery */
                tk_norm n = {0};
                n.type = TK_N_REPLACE;
                n.re = d->re;
                n.content = d->content;
                n.content_len = cl;
                tk_nbuf b = {0};
                tk_nbuf_put(cx, &b, t->s[i], t->n[i], 0, 0);
                tk_nstr s = b.t;
                tk_normalize(cx, &n, &s);
                t->s[i] = s.s ? s.s : "";
                t->n[i] = s.n;
            } else {
                t->n[i] = replace_all(cx, t->s[i], t->n[i], d->pattern, strlen(d->pattern), d->content,
                                      cl, &t->s[i]);
            }
        }
        break;
    }
    case TK_D_CTC: {
        tk_strs o;
        set_list(cx, &o, t->count);
        o.count = 0;
        size_t pl = strlen(d->pad_token), wl = strlen(d->word_delim);
        for (size_t i = 0; i < t->count; i++) {
            if (i > 0 && t->n[i] == t->n[i - 1] && memcmp(t->s[i], t->s[i - 1], t->n[i]) == 0)
                continue;
            const char *s;
            size_t n = replace_all(cx, t->s[i], t->n[i], d->pad_token, pl, "", 0, &s);
            if (d->cleanup) {
                n = cleanup(cx, s, n, &s);
                n = replace_all(cx, s, n, d->word_delim, wl, " ", 1, &s);
            }
            if (n) {
                o.s[o.count] = s;
                o.n[o.count++] = n;
            }
        }
        *t = o;
        break;
    }
    case TK_D_SEQ:
        for (size_t i = 0; i < d->nsub; i++)
            dec_one(cx, &d->sub[i], t);
        break;
    }
}

void tk_decode_chain(tk_ctx *cx, const tk_dec *d, tk_strs *toks) {
    if (d)
        dec_one(cx, d, toks);
}
