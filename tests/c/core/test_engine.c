/* test_engine.c: the C core on its own, on the synthetic backend.
 *
 * Each test creates its own engine and channel and ends with everything
 * freed (ASan checks leaks, TSan races).  The stress test counts that every
 * task completes exactly once while releases, drops and cancels race with
 * submits from several threads.
 */
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mm_alloc.h"
#include "mm_devices.h"
#include "mm_embcache.h"
#include "mm_engine.h"
#include "mm_err.h"

#include "../mm_check.h"
#include "mm_collect.h"

static mm_engine_t *new_engine(int64_t queue_timeout_ms, int64_t keep_alive_ms) {
    mm_engine_params p;
    mm_engine_default_params(&p);
    p.queue_timeout_ms = queue_timeout_ms;
    p.default_keep_alive_ms = keep_alive_ms;
    p.fake_gpus = "";
    mm_engine_t *e = NULL;
    int rc = mm_engine_new(&p, &e);
    if (rc != 0) {
        fprintf(stderr, "mm_engine_new: %s\n", mm_strerror(rc));
        exit(1);
    }
    return e;
}

/* Submits n (at most 8) texts to model on the CPU, one worker. */
static int submit_texts(mm_engine_t *e, mm_channel_t *ch, const char *model,
                        const char *const *texts, size_t n, uint64_t *id) {
    size_t lens[8];
    for (size_t i = 0; i < n && i < 8; i++)
        lens[i] = strlen(texts[i]);
    mm_submit_args a = {0};
    a.model_name = model;
    a.type = strstr(model, "text_generation") ? MM_TASK_TEXT_GENERATION : MM_TASK_EMBEDDING;
    a.kind = MM_KIND_RUN;
    a.device = "cpu";
    a.num_workers = 1;
    a.items = texts;
    a.item_lens = lens;
    a.n_items = n < 8 ? n : 8;
    char err[256];
    return mm_engine_submit(e, ch, &a, id, err, sizeof err);
}

static int submit(mm_engine_t *e, mm_channel_t *ch, const char *model, const char *text,
                  uint64_t *id) {
    const char *items[1] = {text};
    return submit_texts(e, ch, model, items, 1, id);
}

typedef struct tally {
    int done, failed, cancelled, dropped;
    int last_code;
    char last_msg[512];
    float vec[64];
    size_t dim;
} tally;

static void count(mm_task_t *t, void *ud) {
    tally *y = ud;
    switch (mm_task_get_status(t)) {
    case MM_TS_DONE:
        y->done++;
        if (mm_task_result_kind(t) == MM_RESULT_EMBEDDINGS) {
            size_t n, dim;
            const float *v = mm_task_result_vectors(t, &n, &dim);
            y->dim = dim;
            memcpy(y->vec, v, (dim < 64 ? dim : 64) * sizeof(float));
        }
        break;
    case MM_TS_FAILED:
        y->failed++;
        y->last_code = mm_task_error_code(t);
        snprintf(y->last_msg, sizeof y->last_msg, "%s", mm_task_error_message(t));
        break;
    case MM_TS_CANCELLED: y->cancelled++; break;
    case MM_TS_DROPPED: y->dropped++; break;
    default: break;
    }
}

static void finish(mm_engine_t *e, mm_channel_t *ch) {
    mm_engine_free(e);
    mm_channel_close(ch);
}

static void test_embedding_roundtrip(void) {
    mm_engine_t *e = new_engine(30000, 60000);
    mm_channel_t *ch;
    CHECK(mm_channel_new(&ch) == 0);
    uint64_t id;
    CHECK(submit(e, ch, "synthetic/embedding?dim=8", "hello", &id) == 0);
    tally a = {0};
    CHECK(mm_collect(ch, 1, 5000, count, &a) == 1);
    CHECK(a.done == 1 && a.dim == 8);
    double norm = 0;
    for (int i = 0; i < 8; i++)
        norm += a.vec[i] * a.vec[i];
    CHECK(norm > 0.9999 && norm < 1.0001);
    tally b = {0};
    CHECK(submit(e, ch, "synthetic/embedding?dim=8", "hello", &id) == 0);
    CHECK(mm_collect(ch, 1, 5000, count, &b) == 1);
    CHECK(memcmp(a.vec, b.vec, 8 * sizeof(float)) == 0);
    finish(e, ch);
}

