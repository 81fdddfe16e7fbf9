"""What task() returns (manager._TaskFuture): an asyncio future that is also a coroutine, so
gather takes it without a Task, while await, create_task, ensure_future, wait_for, gather's
cancellation and calling task() before the loop runs keep working, and a cancelled caller's
queued task leaves its queue (completing exactly once, as CANCELLED)."""
import asyncio

import pytest

from pymodelmgr import ModelManager

EMB = "synthetic/embedding?dim=8"
SLOW_LOAD = "synthetic/embedding?dim=8&load_ms=1500"
SETTINGS = {"fake_gpus": "none", "embedding_cache": {"enabled": False},
            "worker_pool": {"queue_timeout": 0}}


async def test_every_way_of_awaiting_a_task():
    async with ModelManager(SETTINGS) as mm:
        plain = await mm.task(["a"], "embedding", EMB, device="cpu")
        assert plain.success and len(plain.data["embeddings"][0]) == 8
        t = asyncio.create_task(mm.task(["a"], "embedding", EMB, device="cpu"))
        f = asyncio.ensure_future(mm.task(["a"], "embedding", EMB, device="cpu"))
        w = await asyncio.wait_for(mm.task(["a"], "embedding", EMB, device="cpu"), 30)
        g = await asyncio.gather(*(mm.task([f"t{i}"], "embedding", EMB, device="cpu")
                                   for i in range(200)))
        assert (await t).data["embeddings"] == plain.data["embeddings"]
        assert (await f).data["embeddings"] == plain.data["embeddings"]
        assert w.data["embeddings"] == plain.data["embeddings"]
        assert all(r.success for r in g) and len(g) == 200
        # a task() future is a future (gather needs no Task) and a coroutine (create_task)
        fut = mm.task(["a"], "embedding", EMB, device="cpu")
        assert asyncio.isfuture(fut) and asyncio.iscoroutine(fut)
        assert (await fut).success
        # immediate answers (bad input) come back the same way
        bad = mm.task(["a"], "embedding", EMB, device="cpu", keep_alive="x")
        assert asyncio.isfuture(bad) and bad.done()
        assert (await asyncio.create_task(bad)).error.code == "INVALID_ARGUMENT"
        assert (await mm.status()).data["tasks"]["double_completions"] == 0


def test_task_called_outside_a_running_loop():
    mm = ModelManager(SETTINGS)

    async def close():
        await mm.close()
    try:
        r = asyncio.run(mm.task(["a"], "embedding", EMB, device="cpu"))
        assert r.success, r.error
    finally:
        asyncio.run(close())


@pytest.mark.parametrize("how", ["task", "gather", "wait_for", "future"])
async def test_cancelling_a_queued_task_takes_it_out(how):
    async with ModelManager(SETTINGS) as mm:
        first = mm.task(["a"], "embedding", SLOW_LOAD, device="cpu")  # loads for 1.5 s
        await asyncio.sleep(0.05)
        fut = mm.task(["b"], "embedding", SLOW_LOAD, device="cpu")
        if how == "task":
            t = asyncio.create_task(fut)
            await asyncio.sleep(0)
            t.cancel()
            with pytest.raises(asyncio.CancelledError):
                await t
        elif how == "gather":
            g = asyncio.gather(fut)
            await asyncio.sleep(0)
            g.cancel()
            with pytest.raises(asyncio.CancelledError):
                await g
        elif how == "wait_for":
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(fut, 0.05)
        else:
            fut.cancel()
            with pytest.raises(asyncio.CancelledError):
                await fut
        assert fut.cancelled()
        assert (await first).success
        st = await mm.status()
        m = next(x for x in st.data["models"] if x["model_name"] == SLOW_LOAD)
        assert m["cancelled"] == 1 and m["done"] == 1, m
        assert st.data["tasks"]["double_completions"] == 0


async def test_alias_names_come_back_on_results():
    async with ModelManager(dict(SETTINGS, model_aliases={"my-model": EMB})) as mm:
        rs = await asyncio.gather(*(mm.task(["a"], "embedding", "my-model", device="cpu")
                                    for _ in range(20)))
        assert all(r.data["model_name"] == "my-model" for r in rs)
        r = await mm.task(["a"], "embedding", EMB, device="cpu")
        assert r.data["model_name"] == EMB
