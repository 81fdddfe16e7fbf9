/* gen_model.h: the encoder-decoder models behind mm_torch_gen (T5, BART).
 *
 * A Seq2Seq model is immutable once loaded: weights plus the few config
 * numbers its forward needs.  All per-request state lives in a DecState the
 * decoding loop owns, so one model may serve any number of threads at once.
 *
 * The decoder state is laid out for batched decoding of many requests that
 * advance in lockstep (every row is at the same decoder position):
 *   - rows: the hypotheses being extended, grouped `group` at a time; all
 *     rows of a group read the same encoder entry (the beams of one request,
 *     or a single greedy / sampled row);
 *   - self-attention keys and values per layer, [rows, heads, cap, head_dim],
 *     filled up to `len` positions (a preallocated cache, no concatenation);
 *   - cross-attention keys and values per layer, [rows, heads, src, hd],
 *     computed once from the encoder output and copied to each row of the
 *     group (transformers' layout: the kernels then do the arithmetic a lone
 *     transformers call does, bit for bit).  Rows of a group share one
 *     source, so beam reordering never touches them.
 * Reordering rows (beam search) and dropping finished groups are index
 * selects on these tensors (reorder_rows / keep_groups below), except on
 * the CPU in float32, where a slot table says which cache row holds each
 * row's position (DecState::slot): reordering beams rewrites the table and
 * copies no keys or values.
 */
#ifndef MMT_GEN_MODEL_H
#define MMT_GEN_MODEL_H

#include <ATen/ATen.h>

#include <memory>
#include <string>
#include <vector>

#include "mmt_common.h"

namespace mmt {
struct Weights;

namespace gen {

/* What the decoding loop needs to know about a loaded model. */
struct ModelInfo {
    std::string arch;          /* "t5", "bart" */
    int64_t vocab_size = 0;    /* width of the logits */
    int64_t d_model = 0;
    int64_t dec_layers = 0;
    int64_t heads = 0;
    int64_t head_dim = 0;
    int64_t max_source_positions = 0; /* hard input limit; 0 = none (T5) */
    int64_t max_target_positions = 0; /* hard decoder limit; 0 = none (T5) */
    int64_t n_positions = 0;   /* advisory input limit (T5 n_positions) */
};

struct DecState {
    int64_t group = 1; /* rows per encoder entry */
    int64_t len = 0;   /* decoder positions already cached */
    int64_t cap = 0;   /* positions allocated in the self-attention cache */
    std::vector<at::Tensor> self_k, self_v;   /* per layer [rows, H, cap, hd] */
    /* per layer [rows / cross_share, H, S, hd]: on the CPU in float32 the
     * rows of a group (a request's beams) share one copy, which
     * mmt_attend_one reads for each of them; elsewhere one copy per row,
     * the shape sdpa takes */
    std::vector<at::Tensor> cross_k, cross_v;
    int64_t cross_share = 1;
    int64_t n_groups = 0;
    /* Added to cross-attention scores, per cross entry or broadcast ([1 or
     * rows / cross_share, ...]); a bool mask, a float bias, or undefined (no
     * padding, no bias). */
    at::Tensor cross_bias;
    /* CPU float32 (mmt_attend_slots reads the caches): row r's position s
     * lives in cache row slot[r * slot_cap + s], s < len.  A step writes
     * each row's new position into its own cache row; reorder_rows rewrites
     * only this table.  Elsewhere `indirect` is false and rows own their
     * cache rows. */
    bool indirect = false;
    int64_t slot_cap = 0;
    std::vector<int32_t> slot;
    int64_t rows() const { return self_k.empty() ? 0 : self_k[0].size(0); }
    int64_t groups() const { return n_groups; }
};

/* Row i continues row idx[i] of the self-attention cache: beam reordering
 * within groups. */
void reorder_rows(DecState &st, const std::vector<int64_t> &idx);
/* Keeps groups `gidx` (host list, ascending) and their rows. */
void keep_groups(DecState &st, const std::vector<int64_t> &gidx);
/* From one row per group to `group` copies of it (st.group was 1, and the
 * cross-attention entries become shared by the copies). */
void expand_groups(DecState &st, int64_t group);

class Seq2Seq {
  public:
    virtual ~Seq2Seq() = default;
    const ModelInfo &info() const { return info_; }
    at::Device device() const { return device_; }
    at::ScalarType dtype() const { return dtype_; }

