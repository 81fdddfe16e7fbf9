"""The memory policy on synthetic models and simulated GPUs (issue 12).

Simulated GPUs (``fake_gpus``) have a total and an accounting of what the loaded
synthetic models hold (``mem_mb``), so fit, eviction, waiting and the multi-GPU
choice run on any machine.  On the CPU a synthetic model really allocates its
``mem_mb``, so released_bytes is measured there.
"""
import asyncio
import os

import pytest

from pymodelmgr import ModelManagerSettings

MIB = 1 << 20


_TAGS = {}


def syn(mb, tag="", **opts):
    """A synthetic model of mb MiB; tag makes a distinct name (through its dim)."""
    q = "&".join([f"mem_mb={mb}"] + [f"{k}={v}" for k, v in opts.items()])
    dim = _TAGS.setdefault(tag, 8 + len(_TAGS)) if tag else None
    return f"synthetic/embedding?{q}" + (f"&dim={dim}" if dim else "")


def gpu_mm(make_mm, gpus="1000", **wp):
    wp.setdefault("memory_fraction", 1.0)
    wp.setdefault("queue_timeout", 10)
    return make_mm(fake_gpus=gpus, worker_pool=wp)


async def status(mm):
    return (await mm.status()).data


async def model(mm, name):
    for m in (await status(mm))["models"]:
        if m["model_name"] == name:
            return m
    return None


async def loaded(mm):
    return sorted(m["model_name"] for m in (await status(mm))["models"]
                  if m["state"] == "ready")


async def release_record(mm, name):
    for r in (await status(mm))["released_models"]:
        if r["model_name"] == name:
            return r
    return None


