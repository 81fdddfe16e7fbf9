"""Shared fixtures for the Python tests.

``mm`` is a ModelManager on a simulated machine without GPUs (so tests behave
the same everywhere), with the embedding cache off, closed after the test; ``make_mm`` builds one with
custom settings.  Every manager made through these fixtures is checked at the
end: every task it created completed exactly once.

After every test, transformers' process-wide functions must be their own again
(``pymodelmgr.fallback.loading_patches``): two model loads that overlapped on two
threads leave no-ops in their place, and every later model with tied weights
(the T5 / BART references of the generation parity tests) then loads wrong.
The test that left them fails here, not the fifty that would follow.
"""
import sys

import pytest

from pymodelmgr import ModelManager, ModelManagerSettings

# The loopback fake hub and the model folders it serves (tests/python/conftest_hub.py).
from conftest_hub import fake_hub, hf_hub_lib, hub_env, minilm_dir, tiny_model_files  # noqa: F401


@pytest.fixture(autouse=True)
def _transformers_loading_not_leaked():
    yield
    if "transformers" in sys.modules:
        from pymodelmgr.fallback import _repair_loading_patches, loading_patches
        left = loading_patches()
        if left:
            _repair_loading_patches()  # the next tests start clean
            pytest.fail(f"transformers model loading left {left} swapped: two loads overlapped "
                        "on two threads (hold pymodelmgr.TRANSFORMERS_LOAD_LOCK)")


def _settings(**overrides):
    wp = overrides.pop("worker_pool", {})
    # The embedding cache would answer repeated texts without touching the engine's
    # queues; engine tests turn it off, tests/python/test_embedding_cache.py turns it on.
    base = {"fake_gpus": "none", "worker_pool": wp, "embedding_cache": {"enabled": False}}
    base.update(overrides)
    return ModelManagerSettings(**base)


async def _close_and_check(manager):
    engine = manager._engine
    stats_before = None if manager._closed else engine.stats()
    await manager.close()
    if stats_before is not None:
        assert stats_before["double_completions"] == 0


@pytest.fixture
async def make_mm():
    made = []

    def factory(**overrides):
        m = ModelManager(_settings(**overrides))
        made.append(m)
        return m

    yield factory
    for m in made:
        await _close_and_check(m)


@pytest.fixture
async def mm(make_mm):
    return make_mm()

