"""ctypes bindings to libmm_torch.so's generation ABI (csrc/torch/mm_torch_gen.h)
and the tiny seeded models the generation tests share.

The library is $MM_TORCH_LIB when set, else the newest of pymodelmgr/
(where `make build` / `python3 setup.py build_ext --inplace` copies it) and
build/*/pymodelmgr/ (a `cmake --build ... --target mm_torch` in progress).
Tests skip when it is missing or was built without the generation entry
points.
"""
import ctypes
import glob
import json
import os

import pytest

torch = pytest.importorskip("torch")  # libtorch must be loaded before the shim
transformers = pytest.importorskip("transformers")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

EARLY = {False: 0, True: 1, "never": 2}


class LoadParams(ctypes.Structure):
    _fields_ = [("device", ctypes.c_char_p), ("dtype", ctypes.c_char_p),
                ("num_threads", ctypes.c_int)]


class Info(ctypes.Structure):
    _fields_ = [("arch", ctypes.c_char_p), ("device", ctypes.c_char_p),
                ("dtype", ctypes.c_char_p), ("vocab_size", ctypes.c_int64),
                ("decoder_start_token_id", ctypes.c_int64), ("eos_token_id", ctypes.c_int64),
                ("pad_token_id", ctypes.c_int64), ("bos_token_id", ctypes.c_int64),
                ("max_input_length", ctypes.c_int64), ("hard_input_limit", ctypes.c_int64),
                ("max_length_limit", ctypes.c_int64), ("memory_bytes", ctypes.c_uint64)]


class Params(ctypes.Structure):
    _fields_ = [("max_length", ctypes.c_int64), ("max_new_tokens", ctypes.c_int64),
                ("min_length", ctypes.c_int64), ("min_new_tokens", ctypes.c_int64),
                ("num_beams", ctypes.c_int64), ("length_penalty", ctypes.c_double),
                ("early_stopping", ctypes.c_int), ("no_repeat_ngram_size", ctypes.c_int64),
                ("repetition_penalty", ctypes.c_double),
                ("forced_bos_token_id", ctypes.c_int64),
                ("forced_eos_token_id", ctypes.c_int64), ("do_sample", ctypes.c_int),
                ("temperature", ctypes.c_double), ("top_k", ctypes.c_int64),
                ("top_p", ctypes.c_double), ("seed", ctypes.c_int64),
                ("num_return_sequences", ctypes.c_int64), ("min_p", ctypes.c_double)]


class Result(ctypes.Structure):
    _fields_ = [("n_sequences", ctypes.c_size_t), ("num_return_sequences", ctypes.c_size_t),
                ("ids", ctypes.POINTER(ctypes.c_int64)),
                ("offsets", ctypes.POINTER(ctypes.c_size_t)),
                ("scores", ctypes.POINTER(ctypes.c_float)),
                ("finish", ctypes.POINTER(ctypes.c_uint8))]


def find_lib():
    if os.environ.get("MM_TORCH_LIB"):
        return os.environ["MM_TORCH_LIB"]
    cands = [os.path.join(ROOT, "pymodelmgr", "libmm_torch.so")]
    cands += glob.glob(os.path.join(ROOT, "build", "*", "pymodelmgr", "libmm_torch.so"))
    cands = [c for c in cands if os.path.exists(c)]
    return max(cands, key=os.path.getmtime) if cands else None


_LIB = None


