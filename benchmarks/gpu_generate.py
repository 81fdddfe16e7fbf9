"""Native T5 / BART generation through the engine on one device (issue 6's GPU
check; benchmarks/gpu_check.sh runs it on cuda:0).

For each model and dtype: a random model of the given shape with a tokenizer
trained here (T5: sentencepiece Unigram converted by transformers; BART:
byte-level BPE), loaded by `mm.task(None, "text_generation", dir,
device=...)` under ModelManager(dtype=...), then

* memory before load, after load, after the work and after release_model:
  nvidia-smi (whole device) and torch.cuda.memory_allocated (this process's
  caching allocator, which libmm_torch.so shares with torch);
* tokens/s of one concurrent burst of --n single-prompt tasks, greedy and
  beam 4, exactly --new new tokens each (min_new_tokens = max_new_tokens, so
  random weights do not stop early), and of transformers' generate() on the
  same device and dtype in padded batches of --ref-batch;
* agreement with transformers on the same device and dtype: texts equal to
  `decode(generate(prompt alone))` for the first --check prompts, greedy,
  with their natural length.  Informational: on a GPU, batched and lone
  shapes may round differently, and bf16/fp16 flips near-ties more often.

A benchmark, not a test: it prints and asserts only that tasks succeed.
--device cpu runs everything on the CPU in float32 (no memory rows), to check
the script itself on a machine without a GPU.

Usage: python3 benchmarks/gpu_generate.py [--device cuda:0] [--n 64] [--new 32]
       [--models t5,bart] [--size small|tiny]
"""
import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "python"))

import torch  # noqa: E402

from pymodelmgr import ModelManager  # noqa: E402
from test_generate_helpers import train_bart_tokenizer, train_t5_tokenizer  # noqa: E402

# T5 in float16 overflows in its feed-forward: bf16 or fp32 (issue 6)
DTYPES = {"t5": ("bfloat16", "float32"), "bart": ("float16", "bfloat16")}
SYLLABLES = "ka ri to me su na lo pe vi da gu ho ze mi ta ro ne bu fa shi ku".split()


def corpus(n, seed=0):
    rnd = random.Random(seed)
    words = ["".join(rnd.choice(SYLLABLES) for _ in range(rnd.randint(1, 4))) for _ in range(3000)]
    return [" ".join(rnd.choice(words) for _ in range(rnd.randint(4, 30))) for _ in range(n)]


def make(kind, path, size, work):
    """t5-small / bart-base shaped (size "small") or tiny, vocab = the tokenizer's."""
    from transformers import BartConfig, BartForConditionalGeneration, T5Config, T5ForConditionalGeneration
    texts = corpus(3000)
    small = size == "small"
    torch.manual_seed(0)
    if kind == "t5":
        tok = train_t5_tokenizer(os.path.join(work, "spm"), texts, vocab_size=1000, extra_ids=100,
                                 model_max_length=512)
        m = T5ForConditionalGeneration(T5Config(
            vocab_size=len(tok), d_model=512 if small else 64, d_kv=64 if small else 16,
            d_ff=2048 if small else 128, num_layers=6 if small else 2, num_heads=8 if small else 4,
            decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))
    else:
        tok = train_bart_tokenizer(texts, vocab_size=4000, model_max_length=1024)
        m = BartForConditionalGeneration(BartConfig(
            vocab_size=len(tok), d_model=768 if small else 64, encoder_layers=6 if small else 2,
            decoder_layers=6 if small else 2, encoder_attention_heads=12 if small else 4,
            decoder_attention_heads=12 if small else 4, encoder_ffn_dim=3072 if small else 128,
            decoder_ffn_dim=3072 if small else 128, max_position_embeddings=1024))
    m.eval().save_pretrained(path)
    tok.save_pretrained(path)
    return tok


def used_mib(device):
    if not device.startswith("cuda"):
        return None, None
    idx = device.split(":")[1] if ":" in device else "0"
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                          "-i", idx], capture_output=True, text=True).stdout
    torch.cuda.synchronize()
    return float(out.strip().splitlines()[0]), torch.cuda.memory_allocated() / 2**20


def hf_tokens_per_s(model, tok, texts, kw, bs, device):
    n, t0 = 0, time.perf_counter()
    with torch.inference_mode():
        for i in range(0, len(texts), bs):
            enc = tok(texts[i:i + bs], padding=True, truncation=True, return_tensors="pt").to(device)
            out = model.generate(**enc, **kw)
            n += out.shape[0] * (out.shape[1] - 1)  # fixed length: every row is --new long
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


