/* gen_bart.cpp: BART (bart-large-cnn and its kin) as an encoder-decoder for
 * mm_torch_gen.
 *
 * Operation for operation what transformers' BartForConditionalGeneration
 * runs (sdpa attention path), so logits agree to the last bit where the
 * kernels allow and beam search picks the same hypotheses:
 *   - token embedding * embed_scale (sqrt(d_model) when scale_embedding),
 *     plus learned positions looked up at position + 2 (fairseq's offset),
 *     then layernorm_embedding;
 *   - post-norm layers: x = LN(x + SelfAttn(x)); decoder adds
 *     x = LN(x + CrossAttn(x)); x = LN(x + fc2(act(fc1(x))));
 *   - attention scaled by head_dim^-0.5 inside sdpa; padding as a bool mask;
 *   - logits = lm_head(h) + final_logits_bias (lm_head tied to the shared
 *     embedding unless the checkpoint carries its own).
 * pre-norm variants (mBART: normalize_before) are refused with
 * MM_EUNSUPPORTED rather than run wrong.
 */
#include "gen_model.h"
#include "mmt_qweight.h"
#include "st_loader.h"

#include <cmath>

namespace mmt {
namespace gen {
namespace {

struct BartAttn {
    QWeight qw, kw, vw, ow;
    at::Tensor qb, kb, vb, ob, ln_w, ln_b;
};

struct BartLayer {
    BartAttn self, cross;
    QWeight fc1w, fc2w;
    at::Tensor fc1b, fc2b, ln_w, ln_b;
};

class Bart final : public Seq2Seq {
  public:
    Bart(const json_t *cfg, const Weights &w, at::Device dev, at::ScalarType dt);
    at::Tensor encode(const at::Tensor &ids, const at::Tensor &mask, bool padded) const override;
    at::Tensor step(DecState &st, const at::Tensor &tokens) const override;
    uint64_t quantize_int8() override;

  protected:
    void cross_kv(int64_t l, const at::Tensor &enc, at::Tensor *k, at::Tensor *v) const override;
    at::Tensor cross_bias(const at::Tensor &mask, bool padded) const override;

  private:
    at::Tensor ln(const at::Tensor &x, const at::Tensor &w, const at::Tensor &b) const {
        return at::layer_norm(x, {info_.d_model}, w, b, 1e-5);
    }
    at::Tensor heads(const at::Tensor &x, int64_t H) const {
        return x.view({x.size(0), x.size(1), H, -1}).transpose(1, 2);
    }
    at::Tensor ffn(const BartLayer &L, const at::Tensor &h) const {
        at::Tensor x = apply_act(act_, mmt::linear(h, L.fc1w, L.fc1b));
        return ln(h + mmt::linear(x, L.fc2w, L.fc2b), L.ln_w, L.ln_b);
    }

