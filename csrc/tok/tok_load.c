/* tok_load.c: tokenizer.json -> the immutable structures of struct mm_tok.
 *
 * Parsing is strict about what it does not know: an unknown component type
 * fails the load with a message naming it, because a silent fallback would
 * produce plausible but wrong ids.  Everything allocated here goes through
 * mm_alloc and is released by tk_free_parts, also on a failed load, so a
 * half-built tokenizer never leaks.
 */
#define _GNU_SOURCE 1 /* memmem */
#include "tok_internal.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "mm_alloc.h"
#include "mm_err.h"

int tk_bpe_load(tk_model *m, json_t *jm, char *errbuf, size_t errlen);
int tk_unigram_load(tk_model *m, json_t *jm, char *errbuf, size_t errlen);
void tk_model_free_extra(tk_model *m);
int tk_precompiled_load(tk_norm *n, const char *b64, char *errbuf, size_t errlen);

regex_t *tk_gpt2_re;

#define FAIL(code, ...)                                                                            \
    do {                                                                                           \
        tk_errf(errbuf, errlen, __VA_ARGS__);                                                      \
        return (code);                                                                             \
    } while (0)
#define TRY(expr)                                                                                  \
    do {                                                                                           \
        int rc_ = (expr);                                                                          \
        if (rc_)                                                                                   \
            return rc_;                                                                            \
    } while (0)

static const char *jtype(json_t *o) {
    json_t *t = json_object_get(o, "type");
    return json_is_string(t) ? json_string_value(t) : NULL;
}

static int jbool(json_t *o, const char *k, int dflt) {
    json_t *v = json_object_get(o, k);
    if (json_is_boolean(v))
        return json_is_true(v);
    return dflt;
}

static char *jstrdup(json_t *o, const char *k, size_t *len) {
    json_t *v = json_object_get(o, k);
    if (!json_is_string(v))
        return NULL;
    if (len)
        *len = json_string_length(v);
    return mm_strndup(json_string_value(v), json_string_length(v));
}

static uint32_t first_cp(const char *s) {
    if (!s || !*s)
        return 0;
    int l;
    return tk_u8dec((const unsigned char *)s, &l);
}

/* {"String": "..."} or {"Regex": "..."}: literal into *lit, or compile. */
static int load_pattern(json_t *pat, char **lit, size_t *litlen, regex_t **re, char *errbuf,
                        size_t errlen) {
    json_t *s = json_object_get(pat, "String");
    json_t *r = json_object_get(pat, "Regex");
    if (json_is_string(s)) {
        *lit = mm_strndup(json_string_value(s), json_string_length(s));
        if (!*lit)
            return MM_ENOMEM;
        *litlen = json_string_length(s);
        return 0;
    }
    if (json_is_string(r))
        return tk_regex_compile(json_string_value(r), json_string_length(r), re, errbuf, errlen);
    FAIL(MM_EFORMAT, "pattern must be {\"String\": ...} or {\"Regex\": ...}");
}

/* ------------------------------------------------------------ normalizers */

static void norm_free(tk_norm *n) {
    if (!n)
        return;
    mm_free(n->pattern);
    mm_free(n->content);
    if (n->re)
        onig_free(n->re);
    mm_free(n->pc_blob);
    mm_free((void *)n->trie);
    for (size_t i = 0; i < n->nsub; i++)
        norm_free(&n->sub[i]);
    mm_free(n->sub);
}

static int load_norm(tk_norm *n, json_t *j, int depth, char *errbuf, size_t errlen) {
    memset(n, 0, sizeof(*n));
    if (depth > 32)
        FAIL(MM_EFORMAT, "normalizer nesting too deep");
    const char *t = jtype(j);
    if (!t)
        FAIL(MM_EFORMAT, "normalizer without a \"type\"");
    if (!strcmp(t, "BertNormalizer")) {
        n->type = TK_N_BERT;
        n->clean_text = jbool(j, "clean_text", 1);
        n->chinese = jbool(j, "handle_chinese_chars", 1);
        n->lowercase = jbool(j, "lowercase", 1);
        n->strip_accents = jbool(j, "strip_accents", n->lowercase);
    } else if (!strcmp(t, "Lowercase")) {
        n->type = TK_N_LOWER;
    } else if (!strcmp(t, "NFC")) {
        n->type = TK_N_NFC;
    } else if (!strcmp(t, "NFD")) {
        n->type = TK_N_NFD;
    } else if (!strcmp(t, "NFKC")) {
        n->type = TK_N_NFKC;
    } else if (!strcmp(t, "NFKD")) {
        n->type = TK_N_NFKD;
    } else if (!strcmp(t, "StripAccents")) {
        n->type = TK_N_STRIP_ACCENTS;
    } else if (!strcmp(t, "Strip")) {
        n->type = TK_N_STRIP;
        n->left = jbool(j, "strip_left", 1);
        n->right = jbool(j, "strip_right", 1);
    } else if (!strcmp(t, "Replace")) {
        n->type = TK_N_REPLACE;
        TRY(load_pattern(json_object_get(j, "pattern"), &n->pattern, &n->pattern_len, &n->re, errbuf,
                         errlen));
        if (!json_is_string(json_object_get(j, "content")))
            FAIL(MM_EFORMAT, "Replace normalizer without \"content\"");
        n->content = jstrdup(j, "content", &n->content_len);
        if (!n->content)
            return MM_ENOMEM;
    } else if (!strcmp(t, "Prepend")) {
        n->type = TK_N_PREPEND;
        if (!json_is_string(json_object_get(j, "prepend")))
            FAIL(MM_EFORMAT, "Prepend normalizer without \"prepend\"");
        n->content = jstrdup(j, "prepend", &n->content_len);
        if (!n->content)
            return MM_ENOMEM;
    } else if (!strcmp(t, "Precompiled")) {
        n->type = TK_N_PRECOMPILED;
        json_t *pc = json_object_get(j, "precompiled_charsmap");
        if (json_is_null(pc) || !pc)
            return 0; /* an empty charsmap: identity */
        if (!json_is_string(pc))
            FAIL(MM_EFORMAT, "precompiled_charsmap must be a string");
        TRY(tk_precompiled_load(n, json_string_value(pc), errbuf, errlen));
    } else if (!strcmp(t, "Sequence")) {
        n->type = TK_N_SEQ;
        json_t *arr = json_object_get(j, "normalizers");
        if (!json_is_array(arr))
            FAIL(MM_EFORMAT, "Sequence normalizer without \"normalizers\"");
        size_t k = json_array_size(arr);
        n->sub = mm_calloc(k ? k : 1, sizeof(tk_norm));
        if (!n->sub)
            return MM_ENOMEM;
        for (size_t i = 0; i < k; i++) {
            int rc = load_norm(&n->sub[i], json_array_get(arr, i), depth + 1, errbuf, errlen);
            n->nsub = i + 1;
            if (rc)
                return rc;
        }
    } else {
        FAIL(MM_EUNSUPPORTED, "unsupported normalizer type '%s'", t);
    }
    return 0;
}

/* --------------------------------------------------------- pre-tokenizers */

static void pre_free(tk_pre *p) {
    if (!p)
        return;
    mm_free(p->pattern);
    if (p->re)
        onig_free(p->re);
    for (size_t i = 0; i < p->nsub; i++)
        pre_free(&p->sub[i]);
    mm_free(p->sub);
}

