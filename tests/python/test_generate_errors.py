"""Bad input to the native generation ABI fails with the right code and a
message naming the culprit (csrc/torch/mm_torch_gen.h)."""
import json
import os

import pytest

from test_generate_helpers import GenError, Generator, make_bart, make_t5, prompts, torch


@pytest.fixture(scope="module")
def bart(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("gen_err") / "bart")
    make_bart(path, max_pos=32)
    g = Generator(path)
    yield g
    g.close()


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("gen_err") / "t5")
    make_t5(path, False)
    g = Generator(path)
    yield g
    g.close()


def test_encoder_only_model_is_unsupported_architecture(tmp_path):
    from transformers import BertConfig, BertModel
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(str(tmp_path))
    with pytest.raises(GenError) as e:
        Generator(str(tmp_path))
    assert e.value.name == "UNSUPPORTED_ARCHITECTURE"
    assert "BertModel" in e.value.msg


def test_other_seq2seq_family_is_unsupported_architecture(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {"architectures": ["PegasusForConditionalGeneration"], "model_type": "pegasus"}))
    with pytest.raises(GenError) as e:
        Generator(str(tmp_path))
    assert e.value.name == "UNSUPPORTED_ARCHITECTURE"
    assert "Pegasus" in e.value.msg


def test_missing_directory_fails_to_load(tmp_path):
    with pytest.raises(GenError) as e:
        Generator(str(tmp_path / "nope"))
    assert e.value.name == "MODEL_LOAD_FAILED"
    assert "config.json" in e.value.msg


def test_missing_tensor_is_named(tmp_path):
    from safetensors.torch import load_file, save_file
    path = str(tmp_path / "t5")
    make_t5(path, False)
    sd = load_file(os.path.join(path, "model.safetensors"))
    del sd["decoder.final_layer_norm.weight"]
    save_file(sd, os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(GenError) as e:
        Generator(path)
    assert e.value.name == "MODEL_LOAD_FAILED"
    assert "decoder.final_layer_norm.weight" in e.value.msg


def test_unknown_dtype_is_invalid(tmp_path):
    path = str(tmp_path / "t5")
    make_t5(path, False)
    with pytest.raises(GenError) as e:
        Generator(path, dtype="int4")
    assert e.value.name == "INVALID_ARGUMENT" and "int4" in e.value.msg


@pytest.mark.parametrize("kw, word", [
    (dict(max_length=10, min_length=20), "min_length"),
    (dict(num_beams=0), "num_beams"),
    (dict(max_new_tokens=10**9), "max_new_tokens"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_length=1), "max_length"),
    (dict(num_beams=2, num_return_sequences=3), "num_return_sequences"),
    (dict(num_return_sequences=2), "num_return_sequences"),
    (dict(do_sample=True, temperature=0.0), "temperature"),
    (dict(do_sample=True, top_p=1.5), "top_p"),
    (dict(repetition_penalty=0.0), "repetition_penalty"),
    (dict(no_repeat_ngram_size=-1), "no_repeat_ngram_size"),
    (dict(forced_bos_token_id=10**6), "forced_bos_token_id"),
    (dict(early_stopping_raw=7), "early_stopping"),
])
def test_bad_params_are_invalid_argument_naming_them(bart, kw, word):
    if "early_stopping_raw" in kw:
        p = bart.params()
        p.early_stopping = kw.pop("early_stopping_raw")
        import ctypes
        err = ctypes.create_string_buffer(512)
        rc = bart.L.mm_torch_gen_check_params(bart.h, ctypes.byref(p), err, 512)
        assert rc == -1 and word in err.value.decode()
        return
    with pytest.raises(GenError) as e:
        bart.generate([[0, 5, 6, 2]], **kw)
    assert e.value.name == "INVALID_ARGUMENT"
    assert word in e.value.msg


