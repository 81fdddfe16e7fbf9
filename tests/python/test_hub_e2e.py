"""End to end: a task on a model the cache does not have downloads it through
the fake hub (the real all-MiniLM-L6-v2 files), then serves it from the cache.

Runs only when the libtorch shim is built (the engine's native backend calls
the C hub client from a worker thread, with HF_ENDPOINT pointing at the fake
hub).
"""

from __future__ import annotations

import math

import pytest

from conftest_hub import MINILM_REPO, fake_hub, hub_env, minilm_dir  # noqa: F401

import os  # noqa: E402

import pymodelmgr  # noqa: E402

if not os.path.exists(os.path.join(os.path.dirname(pymodelmgr.__file__), "libmm_torch.so")):
    pytest.skip("the native backend (libmm_torch.so) is not built", allow_module_level=True)


async def _embed(cache_dir):
    from pymodelmgr import ModelManager, ModelManagerSettings

    m = ModelManager(ModelManagerSettings(fake_gpus="none", cache_dir=cache_dir))
    try:
        return await m.task(["hello"], "embedding", MINILM_REPO, device="cpu")
    finally:
        await m.close()


async def test_task_downloads_and_caches_minilm(hub_env):
    fh = hub_env.hub
    r = await _embed(hub_env.cache_dir)
    assert r.success, r.error
    (vec,) = r.data["embeddings"]
    assert len(vec) == 384 and abs(math.sqrt(sum(x * x for x in vec)) - 1.0) < 1e-3
    assert fh.count(host="cdn") == 1  # model.safetensors, once
    fh.clear_requests()
    r2 = await _embed(hub_env.cache_dir)
    assert r2.success and fh.count() == 0  # served from the cache, no request
    assert max(abs(a - b) for a, b in zip(vec, r2.data["embeddings"][0])) < 1e-5


async def test_task_on_a_gated_model_without_token_fails_with_auth_required(hub_env, minilm_dir):
    hub_env.hub.add_folder("acme/gated-minilm", minilm_dir, gated=True, allowed_tokens={"hf_x" * 10})
    from pymodelmgr import ModelManager, ModelManagerSettings

    m = ModelManager(ModelManagerSettings(fake_gpus="none", cache_dir=hub_env.cache_dir))
    try:
        r = await m.task(["hello"], "embedding", "acme/gated-minilm", device="cpu")
    finally:
        await m.close()
    assert not r.success and r.error.code == "AUTH_REQUIRED" and "HF_TOKEN" in r.error.message


async def test_status_shows_the_download_of_a_real_model(hub_env):
    import asyncio

    from pymodelmgr import ModelManager, ModelManagerSettings

    hub_env.hub.faults.slow_chunk_s = 0.0015  # ~1400 chunks of 64 KiB: about two seconds
    hub_env.hub.faults.match = "model.safetensors"
    async with ModelManager(ModelManagerSettings(fake_gpus="none",
                                                 cache_dir=hub_env.cache_dir)) as m:
        pre = asyncio.ensure_future(m.task(None, "embedding", MINILM_REPO, device="cpu"))
        fractions = []
        while not pre.done():
            await asyncio.sleep(0.05)
            for st in (await m.status()).data["models"]:
                if st["state"] == "downloading":
                    fractions.append(st["download"]["fraction"])
        assert (await pre).success
    assert len(fractions) >= 3 and fractions == sorted(fractions) and fractions[-1] < 1
