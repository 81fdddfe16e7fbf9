/* test_tok.c: behaviour tests of the C tokenizer on small inline
 * tokenizer.json documents (the exhaustive parity tests against the
 * reference library live in tests/python/test_tokenizer_parity.py).
 * Covers encode/pair/truncation/padding/offsets/decode for WordPiece, load
 * errors (unknown components, bad JSON), invalid UTF-8, out-of-memory
 * paths, and an 8-thread concurrent encode for ThreadSanitizer.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mm_alloc.h"
#include "mm_err.h"
#include "mm_tok.h"

#include "../mm_check.h"

static const char *BERT_JSON =
    "{\"version\":\"1.0\",\"truncation\":{\"max_length\":4,\"strategy\":\"LongestFirst\",\"stride\":0},"
    "\"padding\":{\"strategy\":{\"Fixed\":16},\"direction\":\"Right\",\"pad_to_multiple_of\":null,"
    "\"pad_id\":0,\"pad_type_id\":0,\"pad_token\":\"[PAD]\"},"
    "\"added_tokens\":["
    "{\"id\":0,\"content\":\"[PAD]\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,\"special\":true},"
    "{\"id\":1,\"content\":\"[UNK]\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,\"special\":true},"
    "{\"id\":2,\"content\":\"[CLS]\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,\"special\":true},"
    "{\"id\":3,\"content\":\"[SEP]\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,\"special\":true}],"
    "\"normalizer\":{\"type\":\"BertNormalizer\",\"clean_text\":true,\"handle_chinese_chars\":true,"
    "\"strip_accents\":null,\"lowercase\":true},"
    "\"pre_tokenizer\":{\"type\":\"BertPreTokenizer\"},"
    "\"post_processor\":{\"type\":\"BertProcessing\",\"sep\":[\"[SEP]\",3],\"cls\":[\"[CLS]\",2]},"
    "\"decoder\":{\"type\":\"WordPiece\",\"prefix\":\"##\",\"cleanup\":true},"
    "\"model\":{\"type\":\"WordPiece\",\"unk_token\":\"[UNK]\",\"continuing_subword_prefix\":\"##\","
    "\"max_input_chars_per_word\":100,\"vocab\":{\"[PAD]\":0,\"[UNK]\":1,\"[CLS]\":2,\"[SEP]\":3,"
    "\"hello\":4,\"world\":5,\"!\":6,\"un\":7,\"##aff\":8,\"##able\":9,\",\":10,\"cafe\":11,"
    "\"\xe4\xb8\xad\":12,\"a\":13}}}";

/* A tiny byte-level BPE (GPT-2 style: regex split with look-ahead, byte map,
 * merges as strings and as pairs). */
static const char *BPE_JSON =
    "{\"added_tokens\":[{\"id\":0,\"content\":\"<s>\",\"special\":true,\"normalized\":false},"
    "{\"id\":1,\"content\":\"</s>\",\"special\":true,\"normalized\":false}],"
    "\"normalizer\":null,"
    "\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":true,\"use_regex\":true},"
    "\"post_processor\":{\"type\":\"RobertaProcessing\",\"sep\":[\"</s>\",1],\"cls\":[\"<s>\",0],"
    "\"trim_offsets\":true,\"add_prefix_space\":false},"
    "\"decoder\":{\"type\":\"ByteLevel\"},"
    "\"model\":{\"type\":\"BPE\",\"dropout\":null,\"unk_token\":null,\"vocab\":{\"<s>\":0,\"</s>\":1,"
    "\"h\":2,\"e\":3,\"l\":4,\"o\":5,\"\u0120\":6,\"w\":7,\"r\":8,\"d\":9,\"he\":10,\"ll\":11,"
    "\"hell\":12,\"hello\":13,\"\u0120w\":14,\"\u0120wo\":15,\"\u0120wor\":16,\"\u0120worl\":17,"
    "\"\u0120world\":18},"
    "\"merges\":[\"h e\",\"l l\",[\"he\",\"ll\"],\"hell o\",\"\u0120 w\",\"\u0120w o\",\"\u0120wo r\","
    "\"\u0120wor l\",\"\u0120worl d\"]}}";

static mm_tok_t *load(const char *json) {
    char err[256];
    mm_tok_t *t = NULL;
    int rc = mm_tok_new_from_json(json, strlen(json), &t, err, sizeof err);
    if (rc)
        fprintf(stderr, "load failed: %s\n", err);
    CHECK(rc == 0);
    return t;
}

static int ids_eq(const mm_tok_encoding *e, const int32_t *want, size_t n) {
    if (e->len != n)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (e->ids[i] != want[i])
            return 0;
    return 1;
}

