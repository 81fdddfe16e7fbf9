/* gen_decode.cpp: decoding for mm_torch_gen (greedy, beam search, sampling)
 * and its C ABI (mm_torch_gen.h).
 *
 * The contract is token-exact agreement with transformers' generate(), so
 * this file reproduces its semantics rather than a textbook decoder:
 *   - settings come from generation_config.json when the file exists, else
 *     from config.json (what transformers 5 does), then its global defaults;
 *     max_length defaults to 20 + 1 capped at max_position_embeddings;
 *   - lengths count the decoder start token; logits processors run in
 *     transformers' order (repetition penalty, no-repeat n-gram, min length,
 *     min new tokens, forced BOS, forced EOS, then temperature, top-k, top-p
 *     when sampling), on logits for greedy / sampling and on log-softmax for
 *     beam search;
 *   - beam search keeps (1 + n_eos) * num_beams candidates (at least 2x),
 *     only EOS among the top num_beams finishes a hypothesis, its score is
 *     sum_logprobs / (generated_len incl. EOS) ** length_penalty, and the
 *     stopping rules (early_stopping true / false / "never") are transformers'
 *     vectorised ones, including their float32 arithmetic (the -1e9 offsets
 *     and divisions happen in float, as in torch);
 *   - sampling draws with torch's own multinomial on a per-request CPU
 *     generator seeded like torch.manual_seed(seed), one call over the
 *     request's rows per step, so a seeded request reproduces a lone
 *     transformers call with the same seed.
 *
 * Batching: all inputs of a call share one encoder pass and one decoder step
 * per token.  Every row sits at the same decoder position, so the
 * self-attention cache needs no padding; a request whose search is over
 * (greedy: a row that emitted EOS) is dropped from the state at once.  Each
 * request's logits processors, beam bookkeeping and random stream are its
 * own, so results never depend on the other inputs of the call (up to the
 * floating-point effect of batch shape on matrix kernels).
 */
#include "mm_torch_gen.h"

#include "gen_causal.h"
#include "gen_model.h"
#include "mmt_attend.h"
#include "mmt_int8.h"
#include "mmt_registry.h"
#include "mmt_skinny.h"
#include "mmt_threads.h"
#include "mmt_topk.h"
#include "st_loader.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <c10/core/CachingDeviceAllocator.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <atomic>
#include <deque>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <set>

namespace mmt {
namespace gen {

/* ---- shared model pieces (declared in gen_model.h) ---- */

Act parse_act(const std::string &n) {
    if (n == "relu")
        return Act::Relu;
    if (n == "gelu")
        return Act::Gelu;
    if (n == "gelu_new")
        return Act::GeluNew;
    if (n == "gelu_pytorch_tanh")
        return Act::GeluTanh;
    if (n == "gelu_fast")
        return Act::GeluFast;
    if (n == "silu" || n == "swish")
        return Act::Silu;
    if (n == "quick_gelu")
        return Act::QuickGelu;
    if (n == "tanh")
        return Act::Tanh;
    fail(MM_EUNSUPPORTED, "activation function \"%s\" is not supported", n.c_str());
}

at::Tensor apply_act(Act a, const at::Tensor &x) {
    switch (a) {
    case Act::Relu: return at::relu(x);
    case Act::Gelu: return at::gelu(x);
    case Act::GeluTanh: return at::gelu(x, "tanh");
    case Act::GeluNew:
        return 0.5 * x * (1.0 + at::tanh(std::sqrt(2.0 / M_PI) * (x + 0.044715 * at::pow(x, 3.0))));
    case Act::GeluFast:
        return 0.5 * x * (1.0 + at::tanh(x * 0.7978845608 * (1.0 + 0.044715 * x * x)));
    case Act::Silu: return at::silu(x);
    case Act::QuickGelu: return x * at::sigmoid(1.702 * x);
    case Act::Tanh: return at::tanh(x);
    }
    return x;
}

namespace {
/* Rows rows[i] of cache c ([R, H, >= npos, hd] on the CPU in float32, last
 * dimension contiguous), position s < npos of each read from the cache row
 * st's slot table names, as a new contiguous cache of cap positions whose
 * rows own their positions (positions >= npos left unset). */
at::Tensor gather_slots(const at::Tensor &c, const DecState &st, const std::vector<int64_t> &rows,
                        int64_t npos, int64_t cap) {
    const int64_t H = c.size(1), hd = c.size(3), len = std::min(npos, c.size(2));
    TORCH_CHECK(c.stride(3) == 1 && c.scalar_type() == at::kFloat && c.device().is_cpu(),
                "gather_slots: a CPU float32 cache with contiguous heads");
    at::Tensor out = at::empty({(int64_t)rows.size(), H, cap, hd}, c.options());
    const float *src = c.data_ptr<float>();
    float *dst = out.data_ptr<float>();
    const int64_t r0 = c.stride(0), h0 = c.stride(1), p0 = c.stride(2);
    for (size_t i = 0; i < rows.size(); i++) {
        const int32_t *sl = st.slot.data() + rows[i] * st.slot_cap;
        for (int64_t h = 0; h < H; h++)
            for (int64_t p = 0; p < len; p++)
                memcpy(dst + (((int64_t)i * H + h) * cap + p) * hd, src + sl[p] * r0 + h * h0 + p * p0,
                       (size_t)hd * sizeof(float));
    }
    return out;
}

/* Every row owns its cache row again. */
void reset_slots(DecState &st, int64_t rows, int64_t cap) {
    st.slot_cap = cap;
    st.slot.resize((size_t)(rows * cap));
    for (int64_t r = 0; r < rows; r++)
        std::fill(st.slot.begin() + r * cap, st.slot.begin() + (r + 1) * cap, (int32_t)r);
}

/* The caches of rows rows[i] (in that order, repeats allowed), each owning
 * its cache row. */
void take_rows(DecState &st, const std::vector<int64_t> &rows) {
    if (st.indirect) {
        const int64_t cap = st.rows() > 0 ? st.self_k[0].size(2) : st.cap;
        for (size_t l = 0; l < st.self_k.size(); l++) {
            st.self_k[l] = gather_slots(st.self_k[l], st, rows, st.len, cap);
            st.self_v[l] = gather_slots(st.self_v[l], st, rows, st.len, cap);
        }
        reset_slots(st, (int64_t)rows.size(), std::max(cap, st.slot_cap));
        return;
    }
    at::Device dev = st.self_k.empty() ? at::Device(at::kCPU) : st.self_k[0].device();
    at::Tensor idx = at::tensor(rows, at::TensorOptions().dtype(at::kLong)).to(dev);
    for (size_t l = 0; l < st.self_k.size(); l++) {
        st.self_k[l] = st.self_k[l].index_select(0, idx);
        st.self_v[l] = st.self_v[l].index_select(0, idx);
    }
}
} // namespace

void reorder_rows(DecState &st, const std::vector<int64_t> &idx) {
    if (!st.indirect) {
        take_rows(st, idx);
        return;
    }
    /* row i's history is row idx[i]'s: its slots, not its keys and values */
    const int64_t cap = st.slot_cap, len = std::min(st.len, cap);
    std::vector<int32_t> ns(idx.size() * (size_t)cap);
    for (size_t i = 0; i < idx.size(); i++)
        std::copy(st.slot.begin() + idx[i] * cap, st.slot.begin() + idx[i] * cap + len,
                  ns.begin() + (int64_t)i * cap);
    st.slot.swap(ns);
}

void keep_groups(DecState &st, const std::vector<int64_t> &gidx) {
    if ((int64_t)gidx.size() == st.groups())
        return;
    at::Device dev = st.cross_k.empty() ? at::Device(at::kCPU) : st.cross_k[0].device();
    auto lopts = at::TensorOptions().dtype(at::kLong);
    std::vector<int64_t> rows;
    rows.reserve(gidx.size() * st.group);
    for (int64_t x : gidx)
        for (int64_t j = 0; j < st.group; j++)
            rows.push_back(x * st.group + j);
    /* cross entries: one per group when shared, else one per row */
    at::Tensor cr = at::tensor(st.cross_share > 1 ? gidx : rows, lopts).to(dev);
    const int64_t E = st.rows() / st.cross_share;
    for (size_t l = 0; l < st.cross_k.size(); l++) {
        st.cross_k[l] = st.cross_k[l].index_select(0, cr);
        st.cross_v[l] = st.cross_v[l].index_select(0, cr);
    }
    /* a per-entry bias follows its entries; a broadcast one ([1, ...]) stays */
    if (st.cross_bias.defined() && E > 1 && st.cross_bias.size(0) == E)
        st.cross_bias = st.cross_bias.index_select(0, cr);
    st.n_groups = (int64_t)gidx.size();
    take_rows(st, rows);
}

void expand_groups(DecState &st, int64_t group) {
    std::vector<int64_t> rows;
    for (int64_t r = 0; r < st.rows(); r++)
        for (int64_t j = 0; j < group; j++)
            rows.push_back(r);
    take_rows(st, rows); /* repeat_interleave(group, 0) */
    st.group = group;
    st.cross_share = group;
}

void Seq2Seq::start(DecState &st, const at::Tensor &enc, const at::Tensor &mask, bool padded,
                    int64_t group, int64_t cap) const {
    int64_t G = enc.size(0), L = info_.dec_layers;
    st.group = group;
    st.len = 0;
    st.cap = cap;
    st.cross_k.assign(L, at::Tensor());
    st.cross_v.assign(L, at::Tensor());
    /* mmt_attend_one reads one copy for all the rows of a group.  sdpa
     * (other devices and dtypes) gets one copy per row, as transformers
     * holds them: it then sees the shapes a lone transformers call sees
     * (one query per row), which keeps the arithmetic, and so near-tied
     * beams, identical. */
    const bool share = device_.is_cpu() && dtype_ == at::kFloat;
    st.cross_share = share ? group : 1;
    for (int64_t l = 0; l < L; l++) {
        cross_kv(l, enc, &st.cross_k[l], &st.cross_v[l]);
        if (group > 1 && !share) {
            st.cross_k[l] = st.cross_k[l].repeat_interleave(group, 0);
            st.cross_v[l] = st.cross_v[l].repeat_interleave(group, 0);
        }
    }
    st.cross_bias = cross_bias(mask, padded);
    if (group > 1 && !share && st.cross_bias.defined() && st.cross_bias.size(0) == G && padded)
        st.cross_bias = st.cross_bias.repeat_interleave(group, 0);
    st.n_groups = G;
    auto opts = at::TensorOptions().dtype(dtype_).device(device_);
    st.self_k.clear();
    st.self_v.clear();
    for (int64_t l = 0; l < L; l++) {
        st.self_k.push_back(at::empty({G * group, info_.heads, cap, info_.head_dim}, opts));
        st.self_v.push_back(at::empty({G * group, info_.heads, cap, info_.head_dim}, opts));
    }
    /* mmt_attend_slots follows a slot table; sdpa needs rows that own them */
    st.indirect = share;
    st.slot.clear();
    if (st.indirect)
        reset_slots(st, G * group, cap);
}

void Seq2Seq::cache_append(DecState &st, int64_t l, const at::Tensor &k, const at::Tensor &v,
                           at::Tensor *kk, at::Tensor *vv) {
    int64_t t = st.len;
    if (t >= st.self_k[l].size(2)) { /* grow (only when cap was an underestimate) */
        int64_t ncap = std::max<int64_t>(2 * st.self_k[l].size(2), t + 1);
        auto grow = [&](at::Tensor &c) {
            at::Tensor n = at::empty({c.size(0), c.size(1), ncap, c.size(3)}, c.options());
            n.narrow(2, 0, t).copy_(c.narrow(2, 0, t));
            c = n;
        };
        grow(st.self_k[l]);
        grow(st.self_v[l]);
    }
    if (st.indirect && l == 0) { /* each row's new position goes in its own cache row */
        if (t >= st.slot_cap) {
            const int64_t ocap = st.slot_cap, ncap = std::max<int64_t>(2 * ocap, t + 1);
            std::vector<int32_t> ns((size_t)(st.rows() * ncap));
            for (int64_t r = 0; r < st.rows(); r++)
                std::copy(st.slot.begin() + r * ocap, st.slot.begin() + r * ocap + t,
                          ns.begin() + r * ncap);
            st.slot.swap(ns);
            st.slot_cap = ncap;
        }
        for (int64_t r = 0; r < st.rows(); r++)
            st.slot[(size_t)(r * st.slot_cap + t)] = (int32_t)r;
    }
    st.self_k[l].narrow(2, t, 1).copy_(k);
    st.self_v[l].narrow(2, t, 1).copy_(v);
    *kk = st.self_k[l].narrow(2, 0, t + 1);
    *vv = st.self_v[l].narrow(2, 0, t + 1);
}

at::Tensor Seq2Seq::cross_attend(const DecState &st, int64_t l, const at::Tensor &q,
                                 const at::Tensor &bias, double scale) {
    int64_t N = q.size(0), H = q.size(1), hd = q.size(3);
    at::Tensor a = attend(q, st.cross_k[l], st.cross_v[l], bias, scale, st.cross_share);
    return a.transpose(1, 2).reshape({N, H * hd});
}

namespace {
/* The layout of a [rows or 1, H or 1, 1, len] bias or mask, or false when
 * the kernel cannot read it in place. */
bool bias_strides(const at::Tensor &b, int64_t rows, int64_t H, int64_t len, int64_t *row,
                  int64_t *head) {
    if (b.dim() != 4 || b.size(2) != 1 || b.size(3) != len || b.stride(3) != 1 ||
        (b.size(0) != 1 && b.size(0) != rows) || (b.size(1) != 1 && b.size(1) != H))
        return false;
    *row = b.size(0) == 1 ? 0 : b.stride(0);
    *head = b.size(1) == 1 ? 0 : b.stride(1);
    return true;
}

mmt_kv_layout kv_layout(const at::Tensor &t) {
    return mmt_kv_layout{t.data_ptr<float>(), t.stride(0), t.stride(1), t.stride(2)};
}
} // namespace

at::Tensor Seq2Seq::attend(const at::Tensor &q, const at::Tensor &k0, const at::Tensor &v0,
                           const at::Tensor &bias, double scale, int64_t share,
                           const DecState *slots) {
    at::Tensor k = k0, v = v0;
    const int64_t N = q.size(0), H = q.size(1), hd = q.size(3), len = k.size(2);
    const int64_t E = N / share; /* entries of k, v and a per-row bias */
    mmt_attn_bias b{nullptr, 0, 0, nullptr, 0, 0};
    bool fits = q.device().is_cpu() && q.size(2) == 1 &&
                q.scalar_type() == at::kFloat && k.scalar_type() == at::kFloat &&
                v.scalar_type() == at::kFloat && k.size(0) == E && v.size(0) == E &&
                k.size(1) == H && v.size(1) == H && v.size(2) == len && k.size(3) == hd &&
                v.size(3) == hd && k.stride(3) == 1 && v.stride(3) == 1 && len > 0;
    if (fits && bias.defined()) {
        if (bias.scalar_type() == at::kFloat) {
            fits = bias_strides(bias, E, H, len, &b.row, &b.head);
            b.bias = fits ? bias.data_ptr<float>() : nullptr;
        } else if (bias.scalar_type() == at::kBool) {
            fits = bias_strides(bias, E, H, len, &b.mrow, &b.mhead);
            b.mask = fits ? bias.data_ptr<bool>() : nullptr;
        } else {
            fits = false;
        }
    }
    if (!fits && slots) { /* sdpa reads rows that own their positions (T5's first step:
                             a [1, H, 1, 1] bias with a stride the kernel does not take) */
        std::vector<int64_t> all((size_t)k.size(0));
        for (size_t r = 0; r < all.size(); r++)
            all[r] = (int64_t)r;
        k = gather_slots(k, *slots, all, len, len);
        v = gather_slots(v, *slots, all, len, len);
    }
    if (!fits) {
        auto per_row = [&](const at::Tensor &t) {
            return share > 1 && t.size(0) == E && E != N ? t.repeat_interleave(share, 0) : t;
        };
        std::optional<at::Tensor> am;
        if (bias.defined())
            am = per_row(bias);
        return at::scaled_dot_product_attention(q, per_row(k), per_row(v), am, 0.0, false, scale);
    }
    at::Tensor qc = q.contiguous();
    at::Tensor out = at::empty({N, H, 1, hd}, q.options());
    const int nt = std::max(1, at::get_num_threads());
    at::Tensor scratch = at::empty({nt, len}, q.options());
    mmt_attend_slots(qc.data_ptr<float>(), N, share, H, hd, len, kv_layout(k), kv_layout(v), b,
                     slots ? slots->slot.data() : nullptr, slots ? slots->slot_cap : 0,
                     (float)scale, out.data_ptr<float>(), scratch.data_ptr<float>(), nt);
    return out;
}

} // namespace gen
} // namespace mmt

