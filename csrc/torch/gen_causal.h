/* gen_causal.h: the decoder-only language models behind mm_torch_gen
 * (Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma2, Phi-3).
 *
 * One graph with the family's switches read from config.json (see
 * gen_causal.cpp).  A CausalLM is immutable once loaded; all per-request
 * state lives in a CausalSeq the decoding loop owns, so one model may serve
 * any number of threads at once.
 *
 * The cache is per sequence, not per batch: each sequence holds, per layer,
 * its own keys and values [kv_heads, cap, head_dim], grown in blocks of
 * kBlock positions.  Sequences of any lengths then share one decoder step
 * (each row attends over its own positions, no padding), a sequence joins
 * or leaves a running batch without touching the others, and a finished
 * sequence's memory goes back at once.
 */
#ifndef MMT_GEN_CAUSAL_H
#define MMT_GEN_CAUSAL_H

#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <vector>

#include "mmt_common.h"

namespace mmt {
struct Weights;

namespace gen {

/* Positions a sequence's cache grows by. */
constexpr int64_t kBlock = 64;

struct CausalSeq {
    int64_t len = 0;                 /* positions cached */
    int64_t limit = 0;               /* > 0: the cache never grows past this many positions
                                        rounded up to kBlock (its KV-block reservation) */
    std::vector<at::Tensor> k, v;    /* per layer [kv_heads, cap, head_dim] */
    int64_t cap() const { return k.empty() ? 0 : k[0].size(1); }
    uint64_t bytes() const;          /* memory held by the cache */
};

struct CausalInfo {
    std::string arch;        /* "llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3" */
    int64_t vocab_size = 0;  /* width of the logits */
    int64_t hidden = 0, layers = 0, heads = 0, kv_heads = 0, head_dim = 0;
    int64_t max_positions = 0; /* max_position_embeddings */
    int64_t context = 0;       /* positions a sequence may use: max_positions, times the
                                  factor of linear / dynamic RoPE scaling (vLLM's rule) */
};

class CausalLM {
  public:
    virtual ~CausalLM() = default;
    const CausalInfo &info() const { return info_; }
    at::Device device() const { return device_; }
    at::ScalarType dtype() const { return dtype_; }

    /* Runs ids[0 .. n) through an empty s (positions 0 .. n-1), filling its
     * cache; returns the float32 logits of the last position, [1, vocab]. */
    virtual at::Tensor prefill(CausalSeq &s, const int64_t *ids, int64_t n) const = 0;
    /* One token per sequence: seqs[i] is fed tokens[i] at position
     * seqs[i]->len, which its cache then holds.  Returns float32 logits
     * [rows, vocab]; a row's logits do not depend on the other rows. */
    virtual at::Tensor step(const std::vector<CausalSeq *> &seqs,
                            const std::vector<int64_t> &tokens) const = 0;
    /* dtype "int8" (CPU): the projections and the LM head become int8
     * (mmt_qweight.h).  Called once after loading; returns the bytes freed. */
    virtual uint64_t quantize_int8() = 0;
    /* A copy of src's cache (num_return_sequences rows of one prompt). */
    void fork(const CausalSeq &src, CausalSeq &dst) const;

  protected:
    CausalInfo info_;
    at::Device device_{at::kCPU};
    at::ScalarType dtype_ = at::kFloat;
};

/* config.json's architectures[0], or "" when it has none. */
std::string first_architecture(const json_t *cfg);

/* True when config.json names a decoder-only family this file runs; sets
 * *arch.  Throws MM_EARCH naming the architecture when it is a causal LM
 * of another family (a "...ForCausalLM" we do not implement). */
bool causal_arch(const json_t *cfg, std::string *arch);

/* Builds the model from w.  Throws mmt::Error: MM_EUNSUPPORTED for a
 * setting not implemented (named: a rope_scaling type, ...), MM_ELOAD for a
 * missing tensor. */
std::unique_ptr<CausalLM> make_causal(const std::string &arch, const json_t *cfg,
                                      const Weights &w, at::Device dev, at::ScalarType dtype);

} // namespace gen
} // namespace mmt

#endif
