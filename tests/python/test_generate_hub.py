"""Text generation through the whole stack, by repo id: three tiny seeded random
models with real tokenizers of their kind are published on the fake hub and
run with `mm.task(..., "text_generation", "<org>/<repo>", device="cpu")`, so
download, cache, tokenizer and model load, batching, generation and decoding
all take their real paths.  Each result must equal
`tokenizer.decode(model.generate(...)[0], skip_special_tokens=True)` of
transformers on the same files.

* T5 v1.0 (ReLU, tied embeddings) and T5 v1.1 (gated GELU, untied lm_head),
  sharing a sentencepiece Unigram (nmt_nfkc charsmap, 3 extra ids) trained
  here and converted by transformers; 32 input positions (n_positions and
  the tokenizer's model_max_length), so long prompts are truncated.
* BART shaped like bart-large-cnn (its beam settings in
  generation_config.json, forced <s> and </s>) with a byte-level BPE trained
  here with `tokenizers`; 48 positions.

Prompts (56 per model): 1 to ~70 words, some past the input limit, some
unicode (accents, ligatures, fullwidth, CJK, Cyrillic, emoji, combining
marks, characters the tokenizers never saw), whitespace only, special
tokens written as text.  They go in as one concurrent
burst of single-string tasks mixed with list tasks of 2 to 6 strings.  In a
mixed batch a beam hypothesis may flip where two candidates tie to ~1e-6
(see test_generate_parity.py): at most one batched text per model and
setting may differ from the reference, and that prompt must then match when
sent alone; a few prompts are also always checked alone.
"""
import asyncio
import contextlib
import json
import os
import random

import pytest

import pymodelmgr

if not os.path.exists(os.path.join(os.path.dirname(pymodelmgr.__file__), "libmm_torch.so")):
    pytest.skip("the native backend (libmm_torch.so) is not built", allow_module_level=True)

from test_generate_helpers import (make_bart, make_t5, torch, train_bart_tokenizer,  # noqa: E402
                                   train_t5_tokenizer)

# The shared 2-core machine can be slow: no queue timeouts.  One intra-op thread, as
# for the reference (see references()).
SLOW_OK = {"worker_pool": {"queue_timeout": 0}, "cpu_threads": 1}

REPOS = {"t5": "tiny-org/t5-v1_0-random", "t5g": "tiny-org/t5-v1_1-random",
         "bart": "tiny-org/bart-large-cnn-random"}
INPUT_LIMIT = {"t5": 32, "t5g": 32, "bart": 48}

# bart-large-cnn's generation settings, scaled to the tiny model
CNN_LIKE = dict(num_beams=4, length_penalty=2.0, max_length=30, min_length=6,
                no_repeat_ngram_size=3, early_stopping=True)

BEAM = dict(num_beams=4, length_penalty=2.0, no_repeat_ngram_size=3, min_length=8, max_length=24)
SETTINGS = {
    "greedy": dict(num_beams=1, do_sample=False, max_length=24),
    "beam_early_stopping_true": dict(BEAM, early_stopping=True),
    "beam_early_stopping_false": dict(BEAM, early_stopping=False),
}
SAMPLING = dict(do_sample=True, num_beams=1, temperature=0.9, top_k=30, top_p=0.95, max_length=24)

WORDS = ("the quick brown fox jumps over lazy dog summer river mountain city train music garden "
         "window morning evening story people water light night small great old new École café "
         "naïve ﬁle ＡＢＣ über straße 東京 日本語 데이터 привет мир ½ ①").split()
SYLLABLES = "ka ri to me su na lo pe vi da gu ho ze mi ta ro ne bu fa shi".split()
UNICODE_PROMPTS = [
    "École café naïve ﬁle ＡＢＣ",
    "東京 は 日本語 の 데이터 привет мир",
    "smile 🙂 and 🚀 launch ½ ① ǅ",
    "cafe\u0301 combining e\u0301 marks and ﬀ ligature",
    "Ωμέγα العربية עברית ไทย",
    "tabs\tand\nnewlines  and   spaces",
    "ＦＵＬＬＷＩＤＴＨ ｋａｔａｋａｎａ ｶﾀｶﾅ",
    "straße über über straße " * 12,  # unicode and past the limit
    "   ",  # whitespace only: T5 encodes it to </s> alone
    "\u200b zero\u00a0width and nbsp",
    "<s> </s> <pad> <unk> <mask> <extra_id_0> special tokens written as text",
    "a" * 300,  # one long word past the limit
]


def corpus(n=300, seed=0):
    rnd = random.Random(seed)
    words = WORDS + ["".join(rnd.choice(SYLLABLES) for _ in range(rnd.randint(1, 4)))
                     for _ in range(200)]
    return [" ".join(rnd.choice(words) for _ in range(rnd.randint(3, 14))) + rnd.choice(".!? ")
            for _ in range(n)]


