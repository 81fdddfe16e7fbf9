/* tok_bpe.c: byte-pair encoding (placeholder until implemented). */
#include "tok_internal.h"

#include <jansson.h>

#include "mm_err.h"

int tk_bpe_load(tk_model *m, json_t *jm, char *errbuf, size_t errlen);

int tk_bpe_load(tk_model *m, json_t *jm, char *errbuf, size_t errlen) {
    (void)m;
    (void)jm;
    tk_errf(errbuf, errlen, "unsupported model type 'BPE'");
    return MM_EUNSUPPORTED;
}

void tk_bpe_tokenize(tk_ctx *cx, const tk_model *m, tk_nstr s, tk_tokens *out) {
    (void)m; (void)s; (void)out;
    tk_fail(cx, MM_EUNSUPPORTED, "BPE");
}
