"""What task() returns (_core.TaskFuture, csrc/py/py_future.c): an asyncio future implemented
in C that is also a coroutine, so gather takes it without a Task, while await, create_task,
ensure_future, wait_for, wait, shield, timeout, gather's cancellation, done callbacks and calling
task() before the loop runs keep working, and a cancelled caller's queued task leaves its queue
(completing exactly once, as CANCELLED); under load with cancellations mixed in every task
completes once, and nothing leaks."""
import asyncio
import contextvars
import gc
import random
import sys
import warnings
import weakref

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


async def test_the_future_protocol():
    async with ModelManager(SETTINGS) as mm:
        loop = asyncio.get_running_loop()
        fut = mm.task(["a"], "embedding", SLOW_LOAD, device="cpu")
        assert type(fut).__name__ == "TaskFuture" and fut.get_loop() is loop
        assert not fut.done() and not fut.cancelled() and fut.task_id > 0
        with pytest.raises(asyncio.InvalidStateError):
            fut.result()
        with pytest.raises(asyncio.InvalidStateError):
            fut.exception()
        var = contextvars.ContextVar("v", default="unset")
        seen = []
        var.set("at add")
        fut.add_done_callback(lambda f: seen.append(("first", var.get(), f is fut)))
        removed = lambda f: seen.append("removed")  # noqa: E731
        fut.add_done_callback(removed)
        fut.add_done_callback(removed)
        ctx = contextvars.copy_context()
        ctx.run(var.set, "explicit")
        fut.add_done_callback(lambda f: seen.append(("third", var.get())), context=ctx)
        var.set("later")
        assert fut.remove_done_callback(removed) == 2
        res = await fut
        assert res.success and fut.done() and fut.result() is res and fut.exception() is None
        await asyncio.sleep(0)
        assert seen == [("first", "at add", True), ("third", "explicit")]
        late = []
        fut.add_done_callback(late.append)  # already done: scheduled at once
        assert late == []
        await asyncio.sleep(0)
        assert late == [fut]
        with pytest.raises(asyncio.InvalidStateError):
            fut.set_result(None)
        assert not fut.cancel() and "finished" in repr(fut)
        # a failed task is a Result with the error, as before
        bad = await mm.task(["__fail__"], "embedding", EMB, device="cpu")
        assert not bad.success and bad.error.code == "TASK_FAILED"
        # cancel(msg) carries its message to the awaiter and to gather
        c = mm.task(["b"], "embedding", SLOW_LOAD, device="cpu")
        assert c.cancel("stop it") and c.cancelled() and not c.cancel()
        with pytest.raises(asyncio.CancelledError, match="stop it"):
            c.result()
        with pytest.raises(asyncio.CancelledError, match="stop it"):
            await asyncio.gather(c)


async def test_wait_shield_timeout_and_wait_for():
    async with ModelManager(SETTINGS) as mm:
        def t(text="a", model=EMB):
            return mm.task([text], "embedding", model, device="cpu")
        done, pending = await asyncio.wait([asyncio.create_task(t()) for _ in range(3)])
        assert len(done) == 3 and not pending and all(d.result().success for d in done)
        with pytest.raises(TypeError):  # asyncio.wait refuses coroutines: wrap in a Task
            await asyncio.wait([t()])
        assert (await asyncio.shield(t())).success
        async with asyncio.timeout(30):
            assert (await t()).success
        assert (await asyncio.wait_for(t(), 30)).success
        if hasattr(asyncio, "TaskGroup"):  # Python 3.11+
            async with asyncio.TaskGroup() as tg:
                in_group = tg.create_task(t())
            assert in_group.result().success
        await t(model=SLOW_LOAD)  # loaded: the slow model's later tasks are fast
        slow = "synthetic/embedding?dim=8&load_ms=2000"
        f = t(model=slow)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await f
        assert f.cancelled()
        g = t(model=slow)
        outer = asyncio.shield(g)
        outer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await outer
        assert not g.cancelled() and (await g).success  # shield kept the inner task going
        # an exception set on a future (drop_model_queue's RuntimeError) reaches gather
        h = t("x", model="synthetic/embedding?dim=8&load_ms=1500&item_us=1")
        await asyncio.sleep(0.05)
        dropped = await mm.drop_model_queue("synthetic/embedding?dim=8&load_ms=1500&item_us=1",
                                            "test drop")
        assert dropped.data["dropped"] == 1
        with pytest.raises(RuntimeError, match="test drop"):
            await asyncio.gather(h)
        assert isinstance(h.exception(), RuntimeError)