static void test_bad_input(void) {
    mm_engine_t *e = new_engine(30000, 60000);
    mm_channel_t *ch;
    CHECK(mm_channel_new(&ch) == 0);
    uint64_t id;
    CHECK(submit(e, ch, "", "x", &id) == MM_EINVAL);
    CHECK(submit(e, ch, "../etc/passwd", "x", &id) == MM_EINVAL);
    CHECK(submit(e, ch, "org/../x", "x", &id) == MM_EINVAL);
    CHECK(submit(e, ch, "a/b/c", "x", &id) == MM_EINVAL);
    CHECK(submit(e, ch, "synthetic/embedding?bogus=1", "x", &id) == MM_EINVAL);
    CHECK(submit(e, ch, "synthetic/nope", "x", &id) == MM_EINVAL);
    CHECK(submit(e, ch, "/nonexistent/dir/for/sure", "x", &id) == MM_ENOTFOUND);
    mm_engine_stats s;
    mm_engine_stats_get(e, &s);
    CHECK(s.created == 0 && s.live_models == 0);
    finish(e, ch);
}

static void test_load_failure_then_retry(void) {
    mm_engine_t *e = new_engine(30000, 60000);
    mm_channel_t *ch;
    CHECK(mm_channel_new(&ch) == 0);
    const char *m = "synthetic/embedding?fail_loads=1&load_ms=20";
    uint64_t id;
    for (int i = 0; i < 3; i++)
        CHECK(submit(e, ch, m, "x", &id) == 0);
    tally a = {0};
    CHECK(mm_collect(ch, 3, 5000, count, &a) == 3);
    CHECK(a.failed == 3 && a.last_code == MM_ELOAD);
    CHECK(strstr(a.last_msg, "injected") != NULL);
    /* The failed entry is gone; the next task loads afresh and succeeds. */
    CHECK(submit(e, ch, m, "x", &id) == 0);
    tally b = {0};
    CHECK(mm_collect(ch, 1, 5000, count, &b) == 1);
    CHECK(b.done == 1);
    finish(e, ch);
}

static void test_queue_timeout_and_full(void) {
    mm_engine_params p;
    mm_engine_default_params(&p);
    p.queue_timeout_ms = 50;
    p.max_queue_size = 4;
    p.fake_gpus = "";
    mm_engine_t *e;
    CHECK(mm_engine_new(&p, &e) == 0);
    mm_channel_t *ch;
    CHECK(mm_channel_new(&ch) == 0);
    const char *m = "synthetic/embedding?item_us=300000&max_items=1";
    uint64_t id;
    int accepted = 0, full = 0;
    for (int i = 0; i < 8; i++) {
        int rc = submit(e, ch, m, "slow", &id);
        accepted += rc == 0;
        full += rc == MM_EQUEUEFULL;
    }
    CHECK(full > 0 && accepted + full == 8);
    tally a = {0};
    CHECK(mm_collect(ch, (size_t)accepted, 5000, count, &a) == (size_t)accepted);
    CHECK(a.done >= 1 && a.failed >= 1);
    CHECK(a.last_code == MM_ETIMEDOUT);
    finish(e, ch);
}

static void test_keep_alive_release(void) {
    mm_engine_t *e = new_engine(30000, 20);
    mm_channel_t *ch;
    CHECK(mm_channel_new(&ch) == 0);
    uint64_t id;
    CHECK(submit(e, ch, "synthetic/embedding", "x", &id) == 0);
    CHECK(mm_collect(ch, 1, 5000, NULL, NULL) == 1);
    mm_engine_stats s = {0};
    for (int i = 0; i < 200; i++) {
        mm_engine_stats_get(e, &s);
        if (s.live_models == 0 && s.retiring_models == 0)
            break;
        usleep(10000);
    }
    CHECK(s.live_models == 0 && s.retiring_models == 0);
    /* Reload after auto-release. */
    CHECK(submit(e, ch, "synthetic/embedding", "x", &id) == 0);
    tally a = {0};
    CHECK(mm_collect(ch, 1, 5000, count, &a) == 1 && a.done == 1);
    finish(e, ch);
}