using namespace mmt;
using namespace mmt::gen;

/* ---- the handle ---- */

namespace {

struct Model {
    std::string key, dir, arch, device_name, dtype_name;
    at::Device device{at::kCPU};
    at::ScalarType dtype = at::kFloat;
    Weights weights;
    std::unique_ptr<Seq2Seq> net;    /* encoder-decoder, or */
    std::unique_ptr<CausalLM> lm;    /* decoder-only (gen_causal.h) */
    int64_t vocab = 0;               /* width of the logits */
    std::vector<int64_t> eos;        /* generation eos ids (may be several) */
    int64_t decoder_start = 0, pad = 0, bos = -1;
    int64_t max_input_length = 0, hard_input_limit = 0, max_length_limit = 0;
    mm_torch_gen_params defaults{};
    /* Decoder-only KV-cache budget, shared by every handle and batch of this
     * model (mm_torch_gen_kv_budget): blocks of kBlock positions of one
     * sequence, all layers, keys and values. */
    uint64_t kv_block_bytes = 0;
    std::atomic<int64_t> kv_total{0}; /* 0: unlimited */
    std::atomic<int64_t> kv_used{0};

    ~Model() {
        /* The graphs and tensors go first, then the device's caching allocator
         * gives the memory back, so a verified release sees it free (as the
         * embedders do). */
        bool cuda = device.is_cuda();
        net.reset();
        lm.reset();
        weights = Weights();
        if (cuda) {
            try {
                c10::getDeviceAllocator(at::kCUDA)->emptyCache();
            } catch (...) {
            }
        }
    }
};

Registry<Model> g_models; /* mmt_registry.h */

} // namespace

struct mm_torch_gen {
    std::shared_ptr<Model> model;
};

