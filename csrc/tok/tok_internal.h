/* tok_internal.h: the shapes shared by the files of csrc/tok.
 *
 * Two lifetimes meet here.  Everything reachable from struct mm_tok is built
 * at load time with mm_malloc and never changes afterwards, which is what
 * makes concurrent encodes safe.  Everything an encode call touches that is
 * not read-only lives in its tk_ctx: a bump arena that is reset between
 * texts and freed at the end.  An arena allocation that fails longjmps back
 * to the public entry point, which frees the arena and returns MM_ENOMEM;
 * this keeps the (many, small) allocation sites of the pipeline free of
 * error plumbing without leaking anything, because nothing an encode call
 * allocates lives outside its arena until the final copy-out.
 *
 * Text inside the pipeline is a tk_nstr: UTF-8 bytes plus, for every byte,
 * the [start, end) byte range of the original input it came from (the same
 * alignment model as the reference library, so offsets come out the same).
 */
#ifndef TOK_INTERNAL_H
#define TOK_INTERNAL_H

#include <oniguruma.h>
#include <setjmp.h>
#include <stddef.h>
#include <stdint.h>

#include "mm_tok.h"

/* ---------------------------------------------------------------- arena */

typedef struct tk_blk {
    struct tk_blk *next;
    size_t cap, used;
    _Alignas(16) unsigned char data[];
} tk_blk;

typedef struct tk_ctx {
    jmp_buf jb;
    tk_blk *head;      /* current block; older ones follow */
    tk_blk *first;     /* kept across resets */
    OnigRegion *region; /* lazily created, freed with the ctx */
    char *errbuf;
    size_t errlen;
} tk_ctx;

