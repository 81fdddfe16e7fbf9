/* mm_devices.c: GPU discovery through NVML loaded at run time, simulated
 * GPU lists for tests, and the placement rule for a model's workers.
 *
 * NVML is preferred over the CUDA runtime because asking it for free memory
 * creates no CUDA context (a context costs hundreds of MiB per GPU).  NVML
 * numbers devices in PCI bus order; CUDA_VISIBLE_DEVICES is applied on top,
 * so a listed index or UUID prefix becomes ordinal 0, 1, ... as the CUDA
 * runtime inside the process will see it.  (Set CUDA_DEVICE_ORDER=PCI_BUS_ID
 * when GPUs differ, as CUDA's own default order is "fastest first".)
 */
#include "mm_devices.h"

#include <ctype.h>
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "mm_err.h"

typedef struct {
    unsigned long long total, free, used;
} nvml_memory;

typedef int (*nvml_init_fn)(void);
typedef int (*nvml_count_fn)(unsigned int *);
typedef int (*nvml_handle_fn)(unsigned int, void **);
typedef int (*nvml_mem_fn)(void *, nvml_memory *);
typedef int (*nvml_str_fn)(void *, char *, unsigned int);

static int parse_fake(const char *spec, mm_gpu_list *list) {
    list->n = 0;
    list->simulated = 1;
    if (!strcmp(spec, "none"))
        return 0; /* a simulated machine with no GPU */
    const char *p = spec;
    while (*p) {
        while (*p == ' ' || *p == ',')
            p++;
        if (!*p)
            break;
        char *end;
        double mib = strtod(p, &end);
        if (end == p || mib < 0 || list->n >= MM_MAX_GPUS)
            return MM_EINVAL;
        mm_gpu *g = &list->gpus[list->n];
        g->index = list->n;
        g->free_bytes = (uint64_t)(mib * 1048576.0);
        g->total_bytes = g->free_bytes;
        g->nvml_index = -1;
        snprintf(g->name, sizeof g->name, "simulated GPU %d", list->n);
        list->n++;
        p = end;
        while (*p == ' ')
            p++;
        if (*p && *p != ',')
            return MM_EINVAL;
    }
    return 0;
}

/* Maps CUDA_VISIBLE_DEVICES onto NVML indices.  Returns the count of visible
 * devices written to map (NVML index per visible ordinal), or -1 when the
 * variable is unset (all visible). */
static int visible_map(void *handles[], char uuids[][96], int n_nvml, int map[]) {
    const char *cvd = getenv("CUDA_VISIBLE_DEVICES");
    if (!cvd)
        return -1;
    int n = 0;
    char buf[512];
    snprintf(buf, sizeof buf, "%s", cvd);
    for (char *tok = strtok(buf, ","); tok && n < MM_MAX_GPUS; tok = strtok(NULL, ",")) {
        while (isspace((unsigned char)*tok))
            tok++;
        if (!*tok)
            continue;
        int found = -1;
        if (isdigit((unsigned char)*tok) || *tok == '-') {
            int idx = atoi(tok);
            if (idx < 0 || idx >= n_nvml)
                break; /* CUDA stops at the first invalid entry */
            found = idx;
        } else {
            for (int i = 0; i < n_nvml; i++)
                if (handles[i] && strncmp(uuids[i], tok, strlen(tok)) == 0)
                    found = i;
            if (found < 0)
                break;
        }
        map[n++] = found;
    }
    return n;
}

/* NVML is opened once per process, on first use, and kept open (nvmlInit is
 * reference counted and cheap to keep; nothing here creates a CUDA context):
 * discovery and the live free-memory queries share it. */
typedef struct {
    nvml_count_fn count;
    nvml_handle_fn handle;
    nvml_mem_fn mem;
    nvml_str_fn uuid, name; /* optional */
} nvml_api;

static pthread_once_t nvml_once = PTHREAD_ONCE_INIT;
static nvml_api nvml; /* nvml.handle == NULL: no usable NVML */