namespace {

at::ScalarType parse_dtype(const std::string &s0, bool cuda, const std::string &arch,
                           std::string *name) {
    std::string s = s0.empty() ? "auto" : s0;
    if (s == "auto")
        s = !cuda ? "float32" : (arch == "bart" ? "float16" : "bfloat16");
    if (s == "float32" || s == "fp32") {
        *name = "float32";
        return at::kFloat;
    }
    if (s == "float16" || s == "fp16" || s == "half") {
        *name = "float16";
        return at::kHalf;
    }
    if (s == "bfloat16" || s == "bf16") {
        *name = "bfloat16";
        return at::kBFloat16;
    }
    if (s == "int8") { /* float32 compute around int8 linear layers (mmt_qweight.h) */
        if (cuda)
            fail(MM_EUNSUPPORTED, "dtype int8 runs on the CPU only; use float16 or bfloat16 on "
                                  "a GPU");
        *name = "int8";
        return at::kFloat;
    }
    fail(MM_EINVAL, "unknown dtype %s (auto, float32, float16, bfloat16, int8)", s.c_str());
}

/* Token ids: an int, or a list of ints (eos_token_id may be either). */
std::vector<int64_t> ids_of(const json_t *v) {
    std::vector<int64_t> out;
    if (json_is_integer(v)) {
        out.push_back(json_integer_value(v));
    } else if (json_is_array(v)) {
        size_t i;
        json_t *e;
        json_array_foreach(v, i, e) {
            if (json_is_integer(e))
                out.push_back(json_integer_value(e));
        }
    }
    return out;
}

const json_t *pick(const json_t *src, const char *key) {
    const json_t *v = jget(src, key);
    return (v && !json_is_null(v)) ? v : nullptr;
}

/* Architecture from config.json: model_type first, architectures[0] else. */
std::string arch_of(const json_t *cfg) {
    std::string causal;
    if (causal_arch(cfg, &causal))
        return causal;
    std::string mt = jstr(cfg, "model_type", "");
    std::string a0 = first_architecture(cfg);
    if (mt == "t5" || mt == "mt5")
        return "t5";
    if (mt == "bart")
        return "bart";
    if (mt.empty() && (a0.compare(0, 2, "T5") == 0 || a0.compare(0, 3, "MT5") == 0))
        return "t5";
    if (mt.empty() && a0.compare(0, 4, "Bart") == 0)
        return "bart";
    std::string what = !mt.empty() ? mt : (!a0.empty() ? a0 : std::string("(none given)"));
    if (!a0.empty() && !mt.empty())
        what = a0 + " (model_type " + mt + ")";
    fail(MM_EARCH, "architecture %s is not supported for text generation (encoder-decoder: "
                   "T5, BART; decoder-only: Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma2, Phi3)",
         what.c_str());
}

void global_defaults(mm_torch_gen_params *p) {
    memset(p, 0, sizeof *p);
    p->max_length = 21; /* transformers: 20 new tokens after the decoder start */
    p->max_new_tokens = -1;
    p->min_length = 0;
    p->min_new_tokens = -1;
    p->num_beams = 1;
    p->length_penalty = 1.0;
    p->early_stopping = MM_GEN_EARLY_FALSE;
    p->no_repeat_ngram_size = 0;
    p->repetition_penalty = 1.0;
    p->forced_bos_token_id = -1;
    p->forced_eos_token_id = -1;
    p->do_sample = 0;
    p->temperature = 1.0;
    p->top_k = 50;
    p->top_p = 1.0;
    p->seed = -1;
    p->num_return_sequences = 1;
}

/* The settings both kinds of model read alike from gc (generation_config.json,
 * else config.json): lengths, n-gram and repetition penalties, sampling. */
void common_defaults(const json_t *gc, mm_torch_gen_params *d) {
    if (pick(gc, "max_new_tokens"))
        d->max_new_tokens = jint(gc, "max_new_tokens", -1);
    d->min_length = jint(gc, "min_length", 0);
    if (pick(gc, "min_new_tokens"))
        d->min_new_tokens = jint(gc, "min_new_tokens", -1);
    d->no_repeat_ngram_size = jint(gc, "no_repeat_ngram_size", 0);
    d->repetition_penalty = jnum(gc, "repetition_penalty", 1.0);
    d->do_sample = jbool(gc, "do_sample", false) ? 1 : 0;
    d->temperature = jnum(gc, "temperature", 1.0);
    if (pick(gc, "top_k"))
        d->top_k = jint(gc, "top_k", 50);
    d->top_p = jnum(gc, "top_p", 1.0);
    d->min_p = jnum(gc, "min_p", 0.0);
    d->num_return_sequences = jint(gc, "num_return_sequences", 1);
}

/* The decoding settings of a decoder-only model: generation_config.json when
 * present, else config.json.  Lengths count the prompt (transformers'
 * max_length); with neither max_length nor max_new_tokens in those files
 * the default is max_new_tokens = 256 (transformers' 20 tokens in all is too
 * short for a chat prompt). */
void load_causal(Model &m, const json_t *cfg, const json_t *gcj) {
    m.lm = make_causal(m.arch, cfg, m.weights, m.device, m.dtype);
    const CausalInfo &ci = m.lm->info();
    m.kv_block_bytes = (uint64_t)kBlock * (uint64_t)ci.layers * (uint64_t)ci.kv_heads *
                       (uint64_t)ci.head_dim * 2 * (uint64_t)c10::elementSize(m.dtype);
    m.vocab = ci.vocab_size;
    const json_t *gc = gcj ? gcj : cfg;
    auto tok = [&](const char *k) -> const json_t * {
        const json_t *v = pick(gc, k);
        return v ? v : pick(cfg, k);
    };
    m.eos = ids_of(tok("eos_token_id"));
    std::vector<int64_t> b = ids_of(tok("bos_token_id"));
    m.bos = b.empty() ? -1 : b[0];
    m.decoder_start = -1;
    std::vector<int64_t> pd = ids_of(tok("pad_token_id"));
    m.pad = !pd.empty() ? pd[0] : (m.eos.empty() ? 0 : m.eos[0]);
    mm_torch_gen_params &d = m.defaults;
    global_defaults(&d);
    d.max_length = 20;
    d.max_new_tokens = 256;
    if (pick(gc, "max_length")) {
        d.max_length = jint(gc, "max_length", 20);
        d.max_new_tokens = -1;
    }
    common_defaults(gc, &d);
    const int64_t ctx = ci.context > 0 ? ci.context : ((int64_t)1 << 20);
    m.max_input_length = ctx;
    m.hard_input_limit = 0;
    m.max_length_limit = ctx;
}

void load_model(Model &m) {
    JsonPtr cfg = read_json(join_path(m.dir, "config.json"), true);
    JsonPtr gcj = read_json(join_path(m.dir, "generation_config.json"), false);
    m.arch = arch_of(cfg.get());
    int rc = 0;
    std::string err;
    /* float32 T5 / BART on the CPU: each decoder step streams every decoder
     * matrix and the vocabulary projection, which read 2-8% faster from
     * 2 MB pages than from the file's 4 KB ones (st_loader.h) */
    const bool seq2seq = m.arch == "t5" || m.arch == "bart";
    const Placement place = m.device.is_cpu() && m.dtype == at::kFloat &&
                                    m.dtype_name != "int8" && seq2seq
                                ? Placement::Copy
                                : Placement::Map;
    rc = load_weights(m.dir, m.device, m.dtype, &m.weights, &err, place);
    if (rc != 0)
        throw Error(rc, err);
    /* dtype "int8": the graph's tensors are its own once built; the table
     * goes first so that the float weights int8 replaces are freed */
    const bool int8 = m.dtype_name == "int8";
    if (m.arch != "t5" && m.arch != "bart") {
        load_causal(m, cfg.get(), gcj.get());
        if (int8) {
            m.weights.tensors.clear();
            m.weights.bytes -= std::min(m.weights.bytes, m.lm->quantize_int8());
        }
        return;
    }
    if (m.arch == "t5")
        m.net = make_t5(cfg.get(), m.weights, m.device, m.dtype);
    else
        m.net = make_bart(cfg.get(), m.weights, m.device, m.dtype);
    if (int8) {
        m.weights.tensors.clear();
        m.weights.bytes -= std::min(m.weights.bytes, m.net->quantize_int8());
    }
    const ModelInfo &mi = m.net->info();
    m.vocab = mi.vocab_size;

    /* transformers 5: generation_config.json when present, else the
     * generation fields of config.json. */
    const json_t *gc = gcj ? gcj.get() : cfg.get();
    auto tok = [&](const char *k) -> const json_t * {
        const json_t *v = pick(gc, k);
        return v ? v : pick(cfg.get(), k);
    };
    m.eos = ids_of(tok("eos_token_id"));
    m.bos = tok("bos_token_id") ? ids_of(tok("bos_token_id")).at(0) : -1;
    if (tok("decoder_start_token_id"))
        m.decoder_start = ids_of(tok("decoder_start_token_id")).at(0);
    else if (m.bos >= 0)
        m.decoder_start = m.bos;
    else
        fail(MM_ELOAD, "%s: neither decoder_start_token_id nor bos_token_id is set",
             m.dir.c_str());
    if (tok("pad_token_id"))
        m.pad = ids_of(tok("pad_token_id")).at(0);
    else
        m.pad = m.eos.empty() ? 0 : m.eos[0];

    mm_torch_gen_params &d = m.defaults;
    global_defaults(&d);
    int64_t maxpos = jint(cfg.get(), "max_position_embeddings", 0);
    if (pick(gc, "max_length"))
        d.max_length = jint(gc, "max_length", 20);
    else if (maxpos > 0)
        d.max_length = std::min<int64_t>(d.max_length, maxpos);
    common_defaults(gc, &d);
    d.num_beams = jint(gc, "num_beams", 1);
    d.length_penalty = jnum(gc, "length_penalty", 1.0);
    const json_t *es = pick(gc, "early_stopping");
    if (json_is_boolean(es))
        d.early_stopping = json_is_true(es) ? MM_GEN_EARLY_TRUE : MM_GEN_EARLY_FALSE;
    else if (json_is_string(es) && strcmp(json_string_value(es), "never") == 0)
        d.early_stopping = MM_GEN_EARLY_NEVER;
    if (pick(gc, "forced_bos_token_id"))
        d.forced_bos_token_id = ids_of(pick(gc, "forced_bos_token_id")).at(0);
    if (pick(gc, "forced_eos_token_id"))
        d.forced_eos_token_id = ids_of(pick(gc, "forced_eos_token_id")).at(0);

    if (mi.max_source_positions > 0) {
        m.hard_input_limit = mi.max_source_positions;
        m.max_input_length = mi.max_source_positions;
    } else {
        m.max_input_length = mi.n_positions > 0 ? mi.n_positions : 512;
    }
    /* The decoder feeds positions 0 .. max_length - 2. */
    m.max_length_limit = mi.max_target_positions > 0 ? mi.max_target_positions + 1
                                                     : std::max<int64_t>(m.max_input_length, 512) + 1;
}

/* ---- parameters ---- */

struct Resolved {
    int64_t max_length, min_length, min_new_tokens, nb, nrs, ngram, top_k, seed;
    int64_t forced_bos, forced_eos;
    int64_t max_new;  /* decoder-only: new tokens per request (-1: max_length counts) */
    double lp, rep, temp, top_p, min_p;
    int early;
    bool sample;
};

void check_params(const Model &m, const mm_torch_gen_params *p, Resolved *r) {
    std::string bad;
    auto add = [&](const std::string &s) { bad += (bad.empty() ? "" : "; ") + s; };
    char buf[256];
    r->max_length = p->max_new_tokens >= 0 ? p->max_new_tokens + 1 : p->max_length;
    r->min_length = p->min_new_tokens >= 0 ? p->min_new_tokens + 1 : p->min_length;
    r->min_new_tokens = p->min_new_tokens;
    r->nb = p->num_beams;
    r->nrs = p->num_return_sequences;
    r->ngram = p->no_repeat_ngram_size;
    r->top_k = p->top_k;
    r->seed = p->seed;
    r->forced_bos = p->forced_bos_token_id;
    r->forced_eos = p->forced_eos_token_id;
    r->lp = p->length_penalty;
    r->rep = p->repetition_penalty;
    r->temp = p->temperature;
    r->top_p = p->top_p;
    r->early = p->early_stopping;
    r->sample = p->do_sample != 0;
    r->min_p = p->min_p;
    r->max_new = p->max_new_tokens;
    int64_t V = m.vocab;
    if (m.lm) { /* decoder-only: lengths count the prompt, checked per input */
        r->min_length = p->min_length;
        if (p->max_new_tokens < -1 || p->max_new_tokens == 0) {
            snprintf(buf, sizeof buf, "max_new_tokens must be at least 1 (got %lld)",
                     (long long)p->max_new_tokens);
            add(buf);
        } else if (p->max_new_tokens > m.max_length_limit) {
            snprintf(buf, sizeof buf, "max_new_tokens (%lld) exceeds the model's context of %lld "
                     "positions", (long long)p->max_new_tokens, (long long)m.max_length_limit);
            add(buf);
        }
        if (p->max_new_tokens < 0 && (p->max_length < 1 || p->max_length > m.max_length_limit)) {
            snprintf(buf, sizeof buf, "max_length (%lld) must be within 1 .. %lld (the model's "
                     "context)", (long long)p->max_length, (long long)m.max_length_limit);
            add(buf);
        }
        if (r->nb != 1)
            add("num_beams must be 1: beam search is not offered for decoder-only models");
    } else if (p->max_new_tokens < -1)
        add("max_new_tokens must be >= 0");
    else if (p->max_new_tokens == 0)
        add("max_new_tokens must be at least 1");
    if (m.lm) {
    } else if (r->max_length < 2) {
        snprintf(buf, sizeof buf, "max_length (%lld) must be at least 2 (it counts the decoder "
                                  "start token)", (long long)r->max_length);
        add(buf);
    } else if (r->max_length > m.max_length_limit) {
        snprintf(buf, sizeof buf, "%s (%lld) exceeds the model's limit of %lld new tokens",
                 p->max_new_tokens >= 0 ? "max_new_tokens" : "max_length",
                 (long long)(p->max_new_tokens >= 0 ? p->max_new_tokens : r->max_length),
                 (long long)(m.max_length_limit - 1));
        add(buf);
    }
    if (p->min_length < 0)
        add("min_length must be >= 0");
    if (p->min_new_tokens < -1)
        add("min_new_tokens must be >= 0");
    if (!m.lm && r->max_length >= 2 && r->min_length > r->max_length) {
        snprintf(buf, sizeof buf, "min_length (%lld) is larger than max_length (%lld)",
                 (long long)r->min_length, (long long)r->max_length);
        add(buf);
    }
    if (r->nb < 1)
        add("num_beams must be at least 1");
    if (r->nrs < 1)
        add("num_return_sequences must be at least 1");
    else if (r->nb >= 1 && r->nb > 1 && r->nrs > r->nb)
        add("num_return_sequences must not exceed num_beams");
    else if (r->nb == 1 && !r->sample && r->nrs > 1)
        add("num_return_sequences > 1 needs num_beams > 1 or do_sample");
    if (r->early < 0 || r->early > 2)
        add("early_stopping must be true, false or \"never\"");
    if (r->ngram < 0)
        add("no_repeat_ngram_size must be >= 0");
    if (!(r->rep > 0) || !std::isfinite(r->rep))
        add("repetition_penalty must be > 0");
    if (!std::isfinite(r->lp))
        add("length_penalty must be finite");
    if (r->forced_bos < -1 || r->forced_bos >= V)
        add("forced_bos_token_id is out of the vocabulary");
    if (r->forced_eos < -1 || r->forced_eos >= V)
        add("forced_eos_token_id is out of the vocabulary");
    if (r->sample) {
        if (!(r->temp > 0) || !std::isfinite(r->temp))
            add("temperature must be > 0 when sampling");
        if (r->top_k < 0)
            add("top_k must be >= 0");
        if (!(r->top_p >= 0 && r->top_p <= 1))
            add("top_p must be within [0, 1]");
        if (!(r->min_p >= 0 && r->min_p <= 1))
            add("min_p must be within [0, 1]");
    }
    if (!bad.empty())
        fail(MM_EINVAL, "invalid generation parameters: %s", bad.c_str());
}

/* ---- logits processing ---- */

/* Lengths of a row as the processors see them: cur = input_ids.shape[-1]
 * (the decoder start, or a decoder-only row's prompt, included), gen = new
 * tokens so far, max = the row's max_length. */
struct RowLen {
    int64_t cur, gen, max;
};

/* Applies the processors of transformers' _get_logits_processor, in order,
 * to scores [R, V] (row r continues *rows[r].seq, lens[r] long). */
void process(const Resolved &P, const Model &m, at::Tensor &scores,
             const std::vector<const std::vector<int64_t> *> &rows,
             const std::vector<RowLen> &lens, int64_t min_keep) {
    int64_t R = scores.size(0), V = scores.size(1);
    scores = scores.contiguous();
    const float NEG_INF = -std::numeric_limits<float>::infinity();
    auto lopts = at::TensorOptions().dtype(at::kLong);
    if (P.rep != 1.0) {
        std::vector<int64_t> ri, ti;
        for (int64_t r = 0; r < R; r++) {
            std::set<int64_t> seen(rows[r]->begin(), rows[r]->end());
            for (int64_t t : seen)
                if (t >= 0 && t < V) {
                    ri.push_back(r);
                    ti.push_back(t);
                }
        }
        if (!ri.empty()) {
            std::vector<int64_t> lin(ri.size());
            for (size_t i = 0; i < ri.size(); i++)
                lin[i] = ri[i] * V + ti[i];
            at::Tensor li = at::tensor(lin, lopts).to(scores.device());
            at::Tensor flat = scores.view({-1});
            at::Tensor s = flat.index_select(0, li);
            s = at::where(s < 0, s * P.rep, s / P.rep);
            flat.index_copy_(0, li, s);
        }
    }
    if (P.ngram > 0) {
        int64_t n = P.ngram;
        std::vector<int64_t> ri, ti;
        for (int64_t r = 0; r < R; r++) {
            if (lens[r].cur < P.ngram)
                continue;
            const std::vector<int64_t> &s = *rows[r];
            int64_t L = (int64_t)s.size();
            /* every complete n-gram whose first n-1 tokens equal the last n-1 */
            for (int64_t i = 0; i + n <= L; i++) {
                bool eq = true;
                for (int64_t j = 0; j < n - 1 && eq; j++)
                    eq = s[i + j] == s[L - (n - 1) + j];
                if (eq && s[i + n - 1] >= 0 && s[i + n - 1] < V) {
                    ri.push_back(r);
                    ti.push_back(s[i + n - 1]);
                }
            }
        }
        if (!ri.empty()) {
            std::vector<int64_t> lin(ri.size());
            for (size_t i = 0; i < ri.size(); i++)
                lin[i] = ri[i] * V + ti[i];
            scores.view({-1}).index_fill_(0, at::tensor(lin, lopts).to(scores.device()), NEG_INF);
        }
    }
    for (int64_t r = 0; r < R; r++) {
        const RowLen &L = lens[r];
        bool mask_eos = (P.min_length > 0 && L.cur < P.min_length) ||
                        (P.min_new_tokens > 0 && L.gen < P.min_new_tokens);
        if (!mask_eos && !(P.forced_bos >= 0 && L.cur == 1) &&
            !(P.forced_eos >= 0 && L.cur == L.max - 1))
            continue;
        at::Tensor row = scores.select(0, r);
        if (mask_eos)
            for (int64_t e : m.eos)
                if (e >= 0 && e < V)
                    row.select(0, e).fill_(NEG_INF);
        if (P.forced_bos >= 0 && L.cur == 1) {
            row.fill_(NEG_INF);
            row.select(0, P.forced_bos).fill_(0.0);
        }
        if (P.forced_eos >= 0 && L.cur == L.max - 1) {
            row.fill_(NEG_INF);
            row.select(0, P.forced_eos).fill_(0.0);
        }
    }
    if (P.sample) {
        if (P.temp != 1.0)
            scores = scores / P.temp;
        if (P.top_k != 0) {
            int64_t k = std::min<int64_t>(std::max<int64_t>(P.top_k, min_keep), V);
            at::Tensor kth = std::get<0>(at::topk(scores, k)).narrow(1, k - 1, 1);
            scores = scores.masked_fill(scores < kth, NEG_INF);
        }
        if (P.top_p < 1.0) {
            auto sorted = at::sort(scores, -1, false);
            at::Tensor sl = std::get<0>(sorted), si = std::get<1>(sorted);
            at::Tensor cum = sl.softmax(-1).cumsum(-1);
            at::Tensor rm = cum <= (1 - P.top_p);
            rm.narrow(1, V - min_keep, min_keep).fill_(false);
            at::Tensor ind = rm.scatter(1, si, rm);
            scores = scores.masked_fill(ind, NEG_INF);
        }
        if (P.min_p > 0.0) {
            at::Tensor probs = at::softmax(scores, -1);
            at::Tensor top = std::get<0>(probs.max(-1, true));
            at::Tensor remove = probs < top * P.min_p;
            int64_t k = std::min<int64_t>(min_keep, V);
            remove.scatter_(-1, std::get<1>(at::topk(probs, k, -1)), false);
            scores = scores.masked_fill(remove, NEG_INF);
        }
    }
}

void process(const Resolved &P, const Model &m, at::Tensor &scores,
             const std::vector<const std::vector<int64_t> *> &rows, int64_t cur_len,
             int64_t min_keep) {
    std::vector<RowLen> lens((size_t)scores.size(0), RowLen{cur_len, cur_len - 1, P.max_length});
    process(P, m, scores, rows, lens, min_keep);
}

/* ---- the decoding loops ---- */

struct Output {
    std::vector<std::vector<int64_t>> seqs; /* per input * nrs, start token included
                                               (decoder-only: a -1 in its place) */
    std::vector<float> scores;
    std::vector<uint8_t> finish;            /* MM_GEN_FINISH_*; empty: by the last token */
};

/* The caller's token callback; seq numbers of a group map to the call's
 * through base[] (input index of the group's i-th input). */
struct Hook {
    mm_torch_gen_token_cb cb = nullptr;
    void *user = nullptr;
    const size_t *base = nullptr; /* group input -> call input */
    int64_t nrs = 1;
    /* true: stop the sequence */
    bool operator()(size_t in, int64_t r, const std::vector<int64_t> &seq, size_t skip,
                    bool done) const {
        if (!cb)
            return false;
        size_t gi = base ? base[in] : in;
        return cb(user, gi * (size_t)nrs + (size_t)r, seq.data() + skip, seq.size() - skip,
                  done ? 1 : 0) != 0;
    }
};

at::Generator make_gen(int64_t seed) {
    uint64_t s;
    if (seed >= 0) {
        s = (uint64_t)seed;
    } else {
        std::random_device rd;
        s = ((uint64_t)rd() << 32) ^ rd();
    }
    return at::make_generator<at::CPUGeneratorImpl>(s);
}

bool is_eos(const Model &m, int64_t t) {
    return std::find(m.eos.begin(), m.eos.end(), t) != m.eos.end();
}

/* Whether a decoder-only row (prompt + new tokens) ends with its latest
 * token: EOS, or its length limit maxl; *why says which. */
bool ends_row(const Model &m, const std::vector<int64_t> &seq, int64_t maxl, uint8_t *why) {
    if (is_eos(m, seq.back()))
        *why = MM_GEN_FINISH_EOS;
    else if ((int64_t)seq.size() >= maxl)
        *why = MM_GEN_FINISH_LENGTH;
    else
        return false;
    return true;
}

/* Greedy and sampling: one row per (input, return sequence). */
void run_rows(const Model &m, const Resolved &P, DecState &st, size_t n_in, const Hook &hook,
              Output *out) {
    const at::Device dev = m.device;
    int64_t nrs = P.sample ? P.nrs : 1;
    size_t R0 = n_in * (size_t)nrs;
    std::vector<std::vector<int64_t>> seq(R0, std::vector<int64_t>{m.decoder_start});
    std::vector<char> fin(R0, 0);
    std::vector<int64_t> active(R0); /* state row -> output row */
    for (size_t i = 0; i < R0; i++)
        active[i] = (int64_t)i;
    std::vector<at::Generator> gens;
    if (P.sample)
        for (size_t i = 0; i < n_in; i++)
            gens.push_back(make_gen(P.seed));
    int64_t cur_len = 1;
    auto lopts = at::TensorOptions().dtype(at::kLong);
    while (!active.empty()) {
        std::vector<int64_t> last(active.size());
        std::vector<const std::vector<int64_t> *> rows(active.size());
        for (size_t i = 0; i < active.size(); i++) {
            int64_t r = active[i];
            /* a finished row kept for its request's random stream feeds pad */
            last[i] = fin[r] ? m.pad : seq[r].back();
            rows[i] = &seq[r];
        }
        at::Tensor logits = m.net->step(st, at::tensor(last, lopts).to(dev));
        process(P, m, logits, rows, cur_len, 1);
        std::vector<int64_t> next(active.size());
        if (P.sample) {
            at::Tensor probs = at::softmax(logits, -1).to(at::kCPU);
            size_t i = 0;
            while (i < active.size()) {
                size_t req = (size_t)(active[i] / nrs), j = i;
                while (j < active.size() && (size_t)(active[j] / nrs) == req)
                    j++;
                at::Tensor s = at::multinomial(probs.narrow(0, (int64_t)i, (int64_t)(j - i)), 1,
                                               false, gens[req]);
                auto acc = s.accessor<int64_t, 2>();
                for (size_t k = i; k < j; k++)
                    next[k] = acc[(int64_t)(k - i)][0];
                i = j;
            }
        } else {
            at::Tensor a = at::argmax(logits, -1).to(at::kCPU);
            auto acc = a.accessor<int64_t, 1>();
            for (size_t i = 0; i < active.size(); i++)
                next[i] = acc[(int64_t)i];
        }
        cur_len++;
        bool at_max = cur_len >= P.max_length;
        for (size_t i = 0; i < active.size(); i++) {
            int64_t r = active[i];
            if (fin[r])
                continue;
            seq[r].push_back(next[i]);
            if (is_eos(m, next[i]) || at_max)
                fin[r] = 1;
            if (hook((size_t)r / (size_t)nrs, r % nrs, seq[r], 1, fin[r] != 0) && !fin[r])
                fin[r] = 2; /* stopped by the caller */
        }
        /* drop a request's rows once all of them are finished */
        std::vector<int64_t> keep, nact;
        for (size_t i = 0; i < active.size();) {
            size_t req = (size_t)(active[i] / nrs), j = i;
            bool all = true;
            while (j < active.size() && (size_t)(active[j] / nrs) == req) {
                all = all && fin[active[j]];
                j++;
            }
            if (!all && !at_max)
                for (size_t k = i; k < j; k++) {
                    keep.push_back((int64_t)k);
                    nact.push_back(active[k]);
                }
            i = j;
        }
        if (nact.size() != active.size() && !nact.empty())
            keep_groups(st, keep);
        active.swap(nact);
    }
    out->finish.assign(R0, MM_GEN_FINISH_LENGTH);
    for (size_t r = 0; r < R0; r++)
        out->finish[r] = fin[r] == 2 ? MM_GEN_FINISH_STOPPED
                         : is_eos(m, seq[r].back()) ? MM_GEN_FINISH_EOS : MM_GEN_FINISH_LENGTH;
    out->seqs = std::move(seq);
    out->scores.assign(R0, 0.0f);
}

/* Draws one token per row of probs [n, V] from gen: torch.multinomial on
 * the whole block, as transformers draws for a request's rows. */
void draw(const at::Tensor &probs, at::Generator &gen, int64_t *out) {
    at::Tensor s = at::multinomial(probs, 1, false, gen);
    auto acc = s.accessor<int64_t, 2>();
    for (int64_t k = 0; k < probs.size(0); k++)
        out[k] = acc[k][0];
}

/* Decoder-only greedy and sampling.  Each input is prefilled alone (no
 * padding), copied to its num_return_sequences rows, and then every live row
 * takes one decoder step per token, each over its own cache.  A row leaves
 * the step (and frees its cache) as soon as it ends; a sampled request keeps
 * drawing over all of its rows until the last ends, so its random stream is
 * the one transformers draws for the request alone. */
void run_causal(const Model &m, const Resolved &P, const int64_t *const *ids, const size_t *lens,
                size_t n_in, const Hook &hook, Output *out) {
    const CausalLM &lm = *m.lm;
    const int64_t V = m.vocab;
    const int64_t nrs = P.sample ? P.nrs : 1;
    const size_t R0 = n_in * (size_t)nrs;
    struct Row {
        CausalSeq s;
        std::vector<int64_t> seq; /* prompt + generated */
        int64_t prompt = 0, maxl = 0;
        bool fin = false;
        uint8_t why = MM_GEN_FINISH_LENGTH;
    };
    std::vector<Row> rows(R0);
    std::vector<at::Generator> gens;
    if (P.sample)
        for (size_t i = 0; i < n_in; i++)
            gens.push_back(make_gen(P.seed));
    std::vector<at::Tensor> first;
    for (size_t i = 0; i < n_in; i++) {
        Row &r0 = rows[i * nrs];
        first.push_back(lm.prefill(r0.s, ids[i], (int64_t)lens[i]));
        for (int64_t j = 0; j < nrs; j++) {
            Row &r = rows[i * nrs + j];
            if (j > 0)
                lm.fork(r0.s, r.s);
            r.seq.assign(ids[i], ids[i] + lens[i]);
            r.prompt = (int64_t)lens[i];
            r.maxl = P.max_new >= 0 ? r.prompt + P.max_new : P.max_length;
            r.maxl = std::max(r.maxl, r.prompt + 1); /* transformers: at least one token */
        }
    }
    std::vector<int64_t> live(R0);
    for (size_t i = 0; i < R0; i++)
        live[i] = (int64_t)i;
    at::Tensor logits = at::cat(first, 0);
    if (nrs > 1)
        logits = logits.repeat_interleave(nrs, 0);
    const at::Tensor uniform = at::full({V}, 1.0 / (double)V, at::TensorOptions().dtype(at::kFloat));
    while (!live.empty()) {
        std::vector<const std::vector<int64_t> *> seqs(live.size());
        std::vector<RowLen> rl(live.size());
        for (size_t i = 0; i < live.size(); i++) {
            const Row &r = rows[(size_t)live[i]];
            seqs[i] = &r.seq;
            rl[i] = RowLen{(int64_t)r.seq.size(), (int64_t)r.seq.size() - r.prompt, r.maxl};
        }
        process(P, m, logits, seqs, rl, 1);
        std::vector<int64_t> next(live.size());
        if (P.sample) {
            at::Tensor probs = at::softmax(logits, -1).to(at::kCPU);
            size_t i = 0;
            while (i < live.size()) {
                const size_t req = (size_t)live[i] / (size_t)nrs;
                size_t j = i;
                while (j < live.size() && (size_t)live[j] / (size_t)nrs == req)
                    j++;
                if ((int64_t)(j - i) == nrs) {
                    draw(probs.narrow(0, (int64_t)i, (int64_t)(j - i)), gens[req], &next[i]);
                } else { /* finished rows keep their places in the draw */
                    std::vector<at::Tensor> blk;
                    std::vector<int64_t> at_row((size_t)nrs, -1);
                    for (size_t k = i; k < j; k++)
                        at_row[(size_t)(live[k] % nrs)] = (int64_t)k;
                    for (int64_t x = 0; x < nrs; x++)
                        blk.push_back(at_row[(size_t)x] >= 0 ? probs[at_row[(size_t)x]] : uniform);
                    std::vector<int64_t> got((size_t)nrs);
                    draw(at::stack(blk, 0), gens[req], got.data());
                    for (int64_t x = 0; x < nrs; x++)
                        if (at_row[(size_t)x] >= 0)
                            next[(size_t)at_row[(size_t)x]] = got[(size_t)x];
                }
                i = j;
            }
        } else {
            at::Tensor a = at::argmax(logits, -1).to(at::kCPU);
            auto acc = a.accessor<int64_t, 1>();
            for (size_t i = 0; i < live.size(); i++)
                next[i] = acc[(int64_t)i];
        }
        std::vector<int64_t> nlive, keep;
        for (size_t i = 0; i < live.size(); i++) {
            Row &r = rows[(size_t)live[i]];
            r.seq.push_back(next[i]);
            r.fin = ends_row(m, r.seq, r.maxl, &r.why);
            const size_t in = (size_t)live[i] / (size_t)nrs;
            if (hook(in, live[i] % nrs, r.seq, (size_t)r.prompt, r.fin) && !r.fin) {
                r.fin = true;
                r.why = MM_GEN_FINISH_STOPPED;
            }
            if (r.fin) {
                r.s = CausalSeq(); /* its cache goes back now */
            } else {
                nlive.push_back(live[i]);
                keep.push_back((int64_t)i);
            }
        }
        live.swap(nlive);
        if (live.empty())
            break;
        std::vector<CausalSeq *> st(live.size());
        std::vector<int64_t> last(live.size());
        for (size_t i = 0; i < live.size(); i++) {
            st[i] = &rows[(size_t)live[i]].s;
            last[i] = rows[(size_t)live[i]].seq.back();
        }
        logits = lm.step(st, last);
    }
    out->seqs.assign(R0, {});
    out->scores.assign(R0, 0.0f);
    out->finish.assign(R0, MM_GEN_FINISH_LENGTH);
    for (size_t i = 0; i < R0; i++) {
        std::vector<int64_t> &q = out->seqs[i];
        q.push_back(-1);
        q.insert(q.end(), rows[i].seq.begin() + rows[i].prompt, rows[i].seq.end());
        out->finish[i] = rows[i].why;
    }
}

struct Beam {
    std::vector<std::vector<int64_t>> run_seq; /* nb running hypotheses */
    std::vector<float> run_score;
    std::vector<std::vector<int64_t>> fin_seq; /* nb finished slots, best first */
    std::vector<float> fin_score;
    std::vector<char> fin_flag;
    bool unsatisfied = true;
    bool done = false;
};

/* Beam search (and beam sampling), transformers' vectorised algorithm per
 * request.  Group g of the state holds the nb running beams of request
 * groups_req[g]. */
void run_beams(const Model &m, const Resolved &P, DecState &st, size_t n_in, Output *out) {
    const at::Device dev = m.device;
    const int64_t nb = P.nb, V = m.net->info().vocab_size;
    const int64_t n_eos = (int64_t)m.eos.size();
    const int64_t K = std::max<int64_t>(2, 1 + n_eos) * nb;
    const float NEG = -1.0e9f;
    std::vector<Beam> beams(n_in);
    for (Beam &b : beams) {
        b.run_seq.assign(nb, std::vector<int64_t>{m.decoder_start});
        b.run_score.assign(nb, NEG);
        b.run_score[0] = 0.0f;
        b.fin_seq.assign(nb, std::vector<int64_t>{m.decoder_start});
        b.fin_score.assign(nb, NEG);
        b.fin_flag.assign(nb, 0);
    }
    std::vector<at::Generator> gens;
    if (P.sample)
        for (size_t i = 0; i < n_in; i++)
            gens.push_back(make_gen(P.seed));
    std::vector<int64_t> groups(n_in);
    for (size_t i = 0; i < n_in; i++)
        groups[i] = (int64_t)i;
    const int64_t prompt_len = 1;
    int64_t cur_len = 1;
    auto lopts = at::TensorOptions().dtype(at::kLong);
    auto fopts = at::TensorOptions().dtype(at::kFloat);
    /* Started with one row per request (generate): while a request's beams
     * hold the same tokens (the first step, and BART's forced BOS after
     * it), one row computes them all; the rows split when they differ. */
    bool collapsed = nb > 1 && st.group == 1;
    while (!groups.empty()) {
        int64_t G = (int64_t)groups.size();
        std::vector<int64_t> last((size_t)(G * nb));
        std::vector<const std::vector<int64_t> *> rows((size_t)(G * nb));
        std::vector<float> rs((size_t)(G * nb));
        for (int64_t g = 0; g < G; g++)
            for (int64_t j = 0; j < nb; j++) {
                Beam &b = beams[(size_t)groups[(size_t)g]];
                last[(size_t)(g * nb + j)] = b.run_seq[(size_t)j].back();
                rows[(size_t)(g * nb + j)] = &b.run_seq[(size_t)j];
                rs[(size_t)(g * nb + j)] = b.run_score[(size_t)j];
            }
        at::Tensor logits;
        if (collapsed) { /* every beam of a request holds the same tokens */
            std::vector<int64_t> one((size_t)G);
            for (int64_t g = 0; g < G; g++)
                one[(size_t)g] = last[(size_t)(g * nb)];
            logits = m.net->step(st, at::tensor(one, lopts).to(dev)).repeat_interleave(nb, 0);
        } else {
            logits = m.net->step(st, at::tensor(last, lopts).to(dev));
        }
        at::Tensor lp = at::log_softmax(logits, -1);
        process(P, m, lp, rows, cur_len, n_eos + 1);
        /* the K best of each request's lp + running scores (row by row) */
        std::vector<float> tv((size_t)(G * K));
        std::vector<int64_t> ti((size_t)(G * K));
        const bool own_topk = !P.sample && lp.device().is_cpu() &&
                              lp.scalar_type() == at::kFloat && lp.is_contiguous();
        if (own_topk) { /* one pass, no [G, nb * V] sum (mmt_topk.c) */
            for (int64_t g = 0; g < G; g++)
                mmt_beam_topk(lp.data_ptr<float>() + g * nb * V, V, nb, V, rs.data() + g * nb, K,
                              tv.data() + g * K, ti.data() + g * K);
        } else {
            lp = lp.view({G, nb, V}) + at::tensor(rs, fopts).to(dev).view({G, nb, 1});
            lp = lp.reshape({G, nb * V});
            at::Tensor top_v, top_i;
            if (P.sample) {
                at::Tensor probs = at::softmax(lp, -1).to(at::kCPU);
                at::Tensor lpc = lp.to(at::kCPU);
                std::vector<at::Tensor> vs, is;
                for (int64_t g = 0; g < G; g++) {
                    at::Tensor idx = at::multinomial(probs.narrow(0, g, 1), K, false,
                                                     gens[(size_t)groups[(size_t)g]]);
                    at::Tensor val = at::gather(lpc.narrow(0, g, 1), 1, idx);
                    auto srt = val.sort(-1, true);
                    vs.push_back(std::get<0>(srt));
                    is.push_back(idx.gather(-1, std::get<1>(srt)));
                }
                top_v = at::cat(vs, 0);
                top_i = at::cat(is, 0);
            } else {
                auto tk = at::topk(lp, K);
                top_v = std::get<0>(tk).to(at::kCPU);
                top_i = std::get<1>(tk).to(at::kCPU);
            }
            top_v = top_v.contiguous();
            top_i = top_i.contiguous();
            std::copy(top_v.data_ptr<float>(), top_v.data_ptr<float>() + G * K, tv.begin());
            std::copy(top_i.data_ptr<int64_t>(), top_i.data_ptr<int64_t>() + G * K, ti.begin());
        }

        const bool at_max = cur_len + 1 >= P.max_length;
        /* transformers: (cur_len + 1 - decoder_prompt_len) ** length_penalty,
         * a Python float, then float32 division */
        const float div = (float)std::pow((double)(cur_len + 1 - prompt_len), P.lp);
        std::vector<int64_t> reorder((size_t)(G * nb));
        std::vector<int64_t> keep;
        for (int64_t g = 0; g < G; g++) {
            Beam &b = beams[(size_t)groups[(size_t)g]];
            std::vector<float> val(K);
            std::vector<int64_t> src(K), tok(K);
            std::vector<char> hit(K);
            bool all_hit = true;
            for (int64_t c = 0; c < K; c++) {
                val[c] = tv[(size_t)(g * K + c)];
                src[c] = ti[(size_t)(g * K + c)] / V;
                tok[c] = ti[(size_t)(g * K + c)] % V;
                hit[c] = at_max || is_eos(m, tok[c]);
                all_hit = all_hit && hit[c];
            }
            /* e. next running beams: best nb candidates that did not stop */
            std::vector<float> rv(K);
            for (int64_t c = 0; c < K; c++)
                rv[c] = val[c] + (hit[c] ? NEG : 0.0f);
            std::vector<int64_t> order(K);
            for (int64_t c = 0; c < K; c++)
                order[c] = c;
            std::stable_sort(order.begin(), order.end(),
                             [&](int64_t a, int64_t c) { return rv[a] > rv[c]; });
            /* f. finished hypotheses: merge the old slots with the new ones */
            bool all_fin = std::all_of(b.fin_flag.begin(), b.fin_flag.end(),
                                       [](char x) { return x != 0; });
            bool full = all_fin && P.early == MM_GEN_EARLY_TRUE;
            std::vector<float> ms(b.fin_score);
            std::vector<char> mf(b.fin_flag);
            std::vector<int64_t> morig(nb, -1); /* -1: old slot */
            for (int64_t c = 0; c < K; c++) {
                bool just = hit[c] && c < nb;
                float s = val[c] / div;
                if (full)
                    s += NEG;
                if (!b.unsatisfied)
                    s += NEG;
                if (!just)
                    s += NEG;
                ms.push_back(s);
                mf.push_back(just ? 1 : 0);
                morig.push_back(c);
            }
            std::vector<int64_t> mo(ms.size());
            for (size_t i = 0; i < mo.size(); i++)
                mo[i] = (int64_t)i;
            std::stable_sort(mo.begin(), mo.end(),
                             [&](int64_t a, int64_t c) { return ms[a] > ms[c]; });
            std::vector<std::vector<int64_t>> nfs(nb);
            std::vector<float> nfsc(nb);
            std::vector<char> nff(nb);
            for (int64_t j = 0; j < nb; j++) {
                int64_t k = mo[j];
                if (morig[k] < 0) {
                    nfs[j] = b.fin_seq[k];
                } else {
                    int64_t c = morig[k];
                    nfs[j] = b.run_seq[src[c]];
                    nfs[j].push_back(tok[c]);
                }
                nfsc[j] = ms[k];
                nff[j] = mf[k];
            }
            /* running beams for the next step */
            std::vector<std::vector<int64_t>> nrs(nb);
            std::vector<float> nrsc(nb);
            for (int64_t j = 0; j < nb; j++) {
                int64_t c = order[j];
                nrs[j] = b.run_seq[src[c]];
                nrs[j].push_back(tok[c]);
                nrsc[j] = rv[c];
                reorder[(size_t)(g * nb + j)] = g * nb + src[c];
            }
            b.run_seq.swap(nrs);
            b.run_score.swap(nrsc);
            b.fin_seq.swap(nfs);
            b.fin_score.swap(nfsc);
            b.fin_flag.swap(nff);
            /* g. stopping rules, after cur_len + 1 */
            int64_t new_len = cur_len + 1;
            all_fin = std::all_of(b.fin_flag.begin(), b.fin_flag.end(),
                                  [](char x) { return x != 0; });
            if (b.unsatisfied) {
                int64_t hyp = (P.early == MM_GEN_EARLY_NEVER && P.lp > 0.0)
                                  ? P.max_length - prompt_len
                                  : new_len - prompt_len;
                float best = b.run_score[0] / (float)std::pow((double)hyp, P.lp);
                if (all_fin) {
                    float worst = *std::min_element(b.fin_score.begin(), b.fin_score.end());
                    b.unsatisfied = best > worst;
                }
            }
            b.done = !b.unsatisfied || (all_fin && P.early == MM_GEN_EARLY_TRUE) || all_hit;
            if (!b.done)
                keep.push_back(g);
        }
        cur_len++;
        if (keep.empty())
            break;
        bool identity = true;
        for (size_t i = 0; i < reorder.size() && identity; i++)
            identity = reorder[i] == (int64_t)i;
        if (!identity && !collapsed)
            reorder_rows(st, reorder);
        if ((int64_t)keep.size() != G) {
            keep_groups(st, keep);
            std::vector<int64_t> ng;
            for (int64_t g : keep)
                ng.push_back(groups[(size_t)g]);
            groups.swap(ng);
        }
        if (collapsed) {
            for (int64_t g : groups) {
                const Beam &b = beams[(size_t)g];
                for (int64_t j = 1; j < nb && collapsed; j++)
                    collapsed = b.run_seq[(size_t)j] == b.run_seq[0];
            }
            if (!collapsed)
                expand_groups(st, nb);
        }
    }
    out->seqs.clear();
    out->scores.clear();
    for (size_t i = 0; i < n_in; i++)
        for (int64_t j = 0; j < P.nrs; j++) {
            out->seqs.push_back(beams[i].fin_seq[(size_t)j]);
            out->scores.push_back(beams[i].fin_score[(size_t)j]);
        }
}

/* Throws for an empty input, one past the model's limit or an id outside the
 * vocabulary, naming the input by its index. */
void check_inputs(const Model &m, const int64_t *const *ids, const size_t *lens, size_t n) {
    for (size_t i = 0; i < n; i++) {
        if (!ids[i] || lens[i] == 0)
            fail(MM_EINVAL, "input %zu is empty", i);
        if (m.hard_input_limit > 0 && (int64_t)lens[i] > m.hard_input_limit)
            fail(MM_EINVAL, "input %zu has %zu tokens, the model takes at most %lld", i, lens[i],
                 (long long)m.hard_input_limit);
        for (size_t j = 0; j < lens[i]; j++)
            if (ids[i][j] < 0 || ids[i][j] >= m.vocab)
                fail(MM_EINVAL, "input %zu holds token id %lld, outside the vocabulary (%lld)", i,
                     (long long)ids[i][j], (long long)m.vocab);
    }
}

/* Decodes n checked inputs as one batch. */
void generate(const Model &m, const Resolved &P, const int64_t *const *ids, const size_t *lens,
              size_t n, const Hook &hook, Output *out) {
    if (m.lm) {
        run_causal(m, P, ids, lens, n, hook, out);
        return;
    }
    size_t S = 0;
    for (size_t i = 0; i < n; i++)
        S = std::max(S, lens[i]);
    std::vector<int64_t> flat(n * S, m.pad);
    std::vector<uint8_t> msk(n * S, 0);
    bool padded = false;
    for (size_t i = 0; i < n; i++) {
        std::copy(ids[i], ids[i] + lens[i], flat.begin() + (ptrdiff_t)(i * S));
        std::fill(msk.begin() + (ptrdiff_t)(i * S), msk.begin() + (ptrdiff_t)(i * S + lens[i]), 1);
        padded = padded || lens[i] < S;
    }
    at::Tensor tid = at::tensor(flat, at::TensorOptions().dtype(at::kLong))
                         .view({(int64_t)n, (int64_t)S})
                         .to(m.device);
    at::Tensor tm = at::tensor(std::vector<int64_t>(msk.begin(), msk.end()),
                               at::TensorOptions().dtype(at::kLong))
                        .view({(int64_t)n, (int64_t)S})
                        .to(at::kBool)
                        .to(m.device);
    at::Tensor enc = m.net->encode(tid, tm, padded);
    /* the decoder steps: ATen's small operators on this thread alone, the
     * products shared by the kernels' pool (mmt_threads.h) */
    std::optional<PoolOnly> pool_only;
    if (m.device.is_cpu())
        pool_only.emplace();
    DecState st;
    int64_t cap = P.max_length;
    if (P.nb > 1) {
        /* where the cross-attention keys can be shared (CPU, float32), the
         * beams start as one row per request (run_beams) */
        const bool collapse = m.device.is_cpu() && m.dtype == at::kFloat;
        m.net->start(st, enc, tm, padded, collapse ? 1 : P.nb, cap);
        run_beams(m, P, st, n, out);
    } else {
        int64_t nrs = P.sample ? P.nrs : 1;
        if (nrs > 1) {
            enc = enc.repeat_interleave(nrs, 0);
            tm = tm.repeat_interleave(nrs, 0);
        }
        m.net->start(st, enc, tm, padded, 1, cap);
        run_rows(m, P, st, n, hook, out);
    }
}

/* On a CPU handle the inputs are cut into groups of neighbours in length
 * order, so that each group's encoder batch, cross-attention keys and
 * cross-attention steps are padded only to its own longest input (dealing
 * them round robin padded every group to the longest of all: a third of
 * the encoder's work in a burst of 8-64-token prompts was padding).  The
 * longest group goes first, which makes it no costlier than a round-robin
 * group and lets the threads that take the shorter ones even out.  Groups
 * number:
 *   - at least one per intra-op thread, the groups decoding concurrently,
 *     one single-threaded group per thread (mmt_threads.h): a decoder step
 *     is many small operators, and splitting each across threads costs more
 *     in barriers than it gains;
 *   - enough that no group's step has more than MMT_SKINNY_MAX_ROWS rows
 *     (beams and returned sequences count), so every step runs the shim's
 *     own kernels, faster than MKL's there and blind to the batch;
 *   - a multiple of the thread count, so the threads finish together.
 * Every request's tokens are computed row by row as in any batch, and a
 * sampling request has its own seeded generator, so grouping changes no
 * result beyond what any batch composition may. */
void generate_split(const Model &m, const Resolved &P, const int64_t *const *ids,
                    const size_t *lens, size_t n, const Hook &hook, Output *out) {
    check_inputs(m, ids, lens, n);
    const size_t nt = (size_t)std::max(1, at::get_num_threads());
    const size_t rows = (size_t)std::max<int64_t>(1, P.nb > 1 ? P.nb : P.nrs); /* a request's */
    size_t G = (n * rows + MMT_SKINNY_MAX_ROWS - 1) / MMT_SKINNY_MAX_ROWS;
    G = (std::max(G, nt) + nt - 1) / nt * nt;
    G = std::min(G, n);
    if (G < 2 || !m.device.is_cpu()) {
        c10::InferenceMode im;
        /* int8: a lone request's step streams 1-byte weights, which one core
         * reads at memory speed; on one thread it never waits at an OpenMP
         * barrier for a descheduled helper (on the shared machine a lone
         * t5-small-shaped request took 8.2 s on two threads, 0.37 s on one) */
        std::optional<SingleThreaded> one;
        if (m.device.is_cpu() && m.dtype_name == "int8")
            one.emplace();
        generate(m, P, ids, lens, n, hook, out);
        return;
    }
    std::vector<size_t> by_len(n);
    for (size_t i = 0; i < n; i++)
        by_len[i] = i;
    std::stable_sort(by_len.begin(), by_len.end(),
                     [&](size_t x, size_t y) { return lens[x] > lens[y]; });
    std::vector<std::vector<size_t>> members(G);
    for (size_t k = 0; k < n; k++)
        members[k * G / n].push_back(by_len[k]);
    std::vector<Output> outs(G);
    std::vector<size_t> order(G);
    for (size_t g = 0; g < G; g++) {
        std::sort(members[g].begin(), members[g].end()); /* request order within a group */
        order[g] = g;
    }
    run_pieces((int)nt, order, [&](size_t g) {
        std::vector<const int64_t *> gi;
        std::vector<size_t> gl;
        for (size_t i : members[g]) {
            gi.push_back(ids[i]);
            gl.push_back(lens[i]);
        }
        Hook gh = hook;
        gh.base = members[g].data();
        generate(m, P, gi.data(), gl.data(), gi.size(), gh, &outs[g]);
    });
    /* back in input order: each input's sequences are consecutive */
    const size_t per = outs[0].seqs.size() / members[0].size();
    out->seqs.assign(n * per, {});
    out->scores.assign(n * per, 0.0f);
    if (!outs[0].finish.empty())
        out->finish.assign(n * per, MM_GEN_FINISH_LENGTH);
    for (size_t g = 0; g < G; g++)
        for (size_t k = 0; k < members[g].size(); k++)
            for (size_t j = 0; j < per; j++) {
                out->seqs[members[g][k] * per + j] = std::move(outs[g].seqs[k * per + j]);
                out->scores[members[g][k] * per + j] = outs[g].scores[k * per + j];
                if (!outs[g].finish.empty())
                    out->finish[members[g][k] * per + j] = outs[g].finish[k * per + j];
            }
}


/* ---- continuous batching (decoder-only; mm_torch_gen_batch_*) ----
 *
 * A batch holds requests (one prompt each, with its own settings, random
 * stream and token callback) that join and leave between rounds.  A round
 * (batch_step) runs one decoder step for every running sequence, then
 * prefills waiting requests in arrival order until the round's prefill
 * budget (prompt tokens) is spent -- at least one request, and a prompt is
 * never split, so its prefill is the one pass a lone request gets -- then
 * processes and draws each request's logits, per request (its processors,
 * its generator), exactly as run_causal does for a request alone.  Every
 * row's logits depend only on that row (the step runs in pieces of at most
 * MMT_SKINNY_MAX_ROWS rows on the CPU, whose kernels are blind to the batch),
 * so a request's tokens do not depend on what else is in the batch.
 *
 * KV blocks: a request reserves, when added, the blocks its prompt plus
 * max_new_tokens can fill (num_return_sequences rows each), from the model's
 * budget; its caches never grow past that (CausalSeq::limit), and the
 * blocks go back when it finishes or is dropped.  A request that does not
 * fit now is refused with MM_EBUSY (the caller keeps it waiting); one that
 * could never fit, with MM_ENOSPACE naming the numbers. */

struct BRow {
    CausalSeq s;
    std::vector<int64_t> seq; /* prompt + generated */
    int64_t prompt = 0, maxl = 0;
    bool fin = false;
    uint8_t why = MM_GEN_FINISH_LENGTH;
};

struct BReq {
    uint64_t id = 0;
    Resolved P{};
    int64_t nrs = 1;
    std::vector<int64_t> prompt;
    std::vector<BRow> rows;
    at::Generator gen;
    mm_torch_gen_token_cb cb = nullptr;
    void *user = nullptr;
    int64_t blocks = 0;
    bool prefilled = false, done = false;
    at::Tensor logits; /* this round's, one row per live row in row order */
};

int64_t kv_blocks_for(const Resolved &P, int64_t prompt, int64_t nrs) {
    int64_t maxl = P.max_new >= 0 ? prompt + P.max_new : P.max_length;
    maxl = std::max(maxl, prompt + 1);
    return nrs * ((maxl + kBlock - 1) / kBlock);
}

bool kv_take(Model &m, int64_t n) {
    int64_t total = m.kv_total.load();
    if (total <= 0) {
        m.kv_used.fetch_add(n);
        return true;
    }
    int64_t cur = m.kv_used.load();
    do {
        if (cur + n > total)
            return false;
    } while (!m.kv_used.compare_exchange_weak(cur, cur + n));
    return true;
}

/* The decision and draw of one request's live rows from lg [live, V]. */
void decide(const Model &m, BReq &q, at::Tensor lg, std::vector<int64_t> &next) {
    const int64_t V = m.vocab, nrs = q.nrs;
    std::vector<size_t> live;
    for (size_t r = 0; r < q.rows.size(); r++)
        if (!q.rows[r].fin)
            live.push_back(r);
    std::vector<const std::vector<int64_t> *> seqs(live.size());
    std::vector<RowLen> rl(live.size());
    for (size_t i = 0; i < live.size(); i++) {
        const BRow &r = q.rows[live[i]];
        seqs[i] = &r.seq;
        rl[i] = RowLen{(int64_t)r.seq.size(), (int64_t)r.seq.size() - r.prompt, r.maxl};
    }
    process(q.P, m, lg, seqs, rl, 1);
    next.assign(live.size(), 0);
    if (q.P.sample) {
        at::Tensor probs = at::softmax(lg, -1).to(at::kCPU);
        if ((int64_t)live.size() == nrs) {
            draw(probs, q.gen, next.data());
        } else { /* finished rows keep their places in the draw (run_causal) */
            const at::Tensor uniform =
                at::full({V}, 1.0 / (double)V, at::TensorOptions().dtype(at::kFloat));
            std::vector<at::Tensor> blk;
            std::vector<int64_t> at_row((size_t)nrs, -1);
            for (size_t k = 0; k < live.size(); k++)
                at_row[live[k]] = (int64_t)k;
            for (int64_t x = 0; x < nrs; x++)
                blk.push_back(at_row[(size_t)x] >= 0 ? probs[at_row[(size_t)x]] : uniform);
            std::vector<int64_t> got((size_t)nrs);
            draw(at::stack(blk, 0), q.gen, got.data());
            for (int64_t x = 0; x < nrs; x++)
                if (at_row[(size_t)x] >= 0)
                    next[(size_t)at_row[(size_t)x]] = got[(size_t)x];
        }
    } else {
        at::Tensor a = at::argmax(lg, -1).to(at::kCPU);
        auto acc = a.accessor<int64_t, 1>();
        for (size_t i = 0; i < live.size(); i++)
            next[i] = acc[(int64_t)i];
    }
    for (size_t i = 0; i < live.size(); i++) {
        BRow &r = q.rows[live[i]];
        r.seq.push_back(next[i]);
        r.fin = ends_row(m, r.seq, r.maxl, &r.why);
        if (q.cb && q.cb(q.user, live[i], r.seq.data() + r.prompt, r.seq.size() - (size_t)r.prompt,
                         r.fin ? 1 : 0) != 0 &&
            !r.fin) {
            r.fin = true;
            r.why = MM_GEN_FINISH_STOPPED;
        }
        if (r.fin)
            r.s = CausalSeq(); /* its cache goes back now */
    }
    bool all = true;
    for (const BRow &r : q.rows)
        all = all && r.fin;
    q.done = all;
}

/* The C result block for outputs o (sequences start with a placeholder). */
mm_torch_gen_result *make_result(const Model &m, const Output &o, int64_t nrs) {
    size_t total = 0;
    for (const auto &s : o.seqs)
        total += s.size() - 1;
    size_t nseq = o.seqs.size();
    size_t bytes = sizeof(mm_torch_gen_result) + (nseq + 1) * sizeof(size_t) +
                   nseq * sizeof(float) + 8 + total * sizeof(int64_t) + nseq;
    char *blk = (char *)std::malloc(bytes);
    if (!blk)
        throw std::bad_alloc();
    auto *res = (mm_torch_gen_result *)blk;
    size_t *offs = (size_t *)(blk + sizeof(mm_torch_gen_result));
    float *sc = (float *)(offs + nseq + 1);
    uintptr_t a = (uintptr_t)(sc + nseq);
    a = (a + 7) & ~(uintptr_t)7;
    int64_t *idsout = (int64_t *)a;
    uint8_t *fin = (uint8_t *)(idsout + total);
    size_t k = 0;
    for (size_t i = 0; i < nseq; i++) {
        offs[i] = k;
        sc[i] = o.scores[i];
        if (!o.finish.empty())
            fin[i] = o.finish[i];
        else /* beam search: a finished hypothesis ends with EOS */
            fin[i] = o.seqs[i].size() > 1 && is_eos(m, o.seqs[i].back()) ? MM_GEN_FINISH_EOS
                                                                           : MM_GEN_FINISH_LENGTH;
        const auto &s = o.seqs[i];
        for (size_t j = 1; j < s.size(); j++)
            idsout[k++] = s[j];
    }
    offs[nseq] = k;
    res->n_sequences = nseq;
    res->num_return_sequences = (size_t)nrs;
    res->ids = idsout;
    res->offsets = offs;
    res->scores = sc;
    res->finish = fin;
    return res;
}

} // namespace

