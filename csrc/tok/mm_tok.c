/* mm_tok.c: the public tokenizer API and the encode pipeline.
 *
 * encode = split out added tokens on the raw text (non-normalized ones),
 * normalize the rest, split out normalized added tokens, pre-tokenize, run
 * the model on every piece, then truncate (caller's settings), apply the
 * post-processor template, and pad.  This is the order of the reference
 * library, and each step keeps byte offsets into the caller's text.
 *
 * Every call owns a tk_ctx arena; the tokenizer is only read.  Results are
 * copied out of the arena into mm_malloc'd arrays at the very end, so an
 * out-of-memory anywhere leaves the caller's encoding empty and nothing
 * leaked.
 */
#include "mm_tok.h"

#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mm_alloc.h"
#include "mm_err.h"
#include "tok_internal.h"

extern regex_t *tk_gpt2_re;

static pthread_once_t g_once = PTHREAD_ONCE_INIT;
static int g_init_rc;

static void global_init(void) {
    OnigEncoding enc[1] = {ONIG_ENCODING_UTF8};
    if (onig_initialize(enc, 1) != ONIG_NORMAL) {
        g_init_rc = MM_EINTERNAL;
        return;
    }
    tk_bytelevel_init();
    static const char gpt2[] =
        "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
    g_init_rc = tk_regex_compile(gpt2, sizeof(gpt2) - 1, &tk_gpt2_re, NULL, 0);
}

/* ------------------------------------------------------------- loading */

int mm_tok_new_from_json(const char *json, size_t len, mm_tok_t **out, char *errbuf,
                         size_t errlen) {
    if (!json || !out) {
        tk_errf(errbuf, errlen, "invalid argument");
        return MM_EINVAL;
    }
    *out = NULL;
    pthread_once(&g_once, global_init);
    if (g_init_rc) {
        tk_errf(errbuf, errlen, "regex engine failed to initialize");
        return g_init_rc;
    }
    mm_tok_t *tok = mm_calloc(1, sizeof(*tok));
    if (!tok) {
        tk_errf(errbuf, errlen, "out of memory");
        return MM_ENOMEM;
    }
    int rc = tk_load(tok, json, len, errbuf, errlen);
    if (rc) {
        if (rc == MM_ENOMEM && errbuf && errlen && !errbuf[0])
            tk_errf(errbuf, errlen, "out of memory");
        tk_free_parts(tok);
        mm_free(tok);
        return rc;
    }
    *out = tok;
    return 0;
}

/* The default pad id when tokenizer.json has no padding block: the
 * pad_token of special_tokens_map.json, else of tokenizer_config.json, next
 * to the file (a string or {"content": ...}).  Best effort: any problem
 * leaves the default as it was. */
static void pad_from_side_files(mm_tok_t *tok, const char *path) {
    static const char *names[] = {"special_tokens_map.json", "tokenizer_config.json"};
    const char *slash = strrchr(path, '/');
    size_t dl = slash ? (size_t)(slash - path + 1) : 0;
    for (size_t k = 0; k < 2; k++) {
        size_t nl = strlen(names[k]);
        char *p = mm_malloc(dl + nl + 1);
        if (!p)
            return;
        memcpy(p, path, dl);
        memcpy(p + dl, names[k], nl + 1);
        json_error_t je;
        json_t *root = json_load_file(p, 0, &je);
        mm_free(p);
        if (!root)
            continue;
        json_t *pt = json_object_get(root, "pad_token");
        if (json_is_object(pt))
            pt = json_object_get(pt, "content");
        int32_t id = json_is_string(pt) ? mm_tok_token_to_id(tok, json_string_value(pt), json_string_length(pt)) : -1;
        json_decref(root);
        if (id >= 0) {
            tok->default_pad_id = id;
            return;
        }
    }
}