static void test_release_and_drop(void) {
    mm_engine_t *e = new_engine(30000, 60000);
    mm_channel_t *ch;
    CHECK(mm_channel_new(&ch) == 0);
    const char *m = "synthetic/embedding?item_us=2000&max_items=1";
    uint64_t id;
    for (int i = 0; i < 20; i++)
        CHECK(submit(e, ch, m, "x", &id) == 0);
    uint64_t *ids;
    size_t n;
    CHECK(mm_engine_drop(e, m, "test drop", &ids, &n) == 0);
    CHECK(n >= 15);
    mm_free(ids);
    for (int i = 0; i < 10; i++)
        CHECK(submit(e, ch, m, "x", &id) == 0);
    uint64_t rel;
    CHECK(mm_engine_release(e, ch, m, &rel) == 0);
    tally a = {0};
    /* 20 + 10 tasks + the release control task. */
    CHECK(mm_collect(ch, 31, 10000, count, &a) == 31);
    CHECK(a.dropped == (int)n);
    CHECK(a.done == 31 - (int)n); /* released model finished its queue */
    mm_engine_stats s;
    mm_engine_stats_get(e, &s);
    CHECK(s.live_models == 0 && s.retiring_models == 0);
    CHECK(mm_engine_drop(e, m, "x", &ids, &n) == MM_ENOTFOUND);
    finish(e, ch);
}

static void test_deferred_wake_needs_kick(void) {
    mm_engine_t *e = new_engine(30000, 60000);
    mm_channel_t *ch;
    CHECK(mm_channel_new(&ch) == 0);
    uint64_t id;
    CHECK(submit(e, ch, "synthetic/embedding", "warm", &id) == 0);
    CHECK(mm_collect(ch, 1, 5000, NULL, NULL) == 1);
    const char *items[1] = {"x"};
    size_t lens[1] = {1};
    mm_submit_args a = {0};
    a.model_name = "synthetic/embedding";
    a.type = MM_TASK_EMBEDDING;
    a.kind = MM_KIND_RUN;
    a.device = "cpu";
    a.num_workers = 1;
    a.items = items;
    a.item_lens = lens;
    a.n_items = 1;
    a.defer_wake = 1;
    char err[256];
    for (int i = 0; i < 5; i++)
        CHECK(mm_engine_submit(e, ch, &a, &id, err, sizeof err) == 0);
    CHECK(mm_collect(ch, 1, 100, NULL, NULL) == 0); /* parked until the kick */
    mm_engine_kick(e);
    CHECK(mm_collect(ch, 5, 5000, NULL, NULL) == 5);
    finish(e, ch);
}

static void test_placement(void) {
    mm_gpu_list g;
    CHECK(mm_devices_discover("1000,8000,4000", &g) == 0 && g.n == 3 && g.simulated);
    mm_placement pl;
    char err[256];
    CHECK(mm_devices_place(&g, "gpu", 2, 0, &pl, err, sizeof err) == 0);
    CHECK(pl.n_workers == 2 && pl.devs[0].index == 1 && pl.devs[1].index == 2);
    CHECK(mm_devices_place(&g, "gpu", 9, 0, &pl, err, sizeof err) == 0 && pl.n_workers == 3);
    CHECK(mm_devices_place(&g, "cuda:2", 4, 0, &pl, err, sizeof err) == 0);
    CHECK(pl.n_workers == 1 && pl.devs[0].index == 2 && !strcmp(pl.devs[0].name, "cuda:2"));
    CHECK(mm_devices_place(&g, "cuda:7", 1, 0, &pl, err, sizeof err) == MM_EINVAL);
    CHECK(mm_devices_place(&g, "tpu", 1, 0, &pl, err, sizeof err) == MM_EINVAL);
    CHECK(mm_devices_place(&g, "cpu", 3, 2, &pl, err, sizeof err) == 0 && pl.n_workers == 3 &&
          pl.devs[0].cpu_threads == 2);
    mm_gpu_list none;
    CHECK(mm_devices_discover("", &none) == 0);
    none.n = 0;
    CHECK(mm_devices_place(&none, "gpu", 2, 0, &pl, err, sizeof err) == 0);
    CHECK(pl.fell_back_to_cpu && pl.n_workers == 2 && !pl.devs[0].is_gpu);
    CHECK(mm_devices_discover("12,abc", &g) == MM_EINVAL);
}

/* ---- stress: exactly-once under racing submits, releases, drops, cancels ---- */
typedef struct stress_ctx {
    mm_engine_t *e;
    mm_channel_t *ch;
    int n_per_thread;
    int seed;
    int accepted;
    uint64_t max_id;
} stress_ctx;