async def test_create_task_cancelled_before_it_starts_cancels_the_task():
    async with ModelManager(SETTINGS) as mm:
        first = mm.task(["a"], "embedding", SLOW_LOAD, device="cpu")
        fut = mm.task(["b"], "embedding", SLOW_LOAD, device="cpu")
        t = asyncio.create_task(fut)
        t.cancel()  # before its first step: the Task throws CancelledError into it
        with pytest.raises(asyncio.CancelledError):
            await t
        assert fut.cancelled()
        assert (await first).success
        st = await mm.status()
        m = next(x for x in st.data["models"] if x["model_name"] == SLOW_LOAD)
        assert m["cancelled"] == 1 and m["done"] == 1, m


async def test_exactly_once_under_load_with_cancellations():
    rnd = random.Random(13)
    n = 30_000
    async with ModelManager(SETTINGS) as mm:
        await mm.task(["warm"], "embedding", EMB, device="cpu")
        st0 = next(x for x in (await mm.status()).data["models"] if x["model_name"] == EMB)
        calls = {}

        def count(f):
            calls[id(f)] = calls.get(id(f), 0) + 1
        futs = []
        for i in range(n):
            f = mm.task([f"t{i % 500}"], "embedding", EMB, device="cpu")
            f.add_done_callback(count)
            futs.append(f)
            if rnd.random() < 0.3:
                f.cancel()
            if i % 1000 == 999:
                await asyncio.sleep(0)  # let some finish while others are still submitted
        rs = await asyncio.gather(*futs, return_exceptions=True)
        await asyncio.sleep(0)
        cancelled = sum(1 for f in futs if f.cancelled())
        assert all(isinstance(r, asyncio.CancelledError) or r.success for r in rs)
        assert sum(1 for r in rs if not isinstance(r, asyncio.CancelledError)) == n - cancelled
        assert sorted(set(calls.values())) == [1] and len(calls) == n
        st = await mm.status()
        m = next(x for x in st.data["models"] if x["model_name"] == EMB)
        done, gone = m["done"] - st0["done"], m["cancelled"] - st0["cancelled"]
        assert m["submitted"] - st0["submitted"] == n and done + gone == n, (st0, m)
        assert done >= n - cancelled  # a cancel can come after the task ran
        assert st.data["tasks"]["double_completions"] == 0


async def test_no_leak_and_no_warning_for_futures_never_awaited():
    async with ModelManager(SETTINGS) as mm:
        loop = asyncio.get_running_loop()
        fut_type = type(mm.task(["a"], "embedding", EMB, device="cpu"))
        from pymodelmgr import Result

        async def burst(k, await_them):
            fs = [mm.task([f"t{i}"], "embedding", EMB, device="cpu") for i in range(k)]
            if await_them:
                await asyncio.gather(*fs)
            else:  # dropped at once: the results arrive with nobody waiting, and go
                refs = [weakref.ref(f) for f in fs]
                del fs
                for _ in range(3000):
                    if all(r() is None for r in refs[-10:]) and all(r() is None for r in refs):
                        break
                    await asyncio.sleep(0.01)
                assert all(r() is None for r in refs)
        await burst(2000, True)
        await burst(2000, False)
        gc.collect()
        before = (sys.getrefcount(loop), sys.getrefcount(fut_type), sys.getrefcount(Result),
                  len(gc.get_objects()))
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for _ in range(10):
                await burst(5000, True)
                await burst(5000, False)
            probe = weakref.ref(mm.task(["a"], "embedding", EMB, device="cpu"))
            await asyncio.sleep(0.3)
        gc.collect()
        after = (sys.getrefcount(loop), sys.getrefcount(fut_type), sys.getrefcount(Result),
                 len(gc.get_objects()))
        # every future holds its loop and its type, every Result its type: a leaked one shows
        assert after[:3] == before[:3], (before, after)
        assert after[3] - before[3] < 1000, (before, after)
        assert probe() is None
        assert (await mm.status()).data["tasks"]["double_completions"] == 0


def test_futures_of_a_closed_loop_and_a_later_close():
    mm = ModelManager(SETTINGS)
    old = asyncio.new_event_loop()

    async def submit():
        return [mm.task(["a"], "embedding", SLOW_LOAD, device="cpu") for _ in range(5)]
    futs = old.run_until_complete(submit())
    old.close()  # abandoned with the futures pending

    async def close():
        await mm.close()
    asyncio.run(close())
    assert not any(f.done() for f in futs)  # nobody can wait on a closed loop


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