async def run_one(kind, path, tok, dtype, a, rows):
    from transformers import AutoModelForSeq2SeqLM
    dev = a.device
    texts = corpus(a.n, seed=7)
    mem = {"before load": used_mib(dev)}
    fixed = dict(max_new_tokens=a.new, min_new_tokens=a.new)
    async with ModelManager({"dtype": dtype, "embedding_cache": {"enabled": False},
                             "worker_pool": {"queue_timeout": 0}}) as mm:
        r = await mm.task(None, "text_generation", path, device=dev)
        assert r.success, r.error
        mem["after load"] = used_mib(dev)
        speed = {}
        for mode, kw in (("greedy", dict(fixed, num_beams=1)),
                         ("beam4", dict(fixed, num_beams=4, early_stopping=True))):
            r = await mm.task(texts[:2], "text_generation", path, device=dev, **kw)  # warm-up
            assert r.success, r.error
            t0 = time.perf_counter()
            rs = await asyncio.gather(*(mm.task(t, "text_generation", path, device=dev, **kw)
                                        for t in texts))
            dt = time.perf_counter() - t0
            assert all(x.success for x in rs), [x.error for x in rs if not x.success][:3]
            speed[mode] = a.n * a.new / dt
        greedy = dict(num_beams=1, max_new_tokens=a.new)
        rs = await asyncio.gather(*(mm.task(t, "text_generation", path, device=dev, **greedy)
                                    for t in texts[:a.check]))
        ours = [x.data["generated_text"] for x in rs]
        mem["after work"] = used_mib(dev)
        r = await mm.release_model(path)
        assert r.success, r.error
        await asyncio.sleep(1.0)
        mem["after release"] = used_mib(dev)
    tdtype = getattr(torch, dtype)
    ref = AutoModelForSeq2SeqLM.from_pretrained(path, dtype=tdtype).to(dev).eval()
    same = 0
    with torch.inference_mode():
        for t, o in zip(texts[:a.check], ours):
            ids = tok(t, truncation=True, return_tensors="pt").input_ids.to(dev)
            same += tok.decode(ref.generate(ids, **greedy)[0], skip_special_tokens=True) == o
        hf_tokens_per_s(ref, tok, texts[:4], dict(fixed, num_beams=1), 4, dev)  # warm-up
        for mode, kw in (("greedy", dict(fixed, num_beams=1)),
                         ("beam4", dict(fixed, num_beams=4, early_stopping=True))):
            hf = hf_tokens_per_s(ref, tok, texts, kw, a.ref_batch, dev)
            rows.append((kind, dtype, mode, speed[mode], hf))
    del ref
    if dev.startswith("cuda"):
        torch.cuda.empty_cache()
    print(f"== {kind} {dtype} on {dev}: greedy texts equal to transformers' (same device and "
          f"dtype, prompt alone): {same}/{len(ours)}")
    for k, (smi, alloc) in mem.items():
        if smi is not None:
            print(f"  {k:14s} nvidia-smi {smi:8.0f} MiB   torch allocated {alloc:8.1f} MiB")
    print(f"  tokens/s: greedy {speed['greedy']:,.0f}  beam4 {speed['beam4']:,.0f}", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda:0")
    ap.add_argument("--models", default="t5,bart")
    ap.add_argument("--size", default="small", choices=("small", "tiny"))
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--check", type=int, default=16)
    ap.add_argument("--ref-batch", type=int, default=32)
    a = ap.parse_args()
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no CUDA device visible to torch")
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for kind in a.models.split(","):
            path = os.path.join(d, kind)
            tok = make(kind, path, a.size, d)
            for dtype in (DTYPES[kind] if a.device.startswith("cuda") else ("float32",)):
                asyncio.run(run_one(kind, path, tok, dtype, a, rows))
    print()
    print("| model | dtype | decoding | ours tok/s (burst of single tasks) | transformers tok/s "
          "(padded batches) | ratio |")
    print("|---|---|---|---|---|---|")
    for kind, dtype, mode, o, t in rows:
        print(f"| {kind} | {dtype} | {mode} | {o:,.0f} | {t:,.0f} | {o / t:.2f}x |")


if __name__ == "__main__":
    main()
