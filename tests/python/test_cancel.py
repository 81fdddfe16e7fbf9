"""Cancellation reaches downloads, loads and running batches (issue 14 item 10).

Large embedding tasks run in chunks (max_batch_items / max_batch_tokens), one queued batch between
two chunks, so a small task behind a huge one is served long before it and never times out; a
cancelled, dropped or shut-down task stops at the next chunk; a load or download nobody waits
for any more (its only task cancelled, close(cancel_pending=True), Ctrl-C) is aborted and its
partial download resumed later.  Bounds here are hang checks with wide margins (the work that
would otherwise be waited for takes 20 s or more), not speed assertions.
"""
import asyncio
import glob
import math
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from pymodelmgr import ModelManager, ModelManagerSettings

BASE = {"fake_gpus": "none", "embedding_cache": {"enabled": False}}
# 1 ms per item: a 20,000-text task would take 20 s in one call; a 256-item chunk 0.26 s.
SLOW_ITEMS = "synthetic/embedding?dim=8&item_us=1000"


def make(**kw):
    d = dict(BASE)
    d.update(kw)
    return ModelManager(ModelManagerSettings(**d))


async def model_status(mm, name):
    for m in (await mm.status()).data["models"]:
        if m["model_name"] == name:
            return m
    return None


async def wait_for(pred, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await pred():
            return True
        await asyncio.sleep(0.02)
    return False


async def running(mm, name):
    m = await model_status(mm, name)
    return m is not None and m["in_flight"] > 0


def texts(n, tag="t"):
    return [f"{tag} text number {i}" for i in range(n)]


async def start_huge(mm):
    """A 20,000-text task on SLOW_ITEMS, once its first chunk runs."""
    t = asyncio.ensure_future(mm.task(texts(20_000), "embedding", SLOW_ITEMS, device="cpu"))
    assert await wait_for(lambda: running(mm, SLOW_ITEMS), 10)
    return t


# ---- chunking: fairness and equal results -----------------------------------------------

async def test_small_task_behind_a_huge_one_is_not_starved():
    model = "synthetic/embedding?dim=8&item_us=100"  # 20,000 items: 2 s in one call
    mm = make(worker_pool={"queue_timeout": 0.5})
    try:
        assert (await mm.task(None, "embedding", model, device="cpu", num_workers=1)).success
        order = []

        async def run(name, data):
            r = await mm.task(data, "embedding", model, device="cpu")
            order.append(name)
            return r
        huge = asyncio.ensure_future(run("huge", texts(20_000)))
        await wait_for(lambda: running(mm, model), 5)
        smalls = [await run(f"small{i}", [f"small {i}"]) for i in range(3)]
        for r in smalls:
            assert r.success, r.error  # before chunking: QUEUE_TIMEOUT after 0.5 s
        hr = await huge
        assert hr.success, hr.error
        assert order[-1] == "huge"
        # the chunked result equals each text embedded alone
        for i in (0, 255, 256, 12_345, 19_999):
            lone = await mm.task([f"t text number {i}"], "embedding", model, device="cpu")
            assert hr.data["embeddings"][i] == lone.data["embeddings"][0]
        assert len(hr.data["embeddings"]) == 20_000
        m = await model_status(mm, model)
        assert m["batches"] >= 20_000 // 256 and m["done"] == 1 + 3 + 5
    finally:
        await mm.close()


async def test_chunked_numpy_output_and_token_budget():
    model = "synthetic/embedding?dim=4"
    mm = make(worker_pool={"max_batch_tokens": 64})
    try:
        data = texts(500)
        r = await mm.task(data, "embedding", model, device="cpu", output="numpy")
        assert r.success and r.data["embeddings"].shape == (500, 4)
        m = await model_status(mm, model)
        assert m["batches"] > 10  # ~8 tokens per text by the engine's estimate: 8 texts a chunk
        one = await mm.task([data[321]], "embedding", model, device="cpu")
        assert list(r.data["embeddings"][321]) == one.data["embeddings"][0]
    finally:
        await mm.close()


async def test_failure_in_a_chunk_names_the_items():
    mm = make(worker_pool={"max_batch_items": 10})
    try:
        data = texts(35)
        data[23] = "boom __fail__"
        r = await mm.task(data, "embedding", "synthetic/embedding?dim=4", device="cpu")
        assert r.error.code == "TASK_FAILED"
        assert "item 23" in r.error.message
    finally:
        await mm.close()


async def test_chunked_minilm_equals_one_call(minilm_dir):
    data = [("short" if i % 3 else "a somewhat longer sentence about model managers " * (i % 5 + 1))
            + f" {i}" for i in range(70)]
    whole = make(worker_pool={"max_batch_items": 256})
    chunked = make(worker_pool={"max_batch_items": 16})
    try:
        a = await whole.task(data, "embedding", minilm_dir, device="cpu", num_workers=1)
        b = await chunked.task(data, "embedding", minilm_dir, device="cpu", num_workers=1)
        assert a.success and b.success, (a.error, b.error)
        assert (await model_status(chunked, minilm_dir))["batches"] >= 5
        for u, v in zip(a.data["embeddings"], b.data["embeddings"]):
            assert max(abs(x - y) for x, y in zip(u, v)) < 1e-5
    finally:
        await whole.close()
        await chunked.close()


# ---- stopping running work ---------------------------------------------------------------

async def test_cancelling_a_running_huge_task_stops_it():
    mm = make()
    try:
        t = await start_huge(mm)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t

        async def stopped():
            m = await model_status(mm, SLOW_ITEMS)
            return m["in_flight"] == 0 and m["cancelled"] == 1
        assert await wait_for(stopped, 8), await model_status(mm, SLOW_ITEMS)
        r = await mm.task(["after"], "embedding", SLOW_ITEMS, device="cpu")
        assert r.success
        m = await model_status(mm, SLOW_ITEMS)
        assert m["done"] == 1 and m["cancelled"] == 1
        assert (await mm.status()).data["tasks"]["double_completions"] == 0
    finally:
        await mm.close()


async def test_drop_model_queue_stops_a_running_huge_task():
    mm = make()
    try:
        t = await start_huge(mm)
        queued = [asyncio.ensure_future(mm.task([f"q{i}"], "embedding", SLOW_ITEMS, device="cpu"))
                  for i in range(5)]
        await asyncio.sleep(0)
        r = await mm.drop_model_queue(SLOW_ITEMS, reason="enough")
        assert r.success and r.data["dropped"] >= 1 and r.data["futures_cancelled"] == r.data["dropped"]
        with pytest.raises(RuntimeError, match="enough"):
            await asyncio.wait_for(t, 8)
        for q in queued:  # queued behind it, or served between two chunks: never left waiting
            try:
                res = await asyncio.wait_for(q, 8)
                assert res.success
            except RuntimeError as e:
                assert "enough" in str(e)

        async def idle():
            return (await model_status(mm, SLOW_ITEMS))["in_flight"] == 0
        assert await wait_for(idle, 8)
    finally:
        await mm.close()


async def test_close_cancel_pending_stops_a_running_huge_task():
    mm = make()
    t = await start_huge(mm)
    await asyncio.wait_for(mm.close(cancel_pending=True), 8)
    r = await t
    assert r.error.code == "SHUTTING_DOWN"


# ---- stopping loads and downloads ----------------------------------------------------------

SLOW_LOAD = "synthetic/embedding?dim=8&load_ms=60000"
SLOW_DOWNLOAD = "synthetic/embedding?dim=8&load_ms=60000&download_mb=500"


@pytest.mark.parametrize("model", [SLOW_LOAD, SLOW_DOWNLOAD])
async def test_close_cancel_pending_during_a_slow_load(model):
    mm = make()
    t = asyncio.ensure_future(mm.task(["a"], "embedding", model, device="cpu"))
    await asyncio.sleep(0.2)
    await asyncio.wait_for(mm.close(cancel_pending=True), 8)
    r = await t
    assert r.error.code == "SHUTTING_DOWN"


async def test_cancelling_the_only_task_aborts_the_load():
    mm = make()
    try:
        t = asyncio.ensure_future(mm.task(["a"], "embedding", SLOW_LOAD, device="cpu"))
        await asyncio.sleep(0.2)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t

        async def gone():
            return await model_status(mm, SLOW_LOAD) is None
        assert await wait_for(gone, 8)
        # a pre-loaded model with no task is wanted: its load goes on
        pre = asyncio.ensure_future(mm.task(None, "embedding", "synthetic/embedding?load_ms=300",
                                            device="cpu"))
        assert (await pre).success
    finally:
        await asyncio.wait_for(mm.close(), 8)


async def test_release_during_a_slow_load_aborts_it():
    mm = make()
    try:
        t = asyncio.ensure_future(mm.task(["a"], "embedding", SLOW_LOAD, device="cpu"))
        await asyncio.sleep(0.2)
        t.cancel()
        await asyncio.gather(t, return_exceptions=True)
        r = await asyncio.wait_for(mm.release_model(SLOW_LOAD), 8)
        assert r.success
    finally:
        await asyncio.wait_for(mm.close(), 8)


VERY_SLOW_LOAD = "synthetic/embedding?dim=8&load_ms=600000"


def test_ctrl_c_during_a_slow_load_exits_promptly(tmp_path):
    script = tmp_path / "app.py"
    script.write_text(textwrap.dedent(f"""
        import asyncio, sys
        from pymodelmgr import ModelManager
        async def main():
            async with ModelManager({{"fake_gpus": "none"}}) as mm:
                print("ready", flush=True)
                await mm.task(["a"], "embedding", {VERY_SLOW_LOAD!r}, device="cpu")
        try:
            asyncio.run(main())
        except KeyboardInterrupt:
            print("interrupted", flush=True)
    """))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd()] + sys.path))
    # A job started in the background by a non-interactive shell (as CI harnesses may
    # start the suite) inherits SIGINT ignored, and Python then installs no
    # KeyboardInterrupt handler: give the app the default disposition a terminal gives it.
    p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert p.stdout.readline().strip() == "ready"
        time.sleep(0.5)
        p.send_signal(signal.SIGINT)
        # generous for a loaded CI machine: the load itself would take ten minutes
        out, _ = p.communicate(timeout=90)
    finally:
        if p.poll() is None:
            p.kill()
    assert "interrupted" in out