def lib():
    global _LIB
    if _LIB is not None:
        return _LIB
    path = find_lib()
    if path is None:
        pytest.skip("libmm_torch.so not built (make build)")
    import torch  # noqa: F401 - loads libc10/libtorch, which the shim needs (its RUNPATH
    #              is relative to an installed pymodelmgr, not to this source tree)
    L = ctypes.CDLL(path)
    if not hasattr(L, "mm_torch_gen_run"):
        pytest.skip(f"{path} has no generation entry points")
    L.mm_torch_gen_load.argtypes = [ctypes.c_char_p, ctypes.POINTER(LoadParams),
                                    ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p,
                                    ctypes.c_size_t]
    L.mm_torch_gen_info_get.argtypes = [ctypes.c_void_p, ctypes.POINTER(Info)]
    L.mm_torch_gen_default_params.argtypes = [ctypes.c_void_p, ctypes.POINTER(Params)]
    L.mm_torch_gen_default_params.restype = None
    L.mm_torch_gen_check_params.argtypes = [ctypes.c_void_p, ctypes.POINTER(Params),
                                            ctypes.c_char_p, ctypes.c_size_t]
    L.mm_torch_gen_run.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.POINTER(ctypes.c_int64)),
                                   ctypes.POINTER(ctypes.c_size_t), ctypes.c_size_t,
                                   ctypes.POINTER(Params), ctypes.POINTER(ctypes.POINTER(Result)),
                                   ctypes.c_char_p, ctypes.c_size_t]
    L.mm_torch_gen_result_free.argtypes = [ctypes.POINTER(Result)]
    L.mm_torch_gen_result_free.restype = None
    L.mm_torch_gen_free.argtypes = [ctypes.c_void_p]
    L.mm_torch_gen_free.restype = None
    _LIB = L
    return L


ERR_NAMES = {-1: "INVALID_ARGUMENT", -4: "MODEL_LOAD_FAILED", -14: "UNSUPPORTED_ARCHITECTURE",
             -22: "PARSE_ERROR", -23: "UNSUPPORTED", -25: "INTERNAL_ERROR"}


class GenError(Exception):
    def __init__(self, code, msg):
        super().__init__(f"{ERR_NAMES.get(code, code)}: {msg}")
        self.code = code
        self.name = ERR_NAMES.get(code, str(code))
        self.msg = msg


class Generator:
    """One loaded model behind the C ABI."""

    def __init__(self, path, device="cpu", dtype="auto"):
        self.h = None
        self.L = lib()
        p = LoadParams(device.encode(), dtype.encode(), 0)
        h = ctypes.c_void_p()
        err = ctypes.create_string_buffer(1024)
        rc = self.L.mm_torch_gen_load(path.encode(), ctypes.byref(p), ctypes.byref(h), err, 1024)
        if rc != 0:
            raise GenError(rc, err.value.decode())
        self.h = h

    def close(self):
        if self.h:
            self.L.mm_torch_gen_free(self.h)
            self.h = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def info(self):
        i = Info()
        assert self.L.mm_torch_gen_info_get(self.h, ctypes.byref(i)) == 0
        return i

    def params(self, **kw):
        p = Params()
        self.L.mm_torch_gen_default_params(self.h, ctypes.byref(p))
        for k, v in kw.items():
            if k == "early_stopping":
                v = EARLY[v]
            elif v is None:
                v = -1
            elif isinstance(v, bool):
                v = int(v)
            setattr(p, k, v)
        return p

    def generate(self, inputs, **kw):
        """inputs: list of id lists.  Returns a list (per input) of lists
        (per return sequence) of generated ids (decoder start excluded)."""
        p = self.params(**kw)
        n = len(inputs)
        arrs = [(ctypes.c_int64 * max(1, len(x)))(*x) for x in inputs]
        ptrs = (ctypes.POINTER(ctypes.c_int64) * max(1, n))(
            *[ctypes.cast(a, ctypes.POINTER(ctypes.c_int64)) for a in arrs])
        lens = (ctypes.c_size_t * max(1, n))(*[len(x) for x in inputs])
        res = ctypes.POINTER(Result)()
        err = ctypes.create_string_buffer(1024)
        rc = self.L.mm_torch_gen_run(self.h, ptrs, lens, n, ctypes.byref(p), ctypes.byref(res),
                                     err, 1024)
        if rc != 0:
            raise GenError(rc, err.value.decode())
        r = res.contents
        out, k = [], 0
        nrs = r.num_return_sequences
        for i in range(n):
            row = []
            for _ in range(nrs):
                a, b = r.offsets[k], r.offsets[k + 1]
                row.append([r.ids[j] for j in range(a, b)])
                k += 1
            out.append(row)
        self.L.mm_torch_gen_result_free(res)
        return out


