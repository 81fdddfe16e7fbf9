/* tok_unigram.c: the Unigram model and the sentencepiece Precompiled
 * normalizer.
 *
 * Unigram: Viterbi over byte positions.  At each character boundary every
 * vocabulary piece that starts there (found with a byte trie) relaxes the
 * best path ending at its end; a character that no single piece covers gets
 * an unknown edge scored min_score - 10.  Ties keep the first path found
 * (strict >), pieces are tried shortest first, and consecutive unknowns are
 * fused into one token -- all as the reference does, because each of those
 * choices changes ids on real text.
 *
 * Precompiled: the base64 `precompiled_charsmap` is sentencepiece's
 * serialized normalizer: a little-endian u32 trie size, a darts double-array
 * trie of u32 units, then NUL-separated replacement strings.  It is applied
 * per grapheme cluster (whole cluster first when shorter than 6 bytes, else
 * per character), mirroring the reference's (admittedly odd) rule.  Every
 * trie access is bounds-checked: the blob comes from an untrusted file.
 */
#include "tok_internal.h"

#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <utf8proc.h>

#include "mm_alloc.h"
#include "mm_err.h"

int tk_model_add_piece(tk_model *m, const char *k, size_t kl, int32_t id);
int tk_unigram_load(tk_model *m, json_t *jm, char *errbuf, size_t errlen);
void tk_model_free_extra(tk_model *m);
int tk_precompiled_load(tk_norm *n, const char *b64, char *errbuf, size_t errlen);
void tk_precompiled_normalize(tk_ctx *cx, const tk_norm *n, tk_nstr *s);

/* ------------------------------------------------------------------ trie */

/* Byte trie: node 0 is the root; edges live in one open-addressing table
 * keyed by (node, byte). */
typedef struct {
    uint32_t key; /* (node << 8 | byte) + 1, 0 = empty; nodes < 2^24 */
    int32_t child;
} trie_slot;

struct tk_trie {
    trie_slot *slots; /* key and child side by side: one cache line per probe */
    size_t mask;
    int32_t *value; /* per node: piece id or -1 */
    size_t nnodes, capnodes;
};

static uint64_t mix(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

static int32_t trie_step(const struct tk_trie *t, int32_t node, unsigned char b) {
    uint32_t k = (((uint32_t)node << 8) | b) + 1;
    size_t h = mix(k) & t->mask;
    for (;;) {
        uint32_t s = t->slots[h].key;
        if (s == k)
            return t->slots[h].child;
        if (!s)
            return -1;
        h = (h + 1) & t->mask;
    }
}

static int trie_insert(struct tk_trie *t, const char *s, size_t n, int32_t id) {
    int32_t node = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char b = (unsigned char)s[i];
        int32_t c = trie_step(t, node, b);
        if (c < 0) {
            if (t->nnodes == t->capnodes) {
                size_t nc = t->capnodes * 2;
                int32_t *v = mm_realloc(t->value, nc * sizeof(int32_t));
                if (!v)
                    return MM_ENOMEM;
                t->value = v;
                t->capnodes = nc;
            }
            if (t->nnodes >= (1u << 24) - 1)
                return MM_EFORMAT;
            if ((t->nnodes + 1) * 2 > t->mask + 1) {
                /* grow the edge table */
                size_t ns = (t->mask + 1) * 2;
                trie_slot *nsl = mm_calloc(ns, sizeof(trie_slot));
                if (!nsl)
                    return MM_ENOMEM;
                for (size_t q = 0; q <= t->mask; q++) {
                    if (!t->slots[q].key)
                        continue;
                    size_t h2 = mix(t->slots[q].key) & (ns - 1);
                    while (nsl[h2].key)
                        h2 = (h2 + 1) & (ns - 1);
                    nsl[h2] = t->slots[q];
                }
                mm_free(t->slots);
                t->slots = nsl;
                t->mask = ns - 1;
            }
            c = (int32_t)t->nnodes++;
            t->value[c] = -1;
            uint32_t k = (((uint32_t)node << 8) | b) + 1;
            size_t h = mix(k) & t->mask;
            while (t->slots[h].key)
                h = (h + 1) & t->mask;
            t->slots[h].key = k;
            t->slots[h].child = c;
        }
        node = c;
    }
    t->value[node] = id; /* duplicates: the last id wins, as in the vocab map */
    return 0;
}

