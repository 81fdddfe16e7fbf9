"""Streaming generation (issue 15): `async for piece in mm.stream(...)`.

* The pieces joined equal the text task() returns for the same call, for
  decoder-only models (greedy and seeded sampling, stop strings, chat
  messages) and for T5 / BART; no piece is half a UTF-8 character (every
  piece is a str the decoder produced), and no piece is ever revised: each
  prefix of the pieces is a prefix of the final text.
* Breaking out of the loop cancels the request: its sequence leaves the
  batch, the task completes as cancelled (status shows it) and the model
  serves on.
* 200 concurrent streams over one model each complete exactly once, with
  the same text as task().
"""
import asyncio
import os
import random

import pytest

import pymodelmgr
from pymodelmgr import StreamError

if not os.path.exists(os.path.join(os.path.dirname(pymodelmgr.__file__), "libmm_torch.so")):
    pytest.skip("the native backend (libmm_torch.so) is not built", allow_module_level=True)

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from chat_templates import QWEN25  # noqa: E402
from llm_helpers import make_llm, one_thread  # noqa: E402
from test_generate_helpers import make_bart, train_bart_tokenizer  # noqa: E402

SLOW_OK = {"worker_pool": {"queue_timeout": 0}, "cpu_threads": 1}
REPOS = {"qwen2": "tiny-stream/qwen2", "llama": "tiny-stream/llama", "bart": "tiny-stream/bart"}
WORDS = "the quick brown fox jumps over lazy dog river mountain city 東京 🙂 Café".split()


@pytest.fixture(scope="module")
def stream_models(tmp_path_factory):
    import json
    base = tmp_path_factory.mktemp("llm_stream")
    out = {}
    with one_thread():
        for kind in ("qwen2", "llama"):
            d = str(base / kind)
            make_llm(d, kind)
            out[kind] = d
        path = os.path.join(out["qwen2"], "tokenizer_config.json")
        with open(path) as f:
            cfg = json.load(f)
        cfg["chat_template"] = QWEN25
        with open(path, "w") as f:
            json.dump(cfg, f)
        d = str(base / "bart")
        tok = train_bart_tokenizer([" ".join(random.Random(i).choices(WORDS[:12], k=8)) for i in range(200)],
                                   vocab_size=300, model_max_length=48)
        make_bart(d, vocab=len(tok), max_pos=48)
        tok.save_pretrained(d)
        out["bart"] = d
    return out


@pytest.fixture
def served(hub_env, stream_models):
    for kind, repo in REPOS.items():
        hub_env.hub.add_folder(repo, stream_models[kind])
    return hub_env


async def collect(mm, data, repo, **kw):
    pieces = []
    async for p in mm.stream(data, "text_generation", repo, device="cpu", **kw):
        assert isinstance(p, str) and p
        pieces.append(p)
    return pieces


def prompts(n, seed=3):
    rnd = random.Random(seed)
    return [" ".join(rnd.choice(WORDS) for _ in range(rnd.randint(1, 40))) for _ in range(n)]


@pytest.mark.parametrize("kind,kw", [
    ("qwen2", dict(max_new_tokens=24)),
    ("llama", dict(max_new_tokens=24, do_sample=True, seed=5, top_k=40)),
    ("llama", dict(max_new_tokens=24, stop=[" the", "ri"])),
    ("bart", dict(max_length=20)),
    ("bart", dict(max_length=20, num_beams=3)),  # beam search: one piece at the end
])
async def test_stream_equals_task(make_mm, served, kind, kw):
    mm = make_mm(cache_dir=served.cache_dir, **SLOW_OK)
    for p in prompts(10):
        r = await mm.task(p, "text_generation", REPOS[kind], device="cpu", **kw)
        assert r.success, r.error
        pieces = await collect(mm, p, REPOS[kind], **kw)
        assert "".join(pieces) == r.data["generated_text"], (p, pieces)
        acc = ""
        for piece in pieces:  # never revised
            acc += piece
            assert r.data["generated_text"].startswith(acc)


