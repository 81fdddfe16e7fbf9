/* mm_native_mem.c: the native backend's footprint estimate (the engine's
 * memory policy asks for it before load, mm_backend.h `estimate`).
 *
 * Weights: the safetensors headers of the model directory and its module
 * folders (a sentence-transformers Dense layer lives in 2_Dense/), read
 * without touching the data: every tensor's element count times the size
 * it will have on the device under the model's dtype (the engine's, or the
 * task's dtype= when given): float32 by default on the CPU, bfloat16 when
 * asked; on a GPU "auto" means float16 for encoders and float32 for the
 * encoder-decoders, whose bfloat16 choice depends on the card.  With int8
 * (CPU encoders) the linear weights of the encoder layers (rank-2 ".weight"
 * tensors under "layer.N.") are 1 byte per element plus one float32 scale
 * per output row, as mmt_int8.h stores them; the rest stays float32.
 *
 * Activations: a bound from config.json, not a measured forward (a forward
 * at the batch budget would cost seconds per load on a CPU).  For one
 * micro-batch of T padded tokens (micro_batch_tokens: 2,048 on the CPU,
 * 16,384 on a GPU) of sequences at most L long (max_position_embeddings,
 * at most T), the live tensors of a layer are bounded by
 *     T * (9 * hidden + 2 * intermediate) * b  hidden states with their
 *                                              residual and layer-norm copies,
 *                                              q, k, v, context, the FFN
 *                                              intermediate and its activation
 *   + 2 * T * L * heads * b                    attention scores and softmax
 * and a CPU worker runs one micro-batch per intra-op thread at once.  An
 * encoder-decoder adds its decoder caches: 64 rows (the CPU group size) x
 * layers x 2 (keys, values) x (512 generated + L encoder positions) x
 * hidden x b.  tests/python/test_memory_real.py checks a forward's peak
 * resident growth against it.
 */
#include <dirent.h>
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "mm_err.h"
#include "mm_native.h"

#define HEADER_MAX (100u << 20)

static size_t file_elem_size(const char *dtype, int *is_float) {
    static const struct {
        const char *name;
        size_t size;
        int fl;
    } T[] = {{"F64", 8, 1}, {"F32", 4, 1}, {"F16", 2, 1}, {"BF16", 2, 1}, {"I64", 8, 0},
             {"I32", 4, 0}, {"I16", 2, 0}, {"I8", 1, 0},  {"U8", 1, 0},   {"BOOL", 1, 0}};
    for (size_t i = 0; i < sizeof T / sizeof T[0]; i++)
        if (!strcmp(dtype, T[i].name)) {
            *is_float = T[i].fl;
            return T[i].size;
        }
    *is_float = 0;
    return 0;
}

/* A linear weight of an encoder layer: "....layer.<digit>....weight" of rank 2
 * (what the shim quantizes under int8). */
static int int8_linear(const char *name, json_t *shape) {
    size_t n = strlen(name);
    if (json_array_size(shape) != 2 || n < 7 || strcmp(name + n - 7, ".weight") != 0)
        return 0;
    for (const char *p = name; (p = strstr(p, "layer")) != NULL; p += 5) {
        const char *q = p + 5 + (p[5] == 's'); /* layer.N or layers.N */
        if ((p == name || p[-1] == '.') && q[0] == '.' && q[1] >= '0' && q[1] <= '9')
            return 1;
    }
    return 0;
}

/* Adds the device bytes of every tensor of one .safetensors file. */
static int add_file(const char *path, size_t float_size, int int8, uint64_t *bytes) {
    FILE *f = fopen(path, "rb");
    if (!f)
        return MM_EIO;
    unsigned char len8[8];
    int rc = MM_EFORMAT;
    char *buf = NULL;
    if (fread(len8, 1, 8, f) == 8) {
        uint64_t n = 0;
        for (int i = 7; i >= 0; i--)
            n = (n << 8) | len8[i];
        if (n > 0 && n < HEADER_MAX && (buf = malloc((size_t)n + 1)) &&
            fread(buf, 1, (size_t)n, f) == (size_t)n) {
            buf[n] = '\0';
            json_t *root = json_loads(buf, 0, NULL);
            if (root && json_is_object(root)) {
                const char *key;
                json_t *v;
                rc = 0;
                json_object_foreach(root, key, v) {
                    if (!strcmp(key, "__metadata__"))
                        continue;
                    const char *dt = json_string_value(json_object_get(v, "dtype"));
                    json_t *shape = json_object_get(v, "shape");
                    int fl = 0;
                    size_t es = dt ? file_elem_size(dt, &fl) : 0;
                    if (!es || !json_is_array(shape)) {
                        rc = MM_EFORMAT;
                        break;
                    }
                    uint64_t numel = 1;
                    size_t i;
                    json_t *d;
                    json_array_foreach(shape, i, d) numel *= (uint64_t)json_integer_value(d);
                    if (fl && int8 && int8_linear(key, shape))
                        *bytes += numel + 4 * (uint64_t)json_integer_value(json_array_get(shape, 0));
                    else
                        *bytes += numel * (fl ? float_size : es);
                }
            }
            json_decref(root);
        }
    }
    free(buf);
    fclose(f);
    return rc;
}

