"""Native T5 / BART generation (libmm_torch.so, csrc/torch/mm_torch_gen.h) vs
transformers' generate() on the same machine, in the same run.

Models: random t5-small-shaped (d_model 512, 6+6 layers, 8 heads, d_ff 2048,
vocab 32128) and bart-base-shaped (d_model 768, 6+6 layers, 12 heads, ffn
3072, vocab 50265) models, saved with save_pretrained.  Prompts: --n id lists
of 8..64 tokens.  Settings: greedy and beam 4 (early stopping), exactly --new
new tokens per sequence (min_new_tokens = max_new_tokens, so that random
weights do not stop at an early EOS).

Modes:
  burst       ours: every prompt in one mm_torch_gen_run call;
              reference: model.generate on padded batches of --ref-batch
              prompts (its best way to batch).
  sequential  one request at a time, both sides; p50 latency of a lone request.

Prints tokens/s (generated tokens, EOS included, per wall second) for both
and the ratio, and the p50 latencies.  A benchmark, not a test: it asserts
nothing.  Usage: python3 benchmarks/bench_generate.py [--n 100] [--new 32]
[--models t5,bart] [--modes greedy,beam] [--threads N]
"""
import argparse
import os
import random
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "python"))

import torch  # noqa: E402
from transformers import (AutoModelForSeq2SeqLM, BartConfig, BartForConditionalGeneration,  # noqa: E402
                          T5Config, T5ForConditionalGeneration)

from test_generate_helpers import Generator  # noqa: E402


def make(kind, path):
    torch.manual_seed(0)
    if kind == "t5":
        m = T5ForConditionalGeneration(T5Config(d_model=512, d_kv=64, d_ff=2048, num_layers=6,
                                                num_heads=8, vocab_size=32128,
                                                decoder_start_token_id=0))
    else:
        m = BartForConditionalGeneration(BartConfig(
            d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
            decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072,
            vocab_size=50265, max_position_embeddings=1024))
    m.eval().save_pretrained(path)


def prompts(kind, n, vocab):
    rnd = random.Random(7)
    out = []
    for _ in range(n):
        body = [rnd.randrange(3, vocab) for _ in range(rnd.randint(8, 64))]
        out.append(body + [1] if kind == "t5" else [0] + body + [2])
    return out


def hf_burst(model, ps, kw, bs, pad):
    toks = 0
    t = time.perf_counter()
    for i in range(0, len(ps), bs):
        chunk = ps[i:i + bs]
        L = max(len(p) for p in chunk)
        ids = torch.tensor([p + [pad] * (L - len(p)) for p in chunk])
        mask = torch.tensor([[1] * len(p) + [0] * (L - len(p)) for p in chunk])
        out = model.generate(input_ids=ids, attention_mask=mask, **kw)
        toks += count(out.tolist(), model)
    return toks, time.perf_counter() - t


def count(rows, model):
    eos = model.generation_config.eos_token_id
    n = 0
    for r in rows:
        r = r[1:]
        n += r.index(eos) + 1 if eos in r else len(r)
    return n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--models", default="t5,bart")
    ap.add_argument("--modes", default="greedy,beam")
    ap.add_argument("--ref-batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=0,
                    help="prompts for the sequential mode (default: --n)")
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    nseq = a.seq or a.n
    rows = []
    # on a shared machine only same-run ratios mean much: say how busy it was
    print("# load average before: %.2f %.2f %.2f" % os.getloadavg(), flush=True)
    with tempfile.TemporaryDirectory() as d:
        for kind in a.models.split(","):
            path = os.path.join(d, kind)
            make(kind, path)
            ref = AutoModelForSeq2SeqLM.from_pretrained(path).eval()
            g = Generator(path)
            vocab = 32128 if kind == "t5" else 50265
            ps = prompts(kind, a.n, vocab)
            pad = ref.generation_config.pad_token_id
            for mode in a.modes.split(","):
                # min_new_tokens = max_new_tokens: random models would stop at
                # an early EOS; this way both sides emit exactly --new tokens
                kw = dict(max_new_tokens=a.new, min_new_tokens=a.new,
                          num_beams=1 if mode == "greedy" else 4,
                          early_stopping=mode != "greedy", length_penalty=1.0)
                gkw = dict(kw)
                # warm up both
                g.generate(ps[:2], **gkw)
                with torch.inference_mode():
                    ref.generate(torch.tensor([ps[0]]), **kw)
                # burst
                t = time.perf_counter()
                out = g.generate(ps, **gkw)
                ours_t = time.perf_counter() - t
                ours_tok = sum(len(o[0]) for o in out)
                with torch.inference_mode():
                    ref_tok, ref_t = hf_burst(ref, ps, kw, a.ref_batch, pad)
                rows.append((kind, mode, "burst", ours_tok / ours_t, ref_tok / ref_t, None, None))
                # sequential
                lat_o, lat_r, to, tr = [], [], 0, 0
                for p in ps[:nseq]:
                    t = time.perf_counter()
                    o = g.generate([p], **gkw)
                    lat_o.append(time.perf_counter() - t)
                    to += len(o[0][0])
                    with torch.inference_mode():
                        t = time.perf_counter()
                        r = ref.generate(torch.tensor([p]), **kw)
                        lat_r.append(time.perf_counter() - t)
                    tr += count(r.tolist(), ref)
                rows.append((kind, mode, "sequential", to / sum(lat_o), tr / sum(lat_r),
                             statistics.median(lat_o), statistics.median(lat_r)))
                print_row(rows[-2])
                print_row(rows[-1])
            g.close()
    print("# load average after: %.2f %.2f %.2f" % os.getloadavg())
    print()
    print(f"| model | decoding | mode | ours tok/s | transformers tok/s | ratio | p50 ours ms | "
          f"p50 transformers ms |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print_row(r, md=True)


def print_row(r, md=False):
    kind, mode, how, o, t, po, pt = r
    lat = f"{po * 1000:.1f} | {pt * 1000:.1f}" if po is not None else "- | -"
    if md:
        print(f"| {kind} | {mode} | {how} | {o:.1f} | {t:.1f} | {o / t:.2f}x | {lat} |")
    else:
        print(f"{kind:5} {mode:7} {how:10} ours {o:8.1f} tok/s  transformers {t:8.1f} tok/s  "
              f"ratio {o / t:5.2f}x  p50 {lat.replace(' | ', ' ms vs ')} ms", flush=True)


if __name__ == "__main__":
    main()