static void test_wordpiece(void) {
    mm_tok_t *t = load(BERT_JSON);
    if (!t)
        return;
    char err[256];
    mm_tok_encoding e;
    mm_tok_params p;
    mm_tok_default_params(t, &p);
    p.want_offsets = 1;
    p.want_tokens = 1;
    const char *txt = "Hello, WORLD! unaffable Caf\xc3\xa9 \xe4\xb8\xad [CLS] xyz";
    CHECK(mm_tok_encode(t, txt, strlen(txt), NULL, 0, &p, &e, err, sizeof err) == 0);
    /* [CLS] hello , world ! un ##aff ##able cafe 中 [CLS] [UNK] [SEP]; the file's 4/16 ignored */
    int32_t want[] = {2, 4, 10, 5, 6, 7, 8, 9, 11, 12, 2, 1, 3};
    CHECK(ids_eq(&e, want, sizeof want / sizeof want[0]));
    CHECK(e.offsets[2 * 1] == 0 && e.offsets[2 * 1 + 1] == 5);
    CHECK(!strcmp(e.tokens[6], "##aff"));
    CHECK(e.attention_mask[0] == 1 && e.special_tokens_mask[0] == 1);
    char *d = NULL;
    size_t dl;
    CHECK(mm_tok_decode(t, e.ids, e.len, 1, &d, &dl, err, sizeof err) == 0);
    CHECK(d && !strcmp(d, "hello, world! unaffable cafe \xe4\xb8\xad"));
    mm_free(d);
    CHECK(mm_tok_decode(t, e.ids, e.len, 0, &d, &dl, err, sizeof err) == 0);
    CHECK(d && !strcmp(d, "[CLS] hello, world! unaffable cafe \xe4\xb8\xad [CLS] [UNK] [SEP]"));
    mm_free(d);
    mm_tok_encoding_clear(&e);

    /* pair + truncation + padding chosen by the caller */
    p.max_length = 7;
    p.padding = MM_TOK_PAD_FIXED;
    p.pad_length = 9;
    CHECK(mm_tok_encode(t, "hello world hello world", 23, "a a a a", 7, &p, &e, err, sizeof err) == 0);
    int32_t want2[] = {2, 4, 5, 3, 13, 13, 3, 0, 0};
    CHECK(ids_eq(&e, want2, 9));
    CHECK(e.type_ids[4] == 1 && e.type_ids[6] == 1 && e.type_ids[7] == 0);
    CHECK(e.attention_mask[6] == 1 && e.attention_mask[7] == 0);
    mm_tok_encoding_clear(&e);

    /* the file's own blocks only when asked */
    mm_tok_default_params(t, &p);
    p.use_file_truncation = 1;
    p.use_file_padding = 1;
    CHECK(mm_tok_encode(t, "hello world hello", 17, NULL, 0, &p, &e, err, sizeof err) == 0);
    CHECK(e.len == 16 && e.ids[3] == 3 && e.ids[4] == 0);
    mm_tok_encoding_clear(&e);

    /* batch, longest padding, left side */
    mm_tok_default_params(t, &p);
    p.padding = MM_TOK_PAD_LONGEST;
    p.pad_side = MM_TOK_LEFT;
    const char *texts[] = {"hello", "hello world !"};
    mm_tok_encoding es[2];
    CHECK(mm_tok_encode_batch(t, 2, texts, NULL, NULL, NULL, &p, es, err, sizeof err) == 0);
    CHECK(es[0].len == 5 && es[1].len == 5 && es[0].ids[0] == 0 && es[0].ids[2] == 2);
    mm_tok_encoding_clear(&es[0]);
    mm_tok_encoding_clear(&es[1]);

    /* invalid UTF-8 is rejected with a message */
    err[0] = 0;
    CHECK(mm_tok_encode(t, "ab\xff", 3, NULL, 0, NULL, &e, err, sizeof err) == MM_EINVAL);
    CHECK(strstr(err, "UTF-8") != NULL);
    CHECK(e.len == 0 && e.ids == NULL);
    CHECK(mm_tok_encode(t, "\xe4\xb8", 2, NULL, 0, NULL, &e, err, sizeof err) == MM_EINVAL);
    CHECK(mm_tok_encode(t, "\xed\xa0\x80", 3, NULL, 0, NULL, &e, err, sizeof err) == MM_EINVAL);

    /* lookups */
    CHECK(mm_tok_token_to_id(t, "##aff", 5) == 8);
    CHECK(mm_tok_token_to_id(t, "nope", 4) == -1);
    CHECK(!strcmp(mm_tok_id_to_token(t, 9), "##able"));
    CHECK(mm_tok_id_to_token(t, 999) == NULL);
    CHECK(mm_tok_vocab_size(t) == 14);

    /* too small a max_length for the specials */
    mm_tok_default_params(t, &p);
    p.max_length = 1;
    CHECK(mm_tok_encode(t, "hello", 5, NULL, 0, &p, &e, err, sizeof err) == MM_EINVAL);
    mm_tok_free(t);
}

