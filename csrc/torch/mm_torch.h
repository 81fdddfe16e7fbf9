/* mm_torch.h: the C ABI of libmm_torch.so, the libtorch shim (embeddings).
 *
 * Plain C, includable from C11.  The native backend (csrc/native) never
 * links this library: it dlopens libmm_torch.so on first use of a real model
 * and resolves these symbols by name, so importing pymodelmgr never loads
 * libtorch.  The typedefs below (mm_torch_*_fn) are what it casts dlsym()
 * results to.
 *
 * Errors: every function returns 0 or a negative MM_E* code (csrc/base/
 * mm_err.h) and writes a message into err (errlen bytes, NUL-terminated,
 * may be NULL).  No C++ exception ever crosses this boundary.
 *
 * Threads: an embedder handle may be used by one thread at a time for
 * mm_torch_embed (the engine gives each worker its own handle); handles of
 * the same model share one read-only copy of the weights, reference-counted
 * by (directory, device, dtype), and may run concurrently.  Load and free
 * may be called from any thread; they block.
 */
#ifndef MM_TORCH_H
#define MM_TORCH_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped whenever a struct or signature below changes. */
#define MM_TORCH_ABI_VERSION 1

typedef struct mm_torch_embedder mm_torch_embedder_t;

typedef struct mm_torch_embedder_params {
    const char *device; /* "cpu" (default), "cuda", "cuda:N" */
    const char *dtype;  /* "auto" (default: float32 on CPU, float16 on CUDA),
                           "float32", "float16", "bfloat16" */
    int num_threads;    /* >0: intra-op threads for the calling thread's
                           forwards (at::set_num_threads); 0: leave as is */
} mm_torch_embedder_params;

/* What a loaded embedder is.  Strings are owned by the handle and valid
 * until mm_torch_embedder_free. */
typedef struct mm_torch_embedder_info {
    size_t dim;            /* output vector length (after Pooling and Dense) */
    size_t hidden_size;    /* transformer width */
    size_t max_seq_length; /* truncate inputs (incl. special tokens) here */
    size_t max_positions;  /* hard limit of the position table (after offset) */
    int normalize;         /* 1: the pipeline ends with Normalize */
    int do_lower_case;     /* sentence_bert_config.json do_lower_case */
    int include_prompt;    /* 0: Pooling drops prompt tokens */
    int uses_type_ids;     /* the model has a token-type table (BERT) */
    int64_t pad_token_id;  /* what to pad input ids with */
    const char *arch;      /* "bert", "roberta", "xlm-roberta", "distilbert", "mpnet" */
    const char *pooling;   /* e.g. "mean", "cls", "mean+max" */
    const char *device;    /* "cpu", "cuda:0" */
    const char *dtype;     /* "float32", "float16", "bfloat16" */
    const char *prompts_json;        /* {"query": "query: ", ...}; "{}" when none */
    const char *default_prompt_name; /* "" when none */
    uint64_t memory_bytes; /* weights held on the device; 0 on a handle that shares
                              the weights another handle loaded (counted once) */
} mm_torch_embedder_info;

/* ABI version of the library (MM_TORCH_ABI_VERSION it was built with). */
int mm_torch_abi_version(void);
/* The libtorch version string it was built against ("2.13.0"). */
const char *mm_torch_version(void);

void mm_torch_embedder_default_params(mm_torch_embedder_params *p);

/* Loads the sentence-transformers pipeline (or a plain Hugging Face encoder:
 * mean pooling) found in dir.  On success *out is a new handle.  Errors:
 * MM_ELOAD (missing file or tensor, named), MM_EARCH (architecture not one
 * of BERT, RoBERTa, XLM-RoBERTa, DistilBERT, MPNet; named), MM_EFORMAT,
 * MM_EPARSE, MM_EDEVICE (CUDA asked for but unavailable), MM_EUNSUPPORTED
 * (a sentence-transformers module we do not run; named), MM_ENOMEM. */
int mm_torch_embedder_load(const char *dir, const mm_torch_embedder_params *p,
                           mm_torch_embedder_t **out, char *err, size_t errlen);

