"""ClusterModelManager on 1, 2 and 3 local Ray nodes (loopback), beside a local
ModelManager in the same run.

1. Scaling: a synthetic model with a fixed per-item latency (``item_us``, a sleep, so the
   CPU is not the limit) and one worker per node, ``replicas`` = the node count; a closed
   loop of ``--clients`` concurrent callers for ``--seconds``: tasks/s and p50/p99 latency
   per node count, and the same loop on a local ModelManager (one worker) as the
   one-node reference.
2. Overhead: a zero-latency synthetic model on one node: a burst of ``--burst`` one-text
   tasks under asyncio.gather, and lone tasks one at a time, through the cluster and
   through a local ModelManager; the difference per task is the cluster path's cost.

The nodes are one ``ray.cluster_utils.Cluster`` on 127.0.0.1; node k declares the
resources ``k1..k3`` it belongs to, so a client with ``node_resource="kN"`` uses N nodes.
On a shared machine the numbers move with its load: the load average is printed.

    python benchmarks/bench_cluster.py [--seconds 5] [--clients 256] [--item-us 2000]
"""
import argparse
import asyncio
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from pymodelmgr import ModelManager  # noqa: E402
from pymodelmgr.cluster import ClusterModelManager, connect  # noqa: E402

NODE = dict(node_ip_address="127.0.0.1", include_dashboard=False,
            object_store_memory=100 * 1024 * 1024, num_cpus=1)
SETTINGS = {"fake_gpus": "none", "embedding_cache": {"enabled": False}}


def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


async def closed_loop(mm, model, clients, seconds, **kw):
    lat = []
    stop = time.perf_counter() + seconds

    async def caller(i):
        j = 0
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            r = await mm.task([f"c{i}-{j}"], "embedding", model, device="cpu", num_workers=1, **kw)
            assert r.success, r.error
            lat.append(time.perf_counter() - t0)
            j += 1

    t0 = time.perf_counter()
    await asyncio.gather(*[caller(i) for i in range(clients)])
    return len(lat) / (time.perf_counter() - t0), pct(lat, 0.5), pct(lat, 0.99)


async def burst(mm, model, n):
    t0 = time.perf_counter()
    rs = await asyncio.gather(*[mm.task([f"b{i}"], "embedding", model, device="cpu")
                                for i in range(n)])
    dt = time.perf_counter() - t0
    assert all(r.success for r in rs)
    return dt / n


async def lone(mm, model, n):
    lat = []
    for i in range(n):
        t0 = time.perf_counter()
        r = await mm.task([f"l{i}"], "embedding", model, device="cpu")
        assert r.success
        lat.append(time.perf_counter() - t0)
    return statistics.median(lat)


async def main(args):
    model = f"synthetic/embedding?dim=16&item_us={args.item_us}"
    print(f"load average before: {os.getloadavg()}  (a shared machine: {os.cpu_count()} cores)")
    print(f"scaling: {model}, one worker per node, {args.clients} concurrent callers, "
          f"{args.seconds}s each")
    async with ModelManager(SETTINGS) as mm:
        await mm.task(None, "embedding", model, device="cpu", num_workers=1)
        tps, p50, p99 = await closed_loop(mm, model, args.clients, args.seconds)
    print(f"  local ModelManager : {tps:8.0f} tasks/s  p50 {p50 * 1e3:7.1f} ms  "
          f"p99 {p99 * 1e3:7.1f} ms")
    base = tps
    for k in (1, 2, 3):
        cm = ClusterModelManager(settings=SETTINGS, node_resource=f"k{k}")
        m = f"synthetic/embedding?dim={16 + k}&item_us={args.item_us}"
        await asyncio.gather(*[cm.task(None, "embedding", m, device="cpu", num_workers=1,
                                       replicas=k) for _ in range(k)])
        tps, p50, p99 = await closed_loop(cm, m, args.clients, args.seconds, replicas=k)
        print(f"  cluster, {k} node(s) : {tps:8.0f} tasks/s  p50 {p50 * 1e3:7.1f} ms  "
              f"p99 {p99 * 1e3:7.1f} ms  ({tps / base:.2f}x local)")
        await cm.close()

    zero = "synthetic/embedding?dim=8"
    print(f"overhead: {zero} (no latency), one node; burst of {args.burst}, {args.lone} lone tasks")
    async with ModelManager(SETTINGS) as mm:
        await mm.task(None, "embedding", zero, device="cpu")
        await burst(mm, zero, 1000)
        local_b = min([await burst(mm, zero, args.burst) for _ in range(3)])
        local_l = await lone(mm, zero, args.lone)
    cm = ClusterModelManager(settings=SETTINGS, node_resource="k1")
    await cm.task(None, "embedding", zero, device="cpu")
    await burst(cm, zero, 1000)
    cl_b = min([await burst(cm, zero, args.burst) for _ in range(3)])
    cl_l = await lone(cm, zero, args.lone)
    st = (await cm.status()).data["tasks"]
    await cm.close()
    print(f"  burst, per task : local {local_b * 1e6:7.1f} us   cluster {cl_b * 1e6:7.1f} us   "
          f"overhead {(cl_b - local_b) * 1e6:7.1f} us/task  ({st['calls']} actor calls for "
          f"{st['submitted']} tasks)")
    print(f"  lone, p50       : local {local_l * 1e6:7.1f} us   cluster {cl_l * 1e6:7.1f} us   "
          f"overhead {(cl_l - local_l) * 1e6:7.1f} us/task")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--clients", type=int, default=256)
    ap.add_argument("--item-us", type=int, default=2000)
    ap.add_argument("--burst", type=int, default=5000)
    ap.add_argument("--lone", type=int, default=300)
    args = ap.parse_args()
    cluster = Cluster(initialize_head=True, head_node_args=dict(
        NODE, resources={"k1": 1, "k2": 1, "k3": 1}))
    cluster.add_node(**NODE, resources={"k2": 1, "k3": 1})
    cluster.add_node(**NODE, resources={"k3": 1})
    try:
        connect(cluster.address)
        asyncio.run(main(args))
    finally:
        ray.shutdown()
        cluster.shutdown()