/* ---- C ABI ---- */

MMT_API int mm_torch_gen_abi_version(void) { return MM_TORCH_GEN_ABI_VERSION; }

MMT_API void mm_torch_gen_default_load_params(mm_torch_gen_load_params *p) {
    if (!p)
        return;
    p->device = "cpu";
    p->dtype = "auto";
    p->num_threads = 0;
}

MMT_API int mm_torch_gen_load(const char *dir, const mm_torch_gen_load_params *p,
                              mm_torch_gen_t **out, char *err, size_t errlen) {
    if (out)
        *out = nullptr;
    return guard(err, errlen, [&] {
        if (!dir || !*dir || !out)
            fail(MM_EINVAL, "mm_torch_gen_load: no model directory");
        mm_torch_gen_load_params def;
        mm_torch_gen_default_load_params(&def);
        if (!p)
            p = &def;
        at::Device device = parse_device(p->device);
        /* The architecture decides the "auto" dtype; read it first. */
        JsonPtr cfg = read_json(join_path(dir, "config.json"), true);
        std::string arch = arch_of(cfg.get());
        std::string dtype_name;
        at::ScalarType dtype =
            parse_dtype(p->dtype ? p->dtype : "auto", device.is_cuda(), arch, &dtype_name);
        if (!device.is_cuda() && dtype == at::kHalf)
            fail(MM_EUNSUPPORTED, "float16 on the CPU is not supported; use float32 or bfloat16");
        if (!device.is_cuda() && dtype == at::kBFloat16 && !cpu_has_bf16())
            fail(MM_EUNSUPPORTED,
                 "dtype bfloat16 on the CPU needs AVX512_BF16 or AMX-BF16, which this CPU lacks "
                 "(libtorch would emulate it, slower than float32); use float32");
        if (p->num_threads > 0)
            at::set_num_threads(p->num_threads);
        std::string key = std::string(dir) + "|" + device.str() + "|" + dtype_name;
        bool loaded_it = false;
        std::shared_ptr<Model> model =
            g_models.get(key, dir, device, dtype, dtype_name, load_model, &loaded_it);
        auto *h = new mm_torch_gen;
        h->model = std::move(model);
        *out = h;
        return 0;
    });
}

