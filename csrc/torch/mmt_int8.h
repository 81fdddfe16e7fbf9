/* mmt_int8.h: the CPU's reduced-precision dtypes, "int8" and "bfloat16".
 *
 * int8 (dtype="int8"): a linear layer's weight is quantized once at load,
 * symmetrically per output feature (a row's scale is its largest magnitude
 * / 127), and kept as int8 only, reordered once for oneDNN's int8 matmul
 * (onednn::qlinear_prepack: AMX / AVX512-VNNI / AVX-VNNI / AVX2 kernels,
 * chosen by oneDNN at run time).  Each call quantizes its input the same way
 * per row (per token; mmt_q8.c, one vector pass), multiplies int8 x int8
 * into int32 and scales by the feature's scale inside oneDNN
 * (onednn::qlinear_pointwise with an input scale of 1), then one more pass
 * multiplies each row by its own scale and adds the float32 bias.  Per-row
 * activation scales (as CTranslate2 does) keep a row's result independent
 * of the other rows of its batch and lose much less than one scale per
 * tensor; oneDNN takes only one input scale per call, hence the separate
 * row pass.  Where libtorch lacks those ops, or a trial product at load is
 * not exact, the weight stays a plain int8 matrix multiplied by
 * at::_int_mm (which reorders it on every call: about 3x slower on MiniLM);
 * PYMODELMGR_CPU_INT8_NO_ONEDNN=1 forces that path, for tests.
 *
 * bfloat16 on the CPU needs AVX512_BF16 or AMX-BF16: without them libtorch
 * emulates it, slower than float32.  cpu_has_bf16() reads CPUID (and the
 * OS's XSAVE state) at run time; loads refuse bfloat16 on the CPU when it is
 * false.  PYMODELMGR_CPU_NO_BF16=1 makes it false, for tests of that refusal.
 *
 * Threading: Int8Linear is immutable after quantize(); calls are reentrant. */
#ifndef MMT_INT8_H
#define MMT_INT8_H

#include "mmt_q8.h"
#include "mmt_threads.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>

#include <algorithm>
#include <cmath>
#include <cpuid.h>
#include <cstdint>
#include <cstdlib>
#include <vector>

namespace mmt {

/* oneDNN's quantized linear as libtorch registers it (onednn::qlinear_prepack
 * and onednn::qlinear_pointwise, no C++ front end: called boxed).  Null when
 * this libtorch lacks them. */
struct QLinearOps {
    c10::OperatorHandle prepack, run;
    static const QLinearOps *get() {
        static const QLinearOps *ops = []() -> const QLinearOps * {
            auto &d = c10::Dispatcher::singleton();
            auto p = d.findOp({"onednn::qlinear_prepack", ""});
            auto r = d.findOp({"onednn::qlinear_pointwise", ""});
            if (!p || !r || !at::hasMKLDNN())
                return nullptr;
            return new QLinearOps{*p, *r};
        }();
        return ops;
    }
};

struct Int8Linear {
    at::Tensor wq_t;   /* int8 [k, n] (the transpose of the quantized rows), when not packed */
    at::Tensor packed; /* the same weight reordered once for oneDNN (qlinear_prepack) */
    at::Tensor scale;  /* float32 [n]: a feature's weight scale */
    at::Tensor wzp;    /* int64 [n] zeros: the weight's zero points (symmetric) */
    at::Tensor b;      /* float32 [n], or undefined */
    int64_t k = 0, n = 0;

    bool defined() const { return wq_t.defined() || packed.defined(); }

    /* w: float [n, k] (any device-CPU float dtype), b: [n] or undefined. */
    static Int8Linear quantize(const at::Tensor &w, const at::Tensor &b) {
        Int8Linear q;
        at::Tensor wf = w.to(at::kFloat).contiguous();
        at::Tensor s = wf.abs().amax({1}).clamp_min(1e-30f).div(127.0f);
        at::Tensor wq = wf.div(s.unsqueeze(1)).round().clamp(-127, 127).to(at::kChar).contiguous();
        q.n = wq.size(0);
        q.k = wq.size(1);
        q.scale = s.contiguous();
        q.wzp = at::zeros({q.n}, at::TensorOptions().dtype(at::kLong));
        if (b.defined())
            q.b = b.to(at::kFloat).contiguous();
        q.wq_t = wq.t();
        q.try_pack(wq);
        return q;
    }

    uint64_t bytes() const {
        return (uint64_t)(packed.defined() ? packed.nbytes() : wq_t.numel()) +
               (uint64_t)scale.numel() * 4 + (b.defined() ? (uint64_t)b.numel() * 4 : 0);
    }

    /* x: float32 [..., k] on the CPU.  Returns float32 [..., n]. */
    at::Tensor operator()(const at::Tensor &x) const { return forward(x, MMT_Q8_NONE, at::Tensor()); }