static int parse_behavior(json_t *j, int *out, char *errbuf, size_t errlen) {
    json_t *b = json_object_get(j, "behavior");
    if (!b) {
        *out = TK_B_ISOLATED;
        return 0;
    }
    const char *s = json_is_string(b) ? json_string_value(b) : "";
    if (!strcmp(s, "Removed")) *out = TK_B_REMOVED;
    else if (!strcmp(s, "Isolated")) *out = TK_B_ISOLATED;
    else if (!strcmp(s, "MergedWithPrevious")) *out = TK_B_PREV;
    else if (!strcmp(s, "MergedWithNext")) *out = TK_B_NEXT;
    else if (!strcmp(s, "Contiguous")) *out = TK_B_CONTIG;
    else FAIL(MM_EUNSUPPORTED, "unsupported split behavior '%s'", s);
    return 0;
}

static int parse_prepend(json_t *j, int *out, char *errbuf, size_t errlen) {
    json_t *ps = json_object_get(j, "prepend_scheme");
    if (json_is_string(ps)) {
        const char *s = json_string_value(ps);
        if (!strcmp(s, "always")) *out = TK_PREPEND_ALWAYS;
        else if (!strcmp(s, "first")) *out = TK_PREPEND_FIRST;
        else if (!strcmp(s, "never")) *out = TK_PREPEND_NEVER;
        else FAIL(MM_EUNSUPPORTED, "unsupported prepend_scheme '%s'", s);
        return 0;
    }
    *out = jbool(j, "add_prefix_space", 1) ? TK_PREPEND_ALWAYS : TK_PREPEND_NEVER;
    return 0;
}

static int load_pre(tk_pre *p, json_t *j, int depth, char *errbuf, size_t errlen) {
    memset(p, 0, sizeof(*p));
    if (depth > 32)
        FAIL(MM_EFORMAT, "pre-tokenizer nesting too deep");
    const char *t = jtype(j);
    if (!t)
        FAIL(MM_EFORMAT, "pre_tokenizer without a \"type\"");
    if (!strcmp(t, "BertPreTokenizer")) {
        p->type = TK_P_BERT;
    } else if (!strcmp(t, "Whitespace")) {
        p->type = TK_P_WHITESPACE; /* \\w+|[^\\w\\s]+, done without a regex (tok_pretok.c) */
    } else if (!strcmp(t, "WhitespaceSplit")) {
        p->type = TK_P_WSSPLIT;
    } else if (!strcmp(t, "Punctuation")) {
        p->type = TK_P_PUNCT;
        TRY(parse_behavior(j, &p->behavior, errbuf, errlen));
    } else if (!strcmp(t, "Digits")) {
        p->type = TK_P_DIGITS;
        p->individual_digits = jbool(j, "individual_digits", 0);
    } else if (!strcmp(t, "CharDelimiterSplit")) {
        p->type = TK_P_CHARDELIM;
        json_t *d = json_object_get(j, "delimiter");
        if (!json_is_string(d))
            FAIL(MM_EFORMAT, "CharDelimiterSplit without \"delimiter\"");
        p->delim = first_cp(json_string_value(d));
    } else if (!strcmp(t, "Split")) {
        p->type = TK_P_SPLIT;
        TRY(parse_behavior(j, &p->behavior, errbuf, errlen));
        p->invert = jbool(j, "invert", 0);
        TRY(load_pattern(json_object_get(j, "pattern"), &p->pattern, &p->pattern_len, &p->re, errbuf,
                         errlen));
    } else if (!strcmp(t, "Metaspace")) {
        p->type = TK_P_METASPACE;
        json_t *r = json_object_get(j, "replacement");
        p->replacement = json_is_string(r) ? first_cp(json_string_value(r)) : 0x2581;
        p->split = jbool(j, "split", 1);
        TRY(parse_prepend(j, &p->prepend_scheme, errbuf, errlen));
    } else if (!strcmp(t, "ByteLevel")) {
        p->type = TK_P_BYTELEVEL;
        p->add_prefix_space = jbool(j, "add_prefix_space", 1);
        p->trim_offsets = jbool(j, "trim_offsets", 1);
        p->use_regex = jbool(j, "use_regex", 1);
    } else if (!strcmp(t, "Sequence")) {
        p->type = TK_P_SEQ;
        json_t *arr = json_object_get(j, "pretokenizers");
        if (!json_is_array(arr))
            FAIL(MM_EFORMAT, "Sequence pre-tokenizer without \"pretokenizers\"");
        size_t k = json_array_size(arr);
        p->sub = mm_calloc(k ? k : 1, sizeof(tk_pre));
        if (!p->sub)
            return MM_ENOMEM;
        for (size_t i = 0; i < k; i++) {
            int rc = load_pre(&p->sub[i], json_array_get(arr, i), depth + 1, errbuf, errlen);
            p->nsub = i + 1;
            if (rc)
                return rc;
        }
    } else {
        FAIL(MM_EUNSUPPORTED, "unsupported pre_tokenizer type '%s'", t);
    }
    return 0;
}

/* ------------------------------------------------------------------ model */

static int model_set_id(tk_model *m, const char *k, size_t kl, json_int_t id) {
    if ((size_t)id >= m->nids) {
        size_t nn = m->nids ? m->nids : 1024;
        while (nn <= (size_t)id)
            nn *= 2;
        char **t = mm_realloc(m->id2tok, nn * sizeof(char *));
        if (!t)
            return MM_ENOMEM;
        m->id2tok = t;
        uint32_t *l = mm_realloc(m->id2len, nn * sizeof(uint32_t));
        if (!l)
            return MM_ENOMEM;
        m->id2len = l;
        for (size_t i = m->nids; i < nn; i++) {
            m->id2tok[i] = NULL;
            m->id2len[i] = 0;
        }
        m->nids = nn;
    }
    if (!m->id2tok[id]) {
        m->id2tok[id] = mm_strndup(k, kl);
        if (!m->id2tok[id])
            return MM_ENOMEM;
        m->id2len[id] = (uint32_t)kl;
    }
    if (kl > m->max_tok_len)
        m->max_tok_len = kl;
    return tk_map_put(&m->vocab, k, kl, (int32_t)id);
}

/* {"token": id, ...} */
/* The vocab from the raw entries scan_vocab_object found. */
static int load_vocab_raw(tk_model *m, char *errbuf, size_t errlen) {
    size_t n = m->nraw, tot = 0;
    for (size_t i = 0; i < n; i++)
        tot += m->raw_piece_len[i];
    char *buf = mm_malloc(tot + 1);
    if (!buf)
        return MM_ENOMEM;
    int rc = tk_map_reserve(&m->vocab, n);
    for (size_t i = 0; i < n && !rc; i++) {
        long l = tk_json_unescape(m->raw_piece[i], m->raw_piece_len[i], buf);
        if (l < 0 || tk_u8check(buf, (size_t)l) != (size_t)-1) {
            tk_errf(errbuf, errlen, "vocab key %zu: bad string", i);
            rc = MM_EPARSE;
            break;
        }
        const char *t = m->raw_score[i];
        size_t tl = m->raw_score_len[i];
        long long id = 0;
        for (size_t q = 0; q < tl; q++) {
            if (t[q] < '0' || t[q] > '9' || id >= (1 << 22)) {
                id = -1;
                break;
            }
            id = id * 10 + (t[q] - '0');
        }
        if (id < 0 || id >= (1 << 22)) {
            tk_errf(errbuf, errlen, "vocab id out of range");
            rc = MM_EFORMAT;
            break;
        }
        rc = model_set_id(m, buf, (size_t)l, (json_int_t)id);
    }
    mm_free(buf);
    return rc;
}