MMT_API int mm_torch_gen_info_get(const mm_torch_gen_t *h, mm_torch_gen_info *info) {
    if (!h || !info)
        return MM_EINVAL;
    const Model &m = *h->model;
    memset(info, 0, sizeof *info);
    info->arch = m.arch.c_str();
    info->device = m.device_name.c_str();
    info->dtype = m.dtype_name.c_str();
    info->vocab_size = m.vocab;
    info->decoder_start_token_id = m.decoder_start;
    info->eos_token_id = m.eos.empty() ? -1 : m.eos[0];
    info->pad_token_id = m.pad;
    info->bos_token_id = m.bos;
    info->max_input_length = m.max_input_length;
    info->hard_input_limit = m.hard_input_limit;
    info->max_length_limit = m.max_length_limit;
    info->memory_bytes = m.weights.bytes;
    return 0;
}

MMT_API void mm_torch_gen_default_params(const mm_torch_gen_t *h, mm_torch_gen_params *p) {
    if (!p)
        return;
    if (h)
        *p = h->model->defaults;
    else
        global_defaults(p);
}

MMT_API int mm_torch_gen_check_params(const mm_torch_gen_t *h, const mm_torch_gen_params *p,
                                      char *err, size_t errlen) {
    return guard(err, errlen, [&] {
        if (!h || !p)
            fail(MM_EINVAL, "mm_torch_gen_check_params: no model or no params");
        Resolved r;
        check_params(*h->model, p, &r);
        return 0;
    });
}

