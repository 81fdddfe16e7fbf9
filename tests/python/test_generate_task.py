"""Text generation end to end through ModelManager.task: a tiny random BART with a
byte-level BPE tokenizer trained here, saved in the Hugging Face layout, run by the
native backend from the C workers, compared with transformers' generate() and the
reference tokenizer's decode on the same files."""
import asyncio
import os

import pytest

import pymodelmgr
from pymodelmgr import ModelManager, ModelManagerSettings

if not os.path.exists(os.path.join(os.path.dirname(pymodelmgr.__file__), "libmm_torch.so")):
    pytest.skip("the native backend (libmm_torch.so) is not built", allow_module_level=True)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from test_generate_helpers import train_bart_tokenizer, train_t5_tokenizer  # noqa: E402

CORPUS = [f"the {a} {b} jumps over the {c} dog number {i}"
          for i, (a, b, c) in enumerate(zip(["quick", "slow", "red", "big"] * 25,
                                            ["brown", "green", "blue", "tiny"] * 25,
                                            ["lazy", "happy", "sad", "old"] * 25))]
PROMPTS = ["the quick brown fox", "a slow green turtle walks", "number 7 is lucky",
           "hello world", "the lazy dog sleeps all day long in the sun", "x"]


@pytest.fixture(scope="module")
def bart_dir(tmp_path_factory):
    from transformers import BartConfig, BartForConditionalGeneration

    d = str(tmp_path_factory.mktemp("tiny-bart"))
    fast = train_bart_tokenizer(CORPUS, vocab_size=320)
    cfg = BartConfig(vocab_size=len(fast), d_model=32, encoder_layers=2,
                     decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
                     encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
                     pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
                     forced_bos_token_id=0, forced_eos_token_id=2)
    torch.manual_seed(0)
    model = BartForConditionalGeneration(cfg).eval()
    model.save_pretrained(d, safe_serialization=True)
    fast.save_pretrained(d)
    return d, model, fast


def reference(model, fast, prompt, **kw):
    ids = fast(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, **kw)
    return fast.decode(out[0], skip_special_tokens=True)


async def test_generation_matches_transformers(bart_dir):
    d, model, fast = bart_dir
    async with ModelManager(ModelManagerSettings(fake_gpus="none")) as mm:
        greedy = await asyncio.gather(*(mm.task(p, "text_generation", d, device="cpu", max_length=20)
                                        for p in PROMPTS))
        beams = await asyncio.gather(*(mm.task(p, "text_generation", d, device="cpu", max_length=20,
                                               num_beams=4, no_repeat_ngram_size=3)
                                       for p in PROMPTS))
        as_list = await mm.task(PROMPTS, "text_generation", d, device="cpu", max_length=20)
    for p, r in zip(PROMPTS, greedy):
        assert r.success, r.error
        assert r.data["generated_text"] == reference(model, fast, p, max_length=20, num_beams=1,
                                                     do_sample=False)
    for p, r in zip(PROMPTS, beams):
        assert r.success, r.error
        assert r.data["generated_text"] == reference(model, fast, p, max_length=20, num_beams=4,
                                                     no_repeat_ngram_size=3, do_sample=False)
    assert as_list.data["generated_texts"] == [r.data["generated_text"] for r in greedy]


async def test_generation_bad_input(bart_dir):
    d, _, _ = bart_dir
    async with ModelManager(ModelManagerSettings(fake_gpus="none")) as mm:
        for kw, word in [({"num_beams": 0}, "num_beams"), ({"bogus": 1}, "bogus"),
                         ({"max_length": 5, "min_length": 9}, "min_length")]:
            r = await mm.task("hello", "text_generation", d, device="cpu", **kw)
            assert r.error.code == "INVALID_ARGUMENT" and word in r.error.message, r.error
        r = await mm.task(["ok", 3], "text_generation", d, device="cpu")
        assert r.error.code == "INVALID_ARGUMENT"
        emb = await mm.task(["hello"], "embedding", d, device="cpu")
        assert not emb.success


@pytest.fixture(scope="module")
def t5_dir(tmp_path_factory):
    from transformers import T5Config, T5ForConditionalGeneration

    fast = train_t5_tokenizer(tmp_path_factory.mktemp("spm"),
                              CORPUS * 3 + ["École café naïve ﬁle ＡＢＣ"], vocab_size=60)
    d = str(tmp_path_factory.mktemp("tiny-t5"))
    cfg = T5Config(vocab_size=len(fast), d_model=32, d_kv=8, d_ff=64, num_layers=2,
                   num_decoder_layers=2, num_heads=4, feed_forward_proj="gated-gelu",
                   tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0,
                   eos_token_id=1)
    torch.manual_seed(1)
    model = T5ForConditionalGeneration(cfg).eval()
    model.save_pretrained(d, safe_serialization=True)
    fast.save_pretrained(d)
    return d, model, fast


async def test_t5_generation_matches_transformers(t5_dir):
    d, model, fast = t5_dir
    prompts = PROMPTS + ["École café naïve ﬁle ＡＢＣ"]
    async with ModelManager(ModelManagerSettings(fake_gpus="none")) as mm:
        rs = await asyncio.gather(*(mm.task(p, "text_generation", d, device="cpu", max_length=16)
                                    for p in prompts))
    for p, r in zip(prompts, rs):
        assert r.success, r.error
        assert r.data["generated_text"] == reference(model, fast, p, max_length=16, num_beams=1,
                                                     do_sample=False)