# ---- tiny models ----
#
# Random models are degenerate (the same token forever, never an EOS), which
# would leave most of the decoding rules untested.  The helpers below give
# them a spread of next-token choices (a larger init for T5 v1.0, a random
# final_logits_bias for BART) and point the EOS row of the output projection
# at the mean decoder state, so that roughly a third of greedy runs stop
# early.  The constants were tuned once for these seeds.

def _decoder_direction(m, vocab, t5):
    g = torch.Generator().manual_seed(123)
    hs = []
    with torch.no_grad():
        for _ in range(10):
            ids = torch.randint(3, vocab, (1, 12), generator=g)
            dec = torch.randint(3, vocab, (1, 12), generator=g)
            if t5:
                enc = m.encoder(input_ids=ids).last_hidden_state
                h = m.decoder(input_ids=dec, encoder_hidden_states=enc).last_hidden_state
            else:
                enc = m.model.encoder(input_ids=ids).last_hidden_state
                h = m.model.decoder(input_ids=dec, encoder_hidden_states=enc).last_hidden_state
            hs.append(h[0])
    mu = torch.cat(hs).mean(0)
    return mu / mu.norm()


def make_t5(path, gated, vocab=256, seed=0, eos_gain=None, emb_scale=None, head_std=None,
            **config):
    """T5 v1.0 (ReLU, tied embedding, d_model^-0.5 output scale) or v1.1
    (gated GELU, an lm_head of its own); config adds T5Config settings."""
    from transformers import T5Config, T5ForConditionalGeneration
    torch.manual_seed(seed)
    cfg = T5Config(vocab_size=vocab, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                   relative_attention_num_buckets=8, relative_attention_max_distance=20,
                   feed_forward_proj="gated-gelu" if gated else "relu",
                   initializer_factor=1.0 if gated else 3.0,
                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, **config)
    m = T5ForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        if gated:  # v1.1: untie the output projection
            std = 0.5 if head_std is None else head_std
            m.lm_head.weight = torch.nn.Parameter(torch.randn(vocab, 32) * std)
            m.config.scale_decoder_outputs = False
        else:
            m.shared.weight.mul_(0.4 if emb_scale is None else emb_scale)
        gain = eos_gain if eos_gain is not None else (4.0 if gated else 4.5)
        m.lm_head.weight[1] = gain * _decoder_direction(m, vocab, True)
    m.save_pretrained(path)
    return m


def make_bart(path, vocab=256, seed=0, max_pos=64, generation=None, eos_bias=4.5):
    """BART shaped like bart-large-cnn: decoder start </s>, forced <s>, forced
    </s> at max_length - 1, a final_logits_bias; `generation` adds settings
    to its generation_config.json."""
    from transformers import BartConfig, BartForConditionalGeneration
    torch.manual_seed(seed)
    cfg = BartConfig(vocab_size=vocab, d_model=32, encoder_layers=2, decoder_layers=2,
                     encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                     decoder_ffn_dim=64, max_position_embeddings=max_pos, init_std=0.5)
    m = BartForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        m.final_logits_bias.normal_(0, 0.5)
        m.final_logits_bias[0, 2] = eos_bias
    m.generation_config.forced_bos_token_id = 0
    for k, v in (generation or {}).items():
        setattr(m.generation_config, k, v)
    m.save_pretrained(path)
    return m


def prompts(n, vocab, kind, seed=1, lo=1, hi=40):
    """n id lists of varied length shaped like the tokenizer's output:
    T5 ends with </s>=1; BART is <s>=0 ... </s>=2."""
    import random
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        k = rnd.randint(lo, hi)
        body = [rnd.randrange(3, vocab) for _ in range(k)]
        out.append(body + [1] if kind == "t5" else [0] + body + [2])
    return out


