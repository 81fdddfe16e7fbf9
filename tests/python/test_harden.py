"""Hardening (issue 14 items 6-9 and 11; issue 12's fork and abandoned-loop items).

Each test here failed before its fix: a crash, an undocumented exception, a name cut at a NUL
byte, a miscount, a hang after fork(), or "Event loop is closed" from close().
"""
import asyncio
import multiprocessing
import os
import threading

import pydantic
import pytest

from pymodelmgr import ModelManager, ModelManagerSettings, _core
from pymodelmgr import hub

EMB = "synthetic/embedding?dim=8"
SLOW = "synthetic/embedding?dim=8&load_ms=400"
BASE = {"fake_gpus": "none", "embedding_cache": {"enabled": False}}


def settings(**kw):
    d = dict(BASE)
    d.update(kw)
    return ModelManagerSettings(**d)


# ---- item 6: cpu_threads ------------------------------------------------------------

@pytest.mark.parametrize("threads", [1000, 10 ** 6])
def test_cpu_threads_too_many_is_a_validation_error(threads):
    with pytest.raises(pydantic.ValidationError) as ei:
        ModelManagerSettings(cpu_threads=threads)
    msg = str(ei.value)
    assert f"cpu_threads={threads}" in msg and "core" in msg


def test_cpu_threads_checked_on_assignment_and_by_the_engine():
    s = ModelManagerSettings()
    with pytest.raises(pydantic.ValidationError):
        s.cpu_threads = 1000
    # model_construct skips validation: ModelManager checks again
    with pytest.raises(pydantic.ValidationError):
        ModelManager(ModelManagerSettings.model_construct(cpu_threads=10 ** 6))
    with pytest.raises(ValueError, match="cpu_threads=1000000"):
        _core.Engine(cpu_threads=10 ** 6)


async def test_cpu_threads_at_the_limit_runs_minilm(make_mm, minilm_dir):
    from pymodelmgr.settings import max_cpu_threads

    mm = make_mm(cpu_threads=max_cpu_threads())
    r = await mm.task(["hello"], "embedding", minilm_dir, device="cpu", num_workers=1)
    assert r.success, r.error
    assert len(r.data["embeddings"][0]) == 384


# ---- item 7: NUL bytes in names -------------------------------------------------------

@pytest.mark.parametrize("name", ["sentence-transformers/all-MiniLM-L6-v2\x00garbage", "org/na\x00me",
                                  EMB + "\x00x", "\x00"])
async def test_nul_in_model_name_is_rejected_everywhere(mm, name):
    for r in (await mm.task(["a"], "embedding", name, device="cpu"),
              await mm.task(None, "embedding", name, device="cpu"),
              await mm.release_model(name),
              await mm.drop_model_queue(name)):
        assert r.error.code == "INVALID_ARGUMENT", r
        assert "NUL" in r.error.message and repr(name)[:20] in r.error.message
    assert (await mm.status()).data["models"] == []


async def test_nul_in_other_strings_is_rejected(mm):
    r = await mm.task(["a"], "embedding\x00", EMB, device="cpu")
    assert r.error.code == "INVALID_ARGUMENT" and "NUL" in r.error.message
    r = await mm.task(["a"], "embedding", EMB, device="cpu\x00gpu")
    assert r.error.code == "INVALID_ARGUMENT" and "device" in r.error.message
    r = await mm.task(["a"], "embedding", EMB, device="cpu", revision="main\x00x")
    assert r.error.code == "INVALID_ARGUMENT" and "revision" in r.error.message
    r = await mm.drop_model_queue(EMB, reason="x\x00y")
    assert r.error.code == "INVALID_ARGUMENT" and "reason" in r.error.message
    with pytest.raises(pydantic.ValidationError, match="NUL"):
        ModelManagerSettings(model_aliases={"a": "org/na\x00me"})