int tk_load_vocab_object(tk_model *m, json_t *v, char *errbuf, size_t errlen) {
    if (!json_is_object(v))
        FAIL(MM_EFORMAT, "model \"vocab\" must be an object");
    if (m->raw_ok == 2 && json_object_size(v) == 0)
        return load_vocab_raw(m, errbuf, errlen);
    const char *k;
    json_t *val;
    json_object_foreach(v, k, val) {
        if (!json_is_integer(val) || json_integer_value(val) < 0 ||
            json_integer_value(val) >= (1 << 22))
            FAIL(MM_EFORMAT, "vocab id out of range");
        (void)k;
    }
    TRY(tk_map_reserve(&m->vocab, json_object_size(v)));
    void *iter = json_object_iter(v);
    while (iter) {
        const char *key = json_object_iter_key(iter);
        size_t kl = strlen(key);
#if JANSSON_VERSION_HEX >= 0x020E00
        kl = json_object_iter_key_len(iter);
#endif
        char tmp[64];
        if (kl < sizeof tmp && memmem(key, kl, "\xF4\x8F\xBF\xBF", 4)) {
            /* U+10FFFF stands for U+0000 (see escape_nul_keys) */
            size_t w = 0;
            for (size_t q = 0; q < kl;) {
                if (q + 4 <= kl && !memcmp(key + q, "\xF4\x8F\xBF\xBF", 4)) {
                    tmp[w++] = 0;
                    q += 4;
                } else {
                    tmp[w++] = key[q++];
                }
            }
            key = tmp;
            kl = w;
        }
        TRY(model_set_id(m, key, kl, json_integer_value(json_object_iter_value(iter))));
        iter = json_object_iter_next(v, iter);
    }
    return 0;
}

int tk_model_add_piece(tk_model *m, const char *k, size_t kl, int32_t id) {
    return model_set_id(m, k, kl, id);
}

static int load_model(tk_model *m, json_t *j, char *errbuf, size_t errlen) {
    tk_model raw = *m; /* the raw vocab found by tk_load before parsing */
    memset(m, 0, sizeof(*m));
    m->raw_piece = raw.raw_piece;
    m->raw_score = raw.raw_score;
    m->raw_piece_len = raw.raw_piece_len;
    m->raw_score_len = raw.raw_score_len;
    m->nraw = raw.nraw;
    m->raw_ok = raw.raw_ok;
    m->unk_id = -1;
    for (int i = 0; i < 256; i++)
        m->byte_ids[i] = -1;
    if (!json_is_object(j))
        FAIL(MM_EFORMAT, "missing \"model\"");
    const char *t = jtype(j);
    if (!t) {
        /* old files omit the type: guess from the fields like the reference */
        if (json_object_get(j, "merges"))
            t = "BPE";
        else if (json_object_get(j, "continuing_subword_prefix") || json_object_get(j, "max_input_chars_per_word"))
            t = "WordPiece";
        else if (json_is_array(json_object_get(j, "vocab")))
            t = "Unigram";
        else
            t = "WordLevel";
    }
    if (!strcmp(t, "WordPiece")) {
        m->type = TK_M_WORDPIECE;
        TRY(tk_load_vocab_object(m, json_object_get(j, "vocab"), errbuf, errlen));
        json_t *pre = json_object_get(j, "continuing_subword_prefix");
        m->prefix = mm_strdup(json_is_string(pre) ? json_string_value(pre) : "##");
        if (!m->prefix)
            return MM_ENOMEM;
        m->prefix_len = strlen(m->prefix);
        json_t *mx = json_object_get(j, "max_input_chars_per_word");
        m->max_chars = json_is_integer(mx) && json_integer_value(mx) >= 0 ? (size_t)json_integer_value(mx) : 100;
        json_t *unk = json_object_get(j, "unk_token");
        const char *u = json_is_string(unk) ? json_string_value(unk) : "[UNK]";
        m->unk_id = tk_map_get(&m->vocab, u, strlen(u));
        if (m->unk_id < 0)
            FAIL(MM_EFORMAT, "WordPiece unk_token '%s' is not in the vocab", u);
    } else if (!strcmp(t, "WordLevel")) {
        m->type = TK_M_WORDLEVEL;
        TRY(tk_load_vocab_object(m, json_object_get(j, "vocab"), errbuf, errlen));
        json_t *unk = json_object_get(j, "unk_token");
        if (json_is_string(unk))
            m->unk_id = tk_map_get(&m->vocab, json_string_value(unk), json_string_length(unk));
    } else if (!strcmp(t, "BPE")) {
        m->type = TK_M_BPE;
        TRY(tk_bpe_load(m, j, errbuf, errlen));
    } else if (!strcmp(t, "Unigram")) {
        m->type = TK_M_UNIGRAM;
        TRY(tk_unigram_load(m, j, errbuf, errlen));
    } else {
        FAIL(MM_EUNSUPPORTED, "unsupported model type '%s'", t);
    }
    return 0;
}

static void model_free(tk_model *m) {
    tk_map_free(&m->vocab);
    for (size_t i = 0; i < m->nids; i++)
        mm_free(m->id2tok[i]);
    mm_free(m->id2tok);
    mm_free(m->id2len);
    mm_free(m->prefix);
    mm_free(m->suffix);
    mm_free(m->mkeys);
    mm_free(m->mvals);
    mm_free(m->scores);
    tk_model_free_extra(m);
}

/* --------------------------------------------------------- post-processor */

static void tpl_free(tk_tpl_piece *v, size_t n) {
    for (size_t i = 0; i < n; i++) {
        mm_free(v[i].ids);
        for (size_t k = 0; k < v[i].nids; k++)
            mm_free(v[i].toks[k]);
        mm_free(v[i].toks);
    }
    mm_free(v);
}

static void post_free(tk_post *p) {
    if (!p)
        return;
    tpl_free(p->single, p->nsingle);
    tpl_free(p->pair, p->npair);
    for (size_t i = 0; i < p->nsub; i++)
        post_free(&p->sub[i]);
    mm_free(p->sub);
}

static int tpl_special(tk_tpl_piece *pc, const char *tok, int32_t id, int type_id) {
    pc->is_seq = 0;
    pc->type_id = type_id;
    pc->ids = mm_malloc(sizeof(int32_t));
    pc->toks = mm_malloc(sizeof(char *));
    if (!pc->ids || !pc->toks)
        return MM_ENOMEM;
    pc->ids[0] = id;
    pc->toks[0] = mm_strdup(tok);
    if (!pc->toks[0])
        return MM_ENOMEM;
    pc->nids = 1;
    return 0;
}

/* ["[SEP]", 102] */
static int tok_pair(json_t *j, const char **tok, int32_t *id) {
    if (!json_is_array(j) || json_array_size(j) != 2 || !json_is_string(json_array_get(j, 0)) ||
        !json_is_integer(json_array_get(j, 1)))
        return -1;
    *tok = json_string_value(json_array_get(j, 0));
    *id = (int32_t)json_integer_value(json_array_get(j, 1));
    return 0;
}