static void nvml_open(void) {
    void *lib = dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib)
        return;
    nvml_init_fn init = (nvml_init_fn)dlsym(lib, "nvmlInit_v2");
    nvml_api a = {
        .count = (nvml_count_fn)dlsym(lib, "nvmlDeviceGetCount_v2"),
        .handle = (nvml_handle_fn)dlsym(lib, "nvmlDeviceGetHandleByIndex_v2"),
        .mem = (nvml_mem_fn)dlsym(lib, "nvmlDeviceGetMemoryInfo"),
        .uuid = (nvml_str_fn)dlsym(lib, "nvmlDeviceGetUUID"),
        .name = (nvml_str_fn)dlsym(lib, "nvmlDeviceGetName"),
    };
    if (!init || !a.count || !a.handle || !a.mem || init() != 0) {
        dlclose(lib);
        return;
    }
    nvml = a;
}

static const nvml_api *nvml_get(void) {
    pthread_once(&nvml_once, nvml_open);
    return nvml.handle ? &nvml : NULL;
}

static void discover_nvml(mm_gpu_list *list) {
    list->n = 0;
    const nvml_api *api = nvml_get();
    if (!api)
        return;
    unsigned int n = 0;
    if (api->count(&n) != 0)
        n = 0;
    if (n > MM_MAX_GPUS)
        n = MM_MAX_GPUS;
    void *handles[MM_MAX_GPUS] = {0};
    static char uuids[MM_MAX_GPUS][96];
    static char names[MM_MAX_GPUS][64];
    nvml_memory mi[MM_MAX_GPUS];
    for (unsigned int i = 0; i < n; i++) {
        uuids[i][0] = names[i][0] = '\0';
        memset(&mi[i], 0, sizeof mi[i]);
        if (api->handle(i, &handles[i]) != 0) {
            handles[i] = NULL;
            continue;
        }
        api->mem(handles[i], &mi[i]);
        if (api->uuid)
            api->uuid(handles[i], uuids[i], sizeof uuids[i]);
        if (api->name)
            api->name(handles[i], names[i], sizeof names[i]);
    }
    int map[MM_MAX_GPUS];
    int nv = visible_map(handles, uuids, (int)n, map);
    if (nv < 0) {
        nv = (int)n;
        for (int i = 0; i < nv; i++)
            map[i] = i;
    }
    for (int k = 0; k < nv; k++) {
        int i = map[k];
        if (!handles[i])
            continue;
        mm_gpu *g = &list->gpus[list->n++];
        g->index = k;
        g->free_bytes = mi[i].free;
        g->total_bytes = mi[i].total;
        g->nvml_index = i;
        snprintf(g->name, sizeof g->name, "%s", names[i]);
    }
}

/* A simulated list stands for the machine's physical GPUs, so
 * CUDA_VISIBLE_DEVICES applies to it as to real ones (simulated UUIDs are
 * "GPU-sim-<n>"). */
static void apply_visible_to_simulated(mm_gpu_list *list) {
    void *handles[MM_MAX_GPUS];
    static _Thread_local char uuids[MM_MAX_GPUS][96];
    for (int i = 0; i < list->n; i++) {
        handles[i] = &list->gpus[i];
        snprintf(uuids[i], sizeof uuids[i], "GPU-sim-%d", i);
    }
    int map[MM_MAX_GPUS];
    int nv = visible_map(handles, uuids, list->n, map);
    if (nv < 0)
        return;
    mm_gpu phys[MM_MAX_GPUS];
    memcpy(phys, list->gpus, sizeof(mm_gpu) * (size_t)list->n);
    for (int k = 0; k < nv; k++) {
        list->gpus[k] = phys[map[k]];
        list->gpus[k].index = k;
    }
    list->n = nv;
}

