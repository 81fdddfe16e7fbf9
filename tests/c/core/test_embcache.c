/* test_embcache.c: the embedding cache alone: hits are bit-identical, LRU
 * order, TTL expiry, prefix purge, out-of-memory leaves it valid, and many
 * threads at once (TSan). */
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "mm_alloc.h"
#include "mm_embcache.h"
#include "mm_err.h"

#include "../mm_check.h"

static int get(mm_embcache_t *c, const char *p, const char *t, float *out) {
    size_t dim = 0;
    return mm_embcache_get(c, p, strlen(p), t, strlen(t), out, 16, &dim);
}

static void put(mm_embcache_t *c, const char *p, const char *t, float v) {
    float vec[4] = {v, v + 1, v + 2, 0.1f};
    CHECK(mm_embcache_put(c, p, strlen(p), t, strlen(t), vec, 4) == 0);
}

static void *hammer(void *arg) {
    mm_embcache_t *c = arg;
    char t[32];
    float out[16];
    for (int i = 0; i < 20000; i++) {
        snprintf(t, sizeof t, "text %d", i % 500);
        if (!get(c, "m|", t, out))
            put(c, "m|", t, (float)(i % 500));
        else if (out[0] != (float)(i % 500))
            __atomic_fetch_add(&failures, 1, __ATOMIC_RELAXED);
    }
    return NULL;
}

int main(void) {
    alarm(60);
    mm_embcache_t *c;
    CHECK(mm_embcache_new(3, 3600000, &c) == 0);
    float out[16];
    put(c, "m|", "a", 1.0f);
    put(c, "m|", "b", 2.0f);
    put(c, "m|", "c", 3.0f);
    CHECK(get(c, "m|", "a", out) && out[0] == 1.0f && out[3] == 0.1f);
    put(c, "m|", "d", 4.0f); /* evicts b, the least recently used */
    CHECK(!get(c, "m|", "b", out));
    CHECK(get(c, "m|", "a", out) && get(c, "m|", "c", out) && get(c, "m|", "d", out));
    CHECK(!get(c, "n|", "a", out)); /* another prefix is another key */
    {   /* a token count rides with the vector (usage for cached texts) */
        mm_embcache_t *c2;
        CHECK(mm_embcache_new(4, 3600000, &c2) == 0);
        float v[4] = {5, 6, 7, 8};
        uint32_t tok = 0;
        size_t dim = 0;
        CHECK(mm_embcache_put_tok(c2, "t|", 2, "x", 1, v, 4, 42) == 0);
        CHECK(mm_embcache_get_tok(c2, "t|", 2, "x", 1, out, 16, &dim, &tok) && tok == 42 &&
              dim == 4 && out[3] == 8);
        CHECK(get(c2, "t|", "x", out)); /* the plain get still works */
        /* too little room: MM_ENOBUFS and the length, neither hit nor miss */
        mm_embcache_stats before, after;
        mm_embcache_stats_get(c2, &before);
        float small[2] = {-1, -1};
        dim = 0;
        CHECK(mm_embcache_get_tok(c2, "t|", 2, "x", 1, small, 2, &dim, &tok) == MM_ENOBUFS &&
              dim == 4 && small[0] == -1 && small[1] == -1);
        mm_embcache_stats_get(c2, &after);
        CHECK(after.hits == before.hits && after.misses == before.misses);
        CHECK(mm_embcache_get_tok(c2, "t|", 2, "x", 1, out, dim, &dim, &tok) == 1 && out[3] == 8);
        mm_embcache_free(c2);
    }
    CHECK(mm_embcache_purge_prefix(c, "m|", 2) == 3);
    mm_embcache_stats s;
    mm_embcache_stats_get(c, &s);
    CHECK(s.size == 0 && s.evictions == 1 && s.hits >= 4);
    for (long k = 0; k < 6; k++) { /* allocation failures: reported, cache stays valid */
        mm_alloc_fail_after(k);
        float v[2] = {1, 2};
        int rc = mm_embcache_put(c, "m|", 2, "oom", 3, v, 2);
        mm_alloc_fail_after(-1);
        CHECK(rc == 0 || rc < 0);
    }
    mm_embcache_free(c);

    CHECK(mm_embcache_new(10, 30, &c) == 0); /* 30 ms TTL */
    put(c, "m|", "a", 1.0f);
    CHECK(get(c, "m|", "a", out));
    usleep(60000);
    CHECK(!get(c, "m|", "a", out));
    mm_embcache_stats_get(c, &s);
    CHECK(s.expirations == 1 && s.size == 0);
    mm_embcache_free(c);

    CHECK(mm_embcache_new(300, 3600000, &c) == 0);
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&th[i], NULL, hammer, c);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    mm_embcache_stats_get(c, &s);
    CHECK(s.size <= 300);
    mm_embcache_free(c);
    return mm_check_done("embedding cache tests passed");
}