static void test_bpe(void) {
    mm_tok_t *t = load(BPE_JSON);
    if (!t)
        return;
    char err[256];
    mm_tok_encoding e;
    mm_tok_params p;
    mm_tok_default_params(t, &p);
    p.want_offsets = 1;
    /* "  world" keeps one space for the next word: \s+(?!\S) */
    CHECK(mm_tok_encode(t, "hello  world", 12, NULL, 0, &p, &e, err, sizeof err) == 0);
    int32_t want[] = {0, 13, 6, 18, 1};
    CHECK(ids_eq(&e, want, 5));
    CHECK(e.offsets[2 * 3] == 7 && e.offsets[2 * 3 + 1] == 12); /* trimmed: "world" */
    char *d = NULL;
    size_t dl;
    CHECK(mm_tok_decode(t, e.ids, e.len, 1, &d, &dl, err, sizeof err) == 0);
    CHECK(d && !strcmp(d, "hello  world"));
    mm_free(d);
    mm_tok_encoding_clear(&e);
    /* characters outside the vocab with no unk token are dropped, like the reference */
    CHECK(mm_tok_encode(t, "hex", 3, NULL, 0, &p, &e, err, sizeof err) == 0);
    int32_t want2[] = {0, 10, 1};
    CHECK(ids_eq(&e, want2, 3));
    mm_tok_encoding_clear(&e);
    mm_tok_free(t);
}

/* Unigram vocab read by the raw scanner: escapes, surrogate pairs, exponent
 * scores; and a shape it does not expect falls back to jansson. */
static void test_unigram_raw(void) {
    const char *js =
        "{\"model\":{\"type\":\"Unigram\",\"unk_id\":0,\"vocab\":[[\"<unk>\",0.0],"
        "[\"\\u00e9\",-1e0],[\"\\ud83d\\ude00\",-2.5E+0],[\"a\\\"b\",-3],[\"x\\ty\",-0.4e1],"
        "[\"\\u0000\",-5.5]]},\"pre_tokenizer\":{\"type\":\"WhitespaceSplit\"}}";
    mm_tok_t *t = load(js);
    if (!t)
        return;
    CHECK(mm_tok_token_to_id(t, "\xc3\xa9", 2) == 1);
    CHECK(mm_tok_token_to_id(t, "\xf0\x9f\x98\x80", 4) == 2);
    CHECK(mm_tok_token_to_id(t, "a\"b", 3) == 3);
    CHECK(mm_tok_token_to_id(t, "x\ty", 3) == 4);
    CHECK(mm_tok_token_to_id(t, "\0", 1) == 5);
    char err[256];
    mm_tok_encoding e;
    CHECK(mm_tok_encode(t, "\xc3\xa9\xf0\x9f\x98\x80 a\"b q", 12, NULL, 0, NULL, &e, err, sizeof err) == 0);
    int32_t want[] = {1, 2, 3, 0};
    CHECK(ids_eq(&e, want, 4));
    mm_tok_encoding_clear(&e);
    mm_tok_free(t);
    /* an object vocab read raw: escaped keys, U+0000, a quote */
    const char *wl = "{\"model\":{\"type\":\"WordLevel\",\"unk_token\":\"<u>\",\"vocab\":{\"<u>\":0,"
                     "\"\\u0000\":1,\"a\\\"b\":2 , \"\\u00e9\" : 3,\"\\ud83d\\ude00\":4}},"
                     "\"pre_tokenizer\":{\"type\":\"WhitespaceSplit\"}}";
    mm_tok_t *w = load(wl);
    if (w) {
        CHECK(mm_tok_token_to_id(w, "\0", 1) == 1);
        CHECK(mm_tok_token_to_id(w, "a\"b", 3) == 2);
        CHECK(mm_tok_token_to_id(w, "\xc3\xa9", 2) == 3);
        CHECK(mm_tok_token_to_id(w, "\xf0\x9f\x98\x80", 4) == 4);
        CHECK(mm_tok_vocab_size(w) == 5);
        mm_tok_free(w);
    }
    /* a lone surrogate is a parse error, as jansson says for other strings */
    const char *bad = "{\"model\":{\"type\":\"Unigram\",\"vocab\":[[\"\\ud83d\",0.0]]}}";
    t = NULL;
    CHECK(mm_tok_new_from_json(bad, strlen(bad), &t, err, sizeof err) == MM_EPARSE && t == NULL);
    /* entries that are not [string, number] go through jansson and fail there */
    const char *odd = "{\"model\":{\"type\":\"Unigram\",\"vocab\":[[\"a\",0.0,1]]}}";
    CHECK(mm_tok_new_from_json(odd, strlen(odd), &t, err, sizeof err) != 0 && t == NULL);
}

