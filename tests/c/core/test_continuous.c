/* test_continuous.c: continuous batching in the core (mm_worker_take_more,
 * mm_worker_finish), on the synthetic backend's continuous=N generation,
 * under ASan and TSan like the other core tests.
 *
 * One worker keeps a running batch: a short request submitted while a long
 * one decodes joins it and completes first; more requests than slots wait
 * in the queue and all complete; the KV report reaches status(); and
 * cancels, drops, a release and a shutdown racing a running batch still
 * complete every task exactly once.
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
#include "mm_collect.h"

static mm_engine_t *new_engine(void) {
    mm_engine_params p;
    mm_engine_default_params(&p);
    p.queue_timeout_ms = 0;
    p.fake_gpus = "";
    mm_engine_t *e = NULL;
    if (mm_engine_new(&p, &e) != 0)
        exit(1);
    return e;
}

static int submit_gen(mm_engine_t *e, mm_channel_t *ch, const char *model, const char *text,
                      int words, uint64_t *id) {
    const char *items[1] = {text};
    size_t lens[1] = {strlen(text)};
    char kw[64];
    snprintf(kw, sizeof kw, "{\"max_new_tokens\": %d}", words);
    mm_submit_args a = {0};
    a.model_name = model;
    a.type = MM_TASK_TEXT_GENERATION;
    a.kind = MM_KIND_RUN;
    a.device = "cpu";
    a.num_workers = 1;
    a.items = items;
    a.item_lens = lens;
    a.n_items = 1;
    a.params_json = kw;
    char err[256];
    return mm_engine_submit(e, ch, &a, id, err, sizeof err);
}

typedef struct seen {
    uint64_t order[256];
    int status[256];
    size_t words[256];
    int n;
} seen;

static size_t count_words(const char *s, size_t len) {
    size_t w = 0;
    for (size_t i = 0; i < len; i++)
        if (s[i] != ' ' && (i == 0 || s[i - 1] == ' '))
            w++;
    return w;
}

static void record(mm_task_t *t, void *ud) {
    seen *s = ud;
    if (s->n >= 256)
        return;
    size_t len = 0;
    const char *txt =
        mm_task_get_status(t) == MM_TS_DONE ? mm_task_result_text_at(t, 0, &len) : NULL;
    s->order[s->n] = mm_task_id(t);
    s->status[s->n] = mm_task_get_status(t);
    s->words[s->n] = txt ? count_words(txt, len) : 0;
    s->n++;
}

/* Takes n completions (or gives up after timeout_ms), in order. */
static int collect(mm_channel_t *ch, int n, int timeout_ms, seen *s) {
    return (int)mm_collect(ch, (size_t)n, timeout_ms, s ? record : NULL, s);
}

static int find(const seen *s, uint64_t id) {
    for (int i = 0; i < s->n; i++)
        if (s->order[i] == id)
            return i;
    return -1;
}

static void test_short_joins_and_leaves_first(void) {
    mm_engine_t *e = new_engine();
    mm_channel_t *ch;
    CHECK(mm_channel_new(&ch) == 0);
    const char *m = "synthetic/text_generation?continuous=4&word_us=2000";
    uint64_t lng, shrt;
    CHECK(submit_gen(e, ch, m, "a long one", 300, &lng) == 0); /* 0.6 s */
    usleep(100000);
    CHECK(submit_gen(e, ch, m, "a short one", 3, &shrt) == 0);
    seen s = {0};
    CHECK(collect(ch, 2, 20000, &s) == 2);
    CHECK(find(&s, shrt) == 0 && find(&s, lng) == 1); /* one worker: it joined the batch */
    CHECK(s.status[0] == MM_TS_DONE && s.words[0] == 3);
    CHECK(s.status[1] == MM_TS_DONE && s.words[1] == 300);
    mm_model_status *st;
    size_t n;
    CHECK(mm_engine_status(e, &st, &n) == 0);
    CHECK(n == 1 && st[0].kv_blocks_total == 4 && st[0].kv_blocks_used == 0);
    CHECK(n == 1 && st[0].done == 2 && st[0].in_flight == 0);
    mm_free(st);
    mm_engine_free(e);
    mm_channel_close(ch);
}

static void test_more_than_slots_wait_in_queue(void) {
    mm_engine_t *e = new_engine();
    mm_channel_t *ch;
    CHECK(mm_channel_new(&ch) == 0);
    const char *m = "synthetic/text_generation?continuous=2&word_us=500";
    uint64_t ids[12];
    for (int i = 0; i < 12; i++)
        CHECK(submit_gen(e, ch, m, "x", 2 + i % 5, &ids[i]) == 0);
    usleep(2000);
    mm_model_status *st;
    size_t n;
    CHECK(mm_engine_status(e, &st, &n) == 0);
    CHECK(n == 1 && st[0].kv_blocks_used <= 2 && st[0].queue_depth + st[0].in_flight <= 12);
    mm_free(st);
    seen s = {0};
    CHECK(collect(ch, 12, 20000, &s) == 12);
    for (int i = 0; i < 12; i++) {
        int k = find(&s, ids[i]);
        CHECK(k >= 0 && s.status[k] == MM_TS_DONE && s.words[k] == (size_t)(2 + i % 5));
    }
    mm_engine_stats es;
    mm_engine_stats_get(e, &es);
    CHECK(es.created == es.completed && es.double_completions == 0);
    mm_engine_free(e);
    mm_channel_close(ch);
}

typedef struct racer {
    mm_engine_t *e;
    mm_channel_t *ch;
    uint64_t ids[120];
    int n;
} racer;

static const char *RACE_M = "synthetic/text_generation?continuous=3&word_us=200";

static void *race_submit(void *arg) {
    racer *r = arg;
    for (int i = 0; i < 120; i++) {
        if (submit_gen(r->e, r->ch, RACE_M, i % 7 ? "go" : "go __fail__", 1 + (i * 37) % 40,
                       &r->ids[r->n]) == 0)
            r->n++;
        if (i % 10 == 0)
            usleep(1000);
    }
    return NULL;
}

static void test_race_exactly_once(void) {
    mm_engine_t *e = new_engine();
    mm_channel_t *ch;
    CHECK(mm_channel_new(&ch) == 0);
    racer r = {e, ch, {0}, 0};
    pthread_t th;
    pthread_create(&th, NULL, race_submit, &r);
    int controls = 0;
    for (int i = 0; i < 30; i++) {
        uint64_t *ids;
        size_t n;
        if (i % 6 == 0 && mm_engine_drop(e, RACE_M, "race", &ids, &n) == 0)
            mm_free(ids);
        for (uint64_t id = 1 + (uint64_t)i % 5; id < 130; id += 5)
            mm_engine_cancel(e, id);
        if (i == 15) {
            uint64_t rel;
            if (mm_engine_release(e, ch, RACE_M, &rel) == 0)
                controls++;
        }
        usleep(2000);
    }
    pthread_join(th, NULL);
    uint64_t sd;
    if (mm_engine_shutdown(e, ch, 1, &sd) == 0)
        controls++;
    CHECK(collect(ch, r.n + controls, 20000, NULL) == r.n + controls);
    mm_engine_stats es;
    mm_engine_stats_get(e, &es);
    CHECK(es.created == es.completed && es.double_completions == 0);
    mm_engine_free(e);
    mm_channel_close(ch);
}

int main(void) {
    test_short_joins_and_leaves_first();
    test_more_than_slots_wait_in_queue();
    test_race_exactly_once();
    return mm_check_done("test_continuous: ok");
}
