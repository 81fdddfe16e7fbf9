"""The shim's decoder-step matrix kernel (csrc/torch/mmt_skinny.c), called on
its own through libmm_torch.so.

It must compute x W^T + b to float32 accuracy for every shape it takes (1 to
8 rows, any width, edges that are not multiples of its blocks), and give
bit-identical outputs whatever the rows beside an output's row, whichever
slice of outputs a call covers and however many threads share the work:
that is what makes a lone request's result independent of how it is run.
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


def test_zero_rows_or_outputs_write_nothing(kernel):
    f, _ = kernel
    w = torch.randn(4, 16)
    y = torch.full((1, 4), 5.0)
    f(ptr(torch.randn(1, 16)), 0, 16, ptr(w), 0, 4, None, ptr(y), 4)
    f(ptr(torch.randn(1, 16)), 1, 16, ptr(w), 2, 2, None, ptr(y), 4)
    assert torch.equal(y, torch.full((1, 4), 5.0))
    assert math.isfinite(run(kernel, torch.randn(1, 16), w)[0, 0].item())
