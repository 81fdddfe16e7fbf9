/* embed.cpp: BERT-family encoders and the sentence-transformers pipeline,
 * exported through the C ABI in mm_torch.h.
 *
 * One Encoder type runs all four architectures, because they are the same
 * post-LayerNorm transformer and differ only in weight names, in how
 * position ids are made (RoBERTa, XLM-R and MPNet count from pad_id + 1 over
 * non-pad tokens) and in MPNet's relative position bias, which is added to
 * the attention mask.  Q, K and V are fused into one matrix at load, so a
 * layer is four GEMMs; attention is at::scaled_dot_product_attention with
 * an additive mask.  Everything runs under c10::InferenceMode.  On the CPU
 * in float32 the four weights are prepacked for oneDNN at load (GELU fused
 * into the up-projection), and a padded batch's GEMMs run on its real tokens
 * only.  mm_torch_embed_many runs whole batches concurrently, one thread
 * each, instead of splitting every operator across threads.
 *
 * The pipeline after the encoder follows modules.json: Pooling (modes in the
 * file's order; legacy pooling_mode_* flags in sentence-transformers' fixed
 * order), then Dense and Normalize steps.  A trailing Normalize is not run
 * here unconditionally: the caller's `normalize` argument decides (-1 keeps
 * the model's choice), so a task may ask for raw vectors.
 *
 * Weight sharing: loaded models live in a process-wide table
 * (mmt_registry.h), so N CPU workers of a model share one copy and the last
 * free drops it; two workers that load the same model at once load it once.
 */
#include "mm_torch.h"
#include "mmt_common.h"
#include "mmt_int8.h"
#include "mmt_registry.h"
#include "mmt_threads.h"
#include "st_loader.h"

#include <ATen/Context.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <c10/core/CachingDeviceAllocator.h>
#include <c10/core/InferenceMode.h>
#include <torch/version.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <optional>
#include <mutex>
#include <vector>


namespace mmt {
namespace {

enum class Arch { Bert, Roberta, DistilBert, MPNet };
enum class Act { Gelu, GeluTanh, Relu, Silu, Tanh, Identity, Sigmoid };

Act parse_act(const std::string &s, const char *what) {
    if (s == "gelu" || s == "gelu_python" || s == "torch.nn.modules.activation.GELU")
        return Act::Gelu;
    if (s == "gelu_new" || s == "gelu_pytorch_tanh" || s == "gelu_fast")
        return Act::GeluTanh;
    if (s == "relu" || s == "torch.nn.modules.activation.ReLU")
        return Act::Relu;
    if (s == "silu" || s == "swish" || s == "torch.nn.modules.activation.SiLU")
        return Act::Silu;
    if (s == "tanh" || s == "torch.nn.modules.activation.Tanh")
        return Act::Tanh;
    if (s == "sigmoid" || s == "torch.nn.modules.activation.Sigmoid")
        return Act::Sigmoid;
    if (s == "linear" || s == "identity" || s == "torch.nn.modules.linear.Identity")
        return Act::Identity;
    fail(MM_EUNSUPPORTED, "%s: unsupported activation %s", what, s.c_str());
}

at::Tensor act(Act a, const at::Tensor &x) {
    switch (a) {
    case Act::Gelu: return at::gelu(x);
    case Act::GeluTanh: return at::gelu(x, "tanh");
    case Act::Relu: return at::relu(x);
    case Act::Silu: return at::silu(x);
    case Act::Tanh: return at::tanh(x);
    case Act::Sigmoid: return at::sigmoid(x);
    case Act::Identity: return x;
    }
    return x;
}

/* CPU GEMM row counts (issue 12).  oneDNN keeps one primitive per problem
 * shape in its process-wide cache (up to 1,024 of them, about 570 KiB each
 * for MiniLM's layers, measured), and so does every other oneDNN-backed
 * product (bfloat16 at::linear, int8's at::_int_mm).  Varied text lengths
 * made a new row count for nearly every batch: unbounded growth first, then
 * with row counts bucketed 8 per doubling still ~190 primitives that rare
 * lengths kept adding for 100,000 tasks (+14% RSS from 10k to 100k).  So the
 * rows are padded to a multiple of 8 (gemm_rows) and a GEMM of more than 64
 * rows runs as chunks of 2,048, 1,024, ..., 64 rows plus one tail of 8 to 56
 * (gemm_chunk): 13 row counts per weight, all of them seen within the first
 * few hundred batches, however the lengths vary.  Rows are independent, so
 * no vector changes. */
static constexpr int64_t kChunkMax = 2048;

static int64_t gemm_rows(int64_t t) { return (t + 7) / 8 * 8; }

/* The rows of the next chunk when rem rows are left. */
static int64_t gemm_chunk(int64_t rem) {
    if (rem < 64)
        return rem;
    int64_t p = 64;
    while (p * 2 <= rem && p * 2 <= kChunkMax)
        p *= 2;
    return p;
}

/* oneDNN's prepacked linear (mkldnn::_linear_pointwise over a weight
 * reordered once by mkldnn::_reorder_linear_weight): on the CPU in float32
 * about 10% faster than at::linear, which repacks the weight for MKL on
 * every call, and it can fuse the GELU that follows.  Called boxed through
 * the dispatcher because these ops have no C++ front end; a libtorch built
 * without oneDNN lacks them, and then weights stay as they are. */
struct PackedOps {
    c10::OperatorHandle linear, reorder;
    std::optional<c10::OperatorHandle> linear_add; /* the .binary overload, residual fused */
    static const PackedOps *get() {
        static const PackedOps *ops = [] () -> const PackedOps * {
            auto &d = c10::Dispatcher::singleton();
            auto l = d.findOp({"mkldnn::_linear_pointwise", ""});
            auto r = d.findOp({"mkldnn::_reorder_linear_weight", ""});
            if (!l || !r || !at::hasMKLDNN())
                return nullptr;
            return new PackedOps{*l, *r, d.findOp({"mkldnn::_linear_pointwise", "binary"})};
        }();
        return ops;
    }
};

struct Linear {
    at::Tensor w, b;
    at::Tensor packed; /* defined: w was reordered for oneDNN and dropped */
    Int8Linear q;      /* defined: dtype "int8", w and b were quantized and dropped */

