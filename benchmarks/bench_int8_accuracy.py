"""Greedy agreement of reduced-precision generation with float32, pymodelmgr beside CTranslate2.

For each model, the float32 reference is transformers' greedy generate() (pymodelmgr's float32
is token-exact with it; the script checks that too).  Then, on the same prompts:

  pymodelmgr int8       dtype="int8": int8 linear layers and LM head (csrc/torch/mmt_qweight.h)
  pymodelmgr bfloat16   dtype="bfloat16" (only where the CPU has AVX512_BF16 or AMX-BF16)
  CTranslate2 int8      compute_type="int8" on the same directory converted by its
                        TransformersConverter (and CTranslate2 float32 as its own control)

and for each it prints: sequences equal to the reference, tokens equal at the same position
(share of the reference's tokens), and the first position where a differing sequence departs
(median, minimum).

Models: the tiny random test models of tests/python/test_generate_helpers.py (T5 v1.0, T5 v1.1,
BART; their top logits are nearly tied, so agreement there is a lower bound) and the tiny
models of tests/python/trained_tiny.py, trained here for a few hundred steps to reverse a
sequence (BART, Qwen2-shaped decoder-only) or sharpened on its own outputs (T5 v1.1), whose
logits are separated (see trained_tiny.py).

    python3 benchmarks/bench_int8_accuracy.py              # 200 prompts a model
    python3 benchmarks/bench_int8_accuracy.py --prompts 50 --workdir /tmp/acc

A measurement: it reports and asserts nothing."""
import argparse
import json
import os
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))


def cpu_has_bf16():
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def hf_greedy(path, kind, prompts, new):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    from test_generate_helpers import strip

    if kind == "causal":
        m = AutoModelForCausalLM.from_pretrained(path).eval()
    else:
        m = AutoModelForSeq2SeqLM.from_pretrained(path).eval()
    gc = m.generation_config
    out = []
    with torch.inference_mode():
        for p in prompts:
            r = m.generate(torch.tensor([p]), max_new_tokens=new, do_sample=False, num_beams=1)
            r = r[0].tolist()
            if kind == "causal":
                r = r[len(p) - 1:]  # strip() drops one leading token
            out.append(strip(r, gc.eos_token_id, gc.pad_token_id))
    return out


def ours(path, prompts, new, dtype):
    from test_generate_helpers import Generator

    g = Generator(path, dtype=dtype)
    try:
        return [o[0] for o in g.generate(prompts, max_new_tokens=new, num_beams=1,
                                         do_sample=False)]
    finally:
        g.close()


def ct2(path, kind, prompts, new, compute_type, eos):
    import ctranslate2

    sys.path.insert(0, HERE)
    from bench_peers import convert_ct2

    d = path + ".ct2"
    vf = [f for f in ("shared_vocabulary.json", "vocabulary.json") if os.path.exists(os.path.join(d, f))]
    if not os.path.exists(os.path.join(d, "model.bin")) or not vf:
        convert_ct2(path, d)
        vf = [f for f in ("shared_vocabulary.json", "vocabulary.json")
              if os.path.exists(os.path.join(d, f))]
        # these models carry no tokenizer, and the converter names the ids from a stock one:
        # names repeat, so ids could not be told apart; make every name unique, keeping the
        # specials' names that the converted config refers to
        with open(os.path.join(d, vf[0])) as f:
            vocab = json.load(f)
        seen = set()
        for i, t in enumerate(vocab):
            if t in seen:
                vocab[i] = f"<id{i}>"
            seen.add(vocab[i])
        with open(os.path.join(d, vf[0]), "w") as f:
            json.dump(vocab, f)
    with open(os.path.join(d, vf[0])) as f:
        vocab = json.load(f)
    assert len(set(vocab)) == len(vocab)
    index = {t: i for i, t in enumerate(vocab)}
    out = []
    if kind == "causal":
        gen = ctranslate2.Generator(d, device="cpu", compute_type=compute_type)
        res = gen.generate_batch([[vocab[i] for i in p] for p in prompts], max_length=new,
                                 sampling_topk=1, include_prompt_in_result=False,
                                 end_token=[vocab[eos]])
        for r in res:
            ids = [index[t] for t in r.sequences[0]]
            out.append(ids + [eos] if len(ids) < new else ids)
        return out
    tr = ctranslate2.Translator(d, device="cpu", compute_type=compute_type)
    res = tr.translate_batch([[vocab[i] for i in p] for p in prompts], beam_size=1,
                             max_decoding_length=new, return_end_token=True)
    return [[index[t] for t in r.hypotheses[0]] for r in res]


