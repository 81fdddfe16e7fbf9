/* test_metrics.c: the core's metrics (mm_metrics.h) against the work done.
 *
 * Runs tasks on the synthetic backend and checks that every outcome lands in
 * the right counter, that histograms count each batch and dequeue once, that
 * releases carry their reason, and that snapshots taken while other threads
 * submit are consistent (TSan checks the locking).
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
#include "mm_metrics.h"

#include "../mm_check.h"

static mm_engine_t *new_engine(size_t max_queue, int64_t keep_alive_ms) {
    mm_engine_params p;
    mm_engine_default_params(&p);
    p.max_queue_size = max_queue;
    p.default_keep_alive_ms = keep_alive_ms;
    p.fake_gpus = "";
    mm_engine_t *e = NULL;
    if (mm_engine_new(&p, &e) != 0)
        exit(1);
    return e;
}

static int submit(mm_engine_t *e, mm_channel_t *ch, const char *model, const char *text) {
    const char *items[1] = {text};
    size_t lens[1] = {strlen(text)};
    mm_submit_args a = {0};
    a.model_name = model;
    a.type = strstr(model, "text_generation") ? MM_TASK_TEXT_GENERATION : MM_TASK_EMBEDDING;
    a.kind = MM_KIND_RUN;
    a.device = "cpu";
    a.num_workers = 1;
    a.items = items;
    a.item_lens = lens;
    a.n_items = 1;
    char err[256];
    uint64_t id;
    return mm_engine_submit(e, ch, &a, &id, err, sizeof err);
}

static size_t collect(mm_channel_t *ch, size_t n) {
    size_t got = 0;
    while (got < n) {
        struct pollfd pfd = {mm_channel_fd(ch), POLLIN, 0};
        if (poll(&pfd, 1, 10000) <= 0)
            break;
        size_t k;
        mm_task_t **arr = mm_channel_take(ch, &k);
        for (size_t i = 0; i < k; i++)
            mm_channel_task_free(arr[i]);
        mm_free(arr);
        got += k;
    }
    return got;
}

static const mm_metrics_series *find(const mm_metrics_snapshot *s, const char *name) {
    for (size_t i = 0; i < s->n_series; i++)
        if (!strcmp(s->series[i].name, name))
            return &s->series[i];
    return NULL;
}

static void test_outcomes_and_histograms(void) {
    mm_engine_t *e = new_engine(0, 60000);
    mm_channel_t *ch;
    CHECK(mm_channel_new(&ch) == 0);
    const char *emb = "synthetic/embedding?dim=4";
    const char *gen = "synthetic/text_generation?mem_mb=3";
    CHECK(submit(e, ch, emb, "one two three") == 0);
    CHECK(collect(ch, 1) == 1);
    CHECK(submit(e, ch, emb, "x __fail__") == 0);
    CHECK(collect(ch, 1) == 1);
    CHECK(submit(e, ch, gen, "hello") == 0);
    CHECK(collect(ch, 1) == 1);
    uint64_t id;
    CHECK(mm_engine_release(e, ch, emb, &id) == 0);
    CHECK(collect(ch, 1) == 1);

    mm_metrics_snapshot s;
    CHECK(mm_engine_metrics(e, &s) == 0);
    const mm_metrics_series *a = find(&s, emb), *g = find(&s, gen);
    CHECK(a && g);
    if (a && g) {
        CHECK(a->tasks[MM_OUT_SUCCESS] == 1 && a->tasks[MM_OUT_FAILED] == 1);
        CHECK(a->tokens_in == 5 && a->tokens_out == 0); /* 3 words + 2 specials */
        CHECK(a->batches == 2 && a->items == 2);
        CHECK(a->queue_wait.count == 2 && a->run.count == 2 && a->batch.count == 2);
        CHECK(a->batch.bucket[0] == 2); /* both batches of one item: le=1 */
        CHECK(a->loads_ok == 1 && a->load.count == 1);
        CHECK(a->releases[MM_REL_MANUAL] == 1);
        CHECK(g->tasks[MM_OUT_SUCCESS] == 1 && g->tokens_in == 3 && g->tokens_out == 8);
        CHECK(g->task_type == MM_TASK_TEXT_GENERATION);
        uint64_t sum = 0;
        for (int i = 0; i <= MM_MET_LAT_NB; i++)
            sum += a->run.bucket[i];
        CHECK(sum == a->run.count);
    }
    /* Only the generation model is still registered. */
    CHECK(s.n_gauges == 1 && !strcmp(s.gauges[0].name, gen));
    CHECK(s.n_memory == 1 && s.memory[0].bytes == 3u << 20 && !strcmp(s.memory[0].device, "cpu"));
    mm_metrics_snapshot_free(&s);
    mm_engine_free(e);
    mm_channel_close(ch);
}

