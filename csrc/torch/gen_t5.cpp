/* gen_t5.cpp: T5 (v1.0, v1.1 / FLAN-T5, mT5) as an encoder-decoder for
 * mm_torch_gen.
 *
 * The forward follows Hugging Face's T5ForConditionalGeneration operation
 * for operation (same libtorch ops in the same order), because generation
 * parity is token-exact and a last-bit difference in a logit can flip a
 * beam:
 *   - RMSNorm (T5LayerNorm): variance in float32, no mean, no bias;
 *   - attention without 1/sqrt(d) scaling; relative position buckets
 *     (bidirectional in the encoder, causal in the decoder) whose embedding
 *     lives in layer 0 and is shared by every later layer; the bias goes in
 *     as the attention mask of scaled_dot_product_attention, with padding
 *     as the dtype's lowest value, exactly as transformers' sdpa path does;
 *   - feed-forward ReLU (v1.0) or gated GELU-tanh (v1.1), `wo` kept in
 *     float32 when the model runs in half precision (T5's FF overflows);
 *   - logits = lm_head(h * d_model^-0.5) when the output embedding is tied
 *     (v1.0), lm_head(h) otherwise.  The shared embedding may be stored as
 *     shared.weight, encoder.embed_tokens.weight or decoder.embed_tokens.weight.
 */
#include "gen_model.h"
#include "mmt_qweight.h"
#include "st_loader.h"

#include <cmath>
#include <limits>

namespace mmt {
namespace gen {
namespace {

at::Scalar lowest(at::ScalarType t) {
    switch (t) {
    case at::kHalf: return at::Scalar(-65504.0);
    case at::kBFloat16: return at::Scalar(-3.3895313892515355e38);
    case at::kDouble: return at::Scalar(std::numeric_limits<double>::lowest());
    default: return at::Scalar((double)std::numeric_limits<float>::lowest());
    }
}

struct T5Attn {
    QWeight q, k, v, o;
};

struct T5Layer {
    T5Attn self, cross;
    at::Tensor ln_self, ln_cross, ln_ff;
    QWeight wi, wi0, wi1, wo;
};

class T5 final : public Seq2Seq {
  public:
    T5(const json_t *cfg, const Weights &w, at::Device dev, at::ScalarType dt);
    at::Tensor encode(const at::Tensor &ids, const at::Tensor &mask, bool padded) const override;
    at::Tensor step(DecState &st, const at::Tensor &tokens) const override;
    uint64_t quantize_int8() override;

  protected:
    void cross_kv(int64_t l, const at::Tensor &enc, at::Tensor *k, at::Tensor *v) const override;
    at::Tensor cross_bias(const at::Tensor &mask, bool padded) const override;

  private:
    at::Tensor rms(const at::Tensor &x, const at::Tensor &w) const;
    at::Tensor ff(const T5Layer &L, const at::Tensor &h) const;
    at::Tensor bias(const at::Tensor &table, bool bidirectional, int64_t qlen, int64_t klen,
                    int64_t past) const;
    at::Tensor heads(const at::Tensor &x) const; /* [B, S, H*hd] -> [B, H, S, hd] */

