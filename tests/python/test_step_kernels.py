"""The shim's decoder-step kernels, called on their own through libmm_torch.so.

mmt_skinny_linear (csrc/torch/mmt_skinny.c) must compute x W^T + b to float32 accuracy for every shape it takes (1 to
64 rows, any width, edges that are not multiples of its blocks), and give
bit-identical outputs whatever the rows beside an output's row, whichever
slice of outputs a call covers and however many threads share the work
(several callers at once included): that is what makes a lone request's
result independent of how it is run.

mmt_attend_one (csrc/torch/mmt_attend.c) must equal
scaled_dot_product_attention to float32 accuracy for one query per row over
strided caches, with a float bias or a bool mask broadcast over rows or heads,
on one thread or several, give zeros where every position is masked, and give
rows that share one copy of keys and values (a request's beams) exactly what
they get from copies of their own.  mmt_attend_slots, which reads each row's
positions from the cache rows a slot table names (beam search's reordered
histories, never copied), must give bit for bit what mmt_attend_one gives on
caches gathered by that table.
"""
import ctypes
import math

import pytest

from test_generate_helpers import lib, torch

P = ctypes.c_void_p
I64 = ctypes.c_int64


@pytest.fixture(scope="module")
def kernel():
    L = lib()
    f = L.mmt_skinny_linear
    f.argtypes = [P, I64, I64, P, I64, I64, P, P, I64]
    f.restype = None
    mt = L.mmt_skinny_linear_mt
    mt.argtypes = [P, I64, I64, P, I64, P, P, I64]
    mt.restype = None
    return f, mt


def ptr(t):
    return None if t is None else t.data_ptr()


def run(kernel, x, w, b=None, n0=0, n1=None):
    f, _ = kernel
    m, k = x.shape
    n = w.shape[0]
    y = torch.full((m, n), float("nan"))
    f(ptr(x), m, k, ptr(w), n0, n if n1 is None else n1, ptr(b), ptr(y), n)
    return y


@pytest.mark.parametrize("k", [1, 15, 16, 17, 64, 200, 512])
@pytest.mark.parametrize("n", [1, 7, 8, 9, 33, 260])
def test_matches_float64_reference(kernel, k, n):
    g = torch.Generator().manual_seed(k * 1000 + n)
    w = torch.randn(n, k, generator=g)
    b = torch.randn(n, generator=g)
    for m in range(1, 9):
        x = torch.randn(m, k, generator=g)
        for bias in (None, b):
            y = run(kernel, x, w, bias)
            ref = x.double() @ w.double().T + (0 if bias is None else bias.double())
            tol = 1e-6 * (x.double().abs() @ w.double().abs().T) + 1e-6
            assert torch.all((y.double() - ref).abs() <= tol), (m, k, n, bias is not None)


def test_rows_and_slices_change_no_bit(kernel):
    g = torch.Generator().manual_seed(7)
    k, n = 771, 203  # neither a multiple of 16 nor of 8
    w, b = torch.randn(n, k, generator=g), torch.randn(n, generator=g)
    x = torch.randn(8, k, generator=g)
    full = run(kernel, x, w, b)
    for m in range(1, 8):
        assert torch.equal(run(kernel, x[:m].contiguous(), w, b), full[:m])
    for r in range(8):
        assert torch.equal(run(kernel, x[r:r + 1].contiguous(), w, b)[0], full[r])
    # outputs [13, 150) only: the rest stays untouched
    part = run(kernel, x, w, b, 13, 150)
    assert torch.equal(part[:, 13:150], full[:, 13:150])
    assert torch.isnan(part[:, :13]).all() and torch.isnan(part[:, 150:]).all()


@pytest.mark.parametrize("k,n", [(771, 203), (64, 13), (512, 50)])
def test_many_rows_match_float64_and_single_rows_bit_for_bit(kernel, k, n):
    """From 8 rows on (a batched step) the kernel works on blocks of 4 rows x 6 outputs:
    every row must still get exactly what it gets alone, and the float32 accuracy."""
    g = torch.Generator().manual_seed(k + n)
    w, b = torch.randn(n, k, generator=g), torch.randn(n, generator=g)
    x = torch.randn(64, k, generator=g)
    alone = torch.cat([run(kernel, x[r:r + 1].contiguous(), w, b) for r in range(64)])
    ref = x.double() @ w.double().T + b.double()
    tol = 1e-6 * (x.double().abs() @ w.double().abs().T) + 1e-6
    assert torch.all((alone.double() - ref).abs() <= tol)
    for m in (8, 9, 13, 31, 32, 33, 64):
        assert torch.equal(run(kernel, x[:m].contiguous(), w, b), alone[:m]), m
        assert torch.equal(run(kernel, x[64 - m:].contiguous(), w, b), alone[64 - m:]), m
    part = run(kernel, x[:40].contiguous(), w, b, 7, n - 5)  # a slice on no block edge
    assert torch.equal(part[:, 7:n - 5], alone[:40, 7:n - 5])
    assert torch.isnan(part[:, :7]).all() and torch.isnan(part[:, n - 5:]).all()