def test_several_bad_params_are_all_named(bart):
    with pytest.raises(GenError) as e:
        bart.generate([[0, 5, 2]], num_beams=0, repetition_penalty=-1.0)
    assert "num_beams" in e.value.msg and "repetition_penalty" in e.value.msg


def test_max_new_tokens_bound_is_the_position_table(bart):
    lim = bart.info().max_length_limit
    assert lim == 33  # 32 positions: decoder start + 32 fed tokens
    out = bart.generate([[0, 5, 6, 2]], num_beams=1, max_new_tokens=lim - 1, min_length=0,
                        forced_eos_token_id=None)
    assert 1 <= len(out[0][0]) <= lim - 1
    with pytest.raises(GenError):
        bart.generate([[0, 5, 6, 2]], max_new_tokens=lim)


def test_empty_input_and_bad_ids(bart, t5):
    with pytest.raises(GenError) as e:
        bart.generate([[0, 5, 2], []])
    assert e.value.name == "INVALID_ARGUMENT" and "input 1" in e.value.msg
    with pytest.raises(GenError) as e:
        t5.generate([[5, 10**6, 1]])
    assert e.value.name == "INVALID_ARGUMENT" and "1000000" in e.value.msg
    with pytest.raises(GenError) as e:
        t5.generate([[-3, 1]])
    assert e.value.name == "INVALID_ARGUMENT"


def test_input_over_position_table_is_invalid(bart):
    with pytest.raises(GenError) as e:
        bart.generate([[0] + [5] * 40 + [2]])
    assert e.value.name == "INVALID_ARGUMENT" and "at most 32" in e.value.msg


def test_info_reports_the_model(bart, t5):
    i = bart.info()
    assert (i.arch, i.decoder_start_token_id, i.eos_token_id, i.pad_token_id) == (b"bart", 2, 2, 1)
    assert i.max_input_length == 32 and i.hard_input_limit == 32 and i.vocab_size == 256
    assert i.memory_bytes > 0
    j = t5.info()
    assert (j.arch, j.decoder_start_token_id, j.eos_token_id, j.pad_token_id) == (b"t5", 0, 1, 0)
    assert j.hard_input_limit == 0 and j.max_input_length == 512


def test_defaults_follow_transformers(bart, t5):
    p = t5.params()
    assert p.max_length == 21 and p.num_beams == 1 and p.top_k == 50
    assert p.forced_bos_token_id == -1 and p.forced_eos_token_id == -1
    q = bart.params()
    assert q.forced_bos_token_id == 0 and q.forced_eos_token_id == 2
    assert q.max_length == 21  # 20 + 1, capped by max_position_embeddings (32)


def test_handles_of_one_model_share_weights(tmp_path):
    path = str(tmp_path / "t5")
    make_t5(path, True)
    a, b = Generator(path), Generator(path)
    assert a.info().memory_bytes == b.info().memory_bytes > 0
    ps = prompts(3, 256, "t5")
    assert a.generate(ps) == b.generate(ps)
    a.close()
    assert len(b.generate(ps)[0][0]) > 0  # the survivor still runs
    b.close()


def test_seeded_sampling_is_reproducible_and_batch_independent(t5):
    ps = prompts(6, 256, "t5", seed=3)
    a = t5.generate(ps, do_sample=True, seed=7, num_return_sequences=2)
    b = t5.generate(ps[::-1], do_sample=True, seed=7, num_return_sequences=2)[::-1]
    c = [t5.generate([p], do_sample=True, seed=7, num_return_sequences=2)[0] for p in ps]
    assert a == b == c
    d = t5.generate(ps, do_sample=True, seed=8, num_return_sequences=2)
    assert d != a


def test_sampling_respects_top_k_support(t5):
    """top_k=1 sampling is greedy, whatever the seed."""
    ps = prompts(8, 256, "t5", seed=4)
    g = t5.generate(ps)
    for seed in (1, 2, 3):
        assert t5.generate(ps, do_sample=True, top_k=1, seed=seed) == g
