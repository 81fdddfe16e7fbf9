/* mm_torch_gen.h: the C ABI of libmm_torch.so for text generation with
 * encoder-decoder models (T5 v1.0 / v1.1 / FLAN-T5 / mT5, BART) and
 * decoder-only models (Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma2, Phi-3:
 * gen_causal.cpp).
 *
 * Decoder-only models differ where transformers does: an input is the
 * prompt the model continues, lengths (max_length, min_length) count the
 * prompt, and a sequence of the result holds the new tokens only (EOS
 * included).  Beam search is not offered for them (num_beams > 1 fails with
 * MM_EINVAL).
 *
 * Plain C, includable from C11.  Like mm_torch.h, the native backend dlopens
 * libmm_torch.so and resolves these symbols by name; the mm_torch_gen_*_fn
 * typedefs at the end are what it casts dlsym() results to.
 *
 * What it computes: for each input (token ids of one prompt, already
 * tokenized with the model's tokenizer, special tokens included) the ids
 * that transformers' `model.generate(input_ids, **kwargs)` returns for the
 * same settings, token for token: greedy, beam search (transformers' scoring
 * and stopping rules) and sampling (with a seed, the same random stream as
 * `torch.manual_seed(seed); model.generate(one_prompt, do_sample=True, ...)`).
 *
 * Errors: every function returns 0 or a negative MM_E* code (csrc/base/
 * mm_err.h) and writes a message into err (errlen bytes, NUL-terminated, may
 * be NULL).  No C++ exception ever crosses this boundary.  MM_EARCH names an
 * architecture this library does not generate with (e.g. an encoder-only
 * BERT directory); MM_EINVAL names the offending parameter or input.
 *
 * Threads: a loaded model is immutable; mm_torch_gen_run may be called on the
 * same handle from several threads at once (each call keeps its own state).
 * Load and free may be called from any thread; they block.
 */
#ifndef MM_TORCH_GEN_H
#define MM_TORCH_GEN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Bumped whenever a struct or signature below changes. */
#define MM_TORCH_GEN_ABI_VERSION 3

typedef struct mm_torch_gen mm_torch_gen_t;

typedef struct mm_torch_gen_load_params {
    const char *device; /* "cpu" (default), "cuda", "cuda:N" */
    const char *dtype;  /* "auto" (default: float32 on CPU; on CUDA bfloat16 for
                           T5, float16 for BART), "float32", "float16", "bfloat16" */
    int num_threads;    /* >0: at::set_num_threads for the calling thread; 0: as is */
} mm_torch_gen_load_params;

/* What a loaded model is.  Strings are owned by the handle and valid until
 * mm_torch_gen_free. */
typedef struct mm_torch_gen_info {
    const char *arch;               /* "t5", "bart", "llama", "mistral", "qwen2", "qwen3",
                                       "gemma", "gemma2", "phi3" */
    const char *device;             /* "cpu", "cuda:0" */
    const char *dtype;              /* "float32", "float16", "bfloat16" */
    int64_t vocab_size;             /* width of the logits (config vocab, >= tokenizer) */
    int64_t decoder_start_token_id; /* first decoder token (T5: pad 0, BART: </s> 2) */
    int64_t eos_token_id;           /* first EOS id (generation_config, then config) */
    int64_t pad_token_id;
    int64_t bos_token_id;           /* -1 when none */
    int64_t max_input_length;       /* truncate inputs here: BART max_position_embeddings,
                                       T5 n_positions (512 when absent) */
    int64_t hard_input_limit;       /* inputs longer fail (position table); 0 = none */
    int64_t max_length_limit;       /* largest accepted max_length (decoder start
                                       included) */
    uint64_t memory_bytes;          /* weights held on the device */
} mm_torch_gen_info;

/* early_stopping values (transformers: True, False, "never"). */
enum { MM_GEN_EARLY_FALSE = 0, MM_GEN_EARLY_TRUE = 1, MM_GEN_EARLY_NEVER = 2 };

/* Decoding settings.  Fill with mm_torch_gen_default_params (the model's
 * generation_config.json, then config.json, then transformers' defaults),
 * then override what the task asked for.  Lengths count decoder tokens
 * *including* the decoder start token, as transformers does. */