def test_threads_change_no_bit(kernel):
    _, mt = kernel
    g = torch.Generator().manual_seed(8)
    k, n = 512, 4099
    w, b = torch.randn(n, k, generator=g), torch.randn(n, generator=g)
    before = torch.get_num_threads()
    try:
        for m in (1, 4):
            x = torch.randn(m, k, generator=g)
            serial = run(kernel, x, w, b)
            for threads in (1, 2, 3):
                torch.set_num_threads(threads)  # this thread's OpenMP team
                y = torch.full((m, n), float("nan"))
                mt(ptr(x), m, k, ptr(w), n, ptr(b), ptr(y), 8)
                assert torch.equal(y, serial), (m, threads)
    finally:
        torch.set_num_threads(before)


def test_concurrent_callers_share_the_work_sharing_pool_exactly(kernel):
    """Several threads call the threaded kernel at once: one of them owns the work-sharing
    pool (mmt_pool.c) per product, the others run theirs alone; every product is exact."""
    import threading

    _, mt = kernel
    g = torch.Generator().manual_seed(9)
    k, n = 256, 2053
    w, b = torch.randn(n, k, generator=g), torch.randn(n, generator=g)
    xs = [torch.randn(1 + i % 4, k, generator=g) for i in range(6)]
    want = [run(kernel, x, w, b) for x in xs]
    bad = []

    def caller(i):
        torch.set_num_threads(2 + i % 2)
        x = xs[i]
        for _ in range(40):
            y = torch.full((x.shape[0], n), float("nan"))
            mt(ptr(x), x.shape[0], k, ptr(w), n, ptr(b), ptr(y), 8)  # ctypes drops the GIL
            if not torch.equal(y, want[i]):
                bad.append(i)

    before = torch.get_num_threads()
    try:
        ts = [threading.Thread(target=caller, args=(i,)) for i in range(len(xs))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    finally:
        torch.set_num_threads(before)
    assert bad == []


def test_zero_rows_or_outputs_write_nothing(kernel):
    f, _ = kernel
    w = torch.randn(4, 16)
    y = torch.full((1, 4), 5.0)
    f(ptr(torch.randn(1, 16)), 0, 16, ptr(w), 0, 4, None, ptr(y), 4)
    f(ptr(torch.randn(1, 16)), 1, 16, ptr(w), 2, 2, None, ptr(y), 4)
    assert torch.equal(y, torch.full((1, 4), 5.0))
    assert math.isfinite(run(kernel, torch.randn(1, 16), w)[0, 0].item())


class KV(ctypes.Structure):
    _fields_ = [("base", P), ("row", I64), ("head", I64), ("pos", I64)]


class Bias(ctypes.Structure):
    _fields_ = [("bias", P), ("row", I64), ("head", I64),
                ("mask", P), ("mrow", I64), ("mhead", I64)]


@pytest.fixture(scope="module")
def attend():
    f = lib().mmt_attend_one
    f.argtypes = [P, I64, I64, I64, I64, I64, KV, KV, Bias, ctypes.c_float, P, P, ctypes.c_int]
    f.restype = None

    def call(q, k, v, bias=None, scale=1.0, threads=1, share=1):
        """q [R, H, 1, hd]; k, v [R / share, H, len, hd] views (last dim
        contiguous); bias float or bool [1 or R / share, 1 or H, 1, len]."""
        R, H, _, hd = q.shape
        n = k.shape[2]
        qc = q.contiguous()
        out = torch.full((R, H, 1, hd), float("nan"))
        scratch = torch.empty(threads, n)
        b = Bias(None, 0, 0, None, 0, 0)
        if bias is not None:
            row = 0 if bias.shape[0] == 1 else bias.stride(0)
            head = 0 if bias.shape[1] == 1 else bias.stride(1)
            if bias.dtype == torch.bool:
                b.mask, b.mrow, b.mhead = bias.data_ptr(), row, head
            else:
                b.bias, b.row, b.head = bias.data_ptr(), row, head
        f(qc.data_ptr(), R, share, H, hd, n, KV(k.data_ptr(), *k.stride()[:3]),
          KV(v.data_ptr(), *v.stride()[:3]), b, scale, out.data_ptr(), scratch.data_ptr(), threads)
        return out
    return call


def sdpa(q, k, v, bias, scale):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale)


