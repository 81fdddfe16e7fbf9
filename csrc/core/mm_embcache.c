/* mm_embcache.c: an LRU map from full keys to float vectors.
 *
 * The key is stored whole (prefix bytes then text bytes), never only a
 * hash of it, so two texts can never share a vector.  A doubly linked list
 * in recency order gives O(1) hit promotion and tail eviction; expiry is
 * checked lazily on lookup and at the tail when inserting.
 */
#include "mm_embcache.h"

#include <pthread.h>
#include <string.h>

#include "mm_alloc.h"
#include "mm_err.h"
#include "mm_hash.h"
#include "mm_time.h"

typedef struct entry {
    UT_hash_handle hh;
    struct entry *prev, *next; /* recency list, most recent first */
    int64_t expires_ns;
    size_t key_len;
    size_t dim;
    uint32_t tokens; /* what the model read for the text; 0 if unknown */
    float *vec;      /* dim floats, in the entry's own block */
    char *key;       /* key_len bytes, in the entry's own block after vec */
} entry;

struct mm_embcache {
    pthread_mutex_t mu;
    entry *table;       /* guarded by mu */
    entry *head, *tail; /* guarded by mu */
    size_t size;        /* guarded by mu */
    size_t max_entries; /* immutable */
    int64_t ttl_ns;     /* immutable */
    mm_embcache_stats st; /* guarded by mu */
};

int mm_embcache_new(size_t max_entries, int64_t ttl_ms, mm_embcache_t **out) {
    mm_embcache_t *c = mm_calloc(1, sizeof *c);
    if (!c)
        return MM_ENOMEM;
    pthread_mutex_init(&c->mu, NULL);
    c->max_entries = max_entries;
    c->ttl_ns = ttl_ms * 1000000LL;
    *out = c;
    return 0;
}

static void unlink_entry(mm_embcache_t *c, entry *e) {
    if (e->prev)
        e->prev->next = e->next;
    else
        c->head = e->next;
    if (e->next)
        e->next->prev = e->prev;
    else
        c->tail = e->prev;
    e->prev = e->next = NULL;
}

static void push_front(mm_embcache_t *c, entry *e) {
    e->prev = NULL;
    e->next = c->head;
    if (c->head)
        c->head->prev = e;
    c->head = e;
    if (!c->tail)
        c->tail = e;
}

static void destroy_entry(mm_embcache_t *c, entry *e) {
    HASH_DEL(c->table, e);
    unlink_entry(c, e);
    c->size--;
    mm_free(e); /* vec and key with it */
}

void mm_embcache_free(mm_embcache_t *c) {
    if (!c)
        return;
    while (c->head)
        destroy_entry(c, c->head);
    pthread_mutex_destroy(&c->mu);
    mm_free(c);
}

/* Builds prefix+text into a buffer; the small case stays on the stack. */
static char *make_key(const char *prefix, size_t plen, const char *text, size_t tlen, char *stack,
                      size_t stack_cap) {
    size_t n = plen + tlen;
    char *k = n <= stack_cap ? stack : mm_malloc(n ? n : 1);
    if (!k)
        return NULL;
    memcpy(k, prefix, plen);
    memcpy(k + plen, text, tlen);
    return k;
}

int mm_embcache_get(mm_embcache_t *c, const char *prefix, size_t prefix_len, const char *text,
                    size_t text_len, float *out, size_t out_cap, size_t *dim_out) {
    return mm_embcache_get_tok(c, prefix, prefix_len, text, text_len, out, out_cap, dim_out, NULL);
}