async def test_stream_chat_and_several_pieces(make_mm, served):
    mm = make_mm(cache_dir=served.cache_dir, **SLOW_OK)
    conv = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "tell me about rivers"}]
    r = await mm.task(conv, "text_generation", REPOS["qwen2"], device="cpu", max_new_tokens=32)
    got = []
    pieces = await collect(mm, conv, REPOS["qwen2"], max_new_tokens=32, on_result=got.append)
    assert "".join(pieces) == r.data["generated_text"]
    assert len(got) == 1 and got[0].success  # on_result: the finished task's Result
    for key in ("generated_text", "finish_reason", "prompt_tokens", "completion_tokens"):
        assert got[0].data[key] == r.data[key], key
    many = 0
    for p in prompts(12, seed=9):
        r = await mm.task(p, "text_generation", REPOS["qwen2"], device="cpu", max_new_tokens=32)
        pieces = await collect(mm, p, REPOS["qwen2"], max_new_tokens=32)
        assert "".join(pieces) == r.data["generated_text"]
        many += len(pieces) > 3
    assert many >= 3  # text really arrives in pieces


async def test_stream_errors(make_mm, served):
    mm = make_mm(cache_dir=served.cache_dir, **SLOW_OK)
    for data, kw, word in [(["a", "b"], {}, "one prompt"), ("x", {"max_new_tokens": 0}, "max_new_tokens"),
                           ("x", {"bogus": 1}, "bogus"), ("x", {"num_return_sequences": 2}, "one sequence")]:
        with pytest.raises(StreamError) as e:
            await collect(mm, data, REPOS["llama"], **kw)
        assert e.value.code == "INVALID_ARGUMENT" and word in e.value.message, e.value


async def status_of(mm, repo):
    st = await mm.status()
    return next(m for m in st.data["models"] if m["model_name"] == repo)


async def test_break_cancels_and_frees(make_mm, served):
    """A consumer that leaves after two pieces: the request is cancelled
    within a step (it does not run its 400 tokens), status counts it, and
    the model serves the next request."""
    mm = make_mm(cache_dir=served.cache_dir, **SLOW_OK)
    repo = REPOS["llama"]
    r = await mm.task(None, "text_generation", repo, device="cpu")
    assert r.success
    kw = dict(max_new_tokens=400, min_new_tokens=400)  # would run long
    got = []
    async for piece in mm.stream("the quick brown fox", "text_generation", repo, device="cpu", **kw):
        got.append(piece)
        if len(got) == 2:
            break
    for _ in range(200):
        s = await status_of(mm, repo)
        if s["cancelled"] >= 1 and s["in_flight"] == 0:
            break
        await asyncio.sleep(0.05)
    assert s["cancelled"] == 1 and s["in_flight"] == 0, s
    r = await mm.task("hello", "text_generation", repo, device="cpu", max_new_tokens=4)
    assert r.success, r.error

    # cancelling the consumer task works the same way
    first = asyncio.Event()

    async def consume():
        async for _ in mm.stream("river mountain", "text_generation", repo, device="cpu", **kw):
            first.set()

    job = asyncio.ensure_future(consume())
    await first.wait()
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    for _ in range(200):
        s = await status_of(mm, repo)
        if s["cancelled"] >= 2 and s["in_flight"] == 0:
            break
        await asyncio.sleep(0.05)
    assert s["cancelled"] == 2 and s["in_flight"] == 0, s


async def test_200_concurrent_streams(make_mm, served):
    mm = make_mm(cache_dir=served.cache_dir, **SLOW_OK)
    repo = REPOS["qwen2"]
    ps = prompts(200, seed=11)
    kw = dict(max_new_tokens=12)
    want = await asyncio.gather(*(mm.task(p, "text_generation", repo, device="cpu", **kw) for p in ps))
    got = await asyncio.gather(*(collect(mm, p, repo, **kw) for p in ps))
    for w, g in zip(want, got):
        assert w.success, w.error
        assert "".join(g) == w.data["generated_text"]
    s = await status_of(mm, repo)
    assert s["done"] == 400 and s["failed"] == 0 and s["in_flight"] == 0, s
    stats = mm._engine.stats()
    assert stats["double_completions"] == 0