def summary(ref, other):
    from trained_tiny import agreement

    same, n, tok, firsts = agreement(ref, other)
    f = (f"median {statistics.median(firsts):.0f}, min {min(firsts)}" if firsts else "-")
    return f"{same}/{n} | {100 * tok:.1f}% | {f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=200)
    ap.add_argument("--new", type=int, default=20, help="max new tokens (default 20)")
    ap.add_argument("--workdir")
    ap.add_argument("--no-ct2", action="store_true")
    a = ap.parse_args()
    import torch

    import test_generate_helpers as H
    import trained_tiny as T

    tmp = None
    if a.workdir:
        wd = a.workdir
        os.makedirs(wd, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="int8acc-")
        wd = tmp.name
    print(f"# bench_int8_accuracy: {a.prompts} prompts x up to {a.new} new tokens, greedy; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    models = []  # (label, path, kind, prompts, eos)
    for label, name, kind, fn in (
            ("T5 v1.0 (random)", "random-t5v10", "t5", lambda p: H.make_t5(p, gated=False)),
            ("T5 v1.1 (random)", "random-t5v11", "t5", lambda p: H.make_t5(p, gated=True)),
            ("BART (random)", "random-bart", "bart", lambda p: H.make_bart(p))):
        p = os.path.join(wd, name)
        if not os.path.exists(os.path.join(p, "config.json")):
            fn(p)
        models.append((label, p, kind, H.prompts(a.prompts, 256, kind, seed=3),
                       1 if kind == "t5" else 2))
    for label, fn, kind, eos in (("T5 v1.1 (sharpened)", T.train_t5, "t5", 1),
                                 ("BART (trained)", T.train_bart, "bart", 2),
                                 ("Qwen2 (trained)", T.train_qwen2, "causal", 1)):
        p = os.path.join(wd, "trained-" + kind)
        if not os.path.exists(os.path.join(p, "config.json")):
            loss = fn(p)
            print(f"# trained {label}: final loss {loss:.3f}", flush=True)
        models.append((label, p, kind, T.prompts(kind, a.prompts), eos))

    torch.set_num_threads(1)
    rows = []
    for label, path, kind, ps, eos in models:
        ref = hf_greedy(path, kind, ps, a.new)
        cols = {"pymodelmgr float32": ours(path, ps, a.new, "float32"),
                "pymodelmgr int8": ours(path, ps, a.new, "int8")}
        if cpu_has_bf16():
            cols["pymodelmgr bfloat16"] = ours(path, ps, a.new, "bfloat16")
        if not a.no_ct2:
            for ct in ("float32", "int8"):
                try:
                    cols[f"CTranslate2 {ct}"] = ct2(path, kind, ps, a.new, ct, eos)
                except Exception as e:  # a model CTranslate2 cannot convert: say so
                    print(f"# {label}: CTranslate2 {ct}: {type(e).__name__}: {e}", flush=True)
        for name, out in cols.items():
            rows.append((label, name, summary(ref, out)))
            print(f"  {label:20} {name:22} {rows[-1][2]}", flush=True)
    print()
    print("| model | engine | sequences equal to float32 | tokens equal | first divergence |")
    print("| --- | --- | --- | --- | --- |")
    for label, name, text in rows:
        print(f"| {label} | {name} | {text} |")
    print(f"\n# load average after: {os.getloadavg()[0]:.1f}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    sys.exit(main())
