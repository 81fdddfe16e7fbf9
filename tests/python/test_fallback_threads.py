"""Fallback models loading on several worker threads at once leave transformers intact.

transformers' ``from_pretrained`` swaps process-wide functions while it builds a model
(``PreTrainedModel.tie_weights`` / ``init_weights`` with no-ops, ``torch.nn.init.*``,
``torch.linspace``) and, on the way out, puts back whatever it saw on the way in.  Two
loads that overlap on two threads therefore leave the no-ops in place for good, and every
model with tied weights loaded later in the process (T5, BART: the references of the
generation parity tests) gets random weights where its tied ones belong.  That made 53
generation parity tests fail in one full run under load, after a fallback test had loaded
one model on two workers at once.  The fallback now serializes its loads
(``pymodelmgr.TRANSFORMERS_LOAD_LOCK``); here several fallback models load at once, on
their own worker threads, again and again, and transformers must come out as it went in.

Also process-wide: torch's default dtype (from_pretrained sets it during a load: native
models must not read it) and torch's random generator (seeded fallback sampling on two
workers at once must still reproduce a lone call).
"""
import asyncio
import os

import pytest

import pymodelmgr
from pymodelmgr import _core, fallback

if not getattr(_core, "HAVE_FALLBACK", 0):
    pytest.skip("the fallback is not built", allow_module_level=True)

torch = pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")


def _copies(src, root, n):
    """n folders that are each a whole model (links to src's files): n distinct models."""
    out = []
    for i in range(n):
        d = os.path.join(str(root), f"m{i}")
        for base, _, files in os.walk(src):
            rel = os.path.relpath(base, src)
            os.makedirs(os.path.join(d, rel), exist_ok=True)
            for f in files:
                os.symlink(os.path.join(base, f), os.path.join(d, rel, f))
        out.append(d)
    return out


async def test_concurrent_fallback_loads_leave_transformers_intact(make_mm, minilm_dir, tmp_path):
    from transformers import AutoModelForSeq2SeqLM

    from test_generate_helpers import make_t5

    dirs = _copies(minilm_dir, tmp_path, 3)
    mm = make_mm(cpu_threads=1, worker_pool={"queue_timeout": 0})
    assert fallback.loading_patches() == []
    for _ in range(2):
        rs = await asyncio.gather(*(mm.task(["hello world"], "embedding", d, device="cpu",
                                            backend="transformers") for d in dirs))
        for r in rs:
            assert r.success and r.data["backend"] == "transformers", r.error
        assert fallback.loading_patches() == []
        for d in dirs:
            assert (await mm.release_model(d)).data["released"]
    # what the leak broke: a T5 with tied embeddings loads tied, equal to what was saved
    path = str(tmp_path / "t5")
    saved = make_t5(path, gated=False)
    loaded = AutoModelForSeq2SeqLM.from_pretrained(path)
    assert loaded.lm_head.weight.data_ptr() == loaded.shared.weight.data_ptr()
    assert torch.equal(loaded.shared.weight, saved.shared.weight)


def test_the_lock_is_public():
    assert pymodelmgr.TRANSFORMERS_LOAD_LOCK is fallback.LOAD_LOCK
    assert "TRANSFORMERS_LOAD_LOCK" in pymodelmgr.__all__
    with pymodelmgr.TRANSFORMERS_LOAD_LOCK:  # re-entrant: a load may build a model inside it
        with pymodelmgr.TRANSFORMERS_LOAD_LOCK:
            pass