async def test_closing_during_a_real_download_keeps_the_partial_file(hub_env):
    hub = hub_env.hub
    hub.faults.slow_chunk_s = 0.05  # MiniLM's 90 MB weights would take about a minute
    hub.faults.match = "safetensors"
    mm = make(cache_dir=hub_env.cache_dir)
    t = asyncio.ensure_future(mm.task(["a"], "embedding", hub_env.minilm_repo, device="cpu",
                                      num_workers=1))

    async def downloading():
        m = await model_status(mm, hub_env.minilm_repo)
        return m is not None and m["download"] is not None and m["download"]["done_bytes"] > 0

    assert await wait_for(downloading, 20)
    await asyncio.sleep(0.3)
    await asyncio.wait_for(mm.close(cancel_pending=True), 10)
    assert (await t).error.code == "SHUTTING_DOWN"
    partial = glob.glob(os.path.join(hub_env.cache_dir, "**", "*.incomplete"), recursive=True)
    assert partial and os.path.getsize(partial[0]) > 0
    # the next manager resumes it and serves the task
    hub.faults.slow_chunk_s = 0.0
    hub.clear_requests()
    mm2 = make(cache_dir=hub_env.cache_dir)
    try:
        r = await mm2.task(["a"], "embedding", hub_env.minilm_repo, device="cpu", num_workers=1)
        assert r.success, r.error
        assert any(q.range for q in hub.requests), "the partial download was not resumed"
        assert math.isclose(sum(x * x for x in r.data["embeddings"][0]), 1.0, rel_tol=1e-4)
    finally:
        await mm2.close()


async def test_a_chunk_that_runs_out_of_memory_is_halved():
    model = "synthetic/embedding?dim=4&fail=oom_over=50"  # any call over 50 texts: OOM
    mm = make()
    try:
        data = texts(600)
        r = await mm.task(data, "embedding", model, device="cpu")
        assert r.success, r.error
        lone = await mm.task([data[599]], "embedding", model, device="cpu")
        assert r.data["embeddings"][599] == lone.data["embeddings"][0]
    finally:
        await mm.close()


async def test_cancelled_preload_and_close_during_a_preload():
    mm = make()
    pre = asyncio.ensure_future(mm.task(None, "embedding", SLOW_LOAD, device="cpu"))
    await asyncio.sleep(0.2)
    pre.cancel()
    await asyncio.gather(pre, return_exceptions=True)

    async def gone():
        return await model_status(mm, SLOW_LOAD) is None
    assert await wait_for(gone, 8)  # nobody waits: the load was aborted
    pre2 = asyncio.ensure_future(mm.task(None, "embedding", SLOW_DOWNLOAD, device="cpu"))
    await asyncio.sleep(0.2)
    await asyncio.wait_for(mm.close(cancel_pending=True), 8)
    assert (await pre2).error.code == "SHUTTING_DOWN"
