"""Decoder-only LLMs through the whole stack (issue 15): ten tiny seeded random
models, one per family and switch the native decoder implements, each with a
tokenizer of its family's kind (llm_helpers.py), are published on the fake hub
and run with `mm.task(..., "text_generation", "<org>/<repo>", device="cpu")`.
Each text must equal transformers' `model.generate()` on the same files, run
on each prompt alone, decoded with skip_special_tokens=True; finish_reason and
token counts must match what that call did.

| repo | switches |
| --- | --- |
| llama | default RoPE, GQA 4/2, untied lm_head, sentencepiece BPE + byte fallback |
| llama3 | llama3 RoPE, tied, bfloat16 checkpoint, byte-level BPE with <|begin_of_text|> |
| llama_linear | linear RoPE x2, float16 checkpoint |
| llama_dynamic | dynamic NTK RoPE x4 past 32 positions (prompts cross it) |
| mistral | sliding window 8 |
| qwen2 | q/k/v bias, tied, theta 1e6, eos list [<|im_end|>, <|endoftext|>] |
| qwen3 | q/k RMSNorm, head_dim 24 != hidden / heads |
| gemma | sqrt(hidden) embedding scale, (1 + w) norms, GeGLU, multi-query (1 kv head) |
| gemma2 | gemma + soft-capping (attention 20, final 15), query_pre_attn_scalar, alternating window 8 |
| phi3 | fused qkv / gate_up, partial rotary 0.5, sliding window 16 |

Prompts (52 per model): 1 to ~300 tokens (capped by the model's context less
the new tokens), words, unicode that only byte fallback can encode, special
tokens typed as text, whitespace runs; they go in as one concurrent burst of
single-string tasks mixed with list tasks.
"""
import asyncio
import math
import os
import random

import pytest

import pymodelmgr

if not os.path.exists(os.path.join(os.path.dirname(pymodelmgr.__file__), "libmm_torch.so")):
    pytest.skip("the native backend (libmm_torch.so) is not built", allow_module_level=True)

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from llm_helpers import KINDS, hf_generate, make_llm, one_thread  # noqa: E402

SLOW_OK = {"worker_pool": {"queue_timeout": 0}, "cpu_threads": 1}
REPOS = {k: f"tiny-llm/{k.replace('_', '-')}-random" for k in KINDS}
NEW = 24
GREEDY = dict(do_sample=False, max_new_tokens=NEW)
SAMPLING = dict(do_sample=True, max_new_tokens=NEW, temperature=0.8, top_k=40, top_p=0.9, seed=1234)

WORDS = ("the quick brown fox jumps over lazy dog summer river mountain city train music garden "
         "window morning evening story people water light night small great old new").split()
ODD = ["東京 は 日本語", "smile 🙂 and 🚀", "Ωμέγα العربية", "tabs\tand\nnewlines  and   spaces",
       "<s> </s> <|im_end|> <|endoftext|> <bos> specials as text", "   ", "a", "Café déjà vu ½ ①",
       "x = {'k': [1, 2, 3]}"]


def context(model):
    cfg = model.config
    rp = getattr(cfg, "rope_parameters", None) or {}
    f = rp.get("factor", 1.0) if rp.get("rope_type") in ("linear", "dynamic") else 1.0
    return int(cfg.max_position_embeddings * f)


def make_prompts(tok, limit, n=52, seed=5):
    """n prompts whose token counts spread from 1 to `limit` (log-uniform)."""
    rnd = random.Random(seed)
    out = list(ODD)
    while len(out) < n:
        target = limit if len(out) == len(ODD) else int(round(math.exp(rnd.uniform(0, math.log(limit)))))
        target = max(1, min(target, limit))
        words = []
        while True:
            words.append(rnd.choice(WORDS))
            if len(tok(" ".join(words)).input_ids) >= target or len(words) > limit:
                break
        text = " ".join(words)
        while len(tok(text).input_ids) > limit:
            text = text.rsplit(" ", 1)[0]
        out.append(text)
    return out


@pytest.fixture(scope="module")
def llms(tmp_path_factory):
    """kind -> (folder, reference model, tokenizer, prompts)."""
    base = tmp_path_factory.mktemp("llm_hub")
    out = {}
    with one_thread():
        for kind in KINDS:
            d = str(base / kind)
            model, tok = make_llm(d, kind)
            out[kind] = (d, model, tok, make_prompts(tok, min(300, context(model) - NEW - 1)))
    return out


@pytest.fixture
def served(hub_env, llms):
    for kind, repo in REPOS.items():
        hub_env.hub.add_folder(repo, llms[kind][0])
    return hub_env


def references(model, tok, prompts, **kw):
    with one_thread():
        return [hf_generate(model, tok, p, **kw) for p in prompts]


