/* mm_hash.h: the one place uthash is included.
 *
 * uthash calls exit() when it cannot allocate; here an allocation failure
 * sets mm_hash_oom instead, and callers check it after each HASH_ADD and
 * undo the insert.  Allocation goes through mm_alloc.  Include this header,
 * never <uthash.h> directly.
 */
#ifndef MM_HASH_H
#define MM_HASH_H

#include "mm_alloc.h"

/* Set to 1 by a failed uthash allocation; the thread that inserts resets it.
 * Thread-local so two tables on two threads never see each other's failure. */
extern _Thread_local int mm_hash_oom;

#define uthash_malloc(sz) mm_malloc(sz)
#define uthash_free(ptr, sz) mm_free(ptr)
#define uthash_nonfatal_oom(obj) (mm_hash_oom = 1)
#define HASH_NONFATAL_OOM 1

#include <uthash.h>

#endif
