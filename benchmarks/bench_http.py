"""The HTTP server's cost per request: N concurrent clients for T seconds through
``python -m pymodelmgr serve`` (a subprocess, so client and server do not share a GIL),
beside the same work through ``task()`` in-process (N coroutines calling task() back to
back for T seconds), in one run.

Work: one short text per request, embedded by a synthetic model (``item_us`` of pretend
model time per text), so the numbers are the serving path's and not a model's.  Each HTTP
answer is checked (status 200, one vector, usage); nothing may be lost.

Reports requests/s, p50/p99 latency, and the HTTP overhead per request as CPU time:
(server process CPU + client CPU) / requests minus in-process CPU / requests.

    python benchmarks/bench_http.py [--clients 200] [--seconds 30] [--item-us 20]

The project's machine is shared: the load average is printed beside the numbers.
"""
import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)  # the checkout
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))  # http_load

from http_load import run_load, summarize  # noqa: E402

from pymodelmgr import ModelManager  # noqa: E402


def proc_cpu(pid: int) -> float:
    """utime + stime of a process, seconds."""
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


async def in_process(model: str, clients: int, seconds: float):
    lat = []
    async with ModelManager({"fake_gpus": "none", "embedding_cache": {"enabled": False}}) as mm:
        await mm.task(None, "embedding", model, device="cpu")
        deadline = time.perf_counter() + seconds
        errors = 0

        async def client(c):
            nonlocal errors
            i = 0
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                r = await mm.task([f"client {c} request {i}"], "embedding", model, device="cpu")
                lat.append(time.perf_counter() - t0)
                errors += not r.success
                i += 1

        c0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(client(c) for c in range(clients)))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    res = summarize(lat, wall, errors)
    res["cpu_s"] = cpu
    return res


def over_http(model: str, clients: int, seconds: float):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    settings = os.path.join("/tmp", f"bench_http_{os.getpid()}.json")
    with open(settings, "w") as f:
        json.dump({"fake_gpus": "none", "embedding_cache": {"enabled": False}}, f)
    env = dict(os.environ, PYTHONPATH=ROOT)
    env.pop("PYMODELMGR_API_KEY", None)
    proc = subprocess.Popen([sys.executable, "-m", "pymodelmgr", "serve", "--port", str(port),
                             "--settings", settings, "--embedding-model", model,
                             "--device", "cpu", "--log-level", "warning"], env=env)
    try:
        t0 = time.time()
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.time() - t0 > 60:
                    raise SystemExit("the server did not start")
                time.sleep(0.1)

        def body(c, i):
            return json.dumps({"model": model, "input": [f"client {c} request {i}"],
                               "encoding_format": "float"}).encode()

        def check(c, i, status, resp):
            if status != 200:
                return False
            d = json.loads(resp)
            return len(d["data"]) == 1 and d["usage"]["prompt_tokens"] > 0

        s0, c0 = proc_cpu(proc.pid), time.process_time()
        res = asyncio.run(run_load(port, "/v1/embeddings", body, check, clients, seconds))
        res["server_cpu_s"] = proc_cpu(proc.pid) - s0
        res["client_cpu_s"] = time.process_time() - c0
    finally:
        proc.terminate()
        rc = proc.wait(60)
        os.unlink(settings)
    res["exit_code"] = rc
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--item-us", type=int, default=20)
    args = ap.parse_args()
    model = f"synthetic/embedding?dim=16&item_us={args.item_us}"
    print(f"{args.clients} clients x {args.seconds:g} s, one text per request, {model}; "
          f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores "
          "(shared machine)")
    ours = asyncio.run(in_process(model, args.clients, args.seconds))
    http = over_http(model, args.clients, args.seconds)
    fmt = "{:<22} {:>9} {:>9} {:>9} {:>9} {:>7} {:>14}"
    print(fmt.format("path", "requests", "req/s", "p50 ms", "p99 ms", "errors", "CPU ms/req"))
    cpu_in = ours["cpu_s"] / max(ours["requests"], 1) * 1000
    cpu_http = ((http["server_cpu_s"] + http["client_cpu_s"]) / max(http["requests"], 1) * 1000)
    srv_http = http["server_cpu_s"] / max(http["requests"], 1) * 1000
    for name, r, cpu in (("task() in-process", ours, cpu_in), ("HTTP /v1/embeddings", http,
                                                                 cpu_http)):
        print(fmt.format(name, r["requests"], f"{r['rps']:.0f}", f"{r['p50_ms']:.2f}",
                         f"{r['p99_ms']:.2f}", r["errors"], f"{cpu:.3f}"))
    print(f"HTTP overhead per request: {cpu_http - cpu_in:.3f} ms CPU (server alone "
          f"{srv_http:.3f} ms vs {cpu_in:.3f} ms in-process); throughput ratio "
          f"HTTP / in-process = {http['rps'] / ours['rps']:.3f}; server exit code "
          f"{http['exit_code']}; load average after: {os.getloadavg()[0]:.2f}")
    if http["errors"] or ours["errors"]:
        raise SystemExit("errors: some requests failed")


if __name__ == "__main__":
    main()