    /* attr: "none", or "gelu" with algorithm "none" (erf) or "tanh" (fused
     * into a prepacked GEMM); post: an activation applied after it (ATen runs
     * some through oneDNN, a primitive per shape too).  On the CPU, rows
     * [T, in] run in gemm_chunk pieces (see above). */
    at::Tensor operator()(const at::Tensor &x, const char *attr = "none",
                          const char *algorithm = "none", Act post = Act::Identity) const {
        const int64_t T = x.dim() == 2 ? x.size(0) : 0;
        if (T <= 64 || !x.device().is_cpu())
            return act(post, one(x, attr, algorithm));
        std::vector<at::Tensor> parts;
        for (int64_t r = 0; r < T;) {
            const int64_t n = gemm_chunk(T - r);
            parts.push_back(act(post, one(x.narrow(0, r, n), attr, algorithm)));
            r += n;
        }
        return parts.size() == 1 ? parts[0] : at::cat(parts);
    }

    /* One GEMM call, whatever the row count. */
    at::Tensor one(const at::Tensor &x, const char *attr = "none",
                   const char *algorithm = "none") const {
        if (q.defined())
            return q.forward(x, strcmp(attr, "gelu") ? MMT_Q8_NONE
                                : strcmp(algorithm, "tanh") ? MMT_Q8_GELU
                                                            : MMT_Q8_GELU_TANH,
                             at::Tensor());
        if (!packed.defined())
            return at::linear(x, w, b);
        torch::jit::Stack st{x, packed, b, std::string(attr),
                             c10::List<std::optional<at::Scalar>>(), std::string(algorithm)};
        PackedOps::get()->linear.callBoxed(&st);
        return st[0].toTensor();
    }

    /* x W^T + b + res for one chunk (res shaped like the result): fused into
     * the product where the weight is packed (oneDNN's binary add post-op on
     * the finished sum) or quantized. */
    at::Tensor add_one(const at::Tensor &x, const at::Tensor &res) const {
        if (q.defined())
            return q.forward(x, MMT_Q8_NONE, res);
        const PackedOps *ops = packed.defined() ? PackedOps::get() : nullptr;
        if (!ops || !ops->linear_add || x.dim() != 2 || !res.is_contiguous())
            return one(x, "none", "none") + res;
        torch::jit::Stack st{x, res, packed, b, std::string("add")};
        ops->linear_add->callBoxed(&st);
        return st[0].toTensor();
    }

    /* True when fuse_gelu can run GELU inside the product. */
    bool fuses_gelu() const { return packed.defined() || q.defined(); }

    /* Reorders the weight for oneDNN (CPU float32 only); false leaves it. */
    bool pack() {
        const PackedOps *ops = PackedOps::get();
        if (!ops || !w.device().is_cpu() || w.scalar_type() != at::kFloat)
            return false;
        torch::jit::Stack st{w.contiguous(), c10::IValue()};
        ops->reorder.callBoxed(&st);
        packed = st[0].toTensor();
        w = at::Tensor();
        return true;
    }

    /* dtype "int8": quantizes w per output feature (mmt_int8.h); returns the
     * bytes this saves. */
    uint64_t quantize_int8() {
        const uint64_t before = (uint64_t)w.numel() * w.element_size() +
                                (b.defined() ? (uint64_t)b.numel() * b.element_size() : 0);
        q = Int8Linear::quantize(w, b);
        w = b = at::Tensor();
        return before > q.bytes() ? before - q.bytes() : 0;
    }
};

struct Norm {
    at::Tensor w, b;
    double eps = 1e-12;
    at::Tensor operator()(const at::Tensor &x) const {
        return at::layer_norm(x, {w.size(0)}, w, b, eps);
    }
};

struct Layer {
    Linear qkv, out, up, down;
    Norm ln_attn, ln_out;
};

struct Encoder {
    Arch arch = Arch::Bert;
    std::string arch_name;
    int64_t hidden = 0, heads = 0, n_layers = 0, ffn = 0, max_pos = 0;
    int64_t pad_id = 0, pos_offset = 0; /* positions start at pos_offset (pad+1 for RoBERTa) */
    double eps = 1e-12;
    Act hidden_act = Act::Gelu;
    at::Tensor word, pos, type, rel_bias; /* rel_bias: MPNet [buckets, heads] */
    Norm emb_ln;
    std::vector<Layer> layers;