async def loaded(make_mm, served, repo):
    mm = make_mm(cache_dir=served.cache_dir, **SLOW_OK)
    r = await mm.task(None, "text_generation", repo, device="cpu")
    assert r.success and r.data["preloaded"], r.error
    return mm


async def burst(mm, repo, prompts, kw, seed=0):
    """Every prompt once, shuffled, as single-string tasks mixed with list
    tasks of 2..5 strings, all submitted at once.  Returns per prompt (text,
    finish_reason, completion_tokens, prompt_tokens)."""
    rnd = random.Random(seed)
    order = list(range(len(prompts)))
    rnd.shuffle(order)
    groups, i = [], 0
    while i < len(order):
        k = 1 if rnd.random() < 0.6 else rnd.randint(2, 5)
        groups.append(order[i:i + k])
        i += k
    results = await asyncio.gather(*(
        mm.task(prompts[g[0]] if len(g) == 1 else [prompts[j] for j in g], "text_generation", repo,
                device="cpu", **kw) for g in groups))
    out = [None] * len(prompts)
    for g, r in zip(groups, results):
        assert r.success, r.error
        if len(g) == 1:
            d = r.data
            out[g[0]] = (d["generated_text"], d["finish_reason"], d["completion_tokens"], d["prompt_tokens"])
        else:
            d = r.data
            assert len(d["generated_texts"]) == len(g)
            for k, j in enumerate(g):
                out[j] = (d["generated_texts"][k], d["finish_reasons"][k], d["completion_tokens"][k],
                          d["prompt_tokens"][k])
    return out


def expected(model, tok, prompts, refs):
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    return [(text, "stop" if ids and ids[-1] in eos else "length", len(ids), len(tok(p).input_ids))
            for p, (text, ids) in zip(prompts, refs)]


@pytest.mark.parametrize("setting", ["greedy", "sampling"])
@pytest.mark.parametrize("kind", list(KINDS))
async def test_parity_through_the_hub(make_mm, served, llms, kind, setting):
    d, model, tok, prompts = llms[kind]
    kw = GREEDY if setting == "greedy" else SAMPLING
    refs = references(model, tok, prompts, **kw)
    want = expected(model, tok, prompts, refs)
    mm = await loaded(make_mm, served, REPOS[kind])
    got = await burst(mm, REPOS[kind], prompts, kw)
    bad = [i for i, (a, b) in enumerate(zip(got, want)) if a != b]
    assert not bad, f"{len(bad)}/{len(prompts)} differ; first: prompt {bad[0]} {prompts[bad[0]]!r}\n" \
                    f" ours {got[bad[0]]!r}\n hf   {want[bad[0]]!r}"
    lens = [w[3] for w in want]
    assert min(lens) <= 3 and max(lens) >= min(150, context(model) - NEW - 10), lens
    if setting == "greedy":  # a spread: some stop at EOS, some run to the limit
        reasons = {w[1] for w in want}
        assert reasons == {"stop", "length"}, reasons


async def test_several_return_sequences(make_mm, served, llms):
    """num_return_sequences with seeded sampling: each prompt's texts equal one
    transformers call that returns that many."""
    d, model, tok, prompts = llms["qwen2"]
    kw = dict(SAMPLING, num_return_sequences=3)
    mm = await loaded(make_mm, served, REPOS["qwen2"])
    sample = prompts[:6]
    rs = await asyncio.gather(*(mm.task(p, "text_generation", REPOS["qwen2"], device="cpu", **kw)
                                for p in sample))
    hk = {k: v for k, v in kw.items() if k != "seed"}
    eos = set(model.generation_config.eos_token_id)
    for p, r in zip(sample, rs):
        assert r.success, r.error
        ids = tok(p, return_tensors="pt").input_ids
        torch.manual_seed(kw["seed"])
        with torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), **hk)[:, ids.shape[1]:]
        texts = []
        for row in out.tolist():
            cut = next((i + 1 for i, t in enumerate(row) if t in eos), len(row))
            texts.append(tok.decode(row[:cut], skip_special_tokens=True))
        assert r.data["generated_texts"] == texts
        assert len(r.data["finish_reasons"]) == 3


