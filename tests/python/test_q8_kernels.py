"""The int8 linear layer's float passes (csrc/torch/mmt_q8.c), called on their own through
libmm_torch.so, and the int8 embedding path with and without oneDNN's prepacked matmul.

mmt_q8_quantize_rows must give exactly the scalar rule (a row's scale is max|x| / 127, 1 for a
zero row; x / scale rounded half away from zero, clamped to +-127) for any width (tails that
are not a multiple of the 16-float vector), and a row's result must not depend on the rows
beside it.  mmt_q8_rescale_rows must compute act(y * s_row + b) + residual to float32 accuracy,
with GELU (erf and tanh forms) against torch's.  The int8 embeddings through oneDNN's
qlinear must equal those through at::_int_mm (PYMODELMGR_CPU_INT8_NO_ONEDNN=1): both products
are exact in int32, so only the float rescale could differ.
"""
import asyncio
import ctypes
import os

import numpy as np
import pytest

from test_generate_helpers import lib, torch

P = ctypes.c_void_p
I64 = ctypes.c_int64


@pytest.fixture(scope="module")
def q8():
    L = lib()
    qz = L.mmt_q8_quantize_rows
    qz.argtypes = [P, I64, I64, P, P]
    qz.restype = None
    rs = L.mmt_q8_rescale_rows
    rs.argtypes = [P, I64, I64, P, P, P, ctypes.c_int]
    rs.restype = None
    return qz, rs


def ptr(t):
    return None if t is None else t.data_ptr()


def quantize(q8, x):
    m, k = x.shape
    q = torch.empty(m, k, dtype=torch.int8)
    s = torch.empty(m)
    q8[0](ptr(x), m, k, ptr(q), ptr(s))
    return q, s


def reference(x):
    amax = x.abs().amax(1)
    s = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    v = x * (1.0 / s).unsqueeze(1)
    v = torch.where(v >= 0, v + 0.5, v - 0.5).clamp(-127, 127)
    return v.to(torch.int32).to(torch.int8), s


@pytest.mark.parametrize("k", [1, 15, 16, 17, 384, 389, 1536])
def test_quantize_is_the_scalar_rule(q8, k):
    g = torch.Generator().manual_seed(k)
    x = torch.randn(9, k, generator=g) * torch.logspace(-3, 3, 9).unsqueeze(1)
    x[2] = 0.0                              # a zero row: scale 1, all zeros
    x[3, 0] = 1e4                           # an outlier sets the row's scale
    x[4] = x[4].round()                     # exact halves after scaling happen too
    x[4, : min(k, 8)] = torch.tensor([127.0, -127.0, 63.5, -63.5, 0.5, -0.5, 1.0, -1.0])[: min(k, 8)]
    q, s = quantize(q8, x)
    rq, rs = reference(x)
    assert torch.equal(s, rs)
    assert torch.equal(q, rq)
    assert q.abs().max() <= 127
    # a row alone gets exactly what it gets among others
    for r in (0, 3, 8):
        q1, s1 = quantize(q8, x[r:r + 1].clone())
        assert torch.equal(q1[0], q[r]) and s1[0] == s[r]


@pytest.mark.parametrize("n", [1, 16, 33, 1536])
@pytest.mark.parametrize("act", [0, 1, 2])
def test_rescale_bias_act_residual(q8, n, act):
    g = torch.Generator().manual_seed(n * 10 + act)
    m = 5
    y0 = torch.randn(m, n, generator=g) * 40
    s = torch.rand(m, generator=g) * 0.1 + 0.001
    b = torch.randn(n, generator=g)
    res = torch.randn(m, n, generator=g)
    for bias, resid in ((None, None), (b, None), (b, res), (None, res)):
        y = y0.clone()
        q8[1](ptr(y), m, n, ptr(s), ptr(bias), ptr(resid), act)
        v = y0.double() * s.double().unsqueeze(1) + (0 if bias is None else bias.double())
        if act == 1:
            v = torch.nn.functional.gelu(v)
        elif act == 2:
            v = torch.nn.functional.gelu(v, approximate="tanh")
        if resid is not None:
            v = v + resid.double()
        err = (y.double() - v).abs() / (v.abs() + 1)
        assert err.max() < 2e-6, (bias is None, resid is None, err.max().item())


def test_gelu_over_its_whole_range(q8):
    x = torch.linspace(-120, 120, 48001)
    for act, approx in ((1, "none"), (2, "tanh")):
        y = x.clone().unsqueeze(0)
        one = torch.ones(1)
        q8[1](ptr(y), 1, y.shape[1], ptr(one), None, None, act)
        ref = torch.nn.functional.gelu(x.double(), approximate=approx)
        assert ((y[0].double() - ref).abs() / (ref.abs() + 1)).max() < 2e-6
        assert torch.isfinite(y).all()


def test_int8_without_onednn_equals_with(monkeypatch):
    from pymodelmgr import ModelManager
    from test_dtypes import ITEMS, SETTINGS, minilm_dir

    async def embed():
        async with ModelManager(SETTINGS) as mm:
            r = await mm.task(ITEMS[:24], "embedding", minilm_dir(), device="cpu",
                              output="numpy", dtype="int8")
            assert r.success, r.error
            return r.data["embeddings"]

    fast = asyncio.run(embed())
    monkeypatch.setenv("PYMODELMGR_CPU_INT8_NO_ONEDNN", "1")
    assert os.environ["PYMODELMGR_CPU_INT8_NO_ONEDNN"] == "1"
    plain = asyncio.run(embed())
    assert np.abs(fast - plain).max() < 1e-5
