"""Token-exact parity of native T5 / BART generation (libmm_torch.so, C ABI in
csrc/torch/mm_torch_gen.h) with transformers' generate().

Three tiny seeded models are made here and saved with save_pretrained
(safetensors): T5 v1.0 (ReLU, tied embedding with the d_model^-0.5 output
scale), T5 v1.1 (gated GELU, own lm_head) and BART shaped like bart-large-cnn
(decoder start </s>, forced <s>, forced </s> at max_length - 1,
final_logits_bias, beam settings in generation_config.json).  Prompts are id
lists of varied length shaped like their tokenizers' output.

The reference is `model.generate()` on each prompt alone.  Ours must equal it
token for token for a lone request.  A lone request's decoder steps run their
matrix products and attention through the shim's own kernels
(csrc/torch/mmt_skinny.c, mmt_attend.c), whose summation order differs from
MKL's and sdpa's, so logits may differ from the reference's in the last bit; where two hypotheses tie to that precision one
or the other comes out.  Such a difference passes only when the reference
itself produces our tokens for the same prompt batched beside another one
(its own arithmetic moved by the batch's shapes), and at most once per test.
Ours also runs the prompts shuffled, in mixed batches of different sizes.
The shim decodes a batch in groups of at most 64 rows a step, through its
own kernels, which compute every row the same way whatever shares its group;
only the encoder, batched through MKL, still sees the batch's shapes.  So
batched results must equal lone ones.
"""
import random

import pytest

from test_generate_helpers import (Generator, hf_generate, make_bart, make_t5, prompts,
                                   reference_tie, torch)

N = 52  # prompts per model for greedy and the main beam setting

CNN_LIKE = dict(num_beams=4, length_penalty=2.0, max_length=30, min_length=6,
                no_repeat_ngram_size=3, early_stopping=True)

BEAM_MAIN = dict(num_beams=4, length_penalty=2.0, no_repeat_ngram_size=3, min_length=8,
                 early_stopping=True, max_length=30)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from transformers import AutoModelForSeq2SeqLM
    d = tmp_path_factory.mktemp("gen")
    out = {}
    for kind in ("t5", "t5g", "bart"):
        path = str(d / kind)
        if kind == "bart":
            make_bart(path, generation=CNN_LIKE)
        else:
            make_t5(path, kind == "t5g")
        ref = AutoModelForSeq2SeqLM.from_pretrained(path).eval()
        out[kind] = (ref, Generator(path), prompts(N, 256, "bart" if kind == "bart" else "t5",
                                                  seed={"t5": 1, "t5g": 2, "bart": 3}[kind]))
    yield out
    for _, g, _ in out.values():
        g.close()  # free the weights before libtorch's own teardown


def mixed_batches(g, ps, kw, seed=0):
    """Runs ps through g shuffled, in batches of 1, 5, 13 and the rest."""
    order = list(range(len(ps)))
    random.Random(seed).shuffle(order)
    res = [None] * len(ps)
    i = 0
    for size in (1, 5, 13, len(ps)):
        chunk = order[i:i + size]
        if not chunk:
            break
        out = g.generate([ps[k] for k in chunk], **kw)
        for k, o in zip(chunk, out):
            res[k] = o
        i += size
    return res


def check(models, kind, kw, n=N, seed=0):
    ref, g, ps = models[kind]
    ps = ps[:n]
    batched = mixed_batches(g, ps, kw, seed)
    companions = sorted(ps, key=len)
    companions = [companions[0], companions[-1]]  # the shortest and the longest
    bad, ties, flips = [], [], 0
    for p, b in zip(ps, batched):
        theirs = hf_generate(ref, p, **kw)
        alone = g.generate([p], **kw)[0]
        if alone != theirs:
            others = [c for c in companions if c != p]
            (ties if reference_tie(ref, p, alone, others, **kw) else bad).append((p, alone, theirs))
        flips += b != alone
    assert not bad, f"{len(bad)}/{len(ps)} differ; first: prompt {bad[0][0]}\n ours {bad[0][1]}\n" \
                    f" hf   {bad[0][2]}"
    assert len(ties) <= 1, f"{len(ties)}/{len(ps)} lone results differ from the reference " \
                           f"(each a tie the reference also flips in a batch)"
    # The decoder computes a row the same way whatever shares its batch
    # (module docstring).
    assert flips == 0, f"{flips}/{len(ps)} batched results differ from lone ones"
    return batched


KINDS = ["t5", "t5g", "bart"]


@pytest.mark.parametrize("kind", KINDS)
def test_greedy(models, kind):
    out = check(models, kind, dict(num_beams=1))
    lens = [len(o[0]) for o in out]
    assert min(lens) < max(lens)  # some stop at EOS, some run to max_length


