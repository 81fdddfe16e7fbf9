"""The packed int8 kernels of generation's int8 linear layers (csrc/torch/mmt_qpack.c), called
on their own through libmm_torch.so.

mmt_qpack_quantize_rows must give exactly the rule of the row-major path (a row's scale is
max|x| / 127, 1 for a zero row; x * (1 / scale) clamped to +-127 and rounded half to even), with
the row's padding zeroed; and the product on the packed weight must give, through AMX tiles and
through AVX512-VNNI alike, exactly (float)sum * (sx * ws) + bias with the sum exact in int32,
for row counts on both sides of the AMX threshold and of the kernels' blocks (1-6 rows, 16 and
32 row tiles) and widths that are not multiples of the packing (outputs 32, inputs 64).
"""
import ctypes

import numpy as np
import pytest

from test_generate_helpers import lib, torch  # noqa: F401  (torch loads libtorch first)

P = ctypes.c_void_p
I64 = ctypes.c_int64
VNNI, AMX = 1, 2


@pytest.fixture(scope="module")
def qp():
    L = lib()
    for f in ("mmt_qpack_kpad", "mmt_qpack_npad"):
        getattr(L, f).argtypes = [I64]
        getattr(L, f).restype = I64
    L.mmt_qpack_path.restype = ctypes.c_int
    L.mmt_qpack_pack.argtypes = [P, I64, I64, P]
    L.mmt_qpack_quantize_rows.argtypes = [P, I64, I64, P, I64, P]
    L.mmt_qpack_linear_path.argtypes = [ctypes.c_int, P, I64, I64, P, P, I64, P, P, P, P]
    L.mmt_qpack_linear_path.restype = ctypes.c_int
    return L


def ref_quant(x):
    amax = np.abs(x).max(1)
    s = np.where(amax > 0, amax / np.float32(127), np.float32(1)).astype(np.float32)
    inv = (np.float32(1) / s).astype(np.float32)
    return np.rint(np.clip(x * inv[:, None], -127, 127)).astype(np.int8), s


def test_quantize_rows_is_the_scalar_rule(qp):
    rng = np.random.default_rng(1)
    for k in (1, 15, 16, 17, 70, 512, 771):
        x = (rng.standard_normal((9, k)) * rng.choice([1e-3, 1, 40], (9, 1))).astype(np.float32)
        x[3] = 0
        if k >= 4:  # scale exactly 1: ties round to even (2.5 -> 2, -3.5 -> -4, 0.5 -> 0)
            x[4] = np.clip(x[4], -100, 100)
            x[4, :4] = [127, 2.5, -3.5, 0.5]
        kp = qp.mmt_qpack_kpad(k)
        q = np.full((9, kp), 99, np.int8)
        s = np.zeros(9, np.float32)
        qp.mmt_qpack_quantize_rows(x.ctypes.data, 9, k, q.ctypes.data, kp, s.ctypes.data)
        qr, sr = ref_quant(x)
        assert np.array_equal(q[:, :k], qr), k
        assert np.array_equal(s, sr) and s[3] == 1, k
        if k >= 4:
            assert list(q[4, :4]) == [127, 2, -4, 0] and s[4] == 1, k
        assert not q[:, k:].any(), k  # the padding the kernels read is zero


def test_packed_products_are_exact_on_every_path(qp):
    import os

    flags = open("/proc/cpuinfo").read()
    rng = np.random.default_rng(2)
    ran = set()
    for n, k in ((40, 70), (33, 64), (512, 512), (100, 200), (1000, 768)):
        W = rng.integers(-127, 128, (n, k), dtype=np.int8)
        kp, npad = qp.mmt_qpack_kpad(k), qp.mmt_qpack_npad(n)
        assert kp % 64 == 0 and kp >= k and npad % 32 == 0 and npad >= n
        wp = np.zeros(npad * kp, np.int8)
        qp.mmt_qpack_pack(W.ctypes.data, n, k, wp.ctypes.data)
        wsum = W.astype(np.int32).sum(1).astype(np.int32)
        ws = (rng.random(n) * 0.01).astype(np.float32)
        bias = rng.standard_normal(n).astype(np.float32)
        for m in (1, 2, 3, 4, 5, 6, 7, 13, 16, 17, 32, 33, 50, 64, 70):
            x = (rng.standard_normal((m, k)) * 3).astype(np.float32)
            xq = np.zeros((m, kp), np.int8)
            sx = np.zeros(m, np.float32)
            qp.mmt_qpack_quantize_rows(x.ctypes.data, m, k, xq.ctypes.data, kp, sx.ctypes.data)
            acc = xq[:, :k].astype(np.int64) @ W.astype(np.int64).T
            assert np.abs(acc).max() < 2**31
            base = acc.astype(np.float32) * (sx[:, None] * ws[None, :])
            for b in (bias, None):
                want = base + b[None, :] if b is not None else base
                for path in (VNNI, AMX):
                    y = np.full((m, n), np.nan, np.float32)
                    rc = qp.mmt_qpack_linear_path(
                        path, xq.ctypes.data, m, k, wp.ctypes.data, wsum.ctypes.data, n,
                        sx.ctypes.data, ws.ctypes.data, None if b is None else b.ctypes.data,
                        y.ctypes.data)
                    if rc != 0:
                        continue
                    ran.add(path)
                    assert np.array_equal(y, want), (path, n, k, m, b is None)
                    # a row's result does not depend on the rows beside it
                    y1 = np.zeros((1, n), np.float32)
                    r = m // 2
                    qp.mmt_qpack_linear_path(
                        path, xq[r:r + 1].ctypes.data, 1, k, wp.ctypes.data, wsum.ctypes.data,
                        n, sx[r:r + 1].ctypes.data, ws.ctypes.data,
                        None if b is None else b.ctypes.data, y1.ctypes.data)
                    assert np.array_equal(y1[0], y[r]), (path, n, k, m)
    forced = os.environ.get("PYMODELMGR_CPU_INT8_KERNEL", "")
    if " avx512_vnni" in flags and " avx512bw" in flags and forced in ("", "vnni"):
        assert VNNI in ran
        assert qp.mmt_qpack_path() in (VNNI, AMX)
    if qp.mmt_qpack_path() == AMX:
        assert AMX in ran and " amx_int8" in flags