static void trie_free(struct tk_trie *t) {
    if (!t)
        return;
    mm_free(t->slots);
    mm_free(t->value);
    mm_free(t);
}

void tk_model_free_extra(tk_model *m) {
    trie_free(m->trie);
    m->trie = NULL;
}

#define FAIL(code, ...)                                                                            \
    do {                                                                                           \
        tk_errf(errbuf, errlen, __VA_ARGS__);                                                      \
        return (code);                                                                             \
    } while (0)

/* The reference reads scores with serde_json's default float parser, which
 * is not correctly rounded: it builds the decimal significand as a u64,
 * converts it to f64, then multiplies or divides by a power of ten (two
 * roundings).  Scores come out one ULP away from strtod's for about one in
 * seven entries, which is enough to flip Viterbi ties, so we redo that
 * computation from the shortest decimal form of the value (the form
 * tokenizer.json files are written in). */
static double pow10_tab[309];

static void init_pow10(void) {
    char b[16];
    for (int i = 0; i < 309; i++) {
        snprintf(b, sizeof b, "1e%d", i);
        pow10_tab[i] = strtod(b, NULL);
    }
}

static double from_parts(int neg, uint64_t sig, long exponent) {
    double f = (double)sig;
    for (;;) {
        long a = exponent < 0 ? -exponent : exponent;
        if (a <= 308) {
            if (exponent >= 0)
                f *= pow10_tab[a];
            else
                f /= pow10_tab[a];
            break;
        }
        if (f == 0.0)
            break;
        if (exponent >= 0)
            return neg ? -INFINITY : INFINITY;
        f /= 1e308;
        exponent += 308;
    }
    return neg ? -f : f;
}

/* serde_json's parse of the number text t[0..n) (already known valid JSON). */
static double serde_parse(const char *t, size_t n) {
    size_t i = 0;
    int neg = 0;
    if (i < n && t[i] == '-') {
        neg = 1;
        i++;
    }
    uint64_t sig = 0;
    long exponent = 0;
    int overflow = 0;
    while (i < n && t[i] >= '0' && t[i] <= '9') {
        uint64_t dgt = (uint64_t)(t[i] - '0');
        if (!overflow && (sig > UINT64_MAX / 10 || (sig == UINT64_MAX / 10 && dgt > UINT64_MAX % 10)))
            overflow = 1;
        if (overflow)
            exponent++;
        else
            sig = sig * 10 + dgt;
        i++;
    }
    int is_int = 1;
    if (i < n && t[i] == '.') {
        is_int = 0;
        i++;
        while (i < n && t[i] >= '0' && t[i] <= '9') {
            uint64_t dgt = (uint64_t)(t[i] - '0');
            if (!overflow && (sig > UINT64_MAX / 10 || (sig == UINT64_MAX / 10 && dgt > UINT64_MAX % 10)))
                overflow = 1;
            if (!overflow) {
                sig = sig * 10 + dgt;
                exponent--;
            }
            i++;
        }
    }
    if (i < n && (t[i] == 'e' || t[i] == 'E')) {
        is_int = 0;
        i++;
        int eneg = 0;
        if (i < n && (t[i] == '+' || t[i] == '-'))
            eneg = t[i++] == '-';
        long e = 0;
        while (i < n && t[i] >= '0' && t[i] <= '9') {
            if (e < 100000000)
                e = e * 10 + (t[i] - '0');
            i++;
        }
        exponent = eneg ? exponent - e : exponent + e;
    }
    if (is_int && !overflow)
        return neg ? -(double)sig : (double)sig;
    return from_parts(neg, sig, exponent);
}

