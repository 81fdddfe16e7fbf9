/* mmt_qweight.h: a generation model's linear-layer weight that is either
 * float (the checkpoint's tensor) or int8 (dtype="int8"), behind the same
 * call, mmt::linear(x, w, b).
 *
 * The generation graphs (gen_t5.cpp, gen_bart.cpp, gen_causal.cpp) declare
 * their projection weights as QWeight instead of at::Tensor.  A QWeight is
 * made from a tensor implicitly, so the loading code is unchanged; after
 * loading, quantize() replaces the float weight by its int8 rows and
 * per-output-feature scales (symmetric, a row's scale is its largest
 * magnitude / 127, the rule of mmt_int8.h's embedding layers) and drops the
 * float tensor.
 * Where the CPU has AVX512-VNNI (mmt_qpack_path()), the int8 rows are kept
 * only in mmt_qpack.c's packed layout, which its AMX and VNNI kernels read
 * for every row count; elsewhere they stay row-major for mmt_qskinny.c (a
 * decoder step) and at::_int_mm (an encoder, a prefill).
 * mmt::linear(x, QWeight, b) then runs the float path (mmt_linear.h) or
 * the int8 one: each row of x quantized on its own (per token, dynamic),
 * int8 x int8 summed exactly into int32, then scaled back to float32 and
 * the float32 bias added.  The integer sums are exact and a
 * row's scale depends on that row only, so a row's result does not depend
 * on the rows beside it: a request's output is independent of its batch.
 * This is the scheme of CTranslate2's int8 (per-row activation scales,
 * per-channel weight scales), computed around float32 activations.
 *
 * Threading: a QWeight is immutable after quantize(); calls are reentrant. */
#ifndef MMT_QWEIGHT_H
#define MMT_QWEIGHT_H

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "mmt_linear.h"
#include "mmt_qpack.h"
#include "mmt_qskinny.h"

namespace mmt {

struct QWeight {
    at::Tensor w;     /* float [n, k], or undefined once quantized */
    at::Tensor wq;    /* int8 [n, k], contiguous, after quantize() without packed kernels */
    at::Tensor wp;    /* int8, mmt_qpack_pack's layout, after quantize() with them */
    at::Tensor scale; /* float32 [n]: a feature's weight scale */
    at::Tensor wsum;  /* int32 [n]: each output feature's sum of int8 weights */
    int64_t n = 0, k = 0; /* output and input features once quantized */

    QWeight() = default;
    QWeight(const at::Tensor &t) : w(t) {} /* NOLINT: implicit, so loaders assign tensors */

    bool defined() const { return w.defined() || is_int8(); }
    bool is_int8() const { return wq.defined() || wp.defined(); }
    /* As the float weight's: size(0) = output features, size(1) = input. */
    int64_t size(int64_t d) const { return w.defined() ? w.size(d) : d == 0 ? n : k; }

