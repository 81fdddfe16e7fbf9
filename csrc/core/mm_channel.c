/* mm_channel.c: completion lists handed from worker threads to an event
 * loop through an eventfd.
 *
 * The design follows the pattern of libuv's async handles and Redis' bio
 * completions: producers append under a short mutex and signal only on the
 * empty -> non-empty transition; the consumer swaps the whole list out and
 * works without the lock.  The eventfd is read (reset) by the consumer
 * before it swaps, so a push racing with a take is never lost: either it
 * lands in this take, or it finds the list empty and writes again.
 */
#include "mm_channel.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "mm_alloc.h"
#include "mm_err.h"
#include "mm_task_internal.h"

struct mm_channel {
    pthread_mutex_t mu;
    mm_task_t *head, *tail; /* guarded by mu */
    size_t count;           /* guarded by mu */
    int closed;             /* guarded by mu */
    int efd;                /* immutable */
    atomic_long refs;
};

static atomic_ullong g_pushed, g_freed;

void mm_channel_global_counts(unsigned long long *pushed, unsigned long long *freed) {
    if (pushed)
        *pushed = atomic_load(&g_pushed);
    if (freed)
        *freed = atomic_load(&g_freed);
}

int mm_channel_new(mm_channel_t **out) {
    *out = NULL;
    mm_channel_t *ch = mm_calloc(1, sizeof *ch);
    if (!ch)
        return MM_ENOMEM;
    ch->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (ch->efd < 0) {
        mm_free(ch);
        return MM_EIO;
    }
    pthread_mutex_init(&ch->mu, NULL);
    atomic_init(&ch->refs, 1);
    *out = ch;
    return 0;
}

int mm_channel_fd(const mm_channel_t *ch) { return ch->efd; }

static void wake(mm_channel_t *ch) {
    uint64_t one = 1;
    ssize_t r;
    do {
        r = write(ch->efd, &one, sizeof one);
    } while (r < 0 && errno == EINTR);
    /* EAGAIN means the counter is saturated: the loop is awake anyway. */
}

static void unref(mm_channel_t *ch) {
    if (atomic_fetch_sub(&ch->refs, 1) == 1) {
        close(ch->efd);
        pthread_mutex_destroy(&ch->mu);
        mm_free(ch);
    }
}

void mm__channel_ref(mm_channel_t *ch) { atomic_fetch_add(&ch->refs, 1); }

void mm_channel_task_free(mm_task_t *t) {
    if (!t)
        return;
    mm_channel_t *ch = t->channel;
    mm__task_destroy(t);
    atomic_fetch_add(&g_freed, 1);
    if (ch)
        unref(ch);
}

void mm__channel_push(mm_channel_t *ch, mm_task_t *t) {
    atomic_fetch_add(&g_pushed, 1);
    t->next = NULL;
    pthread_mutex_lock(&ch->mu);
    if (ch->closed) {
        pthread_mutex_unlock(&ch->mu);
        mm_channel_task_free(t);
        return;
    }
    int was_empty = ch->head == NULL;
    if (ch->tail)
        ch->tail->next = t;
    else
        ch->head = t;
    ch->tail = t;
    ch->count++;
    pthread_mutex_unlock(&ch->mu);
    if (was_empty)
        wake(ch);
}

void mm_channel_poke(mm_channel_t *ch) { wake(ch); }

mm_task_t **mm_channel_take(mm_channel_t *ch, size_t *n) {
    uint64_t v;
    while (read(ch->efd, &v, sizeof v) < 0 && errno == EINTR) {
    }
    pthread_mutex_lock(&ch->mu);
    mm_task_t *head = ch->head;
    size_t count = ch->count;
    mm_task_t **arr = NULL;
    if (head) {
        arr = mm_malloc(count * sizeof *arr);
        if (!arr) {
            /* Leave the list in place and re-arm, so nothing is lost. */
            pthread_mutex_unlock(&ch->mu);
            wake(ch);
            *n = 0;
            return NULL;
        }
        ch->head = ch->tail = NULL;
        ch->count = 0;
    }
    pthread_mutex_unlock(&ch->mu);
    size_t i = 0;
    for (mm_task_t *t = head; t; t = t->next)
        arr[i++] = t;
    *n = i;
    return arr;
}

void mm_channel_close(mm_channel_t *ch) {
    if (!ch)
        return;
    pthread_mutex_lock(&ch->mu);
    ch->closed = 1;
    mm_task_t *head = ch->head;
    ch->head = ch->tail = NULL;
    ch->count = 0;
    pthread_mutex_unlock(&ch->mu);
    while (head) {
        mm_task_t *next = head->next;
        mm_channel_task_free(head);
        head = next;
    }
    unref(ch);
}
