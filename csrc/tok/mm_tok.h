/* mm_tok.h: Hugging Face tokenizer.json in C.
 *
 * A tokenizer is loaded once (mm_tok_new_from_file / _from_json) and is then
 * immutable: any number of threads may call the encode and decode functions
 * on the same mm_tok_t at once, without locks.  Every encode call works in a
 * scratch arena of its own; results are returned in caller-owned structs
 * whose buffers are released with mm_tok_encoding_clear / mm_free.
 *
 * The pipeline follows the `tokenizers` library exactly: added tokens are
 * split out first, then normalizer -> pre-tokenizer -> model ->
 * post-processor, then truncation and padding as the *caller* asks (the
 * file's own "truncation" and "padding" blocks are ignored unless
 * params.use_file_truncation / use_file_padding are set).
 *
 * Errors: functions return 0 or a negative MM_E* code (mm_err.h) and, when
 * errbuf is not NULL, write a one-line message into it (NUL-terminated,
 * truncated to errlen).  Input text must be valid UTF-8: anything else is
 * rejected with MM_EINVAL and a message giving the byte offset.
 *
 * Typical use from a worker thread (a batch truncated at N, no padding):
 *
 *     mm_tok_params p;
 *     mm_tok_default_params(tok, &p);   // add_special_tokens=1, no padding
 *     p.max_length = N;                  // total length, [CLS]/[SEP] included
 *     mm_tok_encoding enc[n];
 *     int rc = mm_tok_encode_batch(tok, n, texts, lens, NULL, NULL, &p, enc,
 *                                  err, sizeof err);
 *     // enc[i].ids / .attention_mask / .type_ids, enc[i].len entries each
 *     for (i = 0; i < n; i++) mm_tok_encoding_clear(&enc[i]);
 *
 *     char *text; size_t tl;
 *     rc = mm_tok_decode(tok, ids, nids, 1, &text, &tl, err, sizeof err);
 *     ... mm_free(text);
 */
#ifndef MM_TOK_H
#define MM_TOK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct mm_tok mm_tok_t;

/* Loads tokenizer.json from `path`.  Everything the encoder needs is in
 * tokenizer.json; when it has no "padding" block, the default pad id is
 * taken from the pad_token of special_tokens_map.json or
 * tokenizer_config.json beside it, if present.  On success *out owns a new
 * tokenizer (free with mm_tok_free).  Returns MM_EIO if the file cannot be
 * read, MM_EPARSE for malformed JSON, MM_EUNSUPPORTED for a component type
 * this library does not implement (the message names it), MM_EFORMAT for a
 * structurally wrong file, MM_ENOMEM.  Any thread; blocks on file I/O. */
int mm_tok_new_from_file(const char *path, mm_tok_t **out, char *errbuf, size_t errlen);

/* As mm_tok_new_from_file, from the JSON text json[0..len).  The text is not
 * retained. */
int mm_tok_new_from_json(const char *json, size_t len, mm_tok_t **out, char *errbuf,
                         size_t errlen);

/* Frees a tokenizer; NULL is a no-op.  No other thread may be using it. */
void mm_tok_free(mm_tok_t *tok);

enum mm_tok_trunc_strategy {
    MM_TOK_TRUNC_LONGEST_FIRST = 0,
    MM_TOK_TRUNC_ONLY_FIRST = 1,
    MM_TOK_TRUNC_ONLY_SECOND = 2,
};

enum mm_tok_side { MM_TOK_RIGHT = 0, MM_TOK_LEFT = 1 };

enum mm_tok_padding {
    MM_TOK_PAD_NONE = 0,
    MM_TOK_PAD_LONGEST = 1, /* to the longest encoding of the batch */
    MM_TOK_PAD_FIXED = 2,   /* to pad_length */
};

/* Encode options.  Fill with mm_tok_default_params() first, then change the
 * fields you need, so that fields added later keep their defaults. */
typedef struct mm_tok_params {
    int add_special_tokens;    /* 1: apply the post-processor's special tokens */
    size_t max_length;         /* 0: no truncation; else total length incl. specials */
    int trunc_strategy;        /* enum mm_tok_trunc_strategy */
    int trunc_side;            /* enum mm_tok_side: which end is cut */
    int padding;               /* enum mm_tok_padding */
    size_t pad_length;         /* MM_TOK_PAD_FIXED target */
    size_t pad_to_multiple_of; /* 0: off */
    int pad_side;              /* enum mm_tok_side */
    int32_t pad_id;            /* default: the file's pad id, else 0 */
    int32_t pad_type_id;       /* default 0 */
    int want_offsets;          /* fill mm_tok_encoding.offsets */
    int want_tokens;           /* fill mm_tok_encoding.tokens */
    int use_file_truncation;   /* apply the file's "truncation" block (overrides above) */
    int use_file_padding;      /* apply the file's "padding" block (overrides above) */
} mm_tok_params;

