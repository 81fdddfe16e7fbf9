/* mm_backends.c: the process-wide backend list.
 *
 * A fixed array published with release/acquire atomics: registration is
 * rare (start-up), lookups happen on every submit and must not lock.
 */
#include "mm_backends.h"

#include <stdatomic.h>

#include "mm_err.h"

#define MAX_BACKENDS 16

static const mm_backend_vtable *_Atomic slots[MAX_BACKENDS] = {&mm_synthetic_backend};
static atomic_int n_slots = 1;
static atomic_flag reg_lock = ATOMIC_FLAG_INIT;

int mm_backends_register(const mm_backend_vtable *vt) {
    while (atomic_flag_test_and_set(&reg_lock)) {
    }
    int n = atomic_load(&n_slots);
    int rc = 0;
    for (int i = 0; i < n; i++)
        if (atomic_load(&slots[i]) == vt)
            goto out;
    if (n >= MAX_BACKENDS) {
        rc = MM_ENOMEM;
        goto out;
    }
    atomic_store(&slots[n], vt);
    atomic_store(&n_slots, n + 1);
out:
    atomic_flag_clear(&reg_lock);
    return rc;
}

const mm_backend_vtable *mm_backends_find(const char *model_name) {
    int n = atomic_load(&n_slots);
    for (int i = 0; i < n; i++) {
        const mm_backend_vtable *vt = atomic_load(&slots[i]);
        if (vt && vt->accepts(model_name))
            return vt;
    }
    return NULL;
}