/* Builds the equivalent template for Bert/Roberta processing. */
static int simple_template(tk_post *p, json_t *j, int roberta, char *errbuf, size_t errlen) {
    const char *cls, *sep;
    int32_t cid, sid;
    if (tok_pair(json_object_get(j, "cls"), &cls, &cid) ||
        tok_pair(json_object_get(j, "sep"), &sep, &sid))
        FAIL(MM_EFORMAT, "post_processor needs \"cls\" and \"sep\" as [token, id]");
    p->single = mm_calloc(3, sizeof(tk_tpl_piece));
    p->pair = mm_calloc(6, sizeof(tk_tpl_piece));
    if (!p->single || !p->pair)
        return MM_ENOMEM;
    p->nsingle = 3;
    p->npair = 6; /* zeroed entries are safe to free if we fail half-way */
    TRY(tpl_special(&p->single[0], cls, cid, 0));
    p->single[1].is_seq = 1;
    TRY(tpl_special(&p->single[2], sep, sid, 0));
    int t1 = roberta ? 0 : 1;
    size_t k = 0;
    TRY(tpl_special(&p->pair[k++], cls, cid, 0));
    p->pair[k].is_seq = 1;
    p->pair[k++].seq = 0;
    TRY(tpl_special(&p->pair[k++], sep, sid, 0));
    if (roberta)
        TRY(tpl_special(&p->pair[k++], sep, sid, 0));
    p->pair[k].is_seq = 1;
    p->pair[k].seq = 1;
    p->pair[k++].type_id = t1;
    TRY(tpl_special(&p->pair[k++], sep, sid, t1));
    p->npair = k;
    return 0;
}

static int load_template_list(json_t *arr, json_t *specials, tk_tpl_piece **out, size_t *nout,
                              char *errbuf, size_t errlen) {
    if (!json_is_array(arr))
        FAIL(MM_EFORMAT, "TemplateProcessing template must be an array");
    size_t n = json_array_size(arr);
    *out = mm_calloc(n ? n : 1, sizeof(tk_tpl_piece));
    if (!*out)
        return MM_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(arr, i);
        tk_tpl_piece *pc = &(*out)[i];
        *nout = i + 1;
        json_t *sq = json_object_get(e, "Sequence");
        json_t *sp = json_object_get(e, "SpecialToken");
        if (json_is_object(sq)) {
            pc->is_seq = 1;
            json_t *id = json_object_get(sq, "id");
            pc->seq = json_is_string(id) && !strcmp(json_string_value(id), "B");
            pc->type_id = (int)json_integer_value(json_object_get(sq, "type_id"));
        } else if (json_is_object(sp)) {
            json_t *id = json_object_get(sp, "id");
            if (!json_is_string(id))
                FAIL(MM_EFORMAT, "TemplateProcessing SpecialToken without id");
            pc->type_id = (int)json_integer_value(json_object_get(sp, "type_id"));
            json_t *st = json_object_get(specials, json_string_value(id));
            json_t *ids = json_object_get(st, "ids");
            json_t *toks = json_object_get(st, "tokens");
            if (!json_is_array(ids) || !json_is_array(toks) || json_array_size(ids) != json_array_size(toks))
                FAIL(MM_EFORMAT, "TemplateProcessing: special token '%s' is not defined",
                     json_string_value(id));
            size_t k = json_array_size(ids);
            pc->ids = mm_calloc(k ? k : 1, sizeof(int32_t));
            pc->toks = mm_calloc(k ? k : 1, sizeof(char *));
            if (!pc->ids || !pc->toks)
                return MM_ENOMEM;
            for (size_t q = 0; q < k; q++) {
                json_t *tq = json_array_get(toks, q);
                pc->ids[q] = (int32_t)json_integer_value(json_array_get(ids, q));
                pc->toks[q] = mm_strdup(json_is_string(tq) ? json_string_value(tq) : "");
                pc->nids = q + 1;
                if (!pc->toks[q])
                    return MM_ENOMEM;
            }
        } else {
            FAIL(MM_EFORMAT, "TemplateProcessing piece must be Sequence or SpecialToken");
        }
    }
    return 0;
}

static int load_post(tk_post *p, json_t *j, int depth, char *errbuf, size_t errlen) {
    memset(p, 0, sizeof(*p));
    if (depth > 8)
        FAIL(MM_EFORMAT, "post_processor nesting too deep");
    const char *t = jtype(j);
    if (!t)
        FAIL(MM_EFORMAT, "post_processor without a \"type\"");
    if (!strcmp(t, "TemplateProcessing")) {
        p->type = TK_PP_TEMPLATE;
        json_t *sp = json_object_get(j, "special_tokens");
        TRY(load_template_list(json_object_get(j, "single"), sp, &p->single, &p->nsingle, errbuf, errlen));
        TRY(load_template_list(json_object_get(j, "pair"), sp, &p->pair, &p->npair, errbuf, errlen));
    } else if (!strcmp(t, "BertProcessing")) {
        p->type = TK_PP_BERT;
        TRY(simple_template(p, j, 0, errbuf, errlen));
    } else if (!strcmp(t, "RobertaProcessing")) {
        p->type = TK_PP_ROBERTA;
        p->trim_offsets = jbool(j, "trim_offsets", 1);
        p->add_prefix_space = jbool(j, "add_prefix_space", 1);
        TRY(simple_template(p, j, 1, errbuf, errlen));
    } else if (!strcmp(t, "ByteLevel")) {
        p->type = TK_PP_BYTELEVEL;
        p->trim_offsets = jbool(j, "trim_offsets", 1);
        p->add_prefix_space = jbool(j, "add_prefix_space", 1);
    } else if (!strcmp(t, "Sequence")) {
        p->type = TK_PP_SEQ;
        json_t *arr = json_object_get(j, "processors");
        if (!json_is_array(arr))
            FAIL(MM_EFORMAT, "Sequence post_processor without \"processors\"");
        size_t k = json_array_size(arr);
        p->sub = mm_calloc(k ? k : 1, sizeof(tk_post));
        if (!p->sub)
            return MM_ENOMEM;
        for (size_t i = 0; i < k; i++) {
            int rc = load_post(&p->sub[i], json_array_get(arr, i), depth + 1, errbuf, errlen);
            p->nsub = i + 1;
            if (rc)
                return rc;
        }
    } else {
        FAIL(MM_EUNSUPPORTED, "unsupported post_processor type '%s'", t);
    }
    return 0;
}

/* --------------------------------------------------------------- decoders */

static void dec_free(tk_dec *d) {
    if (!d)
        return;
    mm_free(d->prefix);
    mm_free(d->pattern);
    mm_free(d->content);
    if (d->re)
        onig_free(d->re);
    mm_free(d->pad_token);
    mm_free(d->word_delim);
    for (size_t i = 0; i < d->nsub; i++)
        dec_free(&d->sub[i]);
    mm_free(d->sub);
}