static void test_load_errors(void) {
    char err[256];
    mm_tok_t *t = NULL;
    const char *bad = "{\"model\":{\"type\":\"Frobnicator\",\"vocab\":{}}}";
    CHECK(mm_tok_new_from_json(bad, strlen(bad), &t, err, sizeof err) == MM_EUNSUPPORTED);
    CHECK(strstr(err, "Frobnicator") != NULL && t == NULL);
    const char *bad2 = "{\"normalizer\":{\"type\":\"Weird\"},\"model\":{\"type\":\"WordLevel\",\"vocab\":{}}}";
    CHECK(mm_tok_new_from_json(bad2, strlen(bad2), &t, err, sizeof err) == MM_EUNSUPPORTED);
    CHECK(strstr(err, "Weird") != NULL);
    CHECK(mm_tok_new_from_json("{\"model\":", 9, &t, err, sizeof err) == MM_EPARSE);
    CHECK(mm_tok_new_from_json("[1,2]", 5, &t, err, sizeof err) == MM_EFORMAT);
    CHECK(mm_tok_new_from_file("/nonexistent/tokenizer.json", &t, err, sizeof err) == MM_EIO);
}

static void test_oom(void) {
    /* every allocation of a load, then of an encode, failing in turn */
    size_t len = strlen(BERT_JSON);
    int seen_ok = 0;
    for (long k = 0; k < 2000 && !seen_ok; k++) {
        mm_tok_t *t = NULL;
        mm_alloc_fail_after(k);
        int rc = mm_tok_new_from_json(BERT_JSON, len, &t, NULL, 0);
        mm_alloc_fail_after(-1);
        CHECK(rc == 0 || rc == MM_ENOMEM || rc == MM_EPARSE);
        if (rc == 0) {
            seen_ok = 1;
            mm_tok_free(t);
        }
    }
    CHECK(seen_ok);
    mm_tok_t *t = load(BERT_JSON);
    if (!t)
        return;
    seen_ok = 0;
    for (long k = 0; k < 200 && !seen_ok; k++) {
        mm_tok_encoding e;
        mm_tok_params p;
        mm_tok_default_params(t, &p);
        p.want_tokens = p.want_offsets = 1;
        p.padding = MM_TOK_PAD_FIXED;
        p.pad_length = 32;
        mm_alloc_fail_after(k);
        int rc = mm_tok_encode(t, "hello world unaffable", 21, "cafe", 4, &p, &e, NULL, 0);
        mm_alloc_fail_after(-1);
        CHECK(rc == 0 || rc == MM_ENOMEM);
        if (rc == 0) {
            seen_ok = 1;
            CHECK(e.len == 32);
        } else {
            CHECK(e.ids == NULL && e.len == 0);
        }
        mm_tok_encoding_clear(&e);
    }
    CHECK(seen_ok);
    mm_tok_free(t);
}

/* Out-of-memory at every allocation of loading, then encoding with, the
 * seed tokenizers of the fuzz corpus (BPE with byte fallback, Unigram,
 * WordLevel with every normalizer/pre-tokenizer/decoder kind). */