@pytest.mark.parametrize("kind", KINDS)
def test_beam_early_stopping_true(models, kind):
    check(models, kind, BEAM_MAIN)


@pytest.mark.parametrize("kind", KINDS)
def test_beam_early_stopping_false(models, kind):
    check(models, kind, dict(BEAM_MAIN, early_stopping=False), n=20, seed=1)


@pytest.mark.parametrize("kind", ["t5", "bart"])
def test_beam_never_with_several_returns(models, kind):
    out = check(models, kind, dict(num_beams=4, early_stopping="never", length_penalty=1.0,
                                   max_length=24, num_return_sequences=3), n=12, seed=2)
    assert all(len(o) == 3 for o in out)


@pytest.mark.parametrize("kind", ["t5g", "bart"])
def test_beam_negative_length_penalty_and_repetition_penalty(models, kind):
    check(models, kind, dict(num_beams=3, length_penalty=-0.5, repetition_penalty=1.3,
                             early_stopping=False, max_length=25), n=12, seed=3)


def test_bart_defaults_come_from_generation_config(models):
    """No kwargs: beam 4, length_penalty 2.0, min/max length, no-repeat 3,
    early stopping, forced <s> and </s>, all from generation_config.json."""
    ref, g, ps = models["bart"]
    p = g.params()
    assert (p.num_beams, p.length_penalty, p.max_length, p.min_length,
            p.no_repeat_ngram_size, p.early_stopping) == (4, 2.0, 30, 6, 3, 1)
    out = check(models, "bart", {}, n=20, seed=4)
    for o in out:
        assert o[0][0] == 0 and o[0][-1] == 2  # forced <s> first, </s> last


@pytest.mark.parametrize("kind", ["t5", "bart"])
@pytest.mark.parametrize("new", [1, 2, 3])
def test_beam_search_ending_within_its_first_steps(models, kind, new):
    """On the CPU a request's beams are one row while they hold the same
    tokens (the first step; BART's forced <s> keeps them equal for the
    second): searches that end there, and requests that end while others go
    on, must still match."""
    kw = dict(num_beams=4, max_new_tokens=new, min_length=0, early_stopping=True)
    check(models, kind, kw, n=12, seed=10 + new)


@pytest.mark.parametrize("kind", ["t5", "bart"])
def test_new_token_limits(models, kind):
    check(models, kind, dict(num_beams=1, max_new_tokens=7, min_new_tokens=3), n=12, seed=5)


@pytest.mark.parametrize("kind", KINDS)
def test_seeded_sampling_matches_the_reference_stream(models, kind):
    """A request with seed s draws what transformers draws after
    torch.manual_seed(s) for that prompt alone."""
    ref, g, ps = models[kind]
    kw = dict(do_sample=True, num_beams=1, temperature=0.8, top_k=20, top_p=0.9)
    mine = mixed_batches(g, ps[:16], dict(kw, seed=1234), seed=6)
    for p, m in zip(ps[:16], mine):
        torch.manual_seed(1234)
        assert m == hf_generate(ref, p, **kw)


@pytest.mark.parametrize("kind", ["t5g", "bart"])
def test_seeded_sampling_several_returns(models, kind):
    ref, g, ps = models[kind]
    kw = dict(do_sample=True, num_beams=1, num_return_sequences=3)
    mine = mixed_batches(g, ps[:10], dict(kw, seed=99), seed=7)
    for p, m in zip(ps[:10], mine):
        torch.manual_seed(99)
        assert m == hf_generate(ref, p, **kw)


def test_seeded_beam_sampling(models):
    ref, g, ps = models["t5"]
    kw = dict(do_sample=True, num_beams=3, max_length=20)
    mine = mixed_batches(g, ps[:10], dict(kw, seed=5), seed=8)
    for p, m in zip(ps[:10], mine):
        torch.manual_seed(5)
        assert m == hf_generate(ref, p, **kw)


@pytest.mark.parametrize("kw", [dict(max_length=20),
                                dict(num_beams=4, num_return_sequences=2, max_length=20,
                                     no_repeat_ngram_size=3),
                                dict(do_sample=True, seed=5, num_return_sequences=2, max_length=20)],
                         ids=["greedy", "beam", "sample"])
def test_requests_split_across_threads_come_back_in_order(models, kw):
    """With 2 intra-op threads a CPU call deals its requests into 2 groups
    that decode concurrently; the merged result is in request order, with each
    request's return sequences together, and equal to the 1-thread run."""
    _, g, ps = models["t5g"]
    ps = ps[:11]
    prev = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = g.generate(ps, **kw)
        torch.set_num_threads(2)
        two = g.generate(ps, **kw)
    finally:
        torch.set_num_threads(prev)
    assert [len(r) for r in two] == [kw.get("num_return_sequences", 1)] * len(ps)
    assert two == one
