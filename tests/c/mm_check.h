/* mm_check.h: the C tests' one assertion helper.  CHECK counts a failure and
 * goes on (so one run reports every broken check); mm_check_done() ends
 * main(): exit status 1 when anything failed, else the test's "passed" line.
 * Each test is one translation unit, so the counter is per test program. */
#ifndef MM_CHECK_H
#define MM_CHECK_H

#include <stdio.h>

static int failures;

#define CHECK(cond)                                                                    \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            failures++;                                                                \
        }                                                                              \
    } while (0)

static inline int mm_check_done(const char *passed) {
    if (failures) {
        fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    printf("%s\n", passed);
    return 0;
}

#endif