static void test_oom_files(void) {
    static const char *files[] = {"tok_bpe.json", "tok_unigram.json", "tok_wordlevel_misc.json"};
    for (size_t f = 0; f < sizeof files / sizeof files[0]; f++) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", TOK_CORPUS_DIR, files[f]);
        mm_tok_t *t = NULL;
        char err[256];
        CHECK(mm_tok_new_from_file(path, &t, err, sizeof err) == 0);
        mm_tok_free(t);
        int seen_ok = 0;
        for (long k = 0; k < 5000 && !seen_ok; k++) {
            t = NULL;
            mm_alloc_fail_after(k);
            int rc = mm_tok_new_from_file(path, &t, err, sizeof err);
            mm_alloc_fail_after(-1);
            if (rc != 0 && rc != MM_ENOMEM)
                fprintf(stderr, "%s: alloc %ld: rc %d: %s\n", files[f], k, rc, err);
            CHECK(rc == 0 || rc == MM_ENOMEM);
            if (rc == 0) {
                seen_ok = 1;
                for (long q = 0; q < 400; q++) {
                    mm_tok_encoding e;
                    mm_tok_params p;
                    mm_tok_default_params(t, &p);
                    p.want_tokens = p.want_offsets = 1;
                    p.padding = MM_TOK_PAD_FIXED;
                    p.pad_length = 40;
                    const char *txt = "Hello a b ab 12, x\xc3\xa9 \xe2\x91\xa0 AB";
                    mm_alloc_fail_after(q);
                    int r2 = mm_tok_encode(t, txt, strlen(txt), "ab ba", 5, &p, &e, NULL, 0);
                    char *d = NULL;
                    size_t dl;
                    int r3 = r2 == 0 ? mm_tok_decode(t, e.ids, e.len, 0, &d, &dl, NULL, 0) : 0;
                    mm_alloc_fail_after(-1);
                    CHECK(r2 == 0 || r2 == MM_ENOMEM);
                    CHECK(r3 == 0 || r3 == MM_ENOMEM);
                    mm_free(d);
                    mm_tok_encoding_clear(&e);
                    if (r2 == 0 && r3 == 0)
                        break;
                }
                mm_tok_free(t);
            }
        }
        CHECK(seen_ok);
    }
}

typedef struct {
    mm_tok_t *tok;
    int ok;
} thr_arg;

static void *thr_main(void *ud) {
    thr_arg *a = ud;
    a->ok = 1;
    char err[128];
    for (int i = 0; i < 300; i++) {
        char txt[128];
        snprintf(txt, sizeof txt, "Hello world %d unaffable, caf\xc3\xa9 \xe4\xb8\xad!", i);
        mm_tok_params p;
        mm_tok_default_params(a->tok, &p);
        p.want_offsets = p.want_tokens = 1;
        p.max_length = 8 + (size_t)(i % 5);
        mm_tok_encoding e;
        if (mm_tok_encode(a->tok, txt, strlen(txt), i % 2 ? "hello" : NULL, 5, &p, &e, err, sizeof err)) {
            a->ok = 0;
            continue;
        }
        if (e.ids[0] != 2 || e.ids[1] != 4 || e.len > p.max_length)
            a->ok = 0;
        char *d = NULL;
        size_t dl;
        if (mm_tok_decode(a->tok, e.ids, e.len, 1, &d, &dl, err, sizeof err) || strncmp(d, "hello world", 11))
            a->ok = 0;
        mm_free(d);
        mm_tok_encoding_clear(&e);
    }
    return NULL;
}

static void *thr_bpe(void *ud) {
    thr_arg *a = ud;
    a->ok = 1;
    char err[128];
    for (int i = 0; i < 300; i++) {
        const char *txt = i % 2 ? "hello  world hello" : "world\n\nhello";
        mm_tok_encoding e;
        if (mm_tok_encode(a->tok, txt, strlen(txt), NULL, 0, NULL, &e, err, sizeof err) || e.len < 4)
            a->ok = 0;
        mm_tok_encoding_clear(&e);
    }
    return NULL;
}

static void test_threads(void) {
    mm_tok_t *bpe = load(BPE_JSON);
    mm_tok_t *t = load(BERT_JSON);
    if (!t || !bpe)
        return;
    pthread_t th[8];
    thr_arg args[8];
    for (int i = 0; i < 8; i++) {
        args[i].tok = i % 2 ? bpe : t;
        pthread_create(&th[i], NULL, i % 2 ? thr_bpe : thr_main, &args[i]);
    }
    for (int i = 0; i < 8; i++) {
        pthread_join(th[i], NULL);
        CHECK(args[i].ok);
    }
    mm_tok_free(t);
    mm_tok_free(bpe);
}

int main(int argc, char **argv) {
    const char *which = argc > 1 ? argv[1] : "all";
    if (!strcmp(which, "all") || !strcmp(which, "wordpiece"))
        test_wordpiece();
    if (!strcmp(which, "all") || !strcmp(which, "bpe"))
        test_bpe();
    if (!strcmp(which, "all") || !strcmp(which, "unigram_raw"))
        test_unigram_raw();
    if (!strcmp(which, "all") || !strcmp(which, "load_errors"))
        test_load_errors();
    if (!strcmp(which, "all") || !strcmp(which, "oom"))
        test_oom();
    if (!strcmp(which, "all") || !strcmp(which, "oom_files"))
        test_oom_files();
    if (!strcmp(which, "all") || !strcmp(which, "threads"))
        test_threads();
    return mm_check_done("tokenizer tests passed");
}