async def test_a_leftover_of_the_apps_own_threads_is_put_back(make_mm, minilm_dir, caplog):
    """An overlap of the application's own loads left transformers' stand-ins behind: the
    next fallback load puts the real functions back first (and says so) instead of loading
    with them."""
    from transformers.modeling_utils import PreTrainedModel

    assert fallback.loading_patches() == []  # (records the real methods)
    real_tie, real_linspace = PreTrainedModel.tie_weights, torch.linspace

    def empty_func(*args, **kwargs):
        pass

    PreTrainedModel.tie_weights = empty_func
    torch.linspace = lambda *a, **k: real_linspace(*a, **k)
    try:
        assert sorted(fallback.loading_patches()) == ["PreTrainedModel.tie_weights",
                                                      "torch.linspace"]
        mm = make_mm(cpu_threads=1, worker_pool={"queue_timeout": 0})
        r = await mm.task(["hello"], "embedding", minilm_dir, device="cpu", backend="transformers")
        assert r.success, r.error
        assert fallback.loading_patches() == []
        assert PreTrainedModel.tie_weights is real_tie and torch.linspace is real_linspace
        assert "PreTrainedModel.tie_weights" in caplog.text and "put back" in caplog.text
    finally:
        PreTrainedModel.tie_weights, torch.linspace = real_tie, real_linspace


@pytest.mark.parametrize("default", ["float64", "bfloat16"])
async def test_native_models_ignore_torchs_default_dtype(make_mm, minilm_dir, tmp_path, default):
    """transformers' from_pretrained sets torch's process-wide default dtype for the length of
    a load (to the model's dtype), on the fallback's thread, while native models run on
    theirs: a native load, generation or embedding made while it is something else gives
    exactly what it gives under float32 (every tensor the shim makes names its dtype)."""
    from test_generate_helpers import Generator, make_bart, make_t5, prompts

    paths = {"t5": str(tmp_path / "t5"), "bart": str(tmp_path / "bart")}
    make_t5(paths["t5"], gated=False)
    make_bart(paths["bart"])
    ps = {"t5": prompts(4, 256, "t5"), "bart": prompts(4, 256, "bart")}
    mm = make_mm(cpu_threads=1, worker_pool={"queue_timeout": 0})
    texts = ["hello world", "a longer sentence about rivers and mountains"]

    async def run():
        gens = {k: Generator(p) for k, p in paths.items()}
        try:
            out = {k: g.generate(ps[k], max_length=12) for k, g in gens.items()}
        finally:
            for g in gens.values():
                g.close()
        r = await mm.task(texts, "embedding", minilm_dir, device="cpu", backend="native")
        assert r.success, r.error
        await mm.release_model(minilm_dir)
        return out, r.data["embeddings"]

    want = await run()
    was = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, default))
    try:
        got = await run()
    finally:
        torch.set_default_dtype(was)
    assert got == want


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    """A tiny T5 with a sentencepiece tokenizer: a folder the fallback generates from."""
    from test_generate_helpers import make_t5, train_t5_tokenizer
    from test_generate_hub import corpus

    d = tmp_path_factory.mktemp("fbgen")
    tok = train_t5_tokenizer(d / "sp", corpus(), vocab_size=60)
    path = str(d / "t5")
    make_t5(path, gated=True, vocab=60)
    tok.save_pretrained(path)
    return path


async def test_seeded_fallback_sampling_on_two_workers_is_reproducible(make_mm, t5_dir):
    """Seeded sampling in the fallback seeds torch's one process-wide generator: two workers
    sampling at once must not draw from each other's stream, so each seeded task equals the
    same request run alone."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    kw = dict(do_sample=True, top_k=0, max_length=40)
    texts = [f"river {i} mountain summer" for i in range(12)]
    mm = make_mm(cpu_threads=1, worker_pool={"queue_timeout": 0, "max_batch_items": 1})
    assert (await mm.task(None, "text_generation", t5_dir, device="cpu", backend="transformers",
                          num_workers=2)).success
    rs = await asyncio.gather(*(mm.task(t, "text_generation", t5_dir, device="cpu", seed=i, **kw)
                                for i, t in enumerate(texts)))
    model = AutoModelForSeq2SeqLM.from_pretrained(t5_dir).eval()
    tok = AutoTokenizer.from_pretrained(t5_dir)
    for i, (t, r) in enumerate(zip(texts, rs)):
        assert r.success and r.data["backend"] == "transformers", r.error
        torch.manual_seed(i)
        want = tok.decode(model.generate(**tok(t, return_tensors="pt"), **kw)[0],
                          skip_special_tokens=True)
        assert r.data["generated_text"] == want, (i, t)