def test_nul_in_hub_names(tmp_path, capsys):
    with pytest.raises(ValueError, match="NUL"):
        _core.hub_validate_name("org/na\x00me")
    with pytest.raises(ValueError, match="NUL"):
        hub.download("org/na\x00me", cache_dir=str(tmp_path), offline=True, progress=False)
    with pytest.raises(ValueError, match="revision"):
        hub.download("org/name", "main\x00x", cache_dir=str(tmp_path), offline=True, progress=False)
    assert hub.cli_main(["download", "org/na\x00me", "--cache-dir", str(tmp_path)]) == 1
    assert "NUL" in capsys.readouterr().err


# ---- item 8: undocumented exceptions --------------------------------------------------

async def test_deeply_nested_kwarg_is_an_error_result(mm):
    nested = []
    for _ in range(100_000):
        nested = [nested]
    r = await mm.task(["a"], "embedding", EMB, device="cpu", normalize=nested)
    assert r.error.code == "INVALID_ARGUMENT"
    assert "normalize" in r.error.message and "nested" in r.error.message


async def test_lone_surrogate_names_are_error_results(mm):
    for r in (await mm.release_model("org/\ud800x"), await mm.drop_model_queue("org/\ud800x"),
              await mm.task(["a"], "embedding", "org/\ud800x", device="cpu"),
              await mm.drop_model_queue(EMB, reason="\udfff")):
        assert r.error.code == "INVALID_ARGUMENT", r
        assert "surrogate" in r.error.message


@pytest.mark.parametrize("section,field,value", [
    ("worker_pool", "model_idle_timeout", float("inf")),
    ("worker_pool", "model_idle_timeout", float("nan")),
    ("worker_pool", "queue_timeout", 1e300),
    ("worker_pool", "queue_timeout", float("inf")),
    ("embedding_cache", "ttl_seconds", 1e300),
    ("embedding_cache", "max_cache_size", 2 ** 70),
    ("worker_pool", "max_queue_size", 2 ** 70),
    ("worker_pool", "max_batch_items", 2 ** 64),
])
def test_out_of_range_settings_are_validation_errors(section, field, value):
    with pytest.raises(pydantic.ValidationError) as ei:
        ModelManager({section: {field: value}})
    assert f"{section}.{field}" in str(ei.value)


async def test_drop_model_queue_after_close_is_shutting_down():
    mm = ModelManager(settings())
    await mm.close()
    for r in (await mm.drop_model_queue(EMB), await mm.release_model(EMB), await mm.status(),
              await mm.task(["a"], "embedding", EMB)):
        assert r.error.code == "SHUTTING_DOWN"


# ---- item 9: messages that say what is wrong -------------------------------------------

async def test_huge_integer_kwarg_names_the_parameter(mm):
    r = await mm.task(["a"], "embedding", EMB, device="cpu", dimensions=2 ** 70)
    assert r.error.code == "INVALID_ARGUMENT"
    assert "dimensions" in r.error.message and str(2 ** 70) in r.error.message
    assert "out of range" in r.error.message


async def test_path_to_a_file_says_it_is_a_file(mm, tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"x")
    for path in ("/etc/passwd", str(f)):
        r = await mm.task(["a"], "embedding", path, device="cpu")
        assert r.error.code == "INVALID_ARGUMENT"
        assert path in r.error.message and "is a file" in r.error.message
    r = await mm.task(["a"], "embedding", str(tmp_path / "nope"), device="cpu")
    assert r.error.code == "MODEL_NOT_FOUND" and "does not exist" in r.error.message


def test_cli_refuses_a_folder_that_is_not_a_model(tmp_path, capsys):
    cache = tmp_path / "cache"
    src = tmp_path / "notamodel"
    src.mkdir()
    (src / "big.txt").write_bytes(b"x" * 1000)
    for folder in ("/etc", str(src)):
        assert hub.cli_main(["import-model", folder, "--as", "foo/bar", "--cache-dir", str(cache)]) == 1
        err = capsys.readouterr().err
        assert "INVALID_ARGUMENT" in err and folder in err and "config.json" in err
    assert not cache.exists()  # nothing was copied


