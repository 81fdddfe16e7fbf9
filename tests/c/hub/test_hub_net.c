/* test_hub_net.c: mm_hub_snapshot() over the network, for the sanitizer
 * builds.  run_net.py starts the loopback fake hub, switches its faults and
 * runs this program once per scenario:
 *
 *   test_hub_net ENDPOINT CACHE MODEL REVISION EXPECT [THREADS] [TOKEN]
 *
 * THREADS threads (default 1) resolve MODEL at once through their own
 * calls; each result must be EXPECT (an error name such as "OK" or
 * "CORRUPT_DOWNLOAD"), progress must never go backwards, and every
 * successful thread must get the same snapshot path.  Prints one line per
 * thread for the driver and exits 0 when everything held.
 *
 * EXPECT "OOM_SWEEP" instead makes allocation number n fail, for n = 0, 1,
 * 2, ... until a call succeeds: every call must end in OK or OUT_OF_MEMORY
 * (ASan checks that nothing leaks or breaks on those paths).
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mm_alloc.h"
#include "mm_err.h"
#include "mm_hub.h"

typedef struct run {
    const mm_hub_params *p;
    const char *model, *rev;
    int rc;
    int bad_progress;
    long n_progress;
    uint64_t last_done;
    mm_hub_result res;
    char err[1024];
} run;

static int on_progress(const mm_hub_progress *pr, void *ud) {
    run *r = ud;
    if (pr->model_done < r->last_done || (pr->model_total && pr->model_done > pr->model_total) ||
        (pr->file_total && pr->file_done > pr->file_total) || !pr->file)
        r->bad_progress = 1;
    r->last_done = pr->model_done;
    r->n_progress++;
    return 0;
}

static void *worker(void *ud) {
    run *r = ud;
    mm_hub_params p = *r->p; /* each thread its own copy, with its own callback data */
    p.progress = on_progress;
    p.progress_ud = r;
    r->rc = mm_hub_snapshot(&p, r->model, r->rev, &r->res, r->err, sizeof r->err);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 6) {
        fprintf(stderr, "usage: %s ENDPOINT CACHE MODEL REVISION EXPECT [THREADS] [TOKEN]\n", argv[0]);
        return 2;
    }
    alarm(60);
    int n = argc > 6 ? atoi(argv[6]) : 1;
    if (n < 1 || n > 16)
        n = 1;
    mm_hub_params p;
    mm_hub_default_params(&p);
    snprintf(p.endpoint, sizeof p.endpoint, "%s", argv[1]);
    snprintf(p.cache_dir, sizeof p.cache_dir, "%s", argv[2]);
    snprintf(p.token, sizeof p.token, "%s", argc > 7 ? argv[7] : "");
    p.offline = 0;
    p.max_retries = 3;
    p.retry_base_ms = 5;
    p.retry_max_ms = 50;
    p.read_timeout_ms = 5000;
    if (strcmp(argv[5], "OOM_SWEEP") == 0) {
        static mm_hub_result res;
        char err[1024];
        int rc = MM_ENOMEM, k = 0;
        for (; k < 500 && rc == MM_ENOMEM; k++) {
            mm_alloc_fail_after(k);
            rc = mm_hub_snapshot(&p, argv[3], argv[4], &res, err, sizeof err);
            mm_alloc_fail_after(-1);
            if (rc != 0 && rc != MM_ENOMEM) {
                fprintf(stderr, "allocation %d failing gave %s: %s\n", k, mm_err_name(rc), err);
                return 1;
            }
        }
        printf("oom sweep: %d failing allocations, then %s\n", k - 1, mm_err_name(rc));
        mm_hub_global_cleanup();
        return rc == 0 ? 0 : 1;
    }
    run runs[16];
    pthread_t t[16];
    for (int i = 0; i < n; i++) {
        memset(&runs[i], 0, sizeof runs[i]);
        runs[i].p = &p;
        runs[i].model = argv[3];
        runs[i].rev = argv[4];
        pthread_create(&t[i], NULL, worker, &runs[i]);
    }
    int ok = 1;
    for (int i = 0; i < n; i++) {
        pthread_join(t[i], NULL);
        run *r = &runs[i];
        const char *name = mm_err_name(r->rc);
        printf("thread=%d code=%s requests=%d bytes=%llu progress_calls=%ld path=%s err=%s\n", i, name,
               r->res.n_requests, (unsigned long long)r->res.bytes_downloaded, r->n_progress, r->res.path,
               r->err);
        if (strcmp(name, argv[5]) != 0) {
            fprintf(stderr, "thread %d: got %s, want %s (%s)\n", i, name, argv[5], r->err);
            ok = 0;
        }
        if (r->bad_progress) {
            fprintf(stderr, "thread %d: progress went backwards or past its total\n", i);
            ok = 0;
        }
        if (r->rc == 0 && strcmp(r->res.path, runs[0].res.path) != 0) {
            fprintf(stderr, "thread %d: another snapshot path\n", i);
            ok = 0;
        }
        if (p.token[0] && strstr(r->err, p.token)) {
            fprintf(stderr, "thread %d: the token is in the error message\n", i);
            ok = 0;
        }
    }
    mm_hub_global_cleanup();
    return ok ? 0 : 1;
}