    /* act(x W^T + b) + residual in one pass after the product: act is one of
     * mmt_q8.h's MMT_Q8_*; residual, when defined, is float32 shaped like the
     * result. */
    at::Tensor forward(const at::Tensor &x_in, int act, const at::Tensor &residual) const {
        at::Tensor x = x_in.to(at::kFloat).contiguous();
        const int64_t m = x.numel() / k;
        at::Tensor xq = at::empty({m, k}, x.options().dtype(at::kChar));
        at::Tensor sx = at::empty({m}, x.options());
        quantize_rows(x.data_ptr<float>(), m, xq.data_ptr<int8_t>(), sx.data_ptr<float>());
        at::Tensor y = packed.defined() ? run_packed(xq) : run_int_mm(xq);
        at::Tensor res;
        if (residual.defined()) {
            TORCH_CHECK(residual.numel() == m * n, "Int8Linear: residual has ", residual.numel(),
                        " elements, the result ", m * n);
            res = residual.to(at::kFloat).contiguous();
        }
        rescale_rows(y.data_ptr<float>(), m, sx.data_ptr<float>(), b, res, act);
        std::vector<int64_t> sizes = x.sizes().vec();
        sizes.back() = n;
        return y.view(sizes);
    }

  private:
    /* Quantizes x's rows, split across this thread's intra-op threads. */
    void quantize_rows(const float *xp, int64_t m, int8_t *qp, float *sp) const {
        const int64_t kk = k;
        at::parallel_for(0, m, 64, [&](int64_t r0, int64_t r1) {
            mmt_q8_quantize_rows(xp + r0 * kk, r1 - r0, kk, qp + r0 * kk, sp + r0);
        });
    }

    void rescale_rows(float *yp, int64_t m, const float *sp, const at::Tensor &bias,
                      const at::Tensor &res, int act) const {
        const int64_t nn = n;
        const float *bp = bias.defined() ? bias.data_ptr<float>() : nullptr;
        const float *rp = res.defined() ? res.data_ptr<float>() : nullptr;
        at::parallel_for(0, m, 64, [&](int64_t r0, int64_t r1) {
            mmt_q8_rescale_rows(yp + r0 * nn, r1 - r0, nn, sp + r0, bp, rp ? rp + r0 * nn : nullptr,
                                act);
        });
    }

    /* float32 [m, n]: acc * scale[j] (the row scale and bias come after). */
    at::Tensor run_packed(const at::Tensor &xq) const {
        torch::jit::Stack st{xq, 1.0, (int64_t)0, packed, scale, wzp, c10::IValue(), 1.0,
                             (int64_t)0, at::ScalarType::Float, std::string("none"),
                             c10::List<std::optional<at::Scalar>>(), std::string("none")};
        QLinearOps::get()->run.callBoxed(&st);
        return st[0].toTensor();
    }

    at::Tensor run_int_mm(const at::Tensor &xq) const {
        return at::_int_mm(xq, wq_t).to(at::kFloat).mul_(scale);
    }

    /* Reorders the weight for oneDNN's int8 matmul (AMX / AVX512-VNNI /
     * AVX-VNNI / AVX2, as the CPU has them) and keeps that copy only, when
     * the ops exist and a trial product is exact against a float64 one;
     * otherwise wq_t and at::_int_mm stay. */
    void try_pack(const at::Tensor &wq) {
        const QLinearOps *ops = QLinearOps::get();
        const char *off = getenv("PYMODELMGR_CPU_INT8_NO_ONEDNN"); /* tests of the fallback */
        if (!ops || (off && *off && *off != '0'))
            return;
        try {
            /* single-threaded, like every CPU forward (see mm_torch_embed_many) */
            SingleThreaded one_thread;
            torch::jit::Stack st{wq, c10::IValue()};
            ops->prepack.callBoxed(&st);
            Int8Linear t = *this;
            t.packed = st[0].toTensor();
            t.wq_t = at::Tensor();
            at::Tensor xq = at::randint(-127, 128, {8, k}, at::TensorOptions().dtype(at::kChar));
            at::Tensor got = t.run_packed(xq).to(at::kDouble);
            at::Tensor ref = xq.to(at::kDouble).mm(wq.t().to(at::kDouble)) * scale.to(at::kDouble);
            if (!at::allclose(got, ref, 1e-6, 1e-3))
                return;
            packed = t.packed;
            wq_t = at::Tensor();
        } catch (...) {
        }
    }
};

/* True when the CPU computes bfloat16 natively (AVX512_BF16 or AMX-BF16)
 * and the OS saves the registers that needs. */
inline bool cpu_has_bf16() {
    const char *no = getenv("PYMODELMGR_CPU_NO_BF16");
    if (no && *no && *no != '0')
        return false;
#if defined(__x86_64__) || defined(__i386__)
    unsigned a, b, c, d;
    if (!__get_cpuid_count(1, 0, &a, &b, &c, &d) || !(c & (1u << 27))) /* OSXSAVE */
        return false;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    const bool avx512_os = (lo & 0xe6) == 0xe6;          /* XMM YMM opmask ZMM state */
    const bool amx_os = (((uint64_t)hi << 32 | lo) >> 17 & 3) == 3; /* XTILECFG XTILEDATA */
    bool avx512bf16 = false, amxbf16 = false;
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d))
        amxbf16 = (d >> 22) & 1;
    if (__get_cpuid_count(7, 1, &a, &b, &c, &d))
        avx512bf16 = (a >> 5) & 1;
    return (avx512bf16 && avx512_os) || (amxbf16 && amx_os);
#else
    return false;
#endif
}

} // namespace mmt

#endif
