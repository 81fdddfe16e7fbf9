"""Parity of the less common tokenizer.json components with Hugging Face `tokenizers`.

test_tokenizer_parity.py covers the model families end to end; this file puts
every other normalizer, pre-tokenizer behavior, model option and decoder of
issue 3 through the reference on 1,000 corpus lines each (ids, tokens,
offsets, decode).
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from tokenizer_corpus import build_corpus  # noqa: E402

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers  # noqa: E402

N_LINES = 1000


@pytest.fixture(scope="module")
def ours():
    import importlib

    core = importlib.import_module("pymodelmgr._core")
    if not hasattr(core, "Tokenizer"):
        pytest.skip("pymodelmgr._core was built without the tokenizer; run `make build`")
    return importlib.import_module("pymodelmgr.tokenizer")


@pytest.fixture(scope="module")
def train_lines():
    return build_corpus(1500, seed=31)


def _wordpiece(lines, **kw):
    t = Tokenizer(models.WordPiece(unk_token="[UNK]", **kw))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    t.train_from_iterator(lines, trainers.WordPieceTrainer(vocab_size=1500, special_tokens=["[UNK]", "[CLS]", "[SEP]"],
                                                          show_progress=False))
    return t


def _bpe(lines, model=None, **tkw):
    t = Tokenizer(model or models.BPE(unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    t.train_from_iterator(lines, trainers.BpeTrainer(vocab_size=1200, special_tokens=["<unk>", "<s>"],
                                                    show_progress=False, **tkw))
    return t


def case_normalizers(lines):
    t = _wordpiece(lines)
    t.normalizer = normalizers.Sequence([
        normalizers.NFKD(), normalizers.StripAccents(), normalizers.Lowercase(), normalizers.NFC(),
        normalizers.Replace("ab", "x"), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip(),
        normalizers.Prepend("^"),
    ])
    t.decoder = decoders.WordPiece(cleanup=False)
    return t


def case_nfd_bert_no_lower(lines):
    t = _wordpiece(lines, max_input_chars_per_word=12)
    t.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=False, strip_accents=False, lowercase=False)])
    t.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    t.post_processor = processors.BertProcessing(("[SEP]", 2), ("[CLS]", 1))
    t.decoder = decoders.WordPiece()
    return t


def case_split_behaviors(lines, behavior="isolated"):
    t = _bpe(lines)
    t.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(" ", behavior),
        pre_tokenizers.Split(Regex(r"[0-9]+|[.,;:!?]"), behavior, invert=behavior in ("isolated", "contiguous")),
        pre_tokenizers.Punctuation(behavior),
        pre_tokenizers.Digits(individual_digits=behavior == "isolated"),
    ])
    t.decoder = decoders.Fuse()
    return t


def case_misc_pretok(lines):
    t = _bpe(lines)
    t.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.CharDelimiterSplit("a"), pre_tokenizers.Digits(individual_digits=False),
        pre_tokenizers.Metaspace(prepend_scheme="never", split=False),
    ])
    t.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.Strip(" ", 1, 1)])
    return t


def case_bpe_suffix_prefix(lines):
    t = Tokenizer(models.BPE(unk_token="<unk>", continuing_subword_prefix="##", end_of_word_suffix="</w>",
                             fuse_unk=True))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    t.train_from_iterator(lines[:600], trainers.BpeTrainer(
        vocab_size=900, special_tokens=["<unk>"], continuing_subword_prefix="##", end_of_word_suffix="</w>",
        limit_alphabet=60, show_progress=False))
    t.decoder = decoders.BPEDecoder(suffix="</w>")
    return t


def case_bpe_byte_fallback(lines):
    t = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    t.pre_tokenizer = pre_tokenizers.Metaspace()
    t.train_from_iterator(lines[:600], trainers.BpeTrainer(
        vocab_size=700, special_tokens=["<unk>"] + [f"<0x{b:02X}>" for b in range(256)], limit_alphabet=50,
        show_progress=False))
    t.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(),
                                   decoders.Strip(" ", 1, 0)])
    return t


def case_unigram_byte_fallback(lines):
    t = Tokenizer(models.Unigram())
    t.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always", split=True)
    t.train_from_iterator(lines[:800], trainers.UnigramTrainer(
        vocab_size=600, special_tokens=["<unk>"] + [f"<0x{b:02X}>" for b in range(256)], unk_token="<unk>",
        show_progress=False))
    j = t.to_str()
    import json

    d = json.loads(j)
    d["model"]["byte_fallback"] = True
    t = Tokenizer.from_str(json.dumps(d))
    t.decoder = decoders.Sequence([decoders.Metaspace(), decoders.ByteFallback(), decoders.Fuse()])
    return t


def case_wordlevel_ctc(lines):
    vocab = {"<pad>": 0, "<unk>": 1, "|": 2}
    for ch in "abcdefghijklmnopqrstuvwxyz'":
        vocab[ch] = len(vocab)
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.normalizer = normalizers.Lowercase()
    t.pre_tokenizer = pre_tokenizers.Split(Regex("."), "isolated")
    t.decoder = decoders.CTC(pad_token="<pad>", word_delimiter_token="|", cleanup=True)
    return t


def case_added_tokens(lines):
    t = _wordpiece(lines)
    t.normalizer = normalizers.Lowercase()
    t.add_special_tokens([tokenizers.AddedToken("[MASK]", lstrip=True, rstrip=True)])
    t.add_tokens([tokenizers.AddedToken("hello", single_word=True), tokenizers.AddedToken("WORLD", normalized=True),
                  tokenizers.AddedToken("ab", single_word=False, normalized=False)])
    t.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS] $A [SEP] [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", t.token_to_id("[CLS]")), ("[SEP]", t.token_to_id("[SEP]"))])
    t.decoder = decoders.WordPiece()
    return t


def case_bytelevel_prefix(lines):
    t = Tokenizer(models.BPE())
    t.normalizer = normalizers.NFC()
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
    t.train_from_iterator(lines[:800], trainers.BpeTrainer(
        vocab_size=900, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    t.post_processor = processors.ByteLevel(trim_offsets=True)
    t.decoder = decoders.ByteLevel()
    return t


def case_bytelevel_noregex(lines):
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                               pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=False)])
    t.train_from_iterator(lines[:800], trainers.BpeTrainer(
        vocab_size=900, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    t.post_processor = processors.RobertaProcessing(("</s>", 1), ("<s>", 0), trim_offsets=True, add_prefix_space=True)
    t.add_special_tokens(["<s>", "</s>"])
    t.decoder = decoders.ByteLevel()
    return t


CASES = {
    "bytelevel_prefix": case_bytelevel_prefix,
    "bytelevel_noregex": case_bytelevel_noregex,
    "normalizers": case_normalizers,
    "nfd_bert_no_lower": case_nfd_bert_no_lower,
    "misc_pretok": case_misc_pretok,
    "bpe_suffix_prefix": case_bpe_suffix_prefix,
    "bpe_byte_fallback": case_bpe_byte_fallback,
    "unigram_byte_fallback": case_unigram_byte_fallback,
    "wordlevel_ctc": case_wordlevel_ctc,
    "added_tokens": case_added_tokens,
}
for _b in ["removed", "isolated", "merged_with_previous", "merged_with_next", "contiguous"]:
    CASES["split_" + _b] = (lambda b: lambda lines: case_split_behaviors(lines, b))(_b)


@pytest.mark.parametrize("case", list(CASES))
def test_component_parity(case, ours, train_lines, tmp_path):
    ref = CASES[case](train_lines)
    path = str(tmp_path / "tokenizer.json")
    ref.save(path)
    ref = Tokenizer.from_file(path)
    mine = ours.Tokenizer.from_file(path)
    specials = [t.content for t in ref.get_added_tokens_decoder().values()] + ["hello", "WORLD", "Hello"]
    corpus = build_corpus(N_LINES, specials=specials, seed=77)
    r = ref.encode_batch(corpus)
    o = mine.encode_batch(corpus, num_threads=1)
    for i, (a, b) in enumerate(zip(r, o)):
        assert a.ids == b.ids, (case, i, corpus[i], a.tokens, b.tokens)
        assert a.tokens == b.tokens, (case, i, corpus[i])
        assert [tuple(x) for x in a.offsets] == b.offsets, (case, i, corpus[i], a.offsets, b.offsets)
    for skip in (True, False):
        rd = ref.decode_batch([e.ids for e in r], skip_special_tokens=skip)
        od = mine.decode_batch([e.ids for e in r], skip_special_tokens=skip)
        for i, (x, y) in enumerate(zip(rd, od)):
            assert x == y, (case, skip, i, corpus[i])
    pr = ref.encode_batch(list(zip(corpus[:300], corpus[1:301])))
    po = mine.encode_batch(corpus[:300], corpus[1:301])
    assert [(e.ids, e.type_ids) for e in pr] == [(e.ids, e.type_ids) for e in po]


def test_pad_token_from_side_files(ours, train_lines, tmp_path):
    import json

    t = _bpe(train_lines)
    t.add_special_tokens(["<|pad|>"])
    pad_id = t.token_to_id("<|pad|>")
    t.save(str(tmp_path / "tokenizer.json"))
    mine = ours.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    assert mine.encode_batch(["a", "a b c d"], padding="longest")[0].ids[-1] != pad_id
    (tmp_path / "special_tokens_map.json").write_text(json.dumps({"pad_token": {"content": "<|pad|>"}}))
    mine = ours.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    enc = mine.encode_batch(["a", "a b c d"], padding="longest")
    assert enc[0].ids[-1] == pad_id and enc[0].attention_mask[-1] == 0
    assert len(enc[0].ids) == len(enc[1].ids)