    /* ids: [B, S] int64, mask: [B, S] bool (true = real token), on the
     * model's device.  `padded` says whether any mask entry is false.
     * Returns the encoder's last hidden state [B, S, d_model]. */
    virtual at::Tensor encode(const at::Tensor &ids, const at::Tensor &mask,
                              bool padded) const = 0;

    /* Fills st's cross-attention keys and values from enc [G, S, D] (one
     * entry per group), allocates an empty self-attention cache of
     * cap positions for G * group rows and sets st.len = 0. */
    void start(DecState &st, const at::Tensor &enc, const at::Tensor &mask, bool padded,
               int64_t group, int64_t cap) const;

    /* Feeds one token per row (tokens: [rows] int64 on the device) at
     * position st.len, appends to the cache, returns float32 logits
     * [rows, vocab]. */
    virtual at::Tensor step(DecState &st, const at::Tensor &tokens) const = 0;

    /* dtype "int8" (CPU): replaces the linear layers' float weights (and the
     * LM head's) by int8 ones (mmt_qweight.h).  Called once, right after
     * loading, before any other thread sees the model.  Returns the bytes
     * freed. */
    virtual uint64_t quantize_int8() = 0;

  protected:
    /* The cross-attention bias/mask for an encoder mask [G, S]. */
    virtual at::Tensor cross_bias(const at::Tensor &mask, bool padded) const = 0;
    /* Cross-attention K and V of decoder layer l for enc. */
    virtual void cross_kv(int64_t l, const at::Tensor &enc, at::Tensor *k,
                          at::Tensor *v) const = 0;
    /* Writes k, v ([rows, H, 1, hd]) at position st.len of layer l's cache
     * and returns the filled views [rows, H, len+1, hd]. */
    static void cache_append(DecState &st, int64_t l, const at::Tensor &k, const at::Tensor &v,
                             at::Tensor *kk, at::Tensor *vv);
    /* Attention of each row over its encoder entry.  q: [rows, H, 1, hd];
     * bias is added to the scores (may be undefined); scale as sdpa.
     * Returns [rows, H * hd]. */
    static at::Tensor cross_attend(const DecState &st, int64_t l, const at::Tensor &q,
                                   const at::Tensor &bias, double scale);
    /* scaled_dot_product_attention(q, k, v, bias, scale) for q [rows, H, 1,
     * hd]: on the CPU in float32 through mmt_attend_one, whose result for a
     * row does not depend on the other rows; otherwise ATen's.  bias: float
     * added to the scores or bool keep-mask, [1 or rows, 1 or H, 1, len], or
     * undefined.  share: consecutive rows of q that read one entry of k, v
     * and a per-row bias (k, v: [rows / share, ...]).  Returns [rows, H, 1,
     * hd]. */
    static at::Tensor attend(const at::Tensor &q, const at::Tensor &k, const at::Tensor &v,
                             const at::Tensor &bias, double scale, int64_t share = 1,
                             const DecState *slots = nullptr);
    /* attend() over the self-attention cache views kk, vv of cache_append,
     * through st's slot table where it has one. */
    static at::Tensor self_attend(const DecState &st, const at::Tensor &q, const at::Tensor &kk,
                                  const at::Tensor &vv, const at::Tensor &bias, double scale) {
        return attend(q, kk, vv, bias, scale, 1, st.indirect ? &st : nullptr);
    }

    ModelInfo info_;
    at::Device device_{at::kCPU};
    at::ScalarType dtype_ = at::kFloat;
};

/* Builds the model named by cfg (config.json) from w.  Throws mmt::Error:
 * MM_EARCH for an encoder-decoder this file does not implement,
 * MM_EUNSUPPORTED for an unsupported setting (named), MM_ELOAD for a
 * missing tensor. */
std::unique_ptr<Seq2Seq> make_t5(const json_t *cfg, const Weights &w, at::Device dev,
                                 at::ScalarType dtype);
std::unique_ptr<Seq2Seq> make_bart(const json_t *cfg, const Weights &w, at::Device dev,
                                   at::ScalarType dtype);

/* The activation named in a Hugging Face config ("relu", "gelu",
 * "gelu_new", ...), applied to x.  Throws MM_EUNSUPPORTED for others. */
enum class Act { Relu, Gelu, GeluNew, GeluTanh, GeluFast, Silu, QuickGelu, Tanh };
Act parse_act(const std::string &name);
at::Tensor apply_act(Act a, const at::Tensor &x);

} // namespace gen
} // namespace mmt

#endif
