/* mm_channel.h: the completion channel between worker threads and one
 * event loop.
 *
 * Workers push finished tasks; the first push onto an empty list writes the
 * channel's eventfd (so a burst of completions costs one wake-up); the
 * loop's reader callback takes the whole list at once and frees each task
 * after converting it.  One channel per event loop that uses an engine.
 *
 * A channel is reference-counted: each task bound to it holds a reference,
 * so closing a channel while tasks are still running is safe (their
 * completions are then discarded and freed).
 */
#ifndef MM_CHANNEL_H
#define MM_CHANNEL_H

#include <stddef.h>

#include "mm_task.h"

typedef struct mm_channel mm_channel_t;

/* Creates a channel with its eventfd; 0, MM_ENOMEM or MM_EIO. */
int mm_channel_new(mm_channel_t **out);

/* The eventfd to watch for readability (loop.add_reader). */
int mm_channel_fd(const mm_channel_t *ch);

/* Takes every completed task, oldest first, as an array the caller owns
 * (free it with mm_free after mm_channel_task_free on each task); also
 * clears the eventfd.  *n gets the count; NULL when none.  Never blocks
 * beyond the channel mutex.  Loop thread. */
mm_task_t **mm_channel_take(mm_channel_t *ch, size_t *n);

/* Frees a task taken from the channel. */
void mm_channel_task_free(mm_task_t *t);

/* Wakes the loop without a completion (used to flush buffered logs). */
void mm_channel_poke(mm_channel_t *ch);

/* Closes the channel: later completions are freed on arrival, pending ones
 * now.  Drops the creator's reference. */
void mm_channel_close(mm_channel_t *ch);

/* Internal to the core: a task takes a reference at bind, and push hands
 * the task over (or frees it when the channel is closed). */
void mm__channel_ref(mm_channel_t *ch);
void mm__channel_push(mm_channel_t *ch, mm_task_t *t);
/* Number of tasks ever pushed and freed through channels (tests). */
void mm_channel_global_counts(unsigned long long *pushed, unsigned long long *freed);

#endif
