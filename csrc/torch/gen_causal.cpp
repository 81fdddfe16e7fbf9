/* gen_causal.cpp: one decoder-only graph for the Llama family and its
 * relatives, operation for operation what transformers 5 runs, so that a
 * lone request's logits agree with model.generate() to the last bits the
 * kernels allow.  The switches, all read from config.json:
 *
 *   family   attention                         norms / MLP / output
 *   llama    q,k,v,o (+ biases when present)   RMSNorm w*x, SiLU gate*up
 *   mistral  llama + sliding_window (all layers)
 *   qwen2    llama + q/k/v bias; sliding layers from layer_types
 *            (use_sliding_window, max_window_layers)
 *   qwen3    llama + RMSNorm of q and k over head_dim before RoPE
 *   gemma    llama; embeddings * sqrt(hidden)   RMSNorm x*(1+w) in float32, GeGLU (tanh)
 *   gemma2   gemma + attention logit soft-capping, query_pre_attn_scalar,
 *            alternating sliding window (layer_types), sandwich norms around
 *            attention and MLP, final logit soft-capping
 *   phi3     fused qkv_proj and gate_up_proj, partial rotary, sliding_window
 *
 * Grouped-query attention everywhere (kv_heads <= heads; query head h reads
 * kv head h / (heads / kv_heads), transformers' repeat_kv order).  RoPE
 * types default, linear, dynamic (NTK; recomputed from the sequence length
 * once it passes max_position_embeddings, as transformers' forward does for
 * a request alone) and llama3; other types fail with MM_EUNSUPPORTED naming
 * them.  Tied or untied embeddings (tie_word_embeddings, the family's
 * default when absent).
 *
 * Prefill runs one prompt at a time (no padding) through ATen's sdpa, with
 * is_causal, or an explicit window mask, or the eager soft-capped path for
 * Gemma 2.  A decoder step batches the rows' projections (mmt::linear: the
 * shim's skinny kernel for up to 64 rows in float32 on the CPU) and attends
 * row by row over each row's own cache (mmt_attend_one in float32 on the
 * CPU, with kv heads as rows and a head stride of 0, so GQA needs no copy;
 * sdpa elsewhere), so rows of any lengths share a step and no row's result
 * depends on the others.
 */
#include "gen_causal.h"

#include "gen_model.h"
#include "mmt_attend.h"
#include "mmt_qweight.h"
#include "st_loader.h"

#include <ATen/Parallel.h>

#include <cmath>
#include <cstring>
#include <limits>

namespace mmt {
namespace gen {

uint64_t CausalSeq::bytes() const {
    uint64_t b = 0;
    for (size_t l = 0; l < k.size(); l++)
        b += (uint64_t)(k[l].nbytes() + v[l].nbytes());
    return b;
}

void CausalLM::fork(const CausalSeq &src, CausalSeq &dst) const {
    dst.len = src.len;
    dst.limit = src.limit;
    dst.k.clear();
    dst.v.clear();
    for (size_t l = 0; l < src.k.size(); l++) {
        dst.k.push_back(src.k[l].clone());
        dst.v.push_back(src.v[l].clone());
    }
}

namespace {

const char *const kFamilies[][2] = {
    {"llama", "LlamaForCausalLM"},     {"mistral", "MistralForCausalLM"},
    {"qwen2", "Qwen2ForCausalLM"},     {"qwen3", "Qwen3ForCausalLM"},
    {"gemma", "GemmaForCausalLM"},     {"gemma2", "Gemma2ForCausalLM"},
    {"phi3", "Phi3ForCausalLM"},
};

struct Layer {
    at::Tensor in_ln, post_ln, pre_ff_ln, post_ff_ln; /* RMSNorm weights */
    QWeight qw, kw, vw, ow;                           /* q,k,v split (phi3 too, at load) */
    at::Tensor qb, kb, vb, ob;
    at::Tensor q_norm, k_norm;                        /* qwen3 */
    QWeight gw, uw, dw;                               /* gate, up, down */
    at::Tensor gb, ub, db;
    int64_t window = 0;                               /* sliding window; 0: full */
};

enum class Rope { Default, Linear, Dynamic, Llama3 };

class Causal final : public CausalLM {
  public:
    Causal(const std::string &arch, const json_t *cfg, const Weights &w, at::Device dev,
           at::ScalarType dt);
    at::Tensor prefill(CausalSeq &s, const int64_t *ids, int64_t n) const override;
    at::Tensor step(const std::vector<CausalSeq *> &seqs,
                    const std::vector<int64_t> &tokens) const override;
    uint64_t quantize_int8() override;