int mm_tok_new_from_file(const char *path, mm_tok_t **out, char *errbuf, size_t errlen) {
    if (!path || !out) {
        tk_errf(errbuf, errlen, "invalid argument");
        return MM_EINVAL;
    }
    *out = NULL;
    if (errbuf && errlen)
        errbuf[0] = 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        tk_errf(errbuf, errlen, "cannot open %s", path);
        return MM_EIO;
    }
    size_t cap = 1 << 20, n = 0;
    char *buf = mm_malloc(cap);
    if (!buf) {
        fclose(f);
        tk_errf(errbuf, errlen, "out of memory");
        return MM_ENOMEM;
    }
    for (;;) {
        if (n == cap) {
            char *nb = mm_realloc(buf, cap * 2);
            if (!nb) {
                mm_free(buf);
                fclose(f);
                tk_errf(errbuf, errlen, "out of memory");
                return MM_ENOMEM;
            }
            buf = nb;
            cap *= 2;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0)
            break;
    }
    int err = ferror(f);
    fclose(f);
    if (err) {
        mm_free(buf);
        tk_errf(errbuf, errlen, "cannot read %s", path);
        return MM_EIO;
    }
    int rc = mm_tok_new_from_json(buf, n, out, errbuf, errlen);
    mm_free(buf);
    if (rc == 0 && !(*out)->has_pad)
        pad_from_side_files(*out, path);
    return rc;
}

void mm_tok_free(mm_tok_t *tok) {
    if (!tok)
        return;
    tk_free_parts(tok);
    mm_free(tok);
}

/* -------------------------------------------------------- lookups */

const char *mm_tok_id_to_token_n(const mm_tok_t *tok, int32_t id, size_t *len) {
    if (!tok)
        return NULL;
    if (id >= 0 && (size_t)id < tok->added_id_cap && tok->added_by_id_idx[id] >= 0) {
        /* the reference answers with the normalized form of a normalized
         * added token ("WORLD" under a Lowercase normalizer reads "world") */
        const tk_added *a = &tok->added[tok->added_by_id_idx[id]];
        if (len)
            *len = a->normalized ? a->norm_len : a->len;
        return a->normalized ? a->norm_content : a->content;
    }
    return tk_model_id_to_token(&tok->model, id, len);
}

const char *mm_tok_id_to_token(const mm_tok_t *tok, int32_t id) {
    return mm_tok_id_to_token_n(tok, id, NULL);
}

int32_t mm_tok_token_to_id(const mm_tok_t *tok, const char *s, size_t len) {
    if (!tok || !s)
        return -1;
    int32_t k = tk_map_get(&tok->added_map, s, len);
    if (k >= 0)
        return tok->added[k].id;
    return tk_map_get(&tok->model.vocab, s, len);
}

size_t mm_tok_vocab_size(const mm_tok_t *tok) { return tok ? tok->vocab_size : 0; }

static const tk_added *added_by_id(const mm_tok_t *tok, int32_t id) {
    if (id >= 0 && (size_t)id < tok->added_id_cap && tok->added_by_id_idx[id] >= 0)
        return &tok->added[tok->added_by_id_idx[id]];
    return NULL;
}

/* -------------------------------------------------------- params */

void mm_tok_default_params(const mm_tok_t *tok, mm_tok_params *p) {
    memset(p, 0, sizeof(*p));
    p->add_special_tokens = 1;
    p->trunc_strategy = MM_TOK_TRUNC_LONGEST_FIRST;
    p->trunc_side = MM_TOK_RIGHT;
    p->padding = MM_TOK_PAD_NONE;
    p->pad_side = MM_TOK_RIGHT;
    p->pad_id = tok ? tok->default_pad_id : 0;
    p->pad_type_id = 0;
}

/* Applies the file's truncation/padding blocks when asked to. */
static void effective_params(const mm_tok_t *tok, const mm_tok_params *in, mm_tok_params *p) {
    if (in)
        *p = *in;
    else
        mm_tok_default_params(tok, p);
    if (p->use_file_truncation && tok->has_trunc) {
        p->max_length = tok->file_max_length;
        p->trunc_strategy = tok->file_trunc_strategy;
        p->trunc_side = tok->file_trunc_side;
    }
    if (p->use_file_padding && tok->has_pad) {
        p->padding = tok->file_pad_kind;
        p->pad_length = tok->file_pad_length;
        p->pad_to_multiple_of = tok->file_pad_multiple;
        p->pad_side = tok->file_pad_side;
        p->pad_id = tok->file_pad_id;
        p->pad_type_id = tok->file_pad_type_id;
    }
}

/* -------------------------------------------------------- added tokens */

/* Rust regex \\w (the reference checks single_word with it). */
static int is_word_char(uint32_t c) { return tk_is_rust_word(c); }