int mm_devices_gpu_free(const mm_gpu *g, uint64_t *free_bytes) {
    if (g->nvml_index < 0)
        return MM_EUNSUPPORTED;
    const nvml_api *api = nvml_get();
    void *h = NULL;
    nvml_memory mi;
    if (!api || api->handle((unsigned)g->nvml_index, &h) != 0 || api->mem(h, &mi) != 0)
        return MM_EUNSUPPORTED;
    *free_bytes = mi.free;
    return 0;
}

/* A cgroup v2 (or v1) memory file holding one number; 0 when absent or
 * "max". */
static uint64_t read_u64_file(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    char buf[64] = "";
    uint64_t v = 0;
    if (fgets(buf, sizeof buf, f) && buf[0] >= '0' && buf[0] <= '9')
        v = strtoull(buf, NULL, 10);
    fclose(f);
    return v;
}

static uint64_t cgroup_limit(void) {
    uint64_t v = read_u64_file("/sys/fs/cgroup/memory.max");
    if (!v)
        v = read_u64_file("/sys/fs/cgroup/memory/memory.limit_in_bytes");
    return v >= (1ULL << 60) ? 0 : v; /* v1 writes "no limit" as a huge number */
}

static uint64_t cgroup_usage(void) {
    uint64_t v = read_u64_file("/sys/fs/cgroup/memory.current");
    return v ? v : read_u64_file("/sys/fs/cgroup/memory/memory.usage_in_bytes");
}

static uint64_t meminfo_kb(const char *key) {
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f)
        return 0;
    char line[256];
    size_t klen = strlen(key);
    uint64_t v = 0;
    while (fgets(line, sizeof line, f))
        if (!strncmp(line, key, klen) && line[klen] == ':') {
            v = strtoull(line + klen + 1, NULL, 10);
            break;
        }
    fclose(f);
    return v;
}

uint64_t mm_devices_ram_total(void) {
    uint64_t total = meminfo_kb("MemTotal") * 1024;
    uint64_t lim = cgroup_limit();
    return lim && (lim < total || !total) ? lim : total;
}

uint64_t mm_devices_ram_available(void) {
    uint64_t avail = meminfo_kb("MemAvailable") * 1024;
    uint64_t lim = cgroup_limit();
    if (lim) {
        uint64_t used = cgroup_usage();
        uint64_t head = used < lim ? lim - used : 0;
        if (head < avail)
            avail = head;
    }
    return avail;
}

uint64_t mm_devices_rss(void) {
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f)
        return 0;
    unsigned long size = 0, resident = 0;
    int ok = fscanf(f, "%lu %lu", &size, &resident) == 2;
    fclose(f);
    return ok ? (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE) : 0;
}

int mm_devices_discover(const char *fake, mm_gpu_list *list) {
    memset(list, 0, sizeof *list);
    if (!fake || !*fake)
        fake = getenv("PYMODELMGR_FAKE_GPUS");
    if (fake && *fake) {
        int rc = parse_fake(fake, list);
        if (rc == 0)
            apply_visible_to_simulated(list);
        return rc;
    }
    discover_nvml(list);
    return 0;
}

int mm_devices_restrict(mm_gpu_list *list, const char *allowed) {
    int keep[MM_MAX_GPUS] = {0};
    const char *p = allowed;
    while (*p) {
        while (*p == ',' || *p == ' ')
            p++;
        if (!*p)
            break;
        char *end;
        long idx = strtol(p, &end, 10);
        if (end == p || idx < 0)
            return MM_EINVAL;
        for (int i = 0; i < list->n; i++)
            if (list->gpus[i].index == idx)
                keep[i] = 1;
        p = end;
    }
    int n = 0;
    for (int i = 0; i < list->n; i++)
        if (keep[i])
            list->gpus[n++] = list->gpus[i];
    list->n = n;
    return 0;
}

static int parse_cuda_index(const char *request, int *idx) {
    if (strncmp(request, "cuda:", 5) != 0)
        return 0;
    const char *p = request + 5;
    if (!*p)
        return 0;
    for (const char *q = p; *q; q++)
        if (!isdigit((unsigned char)*q))
            return 0;
    *idx = atoi(p);
    return 1;
}