def test_cli_download_refuses_a_path(tmp_path, capsys):
    for bad in ("../../etc", "/etc", "./x", "a/b/c"):
        assert hub.cli_main(["download", bad, "--cache-dir", str(tmp_path)]) == 1
        out, err = capsys.readouterr()
        assert out == "" and "INVALID_ARGUMENT" in err and bad in err


# ---- item 11: drop_model_queue counts every loop's futures -----------------------------

def test_futures_cancelled_counts_every_event_loop():
    mm = ModelManager(settings(worker_pool={"queue_timeout": 0}))
    n_loops, per_loop = 4, 600
    model = "synthetic/embedding?dim=8&load_ms=800"
    outcomes = [None] * n_loops
    queued = threading.Barrier(n_loops + 1)

    def run(k):
        async def main():
            tasks = [asyncio.ensure_future(mm.task([f"{k}-{i}"], "embedding", model, device="cpu"))
                     for i in range(per_loop)]
            await asyncio.sleep(0.05)
            queued.wait()
            return await asyncio.gather(*tasks, return_exceptions=True)
        outcomes[k] = asyncio.run(main())

    threads = [threading.Thread(target=run, args=(k,)) for k in range(n_loops)]
    for t in threads:
        t.start()
    queued.wait()

    async def drop():
        return await mm.drop_model_queue(model, reason="test drop")
    r = asyncio.run(drop())
    for t in threads:
        t.join(30)
    assert r.success
    assert r.data["dropped"] == n_loops * per_loop
    assert r.data["futures_cancelled"] == r.data["dropped"]
    for res in outcomes:
        assert len(res) == per_loop
        assert all(isinstance(x, RuntimeError) and "test drop" in str(x) for x in res)
    asyncio.run(mm.close())


# ---- issue 12: fork, and futures of a closed event loop -------------------------------

def _child_uses_parent_manager(mm, conn):
    async def main():
        out = []
        out.append(await asyncio.wait_for(mm.task(["a"], "embedding", EMB, device="cpu"), 10))
        out.append(await asyncio.wait_for(mm.release_model(EMB), 10))
        out.append(await asyncio.wait_for(mm.drop_model_queue(EMB), 10))
        out.append(await asyncio.wait_for(mm.status(), 10))
        await asyncio.wait_for(mm.close(), 10)
        return [(r.error.code, r.error.message) if r.error else None for r in out]
    try:
        conn.send(asyncio.run(main()))
    except BaseException as e:  # report, do not hang
        conn.send(repr(e))
    conn.close()


def test_forked_child_gets_an_error_not_a_hang():
    mm = ModelManager(settings())

    async def warm():
        r = await mm.task(["a"], "embedding", EMB, device="cpu")
        assert r.success
    asyncio.run(warm())
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_child_uses_parent_manager, args=(mm, child))
    p.start()
    assert parent.poll(30), "the child hung"
    got = parent.recv()
    p.join(10)
    assert p.exitcode == 0
    assert isinstance(got, list), got
    for code, msg in got:
        assert code == "UNSUPPORTED" and "fork" in msg and str(os.getpid()) in msg

    async def still_works():
        r = await mm.task(["b"], "embedding", EMB, device="cpu")
        assert r.success
        await mm.close()
    asyncio.run(still_works())


def test_close_skips_futures_of_a_closed_event_loop():
    mm = ModelManager(settings())
    old = asyncio.new_event_loop()
    task = old.create_task(mm.task(["a"], "embedding", SLOW, device="cpu"))
    old.run_until_complete(asyncio.sleep(0.05))
    assert not task.done()
    old.close()  # abandoned with the task still waiting

    async def close():
        await mm.close()
        assert mm._futures == {}
    asyncio.run(close())
    task._log_destroy_pending = False
