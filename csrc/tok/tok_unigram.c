/* tok_unigram.c: Unigram (placeholder until implemented). */
#include "tok_internal.h"

#include <jansson.h>

#include "mm_err.h"

int tk_unigram_load(tk_model *m, json_t *jm, char *errbuf, size_t errlen) {
    (void)m;
    (void)jm;
    tk_errf(errbuf, errlen, "unsupported model type 'Unigram'");
    return MM_EUNSUPPORTED;
}

void tk_unigram_tokenize(tk_ctx *cx, const tk_model *m, tk_nstr s, tk_tokens *out) {
    (void)m; (void)s; (void)out;
    tk_fail(cx, MM_EUNSUPPORTED, "Unigram");
}

void tk_model_free_extra(tk_model *m) { (void)m; }

int tk_precompiled_load(tk_norm *n, const char *b64, char *errbuf, size_t errlen) {
    (void)n; (void)b64;
    tk_errf(errbuf, errlen, "unsupported normalizer type 'Precompiled'");
    return MM_EUNSUPPORTED;
}

void tk_precompiled_normalize(tk_ctx *cx, const tk_norm *n, tk_nstr *s) {
    (void)cx; (void)n; (void)s;
}