MMT_API int mm_torch_gen_run(mm_torch_gen_t *h, const int64_t *const *ids, const size_t *lens,
                             size_t n_inputs, const mm_torch_gen_params *p,
                             mm_torch_gen_result **out, char *err, size_t errlen) {
    return mm_torch_gen_run_cb(h, ids, lens, n_inputs, p, nullptr, nullptr, out, err, errlen);
}

MMT_API int mm_torch_gen_run_cb(mm_torch_gen_t *h, const int64_t *const *ids, const size_t *lens,
                                size_t n_inputs, const mm_torch_gen_params *p,
                                mm_torch_gen_token_cb cb, void *user, mm_torch_gen_result **out,
                                char *err, size_t errlen) {
    if (out)
        *out = nullptr;
    return guard(err, errlen, [&] {
        if (!h || !out || (n_inputs > 0 && (!ids || !lens)))
            fail(MM_EINVAL, "mm_torch_gen_run: missing handle, inputs or output");
        if (n_inputs == 0)
            fail(MM_EINVAL, "mm_torch_gen_run: no inputs");
        const Model &m = *h->model;
        mm_torch_gen_params def;
        if (!p) {
            def = m.defaults;
            p = &def;
        }
        Resolved r;
        check_params(m, p, &r);
        Output o;
        Hook hook;
        hook.cb = cb;
        hook.user = user;
        hook.nrs = r.nb > 1 ? r.nrs : (r.sample ? r.nrs : 1);
        generate_split(m, r, ids, lens, n_inputs, hook, &o);
        mm_torch_gen_result *res = make_result(m, o, r.nrs);
        *out = res;
        return 0;
    });
}