def make_prompts(n=56, seed=5):
    rnd = random.Random(seed)
    out = []
    for i in range(n - len(UNICODE_PROMPTS)):
        k = rnd.randint(1, 12) if i % 3 else rnd.randint(20, 70)  # a third past the input limit
        out.append(" ".join(rnd.choice(WORDS) for _ in range(k)))
    out[:2] = ["a", "the quick brown fox jumps over the lazy dog."]
    return out + UNICODE_PROMPTS


PROMPTS = make_prompts()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """kind -> (folder, reference model, reference tokenizer), both loaded
    back from the saved files that the hub serves."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
    base = tmp_path_factory.mktemp("gen_hub")
    texts = corpus()
    t5_tok = train_t5_tokenizer(base / "spm", texts, vocab_size=120, extra_ids=3,
                                model_max_length=INPUT_LIMIT["t5"])
    bart_tok = train_bart_tokenizer(texts, vocab_size=400, model_max_length=INPUT_LIMIT["bart"])
    out = {}
    for kind in REPOS:
        d = str(base / kind)
        if kind == "bart":
            make_bart(d, vocab=len(bart_tok), max_pos=INPUT_LIMIT["bart"], generation=CNN_LIKE,
                      eos_bias=7.5)
            bart_tok.save_pretrained(d)
        else:  # eos_gain / emb_scale: a mix of early stops and full-length outputs
            make_t5(d, kind == "t5g", vocab=len(t5_tok), seed=int(kind == "t5g"),
                    n_positions=INPUT_LIMIT[kind],
                    **({} if kind == "t5g" else dict(eos_gain=5.5, emb_scale=0.4)))
            t5_tok.save_pretrained(d)
            hub_style_t5_config(d, tied=kind == "t5")
        out[kind] = (d, AutoModelForSeq2SeqLM.from_pretrained(d).eval(), AutoTokenizer.from_pretrained(d))
    return out


def hub_style_t5_config(d, tied):
    """Rewrites config.json the way T5 repos on the hub have it: transformers
    5 writes scale_decoder_outputs, t5-small has neither key (tied, scaled),
    flan-t5 says tie_word_embeddings: false (own lm_head, no scaling)."""
    path = os.path.join(d, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg.pop("scale_decoder_outputs", None)
    cfg.pop("tie_word_embeddings", None)
    if not tied:
        cfg["tie_word_embeddings"] = False
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2)


@contextlib.contextmanager
def one_thread():
    """One intra-op thread for the reference: with two on the shared 2-core
    machine, tiny ops spin against other processes and the same work can
    take 10x longer."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            yield
    finally:
        torch.set_num_threads(threads)


def references(model, tok, prompts, seed=None, **kw):
    """transformers on each prompt alone: decode(generate()[0])."""
    out = []
    with one_thread():
        for p in prompts:
            ids = tok(p, truncation=True, return_tensors="pt").input_ids
            if seed is not None:
                torch.manual_seed(seed)
            out.append(tok.decode(model.generate(ids, **kw)[0], skip_special_tokens=True))
    return out


@pytest.fixture
def served(hub_env, models):
    for kind, repo in REPOS.items():
        hub_env.hub.add_folder(repo, models[kind][0])
    return hub_env


async def loaded(make_mm, served, repo):
    """A manager with repo downloaded and loaded (pre-load task), so that a
    burst's waves are not all queued behind the load into one batch."""
    mm = make_mm(cache_dir=served.cache_dir, **SLOW_OK)
    r = await mm.task(None, "text_generation", repo, device="cpu")
    assert r.success and r.data["preloaded"], r.error
    return mm


async def batches_run(mm, repo):
    st = await mm.status()
    return sum(m["batches"] for m in st.data["models"] if m["model_name"] == repo)


async def run_mixed(mm, repo, prompts, kw, seed=0):
    """One concurrent burst: every prompt once, shuffled, as single-string
    tasks mixed with list tasks of 2..6 strings, submitted in a few waves.
    Returns the texts in prompt order."""
    rnd = random.Random(seed)
    order = list(range(len(prompts)))
    rnd.shuffle(order)
    groups, i = [], 0
    while i < len(order):
        k = 1 if rnd.random() < 0.6 else rnd.randint(2, 6)
        groups.append(order[i:i + k])
        i += k
    assert any(len(g) == 1 for g in groups) and any(len(g) > 1 for g in groups)
    delays = [rnd.choice((0, 0, 0.003, 0.02)) for _ in groups]  # waves: varied batch makeup

    async def one(g, delay):
        if delay:
            await asyncio.sleep(delay)
        return await mm.task(prompts[g[0]] if len(g) == 1 else [prompts[j] for j in g],
                             "text_generation", repo, device="cpu", **kw)

    before = await batches_run(mm, repo)
    results = await asyncio.gather(*(one(g, t) for g, t in zip(groups, delays)))
    # tasks really shared batches
    assert await batches_run(mm, repo) - before < len(groups)
    texts = [None] * len(prompts)
    for g, r in zip(groups, results):
        assert r.success, r.error
        got = [r.data["generated_text"]] if len(g) == 1 else r.data["generated_texts"]
        assert len(got) == len(g)
        for j, t in zip(g, got):
            texts[j] = t
    return texts


