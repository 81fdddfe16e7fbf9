"""ClusterModelManager on a local Ray cluster: three nodes on loopback (ray.cluster_utils),
each with one fake 1000 MiB GPU, shared by every test of this module (each test uses
model names of its own, so warm models of one test do not steer another).

Skips only when Ray cannot be imported (CI installs it from requirements-dev.txt).
"""
import asyncio
import os
import subprocess
import sys
import time

import pytest

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

from pymodelmgr import AppContext, Result  # noqa: E402
from pymodelmgr.cluster import NO_CAPACITY, NODE_LOST, ClusterModelManager, connect  # noqa: E402

NODE = dict(node_ip_address="127.0.0.1", include_dashboard=False,
            object_store_memory=100 * 1024 * 1024, num_cpus=1)
FAST_HEALTH = {"health_check_period_ms": 500, "health_check_failure_threshold": 3,
               "health_check_initial_delay_ms": 0}
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SETTINGS = {"embedding_cache": {"enabled": False}, "worker_pool": {"max_batch_items": 8}}


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(initialize_head=True, head_node_args=dict(
        NODE, env_vars={"PYMODELMGR_FAKE_GPUS": "1000"}, _system_config=FAST_HEALTH))
    for _ in range(2):
        c.add_node(**NODE, env_vars={"PYMODELMGR_FAKE_GPUS": "1000"})
    connect(c.address)
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture
async def make_cm(cluster):
    made = []

    def factory(**kw):
        kw.setdefault("settings", SETTINGS)
        kw.setdefault("status_interval", 0.2)
        cm = ClusterModelManager(cluster.address, **kw)
        made.append(cm)
        return cm

    yield factory
    for cm in made:
        if not cm._closed:
            st = await cm.status()
            assert st.data["tasks"]["double_completions"] == 0
        await cm.close()


def live_nodes():
    return [n["NodeID"] for n in ray.nodes() if n["Alive"]]


def model_nodes(status, model):
    return {m["node"] for m in status.data["models"]
            if m["model_name"] == model and m["state"] in ("loading", "ready")}


async def test_routes_to_the_warm_node(make_cm):
    cm = make_cm()
    model = "synthetic/embedding?dim=11"
    pre = await cm.task(None, "embedding", model, device="cpu")
    assert pre.success and pre.data["preloaded"]
    warm = pre.data["node"]
    for i in range(10):
        r = await cm.task([f"t{i}"], "embedding", model, device="cpu")
        assert r.success and r.data["node"] == warm
    await asyncio.sleep(0.5)  # after polls too
    rs = await asyncio.gather(*[cm.task([f"u{i}"], "embedding", model, device="cpu")
                                for i in range(300)])
    assert {r.data["node"] for r in rs} == {warm}
    st = await cm.status()
    assert model_nodes(st, model) == {warm}
    assert len(st.data["nodes"]) == 3


async def test_second_model_goes_to_another_node_when_the_first_is_full(make_cm):
    cm = make_cm()
    a = "synthetic/embedding?dim=12&mem_mb=800"
    b = "synthetic/embedding?dim=13&mem_mb=800"
    ra = await cm.task(["x"], "embedding", a)
    assert ra.success and ra.data["device"].startswith("cuda")
    await asyncio.sleep(0.5)  # the node's status now shows 800 of its 1000 MiB used
    rb = await cm.task(["x"], "embedding", b)
    assert rb.success and rb.data["node"] != ra.data["node"]
    st = await cm.status()
    full = [n for n in st.data["nodes"] if n["node_id"] == ra.data["node"]][0]
    assert full["gpu_free_mb"] <= 200  # 1000 MiB (or its memory_fraction budget) - 800
    gpu = [d for d in full["devices"] if d["name"] == "cuda:0"][0]
    assert gpu["used_bytes"] == 800 * 2**20 and a in gpu["models"]
    await cm.release_model(a)
    await cm.release_model(b)


async def test_a_node_without_memory_sends_the_task_elsewhere(make_cm):
    """Routing uses polled memory numbers, which can be stale: a node answering
    INSUFFICIENT_MEMORY has the task tried once on another node."""
    from pymodelmgr.cluster.routing import choose_placement
    cm = make_cm(status_interval=60)
    assert (await cm.task(["warm up"], "embedding", "synthetic/embedding?dim=24",
                          device="cpu")).success
    q = "synthetic/embedding?dim=25&mem_mb=500"
    target = choose_placement(list(cm._nodes.values()), q, "gpu", 500)[0].node_id
    actor = ray.get_actor(f"pymodelmgr-node-{target}", namespace="pymodelmgr")
    pin = "synthetic/embedding?dim=26&mem_mb=850"
    [(_, out)] = await actor.run.remote([("pin-1", None, "embedding", pin, 1, "gpu", -1, None)])
    assert out[0] == "ok", out
    try:
        r = await cm.task(["x"], "embedding", q)
        assert r.success and r.data["node"] != target
        assert (await cm.status()).data["tasks"]["rerouted"] == 1
    finally:
        await actor.release_model.remote(pin)
        await cm.release_model(q)


