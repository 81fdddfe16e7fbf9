/* tok_util.c: the small machinery every stage of the tokenizer shares.
 *
 * The per-call arena (tk_ctx) with its longjmp-on-OOM contract, UTF-8
 * helpers, the Unicode predicates the reference library uses (Rust's
 * char::is_whitespace and friends, from the generated tables in
 * tok_unicode_tables.c so they agree with the reference's Unicode data), the
 * aligned-text builder, the immutable vocabulary map, and the one generic
 * "split by matches with a delimiter behavior" routine that most
 * pre-tokenizers reduce to.
 */
#include "tok_internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <utf8proc.h>

#include "mm_alloc.h"
#include "mm_err.h"

/* ---------------------------------------------------------------- arena */

#define TK_BLK_MIN (64 * 1024)

void tk_ctx_init(tk_ctx *cx, char *errbuf, size_t errlen) {
    cx->head = cx->first = NULL;
    cx->region = NULL;
    cx->errbuf = errbuf;
    cx->errlen = errlen;
}

void tk_ctx_reset(tk_ctx *cx) {
    tk_blk *b = cx->head;
    while (b && b != cx->first) {
        tk_blk *nx = b->next;
        mm_free(b);
        b = nx;
    }
    cx->head = cx->first;
    if (cx->first)
        cx->first->used = 0;
}

void tk_ctx_free(tk_ctx *cx) {
    tk_blk *b = cx->head;
    while (b) {
        tk_blk *nx = b->next;
        mm_free(b);
        b = nx;
    }
    cx->head = cx->first = NULL;
    if (cx->region)
        onig_region_free(cx->region, 1);
    cx->region = NULL;
}

void tk_errf(char *errbuf, size_t errlen, const char *fmt, ...) {
    if (!errbuf || !errlen)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(errbuf, errlen, fmt, ap);
    va_end(ap);
}

_Noreturn void tk_fail(tk_ctx *cx, int code, const char *fmt, ...) {
    if (cx->errbuf && cx->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(cx->errbuf, cx->errlen, fmt, ap);
        va_end(ap);
    }
    longjmp(cx->jb, code);
}

void *tk_alloc(tk_ctx *cx, size_t n) {
    n = (n + 15) & ~(size_t)15;
    tk_blk *b = cx->head;
    if (!b || b->cap - b->used < n) {
        size_t cap = n > TK_BLK_MIN ? n : TK_BLK_MIN;
        if (b && b->cap * 2 > cap && b->cap < (64u << 20))
            cap = b->cap * 2 > n ? b->cap * 2 : n;
        tk_blk *nb = mm_malloc(sizeof(tk_blk) + cap);
        if (!nb)
            tk_fail(cx, MM_ENOMEM, "out of memory while encoding");
        nb->cap = cap;
        nb->used = 0;
        nb->next = b;
        cx->head = nb;
        if (!cx->first) {
            cx->first = nb;
        }
        b = nb;
    }
    void *p = b->data + b->used;
    b->used += n;
    return p;
}

void *tk_grow(tk_ctx *cx, void *p, size_t old, size_t n) {
    void *q = tk_alloc(cx, n);
    if (old)
        memcpy(q, p, old);
    return q;
}

OnigRegion *tk_region(tk_ctx *cx) {
    if (!cx->region) {
        cx->region = onig_region_new();
        if (!cx->region)
            tk_fail(cx, MM_ENOMEM, "out of memory (regex region)");
    }
    return cx->region;
}

