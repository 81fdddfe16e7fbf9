"""Tiny seeded decoder-only models and their tokenizers for the LLM tests.

`make_llm(path, kind)` writes a random model of one of the families the
native decoder runs (config.json, weights, generation_config.json) with a
tokenizer of the family's kind, and returns (model, tokenizer) loaded back
from those files in float32 (the reference transformers runs).

Tokenizers, trained here with `tokenizers` on a small corpus:

* "spm": sentencepiece-style BPE with byte fallback, as Llama 2, Mistral and
  Phi-3 ship it: Prepend("▁") + Replace(" ", "▁") normalizer, <unk> <s> </s>
  then the 256 <0xNN> byte pieces, a ByteFallback / Fuse / Strip decoder, and
  <s> prepended by the post-processor.  Characters the training corpus never
  saw (CJK, emoji) encode as bytes.
* "gemma": the same model without the prepended "▁" and without the Strip
  decoder (Gemma's layout), with <pad> <eos> <bos> <unk> first.
* "bytelevel": byte-level BPE behind Llama 3's Split regex (Qwen2 and Llama 3
  use this shape), with ChatML specials <|endoftext|> <|im_start|>
  <|im_end|>; `bos=True` prepends <|begin_of_text|> as Llama 3 does.

Random models are degenerate (one token forever, never EOS).  The weights
get a larger init so logits spread (no near-ties that flip on the last
bit), and the EOS row of the output projection is pointed at the mean final
hidden state with a gain searched here, so that a share of greedy runs stop
early and the rest run to the length limit.
"""
import contextlib
import json
import random

import torch

from tokenizer_corpus import build_corpus

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")

WORDS = ("the quick brown fox jumps over lazy dog summer river mountain city train music garden "
         "window morning evening story people water light night small great old new").split()


def corpus(n=400, seed=0):
    rnd = random.Random(seed)
    out = [" ".join(rnd.choice(WORDS) for _ in range(rnd.randint(3, 14))) + rnd.choice(".!?,")
           for _ in range(n)]
    # some Latin-1 and punctuation, never CJK or emoji (those go to byte fallback)
    return out + ["Café crème déjà vu naïve", "x = {'k': [1, 2, 3]}", "user@example.com 12345"]


def _spm_tokenizer(kind):
    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers
    from transformers import PreTrainedTokenizerFast
    gemma = kind == "gemma"
    specials = ["<pad>", "<eos>", "<bos>", "<unk>"] if gemma else ["<unk>", "<s>", "</s>"]
    t = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    norm = [normalizers.Replace(" ", "▁")]
    if not gemma:
        norm.insert(0, normalizers.Prepend("▁"))
    t.normalizer = normalizers.Sequence(norm)
    tr = trainers.BpeTrainer(vocab_size=300, special_tokens=specials, limit_alphabet=60)
    t.train_from_iterator(corpus(), tr)
    j = json.loads(t.to_str())
    vocab = j["model"]["vocab"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in j["model"]["merges"]]
    # specials, then the 256 byte pieces, then the learned pieces (Llama's order)
    order = specials + [f"<0x{i:02X}>" for i in range(256)]
    order += [p for p, _ in sorted(vocab.items(), key=lambda kv: kv[1]) if p not in specials]
    nv = {p: i for i, p in enumerate(order)}
    t = Tokenizer(models.BPE(vocab=nv, merges=merges, unk_token="<unk>", byte_fallback=True,
                             fuse_unk=True))
    t.normalizer = normalizers.Sequence(norm)
    dec = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if not gemma:
        dec.append(decoders.Strip(" ", 1, 0))
    t.decoder = decoders.Sequence(dec)
    bos = "<bos>" if gemma else "<s>"
    eos = "<eos>" if gemma else "</s>"
    t.add_special_tokens(specials)
    t.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A $B",
                                                     special_tokens=[(bos, nv[bos])])
    kw = dict(bos_token=bos, eos_token=eos, unk_token="<unk>")
    if gemma:
        kw["pad_token"] = "<pad>"
    return PreTrainedTokenizerFast(tokenizer_object=t, **kw)


def _bytelevel_tokenizer(bos):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + (["<|begin_of_text|>"] if bos else [])
    t = Tokenizer(models.BPE(ignore_merges=True))
    t.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    t.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=500, special_tokens=specials,
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    t.train_from_iterator(corpus() + build_corpus(200, seed=3), tr)
    if bos:
        t.post_processor = processors.Sequence([
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B",
                                          special_tokens=[("<|begin_of_text|>",
                                                           t.token_to_id("<|begin_of_text|>"))]),
        ])
    kw = dict(eos_token="<|im_end|>", pad_token="<|endoftext|>")
    if bos:
        kw["bos_token"] = "<|begin_of_text|>"
    return PreTrainedTokenizerFast(tokenizer_object=t, **kw)


def make_tokenizer(kind):
    if kind in ("spm", "gemma"):
        return _spm_tokenizer(kind)
    return _bytelevel_tokenizer(bos=kind == "bytelevel_bos")