typedef struct mm_torch_gen_params {
    int64_t max_length;     /* default: model's, else 20 + 1 capped at
                               max_position_embeddings (transformers' rule) */
    int64_t max_new_tokens; /* -1: unset; >= 0 overrides max_length (= n + 1) */
    int64_t min_length;     /* EOS masked while the sequence is shorter */
    int64_t min_new_tokens; /* -1: unset */
    int64_t num_beams;      /* 1: greedy or sampling */
    double length_penalty;  /* beam score = logprob sum / generated_len ** this */
    int early_stopping;     /* MM_GEN_EARLY_* */
    int64_t no_repeat_ngram_size;  /* 0: off */
    double repetition_penalty;     /* 1.0: off */
    int64_t forced_bos_token_id;   /* -1: none */
    int64_t forced_eos_token_id;   /* -1: none */
    int do_sample;
    double temperature;
    int64_t top_k;          /* 0: off (default 50, applied when sampling) */
    double top_p;           /* 1.0: off */
    int64_t seed;           /* sampling seed (each input of a call draws from its own
                               generator seeded with it); -1: nondeterministic */
    int64_t num_return_sequences;
    double min_p;           /* 0: off; sampling keeps tokens with p >= min_p * max p
                               (decoder-only models) */
} mm_torch_gen_params;

/* Result of one run: n_inputs * num_return_sequences sequences, input i's
 * r-th sequence at index i * num_return_sequences + r (best first for beam
 * search).  A sequence holds the generated ids after the decoder start
 * token, forced BOS and the final EOS included, no padding (i.e. the row
 * transformers returns, minus its first token, minus trailing padding). */
typedef struct mm_torch_gen_result {
    size_t n_sequences;
    size_t num_return_sequences;
    const int64_t *ids;     /* all sequences back to back */
    const size_t *offsets;  /* n_sequences + 1 entries: sequence k is
                               ids[offsets[k] .. offsets[k+1]) */
    const float *scores;    /* per sequence: the beam score (sum of log-probs /
                               length ** length_penalty, transformers'
                               sequences_scores); 0 for greedy / sampling */
    const uint8_t *finish;  /* per sequence: why it ended (MM_GEN_FINISH_*) */
} mm_torch_gen_result;

/* Why a sequence ended. */
enum { MM_GEN_FINISH_LENGTH = 0, MM_GEN_FINISH_EOS = 1, MM_GEN_FINISH_STOPPED = 2 };

/* Called after every token a greedy or sampled sequence gains (beam search:
 * never): sequence `seq` (numbered as in the result: input * nrs + r) now
 * holds ids[0 .. n) after the prompt / decoder start; `done` is 1 when
 * that token ended it (EOS or the length limit).  Returning nonzero stops
 * the sequence there (finish MM_GEN_FINISH_STOPPED: a stop string, a
 * cancelled request), and its memory is freed at once.  May be called
 * from several threads at once, for different sequences; never twice at
 * once for one sequence. */
typedef int (*mm_torch_gen_token_cb)(void *user, size_t seq, const int64_t *ids, size_t n,
                                     int done);

int mm_torch_gen_abi_version(void);

void mm_torch_gen_default_load_params(mm_torch_gen_load_params *p);

/* Loads the model in dir (config.json, generation_config.json when present,
 * model.safetensors or its shards).  On success *out is a new handle.
 * Errors: MM_EARCH (not T5 / BART; named), MM_ELOAD (missing file or
 * tensor, named), MM_EFORMAT, MM_EPARSE, MM_EDEVICE, MM_EUNSUPPORTED (a
 * setting of a supported family that is not implemented; named), MM_ENOMEM. */
int mm_torch_gen_load(const char *dir, const mm_torch_gen_load_params *p,
                      mm_torch_gen_t **out, char *err, size_t errlen);

/* Fills *info; 0 or MM_EINVAL. */
int mm_torch_gen_info_get(const mm_torch_gen_t *h, mm_torch_gen_info *info);

/* The model's defaults (h may be NULL: transformers' global defaults). */
void mm_torch_gen_default_params(const mm_torch_gen_t *h, mm_torch_gen_params *p);

/* Checks params against the model without running anything; 0 or MM_EINVAL
 * naming the parameter(s). */