static uint32_t last_char(const char *s, size_t n) {
    size_t p = n - 1;
    while (p > 0 && ((unsigned char)s[p] & 0xC0) == 0x80)
        p--;
    int l;
    return tk_u8dec((const unsigned char *)s + p, &l);
}

/* Splits s by the added tokens of one set (leftmost-longest, then the
 * single_word / lstrip / rstrip rules), appending to out. */
static void split_added(tk_ctx *cx, const mm_tok_t *tok, const tk_addset *set, tk_nstr s,
                        tk_pieces *out) {
    size_t start_off = 0;
    size_t i = 0;
    if (set->start[256] == 0) {
        tk_pieces_push(cx, out, s, -1);
        return;
    }
    while (i < s.n) {
        unsigned char b0 = (unsigned char)s.s[i];
        const tk_added *hit = NULL;
        size_t hl = 0;
        for (uint32_t k = set->start[b0]; k < set->start[b0 + 1]; k++) {
            const tk_added *a = &tok->added[set->idx[k]];
            const char *c = set->normalized ? a->norm_content : a->content;
            size_t cl = set->normalized ? a->norm_len : a->len;
            if (cl <= s.n - i && memcmp(s.s + i, c, cl) == 0) {
                hit = a;
                hl = cl;
                break;
            }
        }
        if (!hit) {
            i++;
            continue;
        }
        size_t ms = i, me = i + hl;
        i = me;
        if (hit->single_word) {
            int start_space = ms == 0 || !is_word_char(last_char(s.s, ms));
            int l;
            int stop_space = me == s.n || !is_word_char(tk_u8dec((const unsigned char *)s.s + me, &l));
            if (!start_space || !stop_space)
                continue;
        }
        if (hit->lstrip) {
            size_t ns = ms;
            while (ns > 0) {
                size_t p = ns - 1;
                while (p > 0 && ((unsigned char)s.s[p] & 0xC0) == 0x80)
                    p--;
                int l;
                if (!tk_is_whitespace(tk_u8dec((const unsigned char *)s.s + p, &l)))
                    break;
                ns = p;
            }
            ms = ns > start_off ? ns : start_off;
        }
        if (hit->rstrip) {
            while (me < s.n) {
                int l;
                if (!tk_is_whitespace(tk_u8dec((const unsigned char *)s.s + me, &l)))
                    break;
                me += (size_t)l;
            }
            i = me;
        }
        if (start_off < ms)
            tk_pieces_push(cx, out, tk_nstr_sub(s, start_off, ms), -1);
        tk_pieces_push(cx, out, tk_nstr_sub(s, ms, me), hit->id);
        start_off = me;
    }
    if (start_off < s.n || s.n == 0)
        tk_pieces_push(cx, out, tk_nstr_sub(s, start_off, s.n), -1);
}

/* -------------------------------------------------------- one sequence */

static void encode_seq(tk_ctx *cx, const mm_tok_t *tok, const char *text, size_t len, int seq,
                       tk_tokens *out) {
    tk_nstr s;
    s.s = (char *)text;
    s.n = len;
    s.a = tk_alloc(cx, (len ? len : 1) * 2 * sizeof(uint32_t));
    for (size_t i = 0; i < len;) {
        int l = tk_u8len((unsigned char)text[i]);
        for (int k = 0; k < l; k++) {
            s.a[2 * (i + (size_t)k)] = (uint32_t)i;
            s.a[2 * (i + (size_t)k) + 1] = (uint32_t)(i + (size_t)l);
        }
        i += (size_t)l;
    }
    tk_pieces raw = {0};
    split_added(cx, tok, &tok->set_raw, s, &raw);
    tk_pieces ps = {0};
    for (size_t i = 0; i < raw.n; i++) {
        if (raw.v[i].id >= 0) {
            tk_pieces_push(cx, &ps, raw.v[i].t, raw.v[i].id);
            continue;
        }
        tk_nstr t = raw.v[i].t;
        tk_normalize(cx, tok->norm, &t);
        split_added(cx, tok, &tok->set_norm, t, &ps);
    }
    tk_pretokenize(cx, tok->pre, &ps);
    size_t first = out->n;
    for (size_t i = 0; i < ps.n; i++) {
        tk_piece *p = &ps.v[i];
        if (p->id >= 0) {
            /* the token's string is the matched text (spaces eaten by lstrip/rstrip included) */
            uint32_t os = p->t.n ? p->t.a[0] : 0, oe = p->t.n ? p->t.a[2 * (p->t.n - 1) + 1] : 0;
            tk_tokens_push(cx, out, p->id, p->t.s, p->t.n, os, oe);
        } else {
            tk_model_tokenize(cx, &tok->model, p->t, out);
        }
    }
    for (size_t i = first; i < out->n; i++) {
        out->v[i].seq = (int8_t)seq;
        out->v[i].type_id = seq;
    }
}