    /* ids, mask, type_ids: [B, L] int64 on the device.  Returns [B, L, H]. */
    at::Tensor forward(const at::Tensor &ids, const at::Tensor &mask,
                       const at::Tensor &type_ids) const {
        const int64_t B = ids.size(0), L = ids.size(1), d = hidden / heads;
        at::Tensor pos_ids;
        if (arch == Arch::Roberta || arch == Arch::MPNet) {
            at::Tensor m = ids.ne(pad_id).to(at::kLong);
            pos_ids = at::cumsum(m, 1) * m + pad_id;
        } else {
            pos_ids = at::arange(L, ids.options()).unsqueeze(0).expand({B, L});
        }
        at::Tensor x = at::embedding(word, ids) + at::embedding(pos, pos_ids);
        if (type.defined())
            x = x + (type_ids.defined() ? at::embedding(type, type_ids) : type[0]);
        x = emb_ln(x);

        /* Additive attention mask [B, 1, 1, L]: 0 keeps a key, -inf drops it.
         * The finite minimum (as transformers uses) keeps fully masked rows
         * NaN-free. */
        const double neg = x.scalar_type() == at::kFloat ? -3.4028234663852886e38
                           : x.scalar_type() == at::kHalf ? -65504.0
                                                          : -3.38953139e38;
        at::Tensor bias = (1 - mask.to(x.scalar_type())).mul(neg).view({B, 1, 1, L});
        if (arch == Arch::MPNet)
            bias = bias + mpnet_bias(L, x);

        /* Unpadded on the CPU: the GEMMs, LayerNorms and activations (nearly
         * all the work) run on the real tokens only, packed [T, H]; only
         * attention sees the padded [B, L] layout, its pad rows zero and its
         * pad keys masked.  A row's GEMM result does not depend on the other
         * rows, so this changes no vector, only the cost of padding. */
        /* The row count of the GEMMs is a multiple of 8 (gemm_rows), and
         * Linear runs it in a few fixed chunk sizes, so oneDNN's primitive
         * cache stays small however lengths vary (issue 12; see gemm_chunk).
         * The extra rows repeat the last token and are dropped. */
        at::Tensor idx, gidx;
        int64_t T = B * L;
        if (x.device().is_cpu()) {
            idx = mask.sum().item<int64_t>() < B * L
                      ? mask.reshape({B * L}).nonzero().squeeze(1)
                      : at::arange(B * L, ids.options());
            T = idx.size(0);
            const int64_t Tb = gemm_rows(T);
            gidx = Tb > T ? at::cat({idx, idx.narrow(0, T - 1, 1).expand({Tb - T})}) : idx;
            x = x.reshape({B * L, hidden}).index_select(0, gidx);
        }
        auto pad = [&](const at::Tensor &t) {
            if (!idx.defined())
                return t;
            return at::zeros({B * L, t.size(1)}, t.options()).index_copy_(0, idx, t.narrow(0, 0, T));
        };
        /* The FFN half of a layer: x + attention output -> LayerNorm -> FFN
         * -> LayerNorm, row by row. */
        auto ffn = [&](const Layer &ly, const at::Tensor &ctx, const at::Tensor &xin) {
            at::Tensor a = ly.ln_attn(ly.out.add_one(ctx, xin));
            at::Tensor h = ly.up.fuses_gelu() && hidden_act == Act::Gelu
                               ? ly.up.one(a, "gelu", "none")
                           : ly.up.fuses_gelu() && hidden_act == Act::GeluTanh
                               ? ly.up.one(a, "gelu", "tanh")
                               : act(hidden_act, ly.up.one(a));
            return ly.ln_out(ly.down.add_one(h, a));
        };
        if (!idx.defined()) { /* a GPU: whole padded tensors */
            for (const Layer &ly : layers) {
                at::Tensor qkv = ly.qkv.one(x).view({B, L, 3, heads, d}).permute({2, 0, 3, 1, 4});
                at::Tensor ctx = at::scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], bias);
                x = ffn(ly, ctx.transpose(1, 2).reshape({B, L, hidden}), x);
            }
            return x;
        }
        /* The CPU: every row-wise step runs chunk by chunk (gemm_chunk), so
         * each GEMM sees one of the fixed row counts; the qkv chunks land
         * straight in the padded layout attention reads, and only the
         * hidden-wide layer output is assembled. */
        const int64_t Tb = x.size(0);
        for (const Layer &ly : layers) {
            at::Tensor qkvp = at::zeros({B * L, 3 * hidden}, x.options());
            for (int64_t r = 0, n; r < T; r += n) {
                n = gemm_chunk(Tb - r);
                const int64_t real = std::min(n, T - r);
                qkvp.index_copy_(0, idx.narrow(0, r, real),
                                 ly.qkv.one(x.narrow(0, r, n)).narrow(0, 0, real));
            }
            at::Tensor qkv = qkvp.view({B, L, 3, heads, d}).permute({2, 0, 3, 1, 4});
            at::Tensor ctx = at::scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], bias);
            ctx = ctx.transpose(1, 2).reshape({B * L, hidden}).index_select(0, gidx);
            at::Tensor nx = at::empty_like(x);
            for (int64_t r = 0, n; r < Tb; r += n) {
                n = gemm_chunk(Tb - r);
                nx.narrow(0, r, n).copy_(ffn(ly, ctx.narrow(0, r, n), x.narrow(0, r, n)));
            }
            x = nx;
        }
        return pad(x).view({B, L, hidden});
    }

    /* MPNet relative position bias [1, heads, L, L] (transformers'
     * relative_position_bucket with 32 buckets, max_distance 128). */
    at::Tensor mpnet_bias(int64_t L, const at::Tensor &like) const {
        const int64_t nb = 32 / 2, max_exact = nb / 2, max_distance = 128;
        at::Tensor r = at::arange(L, at::TensorOptions().dtype(at::kLong));
        at::Tensor rel = r.unsqueeze(0) - r.unsqueeze(1); /* memory - context */
        at::Tensor n = -rel;
        at::Tensor ret = n.lt(0).to(at::kLong) * nb;
        n = n.abs();
        at::Tensor is_small = n.lt(max_exact);
        at::Tensor large =
            max_exact + (at::log(n.to(at::kFloat) / (double)max_exact) /
                         std::log((double)max_distance / (double)max_exact) *
                         (double)(nb - max_exact))
                            .to(at::kLong);
        large = at::clamp_max(large, nb - 1);
        ret = ret + at::where(is_small, n, large);
        at::Tensor v = at::embedding(rel_bias, ret.to(like.device())); /* [L, L, heads] */
        return v.permute({2, 0, 1}).unsqueeze(0).to(like.scalar_type());
    }
};

enum class Pool { Cls, Max, Mean, MeanSqrt, WeightedMean, LastToken };

struct Step {
    bool is_dense = false; /* else Normalize */
    Linear lin;
    Act act = Act::Identity;
};

struct Model {
    std::string key, dir;
    at::Device device{at::kCPU};
    at::ScalarType dtype = at::kFloat;
    Weights weights;
    Encoder enc;
    std::vector<Pool> pools;
    std::string pooling_name;
    bool include_prompt = true;
    bool head = false; /* ...ForSequenceClassification head instead of the ST pipeline */
    std::vector<Step> steps; /* after pooling; a trailing Normalize is cut off */
    bool normalize = false;  /* ...and recorded here */
    int64_t dim = 0, max_seq_length = 0;
    bool do_lower_case = false;
    std::string prompts_json = "{}", default_prompt_name, device_name, dtype_name;
    uint64_t memory_bytes = 0;

    ~Model() {
        /* Tensors go first, then the device's cache gives the memory back. */
        bool cuda = device.is_cuda();
        weights.tensors.clear();
        enc = Encoder();
        steps.clear();
        if (cuda) {
            try {
                c10::getDeviceAllocator(at::kCUDA)->emptyCache();
            } catch (...) {
            }
        }
    }
};

/* ---- loading ---- */

std::string module_kind(const std::string &type) {
    size_t dot = type.rfind('.');
    return dot == std::string::npos ? type : type.substr(dot + 1);
}

/* A ...ForSequenceClassification head after the first token, as transformers
 * runs it (dropout is off at inference): BERT's pooler (dense + tanh) and
 * classifier; RoBERTa / XLM-R's classifier.dense + tanh and out_proj;
 * DistilBERT's pre_classifier + ReLU and classifier.  The output is the
 * logits (num_labels); the caller applies the activation. */