static const char *const STRESS_MODELS[3] = {
    "synthetic/embedding?dim=4", "synthetic/embedding?dim=4&max_items=3&item_us=5",
    "synthetic/text_generation"};

static void *stress_submitter(void *arg) {
    stress_ctx *c = arg;
    unsigned s = (unsigned)c->seed;
    for (int i = 0; i < c->n_per_thread; i++) {
        uint64_t id;
        const char *m = STRESS_MODELS[rand_r(&s) % 3];
        if (submit(c->e, c->ch, m, (rand_r(&s) % 50) ? "text" : "__fail__", &id) == 0) {
            c->accepted++;
            if (rand_r(&s) % 7 == 0)
                mm_engine_cancel(c->e, id);
        }
    }
    return NULL;
}

static void *stress_disruptor(void *arg) {
    stress_ctx *c = arg;
    unsigned s = (unsigned)c->seed;
    for (int i = 0; i < 200; i++) {
        const char *m = STRESS_MODELS[rand_r(&s) % 3];
        if (rand_r(&s) % 2) {
            uint64_t id;
            if (mm_engine_release(c->e, c->ch, m, &id) == 0)
                c->accepted++;
        } else {
            uint64_t *ids;
            size_t n;
            if (mm_engine_drop(c->e, m, "stress", &ids, &n) == 0)
                mm_free(ids);
        }
        usleep(200);
    }
    return NULL;
}

typedef struct seen_set {
    unsigned char *seen;
    size_t cap;
    int dup;
} seen_set;

static void mark_seen(mm_task_t *t, void *ud) {
    seen_set *s = ud;
    uint64_t id = mm_task_id(t);
    if (id < s->cap) {
        if (s->seen[id])
            s->dup++;
        s->seen[id] = 1;
    }
}

static void test_stress_exactly_once(void) {
    mm_engine_t *e = new_engine(30000, 60000);
    mm_channel_t *ch;
    CHECK(mm_channel_new(&ch) == 0);
    enum { SUBMITTERS = 4, PER = 3000 };
    stress_ctx ctx[SUBMITTERS + 1];
    pthread_t th[SUBMITTERS + 1];
    for (int i = 0; i <= SUBMITTERS; i++) {
        ctx[i] = (stress_ctx){e, ch, PER, 1234 + i, 0, 0};
        pthread_create(&th[i], NULL, i < SUBMITTERS ? stress_submitter : stress_disruptor,
                       &ctx[i]);
    }
    seen_set s = {calloc(100000, 1), 100000, 0};
    size_t total_accepted = 0, got = 0;
    for (int i = 0; i <= SUBMITTERS; i++) {
        pthread_join(th[i], NULL);
        total_accepted += (size_t)ctx[i].accepted;
    }
    got = mm_collect(ch, total_accepted, 20000, mark_seen, &s);
    CHECK(got == total_accepted);
    CHECK(s.dup == 0);
    mm_engine_stats st;
    mm_engine_stats_get(e, &st);
    CHECK(st.created == st.completed);
    CHECK(st.created == total_accepted);
    CHECK(st.double_completions == 0);
    finish(e, ch);
    free(s.seen);
}

/* The embedding cache at submit: a name long enough that its key is built on
 * the heap, vectors wider than the lookup's first-hit row (1500 floats), full
 * and partial hits bit-identical to the computed vectors, and every
 * allocation of a hit's lookup failing in turn (the task then computes, or
 * fails with MM_ENOMEM: never a wrong vector). */
#define WIDE 1500
typedef struct vecs {
    int done, failed, failed_other;
    const char *device;
    float v[3][WIDE];
    size_t n;
} vecs;

static void keep_vecs(mm_task_t *t, void *ud) {
    vecs *y = ud;
    if (mm_task_get_status(t) != MM_TS_DONE) {
        y->failed++;
        y->failed_other += mm_task_error_code(t) != MM_ENOMEM;
        return;
    }
    size_t n = 0, dim = 0;
    const float *v = mm_task_result_vectors(t, &n, &dim);
    CHECK(dim == WIDE && n <= 3);
    memcpy(y->v, v, n * dim * sizeof(float));
    y->n = n;
    y->device = strcmp(mm_task_device(t), "cache") ? "computed" : "cache";
    y->done++;
}

