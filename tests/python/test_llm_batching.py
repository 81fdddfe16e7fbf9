"""Continuous batching and the KV-cache block budget (issue 15), decoder-only models.

One worker per model (num_workers=1), so every request shares one running batch:

* a short request submitted while a long one decodes joins the batch and
  completes first (asserted by completion order against the long stream's
  end, never by wall-clock thresholds);
* requests that join a busy batch at different times are token-exact with
  transformers ``generate()`` on each prompt alone, greedy and seeded
  sampling (each request draws from its own generator);
* a KV budget that fits two requests makes the rest wait in the queue
  (status shows ``kv_blocks`` used <= total and a queue), and every request
  still completes exactly once with the same tokens;
* a request that could never fit fails with INSUFFICIENT_MEMORY naming the
  numbers, and the model serves on;
* breaking out of a stream frees its blocks within a step: a request that
  needs the whole budget runs next.
"""
import asyncio
import os
import random

import pytest

import pymodelmgr

if not os.path.exists(os.path.join(os.path.dirname(pymodelmgr.__file__), "libmm_torch.so")):
    pytest.skip("the native backend (libmm_torch.so) is not built", allow_module_level=True)

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from llm_helpers import hf_generate, make_llm, one_thread  # noqa: E402

REPO = "tiny-batching/llama"
ONE_WORKER = {"worker_pool": {"queue_timeout": 0, "num_workers": 1}, "cpu_threads": 1}
WORDS = "the quick brown fox jumps over lazy dog river mountain city train music".split()
GREEDY = dict(do_sample=False, max_new_tokens=20)
SAMPLING = dict(do_sample=True, max_new_tokens=20, temperature=0.9, top_k=30, top_p=0.95, seed=77)
LONG = dict(max_new_tokens=300, min_new_tokens=300)  # decodes for hundreds of steps
BLOCK = 64 * 2 * 2 * 16 * 2 * 4  # KV bytes of one block: 64 positions x 2 layers x 2 kv heads x 16 x K,V x fp32


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("llm_batching") / "llama")
    with one_thread():
        model, tok = make_llm(d, "llama")
    return d, model, tok


@pytest.fixture
def served(hub_env, llm):
    hub_env.hub.add_folder(REPO, llm[0])
    return hub_env


def prompts(n, seed):
    rnd = random.Random(seed)
    return [" ".join(rnd.choice(WORDS) for _ in range(rnd.randint(1, 30))) for _ in range(n)]


def refs(llm, ps, kw):
    _, model, tok = llm
    with one_thread():
        return [hf_generate(model, tok, p, **kw)[0] for p in ps]


async def status_of(mm):
    st = await mm.status()
    return next(m for m in st.data["models"] if m["model_name"] == REPO)


async def started(make_mm, served, **settings):
    mm = make_mm(cache_dir=served.cache_dir, **{**ONE_WORKER, **settings})
    r = await mm.task(None, "text_generation", REPO, device="cpu")
    assert r.success, r.error
    return mm


async def test_short_request_overtakes_a_long_one(make_mm, served, llm):
    mm = await started(make_mm, served)
    events, first = [], asyncio.Event()

    async def long_stream():
        n = 0
        async for _ in mm.stream("the river", "text_generation", REPO, device="cpu", **LONG):
            n += 1
            first.set()
        events.append(("long_end", n))

    job = asyncio.ensure_future(long_stream())
    await first.wait()
    short = ["city train music", "fox"]
    rs = await asyncio.gather(*(mm.task(p, "text_generation", REPO, device="cpu", **GREEDY) for p in short))
    events.append(("short_done", None))
    await job
    assert [e[0] for e in events] == ["short_done", "long_end"], events
    assert events[1][1] > 1  # the long one was streaming all along
    assert [r.data["generated_text"] for r in rs] == refs(llm, short, GREEDY)
    s = await status_of(mm)
    assert s["workers"] == 1 and s["done"] == 3 and s["in_flight"] == 0, s


@pytest.mark.parametrize("kw", [GREEDY, SAMPLING], ids=["greedy", "sampling"])
async def test_joined_requests_token_exact(make_mm, served, llm, kw):
    """Prompts arrive one by one while two long requests decode: each joins a
    batch of a different composition, and its tokens are those of the prompt
    alone in transformers."""
    mm = await started(make_mm, served)
    ps = prompts(16, seed=21)
    want = refs(llm, ps, kw)
    longs = [asyncio.ensure_future(mm.task(p, "text_generation", REPO, device="cpu", **LONG))
             for p in ("mountain city", "the lazy dog jumps")]
    rnd = random.Random(3)
    jobs = []
    for p in ps:
        jobs.append(asyncio.ensure_future(mm.task(p, "text_generation", REPO, device="cpu", **kw)))
        await asyncio.sleep(rnd.choice([0, 0, 0.005, 0.02]))
    got = await asyncio.gather(*jobs)
    assert [r.data["generated_text"] for r in got] == want
    for r in await asyncio.gather(*longs):
        assert r.success and r.data["completion_tokens"] == 300, r.error
    # alone (nothing else running) gives the same tokens too
    alone = await mm.task(ps[0], "text_generation", REPO, device="cpu", **kw)
    assert alone.data["generated_text"] == want[0]


