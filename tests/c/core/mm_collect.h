/* mm_collect.h: the engine tests' one way to wait for completions.  Takes tasks
 * off a completion channel until n have arrived or a poll waits timeout_ms in
 * vain, hands each to cb (which records what the test checks) and frees it.
 * Returns how many arrived, so a test asserts exactly-once by comparing it. */
#ifndef MM_COLLECT_H
#define MM_COLLECT_H

#include <poll.h>
#include <stddef.h>

#include "mm_alloc.h"
#include "mm_engine.h"

typedef void (*mm_on_task)(mm_task_t *t, void *ud);

static inline size_t mm_collect(mm_channel_t *ch, size_t n, int timeout_ms, mm_on_task cb,
                                void *ud) {
    size_t got = 0;
    while (got < n) {
        struct pollfd pfd = {mm_channel_fd(ch), POLLIN, 0};
        if (poll(&pfd, 1, timeout_ms) <= 0)
            break;
        size_t k;
        mm_task_t **arr = mm_channel_take(ch, &k);
        for (size_t i = 0; i < k; i++) {
            if (cb)
                cb(arr[i], ud);
            mm_channel_task_free(arr[i]);
        }
        mm_free(arr);
        got += k;
    }
    return got;
}

#endif