int mm_embcache_get_tok(mm_embcache_t *c, const char *prefix, size_t prefix_len, const char *text,
                        size_t text_len, float *out, size_t out_cap, size_t *dim_out,
                        uint32_t *tokens) {
    char stack[512];
    char *key = make_key(prefix, prefix_len, text, text_len, stack, sizeof stack);
    if (!key)
        return 0;
    size_t klen = prefix_len + text_len;
    int hit = 0;
    pthread_mutex_lock(&c->mu);
    entry *e = NULL;
    HASH_FIND(hh, c->table, key, klen, e);
    if (e && e->expires_ns <= mm_now_ns()) {
        destroy_entry(c, e);
        c->st.expirations++;
        e = NULL;
    }
    if (e && out_cap && e->dim > out_cap) {
        /* neither a hit nor a miss yet: the caller retries with room */
        if (dim_out)
            *dim_out = e->dim;
        hit = MM_ENOBUFS;
    } else if (e) {
        if (out)
            memcpy(out, e->vec, e->dim * sizeof(float));
        if (dim_out)
            *dim_out = e->dim;
        if (tokens)
            *tokens = e->tokens;
        unlink_entry(c, e);
        push_front(c, e);
        c->st.hits++;
        hit = 1;
    } else {
        c->st.misses++;
    }
    pthread_mutex_unlock(&c->mu);
    if (key != stack)
        mm_free(key);
    return hit;
}

int mm_embcache_put(mm_embcache_t *c, const char *prefix, size_t prefix_len, const char *text,
                    size_t text_len, const float *vec, size_t dim) {
    return mm_embcache_put_tok(c, prefix, prefix_len, text, text_len, vec, dim, 0);
}

int mm_embcache_put_tok(mm_embcache_t *c, const char *prefix, size_t prefix_len, const char *text,
                        size_t text_len, const float *vec, size_t dim, uint32_t tokens) {
    if (c->max_entries == 0)
        return 0;
    size_t klen = prefix_len + text_len;
    /* one block: the entry, its vector, its key (one allocation an insert) */
    entry *fresh = mm_malloc(sizeof *fresh + dim * sizeof(float) + klen);
    if (!fresh)
        return MM_ENOMEM;
    memset(fresh, 0, sizeof *fresh);
    fresh->vec = (float *)(fresh + 1);
    fresh->key = (char *)(fresh->vec + dim);
    memcpy(fresh->key, prefix, prefix_len);
    memcpy(fresh->key + prefix_len, text, text_len);
    memcpy(fresh->vec, vec, dim * sizeof(float));
    fresh->key_len = klen;
    fresh->dim = dim;
    fresh->tokens = tokens;
    int64_t now = mm_now_ns();
    fresh->expires_ns = now + c->ttl_ns;
    pthread_mutex_lock(&c->mu);
    entry *old = NULL;
    HASH_FIND(hh, c->table, fresh->key, klen, old);
    if (old)
        destroy_entry(c, old);
    while (c->tail && (c->size >= c->max_entries || c->tail->expires_ns <= now)) {
        if (c->tail->expires_ns <= now)
            c->st.expirations++;
        else
            c->st.evictions++;
        destroy_entry(c, c->tail);
    }
    mm_hash_oom = 0;
    HASH_ADD_KEYPTR(hh, c->table, fresh->key, klen, fresh);
    int rc = 0;
    if (mm_hash_oom) {
        rc = MM_ENOMEM;
    } else {
        push_front(c, fresh);
        c->size++;
        c->st.inserts++;
        fresh = NULL;
    }
    pthread_mutex_unlock(&c->mu);
    mm_free(fresh); /* not inserted (the hash table ran out of memory) */
    return rc;
}

size_t mm_embcache_purge_prefix(mm_embcache_t *c, const char *prefix, size_t prefix_len) {
    size_t n = 0;
    pthread_mutex_lock(&c->mu);
    entry *e, *tmp;
    HASH_ITER(hh, c->table, e, tmp) {
        if (e->key_len >= prefix_len && !memcmp(e->key, prefix, prefix_len)) {
            destroy_entry(c, e);
            n++;
        }
    }
    pthread_mutex_unlock(&c->mu);
    return n;
}

void mm_embcache_stats_get(mm_embcache_t *c, mm_embcache_stats *s) {
    pthread_mutex_lock(&c->mu);
    *s = c->st;
    s->size = c->size;
    s->capacity = c->max_entries;
    pthread_mutex_unlock(&c->mu);
}