int mm_torch_gen_check_params(const mm_torch_gen_t *h, const mm_torch_gen_params *p,
                              char *err, size_t errlen);

/* Generates for n_inputs prompts at once: input i is ids[i][0 .. lens[i]).
 * All inputs share one encoder pass and one decoder step per token; a
 * finished input stops costing compute.  Each input's settings, logits
 * processors, beam bookkeeping and random stream are its own, so results do
 * not depend on which other inputs share the call, except through the
 * floating-point effect of batch shape on the matrix / attention kernels
 * (last-bit changes of a logit, which can flip a hypothesis only where two
 * candidates tie to ~1e-6).  A lone request is bit-identical to a lone
 * transformers call on the same device and dtype.  On success *out is a new result (free with
 * mm_torch_gen_result_free).  Blocks; any thread.  Errors: MM_EINVAL (bad
 * params, empty input, id out of range, input over hard_input_limit),
 * MM_ENOMEM, MM_EINTERNAL. */
int mm_torch_gen_run(mm_torch_gen_t *h, const int64_t *const *ids, const size_t *lens,
                     size_t n_inputs, const mm_torch_gen_params *p,
                     mm_torch_gen_result **out, char *err, size_t errlen);

/* mm_torch_gen_run with a token callback (cb may be NULL). */
int mm_torch_gen_run_cb(mm_torch_gen_t *h, const int64_t *const *ids, const size_t *lens,
                        size_t n_inputs, const mm_torch_gen_params *p, mm_torch_gen_token_cb cb,
                        void *user, mm_torch_gen_result **out, char *err, size_t errlen);

void mm_torch_gen_result_free(mm_torch_gen_result *r);

/* Drops the handle and its weights.  NULL is a no-op.  Must not run
 * concurrently with a run on h. */
void mm_torch_gen_free(mm_torch_gen_t *h);

/* ---- continuous batching (decoder-only models) ----
 *
 * A batch is a running set of requests, one prompt each, that join and
 * leave between rounds: mm_torch_gen_batch_step runs one decoder step for
 * every running sequence, prefills waiting requests in arrival order until
 * max_prefill_tokens prompt tokens are spent (at least one request; a
 * prompt is never split, so its prefill is the one pass a lone request
 * gets), then picks each request's next tokens with its own settings and
 * random stream.  A request's tokens do not depend on the other requests
 * (on the CPU in float32 bit for bit; elsewhere up to the batch-shape
 * effects mm_torch_gen_run describes).  Its token callback gets seq = its
 * return-sequence index.  A finished request's id is listed by the round
 * that finished it; take its result (one input's sequences, as
 * mm_torch_gen_run) with mm_torch_gen_batch_result.
 *
 * KV cache: sequences cache in blocks of block_positions positions (all
 * layers, keys and values).  A model's budget (mm_torch_gen_kv_budget,
 * shared by every handle and batch of that model) bounds the blocks all
 * its requests reserve; a request reserves what its prompt plus
 * max_new_tokens can fill (times num_return_sequences) when added and
 * gives it back when it finishes or is dropped.  Not thread-safe per batch:
 * one thread drives a batch. */
typedef struct mm_torch_gen_batch mm_torch_gen_batch_t;

typedef struct mm_torch_gen_kv {
    int64_t block_positions; /* positions a block holds */
    uint64_t block_bytes;    /* bytes of one block */
    int64_t total_blocks;    /* the budget; 0: unlimited */
    int64_t used_blocks;     /* reserved by running or waiting requests */
} mm_torch_gen_kv;

/* Sets the model's KV budget in bytes (0: unlimited); MM_EINVAL for an
 * encoder-decoder handle. */
int mm_torch_gen_kv_budget(mm_torch_gen_t *h, uint64_t budget_bytes);
int mm_torch_gen_kv_get(const mm_torch_gen_t *h, mm_torch_gen_kv *kv);

int mm_torch_gen_batch_new(mm_torch_gen_t *h, mm_torch_gen_batch_t **out, char *err,
                           size_t errlen);
/* Adds a request (token ids of one prompt) with its settings; *req = its id.
 * MM_EBUSY: its KV blocks are not free now (add it again later);
 * MM_ENOSPACE: it needs more blocks than the whole budget (the message
 * names the numbers); MM_EINVAL: bad params or input (named). */