async def test_unsupported_decoder_architecture(make_mm, served, llms, tmp_path):
    """A decoder-only family without a native graph is not run natively: the
    transformers fallback serves it (data["backend"]), or, where the fallback
    is unavailable, UNSUPPORTED_ARCHITECTURE names it."""
    import shutil
    from transformers import GPT2Config, GPT2LMHeadModel
    d = str(tmp_path / "gpt2")
    GPT2LMHeadModel(GPT2Config(vocab_size=600, n_embd=16, n_layer=1, n_head=2)).save_pretrained(d)
    for f in ("tokenizer.json", "tokenizer_config.json"):  # so the load reaches the model
        shutil.copy(os.path.join(llms["qwen2"][0], f), d)
    served.hub.add_folder("tiny-llm/gpt2-random", d)
    mm = make_mm(cache_dir=served.cache_dir, **SLOW_OK)
    r = await mm.task("hello", "text_generation", "tiny-llm/gpt2-random", device="cpu", max_new_tokens=4)
    if r.success:
        assert r.data["backend"] != "native", r.data
    else:
        assert r.error.code == "UNSUPPORTED_ARCHITECTURE", r.error
        assert "GPT2LMHeadModel" in r.error.message, r.error
    mm = make_mm(cache_dir=served.cache_dir, **SLOW_OK)  # the loaded model wins: a fresh manager
    r = await mm.task("hello", "text_generation", "tiny-llm/gpt2-random", device="cpu", backend="native")
    assert not r.success and r.error.code == "UNSUPPORTED_ARCHITECTURE", r.error
    assert "GPT2LMHeadModel" in r.error.message, r.error


async def test_stop_strings(make_mm, served, llms):
    """Generation ends once the text holds a stop string; the text is cut
    before it, finish_reason is "stop" and completion_tokens counts the token
    that completed it.  The earliest of several stop strings wins."""
    d, model, tok, prompts = llms["llama"]
    mm = await loaded(make_mm, served, REPOS["llama"])
    refs = references(model, tok, prompts[9:30], **GREEDY)
    cases = [(p, t, ids) for p, (t, ids) in zip(prompts[9:30], refs) if len(t.strip()) >= 12][:6]
    assert len(cases) >= 4
    for p, full, ids in cases:
        stop = full[6:9]
        other = full[-2:]
        cut = min(full.find(stop), full.find(other))
        need = next(k for k in range(1, len(ids) + 1)
                    if stop in tok.decode(ids[:k], skip_special_tokens=True)
                    or other in tok.decode(ids[:k], skip_special_tokens=True))
        r = await mm.task(p, "text_generation", REPOS["llama"], device="cpu", stop=[stop, other], **GREEDY)
        assert r.success, r.error
        assert r.data["generated_text"] == full[:cut], (p, stop, other)
        assert r.data["finish_reason"] == "stop"
        assert r.data["completion_tokens"] == need
        r = await mm.task([p, p], "text_generation", REPOS["llama"], device="cpu", stop=stop, **GREEDY)
        assert r.data["generated_texts"] == [full[:full.find(stop)]] * 2
        assert r.data["finish_reasons"] == ["stop", "stop"]


async def test_bad_input(make_mm, served, llms):
    d, model, tok, prompts = llms["qwen2"]
    repo = REPOS["qwen2"]
    mm = make_mm(cache_dir=served.cache_dir, **SLOW_OK)
    ctx = context(model)
    long_prompt = " ".join(["river mountain"] * ctx)
    assert len(tok(long_prompt).input_ids) > ctx
    cases = [
        ("hello", {"max_new_tokens": 0}, "max_new_tokens"),
        ("hello", {"max_new_tokens": -3}, "max_new_tokens"),
        ("hello", {"max_new_tokens": 10 ** 9}, "max_new_tokens"),
        ("hello", {"max_new_tokens": ctx}, "max_new_tokens"),
        ("hello", {"bogus": 1, "temprature": 0.5}, "bogus"),
        ("hello", {"temprature": 0.5}, "temprature"),
        ("hello", {"num_beams": 2}, "num_beams"),
        ("hello", {"stop": 3}, "stop"),
        ("hello", {"stop": [""]}, "stop[0]"),
        ("hello", {"stop": ["a", 5]}, "stop[1]"),
        ("hello", {"stop": ["x"] * 17}, "stop"),
        ("hello", {"do_sample": True, "min_p": 1.5}, "min_p"),
        ("hello", {"do_sample": True, "temperature": 0}, "temperature"),
        (long_prompt, {"max_new_tokens": 8}, str(ctx)),
        ("", {}, "empty"),
    ]
    for data, kw, word in cases:
        r = await mm.task(data, "text_generation", repo, device="cpu", **kw)
        assert not r.success and r.error.code == "INVALID_ARGUMENT", (kw, r.error)
        assert word in r.error.message, (kw, r.error.message)
    # truncate=True cuts the prompt to leave room for the new tokens
    r = await mm.task(long_prompt, "text_generation", repo, device="cpu", max_new_tokens=8, truncate=True)
    assert r.success, r.error
    assert r.data["prompt_tokens"] == ctx - 8
    assert r.data["completion_tokens"] <= 8
    r = await mm.task("hello", "text_generation", repo, device="cpu", max_new_tokens=4)
    assert r.success and r.data["completion_tokens"] <= 4, r.error  # the model still serves