/* -------------------------------------------------------- post-processing */

/* The processor that adds special tokens (template-like), if any. */
static const tk_post *template_of(const tk_post *p) {
    if (!p)
        return NULL;
    if (p->type == TK_PP_SEQ) {
        const tk_post *r = NULL;
        for (size_t i = 0; i < p->nsub; i++) {
            const tk_post *q = template_of(&p->sub[i]);
            if (q)
                r = q;
        }
        return r;
    }
    return p->type == TK_PP_BYTELEVEL ? NULL : p;
}

static const tk_post *bytelevel_of(const tk_post *p) {
    if (!p)
        return NULL;
    if (p->type == TK_PP_SEQ) {
        for (size_t i = 0; i < p->nsub; i++) {
            const tk_post *q = bytelevel_of(&p->sub[i]);
            if (q)
                return q;
        }
        return NULL;
    }
    if ((p->type == TK_PP_BYTELEVEL || p->type == TK_PP_ROBERTA) && p->trim_offsets)
        return p;
    return NULL;
}

static size_t n_added_tokens(const mm_tok_t *tok, int is_pair) {
    const tk_post *t = template_of(tok->post);
    if (!t)
        return 0;
    const tk_tpl_piece *v = is_pair ? t->pair : t->single;
    size_t n = is_pair ? t->npair : t->nsingle, c = 0;
    for (size_t i = 0; i < n; i++)
        if (!v[i].is_seq)
            c += v[i].nids;
    return c;
}

static void trunc_one(tk_tokens *t, size_t n, int side) {
    if (t->n <= n)
        return;
    if (side == MM_TOK_LEFT)
        memmove(t->v, t->v + (t->n - n), n * sizeof(tk_token));
    t->n = n;
}

static void truncate_pair(tk_ctx *cx, tk_tokens *a, tk_tokens *b, size_t max_length, int strategy,
                          int side) {
    size_t total = a->n + (b ? b->n : 0);
    if (max_length == 0) {
        a->n = 0;
        if (b)
            b->n = 0;
        return;
    }
    if (total <= max_length)
        return;
    size_t to_remove = total - max_length;
    if (strategy == MM_TOK_TRUNC_LONGEST_FIRST) {
        if (b) {
            size_t n1 = a->n, n2 = b->n;
            int swap = 0;
            if (n1 > n2) {
                swap = 1;
                size_t x = n1; n1 = n2; n2 = x;
            }
            if (n1 > max_length)
                n2 = n1;
            else
                n2 = n1 > max_length - n1 ? n1 : max_length - n1;
            if (n1 + n2 > max_length) {
                n1 = max_length / 2;
                n2 = n1 + max_length % 2;
            }
            if (swap) {
                size_t x = n1; n1 = n2; n2 = x;
            }
            trunc_one(a, n1, side);
            trunc_one(b, n2, side);
        } else {
            trunc_one(a, total - to_remove, side);
        }
        return;
    }
    tk_tokens *target = strategy == MM_TOK_TRUNC_ONLY_FIRST ? a : b;
    if (!target)
        tk_fail(cx, MM_EINVAL, "truncation: only_second needs a pair");
    if (target->n > to_remove)
        trunc_one(target, target->n - to_remove, side);
    else
        tk_fail(cx, MM_EINVAL, "truncation: the sequence to truncate is too short for max_length %zu",
                max_length);
}

/* Moves a byte offset by n characters of text (forwards or backwards). */
static uint32_t walk_chars(const char *text, uint32_t pos, uint32_t limit, size_t n, int back) {
    while (n-- > 0) {
        if (back) {
            if (pos <= limit)
                break;
            pos--;
            while (pos > limit && ((unsigned char)text[pos] & 0xC0) == 0x80)
                pos--;
        } else {
            if (pos >= limit)
                break;
            pos += (uint32_t)tk_u8len((unsigned char)text[pos]);
        }
    }
    return pos;
}

