/* mm_devices.h: GPU discovery and worker placement.
 *
 * Discovery opens NVML (libnvidia-ml.so.1) with dlopen at run time, so the
 * build needs no CUDA and a machine without a GPU is fine; querying memory
 * through NVML creates no CUDA context.  CUDA_VISIBLE_DEVICES is respected
 * (indices or GPU-UUID prefixes).  For tests, a simulated list replaces
 * discovery: the engine's fake_gpus parameter or PYMODELMGR_FAKE_GPUS, a
 * comma list of free-memory sizes in MiB ("24000,16000"), or "none" for a
 * machine without GPUs.
 */
#ifndef MM_DEVICES_H
#define MM_DEVICES_H

#include <stdint.h>

#include "mm_backend.h"

#define MM_MAX_GPUS 64
#define MM_MAX_WORKERS 256

typedef struct mm_gpu {
    int index;           /* CUDA ordinal as this process sees it */
    uint64_t free_bytes; /* at discovery */
    uint64_t total_bytes;
    int nvml_index;      /* for live queries; -1 when simulated */
    char name[64];
} mm_gpu;

typedef struct mm_gpu_list {
    int n;
    int simulated; /* 1: from fake_gpus, not hardware */
    mm_gpu gpus[MM_MAX_GPUS];
} mm_gpu_list;

/* Fills list with the visible GPUs (n = 0 when none or no driver).
 * fake: a simulated list ("24000,16000"), or NULL to use
 * PYMODELMGR_FAKE_GPUS and then NVML.  Blocks briefly (driver query).
 * 0, or MM_EINVAL for a malformed fake list. */
int mm_devices_discover(const char *fake, mm_gpu_list *list);

/* Keeps only the GPUs whose ordinal is in allowed ("0,2"); an allowed
 * ordinal that is not visible is ignored.  0, or MM_EINVAL when malformed. */
int mm_devices_restrict(mm_gpu_list *list, const char *allowed);

/* The free memory of a real GPU now, through NVML (no CUDA context).
 * 0, or MM_EUNSUPPORTED when NVML is not there.  Any thread; blocks briefly. */
int mm_devices_gpu_free(const mm_gpu *g, uint64_t *free_bytes);

/* The CPU side: the budget base (physical RAM, or the cgroup's memory limit
 * when lower), what is available now (MemAvailable, capped by the cgroup's
 * headroom), and this process's resident set (anonymous + file-backed). */
uint64_t mm_devices_ram_total(void);
uint64_t mm_devices_ram_available(void);
uint64_t mm_devices_rss(void);

/* A placement: which device each worker runs on. */
typedef struct mm_placement {
    int n_workers;
    int fell_back_to_cpu; /* "gpu" asked, none present */
    mm_device devs[MM_MAX_WORKERS];
} mm_placement;

/* Places num_workers workers for a device request ("gpu", "auto", "cuda",
 * "cuda:N", "cpu") over gpus.  "gpu": the GPUs with the most free memory
 * first, at most one worker per GPU, round-robin; none -> CPU fallback.
 * "cuda:N": one worker on that GPU.  "cpu": exactly num_workers CPU workers,
 * each given cpu_threads intra-op threads (0: cores / workers).
 * 0, or MM_EINVAL with a message in err. */
int mm_devices_place(const mm_gpu_list *gpus, const char *request, int num_workers,
                     int cpu_threads, mm_placement *out, char *err, size_t errlen);

/* True when request is a device string mm_devices_place understands. */
int mm_devices_request_valid(const char *request);

#endif