async def test_replicas_spread_a_burst_and_scale_down_with_keep_alive(make_cm):
    cm = make_cm()
    model = "synthetic/embedding?dim=14&item_us=500"
    rs = await asyncio.gather(*[cm.task([f"r{i}"], "embedding", model, device="cpu",
                                        replicas=2, keep_alive=0.02) for i in range(400)])
    assert all(r.success for r in rs)
    used = {r.data["node"] for r in rs}
    assert len(used) == 2
    per = [sum(r.data["node"] == n for r in rs) for n in used]
    assert min(per) >= 100, per  # shared, not all on one replica
    st = await cm.status()
    assert model_nodes(st, model) == used
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and model_nodes(await cm.status(), model):
        await asyncio.sleep(0.3)
    assert not model_nodes(await cm.status(), model)  # keep_alive released both replicas


async def test_release_and_drop_across_nodes(make_cm):
    cm = make_cm()
    model = "synthetic/embedding?dim=15&item_us=40000"
    pre = await asyncio.gather(*[cm.task(None, "embedding", model, device="cpu", replicas=2)
                                 for _ in range(2)])
    assert len({r.data["node"] for r in pre}) == 2
    tasks = [asyncio.ensure_future(cm.task([f"d{i}"], "embedding", model, device="cpu",
                                           replicas=2)) for i in range(60)]
    await asyncio.sleep(0.4)
    dr = await cm.drop_model_queue(model, reason="test drop")
    assert dr.success and dr.data["dropped"] > 0 and len(dr.data["nodes"]) == 3
    outs = await asyncio.gather(*tasks, return_exceptions=True)
    dropped = [o for o in outs if isinstance(o, RuntimeError)]
    done = [o for o in outs if isinstance(o, Result) and o.success]
    assert len(dropped) + len(done) == 60
    assert len(dropped) == dr.data["dropped"]
    assert all("test drop" in str(e) for e in dropped)
    assert done  # the running ones finished
    rel = await cm.release_model(model)
    assert rel.success and rel.data["released"]
    assert sum(rel.data["nodes"].values()) == 2
    assert not model_nodes(await cm.status(), model)
    again = await cm.task(["back"], "embedding", model, device="cpu")  # loads afresh
    assert again.success


async def test_backpressure_bounds_in_flight_and_batches_calls(make_cm):
    cm = make_cm(max_in_flight=200, max_batch=50)
    model = "synthetic/embedding?dim=22&item_us=200"
    n = 3000
    tasks = [asyncio.ensure_future(cm.task([f"p{i}"], "embedding", model, device="cpu"))
             for i in range(n)]
    seen_pending = 0
    while not all(t.done() for t in tasks):
        st = (await cm.status()).data
        assert st["tasks"]["in_flight"] <= 200  # one node: its bound is the whole bound
        assert all(nd["client_in_flight"] <= 200 for nd in st["nodes"])
        seen_pending = max(seen_pending, st["tasks"]["pending"])
        await asyncio.sleep(0.05)
    assert all(t.result().success for t in tasks)
    assert seen_pending > 1000  # the rest waited here, not in Ray
    calls = (await cm.status()).data["tasks"]["calls"]
    assert n / 50 <= calls <= n / 10, calls  # many tasks per actor call


async def test_cancel_reaches_the_node_and_close_cancels_pending(make_cm):
    cm = make_cm(max_in_flight=8)
    model = "synthetic/embedding?dim=23&item_us=100000"
    first = [asyncio.ensure_future(cm.task([f"c{i}"], "embedding", model, device="cpu"))
             for i in range(16)]
    await asyncio.sleep(0.5)  # 8 on the node (a batch running), 8 waiting here
    running, waiting = first[7], first[15]
    running.cancel()
    waiting.cancel()
    outs = await asyncio.gather(*first, return_exceptions=True)
    assert isinstance(outs[7], asyncio.CancelledError) and isinstance(outs[15], asyncio.CancelledError)
    assert sum(isinstance(o, Result) and o.success for o in outs) == 14
    st = await cm.status()
    m = [m for m in st.data["models"] if m["model_name"] == model][0]
    assert m["submitted"] == 15  # the one cancelled while waiting here never went
    assert st.data["tasks"]["double_completions"] == 0
    more = [asyncio.ensure_future(cm.task([f"d{i}"], "embedding", model, device="cpu"))
            for i in range(20)]
    await asyncio.sleep(0.3)
    await cm.close(cancel_pending=True)
    outs = await asyncio.gather(*more, return_exceptions=True)
    assert all(isinstance(o, Result) for o in outs)
    assert {o.error.code for o in outs if not o.success} == {"SHUTTING_DOWN"}
    assert sum(not o.success for o in outs) >= 12