MMT_API void mm_torch_gen_result_free(mm_torch_gen_result *r) { std::free(r); }

MMT_API void mm_torch_gen_free(mm_torch_gen_t *h) {
    if (!h)
        return;
    std::shared_ptr<Model> m = std::move(h->model);
    delete h;
    if (!m)
        return;
    char err[8];
    guard(err, sizeof err, [&] {
        const std::string key = m->key;
        g_models.put(std::move(m), key);
        return 0;
    });
}

/* ---- continuous batching: C ABI ---- */

struct mm_torch_gen_batch {
    std::shared_ptr<Model> model;
    std::deque<std::unique_ptr<BReq>> reqs; /* arrival order */
    uint64_t next_id = 1;
    ~mm_torch_gen_batch() {
        for (auto &q : reqs)
            model->kv_used.fetch_sub(q->blocks);
    }
};

MMT_API int mm_torch_gen_kv_budget(mm_torch_gen_t *h, uint64_t budget_bytes) {
    if (!h || !h->model->lm)
        return MM_EINVAL;
    Model &m = *h->model;
    int64_t blocks = m.kv_block_bytes ? (int64_t)(budget_bytes / m.kv_block_bytes) : 0;
    if (budget_bytes > 0 && blocks < 1)
        blocks = 1;
    m.kv_total.store(blocks);
    return 0;
}

