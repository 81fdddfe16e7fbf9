"""The embedding cache: hits complete at submit, partial hits compute only the
missing texts, vectors are bit-identical, LRU eviction, TTL expiry, off switch."""
import asyncio

EMB = "synthetic/embedding?dim=8&item_us=1000"


def cache_on(make_mm, **kw):
    cfg = {"enabled": True, "max_cache_size": 100, "ttl_seconds": 3600}
    cfg.update(kw)
    return make_mm(embedding_cache=cfg)


async def stats(m):
    data = (await m.status()).data
    models = {x["model_name"]: x for x in data["models"]}
    return data["embedding_cache"], models


async def test_full_hit_completes_without_the_queue(make_mm):
    m = cache_on(make_mm)
    first = await m.task(["a", "b"], "embedding", EMB, device="cpu")
    assert first.data["device"] == "cpu" and "cache_hits" not in first.data
    again = await m.task(["b", "a"], "embedding", EMB, device="cpu")
    assert again.data["device"] == "cache" and again.data["cache_hits"] == 2
    assert again.data["embeddings"] == first.data["embeddings"][::-1]  # bit-identical
    cache, models = await stats(m)
    assert cache["hits"] == 2 and cache["size"] == 2
    assert models[EMB]["submitted"] == 1  # the second task never reached the queue
    # Served even after the model is released: no reload for cached texts.
    await m.release_model(EMB)
    third = await m.task(["a"], "embedding", EMB, device="cpu")
    assert third.data["device"] == "cache"
    assert (await stats(m))[1] == {}


async def test_partial_hit_computes_only_missing(make_mm):
    m = cache_on(make_mm)
    await m.task(["x", "z"], "embedding", EMB, device="cpu")
    mixed = await m.task(["x", "y", "z", "w"], "embedding", EMB, device="cpu")
    assert mixed.data["cache_hits"] == 2
    _, models = await stats(m)
    assert models[EMB]["items"] == 2 + 2  # only y and w were computed
    fresh = make_mm()  # no cache: the reference vectors
    ref = await fresh.task(["x", "y", "z", "w"], "embedding", EMB, device="cpu")
    assert mixed.data["embeddings"] == ref.data["embeddings"]


async def test_options_are_part_of_the_key(make_mm):
    m = cache_on(make_mm)
    full = await m.task(["t"], "embedding", EMB, device="cpu")
    cut = await m.task(["t"], "embedding", EMB, device="cpu", dimensions=4)
    assert len(cut.data["embeddings"][0]) == 4 and cut.data["device"] == "cpu"
    raw = await m.task(["t"], "embedding", EMB, device="cpu", normalize=False)
    assert raw.data["device"] == "cpu" and raw.data["embeddings"] != full.data["embeddings"]
    again = await m.task(["t"], "embedding", EMB, device="cpu", dimensions=4)
    assert again.data["device"] == "cache" and again.data["embeddings"] == cut.data["embeddings"]


async def test_long_keys_and_wide_vectors(make_mm):
    """Keys longer than the lookup's stack buffer (a long model name: built on the heap) and
    vectors wider than its first-hit row (served through the retry with room) hit bit for bit,
    and two names that differ only past the stack buffer never share a vector."""
    pad = "&load_ms=0" * 36  # a 398-byte name (at most 400): the key is over 256
    wide = f"synthetic/embedding?dim=1500{pad}&item_us=1"
    wider = f"synthetic/embedding?dim=1500{pad}&item_us=2"  # same vectors, another key
    m = cache_on(make_mm)
    first = await m.task(["a", "b"], "embedding", wide, device="cpu")
    assert len(first.data["embeddings"][0]) == 1500
    full = await m.task(["b", "a"], "embedding", wide, device="cpu")
    assert full.data["device"] == "cache" and full.data["cache_hits"] == 2
    assert full.data["embeddings"] == first.data["embeddings"][::-1]
    part = await m.task(["c", "a", "b"], "embedding", wide, device="cpu")
    assert part.data["cache_hits"] == 2 and part.data["embeddings"][1:] == first.data["embeddings"]
    other = await m.task(["a"], "embedding", wider, device="cpu")
    assert other.data["device"] == "cpu" and "cache_hits" not in other.data
    assert other.data["embeddings"][0] == first.data["embeddings"][0]  # computed, equal