void load_head(Model &m, const json_t *c, const std::string &dir) {
    const Weights &w = m.weights;
    const int64_t H = m.enc.hidden;
    std::string first, second;
    Act mid = Act::Tanh;
    if (m.enc.arch == Arch::Bert) {
        first = "pooler.dense";
        second = "classifier";
    } else if (m.enc.arch == Arch::Roberta) {
        first = "classifier.dense";
        second = "classifier.out_proj";
    } else if (m.enc.arch == Arch::DistilBert) {
        first = "pre_classifier";
        second = "classifier";
        mid = Act::Relu;
    } else {
        fail(MM_EARCH, "%s: no native classification head for %s", dir.c_str(),
             m.enc.arch_name.c_str());
    }
    json_t *archs = jget(c, "architectures");
    const char *a0 = json_is_array(archs) ? json_string_value(json_array_get(archs, 0)) : NULL;
    std::string arch = a0 ? a0 : "";
    const std::string suffix = "ForSequenceClassification";
    if (arch.size() < suffix.size() ||
        arch.compare(arch.size() - suffix.size(), suffix.size(), suffix) != 0 ||
        !w.has(second + ".weight"))
        fail(MM_EARCH, "%s is %s, not a ...ForSequenceClassification model with a %s head",
             dir.c_str(), arch.empty() ? "(no architectures)" : arch.c_str(), second.c_str());
    Step s1, s2;
    s1.is_dense = s2.is_dense = true;
    s1.lin = {w.get(first + ".weight", {H, H}), w.get(first + ".bias", {H}), {}, {}};
    s1.act = mid;
    at::Tensor out_w = w.get(second + ".weight");
    if (out_w.dim() != 2 || out_w.size(1) != H)
        fail(MM_ELOAD, "%s.weight in %s is not [num_labels, %lld]", second.c_str(), dir.c_str(),
             (long long)H);
    s2.lin = {out_w, w.get(second + ".bias", {out_w.size(0)}), {}, {}};
    for (const Step *st : {&s1, &s2})
        m.memory_bytes += (uint64_t)(st->lin.w.numel() + st->lin.b.numel()) * st->lin.w.element_size();
    m.steps = {std::move(s1), std::move(s2)};
}

void load_encoder(Model &m, const std::string &dir) {
    JsonPtr cfg = read_json(join_path(dir, "config.json"), true);
    const json_t *c = cfg.get();
    std::string mt = jstr(c, "model_type", "");
    Encoder &e = m.enc;
    e.arch_name = mt;
    Weights &w = m.weights;
    if (mt == "bert") {
        e.arch = Arch::Bert;
        w.prefixes = {"bert.", "model."};
    } else if (mt == "roberta" || mt == "xlm-roberta" || mt == "camembert") {
        e.arch = Arch::Roberta;
        w.prefixes = {"roberta.", "model."};
    } else if (mt == "distilbert") {
        e.arch = Arch::DistilBert;
        w.prefixes = {"distilbert.", "model."};
    } else if (mt == "mpnet") {
        e.arch = Arch::MPNet;
        w.prefixes = {"mpnet.", "model."};
    } else {
        json_t *archs = jget(c, "architectures");
        std::string a = json_is_array(archs) && json_array_size(archs) > 0 &&
                                json_is_string(json_array_get(archs, 0))
                            ? json_string_value(json_array_get(archs, 0))
                            : "";
        fail(MM_EARCH,
             "unsupported architecture %s%s%s%s in %s: the native embedding backend runs BERT, "
             "RoBERTa, XLM-RoBERTa, DistilBERT and MPNet",
             mt.empty() ? "(no model_type)" : mt.c_str(), a.empty() ? "" : " (", a.c_str(),
             a.empty() ? "" : ")", dir.c_str());
    }
    if (e.arch == Arch::DistilBert) {
        e.hidden = jint(c, "dim", 768);
        e.n_layers = jint(c, "n_layers", 6);
        e.heads = jint(c, "n_heads", 12);
        e.ffn = jint(c, "hidden_dim", 3072);
        e.hidden_act = parse_act(jstr(c, "activation", "gelu"), "config.json activation");
        e.eps = 1e-12;
        e.pad_id = jint(c, "pad_token_id", 0);
    } else {
        e.hidden = jint(c, "hidden_size", 768);
        e.n_layers = jint(c, "num_hidden_layers", 12);
        e.heads = jint(c, "num_attention_heads", 12);
        e.ffn = jint(c, "intermediate_size", 3072);
        e.hidden_act = parse_act(jstr(c, "hidden_act", "gelu"), "config.json hidden_act");
        e.eps = jnum(c, "layer_norm_eps", e.arch == Arch::MPNet ? 1e-5 : 1e-12);
        e.pad_id = e.arch == Arch::MPNet ? 1 : jint(c, "pad_token_id", e.arch == Arch::Bert ? 0 : 1);
        std::string pet = jstr(c, "position_embedding_type", "absolute");
        if (pet != "absolute")
            fail(MM_EARCH, "unsupported architecture %s with position_embedding_type %s in %s",
                 mt.c_str(), pet.c_str(), dir.c_str());
    }
    if (e.hidden <= 0 || e.heads <= 0 || e.hidden % e.heads != 0 || e.n_layers <= 0)
        fail(MM_EFORMAT, "%s/config.json: hidden size %lld is not a multiple of %lld heads",
             dir.c_str(), (long long)e.hidden, (long long)e.heads);
    e.max_pos = jint(c, "max_position_embeddings", 512);
    e.pos_offset = (e.arch == Arch::Roberta || e.arch == Arch::MPNet) ? e.pad_id + 1 : 0;

    load_weights_or_throw(dir, m.device, m.dtype, &w);
    const int64_t H = e.hidden;
    e.word = w.get("embeddings.word_embeddings.weight");
    if (e.word.dim() != 2 || e.word.size(1) != H)
        fail(MM_ELOAD, "embeddings.word_embeddings.weight in %s does not have width %lld",
             dir.c_str(), (long long)H);
    e.pos = w.get("embeddings.position_embeddings.weight");
    e.max_pos = e.pos.size(0);
    if (e.arch == Arch::Bert || e.arch == Arch::Roberta)
        e.type = w.find("embeddings.token_type_embeddings.weight");
    e.emb_ln = {w.get("embeddings.LayerNorm.weight", {H}), w.get("embeddings.LayerNorm.bias", {H}),
                e.eps};
    if (e.arch == Arch::MPNet)
        e.rel_bias = w.get("encoder.relative_attention_bias.weight");

    for (int64_t i = 0; i < e.n_layers; i++) {
        Layer ly;
        std::string p;
        std::string q, k, v, o, ln1, up, down, ln2;
        if (e.arch == Arch::DistilBert) {
            p = "transformer.layer." + std::to_string(i) + ".";
            q = p + "attention.q_lin";
            k = p + "attention.k_lin";
            v = p + "attention.v_lin";
            o = p + "attention.out_lin";
            ln1 = p + "sa_layer_norm";
            up = p + "ffn.lin1";
            down = p + "ffn.lin2";
            ln2 = p + "output_layer_norm";
        } else {
            p = "encoder.layer." + std::to_string(i) + ".";
            if (e.arch == Arch::MPNet) {
                q = p + "attention.attn.q";
                k = p + "attention.attn.k";
                v = p + "attention.attn.v";
                o = p + "attention.attn.o";
                ln1 = p + "attention.LayerNorm";
            } else {
                q = p + "attention.self.query";
                k = p + "attention.self.key";
                v = p + "attention.self.value";
                o = p + "attention.output.dense";
                ln1 = p + "attention.output.LayerNorm";
            }
            up = p + "intermediate.dense";
            down = p + "output.dense";
            ln2 = p + "output.LayerNorm";
        }
        const int64_t F = e.ffn;
        ly.qkv.w = at::cat({w.get(q + ".weight", {H, H}), w.get(k + ".weight", {H, H}),
                            w.get(v + ".weight", {H, H})}, 0);
        ly.qkv.b = at::cat({w.get(q + ".bias", {H}), w.get(k + ".bias", {H}),
                            w.get(v + ".bias", {H})}, 0);
        ly.out = {w.get(o + ".weight", {H, H}), w.get(o + ".bias", {H}), {}, {}};
        ly.ln_attn = {w.get(ln1 + ".weight", {H}), w.get(ln1 + ".bias", {H}), e.eps};
        ly.up = {w.get(up + ".weight", {F, H}), w.get(up + ".bias", {F}), {}, {}};
        ly.down = {w.get(down + ".weight", {H, F}), w.get(down + ".bias", {H}), {}, {}};
        ly.ln_out = {w.get(ln2 + ".weight", {H}), w.get(ln2 + ".bias", {H}), e.eps};
        e.layers.push_back(std::move(ly));
    }
    if (m.head)
        load_head(m, c, dir);
    /* Only what the graph references stays alive (the pooler, the separate
     * Q/K/V copies and any LM head are dropped; mmapped ones unmap). */
    w.tensors.clear();
}

