"""Where a float32 T5 / BART keeps its weights on the CPU.

A lone request's decoder step reads every decoder matrix and the vocabulary
projection once, so the weights' pages matter: the loader copies a float32
T5 / BART checkpoint into one anonymous, read-only region offered to 2 MB
pages (st_loader.h, Placement::Copy) instead of using the file's 4 KB
page-cache pages in place.  The copy must count in the process's resident set
from the load on (what the memory manager measures), leave no mapping of the
file behind, give the same tokens as transformers, and be given back when the
model is released.  An int8 load keeps the file mapping (its float weights are
replaced at load).

Each case runs in a fresh interpreter so that its resident-set figures are its
own.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

from test_generate_helpers import hf_generate, torch

HERE = os.path.dirname(os.path.abspath(__file__))
MIB = 1 << 20

CHILD = textwrap.dedent("""
    import json, os, sys
    import torch
    sys.path.insert(0, {here!r})
    from test_generate_helpers import Generator

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def regions():
        # (size, path, VmFlags) of every mapping
        out, cur = [], None
        for line in open("/proc/self/smaps"):
            head = line.split()
            if "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
                lo, hi = (int(x, 16) for x in head[0].split("-"))
                cur = [hi - lo, head[5] if len(head) > 5 else "", ""]
                out.append(cur)
            elif head[0] == "VmFlags:":
                cur[2] = " ".join(head[1:])
        return out

    path, dtype, ids = {path!r}, {dtype!r}, {ids!r}
    weights = os.path.getsize(os.path.join(path, "model.safetensors"))
    warm = Generator({warm!r}, dtype=dtype)  # first-load costs (oneDNN, allocator) outside the figures
    warm.generate([[0, 17, 2]], max_new_tokens=2)
    warm.close()
    before = rss()
    g = Generator(path, dtype=dtype)
    loaded = rss()
    file_mapped = any(p.endswith("model.safetensors") and os.path.dirname(p) == path
                      for _, p, _ in regions())
    huge = [s for s, p, fl in regions() if not p and s >= 0.9 * weights and "hg" in fl.split()]
    toks = g.generate([ids], max_new_tokens=8, num_beams=1)[0][0]
    used = rss()
    g.close()
    after = rss()
    huge_after = [s for s, p, fl in regions() if not p and s >= 0.9 * weights and "hg" in fl.split()]
    print(json.dumps(dict(weights=weights, before=before, loaded=loaded, used=used, after=after,
                          file_mapped=file_mapped, huge=huge, huge_after=huge_after, tokens=toks)))
""")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A BART with ~40 MB of weights (a 40,000-token vocabulary) and a tiny one to warm up."""
    from transformers import BartConfig, BartForConditionalGeneration
    d = tmp_path_factory.mktemp("placement")
    out = {}
    for name, vocab, dm in (("big", 40000, 256), ("warm", 300, 32)):
        torch.manual_seed(1)
        cfg = BartConfig(vocab_size=vocab, d_model=dm, encoder_layers=1, decoder_layers=2,
                         encoder_attention_heads=4, decoder_attention_heads=4,
                         encoder_ffn_dim=2 * dm, decoder_ffn_dim=2 * dm, max_position_embeddings=64,
                         init_std=0.5)
        m = BartForConditionalGeneration(cfg).eval()
        p = str(d / name)
        m.save_pretrained(p)
        out[name] = (p, m)
    return out


def child(models, dtype, ids):
    path, warm = models["big"][0], models["warm"][0]
    code = CHILD.format(here=HERE, path=path, warm=warm, dtype=dtype, ids=ids)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_float32_bart_weights_are_an_anonymous_huge_page_copy_given_back_on_release(models):
    ids = [0, 1234, 37, 9000, 512, 2]
    o = child(models, "auto", ids)
    w = o["weights"]
    assert w > 35 * MIB
    # resident from the load on (the memory manager measures this), in a 2 MB-advised region,
    # with no mapping of the file left
    assert o["loaded"] - o["before"] >= 0.9 * w, o
    assert o["huge"], o
    assert not o["file_mapped"], o
    # the same tokens as transformers
    model = models["big"][1]
    with torch.inference_mode():
        ref = hf_generate(model, ids, max_new_tokens=8, num_beams=1, do_sample=False)[0]
    assert o["tokens"] == ref, (o["tokens"], ref)
    # released: the copy is unmapped
    assert o["used"] - o["after"] >= 0.9 * w, o
    assert not o["huge_after"], o


def test_int8_keeps_the_file_mapping(models):
    o = child(models, "int8", [0, 1234, 37, 9000, 512, 2])
    assert o["file_mapped"], o
    assert not o["huge"], o