void tk_buf_put(tk_ctx *cx, tk_buf *b, const void *s, size_t n) {
    if (b->n + n + 1 > b->cap) {
        size_t nc = b->cap ? b->cap * 2 : 64;
        while (nc < b->n + n + 1)
            nc *= 2;
        b->p = tk_grow(cx, b->p, b->n, nc);
        b->cap = nc;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

void tk_buf_putc(tk_ctx *cx, tk_buf *b, uint32_t cp) {
    char tmp[4];
    tk_buf_put(cx, b, tmp, (size_t)tk_u8enc(cp, tmp));
}

/* ---------------------------------------------------------------- utf-8 */

int tk_u8enc(uint32_t c, char *o) {
    if (c < 0x80) { o[0] = (char)c; return 1; }
    if (c < 0x800) { o[0] = (char)(0xC0 | (c >> 6)); o[1] = (char)(0x80 | (c & 0x3F)); return 2; }
    if (c < 0x10000) {
        o[0] = (char)(0xE0 | (c >> 12));
        o[1] = (char)(0x80 | ((c >> 6) & 0x3F));
        o[2] = (char)(0x80 | (c & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (c >> 18));
    o[1] = (char)(0x80 | ((c >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((c >> 6) & 0x3F));
    o[3] = (char)(0x80 | (c & 0x3F));
    return 4;
}

size_t tk_u8check(const char *str, size_t n) {
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) { i++; continue; }
        size_t need;
        uint32_t cp, min;
        if (c >= 0xC2 && c <= 0xDF) { need = 1; cp = c & 0x1F; min = 0x80; }
        else if (c >= 0xE0 && c <= 0xEF) { need = 2; cp = c & 0x0F; min = 0x800; }
        else if (c >= 0xF0 && c <= 0xF4) { need = 3; cp = c & 0x07; min = 0x10000; }
        else return i;
        if (n - i <= need)
            return i;
        for (size_t k = 1; k <= need; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return i;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return i;
        i += need + 1;
    }
    return (size_t)-1;
}

/* ------------------------------------------------------------- unicode */

int tk_is_whitespace(uint32_t c) {
    if (c <= 0x20)
        return c == 0x20 || (c >= 0x09 && c <= 0x0D);
    if (c < 0x85)
        return 0;
    return c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 ||
           c == 0x2029 || c == 0x202F || c == 0x205F || c == 0x3000;
}

/* The reference's own character classes (tok_unicode_tables.c, generated
 * by gen/gen_unicode_tables.py): its Unicode data is older than utf8proc's,
 * and parity means agreeing with it on characters assigned since. */
extern const uint32_t tk_tab_punct[][2], tk_tab_control[][2], tk_tab_mn[][2], tk_tab_marks[][2],
    tk_tab_nfd_keep[][2], tk_tab_nfkd_keep[][2], tk_tab_word[][2], tk_tab_space[][2];
extern const size_t tk_tab_punct_n, tk_tab_control_n, tk_tab_mn_n, tk_tab_marks_n,
    tk_tab_nfd_keep_n, tk_tab_nfkd_keep_n, tk_tab_word_n, tk_tab_space_n;

static int in_ranges(const uint32_t (*t)[2], size_t n, uint32_t c) {
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c < t[mid][0])
            hi = mid;
        else if (c > t[mid][1])
            lo = mid + 1;
        else
            return 1;
    }
    return 0;
}

int tk_is_bert_punct(uint32_t c) {
    if (c < 0x80)
        return (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) ||
               (c >= 123 && c <= 126);
    return in_ranges(tk_tab_punct, tk_tab_punct_n, c);
}

int tk_is_mn(uint32_t c) { return c >= 0x300 && in_ranges(tk_tab_mn, tk_tab_mn_n, c); }

int tk_is_mark(uint32_t c) { return c >= 0x300 && in_ranges(tk_tab_marks, tk_tab_marks_n, c); }

int tk_is_control_bert(uint32_t c) {
    if (c < 0x80)
        return (c < 0x20 && c != '\t' && c != '\n' && c != '\r') || c == 0x7F;
    return in_ranges(tk_tab_control, tk_tab_control_n, c);
}

extern const uint32_t tk_tab_numeric[][2];
extern const size_t tk_tab_numeric_n;

int tk_is_numeric(uint32_t c) {
    if (c < 0x80)
        return c >= '0' && c <= '9';
    return in_ranges(tk_tab_numeric, tk_tab_numeric_n, c);
}

int tk_is_rust_word(uint32_t c) {
    if (c < 0x80)
        return (c >= '0' && c <= '9') || ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') || c == '_';
    return in_ranges(tk_tab_word, tk_tab_word_n, c);
}

int tk_is_rust_space(uint32_t c) {
    if (c < 0x80)
        return c == ' ' || (c >= 0x09 && c <= 0x0D);
    return in_ranges(tk_tab_space, tk_tab_space_n, c);
}

extern const uint32_t tk_tab_lower_fix[][2];
extern const size_t tk_tab_lower_fix_n;

uint32_t tk_lower_fix(uint32_t c) {
    size_t lo = 0, hi = tk_tab_lower_fix_n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (c < tk_tab_lower_fix[mid][0])
            hi = mid;
        else if (c > tk_tab_lower_fix[mid][0])
            lo = mid + 1;
        else
            return tk_tab_lower_fix[mid][1];
    }
    return 0;
}

extern const uint32_t tk_tab_ccc0[][2];
extern const size_t tk_tab_ccc0_n;

int tk_ccc0(uint32_t c) { return in_ranges(tk_tab_ccc0, tk_tab_ccc0_n, c); }

int tk_nf_keep(uint32_t c, int compat) {
    return compat ? in_ranges(tk_tab_nfkd_keep, tk_tab_nfkd_keep_n, c)
                  : in_ranges(tk_tab_nfd_keep, tk_tab_nfd_keep_n, c);
}

int tk_is_cjk(uint32_t c) {
    return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
           (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
           (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
           (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

/* --------------------------------------------------------- aligned text */

static void nbuf_reserve(tk_ctx *cx, tk_nbuf *b, size_t extra) {
    if (b->t.n + extra <= b->cap)
        return;
    size_t nc = b->cap ? b->cap * 2 : 32;
    while (nc < b->t.n + extra)
        nc *= 2;
    b->t.s = tk_grow(cx, b->t.s, b->t.n, nc);
    b->t.a = tk_grow(cx, b->t.a, b->t.n * 2 * sizeof(uint32_t), nc * 2 * sizeof(uint32_t));
    b->cap = nc;
}

void tk_nbuf_put(tk_ctx *cx, tk_nbuf *b, const char *s, size_t n, uint32_t os, uint32_t oe) {
    nbuf_reserve(cx, b, n);
    memcpy(b->t.s + b->t.n, s, n);
    for (size_t i = 0; i < n; i++) {
        b->t.a[2 * (b->t.n + i)] = os;
        b->t.a[2 * (b->t.n + i) + 1] = oe;
    }
    b->t.n += n;
}

void tk_nbuf_putc(tk_ctx *cx, tk_nbuf *b, uint32_t cp, uint32_t os, uint32_t oe) {
    char tmp[4];
    tk_nbuf_put(cx, b, tmp, (size_t)tk_u8enc(cp, tmp), os, oe);
}

tk_nstr tk_nstr_sub(tk_nstr s, size_t from, size_t to) {
    if (!s.s) {
        tk_nstr e = {NULL, NULL, 0};
        return e;
    }
    tk_nstr r = {s.s + from, s.a + 2 * from, to - from};
    return r;
}

/* ----------------------------------------------------------- vocab map */

static uint64_t hash_bytes(const char *k, size_t n) {
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)k[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}

static int map_rehash(tk_map *m, size_t nslots) {
    uint32_t *slots = mm_calloc(nslots, sizeof(uint32_t));
    if (!slots)
        return MM_ENOMEM;
    for (size_t i = 0; i < m->n; i++) {
        size_t h = hash_bytes(m->keys[i], m->klen[i]) & (nslots - 1);
        while (slots[h])
            h = (h + 1) & (nslots - 1);
        slots[h] = (uint32_t)i + 1;
    }
    mm_free(m->slots);
    m->slots = slots;
    m->mask = nslots - 1;
    return 0;
}

int tk_map_reserve(tk_map *m, size_t n) {
    if (n <= m->cap)
        return 0;
    const char **keys = mm_realloc((void *)m->keys, n * sizeof(char *));
    if (!keys)
        return MM_ENOMEM;
    m->keys = keys;
    uint32_t *kl = mm_realloc(m->klen, n * sizeof(uint32_t));
    if (!kl)
        return MM_ENOMEM;
    m->klen = kl;
    int32_t *vals = mm_realloc(m->vals, n * sizeof(int32_t));
    if (!vals)
        return MM_ENOMEM;
    m->vals = vals;
    m->cap = n;
    size_t slots = 128;
    while (slots < n * 2 + 2)
        slots *= 2;
    if (!m->slots || slots > m->mask + 1)
        return map_rehash(m, slots);
    return 0;
}

int tk_map_put(tk_map *m, const char *k, size_t n, int32_t v) {
    if (m->slots) {
        size_t h = hash_bytes(k, n) & m->mask;
        while (m->slots[h]) {
            uint32_t i = m->slots[h] - 1;
            if (m->klen[i] == n && memcmp(m->keys[i], k, n) == 0) {
                m->vals[i] = v;
                return 0;
            }
            h = (h + 1) & m->mask;
        }
    }
    if (m->n == m->cap) {
        size_t nc = m->cap ? m->cap * 2 : 64;
        const char **keys = mm_realloc((void *)m->keys, nc * sizeof(char *));
        if (!keys)
            return MM_ENOMEM;
        m->keys = keys;
        uint32_t *kl = mm_realloc(m->klen, nc * sizeof(uint32_t));
        if (!kl)
            return MM_ENOMEM;
        m->klen = kl;
        int32_t *vals = mm_realloc(m->vals, nc * sizeof(int32_t));
        if (!vals)
            return MM_ENOMEM;
        m->vals = vals;
        m->cap = nc;
    }
    char *kc = mm_strndup(k, n);
    if (!kc)
        return MM_ENOMEM;
    if (!m->slots || (m->n + 1) * 2 > m->mask + 1) {
        size_t ns = m->slots ? (m->mask + 1) * 2 : 128;
        int rc = map_rehash(m, ns);
        if (rc) {
            mm_free(kc);
            return rc;
        }
    }
    m->keys[m->n] = kc;
    m->klen[m->n] = (uint32_t)n;
    m->vals[m->n] = v;
    size_t h = hash_bytes(k, n) & m->mask;
    while (m->slots[h])
        h = (h + 1) & m->mask;
    m->slots[h] = (uint32_t)m->n + 1;
    m->n++;
    return 0;
}

int32_t tk_map_get(const tk_map *m, const char *k, size_t n) {
    if (!m->slots)
        return -1;
    size_t h = hash_bytes(k, n) & m->mask;
    for (;;) {
        uint32_t s = m->slots[h];
        if (!s)
            return -1;
        uint32_t i = s - 1;
        if (m->klen[i] == n && memcmp(m->keys[i], k, n) == 0)
            return m->vals[i];
        h = (h + 1) & m->mask;
    }
}

void tk_map_free(tk_map *m) {
    for (size_t i = 0; i < m->n; i++)
        mm_free((void *)m->keys[i]);
    mm_free((void *)m->keys);
    mm_free(m->klen);
    mm_free(m->vals);
    mm_free(m->slots);
    memset(m, 0, sizeof(*m));
}

/* ------------------------------------------------------------- pieces */

void tk_pieces_push(tk_ctx *cx, tk_pieces *p, tk_nstr t, int32_t id) {
    if (p->n == p->cap) {
        size_t nc = p->cap ? p->cap * 2 : 16;
        p->v = tk_grow(cx, p->v, p->n * sizeof(tk_piece), nc * sizeof(tk_piece));
        p->cap = nc;
    }
    p->v[p->n].t = t;
    p->v[p->n].id = id;
    p->n++;
}

void tk_tokens_push(tk_ctx *cx, tk_tokens *t, int32_t id, const char *tok, size_t toklen,
                    uint32_t os, uint32_t oe) {
    if (t->n == t->cap) {
        size_t nc = t->cap ? t->cap * 2 : 32;
        t->v = tk_grow(cx, t->v, t->n * sizeof(tk_token), nc * sizeof(tk_token));
        t->cap = nc;
    }
    tk_token *k = &t->v[t->n++];
    k->id = id;
    k->type_id = 0;
    k->os = os;
    k->oe = oe;
    k->tok = tok;
    k->toklen = (uint32_t)toklen;
    k->special = 0;
    k->seq = 0;
}

/* ------------------------------------------------------------- regex */

int tk_regex_compile(const char *pat, size_t n, regex_t **out, char *errbuf, size_t errlen) {
    OnigErrorInfo ei;
    regex_t *re = NULL;
    int r = onig_new(&re, (const UChar *)pat, (const UChar *)pat + n, ONIG_OPTION_NONE,
                     ONIG_ENCODING_UTF8, ONIG_SYNTAX_RUBY, &ei);
    if (r != ONIG_NORMAL) {
        UChar msg[ONIG_MAX_ERROR_MESSAGE_LEN];
        onig_error_code_to_str(msg, r, &ei);
        tk_errf(errbuf, errlen, "bad regex pattern: %s", (char *)msg);
        return r == ONIGERR_MEMORY ? MM_ENOMEM : MM_EFORMAT;
    }
    *out = re;
    return 0;
}

void tk_regex_each(tk_ctx *cx, regex_t *re, const char *s, size_t n, tk_match_cb cb, void *ud) {
    OnigRegion *rg = tk_region(cx);
    const UChar *str = (const UChar *)s, *end = str + n;
    size_t pos = 0;
    while (pos <= n) {
        int r = onig_search(re, str, end, str + pos, end, rg, ONIG_OPTION_NONE);
        if (r == ONIG_MISMATCH)
            break;
        if (r < 0)
            tk_fail(cx, MM_EINTERNAL, "regex search failed (%d)", r);
        size_t ms = (size_t)rg->beg[0], me = (size_t)rg->end[0];
        cb(cx, ud, ms, me);
        if (me == ms) {
            /* empty match: step one character forward */
            if (me >= n)
                break;
            pos = me + (size_t)tk_u8len((unsigned char)s[me]);
        } else {
            pos = me;
        }
    }
}

/* ------------------------------------------------------------- split */

/* ms holds nm (start, end) match ranges, sorted and disjoint.  Builds the
 * alternating (range, is_match) list and applies the delimiter behavior,
 * dropping empty results, as the reference's NormalizedString::split. */
void tk_split_matches(tk_ctx *cx, tk_pieces *out, tk_nstr s, const size_t *ms, size_t nm,
                      int behavior, int invert) {
    /* alternating list */
    size_t cap = 2 * nm + 1, k = 0;
    size_t *rs = tk_alloc(cx, cap * 2 * sizeof(size_t));
    char *im = tk_alloc(cx, cap);
    size_t prev = 0;
    for (size_t i = 0; i < nm; i++) {
        if (ms[2 * i] > prev) {
            rs[2 * k] = prev;
            rs[2 * k + 1] = ms[2 * i];
            im[k++] = 0;
        }
        rs[2 * k] = ms[2 * i];
        rs[2 * k + 1] = ms[2 * i + 1];
        im[k++] = 1;
        prev = ms[2 * i + 1];
    }
    if (prev < s.n) {
        rs[2 * k] = prev;
        rs[2 * k + 1] = s.n;
        im[k++] = 0;
    }
    if (invert)
        for (size_t i = 0; i < k; i++)
            im[i] = !im[i];

    size_t *o = tk_alloc(cx, (k + 1) * 2 * sizeof(size_t));
    size_t no = 0;
    switch (behavior) {
    case TK_B_REMOVED:
        for (size_t i = 0; i < k; i++)
            if (!im[i]) {
                o[2 * no] = rs[2 * i];
                o[2 * no + 1] = rs[2 * i + 1];
                no++;
            }
        break;
    case TK_B_ISOLATED:
        for (size_t i = 0; i < k; i++) {
            o[2 * no] = rs[2 * i];
            o[2 * no + 1] = rs[2 * i + 1];
            no++;
        }
        break;
    case TK_B_PREV: {
        int pm = 0;
        for (size_t i = 0; i < k; i++) {
            if (im[i] && !pm && no > 0) {
                o[2 * no - 1] = rs[2 * i + 1];
            } else {
                o[2 * no] = rs[2 * i];
                o[2 * no + 1] = rs[2 * i + 1];
                no++;
            }
            pm = im[i];
        }
        break;
    }
    case TK_B_NEXT: {
        /* walk backwards, then reverse */
        int pm = 0;
        for (size_t j = k; j-- > 0;) {
            if (im[j] && !pm && no > 0) {
                o[2 * (no - 1)] = rs[2 * j];
            } else {
                o[2 * no] = rs[2 * j];
                o[2 * no + 1] = rs[2 * j + 1];
                no++;
            }
            pm = im[j];
        }
        for (size_t i = 0; i < no / 2; i++) {
            size_t a0 = o[2 * i], a1 = o[2 * i + 1];
            o[2 * i] = o[2 * (no - 1 - i)];
            o[2 * i + 1] = o[2 * (no - 1 - i) + 1];
            o[2 * (no - 1 - i)] = a0;
            o[2 * (no - 1 - i) + 1] = a1;
        }
        break;
    }
    case TK_B_CONTIG: {
        int pm = 0;
        for (size_t i = 0; i < k; i++) {
            if (im[i] == pm && no > 0) {
                o[2 * no - 1] = rs[2 * i + 1];
            } else {
                o[2 * no] = rs[2 * i];
                o[2 * no + 1] = rs[2 * i + 1];
                no++;
            }
            pm = im[i];
        }
        break;
    }
    }
    for (size_t i = 0; i < no; i++)
        if (o[2 * i + 1] > o[2 * i])
            tk_pieces_push(cx, out, tk_nstr_sub(s, o[2 * i], o[2 * i + 1]), -1);
}

/* ------------------------------------------------------- byte level map */

uint32_t tk_byte2cp[256];
static int16_t cp2byte_tab[0x144];

void tk_bytelevel_init(void) {
    uint32_t n = 0;
    for (int b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
        tk_byte2cp[b] = printable ? (uint32_t)b : 256 + n++;
    }
    for (int i = 0; i < 0x144; i++)
        cp2byte_tab[i] = -1;
    for (int b = 0; b < 256; b++)
        cp2byte_tab[tk_byte2cp[b]] = (int16_t)b;
}

int tk_cp2byte(uint32_t cp) { return cp < 0x144 ? cp2byte_tab[cp] : -1; }

/* ------------------------------------------------------------- json */

/* JSON string unescape of s[0..n) into out (room for n bytes); returns the
 * length, or -1 on a bad escape or a lone surrogate. */
long tk_json_unescape(const char *s, size_t n, char *out) {
    size_t w = 0;
    for (size_t i = 0; i < n;) {
        char c = s[i];
        if (c != '\\') {
            out[w++] = c;
            i++;
            continue;
        }
        if (i + 1 >= n)
            return -1;
        char e = s[i + 1];
        i += 2;
        switch (e) {
        case '"': out[w++] = '"'; break;
        case '\\': out[w++] = '\\'; break;
        case '/': out[w++] = '/'; break;
        case 'b': out[w++] = '\b'; break;
        case 'f': out[w++] = '\f'; break;
        case 'n': out[w++] = '\n'; break;
        case 'r': out[w++] = '\r'; break;
        case 't': out[w++] = '\t'; break;
        case 'u': {
            uint32_t cp = 0;
            for (int k = 0; k < 2; k++) {
                if (i + 4 > n)
                    return -1;
                uint32_t v = 0;
                for (int q = 0; q < 4; q++) {
                    char h = s[i + (size_t)q];
                    int d = h >= '0' && h <= '9' ? h - '0' : h >= 'a' && h <= 'f' ? h - 'a' + 10
                          : h >= 'A' && h <= 'F' ? h - 'A' + 10 : -1;
                    if (d < 0)
                        return -1;
                    v = v * 16 + (uint32_t)d;
                }
                i += 4;
                if (k == 0) {
                    if (v >= 0xDC00 && v <= 0xDFFF)
                        return -1;
                    if (v < 0xD800 || v > 0xDBFF) {
                        cp = v;
                        break;
                    }
                    cp = v;
                    if (i + 2 > n || s[i] != '\\' || s[i + 1] != 'u')
                        return -1;
                    i += 2;
                } else {
                    if (v < 0xDC00 || v > 0xDFFF)
                        return -1;
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (v - 0xDC00);
                }
            }
            w += (size_t)tk_u8enc(cp, out + w);
            break;
        }
        default:
            return -1;
        }
    }
    return (long)w;
}