    int64_t n_enc_ = 0, buckets_ = 32, max_distance_ = 128;
    double eps_ = 1e-6;
    bool gated_ = false, scale_out_ = true;
    Act act_ = Act::Relu;
    at::Tensor shared_, enc_rel_, dec_rel_, enc_final_, dec_final_;
    QWeight lm_head_;
    std::vector<T5Layer> enc_, dec_;
};

at::Tensor T5::rms(const at::Tensor &x, const at::Tensor &w) const {
    at::Tensor var = x.to(at::kFloat).pow(2).mean(-1, true);
    at::Tensor h = x * at::rsqrt(var + eps_);
    if (w.scalar_type() == at::kHalf || w.scalar_type() == at::kBFloat16)
        h = h.to(w.scalar_type());
    return w * h;
}

at::Tensor T5::ff(const T5Layer &L, const at::Tensor &x) const {
    at::Tensor n = rms(x, L.ln_ff), h;
    if (gated_)
        h = apply_act(act_, mmt::linear(n, L.wi0)) * mmt::linear(n, L.wi1);
    else
        h = apply_act(act_, mmt::linear(n, L.wi));
    if (L.wo.w.defined() && h.scalar_type() != L.wo.w.scalar_type())
        h = h.to(L.wo.w.scalar_type());
    return x + mmt::linear(h, L.wo);
}

at::Tensor T5::heads(const at::Tensor &x) const {
    return x.view({x.size(0), x.size(1), -1, info_.head_dim}).transpose(1, 2);
}

/* Relative position -> bucket, the Mesh TensorFlow rule, with the same
 * float32 log as transformers so bucket edges agree. */
at::Tensor bucketize(at::Tensor rp, bool bidirectional, int64_t nb, int64_t maxd) {
    at::Tensor buckets = at::zeros_like(rp);
    if (bidirectional) {
        nb /= 2;
        buckets = buckets + (rp > 0).to(at::kLong) * nb;
        rp = at::abs(rp);
    } else {
        rp = -at::min(rp, at::zeros_like(rp));
    }
    int64_t max_exact = nb / 2;
    at::Tensor small = rp < max_exact;
    at::Tensor large =
        (at::log(rp.to(at::kFloat) / max_exact) / std::log((double)maxd / (double)max_exact) *
         (nb - max_exact))
            .to(at::kLong) +
        max_exact;
    large = at::min(large, at::full_like(large, nb - 1));
    return buckets + at::where(small, rp, large);
}

at::Tensor T5::bias(const at::Tensor &table, bool bidirectional, int64_t qlen, int64_t klen,
                    int64_t past) const {
    auto opts = at::TensorOptions().dtype(at::kLong).device(device_);
    at::Tensor ctx = at::arange(qlen, opts).unsqueeze(1) + past;
    at::Tensor mem = at::arange(klen, opts).unsqueeze(0);
    at::Tensor b = bucketize(mem - ctx, bidirectional, buckets_, max_distance_);
    return at::embedding(table, b).permute({2, 0, 1}).unsqueeze(0); /* [1, H, q, k] */
}

T5::T5(const json_t *cfg, const Weights &w, at::Device dev, at::ScalarType dt) {
    device_ = dev;
    dtype_ = dt;
    info_.arch = "t5";
    int64_t d = jint(cfg, "d_model", 512);
    info_.d_model = d;
    info_.heads = jint(cfg, "num_heads", 8);
    info_.head_dim = jint(cfg, "d_kv", 64);
    n_enc_ = jint(cfg, "num_layers", 6);
    info_.dec_layers = jhas(cfg, "num_decoder_layers") ? jint(cfg, "num_decoder_layers", n_enc_)
                                                       : n_enc_;
    info_.n_positions = jint(cfg, "n_positions", 512);
    buckets_ = jint(cfg, "relative_attention_num_buckets", 32);
    max_distance_ = jint(cfg, "relative_attention_max_distance", 128);
    eps_ = jnum(cfg, "layer_norm_epsilon", 1e-6);
    std::string proj = jstr(cfg, "feed_forward_proj", "relu");
    std::string act_name = proj;
    if (proj.compare(0, 6, "gated-") == 0) {
        gated_ = true;
        act_name = proj.substr(6);
    } else if (proj.find('-') != std::string::npos) {
        fail(MM_EUNSUPPORTED, "T5 feed_forward_proj \"%s\" is not supported", proj.c_str());
    }
    if (proj == "gated-gelu")
        act_name = "gelu_new"; /* what transformers has always run for it */
    act_ = parse_act(act_name);
    /* transformers 5 writes scale_decoder_outputs; older configs say it
     * through tie_word_embeddings (default true). */
    json_t *sdo = jget(cfg, "scale_decoder_outputs");
    if (json_is_boolean(sdo))
        scale_out_ = json_is_true(sdo);
    else
        scale_out_ = jbool(cfg, "tie_word_embeddings", true);

    const char *shared_names[] = {"shared.weight", "encoder.embed_tokens.weight",
                                  "decoder.embed_tokens.weight"};
    for (const char *n : shared_names) {
        shared_ = w.find(n);
        if (shared_.defined())
            break;
    }
    if (!shared_.defined())
        fail(MM_ELOAD, "weights in %s lack the shared embedding (shared.weight, "
                       "encoder.embed_tokens.weight or decoder.embed_tokens.weight)",
             w.dir.c_str());
    info_.vocab_size = jint(cfg, "vocab_size", shared_.size(0));
    if (shared_.dim() != 2 || shared_.size(1) != d)
        fail(MM_ELOAD, "the shared embedding in %s has shape %s, expected [vocab, %lld]",
             w.dir.c_str(), c10::str(shared_.sizes()).c_str(), (long long)d);
    lm_head_ = w.find("lm_head.weight");
    if (!lm_head_.defined())
        lm_head_ = shared_;
    info_.vocab_size = lm_head_.size(0);

    bool half = dt == at::kHalf || dt == at::kBFloat16;
    auto load_stack = [&](const std::string &pre, int64_t n, bool dec, std::vector<T5Layer> *out) {
        for (int64_t i = 0; i < n; i++) {
            std::string b = pre + ".block." + std::to_string(i) + ".layer.";
            T5Layer L;
            L.self.q = w.get(b + "0.SelfAttention.q.weight");
            L.self.k = w.get(b + "0.SelfAttention.k.weight");
            L.self.v = w.get(b + "0.SelfAttention.v.weight");
            L.self.o = w.get(b + "0.SelfAttention.o.weight");
            L.ln_self = w.get(b + "0.layer_norm.weight");
            std::string f = b + (dec ? "2" : "1");
            if (dec) {
                L.cross.q = w.get(b + "1.EncDecAttention.q.weight");
                L.cross.k = w.get(b + "1.EncDecAttention.k.weight");
                L.cross.v = w.get(b + "1.EncDecAttention.v.weight");
                L.cross.o = w.get(b + "1.EncDecAttention.o.weight");
                L.ln_cross = w.get(b + "1.layer_norm.weight");
            }
            L.ln_ff = w.get(f + ".layer_norm.weight");
            if (gated_) {
                L.wi0 = w.get(f + ".DenseReluDense.wi_0.weight");
                L.wi1 = w.get(f + ".DenseReluDense.wi_1.weight");
            } else {
                L.wi = w.get(f + ".DenseReluDense.wi.weight");
            }
            L.wo = w.get(f + ".DenseReluDense.wo.weight");
            if (half)
                L.wo = L.wo.w.to(at::kFloat); /* transformers keeps wo in fp32 */
            out->push_back(std::move(L));
        }
    };
    load_stack("encoder", n_enc_, false, &enc_);
    load_stack("decoder", info_.dec_layers, true, &dec_);
    enc_rel_ = w.get("encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight");
    dec_rel_ = w.get("decoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight");
    enc_final_ = w.get("encoder.final_layer_norm.weight");
    dec_final_ = w.get("decoder.final_layer_norm.weight");
    int64_t inner = info_.heads * info_.head_dim;
    if (enc_.empty() || dec_.empty() || enc_[0].self.q.size(0) != inner ||
        enc_rel_.size(0) != buckets_ || enc_rel_.size(1) != info_.heads)
        fail(MM_ELOAD, "T5 weights in %s do not match config.json (heads %lld x d_kv %lld, "
                       "%lld buckets)",
             w.dir.c_str(), (long long)info_.heads, (long long)info_.head_dim,
             (long long)buckets_);
}

at::Tensor T5::encode(const at::Tensor &ids, const at::Tensor &mask, bool padded) const {
    int64_t B = ids.size(0), S = ids.size(1);
    at::Tensor h = at::embedding(shared_, ids);
    at::Tensor pb = bias(enc_rel_, true, S, S, 0);
    at::Tensor am = padded ? at::where(mask.view({B, 1, 1, S}), pb, lowest(pb.scalar_type()))
                           : pb;
    am = am.contiguous();
    for (const T5Layer &L : enc_) {
        at::Tensor n = rms(h, L.ln_self);
        at::Tensor q = heads(mmt::linear(n, L.self.q)), k = heads(mmt::linear(n, L.self.k)),
                   v = heads(mmt::linear(n, L.self.v));
        at::Tensor a = at::scaled_dot_product_attention(q, k, v, am, 0.0, false, 1.0);
        a = a.transpose(1, 2).reshape({B, S, -1});
        h = h + mmt::linear(a, L.self.o);
        h = ff(L, h);
    }
    return rms(h, enc_final_);
}

void T5::cross_kv(int64_t l, const at::Tensor &enc, at::Tensor *k, at::Tensor *v) const {
    const T5Layer &L = dec_[l];
    *k = heads(mmt::linear(enc, L.cross.k)).contiguous();
    *v = heads(mmt::linear(enc, L.cross.v)).contiguous();
}

/* transformers' position bias for a layer without relative attention is
 * zeros; padding goes in at the dtype's lowest value. */
at::Tensor T5::cross_bias(const at::Tensor &mask, bool padded) const {
    int64_t G = mask.size(0), S = mask.size(1);
    at::Tensor z = at::zeros({1, info_.heads, 1, S}, at::TensorOptions().dtype(dtype_).device(device_));
    if (!padded)
        return z;
    return at::where(mask.view({G, 1, 1, S}), z, lowest(dtype_)).contiguous();
}

at::Tensor T5::step(DecState &st, const at::Tensor &tokens) const {
    int64_t N = tokens.size(0), t = st.len;
    at::Tensor h = at::embedding(shared_, tokens.view({N, 1}));
    at::Tensor self_bias = bias(dec_rel_, false, 1, t + 1, t).contiguous();
    for (size_t l = 0; l < dec_.size(); l++) {
        const T5Layer &L = dec_[l];
        at::Tensor n = rms(h, L.ln_self);
        at::Tensor q = heads(mmt::linear(n, L.self.q)), k = heads(mmt::linear(n, L.self.k)),
                   v = heads(mmt::linear(n, L.self.v));
        at::Tensor kk, vv;
        cache_append(st, (int64_t)l, k, v, &kk, &vv);
        at::Tensor a = self_attend(st, q, kk, vv, self_bias, 1.0);
        h = h + mmt::linear(a.transpose(1, 2).reshape({N, 1, -1}), L.self.o);

        n = rms(h, L.ln_cross);
        q = heads(mmt::linear(n, L.cross.q));
        a = cross_attend(st, (int64_t)l, q, st.cross_bias, 1.0);
        h = h + mmt::linear(a.view({N, 1, -1}), L.cross.o);
        h = ff(L, h);
    }
    st.len = t + 1;
    h = rms(h, dec_final_);
    if (scale_out_)
        h = h * std::pow((double)info_.d_model, -0.5);
    return mmt::linear(h, lm_head_).view({N, -1}).to(at::kFloat);
}

uint64_t T5::quantize_int8() {
    uint64_t saved = 0;
    for (std::vector<T5Layer> *stack : {&enc_, &dec_})
        for (T5Layer &L : *stack)
            for (QWeight *q : {&L.self.q, &L.self.k, &L.self.v, &L.self.o, &L.cross.q, &L.cross.k,
                               &L.cross.v, &L.cross.o, &L.wi, &L.wi0, &L.wi1, &L.wo})
                saved += q->quantize();
    saved += lm_head_.quantize(); /* tied: shared_ keeps the float table for the lookups */
    return saved;
}

} // namespace

std::unique_ptr<Seq2Seq> make_t5(const json_t *cfg, const Weights &w, at::Device dev,
                                 at::ScalarType dtype) {
    return std::unique_ptr<Seq2Seq>(new T5(cfg, w, dev, dtype));
}

} // namespace gen
} // namespace mmt
