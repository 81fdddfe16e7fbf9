/* test_chunk.c: stopping running work and chunked tasks (mm_chunk.c), on
 * the synthetic backend, under ASan and TSan like the other core tests.
 *
 * A large task runs in chunks with queued tasks served between them; cancel,
 * drop and shutdown reach a task that is already running; a load nobody
 * waits for is aborted; and a race of cancels and drops against chunked
 * tasks still completes every task exactly once.
 */
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "mm_alloc.h"
#include "mm_engine.h"
#include "mm_err.h"

#include "../mm_check.h"
#include "mm_collect.h"

#define BIG 3000

static char big_text[BIG][24];
static const char *big_items[BIG];
static size_t big_lens[BIG];

static mm_engine_t *new_engine(size_t batch_items) {
    mm_engine_params p;
    mm_engine_default_params(&p);
    p.queue_timeout_ms = 0;
    p.fake_gpus = "";
    p.max_batch_items = batch_items;
    mm_engine_t *e = NULL;
    if (mm_engine_new(&p, &e) != 0)
        exit(1);
    return e;
}

static int submit_kind(mm_engine_t *e, mm_channel_t *ch, const char *model, mm_task_kind kind,
                       size_t n, uint64_t *id) {
    mm_submit_args a = {0};
    a.model_name = model;
    a.type = MM_TASK_EMBEDDING;
    a.kind = kind;
    a.device = "cpu";
    a.num_workers = 1;
    a.items = big_items;
    a.item_lens = big_lens;
    a.n_items = n;
    char err[256];
    return mm_engine_submit(e, ch, &a, id, err, sizeof err);
}

static int submit_n(mm_engine_t *e, mm_channel_t *ch, const char *model, size_t n, uint64_t *id) {
    return submit_kind(e, ch, model, MM_KIND_RUN, n, id);
}

typedef struct seen {
    uint64_t order[64];
    int n;
    int status[64];
    int codes[64];
    size_t rows[64];
} seen;

static void record(mm_task_t *t, void *ud) {
    seen *s = ud;
    if (s->n >= 64)
        return;
    size_t rows = 0, dim;
    mm_task_result_vectors(t, &rows, &dim);
    s->order[s->n] = mm_task_id(t);
    s->status[s->n] = mm_task_get_status(t);
    s->codes[s->n] = mm_task_error_code(t);
    s->rows[s->n] = mm_task_result_kind(t) == MM_RESULT_EMBEDDINGS ? rows : 0;
    s->n++;
}

/* Takes n completions (or gives up after timeout_ms), recording their order. */
static int collect(mm_channel_t *ch, int n, int timeout_ms, seen *s) {
    return (int)mm_collect(ch, (size_t)n, timeout_ms, s ? record : NULL, s);
}

static int find(const seen *s, uint64_t id) {
    for (int i = 0; i < s->n; i++)
        if (s->order[i] == id)
            return i;
    return -1;
}

static void test_small_task_between_chunks(void) {
    mm_engine_t *e = new_engine(100);
    mm_channel_t *ch;
    CHECK(mm_channel_new(&ch) == 0);
    const char *m = "synthetic/embedding?dim=4&item_us=300"; /* whole big task: 0.9 s */
    uint64_t big, small;
    CHECK(submit_n(e, ch, m, BIG, &big) == 0);
    usleep(100000);
    CHECK(submit_n(e, ch, m, 1, &small) == 0);
    seen s = {0};
    CHECK(collect(ch, 2, 20000, &s) == 2);
    CHECK(find(&s, small) == 0 && find(&s, big) == 1);
    CHECK(s.status[1] == MM_TS_DONE && s.rows[1] == BIG);
    mm_engine_free(e);
    mm_channel_close(ch);
}

static void test_cancel_drop_shutdown_reach_running_tasks(void) {
    mm_engine_t *e = new_engine(50);
    mm_channel_t *ch;
    CHECK(mm_channel_new(&ch) == 0);
    const char *m = "synthetic/embedding?dim=4&item_us=2000"; /* whole: 6 s */
    uint64_t a, b, c;
    CHECK(submit_n(e, ch, m, BIG, &a) == 0);
    usleep(150000);
    CHECK(mm_engine_cancel(e, a) == 1);
    seen s = {0};
    CHECK(collect(ch, 1, 3000, &s) == 1);
    CHECK(s.order[0] == a && s.status[0] == MM_TS_CANCELLED && s.codes[0] == MM_ECANCELLED);

    CHECK(submit_n(e, ch, m, BIG, &b) == 0);
    usleep(150000);
    uint64_t *ids;
    size_t n;
    CHECK(mm_engine_drop(e, m, "enough", &ids, &n) == 0);
    CHECK(n == 1 && ids[0] == b);
    mm_free(ids);
    CHECK(collect(ch, 1, 3000, &s) == 1);
    CHECK(s.order[1] == b && s.status[1] == MM_TS_DROPPED);

    CHECK(submit_n(e, ch, m, BIG, &c) == 0);
    usleep(150000);
    uint64_t sd;
    CHECK(mm_engine_shutdown(e, ch, 1, &sd) == 0);
    CHECK(collect(ch, 2, 3000, &s) == 2);
    int ic = find(&s, c);
    CHECK(ic >= 0 && s.status[ic] == MM_TS_FAILED && s.codes[ic] == MM_ESHUTDOWN);
    mm_engine_stats st;
    mm_engine_stats_get(e, &st);
    CHECK(st.created == st.completed && st.double_completions == 0);
    mm_engine_free(e);
    mm_channel_close(ch);
}