/* ByteLevel trim_offsets: drop leading/trailing spaces from offsets.  The
 * reference counts characters, so the offsets move by characters of the
 * original text. */
static void trim_offsets(tk_tokens *t, int add_prefix_space, const char *text) {
    for (size_t i = 0; i < t->n; i++) {
        tk_token *k = &t->v[i];
        if (k->special)
            continue;
        const unsigned char *s = (const unsigned char *)k->tok;
        size_t n = k->toklen, lead = 0, trail = 0, p = 0;
        while (p < n) {
            int l;
            uint32_t c = tk_u8dec(s + p, &l);
            if (c != 0x120 && !tk_is_whitespace(c))
                break;
            lead++;
            p += (size_t)l;
        }
        size_t e = n;
        while (e > 0) {
            size_t q = e - 1;
            while (q > 0 && (s[q] & 0xC0) == 0x80)
                q--;
            int l;
            uint32_t c = tk_u8dec(s + q, &l);
            if (c != 0x120 && !tk_is_whitespace(c))
                break;
            trail++;
            e = q;
        }
        if (lead) {
            int is_first = i == 0 || k->os == 0;
            if (is_first && add_prefix_space && lead == 1)
                lead = 0;
            k->os = walk_chars(text, k->os, k->oe, lead, 0);
        }
        if (trail)
            k->oe = walk_chars(text, k->oe, k->os, trail, 1);
    }
}

static void post_process(tk_ctx *cx, const mm_tok_t *tok, tk_tokens *a, tk_tokens *b,
                         const char *ta, const char *tb, const mm_tok_params *p, tk_tokens *out) {
    const tk_post *bl = bytelevel_of(tok->post);
    if (bl) {
        trim_offsets(a, bl->add_prefix_space, ta);
        if (b)
            trim_offsets(b, bl->add_prefix_space, tb);
    }
    const tk_post *t = template_of(tok->post);
    if (!t) {
        for (size_t i = 0; i < a->n; i++)
            tk_tokens_push(cx, out, 0, NULL, 0, 0, 0), out->v[out->n - 1] = a->v[i];
        if (b)
            for (size_t i = 0; i < b->n; i++)
                tk_tokens_push(cx, out, 0, NULL, 0, 0, 0), out->v[out->n - 1] = b->v[i];
        return;
    }
    const tk_tpl_piece *v = b ? t->pair : t->single;
    size_t nv = b ? t->npair : t->nsingle;
    for (size_t i = 0; i < nv; i++) {
        if (v[i].is_seq) {
            tk_tokens *src = v[i].seq ? b : a;
            if (!src)
                continue;
            for (size_t k = 0; k < src->n; k++) {
                tk_tokens_push(cx, out, 0, NULL, 0, 0, 0);
                out->v[out->n - 1] = src->v[k];
                out->v[out->n - 1].type_id = v[i].type_id;
            }
        } else if (p->add_special_tokens) {
            for (size_t k = 0; k < v[i].nids; k++) {
                tk_tokens_push(cx, out, v[i].ids[k], v[i].toks[k], strlen(v[i].toks[k]), 0, 0);
                tk_token *x = &out->v[out->n - 1];
                x->type_id = v[i].type_id;
                x->special = 1;
                x->seq = -1;
            }
        }
    }
}