static int load_dec(tk_dec *d, json_t *j, int depth, char *errbuf, size_t errlen) {
    memset(d, 0, sizeof(*d));
    if (depth > 32)
        FAIL(MM_EFORMAT, "decoder nesting too deep");
    const char *t = jtype(j);
    if (!t)
        FAIL(MM_EFORMAT, "decoder without a \"type\"");
    if (!strcmp(t, "WordPiece")) {
        d->type = TK_D_WORDPIECE;
        json_t *p = json_object_get(j, "prefix");
        d->prefix = mm_strdup(json_is_string(p) ? json_string_value(p) : "##");
        if (!d->prefix)
            return MM_ENOMEM;
        d->cleanup = jbool(j, "cleanup", 1);
    } else if (!strcmp(t, "Metaspace")) {
        d->type = TK_D_METASPACE;
        json_t *r = json_object_get(j, "replacement");
        d->replacement = json_is_string(r) ? first_cp(json_string_value(r)) : 0x2581;
        TRY(parse_prepend(j, &d->prepend_scheme, errbuf, errlen));
    } else if (!strcmp(t, "ByteLevel")) {
        d->type = TK_D_BYTELEVEL;
    } else if (!strcmp(t, "BPEDecoder")) {
        d->type = TK_D_BPE;
        json_t *p = json_object_get(j, "suffix");
        d->prefix = mm_strdup(json_is_string(p) ? json_string_value(p) : "</w>");
        if (!d->prefix)
            return MM_ENOMEM;
    } else if (!strcmp(t, "ByteFallback")) {
        d->type = TK_D_BYTEFALLBACK;
    } else if (!strcmp(t, "Fuse")) {
        d->type = TK_D_FUSE;
    } else if (!strcmp(t, "Strip")) {
        d->type = TK_D_STRIP;
        json_t *c = json_object_get(j, "content");
        d->strip_char = json_is_string(c) ? first_cp(json_string_value(c)) : ' ';
        d->start = (int)json_integer_value(json_object_get(j, "start"));
        d->stop = (int)json_integer_value(json_object_get(j, "stop"));
    } else if (!strcmp(t, "Replace")) {
        d->type = TK_D_REPLACE;
        size_t pl = 0;
        TRY(load_pattern(json_object_get(j, "pattern"), &d->pattern, &pl, &d->re, errbuf, errlen));
        if (!json_is_string(json_object_get(j, "content")))
            FAIL(MM_EFORMAT, "Replace decoder without \"content\"");
        d->content = jstrdup(j, "content", NULL);
        if (!d->content)
            return MM_ENOMEM;
    } else if (!strcmp(t, "CTC")) {
        d->type = TK_D_CTC;
        json_t *p = json_object_get(j, "pad_token");
        json_t *w = json_object_get(j, "word_delimiter_token");
        d->pad_token = mm_strdup(json_is_string(p) ? json_string_value(p) : "<pad>");
        d->word_delim = mm_strdup(json_is_string(w) ? json_string_value(w) : "|");
        if (!d->pad_token || !d->word_delim)
            return MM_ENOMEM;
        d->cleanup = jbool(j, "cleanup", 1);
    } else if (!strcmp(t, "Sequence")) {
        d->type = TK_D_SEQ;
        json_t *arr = json_object_get(j, "decoders");
        if (!json_is_array(arr))
            FAIL(MM_EFORMAT, "Sequence decoder without \"decoders\"");
        size_t k = json_array_size(arr);
        d->sub = mm_calloc(k ? k : 1, sizeof(tk_dec));
        if (!d->sub)
            return MM_ENOMEM;
        for (size_t i = 0; i < k; i++) {
            int rc = load_dec(&d->sub[i], json_array_get(arr, i), depth + 1, errbuf, errlen);
            d->nsub = i + 1;
            if (rc)
                return rc;
        }
    } else {
        FAIL(MM_EUNSUPPORTED, "unsupported decoder type '%s'", t);
    }
    return 0;
}

/* ------------------------------------------------------------ added tokens */

/* Builds one matching set: candidates bucketed by first byte, longest first. */
static int build_addset(mm_tok_t *tok, tk_addset *set, int normalized) {
    set->normalized = normalized;
    size_t n = 0;
    for (size_t i = 0; i < tok->nadded; i++)
        if (tok->added[i].normalized == normalized)
            n++;
    set->idx = mm_calloc(n ? n : 1, sizeof(uint32_t));
    if (!set->idx)
        return MM_ENOMEM;
    /* counting sort by first byte, then insertion sort by length desc */
    uint32_t count[256] = {0};
    for (size_t i = 0; i < tok->nadded; i++) {
        const tk_added *a = &tok->added[i];
        if (a->normalized != normalized)
            continue;
        size_t l = normalized ? a->norm_len : a->len;
        const char *s = normalized ? a->norm_content : a->content;
        if (l)
            count[(unsigned char)s[0]]++;
    }
    uint32_t pos = 0;
    for (int b = 0; b < 256; b++) {
        set->start[b] = pos;
        pos += count[b];
    }
    set->start[256] = pos;
    uint32_t fill[256];
    memcpy(fill, set->start, sizeof(fill));
    for (size_t i = 0; i < tok->nadded; i++) {
        const tk_added *a = &tok->added[i];
        if (a->normalized != normalized)
            continue;
        size_t l = normalized ? a->norm_len : a->len;
        const char *s = normalized ? a->norm_content : a->content;
        if (!l)
            continue;
        set->idx[fill[(unsigned char)s[0]]++] = (uint32_t)i;
    }
    for (int b = 0; b < 256; b++) {
        for (uint32_t i = set->start[b] + 1; i < set->start[b + 1]; i++) {
            uint32_t v = set->idx[i];
            size_t lv = normalized ? tok->added[v].norm_len : tok->added[v].len;
            uint32_t k = i;
            while (k > set->start[b]) {
                uint32_t u = set->idx[k - 1];
                size_t lu = normalized ? tok->added[u].norm_len : tok->added[u].len;
                if (lu >= lv)
                    break;
                set->idx[k] = u;
                k--;
            }
            set->idx[k] = v;
        }
    }
    return 0;
}

static int load_added(mm_tok_t *tok, json_t *arr, char *errbuf, size_t errlen) {
    if (!arr || json_is_null(arr))
        return 0;
    if (!json_is_array(arr))
        FAIL(MM_EFORMAT, "\"added_tokens\" must be an array");
    size_t n = json_array_size(arr);
    tok->added = mm_calloc(n ? n : 1, sizeof(tk_added));
    if (!tok->added)
        return MM_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(arr, i);
        json_t *c = json_object_get(e, "content");
        json_t *id = json_object_get(e, "id");
        if (!json_is_string(c) || !json_is_integer(id) || json_integer_value(id) < 0 ||
            json_integer_value(id) >= (1 << 22))
            FAIL(MM_EFORMAT, "added token %zu needs \"content\" and a valid \"id\"", i);
        tk_added *a = &tok->added[tok->nadded];
        a->content = mm_strndup(json_string_value(c), json_string_length(c));
        if (!a->content)
            return MM_ENOMEM;
        tok->nadded++;
        a->len = json_string_length(c);
        a->id = (int32_t)json_integer_value(id);
        a->single_word = jbool(e, "single_word", 0);
        a->lstrip = jbool(e, "lstrip", 0);
        a->rstrip = jbool(e, "rstrip", 0);
        a->special = jbool(e, "special", 0);
        a->normalized = jbool(e, "normalized", !a->special);
        TRY(tk_map_put(&tok->added_map, a->content, a->len, (int32_t)tok->nadded - 1));
    }
    return 0;
}

