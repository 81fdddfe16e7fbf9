/* mm_alloc.c: malloc wrappers with failure injection for tests.
 *
 * The countdown is one atomic so injection is usable from multi-threaded
 * tests; when it is off (-1) the cost is one relaxed load per allocation.
 */
#include "mm_alloc.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static atomic_long fail_countdown = -1;

static int should_fail(void) {
    long v = atomic_load_explicit(&fail_countdown, memory_order_relaxed);
    if (v < 0)
        return 0;
    v = atomic_fetch_sub(&fail_countdown, 1);
    if (v == 0) {
        atomic_store(&fail_countdown, -1);
        return 1;
    }
    return 0;
}

void mm_alloc_fail_after(long n) { atomic_store(&fail_countdown, n < 0 ? -1 : n); }

void *mm_malloc(size_t n) { return should_fail() ? NULL : malloc(n ? n : 1); }

void *mm_calloc(size_t count, size_t size) {
    return should_fail() ? NULL : calloc(count ? count : 1, size ? size : 1);
}

void *mm_realloc(void *p, size_t n) { return should_fail() ? NULL : realloc(p, n ? n : 1); }

void mm_free(void *p) { free(p); }

char *mm_strndup(const char *s, size_t n) {
    if (!s)
        return NULL;
    char *d = mm_malloc(n + 1);
    if (!d)
        return NULL;
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

char *mm_strdup(const char *s) { return s ? mm_strndup(s, strlen(s)) : NULL; }