/* Copies the arena result into caller-owned arrays. */
static int copy_out(const tk_tokens *t, const mm_tok_params *p, mm_tok_encoding *o) {
    memset(o, 0, sizeof(*o));
    size_t n = t->n, c = n ? n : 1;
    o->ids = mm_malloc(c * sizeof(int32_t));
    o->type_ids = mm_malloc(c * sizeof(int32_t));
    o->attention_mask = mm_malloc(c);
    o->special_tokens_mask = mm_malloc(c);
    if (!o->ids || !o->type_ids || !o->attention_mask || !o->special_tokens_mask)
        goto oom;
    if (p->want_offsets) {
        o->offsets = mm_malloc(c * 2 * sizeof(uint32_t));
        o->sequence_ids = mm_malloc(c);
        if (!o->offsets || !o->sequence_ids)
            goto oom;
    }
    if (p->want_tokens) {
        size_t tot = 0;
        for (size_t i = 0; i < n; i++)
            tot += t->v[i].toklen + 1;
        o->tokens = mm_malloc(c * (sizeof(char *) + sizeof(uint32_t)) + tot + 1);
        if (!o->tokens)
            goto oom;
        o->token_lens = (uint32_t *)(o->tokens + c);
        char *blk = (char *)(o->token_lens + c);
        for (size_t i = 0; i < n; i++) {
            o->tokens[i] = blk;
            o->token_lens[i] = t->v[i].toklen;
            memcpy(blk, t->v[i].tok, t->v[i].toklen);
            blk[t->v[i].toklen] = 0;
            blk += t->v[i].toklen + 1;
        }
    }
    for (size_t i = 0; i < n; i++) {
        const tk_token *k = &t->v[i];
        o->ids[i] = k->id;
        o->type_ids[i] = k->type_id;
        o->attention_mask[i] = 1;
        o->special_tokens_mask[i] = (uint8_t)k->special;
        if (o->offsets) {
            o->offsets[2 * i] = k->os;
            o->offsets[2 * i + 1] = k->oe;
            o->sequence_ids[i] = k->seq;
        }
    }
    o->len = n;
    return 0;
oom:
    mm_tok_encoding_clear(o);
    return MM_ENOMEM;
}

void mm_tok_encoding_clear(mm_tok_encoding *e) {
    if (!e)
        return;
    mm_free(e->ids);
    mm_free(e->type_ids);
    mm_free(e->attention_mask);
    mm_free(e->special_tokens_mask);
    mm_free(e->offsets);
    mm_free(e->sequence_ids);
    mm_free(e->tokens);
    memset(e, 0, sizeof(*e));
}

/* Pads one caller-owned encoding to `target` in place. */
static int pad_encoding(mm_tok_encoding *e, size_t target, const mm_tok_params *p, const char *pad_tok) {
    if (e->len >= target)
        return 0;
    size_t n = e->len, add = target - n;
    int left = p->pad_side == MM_TOK_LEFT;
#define GROW(field, type, count)                                                                   \
    do {                                                                                           \
        type *nv = mm_realloc(e->field, (count) * sizeof(type));                                   \
        if (!nv)                                                                                   \
            return MM_ENOMEM;                                                                      \
        e->field = nv;                                                                             \
    } while (0)
    GROW(ids, int32_t, target);
    GROW(type_ids, int32_t, target);
    GROW(attention_mask, uint8_t, target);
    GROW(special_tokens_mask, uint8_t, target);
    if (e->offsets) {
        GROW(offsets, uint32_t, 2 * target);
        GROW(sequence_ids, int8_t, target);
    }
#undef GROW
    if (left) {
        memmove(e->ids + add, e->ids, n * sizeof(int32_t));
        memmove(e->type_ids + add, e->type_ids, n * sizeof(int32_t));
        memmove(e->attention_mask + add, e->attention_mask, n);
        memmove(e->special_tokens_mask + add, e->special_tokens_mask, n);
        if (e->offsets) {
            memmove(e->offsets + 2 * add, e->offsets, 2 * n * sizeof(uint32_t));
            memmove(e->sequence_ids + add, e->sequence_ids, n);
        }
    }
    size_t at = left ? 0 : n;
    for (size_t i = at; i < at + add; i++) {
        e->ids[i] = p->pad_id;
        e->type_ids[i] = p->pad_type_id;
        e->attention_mask[i] = 0;
        e->special_tokens_mask[i] = 1;
        if (e->offsets) {
            e->offsets[2 * i] = e->offsets[2 * i + 1] = 0;
            e->sequence_ids[i] = -1;
        }
    }
    if (e->tokens) {
        size_t tot = 0, pl = strlen(pad_tok);
        for (size_t i = 0; i < n; i++)
            tot += e->token_lens[i] + 1;
        tot += add * (pl + 1);
        char **nt = mm_malloc(target * (sizeof(char *) + sizeof(uint32_t)) + tot + 1);
        if (!nt)
            return MM_ENOMEM;
        uint32_t *nl = (uint32_t *)(nt + target);
        char *blk = (char *)(nl + target);
        for (size_t i = 0; i < target; i++) {
            int is_pad = left ? i < add : i >= n;
            size_t src_i = left ? i - add : i;
            const char *src = is_pad ? pad_tok : e->tokens[src_i];
            size_t l = is_pad ? pl : e->token_lens[src_i];
            memcpy(blk, src, l);
            blk[l] = 0;
            nt[i] = blk;
            nl[i] = (uint32_t)l;
            blk += l + 1;
        }
        mm_free(e->tokens);
        e->tokens = nt;
        e->token_lens = nl;
    }
    e->len = target;
    return 0;
}