  private:
    at::Tensor norm(const at::Tensor &x, const at::Tensor &w) const;
    at::Tensor mlp(const Layer &L, const at::Tensor &x) const;
    /* inverse frequencies for a forward whose largest position is seq_len - 1 */
    at::Tensor inv_freq_for(int64_t seq_len) const;
    /* cos, sin [n, rot] (model dtype) for positions pos (host list) */
    void rope_tables(const std::vector<int64_t> &pos, int64_t seq_len, at::Tensor *cos,
                     at::Tensor *sin) const;
    /* rotates x [n, heads, hd] with cos/sin [n, rot] */
    at::Tensor rotate(const at::Tensor &x, const at::Tensor &cos, const at::Tensor &sin) const;
    /* q, k, v projections of x [n, D] for layer L: q [n, H, hd], k, v [n, Hkv, hd],
     * q and k normed (qwen3) and rotated */
    void qkv(const Layer &L, const at::Tensor &x, const at::Tensor &cos, const at::Tensor &sin,
             at::Tensor *q, at::Tensor *k, at::Tensor *v) const;
    void reserve(CausalSeq &s, int64_t need) const;
    at::Tensor logits(const at::Tensor &h) const;
    /* The rest of a layer after attention: output projection, residual, MLP
     * (r: the layer's input, a: the attention output [n, H * hd]). */
    at::Tensor finish_layer(const Layer &L, const at::Tensor &r, const at::Tensor &a) const;