void tk_ctx_init(tk_ctx *cx, char *errbuf, size_t errlen);
void tk_ctx_reset(tk_ctx *cx);   /* forget all allocations, keep the first block */
void tk_ctx_free(tk_ctx *cx);
void *tk_alloc(tk_ctx *cx, size_t n);             /* never NULL: longjmps on OOM */
void *tk_grow(tk_ctx *cx, void *p, size_t old, size_t n); /* copy into a bigger block */
_Noreturn void tk_fail(tk_ctx *cx, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
OnigRegion *tk_region(tk_ctx *cx);

/* Growable byte buffer in the arena. */
typedef struct {
    char *p;
    size_t n, cap;
} tk_buf;
void tk_buf_put(tk_ctx *cx, tk_buf *b, const void *s, size_t n);
void tk_buf_putc(tk_ctx *cx, tk_buf *b, uint32_t cp); /* UTF-8 encodes cp */

/* ---------------------------------------------------------------- utf-8 */

/* Decodes one code point at s (valid UTF-8 assumed); sets *len. */
static inline uint32_t tk_u8dec(const unsigned char *s, int *len) {
    unsigned c = s[0];
    if (c < 0x80) { *len = 1; return c; }
    if (c < 0xE0) { *len = 2; return ((c & 0x1F) << 6) | (s[1] & 0x3F); }
    if (c < 0xF0) { *len = 3; return ((c & 0x0F) << 12) | ((s[1] & 0x3F) << 6) | (s[2] & 0x3F); }
    *len = 4;
    return ((c & 0x07) << 18) | ((s[1] & 0x3F) << 12) | ((s[2] & 0x3F) << 6) | (s[3] & 0x3F);
}
static inline int tk_u8len(unsigned char c) { return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4; }
int tk_u8enc(uint32_t cp, char *out);
/* Returns the offset of the first invalid byte, or (size_t)-1 when valid. */
size_t tk_u8check(const char *s, size_t n);

/* ------------------------------------------------------------- unicode */

int tk_is_whitespace(uint32_t c);  /* Rust char::is_whitespace (White_Space) */
int tk_is_numeric(uint32_t c);     /* Rust char::is_numeric (N*) */
int tk_is_bert_punct(uint32_t c);  /* ASCII punctuation or Unicode P* */
int tk_is_mn(uint32_t c);          /* nonspacing mark (BertNormalizer) */
int tk_is_mark(uint32_t c);        /* combining mark (StripAccents) */
int tk_nf_keep(uint32_t c, int compat); /* the reference does not decompose c */
int tk_ccc0(uint32_t c);            /* combining class 0 to the reference */
uint32_t tk_lower_fix(uint32_t c);  /* the reference's lowercase where utf8proc's differs, else 0 */
int tk_is_rust_word(uint32_t c);   /* Rust regex \\w */
int tk_is_rust_space(uint32_t c);  /* Rust regex \\s */
int tk_is_control_bert(uint32_t c);
int tk_is_cjk(uint32_t c);

/* --------------------------------------------------------- aligned text */

typedef struct {
    char *s;     /* UTF-8 bytes */
    uint32_t *a; /* 2 per byte: original [start, end) */
    size_t n;
} tk_nstr;

typedef struct {
    tk_nstr t;
    size_t cap;
} tk_nbuf; /* builder */

void tk_nbuf_putc(tk_ctx *cx, tk_nbuf *b, uint32_t cp, uint32_t os, uint32_t oe);
void tk_nbuf_put(tk_ctx *cx, tk_nbuf *b, const char *s, size_t n, uint32_t os, uint32_t oe);
tk_nstr tk_nstr_sub(tk_nstr s, size_t from, size_t to);
long tk_json_unescape(const char *s, size_t n, char *out); /* -1 on a bad escape */
void tk_replay_changes(tk_ctx *cx, tk_nstr *s, const uint32_t *cp, const int32_t *chg, size_t n);

/* ----------------------------------------------------------- vocab map */

/* An immutable open-addressing map from byte strings to int32 (built at
 * load time).  Chosen over uthash here because the encode path looks up
 * substrings by (pointer, length) millions of times per second. */
typedef struct {
    uint32_t *slots; /* index+1 into keys, 0 = empty */
    size_t mask;
    const char **keys;
    uint32_t *klen;
    int32_t *vals;
    size_t n, cap;
} tk_map;

int tk_map_put(tk_map *m, const char *k, size_t n, int32_t v); /* copies k; 0/-ENOMEM; replaces */
int tk_map_reserve(tk_map *m, size_t n); /* room for n keys without rehashing */
int32_t tk_map_get(const tk_map *m, const char *k, size_t n);  /* -1 if absent */
void tk_map_free(tk_map *m);

/* ------------------------------------------------------------- pieces */

/* One split of the text on its way through the pipeline: either free text,
 * or an already-decided added token (id >= 0). */
typedef struct {
    tk_nstr t;
    int32_t id;
} tk_piece;

typedef struct {
    tk_piece *v;
    size_t n, cap;
} tk_pieces;

void tk_pieces_push(tk_ctx *cx, tk_pieces *p, tk_nstr t, int32_t id);

/* A token produced by the model, in original-text byte offsets. */
typedef struct {
    int32_t id;
    int32_t type_id;
    uint32_t os, oe;
    const char *tok;
    uint32_t toklen;
    int8_t special;
    int8_t seq; /* 0, 1, or -1 for specials */
} tk_token;

typedef struct {
    tk_token *v;
    size_t n, cap;
} tk_tokens;

void tk_tokens_push(tk_ctx *cx, tk_tokens *t, int32_t id, const char *tok, size_t toklen,
                    uint32_t os, uint32_t oe);

/* -------------------------------------------------------- components */

enum tk_norm_type {
    TK_N_BERT, TK_N_LOWER, TK_N_NFC, TK_N_NFD, TK_N_NFKC, TK_N_NFKD, TK_N_STRIP_ACCENTS,
    TK_N_STRIP, TK_N_REPLACE, TK_N_PREPEND, TK_N_PRECOMPILED, TK_N_SEQ,
};

typedef struct tk_norm {
    int type;
    int clean_text, chinese, strip_accents, lowercase; /* bert */
    int left, right;                                   /* strip */
    char *pattern, *content;                           /* replace / prepend */
    size_t pattern_len, content_len;
    regex_t *re;                                       /* replace with regex */
    /* precompiled */
    const uint32_t *trie;
    size_t trie_units;
    const char *pc_norm;
    size_t pc_norm_len;
    unsigned char *pc_blob;
    struct tk_norm *sub;
    size_t nsub;
} tk_norm;

enum tk_behavior { TK_B_REMOVED, TK_B_ISOLATED, TK_B_PREV, TK_B_NEXT, TK_B_CONTIG };

enum tk_pre_type {
    TK_P_BERT, TK_P_WHITESPACE, TK_P_WSSPLIT, TK_P_METASPACE, TK_P_BYTELEVEL, TK_P_PUNCT,
    TK_P_DIGITS, TK_P_SPLIT, TK_P_SEQ, TK_P_CHARDELIM,
};

enum tk_prepend { TK_PREPEND_ALWAYS, TK_PREPEND_FIRST, TK_PREPEND_NEVER };

typedef struct tk_pre {
    int type;
    int behavior;
    int invert;
    int individual_digits;
    int add_prefix_space, use_regex, trim_offsets;
    uint32_t replacement; /* metaspace */
    int prepend_scheme, split;
    char *pattern;
    size_t pattern_len;
    regex_t *re;
    uint32_t delim;
    struct tk_pre *sub;
    size_t nsub;
} tk_pre;

enum tk_model_type { TK_M_WORDPIECE, TK_M_BPE, TK_M_UNIGRAM, TK_M_WORDLEVEL };

typedef struct tk_merge {
    int32_t rank, new_id;
} tk_merge;

typedef struct tk_model {
    int type;
    tk_map vocab;             /* token -> id */
    char **id2tok;            /* id -> token (NUL-terminated), NULL holes */
    uint32_t *id2len;
    size_t nids;              /* max id + 1 */
    int32_t unk_id;           /* -1: none */
    /* wordpiece */
    char *prefix;             /* continuing_subword_prefix (also BPE) */
    size_t prefix_len;
    size_t max_chars;
    size_t max_tok_len;
    /* bpe */
    char *suffix;             /* end_of_word_suffix */
    size_t suffix_len;
    int fuse_unk, byte_fallback, ignore_merges;
    /* merges: open addressing on the (left id, right id) pair */
    uint64_t *mkeys;
    tk_merge *mvals;
    size_t mmask;
    int32_t byte_ids[256];    /* <0xXX> ids for byte fallback, -1 when absent */
    /* unigram */
    double *scores;
    /* load-time only: the raw JSON text of a Unigram vocab, parsed by
     * tok_load.c's scanner instead of jansson (see scan_unigram_vocab) */
    const char **raw_piece, **raw_score;
    uint32_t *raw_piece_len, *raw_score_len;
    size_t nraw;
    int raw_ok;
    double min_score;
    /* double-array-free trie: sorted by first byte for prefix search */
    struct tk_trie *trie;
} tk_model;

enum tk_post_type { TK_PP_TEMPLATE, TK_PP_BERT, TK_PP_ROBERTA, TK_PP_BYTELEVEL, TK_PP_SEQ };

typedef struct {
    int is_seq;        /* 1: $A/$B, 0: special token */
    int seq;           /* 0 = A, 1 = B */
    int type_id;
    int32_t *ids;      /* special: its ids */
    char **toks;
    size_t nids;
} tk_tpl_piece;

typedef struct tk_post {
    int type;
    tk_tpl_piece *single, *pair;
    size_t nsingle, npair;
    int trim_offsets, add_prefix_space;
    struct tk_post *sub;
    size_t nsub;
} tk_post;

enum tk_dec_type {
    TK_D_WORDPIECE, TK_D_METASPACE, TK_D_BYTELEVEL, TK_D_BPE, TK_D_BYTEFALLBACK, TK_D_FUSE,
    TK_D_STRIP, TK_D_REPLACE, TK_D_CTC, TK_D_SEQ,
};

typedef struct tk_dec {
    int type;
    char *prefix;  /* wordpiece prefix, bpe suffix */
    int cleanup;
    uint32_t replacement;
    int prepend_scheme;
    char *pattern, *content;
    regex_t *re;
    char *pad_token, *word_delim;
    int start, stop;
    uint32_t strip_char;
    struct tk_dec *sub;
    size_t nsub;
} tk_dec;

typedef struct {
    char *content;
    size_t len;
    int32_t id;
    int single_word, lstrip, rstrip, normalized, special;
    char *norm_content; /* content after the normalizer (for normalized tokens) */
    size_t norm_len;
} tk_added;

/* A matching set over added tokens: for each first byte, candidates sorted
 * longest first (leftmost-longest matching). */
typedef struct {
    uint32_t *idx;       /* indices into mm_tok.added */
    uint32_t start[257]; /* idx range per first byte */
    int normalized;      /* match norm_content instead of content */
} tk_addset;

struct mm_tok {
    tk_norm *norm;
    tk_pre *pre;
    tk_model model;
    tk_post *post;
    tk_dec *dec;
    tk_added *added;
    size_t nadded;
    tk_map added_map;  /* content -> index into added */
    tk_addset set_raw, set_norm;
    int32_t *added_by_id_idx; /* id -> index into added, -1 */
    size_t added_id_cap;
    /* the file's truncation / padding blocks */
    int has_trunc, has_pad;
    size_t file_max_length;
    int file_trunc_strategy, file_trunc_side;
    int file_pad_kind; /* enum mm_tok_padding */
    size_t file_pad_length, file_pad_multiple;
    int file_pad_side;
    int32_t file_pad_id, file_pad_type_id;
    int32_t default_pad_id;
    size_t vocab_size;
    size_t max_id_plus_one;
};

/* ------------------------------------------------------------ entries */

void tk_normalize(tk_ctx *cx, const tk_norm *n, tk_nstr *s);
void tk_pretokenize(tk_ctx *cx, const tk_pre *p, tk_pieces *ps);
void tk_model_tokenize(tk_ctx *cx, const tk_model *m, tk_nstr s, tk_tokens *out);
/* Appends decoded text of tokens; tokens are NUL-free byte strings. */
typedef struct {
    const char **s;
    size_t *n;
    size_t count;
} tk_strs;
void tk_decode_chain(tk_ctx *cx, const tk_dec *d, tk_strs *toks);

/* Regex find: calls on each match [s, e) in bytes; returns nothing. */
typedef void (*tk_match_cb)(tk_ctx *cx, void *ud, size_t s, size_t e);
void tk_regex_each(tk_ctx *cx, regex_t *re, const char *s, size_t n, tk_match_cb cb, void *ud);

/* Split a piece list by char predicate or regex with a behavior. */
void tk_split_matches(tk_ctx *cx, tk_pieces *out, tk_nstr s, const size_t *ms, size_t nm,
                      int behavior, int invert);

/* Loading */
int tk_load(mm_tok_t *tok, const char *json, size_t len, char *errbuf, size_t errlen);
void tk_free_parts(mm_tok_t *tok);
int tk_regex_compile(const char *pat, size_t n, regex_t **out, char *errbuf, size_t errlen);

const char *tk_model_id_to_token(const tk_model *m, int32_t id, size_t *len);

void tk_errf(char *errbuf, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* bytes-to-unicode table for ByteLevel */
extern uint32_t tk_byte2cp[256];
int tk_cp2byte(uint32_t cp); /* -1 when not in the table */
void tk_bytelevel_init(void);

#endif