/* The .safetensors files of dir and of its direct subfolders. */
static int add_dir(const char *dir, int depth, size_t float_size, int int8, uint64_t *bytes,
                   int *files) {
    DIR *d = opendir(dir);
    if (!d)
        return MM_EIO;
    struct dirent *ent;
    int rc = 0;
    while (rc == 0 && (ent = readdir(d))) {
        if (ent->d_name[0] == '.')
            continue;
        char path[4096];
        if (snprintf(path, sizeof path, "%s/%s", dir, ent->d_name) >= (int)sizeof path)
            continue;
        struct stat sb;
        if (stat(path, &sb) != 0)
            continue;
        size_t nl = strlen(ent->d_name);
        if (S_ISDIR(sb.st_mode) && depth == 0)
            rc = add_dir(path, 1, float_size, int8, bytes, files);
        else if (S_ISREG(sb.st_mode) && nl > 12 && !strcmp(ent->d_name + nl - 12, ".safetensors")) {
            rc = add_file(path, float_size, int8, bytes);
            (*files)++;
        }
    }
    closedir(d);
    return rc;
}

static long cfg_int(json_t *cfg, const char *a, const char *b, long def) {
    json_t *v = json_object_get(cfg, a);
    if (!json_is_integer(v) && b)
        v = json_object_get(cfg, b);
    return json_is_integer(v) && json_integer_value(v) > 0 ? (long)json_integer_value(v) : def;
}

static size_t opt_size_of(const char *options_json, const char *key, size_t def) {
    json_t *o = json_loads(options_json ? options_json : "{}", 0, NULL);
    json_t *v = json_object_get(o, key);
    size_t r = json_is_integer(v) && json_integer_value(v) > 0 ? (size_t)json_integer_value(v) : def;
    json_decref(o);
    return r;
}

int mm_native_estimate(const mm_model_spec *spec, const mm_device *dev, mm_footprint *fp,
                       char *err, size_t errlen) {
    char dir[4096];
    int rc = mm_native_resolve_model(spec, dir, sizeof dir, err, errlen);
    if (rc < 0)
        return rc;
    int gen = spec->task_type == MM_TASK_TEXT_GENERATION;
    /* The dtype as the backend will read it: the engine's, then the task's. */
    char dt[32] = "auto";
    const char *layers[2] = {spec->options_json, spec->model_options_json};
    for (int i = 0; i < 2; i++) {
        json_t *o = json_loads(layers[i] ? layers[i] : "{}", 0, NULL);
        const char *v = json_string_value(json_object_get(o, "dtype"));
        if (v)
            snprintf(dt, sizeof dt, "%s", v);
        json_decref(o);
    }
    int half = !strcmp(dt, "float16") || !strcmp(dt, "bfloat16") || !strcmp(dt, "bf16");
    size_t fsize = half ? 2 : 4;
    if (dev->is_gpu && !strcmp(dt, "auto"))
        fsize = gen ? 4 : 2;
    int int8 = !dev->is_gpu && !gen && !strcmp(dt, "int8");
    uint64_t weights = 0;
    int files = 0;
    rc = add_dir(dir, 0, fsize, int8, &weights, &files);
    if (rc < 0 || files == 0) {
        snprintf(err, errlen, "no readable .safetensors header in %.300s", dir);
        return rc < 0 ? rc : MM_EFORMAT;
    }
    char cpath[4200];
    snprintf(cpath, sizeof cpath, "%s/config.json", dir);
    json_t *cfg = json_load_file(cpath, 0, NULL);
    long hidden = cfg_int(cfg, "hidden_size", "d_model", 768);
    long inter = cfg_int(cfg, "intermediate_size", "d_ff", 4 * hidden);
    long heads = cfg_int(cfg, "num_attention_heads", "num_heads", 12);
    long maxpos = cfg_int(cfg, "max_position_embeddings", NULL, 512);
    long dec_layers = cfg_int(cfg, "num_decoder_layers", "decoder_layers",
                              cfg_int(cfg, "num_layers", NULL, 6));
    json_decref(cfg);
    uint64_t T = opt_size_of(spec->options_json, "micro_batch_tokens", dev->is_gpu ? 16384 : 2048);
    uint64_t L = (uint64_t)maxpos < T ? (uint64_t)maxpos : T;
    uint64_t b = fsize;
    uint64_t one = T * (uint64_t)(9 * hidden + 2 * inter) * b + 2 * T * L * (uint64_t)heads * b;
    uint64_t concurrent = dev->is_gpu ? 1 : (uint64_t)(dev->cpu_threads > 0 ? dev->cpu_threads : 1);
    uint64_t act = one * concurrent;
    if (gen)
        act += 64ULL * (uint64_t)dec_layers * 2 * (512 + L) * (uint64_t)hidden * b;
    fp->weights_bytes = weights;
    fp->activation_bytes = act;
    return 0;
}