def strip(seq, eos, pad):
    """A transformers output row minus the decoder start token and trailing
    padding (everything after the first EOS)."""
    seq = list(seq)[1:]
    if eos in seq:
        seq = seq[: seq.index(eos) + 1]
    return seq


def hf_generate(model, ids, **kw):
    out = model.generate(torch.tensor([ids]), **kw)
    eos = model.generation_config.eos_token_id
    pad = model.generation_config.pad_token_id
    return [strip(r.tolist(), eos, pad) for r in out]


def hf_generate_beside(model, ids, other, **kw):
    """hf_generate for `ids` run in one padded batch with `other`: the same
    request through the reference's own arithmetic, moved in the last bits by
    the batch's shapes.  Returns ids' sequences."""
    pad = model.generation_config.pad_token_id
    rows = [torch.tensor(ids), torch.tensor(other)]
    batch = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True, padding_value=pad)
    mask = torch.zeros_like(batch, dtype=torch.bool)
    for i, r in enumerate(rows):
        mask[i, :len(r)] = True
    out = model.generate(input_ids=batch, attention_mask=mask, **kw)
    eos = model.generation_config.eos_token_id
    per = kw.get("num_return_sequences", 1)
    return [strip(r.tolist(), eos, pad) for r in out[:per]]


def reference_tie(model, ids, ours, companions, **kw):
    """True when the reference itself produces `ours` for `ids` once the
    request shares a batch with one of `companions`: the two results tie to
    float32 rounding, and which one comes out depends on summation order."""
    return any(hf_generate_beside(model, ids, c, **kw) == ours for c in companions)


# ---- tiny tokenizers of each kind ----

def train_bart_tokenizer(corpus, vocab_size=320, model_max_length=None):
    """A byte-level BPE trained on corpus with `tokenizers`, wrapped the way
    BART's is: <s>=0 <pad>=1 </s>=2 <unk>=3 <mask>=4, <s> ... </s> framing."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size,
                                  special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    kw = {} if model_max_length is None else {"model_max_length": model_max_length}
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", unk_token="<unk>", mask_token="<mask>", **kw)


def train_t5_tokenizer(workdir, corpus, vocab_size=60, extra_ids=0, model_max_length=None):
    """A sentencepiece Unigram (pad=0 </s>=1 <unk>=2, nmt_nfkc charsmap)
    trained on corpus in workdir, converted by transformers' T5TokenizerFast
    (so tokenizer.json carries the precompiled charsmap).  The conversion
    goes through from_pretrained on a folder holding spiece.model:
    transformers 5 ignores T5TokenizerFast(vocab_file=...) and builds a
    4-token vocabulary."""
    import shutil
    import sentencepiece as spm
    from transformers import T5TokenizerFast
    os.makedirs(str(workdir), exist_ok=True)
    text = os.path.join(str(workdir), "corpus.txt")
    with open(text, "w", encoding="utf-8") as f:
        f.write("\n".join(corpus) + "\n")
    prefix = os.path.join(str(workdir), "sp")
    spm.SentencePieceTrainer.train(input=text, model_prefix=prefix, vocab_size=vocab_size,
                                   model_type="unigram", pad_id=0, eos_id=1, unk_id=2, bos_id=-1,
                                   character_coverage=1.0, num_threads=1, minloglevel=2)
    spm_dir = os.path.join(str(workdir), "spm")
    os.makedirs(spm_dir, exist_ok=True)
    shutil.copy(prefix + ".model", os.path.join(spm_dir, "spiece.model"))
    kw = {} if model_max_length is None else {"model_max_length": model_max_length}
    tok = T5TokenizerFast.from_pretrained(spm_dir, extra_ids=extra_ids, **kw)
    assert len(tok) == vocab_size + extra_ids, len(tok)
    return tok