int mm_torch_gen_batch_add(mm_torch_gen_batch_t *b, const int64_t *ids, size_t len,
                           const mm_torch_gen_params *p, mm_torch_gen_token_cb cb, void *user,
                           uint64_t *req, char *err, size_t errlen);
/* One round (see above); the ids of requests finished (all of them, up to
 * cap) go to done[0 .. *n_done).  On an error every request of the batch
 * is lost: drop them. */
int mm_torch_gen_batch_step(mm_torch_gen_batch_t *b, int64_t max_prefill_tokens, uint64_t *done,
                            size_t cap, size_t *n_done, char *err, size_t errlen);
/* The result of finished request req (freed with mm_torch_gen_result_free);
 * the request leaves the batch and its KV blocks go back. */
int mm_torch_gen_batch_result(mm_torch_gen_batch_t *b, uint64_t req, mm_torch_gen_result **out,
                              char *err, size_t errlen);
/* Removes request req at once (cancelled): its caches and blocks go back. */
void mm_torch_gen_batch_drop(mm_torch_gen_batch_t *b, uint64_t req);
/* Requests in the batch (waiting for their prefill, running or finished). */
size_t mm_torch_gen_batch_size(const mm_torch_gen_batch_t *b);
void mm_torch_gen_batch_free(mm_torch_gen_batch_t *b);

typedef int (*mm_torch_gen_abi_version_fn)(void);
typedef void (*mm_torch_gen_default_load_params_fn)(mm_torch_gen_load_params *);
typedef int (*mm_torch_gen_load_fn)(const char *, const mm_torch_gen_load_params *,
                                    mm_torch_gen_t **, char *, size_t);
typedef int (*mm_torch_gen_info_get_fn)(const mm_torch_gen_t *, mm_torch_gen_info *);
typedef void (*mm_torch_gen_default_params_fn)(const mm_torch_gen_t *, mm_torch_gen_params *);
typedef int (*mm_torch_gen_check_params_fn)(const mm_torch_gen_t *, const mm_torch_gen_params *,
                                            char *, size_t);
typedef int (*mm_torch_gen_run_fn)(mm_torch_gen_t *, const int64_t *const *, const size_t *,
                                   size_t, const mm_torch_gen_params *, mm_torch_gen_result **,
                                   char *, size_t);
typedef int (*mm_torch_gen_run_cb_fn)(mm_torch_gen_t *, const int64_t *const *, const size_t *,
                                      size_t, const mm_torch_gen_params *, mm_torch_gen_token_cb,
                                      void *, mm_torch_gen_result **, char *, size_t);
typedef void (*mm_torch_gen_result_free_fn)(mm_torch_gen_result *);
typedef void (*mm_torch_gen_free_fn)(mm_torch_gen_t *);
typedef int (*mm_torch_gen_kv_budget_fn)(mm_torch_gen_t *, uint64_t);
typedef int (*mm_torch_gen_kv_get_fn)(const mm_torch_gen_t *, mm_torch_gen_kv *);
typedef int (*mm_torch_gen_batch_new_fn)(mm_torch_gen_t *, mm_torch_gen_batch_t **, char *,
                                         size_t);
typedef int (*mm_torch_gen_batch_add_fn)(mm_torch_gen_batch_t *, const int64_t *, size_t,
                                         const mm_torch_gen_params *, mm_torch_gen_token_cb,
                                         void *, uint64_t *, char *, size_t);
typedef int (*mm_torch_gen_batch_step_fn)(mm_torch_gen_batch_t *, int64_t, uint64_t *, size_t,
                                          size_t *, char *, size_t);
typedef int (*mm_torch_gen_batch_result_fn)(mm_torch_gen_batch_t *, uint64_t,
                                            mm_torch_gen_result **, char *, size_t);
typedef void (*mm_torch_gen_batch_drop_fn)(mm_torch_gen_batch_t *, uint64_t);
typedef size_t (*mm_torch_gen_batch_size_fn)(const mm_torch_gen_batch_t *);
typedef void (*mm_torch_gen_batch_free_fn)(mm_torch_gen_batch_t *);

#ifdef __cplusplus
}
#endif

#endif
