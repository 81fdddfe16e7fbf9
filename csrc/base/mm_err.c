/* mm_err.c: names and phrases for the error table in mm_err.h.
 *
 * Generated from the same X-macro as the enum so a code, its stable name
 * and its phrase can never drift apart.
 */
#include "mm_err.h"

const char *mm_err_name(int code) {
    switch (code) {
#define MM__ERR_NAME(sym, val, name, phrase) case (val): return name;
        MM_ERROR_TABLE(MM__ERR_NAME)
#undef MM__ERR_NAME
    }
    return "UNKNOWN_ERROR";
}

const char *mm_strerror(int code) {
    switch (code) {
#define MM__ERR_PHRASE(sym, val, name, phrase) case (val): return phrase;
        MM_ERROR_TABLE(MM__ERR_PHRASE)
#undef MM__ERR_PHRASE
    }
    return "unknown error";
}