    int64_t enc_heads_ = 16;
    double embed_scale_ = 1.0;
    Act act_ = Act::Gelu;
    at::Tensor shared_, logits_bias_;
    QWeight lm_head_;
    at::Tensor enc_pos_, dec_pos_, enc_ln_w_, enc_ln_b_, dec_ln_w_, dec_ln_b_;
    std::vector<BartLayer> enc_, dec_;
};

Bart::Bart(const json_t *cfg, const Weights &w, at::Device dev, at::ScalarType dt) {
    device_ = dev;
    dtype_ = dt;
    info_.arch = "bart";
    if (jbool(cfg, "normalize_before", false) || jbool(cfg, "add_final_layer_norm", false))
        fail(MM_EUNSUPPORTED, "BART with normalize_before / add_final_layer_norm (pre-norm, "
                              "mBART style) is not supported");
    int64_t d = jint(cfg, "d_model", 1024);
    info_.d_model = d;
    info_.heads = jint(cfg, "decoder_attention_heads", 16);
    enc_heads_ = jint(cfg, "encoder_attention_heads", 16);
    info_.head_dim = d / info_.heads;
    info_.dec_layers = jint(cfg, "decoder_layers", 12);
    int64_t n_enc = jint(cfg, "encoder_layers", 12);
    int64_t maxpos = jint(cfg, "max_position_embeddings", 1024);
    info_.max_source_positions = maxpos;
    info_.max_target_positions = maxpos;
    info_.n_positions = maxpos;
    if (jbool(cfg, "scale_embedding", false))
        embed_scale_ = std::sqrt((double)d);
    act_ = parse_act(jstr(cfg, "activation_function", "gelu"));
    if (d % info_.heads != 0 || d % enc_heads_ != 0)
        fail(MM_ELOAD, "BART d_model %lld is not a multiple of the head count", (long long)d);

    shared_ = w.find("model.shared.weight");
    if (!shared_.defined())
        shared_ = w.find("model.encoder.embed_tokens.weight");
    if (!shared_.defined())
        shared_ = w.find("model.decoder.embed_tokens.weight");
    if (!shared_.defined())
        fail(MM_ELOAD, "weights in %s lack the shared embedding (model.shared.weight)",
             w.dir.c_str());
    lm_head_ = w.find("lm_head.weight");
    if (!lm_head_.defined())
        lm_head_ = shared_;
    info_.vocab_size = lm_head_.size(0);
    logits_bias_ = w.find("final_logits_bias");
    if (logits_bias_.defined() && logits_bias_.numel() != info_.vocab_size)
        fail(MM_ELOAD, "final_logits_bias in %s has %lld entries, the vocabulary %lld",
             w.dir.c_str(), (long long)logits_bias_.numel(), (long long)info_.vocab_size);
    if (logits_bias_.defined())
        logits_bias_ = logits_bias_.view({1, info_.vocab_size});

    auto attn = [&](const std::string &p, const std::string &lnp) {
        BartAttn a;
        a.qw = w.get(p + ".q_proj.weight");
        a.qb = w.get(p + ".q_proj.bias");
        a.kw = w.get(p + ".k_proj.weight");
        a.kb = w.get(p + ".k_proj.bias");
        a.vw = w.get(p + ".v_proj.weight");
        a.vb = w.get(p + ".v_proj.bias");
        a.ow = w.get(p + ".out_proj.weight");
        a.ob = w.get(p + ".out_proj.bias");
        a.ln_w = w.get(lnp + ".weight");
        a.ln_b = w.get(lnp + ".bias");
        return a;
    };
    auto stack = [&](const std::string &pre, int64_t n, bool dec, std::vector<BartLayer> *out) {
        for (int64_t i = 0; i < n; i++) {
            std::string b = pre + ".layers." + std::to_string(i) + ".";
            BartLayer L;
            L.self = attn(b + "self_attn", b + "self_attn_layer_norm");
            if (dec)
                L.cross = attn(b + "encoder_attn", b + "encoder_attn_layer_norm");
            L.fc1w = w.get(b + "fc1.weight");
            L.fc1b = w.get(b + "fc1.bias");
            L.fc2w = w.get(b + "fc2.weight");
            L.fc2b = w.get(b + "fc2.bias");
            L.ln_w = w.get(b + "final_layer_norm.weight");
            L.ln_b = w.get(b + "final_layer_norm.bias");
            out->push_back(std::move(L));
        }
    };
    stack("model.encoder", n_enc, false, &enc_);
    stack("model.decoder", info_.dec_layers, true, &dec_);
    enc_pos_ = w.get("model.encoder.embed_positions.weight");
    dec_pos_ = w.get("model.decoder.embed_positions.weight");
    enc_ln_w_ = w.get("model.encoder.layernorm_embedding.weight");
    enc_ln_b_ = w.get("model.encoder.layernorm_embedding.bias");
    dec_ln_w_ = w.get("model.decoder.layernorm_embedding.weight");
    dec_ln_b_ = w.get("model.decoder.layernorm_embedding.bias");
    if (enc_pos_.size(0) < maxpos + 2 || dec_pos_.size(0) < maxpos + 2)
        fail(MM_ELOAD, "BART position tables in %s hold %lld rows, config says %lld + 2",
             w.dir.c_str(), (long long)dec_pos_.size(0), (long long)maxpos);
}

at::Tensor Bart::encode(const at::Tensor &ids, const at::Tensor &mask, bool padded) const {
    int64_t B = ids.size(0), S = ids.size(1);
    at::Tensor h = at::embedding(shared_, ids) * embed_scale_;
    at::Tensor pos = at::arange(S, at::TensorOptions().dtype(at::kLong).device(device_)) + 2;
    h = ln(h + at::embedding(enc_pos_, pos.unsqueeze(0)), enc_ln_w_, enc_ln_b_);
    std::optional<at::Tensor> am;
    if (padded)
        am = mask.view({B, 1, 1, S});
    double scale = std::pow((double)(info_.d_model / enc_heads_), -0.5);
    for (const BartLayer &L : enc_) {
        const BartAttn &A = L.self;
        at::Tensor q = heads(mmt::linear(h, A.qw, A.qb), enc_heads_),
                   k = heads(mmt::linear(h, A.kw, A.kb), enc_heads_),
                   v = heads(mmt::linear(h, A.vw, A.vb), enc_heads_);
        at::Tensor a = at::scaled_dot_product_attention(q, k, v, am, 0.0, false, scale);
        a = a.transpose(1, 2).reshape({B, S, -1});
        h = ln(h + mmt::linear(a, A.ow, A.ob), A.ln_w, A.ln_b);
        h = ffn(L, h);
    }
    return h;
}

void Bart::cross_kv(int64_t l, const at::Tensor &enc, at::Tensor *k, at::Tensor *v) const {
    const BartAttn &A = dec_[l].cross;
    *k = heads(mmt::linear(enc, A.kw, A.kb), info_.heads).contiguous();
    *v = heads(mmt::linear(enc, A.vw, A.vb), info_.heads).contiguous();
}

at::Tensor Bart::cross_bias(const at::Tensor &mask, bool padded) const {
    if (!padded)
        return at::Tensor();
    return mask.view({mask.size(0), 1, 1, mask.size(1)}).contiguous();
}

at::Tensor Bart::step(DecState &st, const at::Tensor &tokens) const {
    int64_t N = tokens.size(0), t = st.len;
    at::Tensor h = at::embedding(shared_, tokens.view({N, 1})) * embed_scale_;
    at::Tensor pos = at::full({1, 1}, t + 2, at::TensorOptions().dtype(at::kLong).device(device_));
    h = ln(h + at::embedding(dec_pos_, pos), dec_ln_w_, dec_ln_b_);
    double scale = std::pow((double)info_.head_dim, -0.5);
    for (size_t l = 0; l < dec_.size(); l++) {
        const BartLayer &L = dec_[l];
        const BartAttn &A = L.self;
        at::Tensor q = heads(mmt::linear(h, A.qw, A.qb), info_.heads),
                   k = heads(mmt::linear(h, A.kw, A.kb), info_.heads),
                   v = heads(mmt::linear(h, A.vw, A.vb), info_.heads);
        at::Tensor kk, vv;
        cache_append(st, (int64_t)l, k, v, &kk, &vv);
        at::Tensor a = self_attend(st, q, kk, vv, at::Tensor(), scale);
        h = ln(h + mmt::linear(a.transpose(1, 2).reshape({N, 1, -1}), A.ow, A.ob), A.ln_w, A.ln_b);

        const BartAttn &C = L.cross;
        q = heads(mmt::linear(h, C.qw, C.qb), info_.heads);
        a = cross_attend(st, (int64_t)l, q, st.cross_bias, scale);
        h = ln(h + mmt::linear(a.view({N, 1, -1}), C.ow, C.ob), C.ln_w, C.ln_b);
        h = ffn(L, h);
    }
    st.len = t + 1;
    /* The product adds final_logits_bias to each finished sum, the very
     * addition `logits + bias` makes (the same bits), instead of a second
     * [N, vocab] pass: the int8 product, and the float32 step kernel on the
     * CPU. */
    const bool fuse = logits_bias_.defined() && logits_bias_.scalar_type() == at::kFloat &&
                      (lm_head_.is_int8() || (device_.is_cpu() && dtype_ == at::kFloat));
    at::Tensor logits =
        mmt::linear(h, lm_head_, fuse ? logits_bias_.view({-1}) : at::Tensor()).view({N, -1});
    if (logits_bias_.defined() && !fuse)
        logits = logits + logits_bias_;
    return logits.to(at::kFloat);
}

uint64_t Bart::quantize_int8() {
    uint64_t saved = 0;
    for (std::vector<BartLayer> *stack : {&enc_, &dec_})
        for (BartLayer &L : *stack)
            for (QWeight *q : {&L.self.qw, &L.self.kw, &L.self.vw, &L.self.ow, &L.cross.qw,
                               &L.cross.kw, &L.cross.vw, &L.cross.ow, &L.fc1w, &L.fc2w})
                saved += q->quantize();
    saved += lm_head_.quantize(); /* tied: shared_ keeps the float table for the lookups */
    return saved;
}

} // namespace

std::unique_ptr<Seq2Seq> make_bart(const json_t *cfg, const Weights &w, at::Device dev,
                                   at::ScalarType dtype) {
    return std::unique_ptr<Seq2Seq>(new Bart(cfg, w, dev, dtype));
}

} // namespace gen
} // namespace mmt