/* Runs the normalizer over one added token's content. */
static int normalize_one(const tk_norm *norm, tk_added *a, char *errbuf, size_t errlen) {
    tk_ctx cx;
    tk_ctx_init(&cx, errbuf, errlen);
    int rc = setjmp(cx.jb);
    if (rc == 0) {
        tk_nbuf b = {0};
        tk_nbuf_put(&cx, &b, a->content, a->len, 0, (uint32_t)a->len);
        tk_nstr s = b.t;
        tk_normalize(&cx, norm, &s);
        a->norm_content = mm_strndup(s.s ? s.s : "", s.n);
        a->norm_len = s.n;
        if (!a->norm_content)
            rc = MM_ENOMEM;
    }
    tk_ctx_free(&cx);
    return rc;
}

/* Normalized added tokens are matched on normalized text, so their pattern
 * is their content passed through the normalizer. */
static int normalize_added(mm_tok_t *tok, char *errbuf, size_t errlen) {
    for (size_t i = 0; i < tok->nadded; i++) {
        tk_added *a = &tok->added[i];
        if (!a->normalized)
            continue;
        if (!tok->norm) {
            a->norm_content = mm_strndup(a->content, a->len);
            if (!a->norm_content)
                return MM_ENOMEM;
            a->norm_len = a->len;
            continue;
        }
        int rc = normalize_one(tok->norm, a, errbuf, errlen);
        if (rc)
            return rc;
    }
    return 0;
}

/* ----------------------------------------------------------------- whole */

static int load_trunc_pad(mm_tok_t *tok, json_t *root) {
    json_t *tr = json_object_get(root, "truncation");
    if (json_is_object(tr)) {
        tok->has_trunc = 1;
        tok->file_max_length = (size_t)json_integer_value(json_object_get(tr, "max_length"));
        json_t *s = json_object_get(tr, "strategy");
        const char *ss = json_is_string(s) ? json_string_value(s) : "LongestFirst";
        tok->file_trunc_strategy = !strcmp(ss, "OnlyFirst")    ? MM_TOK_TRUNC_ONLY_FIRST
                                   : !strcmp(ss, "OnlySecond") ? MM_TOK_TRUNC_ONLY_SECOND
                                                               : MM_TOK_TRUNC_LONGEST_FIRST;
        json_t *d = json_object_get(tr, "direction");
        tok->file_trunc_side = json_is_string(d) && !strcmp(json_string_value(d), "Left");
    }
    json_t *pd = json_object_get(root, "padding");
    tok->default_pad_id = 0;
    int32_t pid = tk_map_get(&tok->added_map, "[PAD]", 5);
    if (pid < 0)
        pid = tk_map_get(&tok->added_map, "<pad>", 5);
    if (pid >= 0)
        tok->default_pad_id = tok->added[pid].id;
    if (json_is_object(pd)) {
        tok->has_pad = 1;
        json_t *s = json_object_get(pd, "strategy");
        json_t *fx = json_object_get(s, "Fixed");
        if (json_is_integer(fx)) {
            tok->file_pad_kind = MM_TOK_PAD_FIXED;
            tok->file_pad_length = (size_t)json_integer_value(fx);
        } else {
            tok->file_pad_kind = MM_TOK_PAD_LONGEST;
        }
        json_t *d = json_object_get(pd, "direction");
        tok->file_pad_side = json_is_string(d) && !strcmp(json_string_value(d), "Left");
        json_t *m = json_object_get(pd, "pad_to_multiple_of");
        tok->file_pad_multiple = json_is_integer(m) ? (size_t)json_integer_value(m) : 0;
        tok->file_pad_id = (int32_t)json_integer_value(json_object_get(pd, "pad_id"));
        tok->file_pad_type_id = (int32_t)json_integer_value(json_object_get(pd, "pad_type_id"));
        tok->default_pad_id = tok->file_pad_id;
    }
    return 0;
}

static int load_root(mm_tok_t *tok, json_t *root, char *errbuf, size_t errlen) {
    if (!json_is_object(root))
        FAIL(MM_EFORMAT, "tokenizer.json must be a JSON object");
    json_t *j;
    j = json_object_get(root, "normalizer");
    if (j && !json_is_null(j)) {
        tok->norm = mm_calloc(1, sizeof(tk_norm));
        if (!tok->norm)
            return MM_ENOMEM;
        TRY(load_norm(tok->norm, j, 0, errbuf, errlen));
    }
    j = json_object_get(root, "pre_tokenizer");
    if (j && !json_is_null(j)) {
        tok->pre = mm_calloc(1, sizeof(tk_pre));
        if (!tok->pre)
            return MM_ENOMEM;
        TRY(load_pre(tok->pre, j, 0, errbuf, errlen));
    }
    TRY(load_model(&tok->model, json_object_get(root, "model"), errbuf, errlen));
    j = json_object_get(root, "post_processor");
    if (j && !json_is_null(j)) {
        tok->post = mm_calloc(1, sizeof(tk_post));
        if (!tok->post)
            return MM_ENOMEM;
        TRY(load_post(tok->post, j, 0, errbuf, errlen));
    }
    j = json_object_get(root, "decoder");
    if (j && !json_is_null(j)) {
        tok->dec = mm_calloc(1, sizeof(tk_dec));
        if (!tok->dec)
            return MM_ENOMEM;
        TRY(load_dec(tok->dec, j, 0, errbuf, errlen));
    }
    TRY(load_added(tok, json_object_get(root, "added_tokens"), errbuf, errlen));
    TRY(normalize_added(tok, errbuf, errlen));
    int32_t maxid = -1;
    for (size_t i = 0; i < tok->nadded; i++)
        if (tok->added[i].id > maxid)
            maxid = tok->added[i].id;
    tok->added_id_cap = (size_t)(maxid + 1);
    if (tok->added_id_cap) {
        tok->added_by_id_idx = mm_malloc(tok->added_id_cap * sizeof(int32_t));
        if (!tok->added_by_id_idx)
            return MM_ENOMEM;
        for (size_t i = 0; i < tok->added_id_cap; i++)
            tok->added_by_id_idx[i] = -1;
        for (size_t i = 0; i < tok->nadded; i++)
            tok->added_by_id_idx[tok->added[i].id] = (int32_t)i;
    }
    TRY(build_addset(tok, &tok->set_raw, 0));
    TRY(build_addset(tok, &tok->set_norm, 1));
    TRY(load_trunc_pad(tok, root));
    /* vocab size as get_vocab_size(with_added_tokens=True) */
    size_t vs = tok->model.vocab.n;
    for (size_t i = 0; i < tok->nadded; i++)
        if (tk_map_get(&tok->model.vocab, tok->added[i].content, tok->added[i].len) < 0)
            vs++;
    tok->vocab_size = vs;
    return 0;
}

/* jansson refuses U+0000 in object keys, but vocabularies trained on real
 * text contain the token "\u0000".  Escapes of U+0000 inside *keys* are
 * rewritten to the (noncharacter) U+10FFFF before parsing, and vocab keys
 * map it back.  Returns NULL when nothing needs rewriting (or on OOM, with
 * *oom set). */