async def check_parity(mm, repo, prompts, kw, expect, seed=0):
    """Batched texts equal `expect` but for at most one flip; a flipped
    prompt, and a few others, must match exactly when sent alone."""
    batched = await run_mixed(mm, repo, prompts, kw, seed)
    flipped = [i for i, (b, e) in enumerate(zip(batched, expect)) if b != e]
    n = len(prompts)
    for i in sorted(set(flipped) | {0, 3 % n, n - 1, n - 3}):  # short, long, unicode
        r = await mm.task(prompts[i], "text_generation", repo, device="cpu", **kw)
        assert r.success, r.error
        assert r.data["generated_text"] == expect[i], f"prompt {i} {prompts[i]!r} alone"
    assert len(flipped) <= 1, f"{len(flipped)}/{len(prompts)} batched texts differ from the " \
                              f"reference; first: prompt {flipped[0]} {prompts[flipped[0]]!r}\n" \
                              f" ours {batched[flipped[0]]!r}\n hf   {expect[flipped[0]]!r}"
    return batched


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("kind", list(REPOS))
async def test_parity_through_the_hub(make_mm, served, models, kind, setting):
    d, model, tok = models[kind]
    kw = SETTINGS[setting]
    expect = references(model, tok, PROMPTS, **kw)
    mm = await loaded(make_mm, served, REPOS[kind])
    await check_parity(mm, REPOS[kind], PROMPTS, kw, expect)
    # it came from the hub, through the cache: the weights were downloaded once
    assert served.hub.count(contains=f"{REPOS[kind]}/resolve/") > 0
    assert served.hub.count(host="cdn", contains="/cdn/") >= 1  # model.safetensors (LFS)
    if setting == "greedy":  # a spread of lengths: some stop at EOS, some run to max_length
        lens = [len(tok(t).input_ids) for t in expect]
        assert min(lens) < max(lens)


@pytest.mark.parametrize("kind", list(REPOS))
async def test_defaults_from_generation_config(make_mm, served, models, kind):
    """No kwargs: BART runs bart-large-cnn's beam search from its
    generation_config.json, T5 transformers' defaults."""
    d, model, tok = models[kind]
    prompts = PROMPTS[::4]
    expect = references(model, tok, prompts)
    mm = await loaded(make_mm, served, REPOS[kind])
    await check_parity(mm, REPOS[kind], prompts, {}, expect, seed=1)


@pytest.mark.parametrize("kind", list(REPOS))
async def test_seeded_sampling(make_mm, served, models, kind):
    """Sampling with a seed draws what transformers draws after
    torch.manual_seed(seed) for that prompt alone (the shim replays torch's
    CPU generator), whatever the batch; so it is exact, reproducible, and a
    different seed gives different texts."""
    d, model, tok = models[kind]
    prompts = PROMPTS[::2]
    expect = references(model, tok, prompts, seed=1234, **SAMPLING)
    repo = REPOS[kind]
    mm = await loaded(make_mm, served, repo)
    first = await run_mixed(mm, repo, prompts, dict(SAMPLING, seed=1234), seed=2)
    again = await run_mixed(mm, repo, prompts, dict(SAMPLING, seed=1234), seed=3)
    assert first == again  # a different batch composition, the same draws
    assert first == expect
    other = await run_mixed(mm, repo, prompts, dict(SAMPLING, seed=4321), seed=2)
    assert sum(a != b for a, b in zip(first, other)) >= len(prompts) // 4
    greedy = references(model, tok, prompts, **SETTINGS["greedy"])
    assert first != greedy  # it really sampled