static double serde_f64(double d) {
    if (!isfinite(d) || d == 0.0 || (d == floor(d) && fabs(d) < 9007199254740992.0))
        return d;
    /* Shortest digits: when 16 significant digits round-trip, they are the
     * shortest form padded with zeros (stripped below); else the 17-digit
     * rounding is the shortest form. */
    char buf[40];
    snprintf(buf, sizeof buf, "%.15e", d);
    if (strtod(buf, NULL) != d)
        snprintf(buf, sizeof buf, "%.16e", d);
    const char *p = buf;
    int neg = 0;
    if (*p == '-') {
        neg = 1;
        p++;
    }
    const char *ep = strchr(p, 'e');
    int e10 = ep ? atoi(ep + 1) : 0;
    const char *last = ep ? ep - 1 : p + strlen(p) - 1;
    while (last > p && (*last == '0' || *last == '.'))
        last--; /* drop trailing zeros */
    uint64_t sig = 0;
    int nd = 0;
    for (; p <= last; p++) {
        if (*p >= '0' && *p <= '9') {
            sig = sig * 10 + (uint64_t)(*p - '0');
            nd++;
        }
    }
    int exponent = e10 - (nd - 1);
    double f = (double)sig;
    for (;;) {
        int a = exponent < 0 ? -exponent : exponent;
        if (a <= 308) {
            if (exponent >= 0)
                f *= pow10_tab[a];
            else
                f /= pow10_tab[a];
            break;
        }
        if (f == 0.0)
            break;
        f /= 1e308;
        exponent += 308;
    }
    return neg ? -f : f;
}

int tk_unigram_load(tk_model *m, json_t *jm, char *errbuf, size_t errlen) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, init_pow10);
    json_t *v = json_object_get(jm, "vocab");
    if (!json_is_array(v))
        FAIL(MM_EFORMAT, "Unigram \"vocab\" must be an array of [piece, score]");
    /* the pieces: from the raw text tok_load kept aside, or from jansson */
    int raw = m->raw_ok && json_array_size(v) == 0;
    size_t n = raw ? m->nraw : json_array_size(v);
    if (n >= (1u << 22))
        FAIL(MM_EFORMAT, "Unigram vocab too large");
    const char **pp = mm_malloc((n ? n : 1) * sizeof(char *));
    uint32_t *pl = mm_malloc((n ? n : 1) * sizeof(uint32_t));
    char *ubuf = NULL;
    int rc = 0;
    if (!pp || !pl) {
        rc = MM_ENOMEM;
        goto out;
    }
    m->scores = mm_malloc((n ? n : 1) * sizeof(double));
    if (!m->scores) {
        rc = MM_ENOMEM;
        goto out;
    }
    if (raw) {
        size_t tot = 0;
        for (size_t i = 0; i < n; i++)
            tot += m->raw_piece_len[i];
        ubuf = mm_malloc(tot + 1);
        if (!ubuf) {
            rc = MM_ENOMEM;
            goto out;
        }
        size_t w = 0;
        for (size_t i = 0; i < n; i++) {
            long l = tk_json_unescape(m->raw_piece[i], m->raw_piece_len[i], ubuf + w);
            if (l < 0) {
                tk_errf(errbuf, errlen, "Unigram vocab entry %zu: bad string escape", i);
                rc = MM_EPARSE;
                goto out;
            }
            if (tk_u8check(ubuf + w, (size_t)l) != (size_t)-1) {
                tk_errf(errbuf, errlen, "Unigram vocab entry %zu is not valid UTF-8", i);
                rc = MM_EPARSE;
                goto out;
            }
            pp[i] = ubuf + w;
            pl[i] = (uint32_t)l;
            w += (size_t)l;
            m->scores[i] = serde_parse(m->raw_score[i], m->raw_score_len[i]);
        }
    } else {
        for (size_t i = 0; i < n; i++) {
            json_t *e = json_array_get(v, i);
            json_t *p = json_array_get(e, 0), *sc = json_array_get(e, 1);
            if (!json_is_array(e) || json_array_size(e) != 2 || !json_is_string(p) || !json_is_number(sc)) {
                tk_errf(errbuf, errlen, "Unigram vocab entry %zu must be [piece, score]", i);
                rc = MM_EFORMAT;
                goto out;
            }
            pp[i] = json_string_value(p);
            pl[i] = (uint32_t)json_string_length(p);
            m->scores[i] = serde_f64(json_number_value(sc));
        }
    }
    rc = tk_map_reserve(&m->vocab, n);
    if (rc)
        goto out;
    size_t total = 0;
    m->min_score = INFINITY;
    for (size_t i = 0; i < n; i++) {
        if (m->scores[i] < m->min_score)
            m->min_score = m->scores[i];
        total += pl[i];
        rc = tk_model_add_piece(m, pp[i], pl[i], (int32_t)i);
        if (rc)
            goto out;
    }
    json_t *unk = json_object_get(jm, "unk_id");
    if (json_is_integer(unk)) {
        if (json_integer_value(unk) < 0 || (size_t)json_integer_value(unk) >= n) {
            tk_errf(errbuf, errlen, "Unigram unk_id out of range");
            rc = MM_EFORMAT;
            goto out;
        }
        m->unk_id = (int32_t)json_integer_value(unk);
    }
    m->byte_fallback = json_is_true(json_object_get(jm, "byte_fallback"));
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        m->byte_ids[b] = tk_map_get(&m->vocab, name, 6);
    }
    struct tk_trie *t = mm_calloc(1, sizeof(*t));
    if (!t) {
        rc = MM_ENOMEM;
        goto out;
    }
    m->trie = t;
    size_t slots = 64;
    while (slots < n * 4 + 2) /* grown on demand: most pieces share prefixes */
        slots *= 2;
    t->slots = mm_calloc(slots, sizeof(trie_slot));
    t->capnodes = total + 1;
    t->value = mm_malloc(t->capnodes * sizeof(int32_t));
    if (!t->slots || !t->value) {
        rc = MM_ENOMEM;
        goto out;
    }
    t->mask = slots - 1;
    t->nnodes = 1;
    t->value[0] = -1;
    for (size_t i = 0; i < n; i++) {
        rc = trie_insert(t, pp[i], pl[i], (int32_t)i);
        if (rc == MM_EFORMAT)
            tk_errf(errbuf, errlen, "Unigram vocab too large (more than 2^24 trie nodes)");
        if (rc)
            goto out;
    }
