"""Round-trip overhead of ModelManager.task() on a zero-latency synthetic model,
side by side with the same work through asyncio.to_thread and a
ThreadPoolExecutor, in one run.

Reports tasks per second under asyncio.gather (N concurrent one-text tasks) and
p50/p99 latency of a lone request.  The "work" is the same everywhere: a
deterministic hash embedding of one short text (our synthetic backend in C;
a Python function of similar cost for the thread-pool paths).

Two floors of asyncio itself, measured in the same run, bound what any
task() can reach: N bare futures (loop.create_future()) resolved in bulk by
one callback and gathered, and the same with a Python coroutine awaiting each
future (what task() cost when it was an ``async def``).  The load average is
printed before and after: on a shared machine the per-CPU-second figures
(all threads of this process) are the steadier ones.

    python benchmarks/bench_overhead.py [--n 20000] [--lone 2000]
"""
import argparse
import asyncio
import concurrent.futures
import hashlib
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout

from pymodelmgr import ModelManager, ModelManagerSettings

MODEL = "synthetic/embedding?dim=16"


def py_embed(text: str):
    h = hashlib.blake2b(text.encode(), digest_size=64).digest()
    return [b / 255.0 for b in h[:16]]


async def timed(make_coros, n):
    """Tasks per wall second and per CPU second (all threads of this process: on a
    shared machine the CPU figure is the steadier one)."""
    c0, t0 = time.process_time(), time.perf_counter()
    rs = await asyncio.gather(*make_coros(n))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return rs, n / wall, n / cpu


async def ours_throughput(mm, n):
    rs, wall, cpu = await timed(
        lambda n: (mm.task([f"text {i}"], "embedding", MODEL, device="cpu") for i in range(n)), n)
    assert all(r.success for r in rs)
    return wall, cpu


async def to_thread_throughput(n):
    _, wall, cpu = await timed(
        lambda n: (asyncio.to_thread(py_embed, f"text {i}") for i in range(n)), n)
    return wall, cpu


async def executor_throughput(n, pool):
    loop = asyncio.get_running_loop()
    _, wall, cpu = await timed(
        lambda n: (loop.run_in_executor(pool, py_embed, f"text {i}") for i in range(n)), n)
    return wall, cpu


async def floor_throughput(n, with_coroutine):
    """asyncio's own cost of n gathered futures resolved in bulk (no work, no engine)."""
    loop = asyncio.get_running_loop()

    async def one(f):
        return await f

    def make(n):
        futs = [loop.create_future() for _ in range(n)]
        loop.call_soon(lambda: [f.set_result(None) for f in futs])
        return (one(f) for f in futs) if with_coroutine else futs
    _, wall, cpu = await timed(make, n)
    return wall, cpu


async def lone_latency(call, n):
    lat = []
    for i in range(n):
        t0 = time.perf_counter()
        await call(i)
        lat.append(time.perf_counter() - t0)
    lat.sort()
    return statistics.median(lat) * 1e6, lat[int(len(lat) * 0.99)] * 1e6


async def main(n, lone):
    settings = ModelManagerSettings()
    async with ModelManager(settings) as mm:
        await mm.task(None, "embedding", MODEL, device="cpu", keep_alive=-1)
        await ours_throughput(mm, 1000)  # warm up
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=8)
        loop = asyncio.get_running_loop()
        rows = []
        ours = await ours_throughput(mm, n)
        th = await to_thread_throughput(n)
        ex = await executor_throughput(n, pool)
        bare = await floor_throughput(n, False)
        coro = await floor_throughput(n, True)
        rows.append(("gather throughput (tasks/s)", ours[0], th[0], ex[0]))
        rows.append(("gather throughput (tasks/cpu-s)", ours[1], th[1], ex[1]))
        o50, o99 = await lone_latency(lambda i: mm.task([f"t{i}"], "embedding", MODEL, device="cpu"), lone)
        t50, t99 = await lone_latency(lambda i: asyncio.to_thread(py_embed, f"t{i}"), lone)
        e50, e99 = await lone_latency(lambda i: loop.run_in_executor(pool, py_embed, f"t{i}"), lone)
        rows.append(("lone p50 latency (us)", o50, t50, e50))
        rows.append(("lone p99 latency (us)", o99, t99, e99))
        pool.shutdown()
    print(f"{'metric':32} {'pymodelmgr':>12} {'to_thread':>12} {'executor':>12} {'ratio vs to_thread':>20}")
    for name, a, b, c in rows:
        ratio = a / b if "throughput" in name else b / a
        print(f"{name:32} {a:12.1f} {b:12.1f} {c:12.1f} {ratio:19.2f}x")
    print(f"\nasyncio floors, gather of {n} (no engine, no work){'':7} {'tasks/s':>10} {'tasks/cpu-s':>12}"
          f" {'pymodelmgr at':>14}")
    for name, (w, c) in (("bare futures resolved in bulk", bare),
                         ("a Python coroutine per future", coro)):
        print(f"{name:52} {w:10.0f} {c:12.0f} {ours[1] / c:13.0%}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--lone", type=int, default=2000)
    args = ap.parse_args()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} "
          f"({os.cpu_count()} CPUs; a shared machine: read the per-CPU-second rows)")
    asyncio.run(main(args.n, args.lone))
    print(f"load average after:  {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