int mm_devices_request_valid(const char *request) {
    int idx;
    return request && (!strcmp(request, "gpu") || !strcmp(request, "auto") ||
                       !strcmp(request, "cuda") || !strcmp(request, "cpu") ||
                       parse_cuda_index(request, &idx));
}

static void set_cpu(mm_device *d, int threads) {
    memset(d, 0, sizeof *d);
    d->is_gpu = 0;
    d->index = -1;
    snprintf(d->name, sizeof d->name, "cpu");
    d->cpu_threads = threads;
}

static void set_gpu(mm_device *d, int index) {
    memset(d, 0, sizeof *d);
    d->is_gpu = 1;
    d->index = index;
    snprintf(d->name, sizeof d->name, "cuda:%d", index);
    d->cpu_threads = 1;
}

/* Cores online, read once: sysconf reads /sys on every call, and placement
 * runs on every submit. */
static long online_cores(void) {
    static _Atomic long cached;
    long c = cached;
    if (c <= 0) {
        c = sysconf(_SC_NPROCESSORS_ONLN);
        if (c < 1)
            c = 1;
        cached = c;
    }
    return c;
}

static void place_cpu(int num_workers, int cpu_threads, mm_placement *out) {
    long cores = online_cores();
    int per = cpu_threads > 0 ? cpu_threads : (int)(cores / num_workers);
    if (per < 1)
        per = 1;
    out->n_workers = num_workers;
    for (int i = 0; i < num_workers; i++)
        set_cpu(&out->devs[i], per);
}

int mm_devices_place(const mm_gpu_list *gpus, const char *request, int num_workers,
                     int cpu_threads, mm_placement *out, char *err, size_t errlen) {
    memset(out, 0, sizeof *out);
    if (num_workers < 1 || num_workers > MM_MAX_WORKERS) {
        snprintf(err, errlen, "num_workers must be between 1 and %d, got %d", MM_MAX_WORKERS,
                 num_workers);
        return MM_EINVAL;
    }
    int idx;
    if (!request || !strcmp(request, "cpu")) {
        place_cpu(num_workers, cpu_threads, out);
        return 0;
    }
    if (parse_cuda_index(request, &idx)) {
        for (int i = 0; i < gpus->n; i++) {
            if (gpus->gpus[i].index == idx) {
                out->n_workers = 1;
                set_gpu(&out->devs[0], idx);
                return 0;
            }
        }
        snprintf(err, errlen, "device %s is not available: %d GPU(s) visible%s", request, gpus->n,
                 gpus->n ? "" : " (use device=\"cpu\" or \"gpu\")");
        return MM_EINVAL;
    }
    if (strcmp(request, "gpu") && strcmp(request, "auto") && strcmp(request, "cuda")) {
        snprintf(err, errlen,
                 "unknown device \"%.64s\": use \"gpu\", \"cpu\" or \"cuda:N\"", request);
        return MM_EINVAL;
    }
    if (gpus->n == 0) {
        place_cpu(num_workers, cpu_threads, out);
        out->fell_back_to_cpu = 1;
        return 0;
    }
    /* Most free memory first; ties keep ordinal order. */
    int order[MM_MAX_GPUS];
    for (int i = 0; i < gpus->n; i++)
        order[i] = i;
    for (int i = 1; i < gpus->n; i++) {
        int v = order[i], j = i - 1;
        while (j >= 0 && gpus->gpus[order[j]].free_bytes < gpus->gpus[v].free_bytes) {
            order[j + 1] = order[j];
            j--;
        }
        order[j + 1] = v;
    }
    int n = num_workers < gpus->n ? num_workers : gpus->n;
    out->n_workers = n;
    for (int i = 0; i < n; i++)
        set_gpu(&out->devs[i], gpus->gpus[order[i % gpus->n]].index);
    return 0;
}