async def test_client_restart_finds_the_warm_node(make_cm):
    model = "synthetic/embedding?dim=17&load_ms=300"
    first = make_cm()
    r = await first.task(["a"], "embedding", model, device="cpu")
    warm = r.data["node"]
    loaded_at = [m for m in (await first.status()).data["models"]
                 if m["model_name"] == model][0]["loaded_at"]
    await first.close()
    second = make_cm()
    rs = await asyncio.gather(*[second.task([f"b{i}"], "embedding", model, device="cpu")
                                for i in range(50)])
    assert {x.data["node"] for x in rs} == {warm}
    m = [m for m in (await second.status()).data["models"] if m["model_name"] == model][0]
    assert m["loaded_at"] == loaded_at  # not reloaded
    assert m["submitted"] == 51
    # ids are per client: the second client's tasks never answer the first's
    assert r.data["embeddings"] != rs[0].data["embeddings"]


async def test_no_capacity_and_errors_are_values(make_cm):
    cm = make_cm(node_resource="no-such-resource")
    r = await cm.task(["x"], "embedding", "synthetic/embedding?dim=18")
    assert not r.success and r.error.code == NO_CAPACITY
    assert "no-such-resource" in r.error.message
    cm2 = make_cm()
    bad = await cm2.task(["__fail__"], "embedding", "synthetic/embedding?dim=18", device="cpu")
    assert bad.error.code == "TASK_FAILED"
    nf = await cm2.task(["x"], "embedding", "synthetic/nonsense")
    assert nf.error.code == "INVALID_ARGUMENT"
    import threading
    lock = threading.Lock()
    outs = await asyncio.gather(
        cm2.task(["ok"], "embedding", "synthetic/embedding?dim=18", device="cpu"),
        cm2.task(["x"], "embedding", "synthetic/embedding?dim=18", device="cpu", prompt=lock),
        cm2.task(["ok2"], "embedding", "synthetic/embedding?dim=18", device="cpu"))
    assert outs[0].success and outs[2].success  # sent with it, answered anyway
    assert outs[1].error.code == "INVALID_ARGUMENT" and "lock" in outs[1].error.message
    assert (await cm2.status()).data["tasks"]["nodes_lost"] == 0
    rep = await cm2.task(["x"], "embedding", "synthetic/embedding?dim=18", replicas=0)
    assert rep.error.code == "INVALID_ARGUMENT" and "replicas" in rep.error.message
    await cm2.close()
    closed = await cm2.task(["x"], "embedding", "synthetic/embedding?dim=18")
    assert closed.error.code == "SHUTTING_DOWN"


def test_clear_errors_without_ray_or_with_a_wrong_address():
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from pymodelmgr.cluster import ClusterModelManager\n"
        "try:\n    ClusterModelManager()\n"
        "except ImportError as e:\n    print('IMPORT', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60, cwd=ROOT)
    assert "IMPORT" in out.stdout and "pymodelmgr[ray]" in out.stdout, out.stderr
    with pytest.raises(ConnectionError, match="127.0.0.1:9"):
        connect("127.0.0.1:9")
    with pytest.raises(ValueError, match="host:port"):
        connect("nonsense")