@pytest.mark.parametrize("hd", [64, 24, 8])
def test_attention_matches_sdpa(attend, hd):
    g = torch.Generator().manual_seed(hd)
    R, H, cap, n = 12, 3, 40, 29
    q = torch.randn(R, H, 1, hd, generator=g)
    cache_k = torch.randn(R, H, cap, hd, generator=g)  # a cache filled up to n
    cache_v = torch.randn(R, H, cap, hd, generator=g)
    k, v = cache_k.narrow(2, 0, n), cache_v.narrow(2, 0, n)
    keep = torch.rand(R, 1, 1, n, generator=g) > 0.3
    keep[:, :, :, 0] = True
    biases = [None,
              torch.randn(1, H, 1, n, generator=g),                 # T5 self: per head
              torch.randn(R, H, 1, n, generator=g),                 # per row and head
              keep,                                                 # BART cross: bool per row
              torch.where(keep, 0.0, torch.finfo(torch.float32).min).expand(R, H, 1, n).contiguous()]
    for bias in biases:
        for scale in (1.0, hd ** -0.5):  # T5 leaves scores unscaled: peaked softmaxes
            ref = sdpa(q, k, v, bias, scale)
            exact = sdpa(q.double(), k.double(), v.double(),
                         bias if bias is None or bias.dtype == torch.bool else bias.double(), scale)
            # within a small factor of ATen's own float32 error against float64
            tol = 4 * (ref.double() - exact).abs().max().item() + 1e-6
            for threads in (1, 2):
                ours = attend(q, k, v, bias, scale, threads=threads)
                err = (ours.double() - exact).abs().max().item()
                assert err <= tol, (bias is None, scale, threads, err, tol)


def test_rows_sharing_an_entry_match_their_own_copies_bit_for_bit(attend):
    # the beams of a request read one copy of its encoder keys, values and mask
    g = torch.Generator().manual_seed(11)
    E, share, H, n, hd = 5, 4, 3, 23, 64
    q = torch.randn(E * share, H, 1, hd, generator=g)
    k, v = torch.randn(E, H, n, hd, generator=g), torch.randn(E, H, n, hd, generator=g)
    keep = torch.rand(E, 1, 1, n, generator=g) > 0.4
    keep[:, :, :, 0] = True
    bias = torch.randn(E, H, 1, n, generator=g)
    rep = lambda t: t.repeat_interleave(share, 0)  # noqa: E731
    for b in (None, keep, bias, bias[:1]):
        b_rows = None if b is None else (b if b.shape[0] == 1 else rep(b))
        for threads in (1, 2):
            shared = attend(q, k, v, b, 0.125 if b is not keep else 0.5, threads, share)
            own = attend(q, rep(k), rep(v), b_rows, 0.125 if b is not keep else 0.5, threads)
            assert torch.equal(shared, own)


def test_attention_threads_change_no_bit(attend):
    g = torch.Generator().manual_seed(3)
    R, H, n, hd = 64, 8, 17, 64  # 512 problems: the team splits them
    q, k, v = (torch.randn(R, H, m, hd, generator=g) for m in (1, n, n))
    one = attend(q, k, v, threads=1)
    assert torch.equal(attend(q, k, v, threads=2), one)
    assert torch.equal(attend(q, k, v, threads=3), one)