out:
    mm_free((void *)pp);
    mm_free(pl);
    mm_free(ubuf);
    return rc;
}

/* ---------------------------------------------------------------- viterbi */

void tk_unigram_tokenize(tk_ctx *cx, const tk_model *m, tk_nstr s, tk_tokens *out) {
    size_t n = s.n;
    double *best = tk_alloc(cx, (n + 1) * sizeof(double));
    int32_t *from = tk_alloc(cx, (n + 1) * sizeof(int32_t));
    int32_t *pid = tk_alloc(cx, (n + 1) * sizeof(int32_t));
    for (size_t i = 0; i <= n; i++) {
        from[i] = -1;
        best[i] = 0.0;
        pid[i] = -1;
    }
    double unk_score = m->min_score - 10.0;
    const struct tk_trie *t = m->trie;
    for (size_t st = 0; st < n;) {
        size_t mb = (size_t)tk_u8len((unsigned char)s.s[st]);
        double base = best[st];
        int single = 0;
        int32_t node = 0;
        for (size_t k = st; k < n; k++) {
            node = trie_step(t, node, (unsigned char)s.s[k]);
            if (node < 0)
                break;
            int32_t id = t->value[node];
            if (id < 0)
                continue;
            size_t end = k + 1;
            double cand = m->scores[id] + base;
            if (from[end] < 0 || cand > best[end]) {
                best[end] = cand;
                from[end] = (int32_t)st;
                pid[end] = id;
            }
            if (end - st == mb)
                single = 1;
        }
        if (!single) {
            if (m->unk_id < 0)
                tk_fail(cx, MM_EINVAL, "Unigram: no piece covers the input and the model has no unk_id");
            size_t end = st + mb;
            double cand = unk_score + base;
            if (from[end] < 0 || cand > best[end]) {
                best[end] = cand;
                from[end] = (int32_t)st;
                pid[end] = m->unk_id;
            }
        }
        st += mb;
    }
    /* backtrack into (start, end, id) triples, fusing unknowns */
    size_t cnt = 0;
    size_t *seg = tk_alloc(cx, (n + 1) * 2 * sizeof(size_t));
    int32_t *sid = tk_alloc(cx, (n + 1) * sizeof(int32_t));
    size_t e = n;
    while (e > 0) {
        size_t st = (size_t)from[e];
        int32_t id = pid[e];
        if (id == m->unk_id && cnt > 0 && sid[cnt - 1] == m->unk_id) {
            seg[2 * (cnt - 1)] = st; /* extend the fused unknown leftwards */
        } else {
            seg[2 * cnt] = st;
            seg[2 * cnt + 1] = e;
            sid[cnt++] = id;
        }
        e = st;
    }
    for (size_t q = cnt; q-- > 0;) {
        size_t a = seg[2 * q], b = seg[2 * q + 1];
        int32_t id = sid[q];
        uint32_t os = s.a[2 * a], oe = s.a[2 * (b - 1) + 1];
        if (id == m->unk_id) {
            /* the piece string is the raw text; it may still be a vocab piece */
            int32_t real = tk_map_get(&m->vocab, s.s + a, b - a);
            if (real >= 0) {
                size_t tl;
                const char *tt = tk_model_id_to_token(m, real, &tl);
                tk_tokens_push(cx, out, real, tt, tl, os, oe);
                continue;
            }
            if (m->byte_fallback) {
                int all = 1;
                for (size_t k = a; k < b; k++)
                    if (m->byte_ids[(unsigned char)s.s[k]] < 0)
                        all = 0;
                if (all) {
                    for (size_t k = a; k < b; k++) {
                        int32_t bid = m->byte_ids[(unsigned char)s.s[k]];
                        size_t tl;
                        const char *tt = tk_model_id_to_token(m, bid, &tl);
                        tk_tokens_push(cx, out, bid, tt, tl, os, oe);
                    }
                    continue;
                }
            }
            char *raw = tk_alloc(cx, b - a + 1);
            memcpy(raw, s.s + a, b - a);
            raw[b - a] = 0;
            tk_tokens_push(cx, out, m->unk_id, raw, b - a, os, oe);
        } else {
            size_t tl;
            const char *tt = tk_model_id_to_token(m, id, &tl);
            tk_tokens_push(cx, out, id, tt, tl, os, oe);
        }
    }
}