async def test_lru_eviction(make_mm):
    m = cache_on(make_mm, max_cache_size=3)
    await m.task(["a", "b", "c"], "embedding", EMB, device="cpu")
    await m.task(["a"], "embedding", EMB, device="cpu")  # a is now most recent
    await m.task(["d"], "embedding", EMB, device="cpu")  # evicts b (least recent)
    cache, _ = await stats(m)
    assert cache["size"] == 3 and cache["evictions"] == 1
    assert (await m.task(["a"], "embedding", EMB, device="cpu")).data["device"] == "cache"
    assert (await m.task(["b"], "embedding", EMB, device="cpu")).data["device"] == "cpu"


async def test_ttl_expiry(make_mm):
    m = cache_on(make_mm, ttl_seconds=0.2)
    await m.task(["a"], "embedding", EMB, device="cpu")
    assert (await m.task(["a"], "embedding", EMB, device="cpu")).data["device"] == "cache"
    await asyncio.sleep(0.3)
    assert (await m.task(["a"], "embedding", EMB, device="cpu")).data["device"] == "cpu"
    cache, _ = await stats(m)
    assert cache["expirations"] >= 1


async def test_disabled(make_mm):
    m = make_mm(embedding_cache={"enabled": False})
    await m.task(["a"], "embedding", EMB, device="cpu")
    assert (await m.task(["a"], "embedding", EMB, device="cpu")).data["device"] == "cpu"
    assert (await m.status()).data["embedding_cache"] is None


async def test_generation_is_never_cached(make_mm):
    m = cache_on(make_mm)
    for _ in range(2):
        r = await m.task("a", "text_generation", "synthetic/text_generation", device="cpu")
        assert r.data["device"] == "cpu"


async def test_native_model_cache_is_bit_identical(make_mm, minilm_dir):
    import os

    import pymodelmgr

    if not os.path.exists(os.path.join(os.path.dirname(pymodelmgr.__file__), "libmm_torch.so")):
        import pytest

        pytest.skip("the native backend is not built")
    m = cache_on(make_mm)
    texts = ["the cat sat on the mat", "a dog barked", "stocks fell"]
    first = await m.task(texts, "embedding", minilm_dir, device="cpu")
    assert first.success, first.error
    again = await m.task(texts[::-1] + ["new text"], "embedding", minilm_dir, device="cpu")
    assert again.data["cache_hits"] == 3
    assert again.data["embeddings"][:3] == first.data["embeddings"][::-1]
    plain = make_mm()
    ref = await plain.task(["new text"], "embedding", minilm_dir, device="cpu")
    assert again.data["embeddings"][3] == ref.data["embeddings"][0]


async def test_cache_is_keyed_by_dtype(make_mm, minilm_dir):
    """An int8 and a float32 vector of one text never share a cache entry."""
    import os

    import pymodelmgr

    if not os.path.exists(os.path.join(os.path.dirname(pymodelmgr.__file__), "libmm_torch.so")):
        import pytest

        pytest.skip("the native backend is not built")
    m = cache_on(make_mm)
    text = ["the cat sat on the mat"]
    fp32 = await m.task(text, "embedding", minilm_dir, device="cpu", dtype="float32")
    await m.release_model(minilm_dir)  # the next task loads the model in int8
    q = await m.task(text, "embedding", minilm_dir, device="cpu", dtype="int8")
    assert fp32.success and q.success, (fp32.error, q.error)
    assert q.data["device"] == "cpu" and "cache_hits" not in q.data  # computed, not served
    assert q.data["embeddings"] != fp32.data["embeddings"]  # int8 really ran
    again32 = await m.task(text, "embedding", minilm_dir, device="cpu", dtype="float32")
    again8 = await m.task(text, "embedding", minilm_dir, device="cpu", dtype="int8")
    assert again32.data["device"] == again8.data["device"] == "cache"
    assert again32.data["embeddings"] == fp32.data["embeddings"]
    assert again8.data["embeddings"] == q.data["embeddings"]


async def test_download_progress_is_logged(hub_env, caplog):
    import logging
    import os

    import pymodelmgr
    from pymodelmgr import ModelManager, ModelManagerSettings

    if not os.path.exists(os.path.join(os.path.dirname(pymodelmgr.__file__), "libmm_torch.so")):
        import pytest

        pytest.skip("the native backend is not built")
    caplog.set_level(logging.INFO, logger="pymodelmgr")
    async with ModelManager(ModelManagerSettings(fake_gpus="none",
                                                 cache_dir=str(hub_env.cache_dir))) as m:
        r = await m.task(["hi"], "embedding", "sentence-transformers/all-MiniLM-L6-v2", device="cpu")
        assert r.success, r.error
    lines = [rec.message for rec in caplog.records if "downloading" in rec.message]
    assert lines and "MB" in lines[-1] and "100%" in lines[-1]