async def test_tiny_budget_queues_and_completes_exactly_once(make_mm, served, llm):
    kw = dict(max_new_tokens=100)  # prompt <= ~40 tokens: 3 blocks each
    mm = await started(make_mm, served, generation={"kv_cache_mb": 6 * BLOCK / 2**20})
    s = await status_of(mm)
    assert s["kv_blocks"] == {"used": 0, "total": 6}, s
    ps = prompts(10, seed=5)
    want = refs(llm, ps, kw)
    jobs = [asyncio.ensure_future(mm.task(p, "text_generation", REPO, device="cpu", **kw)) for p in ps]
    seen_queue = max_used = 0
    while not all(j.done() for j in jobs):
        s = await status_of(mm)
        assert s["kv_blocks"]["used"] <= s["kv_blocks"]["total"] == 6, s
        max_used = max(max_used, s["kv_blocks"]["used"])
        seen_queue = max(seen_queue, s["queue_depth"])
        await asyncio.sleep(0.01)
    got = [j.result() for j in jobs]
    assert all(r.success for r in got), [r.error for r in got if not r.success]
    assert [r.data["generated_text"] for r in got] == want
    assert seen_queue > 0 and max_used > 0
    s = await status_of(mm)
    assert s["done"] == 10 and s["failed"] == 0 and s["in_flight"] == 0, s
    assert s["kv_blocks"]["used"] == 0
    assert mm._engine.stats()["double_completions"] == 0


async def test_request_that_can_never_fit(make_mm, served):
    mm = await started(make_mm, served, generation={"kv_cache_mb": 2 * BLOCK / 2**20})
    r = await mm.task("the quick brown fox", "text_generation", REPO, device="cpu", max_new_tokens=200)
    assert not r.success and r.error.code == "INSUFFICIENT_MEMORY", r.error
    assert "2 blocks" in r.error.message and "4 KV-cache blocks" in r.error.message, r.error.message
    ok = await mm.task("the quick brown fox", "text_generation", REPO, device="cpu", max_new_tokens=40)
    assert ok.success, ok.error


async def test_break_frees_the_blocks_within_a_step(make_mm, served, llm):
    """The budget fits one long request; after the consumer breaks out, a
    request that needs the whole budget runs (it could not while the first
    held its blocks)."""
    mm = await started(make_mm, served, generation={"kv_cache_mb": 6 * BLOCK / 2**20})
    got = []
    async for piece in mm.stream("river", "text_generation", REPO, device="cpu",
                                 max_new_tokens=330, min_new_tokens=330):
        got.append(piece)
        if len(got) == 2:
            s = await status_of(mm)
            assert s["kv_blocks"] == {"used": 6, "total": 6}, s
            break
    r = await mm.task("fox", "text_generation", REPO, device="cpu", **dict(GREEDY, max_new_tokens=300))
    assert r.success, r.error
    s = await status_of(mm)
    assert s["cancelled"] == 1 and s["in_flight"] == 0 and s["kv_blocks"]["used"] == 0, s


async def test_cancel_drop_release_race_exactly_once(make_mm, served):
    """A running batch (a budget of two or three requests at a time, the rest queued)
    while some tasks are cancelled, the queue is dropped and the model
    released: every task completes exactly once, each with a result or the
    code of what stopped it."""
    mm = await started(make_mm, served, generation={"kv_cache_mb": 9 * BLOCK / 2**20})
    ps = prompts(24, seed=8)
    jobs = [asyncio.ensure_future(mm.task(p, "text_generation", REPO, device="cpu",
                                          max_new_tokens=150 + 50 * (i % 3), min_new_tokens=150))
            for i, p in enumerate(ps)]
    for j in jobs[1::5]:
        await asyncio.sleep(0.02)
        j.cancel()
    dropped = await mm.drop_model_queue(REPO, "race")
    assert dropped.success, dropped.error
    released = await mm.release_model(REPO)
    assert released.success, released.error
    results = await asyncio.gather(*jobs, return_exceptions=True)
    codes = set()
    for r in results:
        if isinstance(r, asyncio.CancelledError):
            codes.add("CancelledError")
        elif isinstance(r, RuntimeError):  # a dropped task's caller gets RuntimeError(reason)
            assert "race" in str(r), repr(r)
            codes.add("DROPPED")
        else:
            codes.add("ok" if r.success else r.error.code)
    assert codes <= {"ok", "CancelledError", "CANCELLED", "DROPPED"}, codes
    assert "ok" in codes and "DROPPED" in codes, codes
    stats = mm._engine.stats()
    assert stats["created"] == stats["completed"] and stats["double_completions"] == 0, stats
