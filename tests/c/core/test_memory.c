/* test_memory.c: the memory policy in the C core, on simulated GPUs.
 *
 * Fit and LRU eviction, INSUFFICIENT_MEMORY, an out-of-memory batch split
 * down to one task, and a stress run: submitters on several threads over
 * models that do not fit together, with releases racing, where every task
 * must complete exactly once and the device accounting must come back to
 * zero.  An idle worker's heap trim waits while a CPU load measures its
 * footprint.  Runs under ASan and TSan like the other core tests.
 */
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mm_alloc.h"
#include "mm_engine.h"
#include "mm_err.h"

#include "../mm_check.h"

static mm_engine_t *new_engine(const char *gpus, int max_loaded) {
    mm_engine_params p;
    mm_engine_default_params(&p);
    p.queue_timeout_ms = 20000;
    p.fake_gpus = gpus;
    p.memory_fraction = 1.0;
    p.max_loaded_models = max_loaded;
    mm_engine_t *e = NULL;
    if (mm_engine_new(&p, &e) != 0) {
        fprintf(stderr, "mm_engine_new failed\n");
        exit(1);
    }
    return e;
}

static int submit_on(mm_engine_t *e, mm_channel_t *ch, const char *device, const char *model,
                     const char *text, int n_items) {
    const char *items[8];
    size_t lens[8];
    for (int i = 0; i < n_items; i++) {
        items[i] = text;
        lens[i] = strlen(text);
    }
    mm_submit_args a = {0};
    a.model_name = model;
    a.type = MM_TASK_EMBEDDING;
    a.kind = MM_KIND_RUN;
    a.device = device;
    a.num_workers = 1;
    a.items = items;
    a.item_lens = lens;
    a.n_items = (size_t)n_items;
    char err[256];
    uint64_t id;
    return mm_engine_submit(e, ch, &a, &id, err, sizeof err);
}

static int submit(mm_engine_t *e, mm_channel_t *ch, const char *model, const char *text,
                  int n_items) {
    return submit_on(e, ch, "gpu", model, text, n_items);
}

typedef struct tally {
    int done, failed, last_code;
    char last_msg[512];
} tally;

static size_t collect(mm_channel_t *ch, size_t n, tally *y) {
    size_t got = 0;
    while (got < n) {
        struct pollfd pfd = {mm_channel_fd(ch), POLLIN, 0};
        if (poll(&pfd, 1, 20000) <= 0)
            break;
        size_t k;
        mm_task_t **arr = mm_channel_take(ch, &k);
        for (size_t i = 0; i < k; i++) {
            if (mm_task_get_status(arr[i]) == MM_TS_DONE) {
                y->done++;
            } else {
                y->failed++;
                y->last_code = mm_task_error_code(arr[i]);
                snprintf(y->last_msg, sizeof y->last_msg, "%s", mm_task_error_message(arr[i]));
            }
            mm_channel_task_free(arr[i]);
        }
        mm_free(arr);
        got += k;
    }
    return got;
}

static uint64_t gpu_used(mm_engine_t *e, int gpu) {
    mm_device_status *d;
    size_t n;
    CHECK(mm_engine_devices(e, &d, &n) == 0);
    uint64_t used = (size_t)gpu + 1 < n ? d[gpu + 1].used_bytes : 0;
    mm_free(d);
    return used;
}

static int loaded(mm_engine_t *e, const char *name) {
    mm_model_status *s;
    size_t n;
    int found = 0;
    CHECK(mm_engine_status(e, &s, &n) == 0);
    for (size_t i = 0; i < n; i++)
        if (!strcmp(s[i].model_name, name) && !strcmp(s[i].state, "ready"))
            found = 1;
    mm_free(s);
    return found;
}

static void test_fit_evict_insufficient(void) {
    mm_engine_t *e = new_engine("1000", 0);
    mm_channel_t *ch;
    CHECK(mm_channel_new(&ch) == 0);
    const char *a = "synthetic/embedding?mem_mb=400&dim=8";
    const char *b = "synthetic/embedding?mem_mb=400&dim=9";
    const char *c = "synthetic/embedding?mem_mb=400&dim=10";
    tally y = {0};
    CHECK(submit(e, ch, a, "x", 1) == 0 && collect(ch, 1, &y) == 1);
    CHECK(submit(e, ch, b, "x", 1) == 0 && collect(ch, 1, &y) == 1);
    CHECK(gpu_used(e, 0) == 800ULL << 20);
    CHECK(submit(e, ch, c, "x", 1) == 0 && collect(ch, 1, &y) == 1); /* evicts a (LRU) */
    CHECK(y.done == 3);
    CHECK(!loaded(e, a) && loaded(e, b) && loaded(e, c));
    CHECK(gpu_used(e, 0) == 800ULL << 20);
    mm_release_record *r;
    size_t n;
    CHECK(mm_engine_releases(e, &r, &n) == 0);
    CHECK(n == 1 && !strcmp(r[0].model_name, a) && !strncmp(r[0].reason, "evicted_for=", 12) &&
          r[0].released_bytes == 400ULL << 20);
    mm_free(r);
    CHECK(submit(e, ch, "synthetic/embedding?mem_mb=1200", "x", 1) == 0);
    CHECK(collect(ch, 1, &y) == 1);
    CHECK(y.failed == 1 && y.last_code == MM_ENOSPACE);
    CHECK(strstr(y.last_msg, "cuda:0") && strstr(y.last_msg, "1200 MiB"));
    mm_engine_free(e);
    mm_channel_close(ch);
}