/* Loads a BERT / RoBERTa / XLM-RoBERTa / DistilBERT ...ForSequenceClassification
 * model (config.json architectures) with its classification head: the same
 * handle as an embedder's, whose "vectors" (info.dim = num_labels) are the
 * head's logits of the first token, before any activation.  MM_EARCH for
 * another architecture or a model without such a head.  Optional: a backend
 * resolves it with dlsym (cross-encoders run elsewhere when it is missing). */
int mm_torch_classifier_load(const char *dir, const mm_torch_embedder_params *p,
                             mm_torch_embedder_t **out, char *err, size_t errlen);

/* Fills *info (pointers stay owned by h).  0 or MM_EINVAL. */
int mm_torch_embedder_info_get(const mm_torch_embedder_t *h, mm_torch_embedder_info *info);

/* Runs one padded batch.  ids / mask / type_ids are batch x seq_len,
 * row-major, right-padded (mask 1 for real tokens, 0 for padding);
 * type_ids may be NULL (zeros).  prompt_lens may be NULL; else the number
 * of leading prompt tokens per row, which Pooling skips when the model says
 * include_prompt=false.  normalize: -1 as the model says, 0 off, 1 on
 * (L2 at the end).  Writes batch x out_dim float32 to out; out_dim must equal
 * info.dim (MM_ENOBUFS otherwise).  Blocks; one thread per handle. */
int mm_torch_embed(mm_torch_embedder_t *h, const int64_t *ids, const int64_t *mask,
                   const int64_t *type_ids, size_t batch, size_t seq_len,
                   const int64_t *prompt_lens, int normalize, float *out, size_t out_dim,
                   char *err, size_t errlen);

/* One padded batch for mm_torch_embed_many (fields as mm_torch_embed's). */
typedef struct mm_torch_batch {
    const int64_t *ids, *mask, *type_ids, *prompt_lens;
    size_t batch, seq_len;
    float *out;
    size_t out_dim;
} mm_torch_batch;

/* Runs n batches as mm_torch_embed would, one after another, or on CPU with
 * more than one intra-op thread, concurrently: each thread runs whole
 * batches single-threaded (results as mm_torch_embed's to float rounding).
 * All batches are checked before any runs; on an error the outputs are
 * undefined.  Optional: a backend resolves it with dlsym and falls back to
 * mm_torch_embed when it is missing. */
int mm_torch_embed_many(mm_torch_embedder_t *h, const mm_torch_batch *batches, size_t n,
                        int normalize, char *err, size_t errlen);

/* Drops the handle; the weights go when the last handle of the model goes,
 * and on CUDA the caching allocator then returns its free blocks to the
 * driver.  NULL is a no-op.  Must not run concurrently with an embed on h. */
void mm_torch_embedder_free(mm_torch_embedder_t *h);

/* Intra-op threads for forwards run by the calling thread; 0 or MM_EINVAL. */
int mm_torch_set_num_threads(int n);

/* Bytes the device's caching allocator holds (CUDA); 0 on CPU or when the
 * device is unknown.  For tests and the GPU check. */
uint64_t mm_torch_device_memory_reserved(const char *device);

typedef int (*mm_torch_abi_version_fn)(void);
typedef void (*mm_torch_embedder_default_params_fn)(mm_torch_embedder_params *);
typedef int (*mm_torch_embedder_load_fn)(const char *, const mm_torch_embedder_params *,
                                         mm_torch_embedder_t **, char *, size_t);
typedef int (*mm_torch_embedder_info_get_fn)(const mm_torch_embedder_t *,
                                             mm_torch_embedder_info *);
typedef int (*mm_torch_embed_fn)(mm_torch_embedder_t *, const int64_t *, const int64_t *,
                                 const int64_t *, size_t, size_t, const int64_t *, int,
                                 float *, size_t, char *, size_t);
typedef int (*mm_torch_embed_many_fn)(mm_torch_embedder_t *, const mm_torch_batch *, size_t,
                                      int, char *, size_t);
typedef void (*mm_torch_embedder_free_fn)(mm_torch_embedder_t *);
typedef int (*mm_torch_set_num_threads_fn)(int);

#ifdef __cplusplus
}
#endif

#endif