void load_pooling(Model &m, const std::string &path) {
    JsonPtr cfg = read_json(join_path(path, "config.json"), true);
    const json_t *c = cfg.get();
    auto add = [&](const std::string &s) {
        static const std::pair<const char *, Pool> names[] = {
            {"cls", Pool::Cls},       {"max", Pool::Max},
            {"mean", Pool::Mean},     {"mean_sqrt_len_tokens", Pool::MeanSqrt},
            {"weightedmean", Pool::WeightedMean}, {"lasttoken", Pool::LastToken}};
        for (const auto &n : names) {
            if (s == n.first) {
                m.pools.push_back(n.second);
                m.pooling_name += (m.pooling_name.empty() ? "" : "+") + s;
                return;
            }
        }
        fail(MM_EUNSUPPORTED, "%s/config.json: unsupported pooling mode %s", path.c_str(),
             s.c_str());
    };
    json_t *pm = jget(c, "pooling_mode");
    if (json_is_string(pm)) {
        add(json_string_value(pm));
    } else if (json_is_array(pm)) {
        size_t i;
        json_t *v;
        json_array_foreach(pm, i, v) {
            if (json_is_string(v))
                add(json_string_value(v));
        }
    } else {
        /* Legacy flags, in sentence-transformers' fixed order. */
        if (jbool(c, "pooling_mode_cls_token", false)) add("cls");
        if (jbool(c, "pooling_mode_max_tokens", false)) add("max");
        if (jbool(c, "pooling_mode_mean_tokens", false)) add("mean");
        if (jbool(c, "pooling_mode_mean_sqrt_len_tokens", false)) add("mean_sqrt_len_tokens");
        if (jbool(c, "pooling_mode_weightedmean_tokens", false)) add("weightedmean");
        if (jbool(c, "pooling_mode_lasttoken", false)) add("lasttoken");
    }
    if (m.pools.empty())
        fail(MM_EUNSUPPORTED, "%s/config.json names no pooling mode", path.c_str());
    m.include_prompt = jbool(c, "include_prompt", true);
}

Step load_dense(Model &m, const std::string &path, int64_t in_dim) {
    JsonPtr cfg = read_json(join_path(path, "config.json"), true);
    const json_t *c = cfg.get();
    Step s;
    s.is_dense = true;
    s.act = parse_act(jstr(c, "activation_function", "torch.nn.modules.activation.Tanh"),
                      (path + "/config.json activation_function").c_str());
    int64_t in = jint(c, "in_features", in_dim), outf = jint(c, "out_features", -1);
    if (in != in_dim || outf <= 0)
        fail(MM_EFORMAT, "%s: Dense %lld -> %lld does not follow a %lld-wide input",
             path.c_str(), (long long)in, (long long)outf, (long long)in_dim);
    Weights w;
    w.dir = path;
    std::string f = join_path(path, "model.safetensors");
    if (!file_exists(f)) {
        if (file_exists(join_path(path, "pytorch_model.bin")))
            fail(MM_EFORMAT, "%s has only pytorch_model.bin; the native backend reads safetensors",
                 path.c_str());
        fail(MM_ELOAD, "%s is missing", f.c_str());
    }
    load_safetensors_file(f, m.device, m.dtype, &w);
    s.lin.w = w.get("linear.weight", {outf, in});
    if (jbool(c, "bias", true))
        s.lin.b = w.get("linear.bias", {outf});
    m.memory_bytes += w.bytes;
    return s;
}

