/* mm_alloc.h: the allocation wrapper every C layer allocates through.
 *
 * Tests can make the Nth allocation from now fail (mm_alloc_fail_after) to
 * drive every out-of-memory path; each such path must return MM_ENOMEM and
 * leave its objects valid.  All functions are thread-safe.
 */
#ifndef MM_ALLOC_H
#define MM_ALLOC_H

#include <stddef.h>

void *mm_malloc(size_t n);
void *mm_calloc(size_t count, size_t size);
void *mm_realloc(void *p, size_t n);
void mm_free(void *p);
/* Copy of s (NUL-terminated); NULL on out-of-memory or when s is NULL. */
char *mm_strdup(const char *s);
/* Copy of the first n bytes of s, NUL-terminated. */
char *mm_strndup(const char *s, size_t n);

/* Testing: the allocation n calls from now fails (n=0: the next one);
 * n < 0 turns injection off.  Process-wide. */
void mm_alloc_fail_after(long n);

#endif