static size_t pad_target(const mm_tok_params *p, size_t longest) {
    size_t t = p->padding == MM_TOK_PAD_FIXED ? p->pad_length : longest;
    if (p->pad_to_multiple_of && t % p->pad_to_multiple_of)
        t += p->pad_to_multiple_of - t % p->pad_to_multiple_of;
    return t;
}

int mm_tok_pad(const mm_tok_t *tok, mm_tok_encoding *encs, size_t n, const mm_tok_params *params) {
    if (!tok || (n && !encs))
        return MM_EINVAL;
    mm_tok_params p;
    effective_params(tok, params, &p);
    if (p.padding == MM_TOK_PAD_NONE)
        return 0;
    size_t longest = 0;
    for (size_t i = 0; i < n; i++)
        if (encs[i].len > longest)
            longest = encs[i].len;
    size_t target = pad_target(&p, longest);
    const char *s = mm_tok_id_to_token(tok, p.pad_id);
    for (size_t i = 0; i < n; i++) {
        int rc = pad_encoding(&encs[i], target, &p, s ? s : "");
        if (rc)
            return rc;
    }
    return 0;
}

/* -------------------------------------------------------- encode */

static int check_utf8(const char *s, size_t n, const char *which, char *errbuf, size_t errlen) {
    size_t bad = tk_u8check(s, n);
    if (bad != (size_t)-1) {
        tk_errf(errbuf, errlen, "%s is not valid UTF-8 (invalid byte 0x%02x at offset %zu)", which,
                (unsigned char)s[bad], bad);
        return MM_EINVAL;
    }
    return 0;
}

/* Encodes one item inside an armed ctx; may longjmp. */
static void encode_item(tk_ctx *cx, const mm_tok_t *tok, const char *text, size_t len,
                        const char *pair, size_t pair_len, const mm_tok_params *p, tk_tokens *out) {
    tk_tokens a = {0}, b = {0};
    encode_seq(cx, tok, text, len, 0, &a);
    if (pair)
        encode_seq(cx, tok, pair, pair_len, 1, &b);
    if (p->max_length) {
        size_t max = p->max_length;
        if (p->add_special_tokens) {
            size_t na = n_added_tokens(tok, pair != NULL);
            if (na > max)
                tk_fail(cx, MM_EINVAL, "max_length %zu is smaller than the %zu special tokens", max, na);
            max -= na;
        }
        truncate_pair(cx, &a, pair ? &b : NULL, max, p->trunc_strategy, p->trunc_side);
    }
    post_process(cx, tok, &a, pair ? &b : NULL, text, pair, p, out);
}

int mm_tok_encode_batch(const mm_tok_t *tok, size_t n, const char *const *texts,
                        const size_t *lens, const char *const *pairs, const size_t *pair_lens,
                        const mm_tok_params *params, mm_tok_encoding *outs, char *errbuf,
                        size_t errlen) {
    if (errbuf && errlen)
        errbuf[0] = 0;
    if (!tok || (n && (!texts || !outs))) {
        tk_errf(errbuf, errlen, "invalid argument");
        return MM_EINVAL;
    }
    for (size_t i = 0; i < n; i++)
        memset(&outs[i], 0, sizeof(outs[i]));
    mm_tok_params p;
    effective_params(tok, params, &p);
    for (size_t i = 0; i < n; i++) {
        if (!texts[i] || (pairs && !pairs[i])) {
            tk_errf(errbuf, errlen, "text %zu is NULL", i);
            return MM_EINVAL;
        }
        size_t l = lens ? lens[i] : strlen(texts[i]);
        int rc = check_utf8(texts[i], l, "input text", errbuf, errlen);
        if (!rc && pairs)
            rc = check_utf8(pairs[i], pair_lens ? pair_lens[i] : strlen(pairs[i]), "pair text", errbuf, errlen);
        if (rc)
            return rc;
    }
    tk_ctx cx;
    tk_ctx_init(&cx, errbuf, errlen);
    int rc = setjmp(cx.jb);
    if (rc == 0) {
        for (size_t i = 0; i < n; i++) {
            tk_tokens out = {0};
            size_t l = lens ? lens[i] : strlen(texts[i]);
            const char *pr = pairs ? pairs[i] : NULL;
            size_t pl = pr ? (pair_lens ? pair_lens[i] : strlen(pr)) : 0;
            encode_item(&cx, tok, texts[i], l, pr, pl, &p, &out);
            rc = copy_out(&out, &p, &outs[i]);
            if (rc) {
                tk_errf(errbuf, errlen, "out of memory");
                break;
            }
            tk_ctx_reset(&cx);
        }
    }
    tk_ctx_free(&cx);
    if (!rc) {
        rc = mm_tok_pad(tok, outs, n, &p);
        if (rc)
            tk_errf(errbuf, errlen, "out of memory");
    }
    if (rc) {
        for (size_t i = 0; i < n; i++)
            mm_tok_encoding_clear(&outs[i]);
    }
    return rc;
}