void load_model(Model &m) {
    const std::string &dir = m.dir;
    JsonPtr modules = read_json(m.head ? std::string() : join_path(dir, "modules.json"), false);
    std::string tdir = dir;
    bool have_pooling = false;
    std::vector<std::pair<std::string, std::string>> rest; /* kind, path */
    if (modules) {
        if (!json_is_array(modules.get()))
            fail(MM_EFORMAT, "%s/modules.json is not a list", dir.c_str());
        size_t i;
        json_t *mod;
        bool first = true;
        json_array_foreach(modules.get(), i, mod) {
            std::string kind = module_kind(jstr(mod, "type", ""));
            std::string path = jstr(mod, "path", "");
            if (path.find("..") != std::string::npos)
                fail(MM_EFORMAT, "%s/modules.json: bad module path %s", dir.c_str(), path.c_str());
            if (first) {
                if (kind != "Transformer")
                    fail(MM_EUNSUPPORTED, "%s/modules.json: first module %s is not a Transformer",
                         dir.c_str(), kind.c_str());
                tdir = join_path(dir, path);
                first = false;
                continue;
            }
            rest.emplace_back(kind, join_path(dir, path));
        }
    }
    load_encoder(m, tdir);
    for (const auto &layer : m.enc.layers)
        for (const at::Tensor *t : {&layer.qkv.w, &layer.qkv.b, &layer.out.w, &layer.out.b,
                                    &layer.up.w, &layer.up.b, &layer.down.w, &layer.down.b,
                                    &layer.ln_attn.w, &layer.ln_out.w})
            m.memory_bytes += (uint64_t)t->numel() * t->element_size();
    m.memory_bytes += (uint64_t)m.enc.word.numel() * m.enc.word.element_size();
    if (m.dtype_name == "int8") {
        for (auto &layer : m.enc.layers)
            for (Linear *l : {&layer.qkv, &layer.out, &layer.up, &layer.down})
                m.memory_bytes -= l->quantize_int8();
    } else if (m.device.is_cpu() && m.dtype == at::kFloat) {
        for (auto &layer : m.enc.layers)
            for (Linear *l : {&layer.qkv, &layer.out, &layer.up, &layer.down})
                l->pack();
    }

    int64_t width = m.enc.hidden;
    if (m.head) { /* the head replaces Pooling and Dense */
        m.pools = {Pool::Cls};
        m.pooling_name = "cls+classifier";
        width = m.steps.back().lin.w.size(0);
        have_pooling = true;
    }
    for (const auto &r : rest) {
        const std::string &kind = r.first;
        if (kind == "Pooling") {
            if (have_pooling)
                fail(MM_EUNSUPPORTED, "%s/modules.json has two Pooling modules", dir.c_str());
            load_pooling(m, r.second);
            have_pooling = true;
            width = m.enc.hidden * (int64_t)m.pools.size();
        } else if (kind == "Dense") {
            if (!have_pooling)
                fail(MM_EUNSUPPORTED, "%s: a Dense module before Pooling", dir.c_str());
            Step s = load_dense(m, r.second, width);
            width = s.lin.w.size(0);
            m.steps.push_back(std::move(s));
        } else if (kind == "Normalize") {
            m.steps.push_back(Step());
        } else {
            fail(MM_EUNSUPPORTED,
                 "%s/modules.json: the sentence-transformers module %s is not supported by the "
                 "native backend",
                 dir.c_str(), kind.c_str());
        }
    }
    if (!have_pooling) {
        m.pools = {Pool::Mean};
        m.pooling_name = "mean";
        width = m.enc.hidden;
    }
    if (!m.steps.empty() && !m.steps.back().is_dense) {
        m.steps.pop_back();
        m.normalize = true;
    }
    m.dim = width;

    /* max_seq_length: sentence_bert_config.json, else the tokenizer's
     * model_max_length, capped by the position table either way. */
    const int64_t pos_cap = m.enc.max_pos - m.enc.pos_offset;
    JsonPtr sb = read_json(join_path(tdir, "sentence_bert_config.json"), false);
    int64_t msl = jint(sb.get(), "max_seq_length", -1);
    m.do_lower_case = jbool(sb.get(), "do_lower_case", false);
    if (msl <= 0) {
        JsonPtr tc = read_json(join_path(tdir, "tokenizer_config.json"), false);
        long long tml = jint(tc.get(), "model_max_length", -1);
        if (tml > 0 && tml < 1000000)
            msl = tml;
    }
    if (msl <= 0 || msl > pos_cap)
        msl = pos_cap;
    m.max_seq_length = msl;

    JsonPtr stc = read_json(join_path(dir, "config_sentence_transformers.json"), false);
    json_t *prompts = jget(stc.get(), "prompts");
    if (json_is_object(prompts)) {
        char *s = json_dumps(prompts, JSON_COMPACT);
        if (s) {
            m.prompts_json = s;
            free(s);
        }
    }
    m.default_prompt_name = jstr(stc.get(), "default_prompt_name", "");
}

/* ---- running ---- */

at::Tensor pool(const Model &m, const at::Tensor &h_in, const at::Tensor &mask_in,
                const at::Tensor &prompt_lens) {
    /* Pool in float32 whatever the compute dtype, as sentence-transformers
     * accumulates half precision in float32. */
    at::Tensor h = h_in.to(at::kFloat);
    const int64_t B = h.size(0), L = h.size(1), H = h.size(2);
    at::Tensor mask = mask_in;
    if (!m.include_prompt && prompt_lens.defined()) {
        at::Tensor r = at::arange(L, mask.options()).unsqueeze(0);
        mask = mask * r.ge(prompt_lens.unsqueeze(1)).to(mask.scalar_type());
    }
    at::Tensor mf = mask.to(at::kFloat).unsqueeze(-1); /* [B, L, 1] */
    std::vector<at::Tensor> outs;
    for (Pool p : m.pools) {
        switch (p) {
        case Pool::Cls: {
            at::Tensor first = mask.to(at::kInt).argmax(1); /* first kept token */
            outs.push_back(h.gather(1, first.view({B, 1, 1}).expand({B, 1, H})).squeeze(1));
            break;
        }
        case Pool::Max:
            outs.push_back(h.masked_fill(mf.eq(0), -INFINITY).amax(1));
            break;
        case Pool::Mean:
        case Pool::MeanSqrt: {
            at::Tensor sum = (h * mf).sum(1);
            at::Tensor cnt = at::clamp_min(mf.sum(1), 1e-9);
            outs.push_back(sum / (p == Pool::Mean ? cnt : cnt.sqrt()));
            break;
        }
        case Pool::WeightedMean: {
            at::Tensor wts = at::arange(1, L + 1, h.options()).view({1, L, 1}) * mf;
            outs.push_back((h * wts).sum(1) / at::clamp_min(wts.sum(1), 1e-9));
            break;
        }
        case Pool::LastToken: {
            at::Tensor fm = mask.flip(1);
            auto mx = fm.max(1);
            at::Tensor idx = at::where(std::get<0>(mx).eq(0), at::full_like(std::get<1>(mx), L - 1),
                                       std::get<1>(mx));
            at::Tensor g = (L - idx - 1).view({B, 1, 1}).expand({B, 1, H});
            outs.push_back((h * mf).gather(1, g).squeeze(1));
            break;
        }
        }
    }
    return outs.size() == 1 ? outs[0] : at::cat(outs, 1);
}