/* Submits texts and waits for the task's vectors. */
static int embed_texts(mm_engine_t *e, mm_channel_t *ch, const char *model,
                       const char *const *texts, size_t n, vecs *out) {
    uint64_t id;
    memset(out, 0, sizeof *out);
    int rc = submit_texts(e, ch, model, texts, n, &id);
    if (rc == 0)
        CHECK(mm_collect(ch, 1, 5000, keep_vecs, out) == 1);
    return rc;
}

static void test_cache_lookup(void) {
    mm_engine_params p;
    mm_engine_default_params(&p);
    p.fake_gpus = "none";
    p.embed_cache_entries = 100;
    mm_engine_t *e = NULL;
    CHECK(mm_engine_new(&p, &e) == 0);
    mm_channel_t *ch;
    CHECK(mm_channel_new(&ch) == 0);
    char model[400] = "synthetic/embedding?dim=1500";
    while (strlen(model) < 300)
        strcat(model, "&load_ms=0");
    static vecs ab, again, part, oom;
    const char *t_ab[] = {"a", "b"}, *t_ba[] = {"b", "a"}, *t_cab[] = {"c", "a", "b"};
    CHECK(embed_texts(e, ch, model, t_ab, 2, &ab) == 0);
    CHECK(ab.done == 1 && !strcmp(ab.device, "computed"));
    CHECK(embed_texts(e, ch, model, t_ba, 2, &again) == 0);
    CHECK(again.done == 1 && !strcmp(again.device, "cache"));
    CHECK(!memcmp(again.v[0], ab.v[1], WIDE * sizeof(float)) &&
          !memcmp(again.v[1], ab.v[0], WIDE * sizeof(float)));
    CHECK(embed_texts(e, ch, model, t_cab, 3, &part) == 0);
    CHECK(part.done == 1 && !strcmp(part.device, "computed"));
    CHECK(!memcmp(part.v[1], ab.v[0], WIDE * sizeof(float)) &&
          !memcmp(part.v[2], ab.v[1], WIDE * sizeof(float)));
    mm_embcache_stats cs;
    CHECK(mm_engine_cache_stats(e, &cs) == 0 && cs.hits == 4);
    for (long k = 0; k < 16; k++) {
        mm_alloc_fail_after(k);
        int rc = embed_texts(e, ch, model, t_ba, 2, &oom);
        mm_alloc_fail_after(-1);
        CHECK(rc == 0 || rc == MM_ENOMEM);
        CHECK(oom.failed_other == 0);
        if (rc == 0 && oom.done)
            CHECK(!memcmp(oom.v[0], ab.v[1], WIDE * sizeof(float)) &&
                  !memcmp(oom.v[1], ab.v[0], WIDE * sizeof(float)));
    }
    finish(e, ch);
}

static void test_engine_new_oom(void) {
    /* Each allocation of engine creation (with a cache) may fail: reported,
     * and nothing leaks. */
    for (long k = 0; k < 12; k++) {
        mm_engine_params p;
        mm_engine_default_params(&p);
        p.fake_gpus = "none";
        p.embed_cache_entries = 10;
        mm_engine_t *e = NULL;
        mm_alloc_fail_after(k);
        int rc = mm_engine_new(&p, &e);
        mm_alloc_fail_after(-1);
        CHECK((rc == 0 && e) || (rc == MM_ENOMEM && !e));
        mm_engine_free(e);
    }
}

static void test_oom_paths(void) {
    /* Every allocation in submit may fail: the call reports it and leaves
     * nothing behind (ASan would see a leak or a bad free). */
    for (long k = 0; k < 40; k++) {
        mm_engine_t *e = new_engine(30000, 60000);
        mm_channel_t *ch;
        CHECK(mm_channel_new(&ch) == 0);
        uint64_t id;
        mm_alloc_fail_after(k);
        int rc = submit(e, ch, "synthetic/embedding", "x", &id);
        mm_alloc_fail_after(-1);
        CHECK(rc == 0 || rc == MM_ENOMEM);
        if (rc == 0)
            mm_collect(ch, 1, 5000, NULL, NULL);
        finish(e, ch);
    }
}

int main(void) {
    alarm(110);
    test_embedding_roundtrip();
    test_bad_input();
    test_load_failure_then_retry();
    test_queue_timeout_and_full();
    test_keep_alive_release();
    test_release_and_drop();
    test_deferred_wake_needs_kick();
    test_placement();
    test_stress_exactly_once();
    test_oom_paths();
    test_cache_lookup();
    test_engine_new_oom();
    return mm_check_done("all core engine tests passed");
}