static void test_unwanted_load_is_aborted(void) {
    mm_engine_t *e = new_engine(100);
    mm_channel_t *ch;
    CHECK(mm_channel_new(&ch) == 0);
    const char *m = "synthetic/embedding?load_ms=60000&download_mb=100";
    uint64_t a, r;
    CHECK(submit_n(e, ch, m, 1, &a) == 0);
    usleep(100000);
    CHECK(mm_engine_cancel(e, a) == 1);
    CHECK(mm_engine_release(e, ch, m, &r) == 0);
    seen s = {0};
    CHECK(collect(ch, 2, 5000, &s) == 2); /* not after the 60 s load */
    CHECK(s.status[find(&s, a)] == MM_TS_CANCELLED);
    CHECK(s.status[find(&s, r)] == MM_TS_DONE);

    /* A pre-load that is cancelled, then one cut short by shutdown. */
    uint64_t p1, p2, sd;
    CHECK(submit_kind(e, ch, m, MM_KIND_PRELOAD, 0, &p1) == 0);
    usleep(100000);
    CHECK(mm_engine_cancel(e, p1) == 1);
    CHECK(collect(ch, 1, 5000, &s) == 1);
    CHECK(s.order[2] == p1 && s.status[2] == MM_TS_CANCELLED);
    CHECK(submit_kind(e, ch, m, MM_KIND_PRELOAD, 0, &p2) == 0);
    usleep(100000);
    CHECK(mm_engine_shutdown(e, ch, 1, &sd) == 0);
    CHECK(collect(ch, 2, 5000, &s) == 2);
    CHECK(s.status[find(&s, p2)] == MM_TS_FAILED && s.codes[find(&s, p2)] == MM_ESHUTDOWN);
    mm_engine_free(e);
    mm_channel_close(ch);
}

typedef struct racer {
    mm_engine_t *e;
    mm_channel_t *ch;
    uint64_t ids[40];
    int n;
} racer;

static void *race_submit(void *arg) {
    racer *r = arg;
    const char *m = "synthetic/embedding?dim=4&item_us=20";
    for (int i = 0; i < 40; i++)
        if (submit_n(r->e, r->ch, m, (size_t)(i % 3 ? 1 : 700), &r->ids[r->n]) == 0)
            r->n++;
    return NULL;
}

static void test_race_exactly_once(void) {
    mm_engine_t *e = new_engine(64);
    mm_channel_t *ch;
    CHECK(mm_channel_new(&ch) == 0);
    racer r = {e, ch, {0}, 0};
    pthread_t th;
    pthread_create(&th, NULL, race_submit, &r);
    for (int i = 0; i < 30; i++) {
        uint64_t *ids;
        size_t n;
        if (i % 5 == 0 && mm_engine_drop(e, "synthetic/embedding?dim=4&item_us=20", "race", &ids,
                                         &n) == 0)
            mm_free(ids);
        for (uint64_t id = 1; id < 60; id += 7)
            mm_engine_cancel(e, id);
        usleep(3000);
    }
    pthread_join(th, NULL);
    CHECK(collect(ch, r.n, 20000, NULL) == r.n);
    mm_engine_stats st;
    mm_engine_stats_get(e, &st);
    CHECK(st.created == st.completed && st.double_completions == 0);
    mm_engine_free(e);
    mm_channel_close(ch);
}

int main(void) {
    for (int i = 0; i < BIG; i++) {
        snprintf(big_text[i], sizeof big_text[i], "text %d", i);
        big_items[i] = big_text[i];
        big_lens[i] = strlen(big_text[i]);
    }
    test_small_task_between_chunks();
    test_cancel_drop_shutdown_reach_running_tasks();
    test_unwanted_load_is_aborted();
    test_race_exactly_once();
    return mm_check_done("test_chunk: ok");
}