# family -> (config class, model class, tokenizer kind, config extras)
BASE = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=512, initializer_range=0.08)
KINDS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", "spm", dict(tie_word_embeddings=False)),
    "llama3": ("LlamaConfig", "LlamaForCausalLM", "bytelevel_bos",
               dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
                    rope_theta=500000.0, tie_word_embeddings=True, dtype_saved="bfloat16")),
    "llama_linear": ("LlamaConfig", "LlamaForCausalLM", "spm",
                     dict(rope_scaling={"rope_type": "linear", "factor": 2.0}, max_position_embeddings=256,
                          dtype_saved="float16")),
    "llama_dynamic": ("LlamaConfig", "LlamaForCausalLM", "spm",
                      dict(rope_scaling={"rope_type": "dynamic", "factor": 4.0}, max_position_embeddings=32)),
    "mistral": ("MistralConfig", "MistralForCausalLM", "spm", dict(sliding_window=8)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", "bytelevel",
              dict(tie_word_embeddings=True, rope_theta=1000000.0)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", "bytelevel", dict(head_dim=24)),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", "gemma", dict(head_dim=16, num_key_value_heads=1)),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", "gemma",
               dict(head_dim=16, sliding_window=8, attn_logit_softcapping=20.0, final_logit_softcapping=15.0,
                    query_pre_attn_scalar=24)),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", "spm", dict(sliding_window=16, partial_rotary_factor=0.5)),
}


@contextlib.contextmanager
def one_thread():
    """One intra-op thread (and no grad) for reference runs: with two on the
    shared 2-core machine, tiny ops spin against other processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            yield
    finally:
        torch.set_num_threads(threads)


def reset_rope(model):
    """Dynamic RoPE keeps state across transformers calls (it grows its
    frequencies with the longest sequence seen): start each call fresh, as
    a request alone."""
    re = model.model.rotary_emb
    if getattr(re, "rope_type", None) == "dynamic":
        re.inv_freq = re.original_inv_freq.clone()
        re.max_seq_len_cached = re.original_max_seq_len


def hf_generate(model, tok, text, seed=None, **kw):
    """transformers on one prompt alone: (text, new ids incl. EOS)."""
    ids = tok(text, return_tensors="pt").input_ids
    reset_rope(model)
    if seed is not None:
        torch.manual_seed(seed)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), **kw)[0][ids.shape[1]:].tolist()
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [eos])
    for i, t in enumerate(out):
        if t in eos:
            out = out[:i + 1]
            break
    return tok.decode(out, skip_special_tokens=True), out


def _final_direction(m, vocab, n=8):
    g = torch.Generator().manual_seed(123)
    hs = []
    with torch.no_grad():
        for _ in range(n):
            ids = torch.randint(3, vocab, (1, 16), generator=g)
            hs.append(m.model(input_ids=ids).last_hidden_state[0])
    mu = torch.cat(hs).mean(0)
    return mu / mu.norm()


def _stop_share(m, vocab, eos, n=10):
    g = torch.Generator().manual_seed(7)
    stops = 0
    with torch.no_grad():
        for _ in range(n):
            ids = torch.randint(3, vocab, (1, int(torch.randint(2, 30, (1,), generator=g))), generator=g)
            reset_rope(m)
            out = m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=24, do_sample=False)
            stops += eos in out[0, ids.shape[1]:].tolist()
    return stops / n


def make_llm(path, kind, seed=0):
    import transformers
    cfg_name, model_name, tok_kind, extra = KINDS[kind]
    extra = dict(extra)
    saved = extra.pop("dtype_saved", None)
    tok = make_tokenizer(tok_kind)
    V = len(tok)
    eos = tok.convert_tokens_to_ids(tok.eos_token)
    ids = dict(eos_token_id=eos, pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else eos)
    if tok.bos_token is not None:
        ids["bos_token_id"] = tok.convert_tokens_to_ids(tok.bos_token)
    torch.manual_seed(seed)
    cfg = getattr(transformers, cfg_name)(vocab_size=V, **{**BASE, **extra}, **ids)
    m = getattr(transformers, model_name)(cfg).eval()
    d = _final_direction(m, V)
    w = m.lm_head.weight
    with torch.no_grad():
        base = w[eos].clone()
        for gain in (2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0):
            w[eos] = gain * d
            share = _stop_share(m, V, eos)
            if share >= 0.25:
                break
        else:
            w[eos] = base
    if kind == "qwen2":  # an eos list, as Qwen2.5 has: <|im_end|> and <|endoftext|>
        m.generation_config.eos_token_id = [eos, tok.convert_tokens_to_ids("<|endoftext|>")]
    if saved:
        m.to(getattr(torch, saved))
    m.save_pretrained(path)
    tok.save_pretrained(path)
    ref = getattr(transformers, model_name).from_pretrained(path, dtype=torch.float32).eval()
    return ref, transformers.AutoTokenizer.from_pretrained(path)
