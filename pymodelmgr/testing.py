"""A pytest plugin for apps that test against pymodelmgr without real models.

Installed with the package and registered through the ``pytest11`` entry point, so its
fixtures are available in every test of an environment where pymodelmgr is installed
(without installing, add ``-p pymodelmgr.testing`` to pytest's arguments, or
``pytest_plugins = ["pymodelmgr.testing"]`` to a top-level conftest.py).

Fixtures:

* ``model_manager``: a :class:`~pymodelmgr.ModelManager` on a simulated machine without
  GPUs, with a temporary model cache, the embedding cache off, and
  ``settings.model_aliases`` mapping well-known model names (:data:`SYNTHETIC_ALIASES`)
  plus the app's own (``pymodelmgr_aliases``) to ``synthetic/...`` models: deterministic
  unit-norm embeddings and echo-like text, no download, no torch.  Closed after the test
  (queued tasks cancelled); it works in async tests (pytest-asyncio, anyio) and in plain
  ones that call ``asyncio.run``.
* ``pymodelmgr_aliases``: the app's model names to serve synthetically; override it in
  your conftest.py, e.g.
  ``{"my-org/my-embedder": "synthetic/embedding?dim=768&item_us=200"}``.
* ``pymodelmgr_settings``: the :class:`~pymodelmgr.ModelManagerSettings` the fixture uses;
  override it for anything else (queue limits, keep-alive...).

Example::

    async def test_search(model_manager):
        r = await model_manager.task(["hello"], "embedding",
                                     "sentence-transformers/all-MiniLM-L6-v2")
        assert r.success and len(r.data["embeddings"][0]) == 384
        assert r.data["model_name"] == "sentence-transformers/all-MiniLM-L6-v2"

Synthetic model names take options (see README, "Test models without weights"):
``dim``, ``load_ms``, ``item_us``, ``batch_us``, ``fail=load``, ``fail_loads=N``; an input
containing ``__fail__`` fails its task.
"""
from __future__ import annotations

from typing import Dict, Iterator

import pytest

from .manager import ModelManager
from .settings import ModelManagerSettings

__all__ = ["SYNTHETIC_ALIASES", "model_manager", "pymodelmgr_aliases", "pymodelmgr_settings"]

#: Common Hugging Face model names mapped to synthetic models of the same output shape.
SYNTHETIC_ALIASES: Dict[str, str] = {
    "sentence-transformers/all-MiniLM-L6-v2": "synthetic/embedding?dim=384",
    "sentence-transformers/all-MiniLM-L12-v2": "synthetic/embedding?dim=384",
    "sentence-transformers/paraphrase-MiniLM-L6-v2": "synthetic/embedding?dim=384",
    "sentence-transformers/all-mpnet-base-v2": "synthetic/embedding?dim=768",
    "sentence-transformers/multi-qa-mpnet-base-dot-v1": "synthetic/embedding?dim=768",
    "BAAI/bge-small-en-v1.5": "synthetic/embedding?dim=384",
    "BAAI/bge-base-en-v1.5": "synthetic/embedding?dim=768",
    "intfloat/e5-small-v2": "synthetic/embedding?dim=384",
    "t5-small": "synthetic/text_generation",
    "google-t5/t5-small": "synthetic/text_generation",
    "google/flan-t5-small": "synthetic/text_generation",
    "google/flan-t5-base": "synthetic/text_generation",
    "facebook/bart-large-cnn": "synthetic/text_generation",
}


@pytest.fixture
def pymodelmgr_aliases() -> Dict[str, str]:
    """The app's own model names to serve synthetically (empty by default): override it."""
    return {}


@pytest.fixture
def pymodelmgr_settings(pymodelmgr_aliases: Dict[str, str], tmp_path) -> ModelManagerSettings:
    """Settings of ``model_manager``: no GPUs, a temporary cache, synthetic aliases."""
    return ModelManagerSettings(
        fake_gpus="none",
        cache_dir=str(tmp_path / "pymodelmgr-models"),
        embedding_cache={"enabled": False},
        model_aliases={**SYNTHETIC_ALIASES, **pymodelmgr_aliases},
    )


@pytest.fixture
def model_manager(pymodelmgr_settings: ModelManagerSettings) -> Iterator[ModelManager]:
    """A ModelManager with synthetic aliases, closed (queued tasks cancelled) after the test."""
    mm = ModelManager(pymodelmgr_settings)
    try:
        yield mm
    finally:
        # No event loop is needed (the test's may be closed by now): the engine shuts
        # down, joins its threads and closes its descriptors synchronously.
        mm._close_now()