int mm_tok_encode(const mm_tok_t *tok, const char *text, size_t len, const char *pair,
                  size_t pair_len, const mm_tok_params *params, mm_tok_encoding *out,
                  char *errbuf, size_t errlen) {
    if (!text || !out) {
        tk_errf(errbuf, errlen, "invalid argument");
        if (out)
            memset(out, 0, sizeof(*out));
        return MM_EINVAL;
    }
    const char *texts[1] = {text};
    const char *pairs[1] = {pair};
    size_t lens[1] = {len}, plens[1] = {pair_len};
    return mm_tok_encode_batch(tok, 1, texts, lens, pair ? pairs : NULL, pair ? plens : NULL, params,
                               out, errbuf, errlen);
}

/* -------------------------------------------------------- decode */

int mm_tok_decode(const mm_tok_t *tok, const int32_t *ids, size_t n, int skip_special_tokens,
                  char **out, size_t *out_len, char *errbuf, size_t errlen) {
    if (errbuf && errlen)
        errbuf[0] = 0;
    if (!tok || !out || (n && !ids)) {
        tk_errf(errbuf, errlen, "invalid argument");
        return MM_EINVAL;
    }
    *out = NULL;
    if (out_len)
        *out_len = 0;
    tk_ctx cx;
    tk_ctx_init(&cx, errbuf, errlen);
    int rc = setjmp(cx.jb);
    if (rc == 0) {
        tk_strs t;
        t.s = tk_alloc(&cx, (n ? n : 1) * sizeof(char *));
        t.n = tk_alloc(&cx, (n ? n : 1) * sizeof(size_t));
        t.count = 0;
        for (size_t i = 0; i < n; i++) {
            const tk_added *a = added_by_id(tok, ids[i]);
            const char *s;
            size_t l = 0;
            if (a) {
                if (skip_special_tokens && a->special)
                    continue;
                s = a->normalized ? a->norm_content : a->content;
                l = a->normalized ? a->norm_len : a->len;
            } else {
                s = tk_model_id_to_token(&tok->model, ids[i], &l);
                if (!s)
                    continue;
                /* a vocab token that is also a special added token */
                if (skip_special_tokens) {
                    int32_t k = tk_map_get(&tok->added_map, s, l);
                    if (k >= 0 && tok->added[k].special)
                        continue;
                }
            }
            t.s[t.count] = s;
            t.n[t.count++] = l;
        }
        tk_buf b = {0};
        if (tok->dec) {
            tk_decode_chain(&cx, tok->dec, &t);
            for (size_t i = 0; i < t.count; i++)
                tk_buf_put(&cx, &b, t.s[i], t.n[i]);
        } else {
            for (size_t i = 0; i < t.count; i++) {
                if (i)
                    tk_buf_put(&cx, &b, " ", 1);
                tk_buf_put(&cx, &b, t.s[i], t.n[i]);
            }
        }
        char *r = mm_strndup(b.p ? b.p : "", b.n);
        if (!r) {
            tk_errf(errbuf, errlen, "out of memory");
            rc = MM_ENOMEM;
        } else {
            *out = r;
            if (out_len)
                *out_len = b.n;
        }
    }
    tk_ctx_free(&cx);
    return rc;
}
