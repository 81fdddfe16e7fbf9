/* tok_bpe.c: byte-pair encoding.
 *
 * A word starts as one symbol per character (continuing_subword_prefix on
 * all but the first, end_of_word_suffix on the last; unknown characters
 * become byte-fallback tokens or one unknown, fused when fuse_unk).  Merges
 * are then applied lowest rank first and, among equal ranks, leftmost first,
 * using a binary heap of candidate pairs whose stale entries are skipped
 * when popped -- the order the reference library applies them in, which is
 * what makes the ids identical on words where merges compete.
 *
 * The merge table is an open-addressing map from the (left id, right id)
 * pair to (rank, merged id), built once at load time.
 */
#include "tok_internal.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>

#include "mm_alloc.h"
#include "mm_err.h"

int tk_load_vocab_object(tk_model *m, json_t *v, char *errbuf, size_t errlen);
int tk_bpe_load(tk_model *m, json_t *jm, char *errbuf, size_t errlen);

static uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

static inline uint64_t pair_key(int32_t a, int32_t b) {
    return ((uint64_t)(uint32_t)a << 32) | (uint32_t)b;
}

/* Keys are stored +1 so that 0 marks an empty slot. */
static const tk_merge *merge_get(const tk_model *m, int32_t a, int32_t b) {
    if (!m->mkeys)
        return NULL;
    uint64_t k = pair_key(a, b) + 1;
    size_t h = mix64(k) & m->mmask;
    for (;;) {
        uint64_t s = m->mkeys[h];
        if (s == k)
            return &m->mvals[h];
        if (!s)
            return NULL;
        h = (h + 1) & m->mmask;
    }
}

static void merge_put(tk_model *m, int32_t a, int32_t b, int32_t rank, int32_t nid) {
    uint64_t k = pair_key(a, b) + 1;
    size_t h = mix64(k) & m->mmask;
    while (m->mkeys[h] && m->mkeys[h] != k)
        h = (h + 1) & m->mmask;
    if (m->mkeys[h] == k)
        return; /* the first (lowest rank) definition wins */
    m->mkeys[h] = k;
    m->mvals[h].rank = rank;
    m->mvals[h].new_id = nid;
}

#define FAIL(code, ...)                                                                            \
    do {                                                                                           \
        tk_errf(errbuf, errlen, __VA_ARGS__);                                                      \
        return (code);                                                                             \
    } while (0)

static char *opt_str(json_t *o, const char *k) {
    json_t *v = json_object_get(o, k);
    if (!json_is_string(v) || json_string_length(v) == 0)
        return NULL;
    return mm_strndup(json_string_value(v), json_string_length(v));
}

int tk_bpe_load(tk_model *m, json_t *jm, char *errbuf, size_t errlen) {
    json_t *dropout = json_object_get(jm, "dropout");
    if (json_is_number(dropout) && json_number_value(dropout) > 0.0)
        FAIL(MM_EUNSUPPORTED, "BPE dropout is not supported (it makes encoding random)");
    int rc = tk_load_vocab_object(m, json_object_get(jm, "vocab"), errbuf, errlen);
    if (rc)
        return rc;
    m->prefix = opt_str(jm, "continuing_subword_prefix");
    m->prefix_len = m->prefix ? strlen(m->prefix) : 0;
    m->suffix = opt_str(jm, "end_of_word_suffix");
    m->suffix_len = m->suffix ? strlen(m->suffix) : 0;
    m->fuse_unk = json_is_true(json_object_get(jm, "fuse_unk"));
    m->byte_fallback = json_is_true(json_object_get(jm, "byte_fallback"));
    m->ignore_merges = json_is_true(json_object_get(jm, "ignore_merges"));
    json_t *unk = json_object_get(jm, "unk_token");
    if (json_is_string(unk)) {
        m->unk_id = tk_map_get(&m->vocab, json_string_value(unk), json_string_length(unk));
        if (m->unk_id < 0)
            FAIL(MM_EFORMAT, "BPE unk_token '%s' is not in the vocab", json_string_value(unk));
    }
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", b);
        m->byte_ids[b] = tk_map_get(&m->vocab, name, 6);
    }
    json_t *merges = json_object_get(jm, "merges");
    if (!merges || json_is_null(merges))
        return 0;
    if (!json_is_array(merges))
        FAIL(MM_EFORMAT, "BPE \"merges\" must be an array");
    size_t n = json_array_size(merges);
    size_t slots = 16;
    while (slots < n * 2 + 2)
        slots *= 2;
    m->mkeys = mm_calloc(slots, sizeof(uint64_t));
    m->mvals = mm_calloc(slots, sizeof(tk_merge));
    if (!m->mkeys || !m->mvals)
        return MM_ENOMEM;
    m->mmask = slots - 1;
    size_t cap = 256;
    char *buf = mm_malloc(cap);
    if (!buf)
        return MM_ENOMEM;
    rc = 0;
    for (size_t i = 0; i < n && !rc; i++) {
        json_t *e = json_array_get(merges, i);
        const char *a, *b;
        size_t al, bl;
        if (json_is_string(e)) {
            const char *s = json_string_value(e);
            const char *sp = memchr(s, ' ', json_string_length(e));
            if (!sp) {
                tk_errf(errbuf, errlen, "BPE merge %zu is not \"a b\"", i);
                rc = MM_EFORMAT;
                break;
            }
            a = s;
            al = (size_t)(sp - s);
            b = sp + 1;
            bl = json_string_length(e) - al - 1;
        } else if (json_is_array(e) && json_array_size(e) == 2 && json_is_string(json_array_get(e, 0)) &&
                   json_is_string(json_array_get(e, 1))) {
            a = json_string_value(json_array_get(e, 0));
            al = json_string_length(json_array_get(e, 0));
            b = json_string_value(json_array_get(e, 1));
            bl = json_string_length(json_array_get(e, 1));
        } else {
            tk_errf(errbuf, errlen, "BPE merge %zu must be \"a b\" or [a, b]", i);
            rc = MM_EFORMAT;
            break;
        }
        int32_t ia = tk_map_get(&m->vocab, a, al), ib = tk_map_get(&m->vocab, b, bl);
        if (ia < 0 || ib < 0) {
            tk_errf(errbuf, errlen, "BPE merge %zu uses a token that is not in the vocab", i);
            rc = MM_EFORMAT;
            break;
        }
        size_t skip = m->prefix_len <= bl ? m->prefix_len : bl;
        size_t nl = al + bl - skip;
        if (nl > cap) {
            char *nb = mm_realloc(buf, nl * 2);
            if (!nb) {
                rc = MM_ENOMEM;
                break;
            }
            buf = nb;
            cap = nl * 2;
        }
        memcpy(buf, a, al);
        memcpy(buf + al, b + skip, bl - skip);
        int32_t nid = tk_map_get(&m->vocab, buf, nl);
        if (nid < 0) {
            tk_errf(errbuf, errlen, "BPE merge %zu produces a token that is not in the vocab", i);
            rc = MM_EFORMAT;
            break;
        }
        merge_put(m, ia, ib, (int32_t)i, nid);
    }
    mm_free(buf);
    return rc;
}