static void test_reject_timeout_idle_loadfail(void) {
    mm_engine_params p;
    mm_engine_default_params(&p);
    p.max_queue_size = 2;
    p.queue_timeout_ms = 30;
    p.default_keep_alive_ms = 20;
    p.fake_gpus = "";
    mm_engine_t *e = NULL;
    CHECK(mm_engine_new(&p, &e) == 0);
    mm_channel_t *ch;
    CHECK(mm_channel_new(&ch) == 0);
    /* A slow model: the first task runs 300 ms, two wait and time out, the
     * fourth is refused (queue full). */
    const char *slow = "synthetic/embedding?dim=4&batch_us=300000&load_ms=1";
    CHECK(submit(e, ch, slow, "a") == 0);
    usleep(50000);
    CHECK(submit(e, ch, slow, "b") == 0);
    CHECK(submit(e, ch, slow, "c") == 0);
    CHECK(submit(e, ch, slow, "d") == MM_EQUEUEFULL);
    CHECK(collect(ch, 3) == 3);
    const char *bad = "synthetic/embedding?fail=load";
    CHECK(submit(e, ch, bad, "x") == 0);
    CHECK(collect(ch, 1) == 1);
    usleep(200000); /* keep_alive 20 ms: the slow model goes */
    mm_metrics_snapshot s;
    CHECK(mm_engine_metrics(e, &s) == 0);
    const mm_metrics_series *a = find(&s, slow), *b = find(&s, bad);
    CHECK(a && b);
    if (a && b) {
        CHECK(a->tasks[MM_OUT_SUCCESS] == 1);
        CHECK(a->tasks[MM_OUT_TIMED_OUT] == 2);
        CHECK(a->tasks[MM_OUT_REJECTED] == 1);
        CHECK(a->releases[MM_REL_IDLE] == 1);
        CHECK(b->loads_failed == 1 && b->releases[MM_REL_LOAD_FAILED] == 1);
        CHECK(b->tasks[MM_OUT_FAILED] == 1);
    }
    mm_metrics_snapshot_free(&s);
    mm_engine_free(e);
    mm_channel_close(ch);
}

typedef struct worker_arg {
    mm_engine_t *e;
    int n;
} worker_arg;

static void *submitter(void *p) {
    worker_arg *w = p;
    mm_channel_t *ch;
    if (mm_channel_new(&ch) != 0)
        return NULL;
    int ok = 0;
    for (int i = 0; i < w->n; i++)
        ok += submit(w->e, ch, "synthetic/embedding?dim=4", "w w") == 0;
    collect(ch, (size_t)ok);
    mm_channel_close(ch);
    return NULL;
}

static void test_snapshots_while_busy(void) {
    mm_engine_t *e = new_engine(0, 60000);
    pthread_t th[3];
    worker_arg w = {e, 300};
    for (int i = 0; i < 3; i++)
        pthread_create(&th[i], NULL, submitter, &w);
    for (int k = 0; k < 50; k++) {
        mm_metrics_snapshot s;
        CHECK(mm_engine_metrics(e, &s) == 0);
        mm_metrics_snapshot_free(&s);
        usleep(500);
    }
    for (int i = 0; i < 3; i++)
        pthread_join(th[i], NULL);
    mm_metrics_snapshot s;
    CHECK(mm_engine_metrics(e, &s) == 0);
    const mm_metrics_series *a = find(&s, "synthetic/embedding?dim=4");
    CHECK(a && a->tasks[MM_OUT_SUCCESS] == 900 && a->items == 900 && a->tokens_in == 3600);
    CHECK(a && a->queue_wait.count == 900);
    mm_metrics_snapshot_free(&s);
    mm_engine_free(e);
}

int main(void) {
    alarm(60);
    test_outcomes_and_histograms();
    test_reject_timeout_idle_loadfail();
    test_snapshots_while_busy();
    return mm_check_done("test_metrics: ok");
}
