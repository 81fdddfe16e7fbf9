"""dtype="int8" and dtype="bfloat16" on the CPU (csrc/torch/mmt_int8.h), per model (task
kwarg) and as the settings default, on the real all-MiniLM-L6-v2: int8 and bfloat16 stay close
to float32 (README states the measured accuracy over 2,000 sentences), a text's int8 vector does
not depend on what shares its batch, bad dtypes and unsupported combinations are clear errors,
and float32 is untouched."""
import asyncio
import os

import pytest

import pymodelmgr
from pymodelmgr import ModelManager

if not os.path.exists(os.path.join(os.path.dirname(pymodelmgr.__file__), "libmm_torch.so")):
    pytest.skip("the native backend (libmm_torch.so) is not built", allow_module_level=True)

np = pytest.importorskip("numpy")
pytest.importorskip("torch")

from test_embed_shim import minilm_dir, texts  # noqa: E402

SETTINGS = {"fake_gpus": "none", "embedding_cache": {"enabled": False},
            "worker_pool": {"queue_timeout": 0}}
ITEMS = texts(48, seed=5, long_every=9)


def cpu_has_bf16():
    flags = open("/proc/cpuinfo").read()
    return " avx512_bf16" in flags or " amx_bf16" in flags


def cosines(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


async def embed(dtype=None, items=ITEMS, settings=None, **kw):
    async with ModelManager(dict(SETTINGS, **(settings or {}))) as mm:
        if dtype is not None:
            kw["dtype"] = dtype
        r = await mm.task(items, "embedding", minilm_dir(), device="cpu", output="numpy", **kw)
        return r


@pytest.fixture(scope="module")
def fp32():
    r = asyncio.run(embed())
    assert r.success, r.error
    return r.data["embeddings"]


async def test_int8_close_to_float32_and_batch_independent(fp32):
    r = await embed("int8")
    assert r.success, r.error
    q = r.data["embeddings"]
    cos = cosines(q, fp32)
    assert cos.mean() > 0.99 and cos.min() > 0.97, (cos.mean(), cos.min())
    assert np.abs(q - fp32).max() > 1e-4  # int8 really ran
    # per-row activation scales: a text alone gets nearly the vector it gets inside a batch
    # (not bit for bit: float32's last-bit differences between batch shapes can move an
    # activation across an int8 rounding boundary, and one such step of a row's outlier-sized
    # scale carries through the later layers: 0.9984-0.99999 measured, before and after the
    # oneDNN int8 path; unrelated rows' vectors would be near 0.1-0.8)
    async with ModelManager(SETTINGS) as mm:
        alone = await asyncio.gather(*[mm.task([t], "embedding", minilm_dir(), device="cpu",
                                               output="numpy", dtype="int8") for t in ITEMS[:6]])
    for i, a in enumerate(alone):
        assert a.success, a.error
        c = cosines(a.data["embeddings"][:1], q[i:i + 1])[0]
        assert c > 0.997, (i, c)


async def test_int8_as_the_settings_default(fp32):
    r = await embed(settings={"dtype": "int8"})
    assert r.success, r.error
    cos = cosines(r.data["embeddings"], fp32)
    assert cos.min() > 0.97 and np.abs(r.data["embeddings"] - fp32).max() > 1e-4


async def test_float32_unchanged_beside_int8(fp32):
    # a per-model dtype applies to the model it creates; float32 stays exactly float32
    r = await embed("float32")
    assert r.success, r.error
    np.testing.assert_array_equal(r.data["embeddings"], fp32)


@pytest.mark.skipif(not cpu_has_bf16(), reason="this CPU has neither AVX512_BF16 nor AMX-BF16")
async def test_bfloat16_close_to_float32(fp32):
    for name in ("bfloat16", "bf16"):
        r = await embed(name)
        assert r.success, r.error
        cos = cosines(r.data["embeddings"], fp32)
        assert cos.min() > 0.999, cos.min()


async def test_bfloat16_refused_without_cpu_support(monkeypatch):
    monkeypatch.setenv("PYMODELMGR_CPU_NO_BF16", "1")
    r = await embed("bfloat16", items=["hello"])
    assert not r.success
    assert "AVX512_BF16" in r.error.message and "bfloat16" in r.error.message, r.error


async def test_bad_dtypes():
    r = await embed("int4", items=["hello"])
    assert r.error.code == "INVALID_ARGUMENT" and "int4" in r.error.message, r.error
    r = await embed(8, items=["hello"])
    assert r.error.code == "INVALID_ARGUMENT" and "dtype" in r.error.message, r.error
    with pytest.raises(Exception):
        ModelManager(dict(SETTINGS, dtype="int4"))


async def test_int8_generation_runs_on_the_cpu(tmp_path):
    # int8 generation itself is tested in test_dtype_generate.py; here: it is accepted beside
    # float32 (it was refused before)
    from test_generate_helpers import make_t5, train_t5_tokenizer

    d = str(tmp_path / "t5")
    make_t5(d, gated=True, vocab=30)
    corpus = [f"the quick brown fox number {i}" for i in range(50)]
    train_t5_tokenizer(tmp_path / "spm", corpus, vocab_size=30).save_pretrained(d)
    async with ModelManager(SETTINGS) as mm:
        r = await mm.task("hello", "text_generation", d, device="cpu", dtype="int8")
        assert r.success, r.error
        r = await mm.task("hello", "text_generation", d, device="cpu", dtype="float32")
        assert r.success, r.error