/* ------------------------------------------------------------ encode */

typedef struct {
    int32_t id;
    int32_t prev, next;
    uint32_t start, len; /* bytes of the piece */
} sym_t;

typedef struct {
    int32_t rank;
    int32_t pos;
    int32_t new_id;
} cand_t;

static inline int cand_less(const cand_t *x, const cand_t *y) {
    return x->rank < y->rank || (x->rank == y->rank && x->pos < y->pos);
}

static void heap_push(cand_t *h, size_t *n, cand_t c) {
    size_t i = (*n)++;
    h[i] = c;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!cand_less(&h[i], &h[p]))
            break;
        cand_t t = h[i];
        h[i] = h[p];
        h[p] = t;
        i = p;
    }
}

static cand_t heap_pop(cand_t *h, size_t *n) {
    cand_t top = h[0];
    h[0] = h[--(*n)];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        if (l < *n && cand_less(&h[l], &h[m]))
            m = l;
        if (r < *n && cand_less(&h[r], &h[m]))
            m = r;
        if (m == i)
            break;
        cand_t t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
    return top;
}

static void add_sym(sym_t *sy, size_t *ns, int32_t id, uint32_t start, uint32_t len) {
    size_t i = (*ns)++;
    sy[i].id = id;
    sy[i].start = start;
    sy[i].len = len;
    sy[i].prev = (int32_t)i - 1;
    sy[i].next = (int32_t)i + 1;
}