async def wait_for(pred, timeout=10.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await pred():
            return True
        await asyncio.sleep(0.01)
    return False


async def run(mm, name, text="x", device="gpu", **kw):
    r = await mm.task([text], "embedding", name, device=device, num_workers=1, **kw)
    assert r.success, r.error
    return r


def as_list(x):
    return x.tolist() if hasattr(x, "tolist") else x


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ---- settings --------------------------------------------------------------------

def test_budget_settings_validated():
    wp = ModelManagerSettings().worker_pool
    assert wp.memory_fraction == 0.9 and wp.max_loaded_models == 0
    for bad in ({"memory_fraction": 0}, {"memory_fraction": 1.5}, {"max_loaded_models": -1}):
        with pytest.raises(ValueError):
            ModelManagerSettings(worker_pool=bad)


# ---- fit, status ------------------------------------------------------------------

async def test_models_that_fit_share_the_device_and_status_shows_it(make_mm):
    mm = gpu_mm(make_mm, "1000", memory_fraction=0.8)
    a, b = syn(300, "a"), syn(400, "b")
    await run(mm, a)
    await run(mm, b)
    st = await status(mm)
    gpu = [d for d in st["devices"] if d["name"] == "cuda:0"][0]
    assert gpu["simulated"] and gpu["total_bytes"] == 1000 * MIB
    assert gpu["budget_bytes"] == int(1000 * MIB * 0.8)
    assert gpu["used_bytes"] == 700 * MIB
    assert gpu["free_bytes"] == int(1000 * MIB * 0.8) - 700 * MIB
    assert sorted(gpu["models"]) == sorted([a, b])
    cpu = [d for d in st["devices"] if d["name"] == "cpu"][0]
    assert cpu["total_bytes"] > 0 and 0 < cpu["budget_bytes"] <= cpu["total_bytes"]
    ma = await model(mm, a)
    assert ma["memory_bytes_by_device"] == {"cuda:0": 300 * MIB}
    assert ma["memory_bytes"] == 300 * MIB and ma["last_release_reason"] is None
    assert await loaded(mm) == sorted([a, b])


async def test_too_big_for_the_budget_fails_at_once_with_the_numbers(make_mm):
    mm = gpu_mm(make_mm, "1000", memory_fraction=0.5, queue_timeout=30)
    small = syn(200, "s")
    await run(mm, small)
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    r = await mm.task(["x"], "embedding", syn(600), device="gpu", num_workers=1)
    assert loop.time() - t0 < 5  # not the 30 s queue_timeout: it could never fit
    assert not r.success and r.error.code == "INSUFFICIENT_MEMORY"
    msg = r.error.message
    assert "cuda:0" in msg and "600 MiB" in msg and "500 MiB budget" in msg
    assert "300 MiB is free" in msg and small in msg


# ---- eviction ---------------------------------------------------------------------

async def test_lru_idle_model_is_evicted_first(make_mm):
    mm = gpu_mm(make_mm, "1000")
    a, b, c = syn(400, "a"), syn(400, "b"), syn(400, "c")
    await run(mm, a)
    await run(mm, b)
    await run(mm, a)  # b is now the least recently used
    await run(mm, c)
    assert await loaded(mm) == sorted([a, c])
    rec = await release_record(mm, b)
    assert rec["reason"] == f"evicted_for={c}" and rec["released_bytes"] == 400 * MIB
    # the next instance of b shows why the last one went
    await run(mm, b)
    assert (await model(mm, b))["last_release_reason"] == f"evicted_for={c}"


async def test_pinned_model_is_never_evicted(make_mm):
    mm = gpu_mm(make_mm, "1000")
    pinned, idle = syn(500, "p"), syn(300, "i")
    await run(mm, pinned, keep_alive=-1)
    await run(mm, idle)
    r = await mm.task(["x"], "embedding", syn(600), device="gpu", num_workers=1)
    assert not r.success and r.error.code == "INSUFFICIENT_MEMORY"
    assert "pinned" in r.error.message
    assert await loaded(mm) == sorted([pinned, idle])  # nothing was evicted in vain
    await run(mm, syn(400))  # evicts the idle one only
    assert pinned in await loaded(mm) and idle not in await loaded(mm)


async def test_busy_model_is_waited_for_not_evicted(make_mm):
    mm = gpu_mm(make_mm, "1000")
    busy, other = syn(600, "busy", batch_us=800000), syn(600, "o")
    await run(mm, busy, text="warm")  # loaded (the first batch took 0.8 s)
    long_task = asyncio.ensure_future(run(mm, busy, text="long"))
    assert await wait_for(lambda: _in_flight(mm, busy))
    second = asyncio.ensure_future(run(mm, other))
    assert await wait_for(lambda: _state_is(mm, other, "waiting_for_memory"), 5)
    assert (await model(mm, busy))["state"] == "ready"  # still loaded while it works
    await long_task  # completed, not cut short
    await second
    assert (await release_record(mm, busy))["reason"] == f"evicted_for={other}"


async def _in_flight(mm, name):
    m = await model(mm, name)
    return m is not None and m["in_flight"] > 0


async def _state_is(mm, name, state):
    m = await model(mm, name)
    return m is not None and m["state"] == state


async def test_waiting_for_memory_ends_at_queue_timeout(make_mm):
    mm = gpu_mm(make_mm, "1000", queue_timeout=0.4)
    busy = syn(600, "busy", batch_us=2000000)
    await run(mm, busy, text="warm")
    long_task = asyncio.ensure_future(run(mm, busy, text="long"))
    assert await wait_for(lambda: _in_flight(mm, busy))
    r = await mm.task(["x"], "embedding", syn(600), device="gpu", num_workers=1)
    assert not r.success and r.error.code == "INSUFFICIENT_MEMORY"
    assert "queue_timeout" in r.error.message and "busy" in r.error.message
    await long_task


async def test_max_loaded_models_evicts_the_lru_model(make_mm):
    mm = make_mm(worker_pool={"max_loaded_models": 2})
    a, b, c = syn(0, "a"), syn(0, "b"), syn(0, "c")
    for name in (a, b, c):
        await run(mm, name, device="cpu")
    assert await loaded(mm) == sorted([b, c])
    assert (await release_record(mm, a))["reason"] == f"evicted_for={c}"


async def test_gpu_choice_takes_the_fewest_evictions(make_mm):
    mm = gpu_mm(make_mm, "1000,1000")
    x1, x2, y = syn(300, "x1"), syn(300, "x2"), syn(700, "y")
    await run(mm, x1, device="cuda:0")
    await run(mm, x2, device="cuda:0")
    await run(mm, y, device="cuda:1")
    # cuda:0 has more free memory (400 MiB) but would need two evictions, cuda:1 one.
    r = await run(mm, syn(800, "big"), device="gpu")
    assert r.data.get("device", r.data.get("devices")) in ("cuda:1", ["cuda:1"]) or \
        (await model(mm, syn(800, "big")))["devices"] == ["cuda:1"]
    assert await loaded(mm) == sorted([x1, x2, syn(800, "big")])
    assert (await release_record(mm, y))["reason"].startswith("evicted_for=")


async def test_10000_tasks_over_5_models_that_do_not_fit_together(make_mm):
    mm = gpu_mm(make_mm, "1000", queue_timeout=120)
    names = [syn(400, f"m{i}") for i in range(5)]  # two fit at a time
    texts = [f"t{i}" for i in range(10000)]

    async def one(i):
        return await mm.task([texts[i]], "embedding", names[i % 5], device="gpu",
                             num_workers=1)

    results = await asyncio.gather(*(one(i) for i in range(10000)))
    assert all(r.success for r in results), [r.error for r in results if not r.success][:3]
    stats = mm._engine.stats()
    assert stats["double_completions"] == 0 and stats["created"] == stats["completed"]
    st = await status(mm)
    gpu = [d for d in st["devices"] if d["name"] == "cuda:0"][0]
    assert gpu["used_bytes"] <= gpu["budget_bytes"]
    done = sum(m["done"] for m in st["models"])
    # models that were evicted took their counters with them; their releases are recorded
    assert done <= 10000 and len(st["released_models"]) >= 3


# ---- out of memory ------------------------------------------------------------------

async def test_oom_batch_is_split_down_to_one_task(make_mm, caplog):
    mm = make_mm(worker_pool={"max_batch_items": 64})
    oom = "synthetic/embedding?dim=8&fail=oom_over=4"
    ref = "synthetic/embedding?dim=8"
    texts = [f"text {i}" for i in range(23)]
    await run(mm, oom, device="cpu", text="warm")
    results = await asyncio.gather(
        *(mm.task([t], "embedding", oom, device="cpu", num_workers=1) for t in texts),
        mm.task([f"w{i}" for i in range(6)], "embedding", oom, device="cpu", num_workers=1))
    *singles, wide = results
    assert not wide.success and wide.error.code == "OUT_OF_MEMORY"
    for t, r in zip(texts, singles):
        assert r.success, r.error
        lone = await mm.task([t], "embedding", ref, device="cpu", num_workers=1)
        assert as_list(r.data["embeddings"]) == as_list(lone.data["embeddings"])
    m = await model(mm, oom)
    assert m["done"] == 24 and m["failed"] == 1  # warm-up + 23, the wide one once
    assert "retrying them in halves" in caplog.text
    stats = mm._engine.stats()
    assert stats["double_completions"] == 0


async def test_oom_at_load_evicts_idle_models_and_retries_once(make_mm):
    mm = gpu_mm(make_mm, "1000")
    idle = syn(300, "idle")
    await run(mm, idle)
    flaky = syn(300, "flaky", oom_loads=1)
    await run(mm, flaky)
    assert (await release_record(mm, idle))["reason"] == "oom"
    twice = syn(100, "twice", oom_loads=2)
    r = await mm.task(["x"], "embedding", twice, device="gpu", num_workers=1)
    assert not r.success and r.error.code == "OUT_OF_MEMORY"


# ---- release ------------------------------------------------------------------------

async def test_release_gives_memory_back_and_says_how_much(make_mm):
    mm = make_mm()
    name = syn(96, "cpu")
    before = rss()
    await run(mm, name, device="cpu", keep_alive=5)
    m = await model(mm, name)
    assert m["memory_bytes_by_device"]["cpu"] >= 90 * MIB
    assert rss() - before >= 90 * MIB
    r = await mm.release_model(name)
    assert r.success and r.data["released"] is True and r.data["reason"] == "manual"
    assert r.data["released_bytes"] >= 90 * MIB
    assert 0 <= r.data["release_seconds"] < 5
    assert abs(rss() - before) < 0.1 * 96 * MIB + 8 * MIB
    rec = await release_record(mm, name)
    assert rec["reason"] == "manual" and rec["released_bytes"] == r.data["released_bytes"]


async def test_idle_release_reason(make_mm):
    mm = gpu_mm(make_mm, "1000")
    name = syn(100, "idle")
    await run(mm, name, keep_alive=0.001)  # 60 ms
    assert await wait_for(lambda: _released(mm, name))
    rec = await release_record(mm, name)
    assert rec["reason"] == "idle" and rec["released_bytes"] == 100 * MIB


async def _released(mm, name):
    return await release_record(mm, name) is not None


async def test_cpu_workers_share_a_footprint(make_mm):
    mm = make_mm()
    name = syn(48, "shared")
    r = await mm.task(["x"], "embedding", name, device="cpu", num_workers=2)
    assert r.success, r.error
    m = await model(mm, name)
    assert 40 * MIB <= m["memory_bytes_by_device"]["cpu"] < 80 * MIB  # once, not twice
    rel = await mm.release_model(name)
    # measured as the resident drop while the workers unload (other threads keep running)
    assert rel.data["released_bytes"] >= 24 * MIB
