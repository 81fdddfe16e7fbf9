"""The ModelManager API on the synthetic backend: results, lifecycle, limits, bad input."""
import asyncio
import logging
import math

import pytest

from pymodelmgr import ErrorInfo, ModelManager, ModelManagerSettings, Result

EMB = "synthetic/embedding?dim=8"
GEN = "synthetic/text_generation"


def norm(v):
    return math.sqrt(sum(x * x for x in v))


async def wait_for(pred, timeout=5.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if await pred():
            return True
        await asyncio.sleep(0.01)
    return False


async def model_status(mm, name):
    for m in (await mm.status()).data["models"]:
        if m["model_name"] == name:
            return m
    return None


# ---- Result ------------------------------------------------------------------------

def test_result_class_and_instance():
    ok = Result.success(data={"x": 1})
    assert ok.success is True and ok.data == {"x": 1} and ok.error is None
    bad = Result.error(code="QUEUE_FULL", message="full", details={"n": 3})
    assert bad.success is False and bad.data == {}
    assert bad.error == ErrorInfo("QUEUE_FULL", "full", {"n": 3})
    assert bad.error.code == "QUEUE_FULL" and bad.error.details == {"n": 3}
    assert Result.success().data == {}


# ---- embeddings and generation ----------------------------------------------------

async def test_embedding_result_shape_and_determinism(mm):
    r = await mm.task(["hello world", "test document"], "embedding", EMB, device="cpu")
    assert r.success, r.error
    embs = r.data["embeddings"]
    assert len(embs) == 2 and all(len(e) == 8 for e in embs)
    assert all(isinstance(x, float) for x in embs[0])
    assert abs(norm(embs[0]) - 1) < 1e-6
    assert r.data["device"] == "cpu" and r.data["model_name"] == EMB
    again = await mm.task(["test document"], "embedding", EMB, device="cpu")
    assert again.data["embeddings"][0] == embs[1]
    single = await mm.task("hello world", "embedding", EMB, device="cpu")
    assert single.data["embeddings"] == [embs[0]]


async def test_embedding_kwargs_and_numpy(mm):
    r = await mm.task(["a"], "embedding", EMB, device="cpu", dimensions=4)
    assert len(r.data["embeddings"][0]) == 4 and abs(norm(r.data["embeddings"][0]) - 1) < 1e-6
    raw = await mm.task(["a"], "embedding", EMB, device="cpu", normalize=False)
    assert abs(norm(raw.data["embeddings"][0]) - 1) > 1e-3
    arr = await mm.task(["a", "b"], "embedding", EMB, device="cpu", output="numpy")
    import numpy as np

    assert isinstance(arr.data["embeddings"], np.ndarray)
    assert arr.data["embeddings"].shape == (2, 8) and arr.data["embeddings"].dtype == np.float32
    bad = await mm.task(["a"], "embedding", EMB, device="cpu", output="pandas")
    assert bad.error.code == "INVALID_ARGUMENT"


async def test_text_generation_string_and_list(mm):
    r = await mm.task("Summarize this article: ...", "text_generation", GEN, device="cpu",
                      max_length=5)
    assert r.success and isinstance(r.data["generated_text"], str)
    assert len(r.data["generated_text"].split()) == 5
    lst = await mm.task(["one", "two", "three"], "text_generation", GEN, device="cpu")
    assert len(lst.data["generated_texts"]) == 3 and "generated_text" not in lst.data
    multi = await mm.task("x", "text_generation", GEN, device="cpu", num_return_sequences=3)
    assert len(multi.data["generated_texts"]) == 3


# ---- pre-load, config rules, keep-alive -------------------------------------------------

async def test_preload_response_and_reuse(mm):
    r = await mm.task(None, "embedding", EMB, num_workers=2, device="cpu", keep_alive=30)
    assert r.success
    assert r.data["preloaded"] is True and r.data["model_name"] == EMB
    assert r.data["workers"] == 2 and r.data["device"] == "cpu"
    assert r.data["keep_alive_minutes"] == 30
    st = await model_status(mm, EMB)
    assert st["state"] == "ready" and st["workers"] == 2 and st["devices"] == ["cpu", "cpu"]
    again = await mm.task(["x"], "embedding", EMB, num_workers=2, device="cpu")
    assert again.success and "warnings" not in again.data


async def test_loaded_model_serves_other_config_with_warning(mm):
    await mm.task(["x"], "embedding", EMB, num_workers=1, device="cpu")
    r = await mm.task(["x"], "embedding", EMB, num_workers=3, device="cpu")
    assert r.success and "served by the loaded instance" in r.data["warnings"][0]
    assert (await model_status(mm, EMB))["workers"] == 1
    other = await mm.task(["x"], "text_generation", EMB, device="cpu")
    assert other.error.code == "INVALID_ARGUMENT"


async def test_keep_alive_auto_release_and_reload(mm):
    await mm.task(["x"], "embedding", EMB, device="cpu", keep_alive=0.005)  # 0.3 s
    st = await model_status(mm, EMB)
    assert st["keep_alive_minutes"] == pytest.approx(0.005)
    assert await wait_for(lambda: _gone(mm, EMB))
    r = await mm.task(["again"], "embedding", EMB, device="cpu")
    assert r.success
    assert (await model_status(mm, EMB))["state"] == "ready"


async def _gone(mm, name):
    return await model_status(mm, name) is None


async def test_keep_alive_counts_from_last_task(mm):
    name = "synthetic/embedding?dim=4&item_us=1000"
    await mm.task(None, "embedding", name, device="cpu", keep_alive=0.01)  # 0.6 s
    for _ in range(8):  # keep it busy for ~0.8 s: longer than keep_alive since load
        await asyncio.sleep(0.1)
        assert (await mm.task(["x"], "embedding", name, device="cpu")).success
    assert await model_status(mm, name) is not None
    assert await wait_for(lambda: _gone(mm, name))


async def test_keep_alive_zero_and_negative(mm):
    await mm.task(["x"], "embedding", EMB, device="cpu", keep_alive=0)
    assert await wait_for(lambda: _gone(mm, EMB), timeout=2)
    await mm.task(["x"], "embedding", EMB, device="cpu", keep_alive=-1)
    st = await model_status(mm, EMB)
    assert st["keep_alive_minutes"] is None and st["seconds_until_release"] is None
    # None keeps the model's current value
    await mm.task(["x"], "embedding", EMB, device="cpu")
    assert (await model_status(mm, EMB))["keep_alive_minutes"] is None


async def test_default_keep_alive_from_settings(make_mm):
    m = make_mm(worker_pool={"model_idle_timeout": 0.3})
    await m.task(["x"], "embedding", EMB, device="cpu")
    assert (await model_status(m, EMB))["keep_alive_minutes"] == pytest.approx(0.005)
    assert await wait_for(lambda: _gone(m, EMB))


# ---- release and drop -------------------------------------------------------------

async def test_release_finishes_queue_then_recreates(mm):
    name = "synthetic/embedding?dim=4&item_us=2000&max_items=1"
    tasks = [asyncio.ensure_future(mm.task([f"t{i}"], "embedding", name, device="cpu"))
             for i in range(20)]
    await asyncio.sleep(0.01)
    rel = await mm.release_model(name)
    assert rel.success and rel.data["released"] is True
    results = await asyncio.gather(*tasks)
    assert all(r.success for r in results)
    assert await model_status(mm, name) is None
    r = await mm.task(["new"], "embedding", name, num_workers=2, device="cpu")
    assert r.success and "warnings" not in r.data
    assert (await model_status(mm, name))["workers"] == 2
    again = await mm.release_model("never/loaded")
    assert again.success and again.data["released"] is False


async def test_drop_model_queue(mm):
    name = "synthetic/embedding?dim=4&item_us=20000&max_items=1"
    await mm.task(None, "embedding", name, device="cpu")
    tasks = [asyncio.ensure_future(mm.task([f"t{i}"], "embedding", name, device="cpu"))
             for i in range(30)]
    await asyncio.sleep(0.05)
    res = await mm.drop_model_queue(name, reason="User cancelled large batch")
    assert res.success
    d = res.data
    assert d["model_name"] == name and d["reason"] == "User cancelled large batch"
    assert d["dropped"] >= 25 and d["futures_cancelled"] == d["dropped"]
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [o for o in outcomes if isinstance(o, RuntimeError)]
    assert len(errors) == d["dropped"]
    assert all("User cancelled large batch" in str(e) for e in errors)
    assert all(o.success for o in outcomes if isinstance(o, Result))
    st = await model_status(mm, name)
    assert st["state"] == "ready" and st["dropped"] == d["dropped"]
    assert (await mm.task(["normal request"], "embedding", name, device="cpu")).success


# ---- failures, limits, cancellation ------------------------------------------------

async def test_load_failure_then_next_task_retries(mm):
    name = "synthetic/embedding?fail_loads=1&load_ms=100"  # all 5 queue during the load
    rs = await asyncio.gather(*(mm.task(["x"], "embedding", name, device="cpu") for _ in range(5)))
    assert all(r.error.code == "MODEL_LOAD_FAILED" for r in rs)
    assert "injected" in rs[0].error.message
    assert await wait_for(lambda: _gone(mm, name))  # no half-made entry stays behind
    assert (await mm.task(["x"], "embedding", name, device="cpu")).success
    pre = await mm.task(None, "embedding", "synthetic/embedding?fail=load", device="cpu")
    assert pre.error.code == "MODEL_LOAD_FAILED"


async def test_run_failure_is_per_task(mm):
    good, bad = await asyncio.gather(mm.task(["fine"], "embedding", EMB, device="cpu"),
                                     mm.task(["x __fail__ y"], "embedding", EMB, device="cpu"))
    assert good.success and bad.error.code == "TASK_FAILED"


async def test_queue_timeout_on_time(make_mm):
    m = make_mm(worker_pool={"queue_timeout": 0.2})
    name = "synthetic/embedding?item_us=1500000&max_items=1"
    await m.task(None, "embedding", name, device="cpu")
    first = asyncio.ensure_future(m.task(["a"], "embedding", name, device="cpu"))
    await asyncio.sleep(0.05)
    t0 = asyncio.get_running_loop().time()
    second = await m.task(["b"], "embedding", name, device="cpu")
    waited = asyncio.get_running_loop().time() - t0
    assert second.error.code == "QUEUE_TIMEOUT" and "queue_timeout" in second.error.message
    assert waited < 1.0  # failed by the timer, not when the worker got to it
    assert (await first).success


async def test_queue_full(make_mm):
    m = make_mm(worker_pool={"max_queue_size": 3})
    name = "synthetic/embedding?item_us=100000&max_items=1"
    await m.task(None, "embedding", name, device="cpu")
    tasks = [asyncio.ensure_future(m.task(["x"], "embedding", name, device="cpu")) for _ in range(8)]
    rs = await asyncio.gather(*tasks)
    codes = [r.error.code for r in rs if not r.success]
    assert "QUEUE_FULL" in codes and sum(r.success for r in rs) >= 3


async def test_cancel_removes_queued_task(mm):
    name = "synthetic/embedding?item_us=200000&max_items=1"
    await mm.task(None, "embedding", name, device="cpu")
    running = asyncio.ensure_future(mm.task(["a"], "embedding", name, device="cpu"))
    queued = asyncio.ensure_future(mm.task(["b"], "embedding", name, device="cpu"))
    await asyncio.sleep(0.05)
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert (await running).success
    st = await model_status(mm, name)
    assert st["cancelled"] == 1 and st["done"] == 1


# ---- bad input ---------------------------------------------------------------------------

@pytest.mark.parametrize("args,kwargs,code", [
    ((["x"], "embeddingz", EMB), {}, "INVALID_ARGUMENT"),
    ((["x"], 3, EMB), {}, "INVALID_ARGUMENT"),
    ((["x"], "embedding", ""), {}, "INVALID_ARGUMENT"),
    ((["x"], "embedding", None), {}, "INVALID_ARGUMENT"),
    ((["x"], "embedding", "../../etc/passwd"), {}, "INVALID_ARGUMENT"),
    ((["x"], "embedding", "org/../../x"), {}, "INVALID_ARGUMENT"),
    ((["x"], "embedding", "a/b/c"), {}, "INVALID_ARGUMENT"),
    ((["x"], "embedding", "bad name!"), {}, "INVALID_ARGUMENT"),
    ((["x"], "embedding", "/no/such/model/dir"), {}, "MODEL_NOT_FOUND"),
    ((["x"], "embedding", EMB), {"num_workers": 0}, "INVALID_ARGUMENT"),
    ((["x"], "embedding", EMB), {"num_workers": True}, "INVALID_ARGUMENT"),
    ((["x"], "embedding", EMB), {"num_workers": "2"}, "INVALID_ARGUMENT"),
    ((["x"], "embedding", EMB), {"device": "tpu"}, "INVALID_ARGUMENT"),
    ((["x"], "embedding", EMB), {"device": "cuda:3"}, "INVALID_ARGUMENT"),
    ((["x"], "embedding", EMB), {"device": None}, "INVALID_ARGUMENT"),
    (([], "embedding", EMB), {}, "INVALID_ARGUMENT"),
    (([1, 2], "embedding", EMB), {}, "INVALID_ARGUMENT"),
    ((["ok", None], "embedding", EMB), {}, "INVALID_ARGUMENT"),
    (({"text": "x"}, "embedding", EMB), {}, "INVALID_ARGUMENT"),
    (([["nested"]], "embedding", EMB), {}, "INVALID_ARGUMENT"),
    ((b"bytes", "embedding", EMB), {}, "INVALID_ARGUMENT"),
    ((["bad \ud800 surrogate"], "embedding", EMB), {}, "INVALID_ARGUMENT"),
    ((["x"], "embedding", EMB), {"keep_alive": "5"}, "INVALID_ARGUMENT"),
    ((["x"], "embedding", EMB), {"keep_alive": True}, "INVALID_ARGUMENT"),
    ((["x"], "embedding", EMB), {"keep_alive": float("nan")}, "INVALID_ARGUMENT"),
    ((["x"], "embedding", EMB), {"bogus_kwarg": 1}, "INVALID_ARGUMENT"),
    ((["x"], "embedding", EMB), {"normalize": object()}, "INVALID_ARGUMENT"),
    ((["x"], "text_generation", GEN), {"max_length": -3}, "INVALID_ARGUMENT"),
    ((["x"], "embedding", "synthetic/embedding?dim=zero"), {}, "INVALID_ARGUMENT"),
])
async def test_bad_input_is_a_result_error(mm, args, kwargs, code):
    r = await mm.task(*args, **kwargs)
    assert not r.success and r.data == {}
    assert r.error.code == code, r.error
    assert len(r.error.message) > 10
    assert (await mm.status()).data["models"] == []


async def test_error_messages_name_the_problem(mm):
    r = await mm.task(["x"], "embedding", EMB, temperature_typo=1)
    assert "temperature_typo" in r.error.message
    r = await mm.task(["ok", 5], "embedding", EMB)
    assert "task_data[1]" in r.error.message
    r = await mm.task(["x"], "embedding", EMB, device="cuda:3")
    assert "cuda:3" in r.error.message


# ---- devices ----------------------------------------------------------------------------

async def test_gpu_placement_on_simulated_gpus(make_mm):
    m = make_mm(fake_gpus="1000,8000,4000")
    r = await m.task(None, "embedding", EMB, num_workers=2, device="gpu")
    assert r.data["devices"] == ["cuda:1", "cuda:2"] and r.data["workers"] == 2
    r = await m.task(["x"], "embedding", EMB, num_workers=2, device="gpu")
    assert r.data["device"] in ("cuda:1", "cuda:2")
    capped = await m.task(None, "embedding", "synthetic/embedding?dim=3", num_workers=9)
    assert capped.data["workers"] == 3
    pinned = await m.task(None, "embedding", "synthetic/embedding?dim=5", device="cuda:2",
                          num_workers=4)
    assert pinned.data["devices"] == ["cuda:2"]


async def test_allowed_devices_setting(make_mm):
    m = make_mm(fake_gpus="1000,8000,4000", worker_pool={"devices": ["cuda:0", "cuda:2"]})
    r = await m.task(None, "embedding", EMB, num_workers=3, device="gpu")
    assert r.data["devices"] == ["cuda:2", "cuda:0"]


async def test_gpu_request_falls_back_to_cpu_with_warning(mm, caplog):
    caplog.set_level(logging.WARNING, logger="pymodelmgr")
    r = await mm.task(["x"], "embedding", EMB, num_workers=2)  # device="gpu" by default
    assert r.success and r.data["device"] == "cpu"
    assert "no GPU" in r.data["warnings"][0]
    later = await mm.task(["y"], "embedding", EMB, num_workers=2)
    assert "warnings" not in later.data
    await asyncio.sleep(0.01)
    await mm.status()
    await mm.task(["z"], "embedding", EMB, num_workers=2)
    assert sum("no GPU is visible" in rec.message for rec in caplog.records) == 1
    assert (await model_status(mm, EMB))["workers"] == 2


# ---- lifecycle -----------------------------------------------------------------------------

async def test_status_fields(mm):
    await mm.task(["a", "b"], "embedding", EMB, device="cpu", keep_alive=2)
    st = await model_status(mm, EMB)
    for key in ("model_name", "task_type", "state", "devices", "workers", "queue_depth",
                "in_flight", "keep_alive_minutes", "seconds_until_release", "last_used",
                "submitted", "done", "failed", "dropped", "timed_out"):
        assert key in st
    assert st["task_type"] == "embedding" and st["done"] == 1 and st["items"] == 2
    assert 0 < st["seconds_until_release"] <= 120
    assert st["last_used"] > 1.7e9


async def test_context_manager_closes_and_refuses_later_tasks():
    async with ModelManager(ModelManagerSettings(fake_gpus="none")) as m:
        assert (await m.task(["x"], "embedding", EMB)).success
    r = await m.task(["x"], "embedding", EMB)
    assert r.error.code == "SHUTTING_DOWN"
    await m.close()  # twice is fine


async def test_close_drains_or_cancels_pending():
    name = "synthetic/embedding?item_us=50000&max_items=1"
    m = ModelManager(ModelManagerSettings(fake_gpus="none"))
    tasks = [asyncio.ensure_future(m.task(["x"], "embedding", name, device="cpu")) for _ in range(5)]
    await asyncio.sleep(0)
    await m.close()
    assert all(t.result().success for t in tasks)
    m = ModelManager(ModelManagerSettings(fake_gpus="none"))
    tasks = [asyncio.ensure_future(m.task(["x"], "embedding", name, device="cpu")) for _ in range(5)]
    await asyncio.sleep(0.02)
    await m.close(cancel_pending=True)
    codes = [t.result().error.code for t in tasks if not t.result().success]
    assert codes and set(codes) == {"SHUTTING_DOWN"}


async def test_disabled_manager(make_mm):
    m = make_mm(enabled=False)
    assert (await m.task(["x"], "embedding", EMB)).error.code == "MODEL_MANAGER_DISABLED"


def test_two_event_loops_share_one_manager():
    m = ModelManager(ModelManagerSettings(fake_gpus="none"))

    async def use():
        rs = await asyncio.gather(*(m.task([f"t{i}"], "embedding", EMB, device="cpu") for i in range(200)))
        return all(r.success for r in rs)

    import threading

    out = []
    threads = [threading.Thread(target=lambda: out.append(asyncio.run(use()))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == [True, True, True]
    asyncio.run(m.close())


async def test_library_prints_nothing(capfd):
    async with ModelManager(ModelManagerSettings(fake_gpus="none")) as m:
        await m.task(["x"], "embedding", EMB)  # falls back to CPU: a warning, logged only
        await m.release_model(EMB)
    out, err = capfd.readouterr()
    assert out == "" and err == ""


async def test_cuda_visible_devices_is_respected(make_mm, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    m = make_mm(fake_gpus="1000,8000,4000")  # physical GPUs 0, 1, 2
    r = await m.task(None, "embedding", EMB, num_workers=4, device="gpu")
    # Visible: physical 2 (4000 MiB) as cuda:0 and physical 0 (1000 MiB) as cuda:1.
    assert r.data["workers"] == 2 and r.data["devices"] == ["cuda:0", "cuda:1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    none = make_mm(fake_gpus="1000,8000")
    r = await none.task(["x"], "embedding", EMB, device="gpu")
    assert r.data["device"] == "cpu" and "no GPU" in r.data["warnings"][0]


async def test_cache_dir_hf_means_the_huggingface_cache(hub_env, monkeypatch, tmp_path):
    import os

    import pymodelmgr
    from pymodelmgr import _core

    if not os.path.exists(os.path.join(os.path.dirname(pymodelmgr.__file__), "libmm_torch.so")):
        pytest.skip("the native backend is not built")
    hf = tmp_path / "hfcache"
    monkeypatch.setenv("HF_HUB_CACHE", str(hf))
    assert _core.hub_default_params()["hf_cache_dir"] == str(hf)
    async with ModelManager(ModelManagerSettings(fake_gpus="none", cache_dir="hf")) as m:
        r = await m.task(["x"], "embedding", "sentence-transformers/all-MiniLM-L6-v2", device="cpu")
    assert r.success, r.error
    assert (hf / "models--sentence-transformers--all-MiniLM-L6-v2" / "snapshots").is_dir()


async def test_status_shows_a_download_in_progress(mm):
    name = "synthetic/embedding?load_ms=600&download_mb=90"
    pre = asyncio.ensure_future(mm.task(None, "embedding", name, device="cpu"))
    seen = []
    for _ in range(60):
        await asyncio.sleep(0.02)
        st = await model_status(mm, name)
        if st and st["state"] == "downloading":
            seen.append(st["download"]["fraction"])
    assert (await pre).success
    assert seen and 0 <= seen[0] < 1 and seen == sorted(seen)
    st = await model_status(mm, name)
    assert st["state"] == "ready" and st["download"]["total_bytes"] == 90 << 20
    assert st["download"]["fraction"] == 1.0
