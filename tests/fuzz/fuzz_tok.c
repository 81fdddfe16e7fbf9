/* fuzz_tok.c: libFuzzer target for the tokenizer's loader and encoder.
 *
 * An input that starts with '{' is a tokenizer.json: it is loaded, and when
 * the load succeeds the tokenizer encodes and decodes a few fixed texts and
 * the input itself (so hostile vocabularies, regexes and charsmaps meet
 * real text).  Any other input is text: it is encoded, alone and as a pair,
 * with truncation and padding, by a few tokenizers loaded once from the seed
 * corpus's JSON (WordPiece and byte-level BPE built in here), and the ids
 * are decoded back.  Invalid UTF-8 must come back as MM_EINVAL, never a
 * crash; every call must leave nothing allocated.
 *
 * Build and run: tests/fuzz/run_fuzz.sh [seconds]
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mm_alloc.h"
#include "mm_err.h"
#include "mm_tok.h"

static const char *BERT_JSON =
    "{\"added_tokens\":[{\"id\":0,\"content\":\"[PAD]\",\"special\":true,\"normalized\":false},"
    "{\"id\":1,\"content\":\"[UNK]\",\"special\":true,\"normalized\":false},"
    "{\"id\":2,\"content\":\"[CLS]\",\"special\":true,\"normalized\":false},"
    "{\"id\":3,\"content\":\"[SEP]\",\"special\":true,\"normalized\":false,\"lstrip\":true,\"rstrip\":true},"
    "{\"id\":14,\"content\":\"mask\",\"special\":false,\"normalized\":true,\"single_word\":true}],"
    "\"normalizer\":{\"type\":\"BertNormalizer\",\"strip_accents\":null,\"lowercase\":true},"
    "\"pre_tokenizer\":{\"type\":\"BertPreTokenizer\"},"
    "\"post_processor\":{\"type\":\"BertProcessing\",\"sep\":[\"[SEP]\",3],\"cls\":[\"[CLS]\",2]},"
    "\"decoder\":{\"type\":\"WordPiece\",\"prefix\":\"##\",\"cleanup\":true},"
    "\"model\":{\"type\":\"WordPiece\",\"unk_token\":\"[UNK]\",\"max_input_chars_per_word\":100,"
    "\"vocab\":{\"[PAD]\":0,\"[UNK]\":1,\"[CLS]\":2,\"[SEP]\":3,\"a\":4,\"##a\":5,\"b\":6,\"##b\":7,"
    "\"ab\":8,\"##ab\":9,\"\xc3\xa9\":10,\"##\xc3\xa9\":11,\"\xe4\xb8\xad\":12,\"!\":13,\"mask\":14}}}";

static const char *BPE_JSON =
    "{\"added_tokens\":[{\"id\":0,\"content\":\"<s>\",\"special\":true,\"normalized\":false},"
    "{\"id\":1,\"content\":\"</s>\",\"special\":true,\"normalized\":false,\"lstrip\":true}],"
    "\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"NFKC\"},"
    "{\"type\":\"Replace\",\"pattern\":{\"Regex\":\"\\\\s+\"},\"content\":\" \"}]},"
    "\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":true,\"use_regex\":true},"
    "\"post_processor\":{\"type\":\"RobertaProcessing\",\"sep\":[\"</s>\",1],\"cls\":[\"<s>\",0]},"
    "\"decoder\":{\"type\":\"ByteLevel\"},"
    "\"model\":{\"type\":\"BPE\",\"byte_fallback\":true,\"vocab\":{\"<s>\":0,\"</s>\":1,\"a\":2,\"b\":3,"
    "\"\\u0120\":4,\"ab\":5,\"\\u0120a\":6,\"<0x41>\":7,\"<0xC3>\":8},\"merges\":[\"a b\",[\"\\u0120\",\"a\"]]}}";

static mm_tok_t *g_tok[2];

static void exercise(const mm_tok_t *t, const char *text, size_t len) {
    char err[256];
    mm_tok_params p;
    mm_tok_default_params(t, &p);
    p.want_offsets = p.want_tokens = 1;
    mm_tok_encoding e[2];
    int rc = mm_tok_encode(t, text, len, NULL, 0, &p, &e[0], err, sizeof err);
    if (rc == 0) {
        char *d = NULL;
        size_t dl = 0;
        if (mm_tok_decode(t, e[0].ids, e[0].len, (int)(len & 1), &d, &dl, err, sizeof err) == 0)
            mm_free(d);
        mm_tok_encoding_clear(&e[0]);
    } else if (rc != MM_EINVAL && rc != MM_ENOMEM && rc != MM_EINTERNAL) {
        abort();
    }
    p.max_length = len % 13;
    p.trunc_strategy = (int)(len % 3);
    p.trunc_side = (int)(len % 2);
    p.padding = MM_TOK_PAD_LONGEST;
    p.pad_to_multiple_of = 4;
    const char *texts[2] = {text, "a b ab"};
    size_t lens[2] = {len, 6};
    const char *pairs[2] = {"ab", text};
    size_t plens[2] = {2, len};
    rc = mm_tok_encode_batch(t, 2, texts, lens, pairs, plens, &p, e, err, sizeof err);
    if (rc == 0) {
        mm_tok_encoding_clear(&e[0]);
        mm_tok_encoding_clear(&e[1]);
    }
    /* decode arbitrary ids taken from the input bytes */
    int32_t ids[16];
    size_t n = 0;
    for (size_t i = 0; i + 1 < len && n < 16; i += 2)
        ids[n++] = (int32_t)(((unsigned char)text[i] << 8 | (unsigned char)text[i + 1]) % 40) - 2;
    char *d = NULL;
    size_t dl;
    if (mm_tok_decode(t, ids, n, 0, &d, &dl, err, sizeof err) == 0)
        mm_free(d);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    char err[256];
    if (mm_tok_new_from_json(BERT_JSON, strlen(BERT_JSON), &g_tok[0], err, sizeof err) ||
        mm_tok_new_from_json(BPE_JSON, strlen(BPE_JSON), &g_tok[1], err, sizeof err))
        abort();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *s = (const char *)data;
    if (size && s[0] == '{') {
        mm_tok_t *t = NULL;
        char err[256];
        if (mm_tok_new_from_json(s, size, &t, err, sizeof err) == 0) {
            static const char *texts[] = {"Hello, world! ab \xc3\xa9 \xe4\xb8\xad", "  \t\n", "",
                                          "[CLS] <s> </s> x", "a\xcc\x81\xef\xbd\xb6 \xe2\x91\xa0"};
            for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++)
                exercise(t, texts[i], strlen(texts[i]));
            exercise(t, s, size < 256 ? size : 256);
            mm_tok_free(t);
        }
        return 0;
    }
    for (int k = 0; k < 2; k++)
        exercise(g_tok[k], s, size);
    return 0;
}