#define TK_NUL_ESC "\\uDBFF\\uDFFF"
static char *escape_nul_keys(const char *j, size_t n, size_t *outn, int *oom) {
    *oom = 0;
    if (!memmem(j, n, "\\u0000", 6))
        return NULL;
    /* positions of \u0000 escapes inside key strings */
    size_t cap = 16, cnt = 0;
    size_t *pos = mm_malloc(cap * sizeof(size_t));
    if (!pos) {
        *oom = 1;
        return NULL;
    }
    size_t i = 0;
    while (i < n) {
        if (j[i] != '"') {
            i++;
            continue;
        }
        size_t start_cnt = cnt, k = i + 1;
        while (k < n && j[k] != '"') {
            if (j[k] == '\\' && k + 1 < n) {
                if (k + 5 < n && !memcmp(j + k, "\\u0000", 6)) {
                    if (cnt == cap) {
                        size_t *np = mm_realloc(pos, cap * 2 * sizeof(size_t));
                        if (!np) {
                            mm_free(pos);
                            *oom = 1;
                            return NULL;
                        }
                        pos = np;
                        cap *= 2;
                    }
                    pos[cnt++] = k;
                }
                k += 2;
            } else {
                k++;
            }
        }
        size_t after = k + 1;
        while (after < n && (j[after] == ' ' || j[after] == '\t' || j[after] == '\n' || j[after] == '\r'))
            after++;
        if (!(after < n && j[after] == ':'))
            cnt = start_cnt; /* not a key: leave its escapes alone */
        i = k + 1;
    }
    if (!cnt) {
        mm_free(pos);
        return NULL;
    }
    size_t el = strlen(TK_NUL_ESC);
    char *o = mm_malloc(n + cnt * (el - 6) + 1);
    if (!o) {
        mm_free(pos);
        *oom = 1;
        return NULL;
    }
    size_t w = 0, r = 0;
    for (size_t q = 0; q < cnt; q++) {
        memcpy(o + w, j + r, pos[q] - r);
        w += pos[q] - r;
        memcpy(o + w, TK_NUL_ESC, el);
        w += el;
        r = pos[q] + 6;
    }
    memcpy(o + w, j + r, n - r);
    w += n - r;
    mm_free(pos);
    *outn = w;
    return o;
}

static void raw_free(tk_model *m) {
    mm_free((void *)m->raw_piece);
    mm_free((void *)m->raw_score);
    mm_free(m->raw_piece_len);
    mm_free(m->raw_score_len);
    m->raw_piece = m->raw_score = NULL;
    m->raw_piece_len = m->raw_score_len = NULL;
    m->nraw = 0;
    m->raw_ok = 0;
}

/* A big Unigram vocab ([[piece, score], ...], 250k entries for XLM-R) is
 * most of a tokenizer.json, and jansson spends most of the load building it
 * as a tree.  This lexer-only pass finds root.model.vocab and records each
 * piece's and score's raw text; when the shape is exactly that, tk_load
 * hands jansson the file with the array emptied and the Unigram loader reads
 * the raw entries (which also lets it read scores digit for digit the way
 * the reference's JSON library does).  Any surprise leaves raw_ok at 0 and
 * jansson parses everything.  On success *vb..*ve is the array's range. */
static void scan_unigram_vocab(tk_model *m, const char *j, size_t n, size_t *vb, size_t *ve) {
    int depth = 0, in_model = 0, in_vocab = 0, ok = 1;
    char key1[16] = "", key2[16] = "";
    size_t cap = 0, cnt = 0, vstart = 0, vend = 0;
    const char **pt = NULL, **st = NULL;
    uint32_t *pl = NULL, *sl = NULL;
    int elem = 0, got_piece = 0, got_score = 0;
    size_t i = 0;
    while (i < n && ok) {
        char c = j[i];
        if (c == '"') {
            size_t k = i + 1;
            while (k < n && j[k] != '"')
                k += j[k] == '\\' ? 2 : 1;
            if (k >= n)
                break;
            size_t a = k + 1;
            while (a < n && (j[a] == ' ' || j[a] == '\n' || j[a] == '\r' || j[a] == '\t'))
                a++;
            int is_key = a < n && j[a] == ':';
            if (is_key && (depth == 1 || depth == 2)) {
                size_t l = k - i - 1 < 15 ? k - i - 1 : 15;
                char *dst = depth == 1 ? key1 : key2;
                memcpy(dst, j + i + 1, l);
                dst[l] = 0;
            } else if (in_vocab) {
                if (depth != 4 || elem != 0 || got_piece) {
                    ok = 0;
                    break;
                }
                if (cnt == cap) {
                    size_t nc = cap ? cap * 2 : 4096;
                    const char **np = mm_realloc((void *)pt, nc * sizeof(char *));
                    if (np) pt = np;
                    const char **ns = np ? mm_realloc((void *)st, nc * sizeof(char *)) : NULL;
                    if (ns) st = ns;
                    uint32_t *npl = ns ? mm_realloc(pl, nc * sizeof(uint32_t)) : NULL;
                    if (npl) pl = npl;
                    uint32_t *nsl = npl ? mm_realloc(sl, nc * sizeof(uint32_t)) : NULL;
                    if (nsl) sl = nsl;
                    if (!nsl) {
                        ok = 0;
                        break;
                    }
                    cap = nc;
                }
                pt[cnt] = j + i + 1;
                pl[cnt] = (uint32_t)(k - i - 1);
                got_piece = 1;
            }
            i = k + 1;
            continue;
        }
        if (c == '{' || c == '[') {
            depth++;
            if (depth == 2 && c == '{' && !strcmp(key1, "model"))
                in_model = 1;
            else if (depth == 3 && c == '[' && in_model && !strcmp(key2, "vocab")) {
                in_vocab = 1;
                vstart = i;
            } else if (in_vocab) {
                if (depth != 4 || c != '[') {
                    ok = 0;
                    break;
                }
                elem = 0;
                got_piece = got_score = 0;
            }
            i++;
            continue;
        }
        if (c == '}' || c == ']') {
            if (in_vocab && depth == 4) {
                if (!got_piece || !got_score || elem != 1) {
                    ok = 0;
                    break;
                }
                cnt++;
            } else if (in_vocab && depth == 3) {
                in_vocab = 0;
                vend = i + 1;
                in_model = 0; /* only the first model.vocab counts */
                key1[0] = 0;
            } else if (depth == 2 && in_model) {
                in_model = 0;
            }
            depth--;
            i++;
            continue;
        }
        if (in_vocab && depth == 4 && c == ',') {
            elem++;
            i++;
            continue;
        }
        if (in_vocab && depth == 4 && (c == '-' || (c >= '0' && c <= '9'))) {
            size_t k = i;
            while (k < n && (j[k] == '-' || j[k] == '+' || j[k] == '.' || j[k] == 'e' || j[k] == 'E' ||
                             (j[k] >= '0' && j[k] <= '9')))
                k++;
            if (elem != 1 || got_score || !got_piece) {
                ok = 0;
                break;
            }
            st[cnt] = j + i;
            sl[cnt] = (uint32_t)(k - i);
            got_score = 1;
            i = k;
            continue;
        }
        if (in_vocab && depth >= 3 && c != ' ' && c != '\n' && c != '\r' && c != '\t' && c != ',') {
            ok = 0; /* true/false/null or anything else inside the vocab */
            break;
        }
        i++;
    }
    if (!ok || !vend) {
        mm_free((void *)pt);
        mm_free((void *)st);
        mm_free(pl);
        mm_free(sl);
        return;
    }
    m->raw_piece = pt;
    m->raw_score = st;
    m->raw_piece_len = pl;
    m->raw_score_len = sl;
    m->nraw = cnt;
    m->raw_ok = 1;
    *vb = vstart;
    *ve = vend;
}

