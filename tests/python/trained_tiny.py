"""Tiny generation models whose next-token logits are separated, not nearly tied as in the
random test models, for measuring how often reduced precision changes a greedy output.

A random tiny model's top two logits are often within the noise of any reduced precision, so
greedy agreement between float32 and int8 (or bfloat16) on it says little.  A trained model
makes confident predictions: agreement on it measures the quantization, not the ties.  Used by
tests/python/test_dtype_generate.py and benchmarks/bench_int8_accuracy.py.

- train_qwen2: a Qwen2-shaped decoder-only model trained for 300 steps on `BOS x_1 .. x_n SEP
  x_n .. x_1 EOS` (reverse a sequence of ids; loss on the part after SEP).  It learns the task.
- train_bart: a BART of d_model 64 trained for 400 steps on the same task as an encoder-decoder.
  It learns the output's format and length, not the reversal (a few hundred steps are too few
  for an encoder-decoder on this task), but its outputs are confident.
- train_t5: the T5 v1.1 test model (test_generate_helpers.make_t5) fine-tuned for 150 steps on
  its own greedy outputs (sharpen(): self-distillation with hard labels), which keeps the
  random model's behaviour and widens its logit margins.
Each takes 10-20 s on one quiet core; the seeds fix the weights."""
import random

import torch

FIRST = 4  # ids below this are specials (pad/bos, eos, sep)
SEP = 3


def reverse_examples(n, vocab, seed, lo=3, hi=10):
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        k = rnd.randint(lo, hi)
        out.append([rnd.randrange(FIRST, vocab) for _ in range(k)])
    return out


def _train(model, batches, steps, lr):
    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    loss = None
    for i in range(steps):
        kw = batches(i)
        loss = model(**kw).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    return float(loss.detach())


def _pad(rows, value):
    L = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (L - len(r)) for r in rows])


def train_bart(path, vocab=48, steps=400, seed=0):
    """A BART of d_model 64 (bos 0, pad 1, eos 2, decoder start = eos, forced bos), trained
    to reverse; saved in path.  Returns the final training loss."""
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    cfg = BartConfig(vocab_size=vocab, d_model=64, encoder_layers=2, decoder_layers=2,
                     encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128,
                     decoder_ffn_dim=128, max_position_embeddings=64, dropout=0.0,
                     attention_dropout=0.0, activation_dropout=0.0, forced_bos_token_id=None,
                     forced_eos_token_id=None)
    m = BartForConditionalGeneration(cfg)

    def batches(i):
        xs = reverse_examples(64, vocab, seed=1000 + i)
        src = [[0] + x + [2] for x in xs]
        tgt = [[0] + x[::-1] + [2] for x in xs]  # BART's labels start with <s>
        return dict(input_ids=_pad(src, 1), attention_mask=_pad([[1] * len(s) for s in src], 0),
                    labels=_pad(tgt, -100))
    loss = _train(m, batches, steps, 5e-3)
    m.generation_config.forced_bos_token_id = None
    m.generation_config.forced_eos_token_id = None
    m.save_pretrained(path)
    return loss


def train_qwen2(path, vocab=48, steps=300, seed=0):
    """A Qwen2-shaped decoder-only model (hidden 64, 2 layers, GQA 4/2 heads) trained on
    `BOS x SEP reversed(x) EOS`; saved in path.  Returns the final training loss."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    torch.set_num_threads(1)
    cfg = Qwen2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=64, bos_token_id=0, eos_token_id=1,
                      pad_token_id=1, tie_word_embeddings=False)
    m = Qwen2ForCausalLM(cfg)

    def batches(i):
        xs = reverse_examples(64, vocab, seed=1000 + i)
        rows, labs = [], []
        for x in xs:
            p = [0] + x + [SEP]
            rows.append(p + x[::-1] + [1])
            labs.append([-100] * len(p) + x[::-1] + [1])
        return dict(input_ids=_pad(rows, 1), attention_mask=_pad([[1] * len(r) for r in rows], 0),
                    labels=_pad(labs, -100))
    loss = _train(m, batches, steps, 3e-3)
    m.generation_config.max_length = None
    m.save_pretrained(path)
    return loss


def sharpen(path, kind, vocab=256, steps=150, seed=0, n=512, new=16):
    """A tiny random test model (test_generate_helpers.make_t5 v1.1 / make_bart) fine-tuned on
    its own greedy outputs for random prompts (self-distillation with hard labels): its
    behaviour stays the random model's, but the margin between its top two logits grows from
    noise-level to a trained model's, so greedy agreement on it measures the quantization,
    not the ties.  Saved in path; returns the final training loss."""
    import test_generate_helpers as H

    torch.set_num_threads(1)
    m = H.make_t5(path, gated=True, vocab=vocab, seed=seed) if kind == "t5" else \
        H.make_bart(path, vocab=vocab, seed=seed)
    gc = m.generation_config
    eos, pad = gc.eos_token_id, gc.pad_token_id
    src = H.prompts(n, vocab, kind, seed=100 + seed)
    labels = []
    with torch.no_grad():
        for i in range(0, n, 64):
            rows = src[i:i + 64]
            ids = _pad(rows, pad)
            mask = _pad([[1] * len(r) for r in rows], 0)
            out = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new,
                             do_sample=False, num_beams=1)
            for r in out.tolist():
                labels.append(H.strip(r, eos, pad))

    def batches(i):
        rnd = random.Random(i)
        pick = [rnd.randrange(n) for _ in range(32)]
        return dict(input_ids=_pad([src[j] for j in pick], pad),
                    attention_mask=_pad([[1] * len(src[j]) for j in pick], 0),
                    labels=_pad([labels[j] for j in pick], -100))
    loss = _train(m, batches, steps, 1e-3)
    m.save_pretrained(path)
    return loss


def train_t5(path, steps=150, seed=0):
    """The T5 v1.1 test model (vocab 256) sharpened on its own greedy outputs (sharpen())."""
    return sharpen(path, "t5", steps=steps, seed=seed)


def prompts(kind, n, vocab=48, seed=7):
    """n prompts (id lists) for the model of train_<kind>, drawn with a seed the training did
    not use."""
    if kind == "t5":
        import test_generate_helpers as H

        return H.prompts(n, 256, "t5", seed=seed)
    xs = reverse_examples(n, vocab, seed=seed)
    if kind == "bart":
        return [[0] + x + [2] for x in xs]
    return [[0] + x + [SEP] for x in xs]


def first_divergence(a, b):
    """The index of the first token where a and b differ; None when they are equal."""
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def agreement(ref, other):
    """ref, other: lists of generated id lists.  Returns (sequences equal, n, token agreement
    (tokens equal at the same position / reference tokens), first divergence positions)."""
    same = sum(1 for a, b in zip(ref, other) if a == b)
    tok = sum(sum(1 for x, y in zip(a, b) if x == y) for a, b in zip(ref, other))
    total = sum(len(a) for a in ref)
    firsts = [first_divergence(a, b) for a, b in zip(ref, other)]
    return same, len(ref), tok / max(1, total), [f for f in firsts if f is not None]