    /* Replaces the float weight by int8; returns the bytes this frees (0 when
     * the float tensor is shared with another user, e.g. a tied embedding). */
    uint64_t quantize() {
        if (!w.defined())
            return 0;
        const uint64_t before = (uint64_t)w.numel() * w.element_size();
        const bool sole = w.use_count() == 1;
        at::Tensor wf = w.to(at::kFloat).contiguous();
        at::Tensor s = wf.abs().amax({1}).clamp_min(1e-30f).div(127.0f);
        wq = wf.div(s.unsqueeze(1)).round().clamp(-127, 127).to(at::kChar).contiguous();
        scale = s.contiguous();
        wsum = wq.sum(1, false, at::kInt).contiguous();
        n = wq.size(0);
        k = wq.size(1);
        w = at::Tensor();
        if (mmt_qpack_path() != MMT_QPACK_NONE) { /* AVX512-VNNI / AMX: the packed layout only */
            wp = at::empty({mmt_qpack_npad(n) * mmt_qpack_kpad(k)}, wq.options());
            mmt_qpack_pack(wq.data_ptr<int8_t>(), n, k, wp.data_ptr<int8_t>());
            wq = at::Tensor();
        }
        const uint64_t after = (uint64_t)(wq.defined() ? wq.numel() : wp.numel()) +
                               (uint64_t)scale.numel() * 8;
        return sole && before > after ? before - after : 0;
    }
};

/* y = x W^T + b with W int8 (see above).  x: float32 [..., k] on the CPU;
 * b: float [n] or undefined.  Returns float32 [..., n].  A packed weight
 * runs mmt_qpack.c (AMX tiles from MMT_QPACK_AMX_ROWS rows, AVX512-VNNI
 * below); a row-major one mmt_qskinny.c up to MMT_QSKINNY_MAX_ROWS rows (a
 * decoder step), at::_int_mm above (an encoder, a prefill).  All sum
 * exactly and scale alike, so the result is the same bits on every path. */
inline at::Tensor int8_linear(const at::Tensor &x_in, const QWeight &qw, const at::Tensor &b) {
    const int64_t k = qw.k, n = qw.n;
    at::Tensor x = x_in.to(at::kFloat).contiguous();
    const int64_t m = x.numel() / k;
    std::vector<int64_t> sizes = x.sizes().vec();
    sizes.back() = n;
    if (m == 0)
        return at::zeros(sizes, x.options());
    const bool packed = qw.wp.defined();
    /* packed kernels read rows of kpad bytes (zero-padded) */
    const int64_t ldq = packed ? mmt_qpack_kpad(k) : k;
    at::Tensor xq = at::empty({m, ldq}, x.options().dtype(at::kChar));
    std::vector<float> sx((size_t)m);
    const float *xp = x.data_ptr<float>();
    int8_t *qp = xq.data_ptr<int8_t>();
    auto quant_rows = [&](int64_t r0, int64_t r1) {
        mmt_qpack_quantize_rows(xp + r0 * k, r1 - r0, k, qp + r0 * ldq, ldq, sx.data() + r0);
    };
    if (m * k < (1 << 16))
        quant_rows(0, m);
    else
        at::parallel_for(0, m, 16, quant_rows);
    at::Tensor bf;
    if (b.defined())
        bf = b.scalar_type() == at::kFloat ? b.contiguous() : b.to(at::kFloat).contiguous();
    at::Tensor y = at::empty(sizes, x.options());
    /* at least 256 KB of weights a thread, so small products stay on one */
    const int64_t grain = std::max<int64_t>(4, ((int64_t)1 << 18) / k);
    if (packed) {
        mmt_qpack_linear_mt(qp, m, k, qw.wp.data_ptr<int8_t>(), qw.wsum.data_ptr<int32_t>(), n,
                            sx.data(), qw.scale.data_ptr<float>(),
                            bf.defined() ? bf.data_ptr<float>() : nullptr, y.data_ptr<float>(),
                            grain);
        return y;
    }
    if (m <= MMT_QSKINNY_MAX_ROWS) {
        mmt_qskinny_linear_mt(qp, m, k, qw.wq.data_ptr<int8_t>(), qw.wsum.data_ptr<int32_t>(), n,
                              sx.data(), qw.scale.data_ptr<float>(),
                              bf.defined() ? bf.data_ptr<float>() : nullptr,
                              y.data_ptr<float>(), grain);
        return y;
    }
    at::Tensor acc = at::_int_mm(xq, qw.wq.t()); /* int32 [m, n], exact */
    const int32_t *ap = acc.data_ptr<int32_t>();
    const float *ws = qw.scale.data_ptr<float>();
    const float *bp = bf.defined() ? bf.data_ptr<float>() : nullptr;
    float *yp = y.data_ptr<float>();
    auto scale_rows = [&](int64_t r0, int64_t r1) {
        for (int64_t r = r0; r < r1; r++) {
            const int32_t *a = ap + r * n;
            float *o = yp + r * n;
            const float s = sx[(size_t)r];
            if (bp)
                for (int64_t j = 0; j < n; j++)
                    o[j] = (float)a[j] * (s * ws[j]) + bp[j];
            else
                for (int64_t j = 0; j < n; j++)
                    o[j] = (float)a[j] * (s * ws[j]);
        }
    };
    if (m * n < (1 << 16))
        scale_rows(0, m);
    else
        at::parallel_for(0, m, 16, scale_rows);
    return y;
}

inline at::Tensor linear(const at::Tensor &x, const QWeight &w,
                         const at::Tensor &b = at::Tensor()) {
    if (w.is_int8())
        return int8_linear(x, w, b);
    return linear(x, w.w, b);
}

} // namespace mmt

#endif