at::Tensor l2norm(const at::Tensor &x) {
    return x / at::clamp_min(x.norm(2, {1}, true), 1e-12);
}

at::Tensor run(const Model &m, const at::Tensor &ids, const at::Tensor &mask,
               const at::Tensor &types, const at::Tensor &plens, int normalize) {
    at::Tensor h = m.enc.forward(ids, mask, types);
    at::Tensor v = pool(m, h, mask, plens);
    for (const Step &s : m.steps) {
        if (s.is_dense) {
            /* Dense runs in the compute dtype, like the module would. */
            v = act(s.act, s.lin(v.to(m.dtype))).to(at::kFloat);
        } else {
            v = l2norm(v);
        }
    }
    if (normalize < 0 ? m.normalize : normalize > 0)
        v = l2norm(v);
    return v;
}

Registry<Model> g_models; /* mmt_registry.h */

} // namespace
} // namespace mmt

struct mm_torch_embedder {
    std::shared_ptr<mmt::Model> model;
    bool loaded_it = false; /* this handle's load read the weights (others share them) */
};

using namespace mmt;

MMT_API int mm_torch_abi_version(void) { return MM_TORCH_ABI_VERSION; }

MMT_API const char *mm_torch_version(void) { return TORCH_VERSION; }

MMT_API void mm_torch_embedder_default_params(mm_torch_embedder_params *p) {
    if (!p)
        return;
    p->device = "cpu";
    p->dtype = "auto";
    p->num_threads = 0;
}

MMT_API int mm_torch_set_num_threads(int n) {
    if (n <= 0)
        return MM_EINVAL;
    char err[8];
    return guard(err, sizeof err, [&] {
        at::set_num_threads(n);
        return 0;
    });
}