async def test_killed_node_manager_fails_over_then_node_lost(make_cm, cluster):
    """Three replicas of a slow model; the node managers of two nodes are killed one after
    the other mid-run.  Every task ends exactly once: a Result, or NODE_LOST for a task
    whose retry node died too."""
    cm = make_cm()
    model = "synthetic/embedding?dim=19&item_us=20000"
    n = 300
    tasks = [asyncio.ensure_future(cm.task([f"k{i}"], "embedding", model, device="cpu",
                                           replicas=3, num_workers=1)) for i in range(n)]

    def on(nid, retried=False):  # this client's tasks in flight on node nid
        return sum(1 for t in cm._inflight.values()
                   if t.node == nid and (not retried or t.lost_on is not None))

    async def until(cond, what):
        # Conditions, not sleeps: on a loaded machine a fixed delay can let a node's share
        # drain (or not start) before the kill, and the test then exercises nothing.
        deadline = time.monotonic() + 120
        while not cond():
            assert not all(t.done() for t in tasks), f"the burst ended before {what}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            await asyncio.sleep(0.005)

    await until(lambda: sum(1 for nid in live_nodes() if on(nid)) >= 2,
                "two nodes holding tasks")
    first = [nid for nid in live_nodes() if on(nid)][0]
    ray.kill(ray.get_actor(f"pymodelmgr-node-{first}", namespace="pymodelmgr"))
    await until(lambda: any(on(nid, retried=True) for nid in live_nodes() if nid != first),
                "a task lost on the first node to be in flight on another")
    second = [nid for nid in live_nodes() if nid != first and on(nid, retried=True)][0]
    ray.kill(ray.get_actor(f"pymodelmgr-node-{second}", namespace="pymodelmgr"))
    outs = await asyncio.gather(*tasks)
    ok = [o for o in outs if o.success]
    lost = [o for o in outs if not o.success]
    assert all(o.error.code == NODE_LOST for o in lost), {o.error.code for o in lost}
    assert len(ok) + len(lost) == n
    assert len({o.error.details["task_id"] for o in lost}) == len(lost)
    st = (await cm.status()).data["tasks"]
    assert st["double_completions"] == 0 and st["completed"] == n
    assert st["resubmitted"] > 0 and st["nodes_lost"] >= 2
    assert st["node_lost"] == len(lost)
    assert lost, "a task retried on the second victim must end NODE_LOST"
    for d in lost:
        assert len(d.error.details["lost_on"]) == 2


async def test_removed_node_mid_burst_of_5000_exactly_once(make_cm, cluster):
    extra = cluster.add_node(**NODE, env_vars={"PYMODELMGR_FAKE_GPUS": "1000"})
    await asyncio.sleep(0.5)
    cm = make_cm(max_in_flight=1024, max_batch=128)
    model = "synthetic/embedding?dim=20&item_us=1000"
    pre = await cm.task(None, "embedding", model, device="cpu", replicas=4)
    assert pre.success
    n = 5000
    tasks = [asyncio.ensure_future(cm.task([f"m{i}"], "embedding", model, device="cpu",
                                           replicas=4)) for i in range(n)]

    def extra_in_flight():
        for nd in cm._nodes.values():
            if nd.node_id == extra.node_id:
                return nd.outstanding
        return 0

    # Remove the node while it holds some of the burst: once 300 tasks are done, and at a
    # moment when this client has tasks in flight there (under a loaded machine the burst
    # can drain the extra node's share before the 300th result is seen).
    while sum(t.done() for t in tasks) < 300 or extra_in_flight() == 0:
        assert sum(t.done() for t in tasks) < n, "the extra node never held part of the burst"
        await asyncio.sleep(0.005)
    cluster.remove_node(extra, allow_graceful=False)
    outs = await asyncio.gather(*tasks)
    codes = {}
    for o in outs:
        key = "ok" if o.success else o.error.code
        codes[key] = codes.get(key, 0) + 1
    assert set(codes) <= {"ok", NODE_LOST} and sum(codes.values()) == n, codes
    assert codes.get("ok", 0) >= n - 1024  # at most one node's in-flight share is lost
    st = (await cm.status()).data
    assert st["tasks"]["double_completions"] == 0 and st["tasks"]["completed"] == n + 1
    assert st["tasks"]["resubmitted"] > 0
    assert st["tasks"]["nodes_lost"] >= 1
    assert extra.node_id not in {nd["node_id"] for nd in st["nodes"]}


async def test_spec_examples_with_only_the_class_changed(make_cm, capsys):
    """shared/SPEC.md's examples, as tests/python/test_spec_examples.py runs them, with a
    ClusterModelManager registered as the service instead of a ModelManager."""
    from test_spec_examples import ALIASES, run_every_example
    app = AppContext()
    cm = make_cm(settings=dict(SETTINGS, model_aliases=ALIASES))
    app.register_service("core.model_manager.service", cm)
    await run_every_example(app, capsys)


