/* mm_embcache.h: the embedding cache.
 *
 * Maps (model, resolved revision, vector-changing options, text) to the
 * float32 vector computed for it, so repeated texts skip the model.  LRU
 * bounded by an entry count; entries expire ttl after insertion.  Vectors
 * are stored and returned bit for bit.  Thread-safe (one internal mutex, a
 * leaf in every lock order).
 */
#ifndef MM_EMBCACHE_H
#define MM_EMBCACHE_H

#include <stddef.h>
#include <stdint.h>

typedef struct mm_embcache mm_embcache_t;

typedef struct mm_embcache_stats {
    uint64_t hits, misses, inserts, evictions, expirations;
    size_t size, capacity;
} mm_embcache_stats;

/* A cache of at most max_entries vectors living ttl_ms each.  0 or MM_ENOMEM. */
int mm_embcache_new(size_t max_entries, int64_t ttl_ms, mm_embcache_t **out);
void mm_embcache_free(mm_embcache_t *c);

/* Looks up prefix+text; on a hit copies the vector into out (out_cap floats
 * of room, or 0 for "as many as it has"), sets *dim_out to its length and
 * returns 1; 0 on a miss.  A vector longer than out_cap returns MM_ENOBUFS
 * with its length in *dim_out and counts as neither a hit nor a miss (call
 * again with room). */
int mm_embcache_get(mm_embcache_t *c, const char *prefix, size_t prefix_len, const char *text,
                    size_t text_len, float *out, size_t out_cap, size_t *dim_out);
/* mm_embcache_get that also returns the entry's token count (0 when none
 * was stored) through *tokens (may be NULL). */
int mm_embcache_get_tok(mm_embcache_t *c, const char *prefix, size_t prefix_len, const char *text,
                        size_t text_len, float *out, size_t out_cap, size_t *dim_out,
                        uint32_t *tokens);

/* Inserts (or refreshes) prefix+text -> vec[dim].  0 or MM_ENOMEM (the cache
 * stays valid; the entry is simply not cached). */
int mm_embcache_put(mm_embcache_t *c, const char *prefix, size_t prefix_len, const char *text,
                    size_t text_len, const float *vec, size_t dim);
/* mm_embcache_put that also stores how many tokens the model read for the
 * text, so a later hit can report usage. */
int mm_embcache_put_tok(mm_embcache_t *c, const char *prefix, size_t prefix_len, const char *text,
                        size_t text_len, const float *vec, size_t dim, uint32_t tokens);

/* Removes every entry whose key starts with prefix (a model reloaded at a new
 * revision).  Returns how many. */
size_t mm_embcache_purge_prefix(mm_embcache_t *c, const char *prefix, size_t prefix_len);

void mm_embcache_stats_get(mm_embcache_t *c, mm_embcache_stats *s);

#endif