static at::ScalarType parse_dtype_name(const std::string &s, bool cuda, std::string *name) {
    if (s.empty() || s == "auto") {
        *name = cuda ? "float16" : "float32";
        return cuda ? at::kHalf : at::kFloat;
    }
    if (s == "float32" || s == "fp32" || s == "float") {
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
    if (s == "int8") { /* float32 compute around int8 linear layers (mmt_int8.h) */
        *name = "int8";
        return at::kFloat;
    }
    fail(MM_EINVAL, "unknown dtype %s (auto, float32, float16, bfloat16, int8)", s.c_str());
}

static int embedder_load(const char *dir, const mm_torch_embedder_params *p,
                         mm_torch_embedder_t **out, bool head, char *err, size_t errlen) {
    if (out)
        *out = nullptr;
    return guard(err, errlen, [&] {
        if (!dir || !*dir || !out)
            fail(MM_EINVAL, "mm_torch_embedder_load: no model directory");
        mm_torch_embedder_params def;
        mm_torch_embedder_default_params(&def);
        if (!p)
            p = &def;
        at::Device device = parse_device(p->device);
        std::string dtype_name;
        at::ScalarType dtype = parse_dtype_name(p->dtype ? p->dtype : "auto", device.is_cuda(),
                                                &dtype_name);
        if (!device.is_cuda() && dtype == at::kHalf)
            fail(MM_EUNSUPPORTED, "float16 on the CPU is not supported; use float32 or bfloat16");
        if (device.is_cuda() && dtype_name == "int8")
            fail(MM_EUNSUPPORTED, "dtype int8 runs on the CPU only; use float16 or bfloat16 on %s",
                 device.str().c_str());
        if (!device.is_cuda() && dtype == at::kBFloat16 && !cpu_has_bf16())
            fail(MM_EUNSUPPORTED,
                 "dtype bfloat16 on the CPU needs AVX512_BF16 or AMX-BF16, which this CPU lacks "
                 "(libtorch would emulate it, slower than float32); use float32 or int8");
        if (p->num_threads > 0)
            at::set_num_threads(p->num_threads);

        std::string key = std::string(dir) + "|" + device.str() + "|" + dtype_name +
                          (head ? "|classifier" : "");
        bool loaded_it = false;
        std::shared_ptr<Model> model = g_models.get(
            key, dir, device, dtype, dtype_name,
            [head](Model &m) {
                m.head = head;
                load_model(m);
            },
            &loaded_it);
        auto *h = new mm_torch_embedder;
        h->model = std::move(model);
        h->loaded_it = loaded_it;
        *out = h;
        return 0;
    });
}

MMT_API int mm_torch_embedder_load(const char *dir, const mm_torch_embedder_params *p,
                                   mm_torch_embedder_t **out, char *err, size_t errlen) {
    return embedder_load(dir, p, out, false, err, errlen);
}

MMT_API int mm_torch_classifier_load(const char *dir, const mm_torch_embedder_params *p,
                                     mm_torch_embedder_t **out, char *err, size_t errlen) {
    return embedder_load(dir, p, out, true, err, errlen);
}

MMT_API int mm_torch_embedder_info_get(const mm_torch_embedder_t *h, mm_torch_embedder_info *info) {
    if (!h || !info)
        return MM_EINVAL;
    const Model &m = *h->model;
    memset(info, 0, sizeof *info);
    info->dim = (size_t)m.dim;
    info->hidden_size = (size_t)m.enc.hidden;
    info->max_seq_length = (size_t)m.max_seq_length;
    info->max_positions = (size_t)(m.enc.max_pos - m.enc.pos_offset);
    info->normalize = m.normalize;
    info->do_lower_case = m.do_lower_case;
    info->include_prompt = m.include_prompt;
    info->uses_type_ids = m.enc.type.defined();
    info->pad_token_id = m.enc.pad_id;
    info->arch = m.enc.arch_name.c_str();
    info->pooling = m.pooling_name.c_str();
    info->device = m.device_name.c_str();
    info->dtype = m.dtype_name.c_str();
    info->prompts_json = m.prompts_json.c_str();
    info->default_prompt_name = m.default_prompt_name.c_str();
    info->memory_bytes = h->loaded_it ? m.memory_bytes : 0;
    return 0;
}


/* Checks one padded batch's arguments against the model (throws). */
static void check_batch(const Model &m, const int64_t *ids, const int64_t *mask,
                        const int64_t *type_ids, size_t batch, size_t seq_len, float *out,
                        size_t out_dim) {
    if (!ids || !mask || !out)
        fail(MM_EINVAL, "mm_torch_embed: NULL argument");
    if (out_dim != (size_t)m.dim)
        fail(MM_ENOBUFS, "output rows are %zu floats, the model makes %lld", out_dim,
             (long long)m.dim);
    if (batch == 0)
        return;
    if (seq_len == 0 || seq_len > (size_t)(m.enc.max_pos - m.enc.pos_offset))
        fail(MM_EINVAL, "sequence length %zu is outside 1..%lld", seq_len,
             (long long)(m.enc.max_pos - m.enc.pos_offset));
    const int64_t vocab = m.enc.word.size(0);
    for (size_t i = 0; i < batch * seq_len; i++)
        if (ids[i] < 0 || ids[i] >= vocab)
            fail(MM_EINVAL, "token id %lld is outside the vocabulary (%lld)", (long long)ids[i],
                 (long long)vocab);
    if (type_ids && m.enc.type.defined()) {
        const int64_t nt = m.enc.type.size(0);
        for (size_t i = 0; i < batch * seq_len; i++)
            if (type_ids[i] < 0 || type_ids[i] >= nt)
                fail(MM_EINVAL, "token type id %lld is outside 0..%lld", (long long)type_ids[i],
                     (long long)nt - 1);
    }
}

/* Runs one checked batch; the caller holds an InferenceMode guard. */
static void embed_batch(const Model &m, const int64_t *ids, const int64_t *mask,
                        const int64_t *type_ids, size_t batch, size_t seq_len,
                        const int64_t *prompt_lens, int normalize, float *out, size_t out_dim) {
    if (batch == 0)
        return;
    const int64_t B = (int64_t)batch, L = (int64_t)seq_len;
    auto lopt = at::TensorOptions().dtype(at::kLong);
    at::Tensor tid = at::from_blob((void *)ids, {B, L}, lopt).to(m.device);
    at::Tensor tmask = at::from_blob((void *)mask, {B, L}, lopt).to(m.device);
    at::Tensor ttype;
    if (type_ids && m.enc.type.defined())
        ttype = at::from_blob((void *)type_ids, {B, L}, lopt).to(m.device);
    at::Tensor tpl;
    if (prompt_lens)
        tpl = at::from_blob((void *)prompt_lens, {B}, lopt).to(m.device);
    at::Tensor v = run(m, tid, tmask, ttype, tpl, normalize).to(at::kCPU, at::kFloat).contiguous();
    memcpy(out, v.data_ptr<float>(), sizeof(float) * batch * out_dim);
}

MMT_API int mm_torch_embed(mm_torch_embedder_t *h, const int64_t *ids, const int64_t *mask,
                           const int64_t *type_ids, size_t batch, size_t seq_len,
                           const int64_t *prompt_lens, int normalize, float *out,
                           size_t out_dim, char *err, size_t errlen) {
    return guard(err, errlen, [&] {
        if (!h)
            fail(MM_EINVAL, "mm_torch_embed: NULL argument");
        const Model &m = *h->model;
        check_batch(m, ids, mask, type_ids, batch, seq_len, out, out_dim);
        c10::InferenceMode im;
        embed_batch(m, ids, mask, type_ids, batch, seq_len, prompt_lens, normalize, out, out_dim);
        return 0;
    });
}

MMT_API int mm_torch_embed_many(mm_torch_embedder_t *h, const mm_torch_batch *batches, size_t n,
                                int normalize, char *err, size_t errlen) {
    return guard(err, errlen, [&] {
        if (!h || (n && !batches))
            fail(MM_EINVAL, "mm_torch_embed_many: NULL argument");
        const Model &m = *h->model;
        for (size_t i = 0; i < n; i++) {
            const mm_torch_batch &b = batches[i];
            check_batch(m, b.ids, b.mask, b.type_ids, b.batch, b.seq_len, b.out, b.out_dim);
        }
        auto one = [&](size_t i) {
            const mm_torch_batch &b = batches[i];
            embed_batch(m, b.ids, b.mask, b.type_ids, b.batch, b.seq_len, b.prompt_lens,
                        normalize, b.out, b.out_dim);
        };
        const int nt = at::get_num_threads();
        if (n < 2 || nt < 2 || !m.device.is_cpu()) {
            /* On the CPU a lone batch (one row) runs single-threaded too, as
             * every piece does: oneDNN fixes a primitive's thread count when
             * it is made, and one made here with the team would make later
             * pieces of the same shape start a team of their own from each
             * piece's thread (seen as libgomp spinning: an eighth of int8's
             * time). */
            c10::InferenceMode im;
            std::optional<SingleThreaded> one_thread;
            if (m.device.is_cpu())
                one_thread.emplace();
            for (size_t i = 0; i < n; i++)
                one(i);
            return 0;
        }
        /* Batch-parallel (mmt_threads.h), largest batch first. */
        std::vector<size_t> order(n);
        for (size_t i = 0; i < n; i++)
            order[i] = i;
        std::stable_sort(order.begin(), order.end(), [&](size_t x, size_t y) {
            return batches[x].batch * batches[x].seq_len > batches[y].batch * batches[y].seq_len;
        });
        run_pieces(nt, order, one);
        return 0;
    });
}

MMT_API void mm_torch_embedder_free(mm_torch_embedder_t *h) {
    if (!h)
        return;
    char err[8];
    guard(err, sizeof err, [&] {
        std::shared_ptr<Model> m = std::move(h->model);
        delete h;
        const std::string key = m->key;
        g_models.put(std::move(m), key);
        return 0;
    });
}

MMT_API uint64_t mm_torch_device_memory_reserved(const char *device) {
    uint64_t r = 0;
    char err[8];
    guard(err, sizeof err, [&] {
        if (!device || strncmp(device, "cuda", 4) != 0 || !at::hasCUDA())
            return 0;
        at::Device d(device);
        auto *a = c10::getDeviceAllocator(at::kCUDA);
        auto st = a->getDeviceStats(d.has_index() ? d.index() : 0);
        r = (uint64_t)st.reserved_bytes[0].current;
        return 0;
    });
    return r;
}
