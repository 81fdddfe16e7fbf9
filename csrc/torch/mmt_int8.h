/* mmt_int8.h: the CPU's reduced-precision dtypes, "int8" and "bfloat16".
 *
 * int8 (dtype="int8"): a linear layer's weight is quantized once at load,
 * symmetrically per output feature (a row's scale is its largest magnitude
 * / 127), and kept as int8 only; each call quantizes its input the same way
 * per row (per token), multiplies int8 x int8 into int32 with at::_int_mm
 * (oneDNN inside libtorch: AMX / AVX512-VNNI / AVX-VNNI where the CPU has
 * them), and scales the sums back to float32 with the row's and the
 * feature's scales before adding the float32 bias.  Per-row activation
 * scales (as CTranslate2 does) keep a row's result independent of the other
 * rows of its batch and lose much less than one scale per tensor.
 *
 * bfloat16 on the CPU needs AVX512_BF16 or AMX-BF16: without them libtorch
 * emulates it, slower than float32.  cpu_has_bf16() reads CPUID (and the
 * OS's XSAVE state) at run time; loads refuse bfloat16 on the CPU when it is
 * false.  PYMODELMGR_CPU_NO_BF16=1 makes it false, for tests of that refusal.
 *
 * Threading: Int8Linear is immutable after quantize(); calls are reentrant. */
#ifndef MMT_INT8_H
#define MMT_INT8_H

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cpuid.h>
#include <cstdint>
#include <cstdlib>
#include <vector>

namespace mmt {

struct Int8Linear {
    at::Tensor wq_t;  /* int8 [k, n]: the transpose (a view) of the [n, k] quantized rows */
    at::Tensor scale; /* float32 [n]: a feature's weight scale */
    at::Tensor b;     /* float32 [n], or undefined */

    bool defined() const { return wq_t.defined(); }

    /* w: float [n, k] (any device-CPU float dtype), b: [n] or undefined. */
    static Int8Linear quantize(const at::Tensor &w, const at::Tensor &b) {
        Int8Linear q;
        at::Tensor wf = w.to(at::kFloat).contiguous();
        at::Tensor s = wf.abs().amax({1}).clamp_min(1e-30f).div(127.0f);
        q.wq_t = wf.div(s.unsqueeze(1)).round().clamp(-127, 127).to(at::kChar).t();
        q.scale = s.contiguous();
        if (b.defined())
            q.b = b.to(at::kFloat).contiguous();
        return q;
    }

    uint64_t bytes() const {
        return (uint64_t)wq_t.numel() + (uint64_t)scale.numel() * 4 +
               (b.defined() ? (uint64_t)b.numel() * 4 : 0);
    }

    /* x: float32 [..., k] on the CPU.  Returns float32 [..., n]. */
    at::Tensor operator()(const at::Tensor &x_in) const {
        const int64_t k = wq_t.size(0), n = wq_t.size(1);
        at::Tensor x = x_in.to(at::kFloat).contiguous();
        const int64_t m = x.numel() / k;
        at::Tensor xq = at::empty({m, k}, x.options().dtype(at::kChar));
        std::vector<float> sx((size_t)m);
        const float *xp = x.data_ptr<float>();
        int8_t *qp = xq.data_ptr<int8_t>();
        at::parallel_for(0, m, 16, [&](int64_t r0, int64_t r1) {
            for (int64_t r = r0; r < r1; r++) {
                const float *row = xp + r * k;
                float amax = 0.f;
                for (int64_t j = 0; j < k; j++)
                    amax = std::max(amax, std::fabs(row[j]));
                const float s = amax > 0.f ? amax / 127.0f : 1.0f;
                const float inv = 1.0f / s;
                int8_t *out = qp + r * k;
                for (int64_t j = 0; j < k; j++) {
                    float v = row[j] * inv;
                    v = v >= 0.f ? v + 0.5f : v - 0.5f; /* round half away from zero */
                    v = std::min(127.f, std::max(-127.f, v));
                    out[j] = (int8_t)(int)v;
                }
                sx[(size_t)r] = s;
            }
        });
        at::Tensor acc = at::_int_mm(xq, wq_t); /* int32 [m, n] */
        std::vector<int64_t> sizes = x.sizes().vec();
        sizes.back() = n;
        at::Tensor y = at::empty(sizes, x.options());
        const int32_t *ap = acc.data_ptr<int32_t>();
        const float *ws = scale.data_ptr<float>();
        const float *bp = b.defined() ? b.data_ptr<float>() : nullptr;
        float *yp = y.data_ptr<float>();
        at::parallel_for(0, m, 16, [&](int64_t r0, int64_t r1) {
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
        });
        return y;
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
