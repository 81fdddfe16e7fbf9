/* mmt_linear.h: mmt::linear(x, w, b), at::linear with a faster path for
 * the products of a decoder step.
 *
 * A float32 product on the CPU with at most MMT_SKINNY_MAX_ROWS rows in x
 * (a lone request, its beams, a greedy group of a burst) runs
 * mmt_skinny_linear (mmt_skinny.c), which streams the weights at the
 * memory's speed and never repacks them, split by output features across
 * the intra-op threads (one inside run_pieces, all of them for a lone
 * request).  A row's result then does not depend on the rows beside it.
 * Every other product, device or dtype is at::linear's. */
#ifndef MMT_LINEAR_H
#define MMT_LINEAR_H

#include <ATen/ATen.h>

#include <algorithm>
#include <vector>

#include "mmt_skinny.h"

namespace mmt {

inline at::Tensor linear(const at::Tensor &x, const at::Tensor &w,
                         const at::Tensor &b = at::Tensor()) {
    const bool fits =
        x.device().is_cpu() && x.scalar_type() == at::kFloat && w.scalar_type() == at::kFloat &&
        w.dim() == 2 && w.is_contiguous() && x.dim() >= 1 && w.size(1) > 0 &&
        x.size(-1) == w.size(1) &&
        (!b.defined() ||
         (b.scalar_type() == at::kFloat && b.is_contiguous() && b.numel() == w.size(0)));
    if (!fits)
        return at::linear(x, w, b);
    const int64_t k = w.size(1), n = w.size(0), m = x.numel() / k;
    if (m < 1 || m > MMT_SKINNY_MAX_ROWS)
        return at::linear(x, w, b);
    at::Tensor xc = x.contiguous();
    std::vector<int64_t> sizes = x.sizes().vec();
    sizes.back() = n;
    at::Tensor y = at::empty(sizes, x.options());
    const float *xp = xc.data_ptr<float>(), *wp = w.data_ptr<float>();
    const float *bp = b.defined() ? b.data_ptr<float>() : nullptr;
    float *yp = y.data_ptr<float>();
    /* at least 256 KB of weights a thread, so small products stay on one */
    const int64_t grain = std::max<int64_t>(8, ((int64_t)1 << 18) / (k * (int64_t)sizeof(float)));
    mmt_skinny_linear_mt(xp, m, k, wp, n, bp, yp, grain);
    return y;
}

} // namespace mmt

#endif