def test_attention_with_every_position_masked_is_zero(attend):
    q, k, v = torch.randn(9, 2, 1, 16), torch.randn(9, 2, 5, 16), torch.randn(9, 2, 5, 16)
    keep = torch.ones(9, 1, 1, 5, dtype=torch.bool)
    keep[4] = False
    out = attend(q, k, v, keep)
    assert torch.equal(out[4], torch.zeros(2, 1, 16))
    assert torch.allclose(out[3], sdpa(q[3:4], k[3:4], v[3:4], None, 1.0)[0], rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def attend_slots():
    f = lib().mmt_attend_slots
    f.argtypes = [P, I64, I64, I64, I64, I64, KV, KV, Bias, P, I64, ctypes.c_float, P, P,
                  ctypes.c_int]
    f.restype = None
    return f


def test_slot_table_reads_what_a_gathered_cache_holds_bit_for_bit(attend, attend_slots):
    """Beam search's caches are never reordered: row r's position s is read from cache row
    slot[r, s].  The result must be the kernel's on a cache gathered by that table."""
    g = torch.Generator().manual_seed(5)
    R, H, cap, n, hd = 24, 3, 33, 19, 64
    q = torch.randn(R, H, 1, hd, generator=g)
    K, V = torch.randn(R, H, cap, hd, generator=g), torch.randn(R, H, cap, hd, generator=g)
    slot = torch.randint(0, R, (R, cap), generator=g, dtype=torch.int32)
    pos = torch.arange(n)
    gk = K[slot[:, :n].long(), :, pos].permute(0, 2, 1, 3).contiguous()  # [R, H, n, hd]
    gv = V[slot[:, :n].long(), :, pos].permute(0, 2, 1, 3).contiguous()
    assert torch.equal(gk[3, 1, 7], K[slot[3, 7], 1, 7])
    for bias in (None, torch.randn(1, H, 1, n, generator=g), torch.randn(R, H, 1, n, generator=g)):
        b = Bias(None, 0, 0, None, 0, 0)
        if bias is not None:
            b.bias = bias.data_ptr()
            b.row, b.head = (0 if bias.shape[0] == 1 else bias.stride(0)), bias.stride(1)
        for threads in (1, 2):
            want = attend(q, gk, gv, bias, 0.125, threads)
            out = torch.full((R, H, 1, hd), float("nan"))
            scratch = torch.empty(threads, n)
            attend_slots(q.data_ptr(), R, 1, H, hd, n, KV(K.data_ptr(), *K.stride()[:3]),
                         KV(V.data_ptr(), *V.stride()[:3]), b, slot.data_ptr(), cap, 0.125,
                         out.data_ptr(), scratch.data_ptr(), threads)
            assert torch.equal(out, want), (bias is None, threads)


@pytest.fixture(scope="module")
def beam_topk():
    f = lib().mmt_beam_topk
    f.argtypes = [P, I64, I64, I64, P, I64, P, P]
    f.restype = I64

    def call(lp, add, k):
        nb, V = lp.shape
        val, idx = torch.full((k,), float("nan")), torch.full((k,), -1, dtype=torch.int64)
        got = f(lp.data_ptr(), lp.stride(0), nb, V, None if add is None else add.data_ptr(), k,
                val.data_ptr(), idx.data_ptr())
        return got, val, idx
    return call


def test_beam_topk_is_torch_topk_of_the_sum(beam_topk):
    """A request's K best continuations: lp[j, v] + score[j] over all beams and tokens, as
    transformers' torch.topk over (lp + scores).view(-1) picks them, in one pass."""
    g = torch.Generator().manual_seed(4)
    for nb, V, k in ((4, 50265, 8), (1, 37, 2), (3, 64, 6), (5, 1000, 10), (2, 130, 4)):
        lp = torch.log_softmax(torch.randn(nb, V, generator=g) * 3, -1)
        lp[:, V // 3] = -float("inf")  # masked tokens (min_length's EOS)
        add = torch.randn(nb, generator=g) * 5
        got, val, idx = beam_topk(lp, add, k)
        ref_v, ref_i = torch.topk((lp + add[:, None]).reshape(-1), k)
        assert got == k and torch.equal(val, ref_v) and torch.equal(idx, ref_i), (nb, V, k)
    # equal values: the lower candidate index first; a row stride wider than the row
    wide = torch.zeros(2, 80)
    wide[:, :70] = torch.arange(70.0).repeat(2, 1) % 7
    got, val, idx = beam_topk(wide[:, :70], torch.zeros(2), 5)
    assert val.tolist() == [6.0] * 5
    assert idx.tolist() == [6, 13, 20, 27, 34]
    got, val, idx = beam_topk(wide[:, :70], None, 30)
    assert idx.tolist()[:11] == [6, 13, 20, 27, 34, 41, 48, 55, 62, 69, 76]
    # fewer candidates than k: all of them
    got, val, idx = beam_topk(torch.tensor([[1.0, 3.0, 2.0]]), None, 5)
    assert got == 3 and val[:3].tolist() == [3.0, 2.0, 1.0] and idx[:3].tolist() == [1, 2, 0]
