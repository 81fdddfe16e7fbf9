"""Chat messages for decoder-only models (issue 15): conversations are rendered
with the model's chat template exactly as transformers' apply_chat_template
renders them (add_generation_prompt=True), on the templates of Llama 3.1,
Qwen2.5, Gemma 2, Phi-3 and Mistral (chat_templates.py), then generated from
exactly the ids apply_chat_template(tokenize=True) gives (no special tokens
added on top of the template's).

Two tiny models go through the fake hub: a Qwen2-style one whose template
sits in tokenizer_config.json, and a Llama-3-style one whose template is a
chat_template.jinja file (transformers 5's layout).

The C tokenizer is also checked here against `tokenizers` on the tokenizer kinds
the decoder families ship (byte fallback, byte-level with a Split regex).
"""
import asyncio
import json
import os

import pytest

import pymodelmgr
from pymodelmgr import chat as mchat

if not os.path.exists(os.path.join(os.path.dirname(pymodelmgr.__file__), "libmm_torch.so")):
    pytest.skip("the native backend (libmm_torch.so) is not built", allow_module_level=True)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from chat_templates import LLAMA3, QWEN25, TEMPLATES  # noqa: E402
from llm_helpers import make_llm, one_thread, reset_rope  # noqa: E402

SLOW_OK = {"worker_pool": {"queue_timeout": 0}, "cpu_threads": 1}

CONVERSATIONS = [
    [{"role": "user", "content": "Hello there"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "the quick brown fox"}],
    [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello, how can I help?"},
     {"role": "user", "content": "  tell me a story about a river  "}],
    [{"role": "system", "content": "  spaced system  "}, {"role": "user", "content": "東京 🙂 Café\nnew line"},
     {"role": "assistant", "content": "ok"}, {"role": "user", "content": "<|im_end|> {{ not jinja }} %}"}],
    [{"role": "user", "content": ""}],
]


def hf_tokenizer(name):
    """A tokenizer carrying a real template and its special tokens."""
    from tokenizers import Tokenizer, models
    template, bos, eos = TEMPLATES[name]
    t = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    kw = {"eos_token": eos, "unk_token": "[UNK]"}
    if bos:
        kw["bos_token"] = bos
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=t, **kw)
    tok.chat_template = template
    return tok, template, {k: v for k, v in (("bos_token", bos), ("eos_token", eos), ("unk_token", "[UNK]")) if v}


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_render_matches_apply_chat_template(name):
    tok, template, specials = hf_tokenizer(name)
    for conv in CONVERSATIONS:
        try:
            want = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
        except Exception as e:  # the template refuses it (Gemma: system role; Mistral: roles)
            with pytest.raises(mchat.ChatError) as ours:
                mchat.render(template, mchat.conversations(conv)[0][0], specials)
            assert str(e) in str(ours.value)
            continue
        got = mchat.render(template, mchat.conversations(conv)[0][0], specials)
        assert got == want, (name, conv)


def test_template_files(tmp_path):
    """chat_template.jinja wins over tokenizer_config.json; a list of named
    templates uses "default"; special tokens may be AddedToken dicts."""
    d = tmp_path / "m"
    d.mkdir()
    cfg = {"chat_template": [{"name": "default", "template": "D{{ bos_token }}"},
                             {"name": "tool_use", "template": "T"}],
           "bos_token": {"content": "<s>", "lstrip": False}, "eos_token": "</s>"}
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    template, specials = mchat.load_template(str(d))
    assert template == "D{{ bos_token }}" and specials == {"bos_token": "<s>", "eos_token": "</s>"}
    (d / "chat_template.jinja").write_text("J{{ messages[0].content }}")
    assert mchat.load_template(str(d))[0] == "J{{ messages[0].content }}"
    (d / "chat_template.jinja").unlink()
    (d / "tokenizer_config.json").write_text("{}")
    assert mchat.load_template(str(d))[0] is None


@pytest.fixture(scope="module")
def chat_models(tmp_path_factory):
    base = tmp_path_factory.mktemp("llm_chat")
    out = {}
    with one_thread():
        for kind, template in (("qwen2", QWEN25), ("llama3", LLAMA3)):
            d = str(base / kind)
            model, tok = make_llm(d, kind)
            path = os.path.join(d, "tokenizer_config.json")
            with open(path) as f:
                cfg = json.load(f)
            if kind == "qwen2":  # the template in tokenizer_config.json
                cfg["chat_template"] = template
                if os.path.exists(os.path.join(d, "chat_template.jinja")):
                    os.remove(os.path.join(d, "chat_template.jinja"))
            else:  # transformers 5's separate file
                cfg.pop("chat_template", None)
                with open(os.path.join(d, "chat_template.jinja"), "w") as f:
                    f.write(template)
            with open(path, "w") as f:
                json.dump(cfg, f)
            out[kind] = (d, model, transformers.AutoTokenizer.from_pretrained(d))
        # and one without any template
        d = str(base / "plain")
        model, tok = make_llm(d, "llama")
        out["plain"] = (d, model, tok)
    return out


