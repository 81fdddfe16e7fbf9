/* tok_cli.c: a line-oriented driver over the mm_tok API, for tests.
 *
 * Usage: tok_cli TOKENIZER_JSON [OPTIONS] < requests.jsonl
 * Each input line is a JSON object {"text": str, "pair": str|null,
 * "add_special": bool, "max_length": int, "strategy": int, "side": int,
 * "pad": int, "pad_length": int, "pad_multiple": int, "pad_side": int,
 * "skip_special": bool}; each output line is {"ids": [...], "type_ids":
 * [...], "attention_mask": [...], "offsets": [...], "decode": str} or
 * {"error": str}.  The Python parity tests drive it when the extension is
 * not built, and it is handy for poking at a tokenizer by hand.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mm_alloc.h"
#include "mm_tok.h"

static int geti(json_t *o, const char *k, int d) {
    json_t *v = json_object_get(o, k);
    return json_is_integer(v) ? (int)json_integer_value(v) : json_is_boolean(v) ? json_is_true(v) : d;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: tok_cli tokenizer.json < requests.jsonl\n");
        return 2;
    }
    char err[512];
    mm_tok_t *tok;
    int rc = mm_tok_new_from_file(argv[1], &tok, err, sizeof err);
    if (rc) {
        printf("{\"load_error\": %d, \"message\": \"%s\"}\n", rc, err);
        return 1;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    while ((n = getline(&line, &cap, stdin)) > 0) {
        json_error_t je;
        json_t *req = json_loadb(line, (size_t)n, JSON_ALLOW_NUL, &je);
        json_t *res = json_object();
        if (!req) {
            json_object_set_new(res, "error", json_string("bad request"));
        } else {
            json_t *jt = json_object_get(req, "text");
            json_t *jp = json_object_get(req, "pair");
            mm_tok_params p;
            mm_tok_default_params(tok, &p);
            p.add_special_tokens = geti(req, "add_special", 1);
            p.max_length = (size_t)geti(req, "max_length", 0);
            p.trunc_strategy = geti(req, "strategy", 0);
            p.trunc_side = geti(req, "side", 0);
            p.padding = geti(req, "pad", 0);
            p.pad_length = (size_t)geti(req, "pad_length", 0);
            p.pad_to_multiple_of = (size_t)geti(req, "pad_multiple", 0);
            p.pad_side = geti(req, "pad_side", 0);
            p.want_offsets = 1;
            p.want_tokens = 1;
            mm_tok_encoding e;
            rc = mm_tok_encode(tok, json_string_value(jt), json_string_length(jt),
                               json_is_string(jp) ? json_string_value(jp) : NULL,
                               json_is_string(jp) ? json_string_length(jp) : 0, &p, &e, err, sizeof err);
            if (rc) {
                json_object_set_new(res, "error", json_string(err));
            } else {
                json_t *ids = json_array(), *tids = json_array(), *am = json_array(), *off = json_array(),
                       *toks = json_array();
                for (size_t i = 0; i < e.len; i++) {
                    json_array_append_new(ids, json_integer(e.ids[i]));
                    json_array_append_new(tids, json_integer(e.type_ids[i]));
                    json_array_append_new(am, json_integer(e.attention_mask[i]));
                    json_t *pr = json_array();
                    json_array_append_new(pr, json_integer(e.offsets[2 * i]));
                    json_array_append_new(pr, json_integer(e.offsets[2 * i + 1]));
                    json_array_append_new(pr, json_integer(e.sequence_ids[i]));
                    json_array_append_new(off, pr);
                    json_array_append_new(toks, json_string(e.tokens[i]));
                }
                json_object_set_new(res, "ids", ids);
                json_object_set_new(res, "type_ids", tids);
                json_object_set_new(res, "attention_mask", am);
                json_object_set_new(res, "offsets", off);
                json_object_set_new(res, "tokens", toks);
                char *dec = NULL;
                size_t dl = 0;
                rc = mm_tok_decode(tok, e.ids, e.len, geti(req, "skip_special", 1), &dec, &dl, err,
                                   sizeof err);
                if (rc)
                    json_object_set_new(res, "decode_error", json_string(err));
                else
                    json_object_set_new(res, "decode", json_stringn(dec, dl));
                mm_free(dec);
                mm_tok_encoding_clear(&e);
            }
            json_decref(req);
        }
        char *out = json_dumps(res, JSON_COMPACT | JSON_ENSURE_ASCII);
        if (!out)
            out = strdup("{\"error\": \"decode not representable\"}");
        puts(out);
        free(out);
        json_decref(res);
    }
    free(line);
    mm_tok_free(tok);
    return 0;
}