/* ------------------------------------------------------------ precompiled */

static int b64val(int c) {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
}

int tk_precompiled_load(tk_norm *n, const char *b64, char *errbuf, size_t errlen) {
    size_t l = strlen(b64);
    unsigned char *out = mm_malloc(l / 4 * 3 + 4);
    if (!out)
        return MM_ENOMEM;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < l; i++) {
        if (b64[i] == '=')
            break;
        int v = b64val((unsigned char)b64[i]);
        if (v < 0) {
            mm_free(out);
            FAIL(MM_EFORMAT, "precompiled_charsmap is not valid base64");
        }
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (unsigned char)(acc >> bits);
        }
    }
    n->pc_blob = out;
    if (o < 4)
        FAIL(MM_EFORMAT, "precompiled_charsmap too short");
    uint32_t tsz = (uint32_t)out[0] | ((uint32_t)out[1] << 8) | ((uint32_t)out[2] << 16) | ((uint32_t)out[3] << 24);
    if (tsz > o - 4 || tsz % 4)
        FAIL(MM_EFORMAT, "precompiled_charsmap trie size is inconsistent");
    /* the blob is 4-aligned after the header only by luck; copy units out */
    uint32_t *units = mm_malloc(tsz ? tsz : 4);
    if (!units)
        return MM_ENOMEM;
    for (size_t i = 0; i < tsz / 4; i++) {
        const unsigned char *p = out + 4 + 4 * i;
        units[i] = (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
    }
    n->trie = units;
    n->trie_units = tsz / 4;
    n->pc_norm = (const char *)out + 4 + tsz;
    n->pc_norm_len = o - 4 - tsz;
    if (tk_u8check(n->pc_norm, n->pc_norm_len) != (size_t)-1)
        FAIL(MM_EFORMAT, "precompiled_charsmap replacement strings are not UTF-8");
    return 0;
}

/* First (shortest) match of a common-prefix search, as a replacement
 * string; NULL when none. */
static const char *pc_transform(const tk_norm *n, const char *s, size_t len, size_t *outlen) {
    const uint32_t *a = n->trie;
    size_t na = n->trie_units;
    if (!na)
        return NULL;
    size_t pos = 0;
    uint32_t u = a[0];
#define OFF(x) (((x) >> 10) << (((x) & (1u << 9)) >> 6))
    pos ^= OFF(u);
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == 0)
            break;
        pos ^= c;
        if (pos >= na)
            return NULL;
        u = a[pos];
        if ((u & ((1u << 31) | 0xFF)) != c)
            return NULL;
        pos ^= OFF(u);
        if (pos >= na)
            return NULL;
        if ((u >> 8) & 1) {
            size_t idx = a[pos] & ((1u << 31) - 1);
            if (idx >= n->pc_norm_len)
                return NULL;
            size_t e = idx;
            while (e < n->pc_norm_len && n->pc_norm[e])
                e++;
            *outlen = e - idx;
            return n->pc_norm + idx;
        }
    }
#undef OFF
    return NULL;
}