async def test_readme_serve_recipe(cluster):
    """README's Ray Serve recipe, as written, behind Serve's HTTP proxy on loopback."""
    serve = pytest.importorskip("ray.serve")
    import json
    import re
    import socket
    import urllib.error
    import urllib.request

    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    block = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "@serve.deployment" in b]
    assert len(block) == 1
    ns = {"__name__": "serve_recipe"}
    exec(compile(block[0], "README.md", "exec"), ns)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(ns["Embeddings"].bind("synthetic/embedding?dim=21"), route_prefix="/embed")

        def post(body):
            req = urllib.request.Request(f"http://127.0.0.1:{port}/embed",
                                         data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=60) as resp:
                    return resp.status, json.loads(resp.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read())

        loop = asyncio.get_running_loop()
        code, out = await loop.run_in_executor(None, post, {"texts": ["a", "b"], "device": "cpu"})
        assert code == 200 and len(out["embeddings"]) == 2 and len(out["embeddings"][0]) == 21
        assert out["node"] in live_nodes()
        code, out = await loop.run_in_executor(None, post, {"texts": ["__fail__"], "device": "cpu"})
        assert code == 400 and out["code"] == "TASK_FAILED"
    finally:
        serve.shutdown()


def test_nothing_listens_beyond_loopback(cluster):
    """Every listening socket of the cluster's processes (GCS, raylets, their workers and
    node managers) is on loopback."""
    pids = set()
    for node in [cluster.head_node, *cluster.worker_nodes]:
        for plist in node.all_processes.values():
            pids.update(p.process.pid for p in plist)
    children = {}
    for ln in subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True,
                             text=True).stdout.splitlines():
        pid, ppid = map(int, ln.split())
        children.setdefault(ppid, []).append(pid)
    todo = list(pids)
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in pids:
                pids.add(c)
                todo.append(c)
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
    mine = [ln for ln in out.splitlines() if any(f"pid={p}," in ln for p in pids)]
    assert len(mine) >= 5, "too few listening sockets found for the cluster's processes"
    for ln in mine:
        host = ln.split()[3].rsplit(":", 1)[0]
        assert host in ("127.0.0.1", "[::1]", "[::ffff:127.0.0.1]"), ln


async def test_stream_yields_pieces_that_join_to_the_task_text(make_cm):
    from pymodelmgr import StreamError
    cm = make_cm()
    model = "synthetic/text_generation?item_us=10"
    whole = await cm.task("a prompt to continue", "text_generation", model, device="cpu",
                          max_new_tokens=12)
    assert whole.success
    finals = []
    pieces = [p async for p in cm.stream("a prompt to continue", "text_generation", model,
                                         device="cpu", max_new_tokens=12,
                                         on_result=finals.append)]
    assert len(pieces) == 12 and "".join(pieces) == whole.data["generated_text"]
    [res] = finals
    assert res.success and res.data["generated_text"] == whole.data["generated_text"]
    assert res.data["node"] == whole.data["node"]  # routed to the warm replica
    # concurrent streams: each gets its own text, exactly once
    prompts = [f"prompt number {i}" for i in range(20)]
    lone = await asyncio.gather(*[cm.task(p, "text_generation", model, device="cpu",
                                          max_new_tokens=5) for p in prompts])

    async def joined(p):
        return "".join([x async for x in cm.stream(p, "text_generation", model, device="cpu",
                                                   max_new_tokens=5)])

    texts = await asyncio.gather(*[joined(p) for p in prompts])
    assert texts == [r.data["generated_text"] for r in lone]
    with pytest.raises(StreamError) as e:
        async for _ in cm.stream("x", "text_generation", model, device="cpu", bogus=1):
            pass
    assert e.value.code == "INVALID_ARGUMENT" and "bogus" in e.value.message
    with pytest.raises(StreamError) as e:
        async for _ in cm.stream("x", "text_generation", model, replicas=0):
            pass
    assert e.value.code == "INVALID_ARGUMENT"
    st = await cm.status()
    assert st.data["tasks"]["double_completions"] == 0
    assert st.data["tasks"]["completed"] == st.data["tasks"]["submitted"]


async def test_leaving_a_stream_early_cancels_it_on_its_node(make_cm):
    cm = make_cm()
    # 20 ms a word, 4,096 words: 80 s unless leaving the loop cancels it on its node
    model = "synthetic/text_generation?word_us=20000"
    got = []
    async for piece in cm.stream("go on", "text_generation", model, device="cpu",
                                 max_new_tokens=4096):
        got.append(piece)
        if len(got) == 3:
            break
    assert len(got) == 3

    async def node_idle():
        for _ in range(100):
            st = await cm.status()
            if all(n["in_flight"] == 0 and n["client_in_flight"] == 0
                   for n in st.data["nodes"]):
                return True
            await asyncio.sleep(0.1)
        return False

    assert await node_idle()  # within 10 s, not the 80 s the whole generation takes
    st = await cm.status()
    assert st.data["tasks"]["completed"] == st.data["tasks"]["submitted"]
    [m] = [m for m in st.data["models"] if m["model_name"] == model]
    assert m["cancelled"] == 1 and m["done"] == 0, m