MMT_API int mm_torch_gen_kv_get(const mm_torch_gen_t *h, mm_torch_gen_kv *kv) {
    if (!h || !kv)
        return MM_EINVAL;
    const Model &m = *h->model;
    kv->block_positions = kBlock;
    kv->block_bytes = m.kv_block_bytes;
    kv->total_blocks = m.kv_total.load();
    kv->used_blocks = m.kv_used.load();
    return 0;
}

MMT_API int mm_torch_gen_batch_new(mm_torch_gen_t *h, mm_torch_gen_batch_t **out, char *err,
                                   size_t errlen) {
    if (out)
        *out = nullptr;
    return guard(err, errlen, [&] {
        if (!h || !out)
            fail(MM_EINVAL, "mm_torch_gen_batch_new: no handle or no output");
        if (!h->model->lm)
            fail(MM_EINVAL, "continuous batching serves decoder-only models; %s is %s",
                 h->model->dir.c_str(), h->model->arch.c_str());
        auto *b = new mm_torch_gen_batch;
        b->model = h->model;
        *out = b;
        return 0;
    });
}

MMT_API int mm_torch_gen_batch_add(mm_torch_gen_batch_t *b, const int64_t *ids, size_t len,
                                   const mm_torch_gen_params *p, mm_torch_gen_token_cb cb,
                                   void *user, uint64_t *req, char *err, size_t errlen) {
    return guard(err, errlen, [&] {
        if (!b || !p || !req)
            fail(MM_EINVAL, "mm_torch_gen_batch_add: missing batch, params or output");
        Model &m = *b->model;
        Resolved P;
        check_params(m, p, &P);
        const int64_t *one[1] = {ids};
        check_inputs(m, one, &len, 1);
        const int64_t nrs = P.sample ? P.nrs : 1;
        const int64_t need = kv_blocks_for(P, (int64_t)len, nrs);
        const int64_t total = m.kv_total.load();
        if (total > 0 && need > total) {
            const double mib = (double)m.kv_block_bytes / 1048576.0;
            fail(MM_ENOSPACE,
                 "the request needs %lld KV-cache blocks (%zu prompt tokens + %lld new tokens%s, "
                 "%lld positions a block, %.2f MiB), more than the model's whole KV budget of "
                 "%lld blocks (%.2f MiB; see generation.kv_cache_mb)",
                 (long long)need, len,
                 (long long)(P.max_new >= 0 ? P.max_new : P.max_length - (int64_t)len),
                 nrs > 1 ? ", times num_return_sequences" : "", (long long)kBlock,
                 (double)need * mib, (long long)total, (double)total * mib);
        }
        if (!kv_take(m, need))
            return (int)MM_EBUSY; /* not now: the caller keeps it waiting */
        auto q = std::make_unique<BReq>();
        q->id = b->next_id++;
        q->P = P;
        q->nrs = nrs;
        q->prompt.assign(ids, ids + len);
        q->cb = cb;
        q->user = user;
        q->blocks = need;
        if (P.sample)
            q->gen = make_gen(P.seed);
        q->rows.resize((size_t)nrs);
        *req = q->id;
        b->reqs.push_back(std::move(q));
        return 0;
    });
}

MMT_API int mm_torch_gen_batch_step(mm_torch_gen_batch_t *b, int64_t max_prefill_tokens,
                                    uint64_t *done, size_t cap, size_t *n_done, char *err,
                                    size_t errlen) {
    if (n_done)
        *n_done = 0;
    return guard(err, errlen, [&] {
        if (!b || !n_done || (cap && !done))
            fail(MM_EINVAL, "mm_torch_gen_batch_step: missing batch or output");
        c10::InferenceMode im;
        Model &m = *b->model;
        const CausalLM &lm = *m.lm;
        /* 1. one decoder step for every running row */
        std::vector<CausalSeq *> st;
        std::vector<int64_t> last;
        std::vector<std::pair<BReq *, int64_t>> owner; /* request, its live rows */
        for (auto &qp : b->reqs) {
            BReq &q = *qp;
            if (!q.prefilled || q.done)
                continue;
            int64_t k = 0;
            for (BRow &r : q.rows)
                if (!r.fin) {
                    st.push_back(&r.s);
                    last.push_back(r.seq.back());
                    k++;
                }
            owner.emplace_back(&q, k);
        }
        /* 2. newcomers to prefill within the round's budget (at least one) */
        std::vector<BReq *> pre;
        int64_t used = 0;
        for (auto &qp : b->reqs) {
            BReq &q = *qp;
            if (q.prefilled)
                continue;
            const int64_t n = (int64_t)q.prompt.size();
            if (used > 0 && max_prefill_tokens > 0 && used + n > max_prefill_tokens)
                break;
            used += n;
            pre.push_back(&q);
        }
        auto prefill = [&](BReq &q) {
            const int64_t n = (int64_t)q.prompt.size();
            BRow &r0 = q.rows[0];
            const int64_t maxl =
                std::max(q.P.max_new >= 0 ? n + q.P.max_new : q.P.max_length, n + 1);
            r0.s.limit = maxl;
            at::Tensor lg = lm.prefill(r0.s, q.prompt.data(), n);
            for (int64_t j = 0; j < q.nrs; j++) {
                BRow &r = q.rows[(size_t)j];
                if (j > 0)
                    lm.fork(r0.s, r.s);
                r.seq = q.prompt;
                r.prompt = n;
                r.maxl = maxl;
            }
            q.logits = q.nrs > 1 ? lg.repeat_interleave(q.nrs, 0) : lg;
            q.prefilled = true;
        };
        /* The step's rows in pieces: on the CPU at least one per intra-op
         * thread and none over MMT_SKINNY_MAX_ROWS rows, each piece (and each
         * prefill) single-threaded on its own thread (run_pieces), as
         * generate_split runs groups: a decoder step is many small operators
         * whose barriers cost more than they gain on a loaded machine. */
        const bool cpu = m.device.is_cpu();
        const size_t R = st.size(), nt = (size_t)std::max(1, at::get_num_threads());
        size_t np = 0;
        if (R > 0) {
            np = cpu ? std::max(nt, (R + MMT_SKINNY_MAX_ROWS - 1) / MMT_SKINNY_MAX_ROWS) : 1;
            np = std::min(np, R);
        }
        std::vector<at::Tensor> parts(np);
        auto piece = [&](size_t k) {
            size_t i = k * R / np, j = (k + 1) * R / np;
            std::vector<CausalSeq *> ps(st.begin() + (ptrdiff_t)i, st.begin() + (ptrdiff_t)j);
            std::vector<int64_t> pl(last.begin() + (ptrdiff_t)i, last.begin() + (ptrdiff_t)j);
            parts[k] = lm.step(ps, pl);
        };
        std::vector<size_t> order(pre.size() + np);
        for (size_t w = 0; w < order.size(); w++)
            order[w] = w; /* prefills (the bigger pieces) first */
        auto work = [&](size_t w) {
            if (w < pre.size())
                prefill(*pre[w]);
            else
                piece(w - pre.size());
        };
        if (cpu && order.size() > 1)
            run_pieces((int)nt, order, work);
        else
            for (size_t w : order)
                work(w);
        if (R > 0) {
            at::Tensor lg = parts.size() == 1 ? parts[0] : at::cat(parts, 0);
            int64_t off = 0;
            for (auto &o : owner) {
                o.first->logits = lg.narrow(0, off, o.second);
                off += o.second;
            }
        }
        /* 3. each request's decision, in its own processors and stream */
        std::vector<int64_t> next;
        for (auto &qp : b->reqs) {
            BReq &q = *qp;
            if (!q.logits.defined() || q.done)
                continue;
            at::Tensor lg = q.logits;
            q.logits = at::Tensor();
            decide(m, q, lg, next);
        }
        size_t k = 0;
        for (auto &qp : b->reqs)
            if (qp->done && k < cap)
                done[k++] = qp->id;
        *n_done = k;
        return 0;
    });
}

MMT_API int mm_torch_gen_batch_result(mm_torch_gen_batch_t *b, uint64_t req,
                                      mm_torch_gen_result **out, char *err, size_t errlen) {
    if (out)
        *out = nullptr;
    return guard(err, errlen, [&] {
        if (!b || !out)
            fail(MM_EINVAL, "mm_torch_gen_batch_result: missing batch or output");
        for (auto it = b->reqs.begin(); it != b->reqs.end(); ++it) {
            BReq &q = **it;
            if (q.id != req)
                continue;
            if (!q.done)
                fail(MM_EINVAL, "request %llu has not finished", (unsigned long long)req);
            Output o;
            for (BRow &r : q.rows) {
                std::vector<int64_t> s{-1};
                s.insert(s.end(), r.seq.begin() + r.prompt, r.seq.end());
                o.seqs.push_back(std::move(s));
                o.finish.push_back(r.why);
            }
            o.scores.assign(o.seqs.size(), 0.0f);
            *out = make_result(*b->model, o, q.nrs);
            b->model->kv_used.fetch_sub(q.blocks);
            b->reqs.erase(it);
            return 0;
        }
        fail(MM_EINVAL, "no request %llu in this batch", (unsigned long long)req);
        return 0;
    });
}

MMT_API void mm_torch_gen_batch_drop(mm_torch_gen_batch_t *b, uint64_t req) {
    if (!b)
        return;
    for (auto it = b->reqs.begin(); it != b->reqs.end(); ++it)
        if ((*it)->id == req) {
            b->model->kv_used.fetch_sub((*it)->blocks);
            b->reqs.erase(it); /* its caches go with it */
            return;
        }
}

MMT_API size_t mm_torch_gen_batch_size(const mm_torch_gen_batch_t *b) {
    return b ? b->reqs.size() : 0;
}

MMT_API void mm_torch_gen_batch_free(mm_torch_gen_batch_t *b) {
    char err[8];
    guard(err, sizeof err, [&] {
        delete b;
        return 0;
    });
}