static void test_oom_split(void) {
    mm_engine_t *e = new_engine("none", 0);
    mm_channel_t *ch;
    CHECK(mm_channel_new(&ch) == 0);
    const char *m = "synthetic/embedding?fail=oom_over=3&load_ms=100";
    /* Queued while the model loads, so they run as one batch. */
    for (int i = 0; i < 17; i++)
        CHECK(submit(e, ch, m, "x", 1) == 0);
    CHECK(submit(e, ch, m, "wide", 5) == 0);
    tally y = {0};
    CHECK(collect(ch, 18, &y) == 18);
    CHECK(y.done == 17 && y.failed == 1 && y.last_code == MM_ENOMEM);
    mm_engine_stats st;
    mm_engine_stats_get(e, &st);
    CHECK(st.created == st.completed && st.double_completions == 0);
    mm_engine_free(e);
    mm_channel_close(ch);
}

typedef struct stress_ctx {
    mm_engine_t *e;
    mm_channel_t *ch;
    int per, seed, accepted;
} stress_ctx;

static const char *const MODELS[] = {
    "synthetic/embedding?mem_mb=300&dim=8",  "synthetic/embedding?mem_mb=300&dim=9",
    "synthetic/embedding?mem_mb=300&dim=10", "synthetic/embedding?mem_mb=300&dim=11",
    "synthetic/embedding?mem_mb=300&dim=12", "synthetic/embedding?mem_mb=300&dim=13",
};

static void *stress_submitter(void *arg) {
    stress_ctx *c = arg;
    unsigned seed = (unsigned)c->seed;
    for (int i = 0; i < c->per; i++) {
        int k = rand_r(&seed) % 6;
        if (submit(c->e, c->ch, MODELS[k], "t", 1) == 0)
            c->accepted++;
        if (rand_r(&seed) % 500 == 0) {
            uint64_t id;
            if (mm_engine_release(c->e, c->ch, MODELS[rand_r(&seed) % 6], &id) == 0)
                c->accepted++;
        }
    }
    return NULL;
}

static void test_stress_over_budget(void) {
    mm_engine_t *e = new_engine("1000,1000", 3);
    mm_channel_t *ch;
    CHECK(mm_channel_new(&ch) == 0);
    enum { T = 3 };
    stress_ctx ctx[T];
    pthread_t th[T];
    for (int i = 0; i < T; i++) {
        ctx[i] = (stress_ctx){e, ch, 2000, 77 + i, 0};
        pthread_create(&th[i], NULL, stress_submitter, &ctx[i]);
    }
    size_t accepted = 0;
    for (int i = 0; i < T; i++) {
        pthread_join(th[i], NULL);
        accepted += (size_t)ctx[i].accepted;
    }
    tally y = {0};
    CHECK(collect(ch, accepted, &y) == accepted);
    CHECK(y.failed == 0);
    mm_engine_stats st;
    mm_engine_stats_get(e, &st);
    CHECK(st.created == st.completed && st.double_completions == 0);
    CHECK(gpu_used(e, 0) <= 1000ULL << 20 && gpu_used(e, 1) <= 1000ULL << 20);
    uint64_t id;
    CHECK(mm_engine_shutdown(e, ch, 0, &id) == 0);
    CHECK(collect(ch, 1, &y) == 1);
    CHECK(gpu_used(e, 0) == 0 && gpu_used(e, 1) == 0);
    mm_engine_free(e);
    mm_channel_close(ch);
}

static uint64_t idle_trims(mm_engine_t *e) {
    mm_engine_stats s;
    mm_engine_stats_get(e, &s);
    return s.idle_trims;
}

/* An idle worker trims the heap once, a second after its last batch, but
 * not while a CPU load is measuring its resident growth (the trim would
 * hide part of it): B loads for 4 s, A idles meanwhile and trims after. */
static void test_idle_trim_waits_for_cpu_loads(void) {
    mm_engine_t *e = new_engine("none", 0);
    mm_channel_t *ch;
    CHECK(mm_channel_new(&ch) == 0);
    CHECK(submit_on(e, ch, "cpu", "synthetic/embedding?load_ms=4000", "b", 1) == 0);
    CHECK(submit_on(e, ch, "cpu", "synthetic/embedding?dim=4", "a", 1) == 0);
    tally y = {0};
    CHECK(collect(ch, 1, &y) == 1 && y.done == 1); /* A's, at once */
    usleep(2500 * 1000); /* A idle for 2.5 s, B still loading */
    CHECK(idle_trims(e) == 0);
    CHECK(collect(ch, 1, &y) == 1 && y.done == 2); /* B's, after its load */
    for (int i = 0; i < 100 && idle_trims(e) == 0; i++)
        usleep(50 * 1000);
    CHECK(idle_trims(e) >= 1);
    CHECK(submit_on(e, ch, "cpu", "synthetic/embedding?dim=4", "a", 1) == 0);
    CHECK(collect(ch, 1, &y) == 1 && y.done == 3); /* a trimmed worker still serves */
    mm_engine_free(e);
    mm_channel_close(ch);
}

int main(void) {
    alarm(110);
    test_idle_trim_waits_for_cpu_loads();
    test_fit_evict_insufficient();
    test_oom_split();
    test_stress_over_budget();
    return mm_check_done("all core memory tests passed");
}