/* The same for a {"token": id, ...} vocab (WordPiece, BPE, WordLevel):
 * records each key's raw text and its value's; raw_ok = 2. */
static void scan_vocab_object(tk_model *m, const char *j, size_t n, size_t *vb, size_t *ve) {
    int depth = 0, in_model = 0, in_vocab = 0, ok = 1, want = 0; /* want: 0 key, 1 value, 2 comma */
    char key1[16] = "", key2[16] = "";
    size_t cap = 0, cnt = 0, vstart = 0, vend = 0;
    const char **pt = NULL, **st = NULL;
    uint32_t *pl = NULL, *sl = NULL;
    size_t i = 0;
    while (i < n && ok) {
        char c = j[i];
        if (c == '"') {
            size_t k = i + 1;
            while (k < n && j[k] != '"')
                k += j[k] == '\\' ? 2 : 1;
            if (k >= n)
                break;
            size_t a = k + 1;
            while (a < n && (j[a] == ' ' || j[a] == '\n' || j[a] == '\r' || j[a] == '\t'))
                a++;
            int is_key = a < n && j[a] == ':';
            if (in_vocab) {
                if (depth != 3 || !is_key || want != 0) {
                    ok = 0;
                    break;
                }
                if (cnt == cap) {
                    size_t nc = cap ? cap * 2 : 4096;
                    const char **np = mm_realloc((void *)pt, nc * sizeof(char *));
                    if (np) pt = np;
                    const char **ns = np ? mm_realloc((void *)st, nc * sizeof(char *)) : NULL;
                    if (ns) st = ns;
                    uint32_t *npl = ns ? mm_realloc(pl, nc * sizeof(uint32_t)) : NULL;
                    if (npl) pl = npl;
                    uint32_t *nsl = npl ? mm_realloc(sl, nc * sizeof(uint32_t)) : NULL;
                    if (nsl) sl = nsl;
                    if (!nsl) {
                        ok = 0;
                        break;
                    }
                    cap = nc;
                }
                pt[cnt] = j + i + 1;
                pl[cnt] = (uint32_t)(k - i - 1);
                want = 1;
                i = a + 1; /* past the ':' */
                continue;
            }
            if (is_key && (depth == 1 || depth == 2)) {
                size_t l = k - i - 1 < 15 ? k - i - 1 : 15;
                char *dst = depth == 1 ? key1 : key2;
                memcpy(dst, j + i + 1, l);
                dst[l] = 0;
            }
            i = k + 1;
            continue;
        }
        if (in_vocab) {
            if (c == '}' && depth == 3 && want != 1) {
                in_vocab = 0;
                vend = i + 1;
                in_model = 0;
                key1[0] = 0;
                depth--;
                i++;
                continue;
            }
            if (c == ',' && want == 2) {
                want = 0;
                i++;
                continue;
            }
            if (want == 1 && (c == '-' || (c >= '0' && c <= '9'))) {
                size_t k = i;
                while (k < n && (j[k] == '-' || j[k] == '+' || j[k] == '.' || j[k] == 'e' ||
                                 j[k] == 'E' || (j[k] >= '0' && j[k] <= '9')))
                    k++;
                st[cnt] = j + i;
                sl[cnt] = (uint32_t)(k - i);
                cnt++;
                want = 2;
                i = k;
                continue;
            }
            if (c == ' ' || c == '\n' || c == '\r' || c == '\t') {
                i++;
                continue;
            }
            ok = 0;
            break;
        }
        if (c == '{' || c == '[') {
            depth++;
            if (depth == 2 && c == '{' && !strcmp(key1, "model"))
                in_model = 1;
            else if (depth == 3 && c == '{' && in_model && !strcmp(key2, "vocab")) {
                in_vocab = 1;
                vstart = i;
                want = 0;
            }
            i++;
            continue;
        }
        if (c == '}' || c == ']') {
            if (depth == 2 && in_model)
                in_model = 0;
            depth--;
            i++;
            continue;
        }
        i++;
    }
    if (!ok || !vend) {
        mm_free((void *)pt);
        mm_free((void *)st);
        mm_free(pl);
        mm_free(sl);
        return;
    }
    m->raw_piece = pt;
    m->raw_score = st;
    m->raw_piece_len = pl;
    m->raw_score_len = sl;
    m->nraw = cnt;
    m->raw_ok = 2;
    *vb = vstart;
    *ve = vend;
}

int tk_load(mm_tok_t *tok, const char *json, size_t len, char *errbuf, size_t errlen) {
    json_error_t je;
    /* big vocabularies are read from the raw text (see scan_unigram_vocab);
     * jansson gets the document with the vocab emptied */
    size_t vb = 0, ve = 0;
    char *cut = NULL;
    size_t cutn = 0;
    if (memmem(json, len, "\"Unigram\"", 9))
        scan_unigram_vocab(&tok->model, json, len, &vb, &ve);
    if (!tok->model.raw_ok)
        scan_vocab_object(&tok->model, json, len, &vb, &ve);
    if (tok->model.raw_ok) {
        cut = mm_malloc(len - (ve - vb) + 3);
        if (!cut) {
            raw_free(&tok->model);
            tk_errf(errbuf, errlen, "out of memory");
            return MM_ENOMEM;
        }
        memcpy(cut, json, vb);
        memcpy(cut + vb, tok->model.raw_ok == 2 ? "{}" : "[]", 2);
        memcpy(cut + vb + 2, json + ve, len - ve);
        cutn = len - (ve - vb) + 2;
    }
    const char *src = cut ? cut : json;
    size_t srcn = cut ? cutn : len;
    size_t n2 = 0;
    int oom = 0;
    char *esc = escape_nul_keys(src, srcn, &n2, &oom);
    if (oom) {
        raw_free(&tok->model);
        mm_free(cut);
        tk_errf(errbuf, errlen, "out of memory");
        return MM_ENOMEM;
    }
    json_t *root = json_loadb(esc ? esc : src, esc ? n2 : srcn, JSON_ALLOW_NUL, &je);
    mm_free(esc);
    mm_free(cut);
    if (!root) {
        raw_free(&tok->model);
        tk_errf(errbuf, errlen, "tokenizer.json: %s (line %d, column %d)", je.text, je.line,
                je.column);
        return json_error_code(&je) == json_error_out_of_memory ? MM_ENOMEM : MM_EPARSE;
    }
    int rc = load_root(tok, root, errbuf, errlen);
    raw_free(&tok->model); /* the raw entries pointed into json */
    json_decref(root);
    return rc;
}

void tk_free_parts(mm_tok_t *tok) {
    if (tok->norm) {
        norm_free(tok->norm);
        mm_free(tok->norm);
    }
    if (tok->pre) {
        pre_free(tok->pre);
        mm_free(tok->pre);
    }
    model_free(&tok->model);
    if (tok->post) {
        post_free(tok->post);
        mm_free(tok->post);
    }
    if (tok->dec) {
        dec_free(tok->dec);
        mm_free(tok->dec);
    }
    for (size_t i = 0; i < tok->nadded; i++) {
        mm_free(tok->added[i].content);
        mm_free(tok->added[i].norm_content);
    }
    mm_free(tok->added);
    mm_free(tok->added_by_id_idx);
    tk_map_free(&tok->added_map);
    mm_free(tok->set_raw.idx);
    mm_free(tok->set_norm.idx);
}