void tk_bpe_tokenize(tk_ctx *cx, const tk_model *m, tk_nstr s, tk_tokens *out) {
    if (m->ignore_merges) {
        int32_t id = tk_map_get(&m->vocab, s.s, s.n);
        if (id >= 0) {
            size_t tl;
            const char *t = tk_model_id_to_token(m, id, &tl);
            tk_tokens_push(cx, out, id, t, tl, s.a[0], s.a[2 * (s.n - 1) + 1]);
            return;
        }
    }
    /* one symbol per char; at most n (bytes) symbols, byte fallback included */
    sym_t *sy = tk_alloc(cx, (s.n + 1) * sizeof(sym_t));
    size_t ns = 0;
    char stackbuf[64];
    size_t kcap = sizeof stackbuf;
    char *key = stackbuf;
    int32_t unk_id = -1;
    uint32_t unk_start = 0, unk_len = 0;
    for (size_t i = 0; i < s.n;) {
        size_t cl = (size_t)tk_u8len((unsigned char)s.s[i]);
        int first = i == 0, last = i + cl >= s.n;
        if (!m->prefix_len && !m->suffix_len) {
            /* the common case (GPT-2 style): look the character up in place */
            int32_t id0 = tk_map_get(&m->vocab, s.s + i, cl);
            if (id0 >= 0) {
                if (unk_id >= 0) {
                    add_sym(sy, &ns, unk_id, unk_start, unk_len);
                    unk_id = -1;
                }
                add_sym(sy, &ns, id0, (uint32_t)i, (uint32_t)cl);
                i += cl;
                continue;
            }
        }
        size_t kl = (first ? 0 : m->prefix_len) + cl + (last ? m->suffix_len : 0);
        if (kl > kcap) {
            kcap = kl * 2;
            key = tk_alloc(cx, kcap);
        }
        size_t p = 0;
        if (!first && m->prefix_len) {
            memcpy(key, m->prefix, m->prefix_len);
            p = m->prefix_len;
        }
        memcpy(key + p, s.s + i, cl);
        p += cl;
        if (last && m->suffix_len) {
            memcpy(key + p, m->suffix, m->suffix_len);
            p += m->suffix_len;
        }
        int32_t id = tk_map_get(&m->vocab, key, p);
        if (id >= 0) {
            if (unk_id >= 0) {
                add_sym(sy, &ns, unk_id, unk_start, unk_len);
                unk_id = -1;
            }
            add_sym(sy, &ns, id, (uint32_t)i, (uint32_t)cl);
        } else {
            int done = 0;
            if (m->byte_fallback) {
                int all = 1;
                for (size_t q = 0; q < p; q++)
                    if (m->byte_ids[(unsigned char)key[q]] < 0)
                        all = 0;
                if (all) {
                    if (unk_id >= 0) {
                        add_sym(sy, &ns, unk_id, unk_start, unk_len);
                        unk_id = -1;
                    }
                    /* p may exceed cl (prefix/suffix bytes); grow the array */
                    if (p > cl) {
                        sym_t *ny = tk_alloc(cx, (ns + p + (s.n - i) + 1) * sizeof(sym_t));
                        memcpy(ny, sy, ns * sizeof(sym_t));
                        sy = ny;
                    }
                    for (size_t q = 0; q < p; q++)
                        add_sym(sy, &ns, m->byte_ids[(unsigned char)key[q]], (uint32_t)i, 1);
                    /* byte tokens each "cover" one byte; keep offsets inside the char */
                    done = 1;
                }
            }
            if (!done && m->unk_id >= 0) {
                if (unk_id >= 0 && m->fuse_unk) {
                    unk_len += (uint32_t)cl;
                } else {
                    if (unk_id >= 0)
                        add_sym(sy, &ns, unk_id, unk_start, unk_len);
                    unk_id = m->unk_id;
                    unk_start = (uint32_t)i;
                    unk_len = (uint32_t)cl;
                }
            }
        }
        i += cl;
    }
    if (unk_id >= 0)
        add_sym(sy, &ns, unk_id, unk_start, unk_len);
    if (ns == 0)
        return;
    sy[ns - 1].next = -1;

    if (ns > 1 && m->mkeys) {
        cand_t *heap = tk_alloc(cx, (2 * ns + 4) * sizeof(cand_t));
        size_t hn = 0, hcap = 2 * ns + 4;
        for (size_t i = 0; i + 1 < ns; i++) {
            const tk_merge *mg = merge_get(m, sy[i].id, sy[i + 1].id);
            if (mg)
                heap_push(heap, &hn, (cand_t){mg->rank, (int32_t)i, mg->new_id});
        }
        while (hn) {
            cand_t top = heap_pop(heap, &hn);
            sym_t *cur = &sy[top.pos];
            if (cur->len == 0 || cur->next < 0)
                continue;
            sym_t *right = &sy[cur->next];
            const tk_merge *mg = merge_get(m, cur->id, right->id);
            if (!mg || mg->new_id != top.new_id)
                continue;
            cur->id = top.new_id;
            cur->len += right->len;
            right->len = 0;
            cur->next = right->next;
            if (right->next >= 0)
                sy[right->next].prev = top.pos;
            if (hn + 2 > hcap) {
                heap = tk_grow(cx, heap, hn * sizeof(cand_t), hcap * 2 * sizeof(cand_t));
                hcap *= 2;
            }
            if (cur->prev >= 0) {
                const tk_merge *pm = merge_get(m, sy[cur->prev].id, cur->id);
                if (pm)
                    heap_push(heap, &hn, (cand_t){pm->rank, cur->prev, pm->new_id});
            }
            if (cur->next >= 0) {
                const tk_merge *nm = merge_get(m, cur->id, sy[cur->next].id);
                if (nm)
                    heap_push(heap, &hn, (cand_t){nm->rank, top.pos, nm->new_id});
            }
        }
    }
    /* offsets are running sums of symbol lengths, as the reference computes them */
    size_t pos = 0;
    for (size_t i = 0; i < ns; i++) {
        if (sy[i].len == 0)
            continue;
        size_t tl;
        const char *t = tk_model_id_to_token(m, sy[i].id, &tl);
        size_t a = pos < s.n ? pos : s.n - 1, e = pos + sy[i].len;
        if (e > s.n)
            e = s.n;
        if (e <= a)
            e = a + 1;
        pos += sy[i].len;
        tk_tokens_push(cx, out, sy[i].id, t ? t : "", t ? tl : 0, s.a[2 * a], s.a[2 * (e - 1) + 1]);
    }
}