/* Defaults: add_special_tokens=1, no truncation (strategy longest-first,
 * right side), no padding, pad_id from the file's padding block, else the
 * side files' pad_token (see mm_tok_new_from_file), else the "[PAD]" or
 * "<pad>" added token, else 0; no offsets or tokens. */
void mm_tok_default_params(const mm_tok_t *tok, mm_tok_params *p);

/* One encoded sequence (or pair).  Every array has `len` entries and is
 * owned by the struct; release with mm_tok_encoding_clear. */
typedef struct mm_tok_encoding {
    size_t len;
    int32_t *ids;
    int32_t *type_ids;
    uint8_t *attention_mask;      /* 1 for real tokens, 0 for padding */
    uint8_t *special_tokens_mask; /* 1 for special and padding tokens */
    /* When params.want_offsets: 2*len byte offsets [start, end) into the
     * input text the token came from (sequence_ids says which); (0,0) for
     * special tokens and padding.  NULL otherwise. */
    uint32_t *offsets;
    /* When params.want_offsets: 0 or 1 (first or pair text), -1 for special
     * tokens and padding.  NULL otherwise. */
    int8_t *sequence_ids;
    /* When params.want_tokens: len NUL-terminated token strings, pointing
     * into one block owned by the struct.  NULL otherwise. */
    char **tokens;
    /* With tokens: their byte lengths (a token may contain U+0000). */
    uint32_t *token_lens;
} mm_tok_encoding;

/* Encodes text[0..len) (and, if pair is not NULL, pair[0..pair_len)) into
 * *out (which it overwrites; it need not be initialized).  params NULL means
 * mm_tok_default_params.  Padding MM_TOK_PAD_LONGEST is a no-op for a single
 * encode.  Returns MM_EINVAL for invalid UTF-8 or impossible truncation
 * settings, MM_ENOMEM, MM_EINTERNAL for a regex engine failure.  On error
 * *out is left empty.  Any thread, concurrently on one tokenizer; does not
 * block. */
int mm_tok_encode(const mm_tok_t *tok, const char *text, size_t len, const char *pair,
                  size_t pair_len, const mm_tok_params *params, mm_tok_encoding *out,
                  char *errbuf, size_t errlen);

/* Encodes n texts (pairs may be NULL, or an array of n texts, none NULL)
 * into outs[0..n).  lens[i] is the byte length of texts[i] (lens NULL: the
 * texts are NUL-terminated; the same for pair_lens).  Padding LONGEST pads
 * to the longest of the batch.  Runs on the calling thread (callers bring
 * their own parallelism).  On error every outs[i] is left empty. */
int mm_tok_encode_batch(const mm_tok_t *tok, size_t n, const char *const *texts,
                        const size_t *lens, const char *const *pairs, const size_t *pair_lens,
                        const mm_tok_params *params, mm_tok_encoding *outs, char *errbuf,
                        size_t errlen);

/* Pads encodings that were made apart (say, chunks of one batch encoded on
 * several threads with padding NONE): MM_TOK_PAD_LONGEST pads all n to the
 * longest, MM_TOK_PAD_FIXED to params->pad_length, both rounded up to
 * pad_to_multiple_of; NONE does nothing.  Returns MM_ENOMEM (encodings
 * stay valid, some maybe padded).  Any thread. */
int mm_tok_pad(const mm_tok_t *tok, mm_tok_encoding *encs, size_t n, const mm_tok_params *params);

/* Releases the arrays of an encoding and zeroes it; safe on a zeroed one. */
void mm_tok_encoding_clear(mm_tok_encoding *enc);

/* Decodes ids back to text.  Unknown ids are skipped (as the reference
 * does); with skip_special_tokens, ids of special added tokens are dropped.
 * On success *out is a NUL-terminated string allocated with mm_malloc (free
 * with mm_free) and *out_len its length.  Any thread. */
int mm_tok_decode(const mm_tok_t *tok, const int32_t *ids, size_t n, int skip_special_tokens,
                  char **out, size_t *out_len, char *errbuf, size_t errlen);

/* The token string of an id (added tokens included; a normalized added
 * token answers with its normalized form, as the reference does), or NULL.
 * The string lives as long as the tokenizer. */
const char *mm_tok_id_to_token(const mm_tok_t *tok, int32_t id);

/* As mm_tok_id_to_token, also giving the byte length (tokens may contain
 * U+0000); len may be NULL. */
const char *mm_tok_id_to_token_n(const mm_tok_t *tok, int32_t id, size_t *len);

/* The id of token s[0..len) (added tokens first), or -1. */
int32_t mm_tok_token_to_id(const mm_tok_t *tok, const char *s, size_t len);

/* Vocabulary size including added tokens (as `get_vocab_size(True)`). */
size_t mm_tok_vocab_size(const mm_tok_t *tok);

#ifdef __cplusplus
}
#endif

#endif
