"""Decoder-only generation under concurrent load: pymodelmgr (native, through
mm.stream) vs transformers generate() on padded batches vs CTranslate2's
Generator, on the same random model, the same prompts, float32 on the CPU.

Model: a random Qwen2-shaped decoder (default --shape small: hidden 512,
4 layers, 8 heads / 2 kv heads, MLP 1408, tied embeddings), sized for a
shared 2-core machine; --shape qwen2-0.5b gives the real Qwen2.5-0.5B shape
(hidden 896, 24 layers, 14/2 heads, MLP 4864) for a bigger box.  Its
tokenizer is a byte-level BPE trained here (llm_helpers.py), so the
vocabulary is ~500 ids, not 151k: the output projection is a small share of
the work, unlike the real model.

Workload: --n requests (default 64) with prompts of --min-prompt..--max-prompt
tokens (default 16..512), submitted at once (--arrival-ms 0) or staggered
(--arrival-ms G: request i arrives at i * G ms),
each generating exactly
--new tokens (min_new_tokens = max_new_tokens, so random weights do not stop
early; one setting for all, since requests with equal settings share a
batch).  Reported per engine: total generated tokens per second, time to first
token p50 / p99 and inter-token latency p50 / p99 (per request: (last - first
token time) / (tokens - 1)):
  * ours: every request is an mm.stream() started at its arrival; one worker
    (--workers) with continuous batching: a request joins the running batch
    between two steps; first token = its first piece (a piece may trail its
    token by one when the text is not yet stable);
  * transformers: generate() over padded batches of up to --ref-batch prompts,
    one batch after another (left padding), each batch taking the requests
    that have arrived when it starts (static batching, as a server without
    continuous batching does); first token = the batch's first logits-
    processor call (after its prefill);
  * CTranslate2: generate_batch over the requests that have arrived (all of
    them in a burst; its own batching, max_batch_size --ct2-batch), batch
    after batch like transformers, first / last token times from its
    per-step callback.
TTFT counts from each request's arrival.
Prints the machine's load average before and after: the machine is shared,
so the numbers are only comparable within one run.  A benchmark, not a test.

Usage: python3 benchmarks/bench_llm.py [--n 64] [--new 64] [--threads 2]
       [--arrival-ms 0] [--workers 1] [--shape small|qwen2-0.5b] [--engines ours,hf,ct2]
"""
import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "python"))
sys.path.insert(0, os.path.join(HERE, ".."))

import torch  # noqa: E402

SHAPES = {
    "small": dict(hidden_size=512, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=2,
                  intermediate_size=1408),
    "qwen2-0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                       num_key_value_heads=2, intermediate_size=4864),
}
WORDS = ("the quick brown fox jumps over lazy dog summer river mountain city train music garden "
         "window morning evening story people water light night small great old new").split()


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def build(path, shape):
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM
    from llm_helpers import make_tokenizer
    tok = make_tokenizer("bytelevel")
    eos = tok.convert_tokens_to_ids(tok.eos_token)
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tok), max_position_embeddings=4096, tie_word_embeddings=True,
                      eos_token_id=eos, pad_token_id=tok.pad_token_id, **SHAPES[shape])
    Qwen2ForCausalLM(cfg).eval().save_pretrained(path)
    tok.save_pretrained(path)
    return AutoTokenizer.from_pretrained(path)


def prompts(tok, n, lo, hi, seed=0):
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        target = rnd.randint(lo, hi)
        words = []
        while len(tok(" ".join(words)).input_ids) < target:
            words.append(rnd.choice(WORDS))
        out.append(" ".join(words))
    return out


def report(name, wall, ntok, ttft, itl):
    print(f"{name:13s} {ntok / wall:9.1f} tok/s  TTFT p50 {pct(ttft, 50) * 1000:8.0f} ms  "
          f"p99 {pct(ttft, 99) * 1000:8.0f} ms  ITL p50 {pct(itl, 50) * 1000:7.1f} ms  "
          f"p99 {pct(itl, 99) * 1000:7.1f} ms  (wall {wall:.1f} s)")
    return ntok / wall, pct(ttft, 50)


async def run_ours(path, texts, new, threads, arrivals, workers):
    from pymodelmgr import ModelManager
    kw = dict(max_new_tokens=new, min_new_tokens=new)
    async with ModelManager({"fake_gpus": "none", "cpu_threads": threads,
                             "worker_pool": {"queue_timeout": 0, "num_workers": workers}}) as mm:
        r = await mm.task("warm up", "text_generation", path, device="cpu", max_new_tokens=2)
        assert r.success, r.error

        async def one(t, at):
            await asyncio.sleep(max(0.0, t0 + at - time.perf_counter()))
            start = time.perf_counter()
            first = None
            res = []
            async for _ in mm.stream(t, "text_generation", path, device="cpu", on_result=res.append, **kw):
                if first is None:
                    first = time.perf_counter()
            return start, first, time.perf_counter(), res[0].data["completion_tokens"]

        t0 = time.perf_counter()
        out = await asyncio.gather(*(one(t, at) for t, at in zip(texts, arrivals)))
        wall = time.perf_counter() - t0
    ttft = [f - s for s, f, _, _ in out]
    itl = [(e - f) / max(1, n - 1) for _, f, e, n in out]
    return wall, sum(n for *_, n in out), ttft, itl