    bool gemma_norm_ = false, sandwich_ = false;
    double eps_ = 1e-6, scale_ = 1.0, embed_scale_ = 0.0;
    double attn_cap_ = 0.0, final_cap_ = 0.0;
    Act act_ = Act::Silu;
    Rope rope_ = Rope::Default;
    int64_t rot_dim_ = 0, rope_max_pos_ = 0;
    double rope_theta_ = 10000.0, rope_factor_ = 1.0;
    at::Tensor inv_freq_; /* float32, CPU */
    at::Tensor embed_, final_ln_;
    QWeight lm_head_;
    std::vector<Layer> layers_;
};

/* A number under key in o, then in alt (may be null), else def. */
double num2(const json_t *o, const json_t *alt, const char *key, double def) {
    if (jhas(o, key))
        return jnum(o, key, def);
    return jnum(alt, key, def);
}

Causal::Causal(const std::string &arch, const json_t *cfg, const Weights &w, at::Device dev,
               at::ScalarType dt) {
    device_ = dev;
    dtype_ = dt;
    info_.arch = arch;
    const bool gemma = arch == "gemma" || arch == "gemma2";
    gemma_norm_ = gemma;
    sandwich_ = arch == "gemma2";
    const int64_t D = jint(cfg, "hidden_size", 0);
    const int64_t H = jint(cfg, "num_attention_heads", 0);
    const int64_t L = jint(cfg, "num_hidden_layers", 0);
    if (D <= 0 || H <= 0 || L <= 0)
        fail(MM_ELOAD, "%s: config.json lacks hidden_size / num_attention_heads / "
                       "num_hidden_layers", w.dir.c_str());
    int64_t Hkv = jint(cfg, "num_key_value_heads", H);
    if (Hkv <= 0)
        Hkv = H;
    int64_t hd = jint(cfg, "head_dim", 0);
    if (hd <= 0)
        hd = D / H;
    if (H % Hkv != 0)
        fail(MM_ELOAD, "%s: %lld attention heads are not a multiple of %lld key/value heads",
             w.dir.c_str(), (long long)H, (long long)Hkv);
    info_.hidden = D;
    info_.heads = H;
    info_.kv_heads = Hkv;
    info_.head_dim = hd;
    info_.layers = L;
    info_.max_positions = jint(cfg, "max_position_embeddings", 0);
    eps_ = jnum(cfg, "rms_norm_eps", 1e-6);
    scale_ = std::pow((double)hd, -0.5);
    if (arch == "gemma2" && jhas(cfg, "query_pre_attn_scalar"))
        scale_ = std::pow(jnum(cfg, "query_pre_attn_scalar", (double)hd), -0.5);
    if (gemma)
        embed_scale_ = std::sqrt((double)D);
    if (arch == "gemma2") {
        attn_cap_ = jnum(cfg, "attn_logit_softcapping", 0.0);
        final_cap_ = jnum(cfg, "final_logit_softcapping", 0.0);
    }
    std::string act = gemma ? jstr(cfg, arch == "gemma2" ? "hidden_activation" : "hidden_act",
                                   "gelu_pytorch_tanh")
                            : jstr(cfg, "hidden_act", "silu");
    if (gemma && act == "gelu") /* transformers maps Gemma's legacy "gelu" to tanh */
        act = "gelu_pytorch_tanh";
    if (arch == "gemma" && jhas(cfg, "hidden_activation"))
        act = jstr(cfg, "hidden_activation", act);
    act_ = parse_act(act);

    /* ---- RoPE ---- */
    const json_t *rp = jget(cfg, "rope_parameters");
    if (!json_is_object(rp))
        rp = jget(cfg, "rope_scaling");
    if (!json_is_object(rp))
        rp = nullptr;
    rope_theta_ = num2(rp, cfg, "rope_theta", 10000.0);
    double partial = num2(rp, cfg, "partial_rotary_factor", 1.0);
    rot_dim_ = (int64_t)((double)hd * partial);
    std::string rt = rp ? jstr(rp, "rope_type", jstr(rp, "type", "default")) : "default";
    rope_max_pos_ = info_.max_positions;
    if (rt == "default") {
        rope_ = Rope::Default;
    } else if (rt == "linear") {
        rope_ = Rope::Linear;
    } else if (rt == "dynamic") {
        rope_ = Rope::Dynamic;
    } else if (rt == "llama3") {
        rope_ = Rope::Llama3;
    } else {
        fail(MM_EUNSUPPORTED, "rope type \"%s\" (rope_scaling) is not supported; supported: "
                              "default, linear, dynamic, llama3", rt.c_str());
    }
    if (rope_ != Rope::Default)
        rope_factor_ = jnum(rp, "factor", 1.0);
    info_.context = info_.max_positions;
    if ((rope_ == Rope::Linear || rope_ == Rope::Dynamic) && rope_factor_ > 1.0)
        info_.context = (int64_t)((double)info_.max_positions * rope_factor_);
    {
        auto fo = at::TensorOptions().dtype(at::kFloat);
        at::Tensor ar = at::arange(0, rot_dim_, 2, at::TensorOptions().dtype(at::kLong)).to(at::kFloat) /
                        (double)rot_dim_;
        double base = rope_theta_;
        if (rope_ == Rope::Dynamic) { /* at init: seq_len = max_position_embeddings */
            double sl = (double)rope_max_pos_;
            base = base * std::pow((rope_factor_ * sl / (double)rope_max_pos_) - (rope_factor_ - 1),
                                   (double)rot_dim_ / (double)(rot_dim_ - 2));
        }
        /* torch: python float ** float tensor keeps float32; 1.0 / t is
         * t.reciprocal() * 1.0 */
        at::Tensor inv = at::pow(at::Scalar(base), ar).reciprocal();
        if (rope_ == Rope::Linear)
            inv = inv / rope_factor_;
        if (rope_ == Rope::Llama3) {
            double factor = jnum(rp, "factor", 8.0), lo = jnum(rp, "low_freq_factor", 1.0),
                   hi = jnum(rp, "high_freq_factor", 4.0);
            double old = jnum(rp, "original_max_position_embeddings", (double)rope_max_pos_);
            double lo_wl = old / lo, hi_wl = old / hi;
            at::Tensor wl = inv.reciprocal() * (2 * M_PI); /* python: 2 * pi / t */
            at::Tensor il = at::where(wl > lo_wl, inv / factor, inv);
            at::Tensor sm = (wl.reciprocal() * old - lo) / (hi - lo);
            at::Tensor smoothed = (1 - sm) * il / factor + sm * il;
            at::Tensor med = at::logical_not(wl < hi_wl) * at::logical_not(wl > lo_wl);
            inv = at::where(med, smoothed, il);
        }
        inv_freq_ = inv.to(fo).contiguous();
    }

    /* ---- weights ---- */
    auto get = [&](const std::string &n) { return w.get(n); };
    auto opt = [&](const std::string &n) { return w.find(n); };
    embed_ = get("model.embed_tokens.weight");
    info_.vocab_size = embed_.size(0);
    bool tie = jbool(cfg, "tie_word_embeddings", gemma);
    lm_head_ = tie ? at::Tensor() : opt("lm_head.weight");
    if (!lm_head_.defined()) {
        if (!tie && !jhas(cfg, "tie_word_embeddings"))
            lm_head_ = embed_; /* no lm_head saved and nothing said: tied */
        else if (!tie)
            fail(MM_ELOAD, "%s: tie_word_embeddings is false but lm_head.weight is missing",
                 w.dir.c_str());
        else
            lm_head_ = embed_;
    }
    info_.vocab_size = lm_head_.size(0);
    final_ln_ = get("model.norm.weight");

    /* sliding windows per layer */
    int64_t window = jint(cfg, "sliding_window", 0);
    std::vector<char> sliding(L, 0);
    const json_t *lt = jget(cfg, "layer_types");
    if (json_is_array(lt) && (int64_t)json_array_size(lt) >= L) {
        for (int64_t i = 0; i < L; i++) {
            const json_t *e = json_array_get(lt, i);
            std::string t = json_is_string(e) ? json_string_value(e) : "full_attention";
            if (t == "sliding_attention")
                sliding[i] = 1;
            else if (t != "full_attention")
                fail(MM_EUNSUPPORTED, "layer type \"%s\" is not supported", t.c_str());
        }
    } else if (arch == "mistral" || arch == "phi3") {
        std::fill(sliding.begin(), sliding.end(), 1);
    } else if (arch == "qwen2" || arch == "qwen3") {
        int64_t mwl = jint(cfg, "max_window_layers", L);
        bool use = jbool(cfg, "use_sliding_window", false);
        for (int64_t i = 0; i < L; i++)
            sliding[i] = use && i >= mwl;
    } else if (arch == "gemma2") {
        for (int64_t i = 0; i < L; i++)
            sliding[i] = (i + 1) % 2 != 0;
    }
    if ((arch == "qwen2" || arch == "qwen3") && !jbool(cfg, "use_sliding_window", false))
        window = 0; /* transformers: sliding_window = None unless use_sliding_window */

    const int64_t qn = H * hd, kn = Hkv * hd;
    for (int64_t i = 0; i < L; i++) {
        const std::string b = "model.layers." + std::to_string(i) + ".";
        Layer Y;
        Y.in_ln = get(b + "input_layernorm.weight");
        Y.post_ln = get(b + "post_attention_layernorm.weight");
        if (sandwich_) {
            Y.pre_ff_ln = get(b + "pre_feedforward_layernorm.weight");
            Y.post_ff_ln = get(b + "post_feedforward_layernorm.weight");
        }
        if (arch == "phi3") {
            at::Tensor qkvw = get(b + "self_attn.qkv_proj.weight");
            if (qkvw.size(0) != qn + 2 * kn)
                fail(MM_ELOAD, "%s: %sself_attn.qkv_proj.weight has %lld rows, expected %lld",
                     w.dir.c_str(), b.c_str(), (long long)qkvw.size(0), (long long)(qn + 2 * kn));
            Y.qw = qkvw.narrow(0, 0, qn).contiguous();
            Y.kw = qkvw.narrow(0, qn, kn).contiguous();
            Y.vw = qkvw.narrow(0, qn + kn, kn).contiguous();
            at::Tensor gu = get(b + "mlp.gate_up_proj.weight");
            int64_t I = gu.size(0) / 2;
            Y.gw = gu.narrow(0, 0, I).contiguous();
            Y.uw = gu.narrow(0, I, I).contiguous();
        } else {
            Y.qw = get(b + "self_attn.q_proj.weight");
            Y.kw = get(b + "self_attn.k_proj.weight");
            Y.vw = get(b + "self_attn.v_proj.weight");
            Y.qb = opt(b + "self_attn.q_proj.bias");
            Y.kb = opt(b + "self_attn.k_proj.bias");
            Y.vb = opt(b + "self_attn.v_proj.bias");
            Y.gw = get(b + "mlp.gate_proj.weight");
            Y.uw = get(b + "mlp.up_proj.weight");
            Y.gb = opt(b + "mlp.gate_proj.bias");
            Y.ub = opt(b + "mlp.up_proj.bias");
        }
        Y.ow = get(b + "self_attn.o_proj.weight");
        Y.ob = opt(b + "self_attn.o_proj.bias");
        Y.dw = get(b + "mlp.down_proj.weight");
        Y.db = opt(b + "mlp.down_proj.bias");
        if (arch == "qwen3") {
            Y.q_norm = get(b + "self_attn.q_norm.weight");
            Y.k_norm = get(b + "self_attn.k_norm.weight");
        }
        if (Y.qw.size(0) != qn || Y.kw.size(0) != kn || Y.vw.size(0) != kn)
            fail(MM_ELOAD, "%s: layer %lld's projections do not match %lld heads x %lld "
                           "(kv %lld)", w.dir.c_str(), (long long)i, (long long)H, (long long)hd,
                 (long long)Hkv);
        Y.window = sliding[i] && window > 0 ? window : 0;
        layers_.push_back(std::move(Y));
    }
}

at::Tensor Causal::norm(const at::Tensor &x, const at::Tensor &w) const {
    if (gemma_norm_) {
        at::Tensor xf = x.to(at::kFloat);
        at::Tensor o = xf * at::rsqrt(xf.pow(2).mean(-1, true) + eps_);
        return (o * (1.0 + w.to(at::kFloat))).to(x.scalar_type());
    }
    at::Tensor xf = x.to(at::kFloat);
    at::Tensor var = xf.pow(2).mean(-1, true);
    xf = xf * at::rsqrt(var + eps_);
    return w * xf.to(x.scalar_type());
}

at::Tensor Causal::mlp(const Layer &L, const at::Tensor &x) const {
    at::Tensor g = apply_act(act_, mmt::linear(x, L.gw, L.gb));
    return mmt::linear(g * mmt::linear(x, L.uw, L.ub), L.dw, L.db);
}

at::Tensor Causal::inv_freq_for(int64_t seq_len) const {
    if (rope_ != Rope::Dynamic || seq_len <= rope_max_pos_)
        return inv_freq_;
    /* transformers' growth path: seq_len is a tensor, so float32 throughout.  Float, not
     * Long: a Long tensor times a double takes torch's process-wide default dtype, which
     * another thread (a transformers load) may have set to bf16 or fp64 for a moment. */
    at::Tensor sl = at::scalar_tensor((double)seq_len, at::TensorOptions().dtype(at::kFloat));
    at::Tensor base = ((sl * rope_factor_) / rope_max_pos_ - (rope_factor_ - 1))
                          .pow((double)rot_dim_ / (double)(rot_dim_ - 2)) * rope_theta_;
    at::Tensor ar = at::arange(0, rot_dim_, 2, at::TensorOptions().dtype(at::kLong)).to(at::kFloat) /
                    (double)rot_dim_;
    return at::pow(base, ar).reciprocal().contiguous();
}

void Causal::rope_tables(const std::vector<int64_t> &pos, int64_t seq_len, at::Tensor *cos,
                         at::Tensor *sin) const {
    auto lo = at::TensorOptions().dtype(at::kLong);
    at::Tensor freqs;
    if (seq_len > 0) { /* one forward: one inv_freq */
        at::Tensor p = at::tensor(pos, lo).to(at::kFloat).unsqueeze(-1);
        freqs = p * inv_freq_for(seq_len);
    } else { /* a step: each row's own length decides (dynamic) */
        std::vector<at::Tensor> rows;
        bool same = rope_ != Rope::Dynamic;
        if (same) {
            at::Tensor p = at::tensor(pos, lo).to(at::kFloat).unsqueeze(-1);
            freqs = p * inv_freq_;
        } else {
            for (int64_t x : pos) {
                at::Tensor p = at::full({1, 1}, x, lo).to(at::kFloat);
                rows.push_back(p * inv_freq_for(x + 1));
            }
            freqs = at::cat(rows, 0);
        }
    }
    at::Tensor emb = at::cat({freqs, freqs}, -1);
    *cos = emb.cos().to(device_).to(dtype_);
    *sin = emb.sin().to(device_).to(dtype_);
}

at::Tensor Causal::rotate(const at::Tensor &x, const at::Tensor &cos, const at::Tensor &sin) const {
    const int64_t hd = x.size(-1);
    at::Tensor c = cos.unsqueeze(1), s = sin.unsqueeze(1); /* [n, 1, rot] */
    at::Tensor xr = rot_dim_ < hd ? x.narrow(-1, 0, rot_dim_) : x;
    const int64_t half = rot_dim_ / 2;
    at::Tensor rh = at::cat({-xr.narrow(-1, half, rot_dim_ - half), xr.narrow(-1, 0, half)}, -1);
    at::Tensor out = (xr * c) + (rh * s);
    if (rot_dim_ < hd)
        out = at::cat({out, x.narrow(-1, rot_dim_, hd - rot_dim_)}, -1);
    return out;
}

void Causal::qkv(const Layer &L, const at::Tensor &x, const at::Tensor &cos, const at::Tensor &sin,
                 at::Tensor *q, at::Tensor *k, at::Tensor *v) const {
    const int64_t n = x.size(0), H = info_.heads, Hkv = info_.kv_heads, hd = info_.head_dim;
    at::Tensor qq = mmt::linear(x, L.qw, L.qb).view({n, H, hd});
    at::Tensor kk = mmt::linear(x, L.kw, L.kb).view({n, Hkv, hd});
    *v = mmt::linear(x, L.vw, L.vb).view({n, Hkv, hd});
    if (L.q_norm.defined()) {
        qq = norm(qq, L.q_norm);
        kk = norm(kk, L.k_norm);
    }
    *q = rotate(qq, cos, sin);
    *k = rotate(kk, cos, sin);
}

void Causal::reserve(CausalSeq &s, int64_t need) const {
    const int64_t Lz = info_.layers, Hkv = info_.kv_heads, hd = info_.head_dim;
    const int64_t lim = s.limit > 0 ? (s.limit + kBlock - 1) / kBlock * kBlock : 0;
    if (s.k.empty()) {
        int64_t cap = (need + kBlock - 1) / kBlock * kBlock;
        auto o = at::TensorOptions().dtype(dtype_).device(device_);
        for (int64_t l = 0; l < Lz; l++) {
            s.k.push_back(at::empty({Hkv, cap, hd}, o));
            s.v.push_back(at::empty({Hkv, cap, hd}, o));
        }
        return;
    }
    if (need <= s.cap())
        return;
    int64_t cap = std::max(need, s.cap() + s.cap() / 2);
    cap = (cap + kBlock - 1) / kBlock * kBlock;
    if (lim > 0 && cap > lim)
        cap = std::max(lim, (need + kBlock - 1) / kBlock * kBlock);
    for (int64_t l = 0; l < Lz; l++) {
        for (at::Tensor *t : {&s.k[l], &s.v[l]}) {
            at::Tensor n = at::empty({Hkv, cap, hd}, t->options());
            n.narrow(1, 0, s.len).copy_(t->narrow(1, 0, s.len));
            *t = n;
        }
    }
}

at::Tensor Causal::finish_layer(const Layer &L, const at::Tensor &r, const at::Tensor &a) const {
    at::Tensor o = mmt::linear(a, L.ow, L.ob);
    if (sandwich_) { /* Gemma 2: norms around attention and MLP outputs */
        at::Tensor h = r + norm(o, L.post_ln);
        return h + norm(mlp(L, norm(h, L.pre_ff_ln)), L.post_ff_ln);
    }
    at::Tensor h = r + o;
    return h + mlp(L, norm(h, L.post_ln));
}

at::Tensor Causal::logits(const at::Tensor &h) const {
    at::Tensor lg = mmt::linear(h, lm_head_).to(at::kFloat);
    if (final_cap_ > 0) {
        lg = lg / final_cap_;
        lg = at::tanh(lg);
        lg = lg * final_cap_;
    }
    return lg;
}

at::Tensor Causal::prefill(CausalSeq &s, const int64_t *ids, int64_t n) const {
    const int64_t H = info_.heads, Hkv = info_.kv_heads, hd = info_.head_dim, grp = H / Hkv;
    reserve(s, n + 1);
    auto lo = at::TensorOptions().dtype(at::kLong);
    at::Tensor tid = at::from_blob(const_cast<int64_t *>(ids), {n}, lo).to(device_);
    at::Tensor h = at::embedding(embed_, tid);
    if (embed_scale_ > 0)
        h = h * at::scalar_tensor(embed_scale_, at::kFloat).to(dtype_).item();
    std::vector<int64_t> pos(n);
    for (int64_t i = 0; i < n; i++)
        pos[i] = i;
    at::Tensor cos, sin;
    rope_tables(pos, n, &cos, &sin);
    /* masks: full causal (sdpa is_causal) or a window */
    at::Tensor win_mask;
    for (size_t l = 0; l < layers_.size(); l++) {
        const Layer &L = layers_[l];
        at::Tensor r = h;
        at::Tensor x = norm(h, L.in_ln);
        at::Tensor q, k, v;
        qkv(L, x, cos, sin, &q, &k, &v);
        s.k[l].narrow(1, 0, n).copy_(k.transpose(0, 1));
        s.v[l].narrow(1, 0, n).copy_(v.transpose(0, 1));
        at::Tensor qh = q.transpose(0, 1).unsqueeze(0);                        /* [1,H,n,hd] */
        at::Tensor kh = k.transpose(0, 1).unsqueeze(0), vh = v.transpose(0, 1).unsqueeze(0);
        if (grp > 1) {
            kh = kh.repeat_interleave(grp, 1);
            vh = vh.repeat_interleave(grp, 1);
        }
        const bool windowed = L.window > 0 && n > L.window;
        at::Tensor a;
        if (attn_cap_ > 0) { /* eager, as transformers runs Gemma 2 */
            at::Tensor sc = at::matmul(qh, kh.transpose(2, 3)) * scale_;
            sc = sc / attn_cap_;
            sc = at::tanh(sc);
            sc = sc * attn_cap_;
            at::Tensor i = at::arange(n, lo).to(device_);
            at::Tensor keep = i.unsqueeze(0) <= i.unsqueeze(1);
            if (L.window > 0)
                keep = keep & (i.unsqueeze(0) > i.unsqueeze(1) - L.window);
            sc = sc.masked_fill(at::logical_not(keep), -std::numeric_limits<float>::infinity());
            a = at::matmul(at::softmax(sc, -1, at::kFloat).to(dtype_), vh);
        } else if (windowed) {
            at::Tensor i = at::arange(n, lo).to(device_);
            at::Tensor keep = (i.unsqueeze(0) <= i.unsqueeze(1)) &
                              (i.unsqueeze(0) > i.unsqueeze(1) - L.window);
            a = at::scaled_dot_product_attention(qh, kh, vh, keep, 0.0, false, scale_);
        } else {
            a = at::scaled_dot_product_attention(qh, kh, vh, std::nullopt, 0.0, n > 1, scale_);
        }
        h = finish_layer(L, r, a.squeeze(0).transpose(0, 1).reshape({n, H * hd}));
    }
    s.len = n;
    at::Tensor last = norm(h.narrow(0, n - 1, 1), final_ln_);
    return logits(last);
}

at::Tensor Causal::step(const std::vector<CausalSeq *> &seqs,
                        const std::vector<int64_t> &tokens) const {
    const int64_t R = (int64_t)seqs.size(), H = info_.heads, Hkv = info_.kv_heads,
                  hd = info_.head_dim, grp = H / Hkv;
    auto lo = at::TensorOptions().dtype(at::kLong);
    std::vector<int64_t> pos(R);
    for (int64_t i = 0; i < R; i++) {
        reserve(*seqs[i], seqs[i]->len + 1);
        pos[i] = seqs[i]->len;
    }
    at::Tensor h = at::embedding(embed_, at::tensor(tokens, lo).to(device_));
    if (embed_scale_ > 0)
        h = h * at::scalar_tensor(embed_scale_, at::kFloat).to(dtype_).item();
    at::Tensor cos, sin;
    rope_tables(pos, 0, &cos, &sin);
    const bool fast = device_.is_cpu() && dtype_ == at::kFloat && attn_cap_ <= 0;
    const int nt = std::max(1, at::get_num_threads());
    int64_t maxlen = 0;
    for (int64_t p : pos)
        maxlen = std::max(maxlen, p + 1);
    at::Tensor scratch = fast ? at::empty({(int64_t)nt * maxlen}, h.options()) : at::Tensor();
    for (size_t l = 0; l < layers_.size(); l++) {
        const Layer &L = layers_[l];
        at::Tensor r = h;
        at::Tensor x = norm(h, L.in_ln);
        at::Tensor q, k, v;
        qkv(L, x, cos, sin, &q, &k, &v);
        for (int64_t i = 0; i < R; i++) {
            seqs[i]->k[l].select(1, pos[i]).copy_(k[i]);
            seqs[i]->v[l].select(1, pos[i]).copy_(v[i]);
        }
        at::Tensor a;
        if (fast) {
            at::Tensor qc = q.contiguous();
            a = at::empty({R, H * hd}, qc.options());
            for (int64_t i = 0; i < R; i++) {
                const int64_t len = pos[i] + 1;
                const int64_t start = L.window > 0 && len > L.window ? len - L.window : 0;
                const at::Tensor &kc = seqs[i]->k[l], &vc = seqs[i]->v[l];
                mmt_kv_layout kl{kc.data_ptr<float>() + start * hd, kc.stride(0), 0, hd};
                mmt_kv_layout vl{vc.data_ptr<float>() + start * hd, vc.stride(0), 0, hd};
                mmt_attn_bias nb{nullptr, 0, 0, nullptr, 0, 0};
                mmt_attend_one(qc.data_ptr<float>() + i * H * hd, Hkv, 1, grp, hd, len - start, kl,
                               vl, nb, (float)scale_, a.data_ptr<float>() + i * H * hd,
                               scratch.data_ptr<float>(), nt);
            }
        } else {
            std::vector<at::Tensor> outs;
            for (int64_t i = 0; i < R; i++) {
                const int64_t len = pos[i] + 1;
                const int64_t start = L.window > 0 && len > L.window ? len - L.window : 0;
                at::Tensor kh = seqs[i]->k[l].narrow(1, start, len - start).unsqueeze(0);
                at::Tensor vh = seqs[i]->v[l].narrow(1, start, len - start).unsqueeze(0);
                if (grp > 1) {
                    kh = kh.repeat_interleave(grp, 1);
                    vh = vh.repeat_interleave(grp, 1);
                }
                at::Tensor qh = q[i].unsqueeze(0).unsqueeze(2); /* [1,H,1,hd] */
                at::Tensor ai;
                if (attn_cap_ > 0) {
                    at::Tensor sc = at::matmul(qh, kh.transpose(2, 3)) * scale_;
                    sc = sc / attn_cap_;
                    sc = at::tanh(sc);
                    sc = sc * attn_cap_;
                    ai = at::matmul(at::softmax(sc, -1, at::kFloat).to(dtype_), vh);
                } else {
                    ai = at::scaled_dot_product_attention(qh, kh, vh, std::nullopt, 0.0, false,
                                                          scale_);
                }
                outs.push_back(ai.reshape({1, H * hd}));
            }
            a = at::cat(outs, 0);
        }
        h = finish_layer(L, r, a);
    }
    for (int64_t i = 0; i < R; i++)
        seqs[i]->len = pos[i] + 1;
    return logits(norm(h, final_ln_));
}

} // namespace

std::string first_architecture(const json_t *cfg) {
    json_t *archs = jget(cfg, "architectures");
    if (json_is_array(archs) && json_array_size(archs) > 0 &&
        json_is_string(json_array_get(archs, 0)))
        return json_string_value(json_array_get(archs, 0));
    return "";
}

bool causal_arch(const json_t *cfg, std::string *arch) {
    std::string mt = jstr(cfg, "model_type", "");
    std::string a0 = first_architecture(cfg);
    for (const auto &f : kFamilies) {
        if (mt == f[0] || (mt.empty() && a0 == f[1])) {
            *arch = f[0];
            return true;
        }
    }
    auto ends = [](const std::string &s, const char *suf) {
        size_t n = strlen(suf);
        return s.size() >= n && s.compare(s.size() - n, n, suf) == 0;
    };
    if (ends(a0, "ForCausalLM") || ends(a0, "LMHeadModel")) {
        std::string what = a0 + (mt.empty() ? "" : " (model_type " + mt + ")");
        fail(MM_EARCH, "architecture %s is not supported for text generation (decoder-only: "
                       "Llama, Mistral, Qwen2, Qwen3, Gemma, Gemma2, Phi3; encoder-decoder: "
                       "T5, BART)", what.c_str());
    }
    return false;
}

uint64_t Causal::quantize_int8() {
    uint64_t saved = 0;
    for (Layer &L : layers_)
        for (QWeight *q : {&L.qw, &L.kw, &L.vw, &L.ow, &L.gw, &L.uw, &L.dw})
            saved += q->quantize();
    return saved + lm_head_.quantize(); /* tied: embed_ keeps the float table */
}

std::unique_ptr<CausalLM> make_causal(const std::string &arch, const json_t *cfg,
                                      const Weights &w, at::Device dev, at::ScalarType dtype) {
    return std::unique_ptr<CausalLM>(new Causal(arch, cfg, w, dev, dtype));
}

} // namespace gen
} // namespace mmt