/* The reference builds a list of (char, change) pairs -- a replacement's
 * chars get change 0, extra chars +1, and a shorter replacement adds its
 * (negative) length difference to the *last pair of the list so far*, even
 * one from an earlier grapheme -- and then replays it over the input:
 * change <= 0 takes the alignment of the next input char and consumes
 * 1 - change chars, change > 0 copies the previous byte's alignment.  We
 * replay the same list so offsets come out identical, drift included (a
 * character deleted at the very start has no earlier pair to absorb it). */
typedef struct {
    uint32_t *cp;
    int32_t *chg;
    size_t n, cap;
} pc_list;

static void pc_push(tk_ctx *cx, pc_list *l, uint32_t c, int32_t chg) {
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 64;
        l->cp = tk_grow(cx, l->cp, l->n * sizeof(uint32_t), nc * sizeof(uint32_t));
        l->chg = tk_grow(cx, l->chg, l->n * sizeof(int32_t), nc * sizeof(int32_t));
        l->cap = nc;
    }
    l->cp[l->n] = c;
    l->chg[l->n++] = chg;
}

static size_t count_chars(const char *s, size_t n) {
    size_t c = 0;
    for (size_t i = 0; i < n; i++)
        c += ((unsigned char)s[i] & 0xC0) != 0x80;
    return c;
}

static void pc_replace(tk_ctx *cx, pc_list *l, size_t old_chars, const char *rep, size_t rl) {
    size_t newc = 0;
    for (size_t k = 0; k < rl;) {
        int len;
        uint32_t c = tk_u8dec((const unsigned char *)rep + k, &len);
        pc_push(cx, l, c, 0);
        newc++;
        k += (size_t)len;
    }
    if (newc > old_chars) {
        for (size_t q = 0; q < newc - old_chars; q++)
            l->chg[l->n - 1 - q] = 1;
    } else if (newc < old_chars && l->n > 0) {
        l->chg[l->n - 1] -= (int32_t)(old_chars - newc);
    }
}

void tk_precompiled_normalize(tk_ctx *cx, const tk_norm *n, tk_nstr *s) {
    if (!n->trie || !s->n)
        return;
    pc_list L = {0};
    int modified = 0;
    size_t i = 0;
    while (i < s->n) {
        /* one grapheme cluster [i, j) */
        int l;
        utf8proc_int32_t prev = (utf8proc_int32_t)tk_u8dec((const unsigned char *)s->s + i, &l);
        utf8proc_int32_t state = 0;
        size_t j = i + (size_t)l;
        while (j < s->n) {
            utf8proc_int32_t c = (utf8proc_int32_t)tk_u8dec((const unsigned char *)s->s + j, &l);
            if (utf8proc_grapheme_break_stateful(prev, c, &state))
                break;
            prev = c;
            j += (size_t)l;
        }
        size_t rl;
        const char *rep;
        if (j - i < 6 && (rep = pc_transform(n, s->s + i, j - i, &rl)) != NULL) {
            modified = 1;
            pc_replace(cx, &L, count_chars(s->s + i, j - i), rep, rl);
        } else {
            for (size_t k = i; k < j;) {
                int cl;
                uint32_t c = tk_u8dec((const unsigned char *)s->s + k, &cl);
                rep = pc_transform(n, s->s + k, (size_t)cl, &rl);
                if (rep) {
                    modified = 1;
                    pc_replace(cx, &L, 1, rep, rl);
                } else {
                    pc_push(cx, &L, c, 0);
                }
                k += (size_t)cl;
            }
        }
        i = j;
    }
    if (!modified)
        return;
    /* replay */
    tk_nbuf b = {0};
    size_t off = 0;
    for (size_t q = 0; q < L.n; q++) {
        uint32_t os, oe;
        if (L.chg[q] > 0) {
            size_t at = off ? off - 1 : 0;
            os = off ? s->a[2 * at] : 0;
            oe = off ? s->a[2 * at + 1] : 0;
        } else {
            size_t at = off < s->n ? off : s->n - 1;
            os = s->a[2 * at];
            oe = s->a[2 * at + 1];
            size_t consume = 1 + (size_t)(-L.chg[q]);
            while (consume-- > 0 && off < s->n)
                off += (size_t)tk_u8len((unsigned char)s->s[off]);
        }
        tk_nbuf_putc(cx, &b, L.cp[q], os, oe);
    }
    s->s = b.t.s;
    s->a = b.t.a;
    s->n = b.t.n;
}
