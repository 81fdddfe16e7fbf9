"""Under load: 10,000 concurrent tasks, and exactly-once completion while
releases, drops and cancellations race with the work."""
import asyncio
import random

from pymodelmgr import Result

EMB = "synthetic/embedding?dim=8"


async def test_ten_thousand_concurrent_tasks_batch_and_match(mm):
    n = 10_000
    rs = await asyncio.gather(*(mm.task([f"text {i}"], "embedding", EMB, device="cpu")
                                for i in range(n)))
    assert all(r.success for r in rs)
    # Each caller got the vector of its own text, whatever batch it shared.
    for i in random.Random(1).sample(range(n), 20):
        alone = await mm.task([f"text {i}"], "embedding", EMB, device="cpu")
        assert alone.data["embeddings"] == rs[i].data["embeddings"]
    st = (await mm.status()).data
    model = st["models"][0]
    assert model["done"] == n + 20 and model["items"] == n + 20
    assert model["batches"] < n / 10  # many small requests became few batches
    assert st["tasks"]["created"] == st["tasks"]["completed"]
    assert st["tasks"]["double_completions"] == 0


async def test_exactly_once_with_release_drop_cancel_mixed(mm):
    rnd = random.Random(7)
    models = ["synthetic/embedding?dim=4&item_us=20&max_items=7",
              "synthetic/embedding?dim=4&load_ms=5",
              "synthetic/text_generation?item_us=10"]
    tasks, controls = [], []
    for i in range(6000):
        name = rnd.choice(models)
        kind = "text_generation" if "text_generation" in name else "embedding"
        text = "__fail__" if rnd.random() < 0.01 else f"t{i}"
        tasks.append(asyncio.ensure_future(
            mm.task([text], kind, name, device="cpu", num_workers=rnd.randint(1, 3))))
        r = rnd.random()
        if r < 0.004:
            controls.append(asyncio.ensure_future(mm.release_model(rnd.choice(models))))
        elif r < 0.008:
            controls.append(asyncio.ensure_future(mm.drop_model_queue(rnd.choice(models), "stress")))
        elif r < 0.03:
            tasks[rnd.randrange(len(tasks))].cancel()
        if i % 500 == 0:
            await asyncio.sleep(0.001)
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    control_results = await asyncio.gather(*controls)
    assert all(c.success for c in control_results)
    kinds = {"ok": 0, "error": 0, "dropped": 0, "cancelled": 0}
    for o in outcomes:
        if isinstance(o, Result):
            if o.success:
                kinds["ok"] += 1
            else:
                assert o.error.code in ("TASK_FAILED",), o.error
                kinds["error"] += 1
        elif isinstance(o, asyncio.CancelledError):
            kinds["cancelled"] += 1
        else:
            assert isinstance(o, RuntimeError) and "stress" in str(o)
            kinds["dropped"] += 1
    assert sum(kinds.values()) == 6000 and kinds["ok"] > 4000
    await asyncio.sleep(0.05)  # completions of cancelled-while-running tasks
    stats = (await mm.status()).data["tasks"]
    assert stats["created"] == stats["completed"]
    assert stats["double_completions"] == 0


async def test_reload_cycles_under_traffic(mm):
    name = "synthetic/embedding?dim=4&load_ms=2"
    for cycle in range(20):
        burst = [mm.task([f"{cycle}-{i}"], "embedding", name, device="cpu", keep_alive=0)
                 for i in range(50)]
        rs = await asyncio.gather(*burst)
        assert all(r.success for r in rs)
    stats = (await mm.status()).data["tasks"]
    assert stats["created"] == stats["completed"] and stats["double_completions"] == 0