def static_batches(texts, arrivals, batch, run_batch):
    """A server without continuous batching: each batch takes the requests
    that have arrived (up to batch), waiting for the next one when none has.
    run_batch(texts) -> per request (first token time, end time, tokens)."""
    t0 = time.perf_counter()
    ttft, itl, ntok, i = [], [], 0, 0
    while i < len(texts):
        wait = t0 + arrivals[i] - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        now = time.perf_counter() - t0
        j = i + 1
        while j < len(texts) and j - i < batch and arrivals[j] <= now:
            j += 1
        for k, (first, end, n) in enumerate(run_batch(texts[i:j])):
            ttft.append(first - (t0 + arrivals[i + k]))
            itl.append((end - first) / max(1, n - 1))
            ntok += n
        i = j
    return time.perf_counter() - t0, ntok, ttft, itl


def run_hf(path, tok, texts, new, batch, threads, arrivals):
    from transformers import AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList
    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok.padding_side = "left"

    class Clock(LogitsProcessor):
        def __init__(self):
            self.first = None

        def __call__(self, input_ids, scores):
            if self.first is None:
                self.first = time.perf_counter()
            return scores

    def one_batch(part):
        enc = tok(part, return_tensors="pt", padding=True)
        clock = Clock()
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=new, min_new_tokens=new, do_sample=False,
                                 logits_processor=LogitsProcessorList([clock]))
        end = time.perf_counter()
        n = out.shape[1] - enc.input_ids.shape[1]
        return [(clock.first, end, n)] * out.shape[0]

    return static_batches(texts, arrivals, batch, one_batch)


def run_ct2(path, tok, texts, new, batch, threads, arrivals):
    import ctranslate2
    out_dir = path + "-ct2"
    if not os.path.isdir(out_dir):
        ctranslate2.converters.TransformersConverter(path).convert(out_dir, quantization="float32")
    gen = ctranslate2.Generator(out_dir, device="cpu", intra_threads=threads, inter_threads=1)
    toks = {t: tok.convert_ids_to_tokens(tok(t).input_ids) for t in texts}

    def one_batch(part):
        first, last, count = {}, {}, {}

        def cb(step):
            now = time.perf_counter()
            first.setdefault(step.batch_id, now)
            last[step.batch_id] = now
            count[step.batch_id] = count.get(step.batch_id, 0) + 1
            return False

        gen.generate_batch([toks[t] for t in part], max_length=new, min_length=new, sampling_topk=1,
                           include_prompt_in_result=False, max_batch_size=batch, callback=cb)
        return [(first[i], last[i], count[i]) for i in range(len(part))]

    return static_batches(texts, arrivals, len(texts), one_batch)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--min-prompt", type=int, default=16)
    ap.add_argument("--max-prompt", type=int, default=512)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--shape", default="small", choices=list(SHAPES))
    ap.add_argument("--ref-batch", type=int, default=8)
    ap.add_argument("--ct2-batch", type=int, default=64)
    ap.add_argument("--engines", default="ours,hf,ct2")
    ap.add_argument("--arrival-ms", type=float, default=0.0,
                    help="gap between two requests' arrivals (0: all at once)")
    ap.add_argument("--workers", type=int, default=1, help="our workers for the model")
    a = ap.parse_args()
    engines = a.engines.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "qwen2-random")
        tok = build(path, a.shape)
        texts = prompts(tok, a.n, a.min_prompt, a.max_prompt)
        arrivals = [i * a.arrival_ms / 1000 for i in range(a.n)]
        print(f"model: random Qwen2, shape {a.shape} {SHAPES[a.shape]}, vocab {len(tok)}, float32, CPU, "
              f"{a.threads} thread(s); {a.n} requests, prompts {a.min_prompt}..{a.max_prompt} tokens, "
              f"{a.new} new tokens each, " +
              (f"arriving every {a.arrival_ms:g} ms" if a.arrival_ms else "all at once"))
        print(f"load average before: {os.getloadavg()} (shared machine, {os.cpu_count()} cores)")
        rows = {}
        if "ours" in engines:
            rows["ours"] = report("pymodelmgr", *asyncio.run(run_ours(path, texts, a.new, a.threads, arrivals,
                                                                      a.workers)))
        if "hf" in engines:
            rows["hf"] = report(f"hf b={a.ref_batch}", *run_hf(path, tok, texts, a.new, a.ref_batch, a.threads,
                                                               arrivals))
        if "ct2" in engines:
            rows["ct2"] = report("ctranslate2", *run_ct2(path, tok, texts, a.new, a.ct2_batch, a.threads,
                                                          arrivals))
        print(f"load average after: {os.getloadavg()}")
        if "ours" in rows:
            for k, (tps, ttft) in rows.items():
                if k != "ours":
                    print(f"ours / {k}: throughput x{rows['ours'][0] / tps:.2f}, "
                          f"TTFT p50 x{ttft / rows['ours'][1]:.2f} better")


if __name__ == "__main__":
    main()
