/* mm_native_tok.h: the native backend's view of the C tokenizer.
 *
 * The backend needs three things from a tokenizer: encode one text with the
 * model's special tokens, truncated to max_len tokens the way Hugging Face
 * truncates (content shortened, special tokens kept); the untruncated length
 * (truncate=false makes an over-long input an error); and the token count of
 * a prompt as sentence-transformers measures it (trailing special token
 * excluded).  This file is the one place that calls csrc/tok (mm_tok.h), so
 * the backend does not depend on the rest of that API.
 *
 * A loaded tokenizer is immutable and used by one worker; the encode buffers
 * belong to the caller.
 */
#ifndef MM_NATIVE_TOK_H
#define MM_NATIVE_TOK_H

#include <stddef.h>
#include <stdint.h>

typedef struct mm__ntok mm__ntok;

/* Loads dir/tokenizer.json (its own truncation and padding are ignored).
 * 0, or a negative code with a message in err. */
int mm__ntok_load(const char *dir, mm__ntok **out, char *err, size_t errlen);
void mm__ntok_free(mm__ntok *t);

/* Encodes text (len bytes of UTF-8) with special tokens into ids / type_ids
 * (arrays of cap entries).  max_len > 0 truncates to max_len tokens as
 * Hugging Face does (specials kept); max_len 0 does not truncate.  *n
 * receives the full token count; at most cap entries are written.
 * 0, or a negative code with a message in err. */
int mm__ntok_encode(const mm__ntok *t, const char *text, size_t len, size_t max_len,
                    int64_t *ids, int64_t *type_ids, size_t cap, size_t *n, char *err,
                    size_t errlen);

/* The same for a text pair (cross-encoders: [CLS] text [SEP] pair [SEP]),
 * truncated longest-first to max_len as Hugging Face does. */
int mm__ntok_encode_pair(const mm__ntok *t, const char *text, size_t len, const char *pair,
                         size_t pair_len, size_t max_len, int64_t *ids, int64_t *type_ids,
                         size_t cap, size_t *n, char *err, size_t errlen);

/* mm__ntok_encode with the post-processor's special tokens added or not
 * (add_special = 0: a prompt rendered by a chat template, which wrote them). */
int mm__ntok_encode_ex(const mm__ntok *t, const char *text, size_t len, int add_special,
                       size_t max_len, int64_t *ids, int64_t *type_ids, size_t cap, size_t *n,
                       char *err, size_t errlen);

/* True when id is a byte-fallback piece ("<0xE6>"): its text depends on the
 * byte pieces around it (an invalid run decodes to one U+FFFD per piece). */
int mm__ntok_is_byte_piece(const mm__ntok *t, int32_t id);

/* Tokens a prompt occupies at the start of an encoded text: its encoding with
 * special tokens, minus a trailing special token.  0, or a negative code. */
int mm__ntok_prompt_len(const mm__ntok *t, const char *prompt, size_t *out, char *err,
                        size_t errlen);

/* Decodes n ids to UTF-8 with special tokens skipped, as Hugging Face's
 * decode(ids, skip_special_tokens=True): *out (mm_malloc'd, NUL-terminated,
 * *out_len bytes) is the caller's to mm_free.  0, or a negative code. */
int mm__ntok_decode(const mm__ntok *t, const int32_t *ids, size_t n, char **out, size_t *out_len,
                    char *err, size_t errlen);

#endif