@pytest.mark.parametrize("kind", list(REPOS))
async def test_different_settings_in_one_burst(make_mm, served, models, kind):
    """Greedy, beam and seeded sampling tasks for one model, interleaved in
    one burst: the worker groups a batch by settings, and no task takes
    another's."""
    d, model, tok = models[kind]
    prompts = PROMPTS[1::3]
    kws = [SETTINGS["greedy"], SETTINGS["beam_early_stopping_true"], dict(SAMPLING, seed=7),
           dict(SETTINGS["greedy"], max_length=10)]
    expect = [references(model, tok, prompts, seed=kw.pop("seed", None), **kw)
              for kw in (dict(k) for k in kws)]
    mm = await loaded(make_mm, served, REPOS[kind])
    jobs = [(i, k) for i in range(len(prompts)) for k in range(len(kws))]
    random.Random(4).shuffle(jobs)
    rs = await asyncio.gather(*(mm.task(prompts[i], "text_generation", REPOS[kind], device="cpu",
                                        **kws[k]) for i, k in jobs))
    bad = [(prompts[i], kws[k]) for (i, k), r in zip(jobs, rs)
           if not r.success or r.data["generated_text"] != expect[k][i]]
    assert len(bad) <= 1, bad  # a beam near-tie may flip in a batch (module docstring)


@pytest.mark.parametrize("kind", ["t5g", "bart"])
async def test_several_return_sequences(make_mm, served, models, kind):
    """num_return_sequences=3: a string gives a list of 3 texts, a list of
    strings a list of such lists; each equals transformers' 3 beams."""
    d, model, tok = models[kind]
    kw = dict(num_beams=4, num_return_sequences=3, max_length=16, early_stopping=True)
    prompts = PROMPTS[:6]
    ids = [tok(p, truncation=True, return_tensors="pt").input_ids for p in prompts]
    with one_thread():
        expect = [tok.batch_decode(model.generate(x, **kw), skip_special_tokens=True) for x in ids]
    mm = await loaded(make_mm, served, REPOS[kind])
    one = await mm.task(prompts[0], "text_generation", REPOS[kind], device="cpu", **kw)
    many = await mm.task(prompts, "text_generation", REPOS[kind], device="cpu", **kw)
    assert one.success and many.success, (one.error, many.error)
    assert one.data["generated_texts"] == expect[0]
    assert many.data["generated_texts"] == expect


async def test_truncation_and_limits(make_mm, served, models):
    """Over-long prompts are cut at the model's limit by default and refused
    with truncate=False; max_new_tokens is bounded by BART's position table."""
    mm = make_mm(cache_dir=served.cache_dir, **SLOW_OK)
    long_prompt = " ".join(["river mountain"] * 60)
    for kind in ("t5", "bart"):
        d, model, tok = models[kind]
        assert len(tok(long_prompt).input_ids) > INPUT_LIMIT[kind]
        r = await mm.task(long_prompt, "text_generation", REPOS[kind], device="cpu", max_length=12)
        assert r.success, r.error
        assert r.data["generated_text"] == references(model, tok, [long_prompt], max_length=12)[0]
        r = await mm.task(long_prompt, "text_generation", REPOS[kind], device="cpu", max_length=12,
                          truncate=False)
        assert r.error.code == "INVALID_ARGUMENT" and str(INPUT_LIMIT[kind]) in r.error.message, r.error
    r = await mm.task("hello", "text_generation", REPOS["bart"], device="cpu", max_new_tokens=10**9)
    assert r.error.code == "INVALID_ARGUMENT" and "max_new_tokens" in r.error.message, r.error


async def test_bad_input(make_mm, served):
    mm = make_mm(cache_dir=served.cache_dir, **SLOW_OK)
    repo = REPOS["t5g"]
    for data, kw, word in [("", {}, ""), (["ok", 3], {}, ""), (["ok", ""], {}, ""),
                           ("hello", {"num_beams": 0}, "num_beams"),
                           ("hello", {"max_length": 5, "min_length": 9}, "min_length"),
                           ("hello", {"bogus": 1}, "bogus")]:
        r = await mm.task(data, "text_generation", repo, device="cpu", **kw)
        assert not r.success and r.error.code == "INVALID_ARGUMENT", (data, kw, r.error)
        assert word in r.error.message
    r = await mm.task("hello", "text_generation", repo, device="cpu", max_length=8)
    assert r.success, r.error  # the model still serves


async def test_encoder_only_repo_is_unsupported_architecture(make_mm, served):
    """all-MiniLM-L6-v2 (a BertModel), published on the fake hub by hub_env."""
    mm = make_mm(cache_dir=served.cache_dir, **SLOW_OK)
    r = await mm.task("hello", "text_generation", served.minilm_repo, device="cpu")
    assert not r.success
    assert r.error.code == "UNSUPPORTED_ARCHITECTURE", r.error
    assert "BertModel" in r.error.message, r.error


async def test_unknown_repo_is_an_error(make_mm, served):
    mm = make_mm(cache_dir=served.cache_dir, **SLOW_OK)
    r = await mm.task("hello", "text_generation", "tiny-org/no-such-model", device="cpu")
    assert r.error.code == "MODEL_NOT_FOUND" and "tiny-org/no-such-model" in r.error.message, r.error