REPOS = {"qwen2": "tiny-chat/qwen2", "llama3": "tiny-chat/llama3", "plain": "tiny-chat/plain"}


@pytest.fixture
def served(hub_env, chat_models):
    for kind, repo in REPOS.items():
        hub_env.hub.add_folder(repo, chat_models[kind][0])
    return hub_env


def hf_chat(model, tok, conv, **kw):
    ids = tok.apply_chat_template(conv, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    ids = ids["input_ids"]
    reset_rope(model)
    with one_thread():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), **kw)[0][ids.shape[1]:].tolist()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    cut = next((i + 1 for i, t in enumerate(out) if t in eos), len(out))
    return tok.decode(out[:cut], skip_special_tokens=True), cut, ids.shape[1]


@pytest.mark.parametrize("kind", ["qwen2", "llama3"])
async def test_chat_through_the_hub(make_mm, served, chat_models, kind):
    d, model, tok = chat_models[kind]
    mm = make_mm(cache_dir=served.cache_dir, **SLOW_OK)
    convs = [c for c in CONVERSATIONS]
    kw = dict(max_new_tokens=16, do_sample=False)
    want = [hf_chat(model, tok, c, **kw) for c in convs]
    rs = await asyncio.gather(*(mm.task(c, "text_generation", REPOS[kind], device="cpu", **kw) for c in convs))
    for c, r, (text, n, plen) in zip(convs, rs, want):
        assert r.success, r.error
        assert r.data["generated_text"] == text, c
        assert r.data["prompt_tokens"] == plen and r.data["completion_tokens"] == n
    # a list of conversations: one text each
    r = await mm.task(convs[:3], "text_generation", REPOS[kind], device="cpu", **kw)
    assert r.success, r.error
    assert r.data["generated_texts"] == [w[0] for w in want[:3]]


async def test_chat_errors(make_mm, served):
    mm = make_mm(cache_dir=served.cache_dir, **SLOW_OK)
    repo = REPOS["qwen2"]
    cases = [
        ([{"role": "wizard", "content": "hi"}], "wizard"),
        ([{"role": "user", "content": 5}], "content"),
        ([{"role": "user", "content": None}], "content"),
        ([{"role": "user"}], "content"),
        ([{"content": "hi"}], "role"),
        ([[{"role": "user", "content": "ok"}], []], "conversation 1"),
        ([[{"role": "user", "content": "ok"}], ["not a dict"]], "conversation 1 message 0"),
    ]
    for data, word in cases:
        r = await mm.task(data, "text_generation", repo, device="cpu", max_new_tokens=4)
        assert not r.success and r.error.code == "INVALID_ARGUMENT", (data, r.error)
        assert word in r.error.message, (data, r.error.message)
    # a model without a template
    r = await mm.task([{"role": "user", "content": "hi"}], "text_generation", REPOS["plain"], device="cpu",
                      max_new_tokens=4)
    assert not r.success and r.error.code == "INVALID_ARGUMENT" and "chat template" in r.error.message, r.error
    # the template's own refusal (Llama 3's template accepts any roles; Qwen2.5's too): strings still work
    r = await mm.task("plain text", "text_generation", repo, device="cpu", max_new_tokens=4)
    assert r.success, r.error


@pytest.mark.parametrize("kind", ["spm", "gemma", "bytelevel", "bytelevel_bos"])
def test_llm_tokenizers_match_tokenizers(tmp_path, kind):
    """The C tokenizer on the decoder families' tokenizer kinds (sentencepiece-style
    BPE with byte fallback, Gemma's layout, byte-level BPE behind Llama 3's Split
    regex with and without a BOS template): ids and decodes equal `tokenizers`'
    on a multilingual corpus (emoji, CJK and controls go through byte fallback)."""
    import tokenizers
    from llm_helpers import make_tokenizer
    from pymodelmgr.tokenizer import Tokenizer
    from tokenizer_corpus import build_corpus
    tok = make_tokenizer(kind)
    tok.save_pretrained(str(tmp_path))
    path = str(tmp_path / "tokenizer.json")
    ref = tokenizers.Tokenizer.from_file(path)
    mine = Tokenizer.from_file(path)
    corpus = build_corpus(1500, specials=[t for t in tok.all_special_tokens])
    r = ref.encode_batch(corpus)
    o = mine.encode_batch(corpus)
    bad = [i for i, (a, b) in enumerate(zip(r, o)) if a.ids != b.ids]
    assert not bad, f"{len(bad)} lines differ; first {corpus[bad[0]]!r}: {r[bad[0]].ids} vs {o[bad[0]].ids}"
    ids = [e.ids for e in r]
    rd = ref.decode_batch(ids, skip_special_tokens=True)
    od = mine.decode_batch(ids, skip_special_tokens=True)
    bad = [i for i, (a, b) in enumerate(zip(rd, od)) if a != b]
    assert not bad, f"{len(bad)} decodes differ; first {rd[bad[0]]!r} vs {od[bad[0]]!r}"
