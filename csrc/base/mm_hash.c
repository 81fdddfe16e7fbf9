/* mm_hash.c: storage for the thread-local uthash out-of-memory flag. */
#include "mm_hash.h"

_Thread_local int mm_hash_oom = 0;
