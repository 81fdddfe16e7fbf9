"""Every Python example of shared/SPEC.md runs against pymodelmgr with only its
imports changed.

The examples name real Hub models; here settings.model_aliases maps each to a
synthetic model of the same shape (1024-d for mxbai and e5-large, 384-d for
MiniLM), so the examples' own code runs unchanged, offline.  Blocks that are
signatures rather than code (they do not parse) are listed and checked to be
exactly those.
"""
import asyncio
import logging
import os
import re
import textwrap
import types

import pytest
from pydantic import BaseModel, Field

import pymodelmgr
from pymodelmgr import AppContext, ModelManagerSettings, install

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPEC = os.path.join(os.path.dirname(ROOT), "shared", "SPEC.md")

ALIASES = {
    "mixedbread-ai/mxbai-embed-large-v1": "synthetic/embedding?dim=1024",
    "sentence-transformers/all-MiniLM-L6-v2": "synthetic/embedding?dim=384",
    "intfloat/e5-large-v2": "synthetic/embedding?dim=1024",
    "google-t5/t5-large": "synthetic/text_generation",
    "google-t5/t5-base": "synthetic/text_generation",
    "facebook/bart-large-cnn": "synthetic/text_generation",
    "model-name": "synthetic/embedding?dim=16",
}

# "Only its imports changed": the framework's modules map onto ours.
IMPORTS = [
    ("from core.error_utils import Result", "from pymodelmgr import Result"),
    ("from core.logging import get_framework_logger",
     "from logging import getLogger as get_framework_logger"),
]

# Blocks that document a signature or a placeholder call, not runnable code.
NOT_CODE = {"await model_manager.task(\n    task_data=<your_data>,",
            "await model_manager.task(\n    task_data: Optional[Any],",
            "await model_manager.release_model(model_name: str) -> Result",
            "await model_manager.drop_model_queue(\n    model_name: str,",
            "embeddings = result.data  # Wrong - result.data is a dict",
            "# \u274c DON'T: Sequential await (creates gaps)"}  # a sketch with "..." arguments


def spec_blocks():
    if not os.path.exists(SPEC):
        pytest.skip("shared/SPEC.md is not beside the checkout")
    text = open(SPEC, encoding="utf-8").read()
    return re.findall(r"```python\n(.*?)```", text, re.S)


def is_not_code(block):
    return any(block.startswith(prefix) for prefix in NOT_CODE)


def test_every_block_is_either_code_or_a_known_signature():
    for block in spec_blocks():
        src = block
        for old, new in IMPORTS:
            src = src.replace(old, new)
        try:
            compile("async def _f():\n" + textwrap.indent(src, "    "), "<spec>", "exec")
        except SyntaxError:
            assert is_not_code(block), f"unparseable example:\n{block[:200]}"
        else:
            assert not is_not_code(block) or block.startswith("embeddings = result.data")


class _Settings(types.SimpleNamespace):
    pass


async def run_block(block, ns):
    src = block
    for old, new in IMPORTS:
        src = src.replace(old, new)
    body = "async def __example__():\n" + textwrap.indent(src, "    ") + \
        "\n    return {k: v for k, v in locals().items()}\n"
    exec(compile(body, "<SPEC.md>", "exec"), ns)
    return await ns["__example__"]()


@pytest.fixture
async def app():
    ctx = AppContext()
    mm = install(ctx, ModelManagerSettings(fake_gpus="none", model_aliases=ALIASES))
    yield ctx
    await mm.close()


async def test_spec_examples_run(app, capsys):
    assert isinstance(app.get_service("core.model_manager.service"), pymodelmgr.ModelManager)
    await run_every_example(app, capsys)


async def run_every_example(app, capsys):
    """Runs every example against the manager registered in ``app`` (also used by
    tests/python/test_cluster.py with a ClusterModelManager)."""
    model_manager = app.get_service("core.model_manager.service")
    ran = 0
    last_result = None
    for block in spec_blocks():
        if is_not_code(block):
            continue
        documents = [f"document {i}" for i in range(40)]
        ns = {
            "app_context": app,
            "model_manager": model_manager,
            "logger": logging.getLogger("spec"),
            "texts": [f"text {i}" for i in range(30)],
            "documents": documents,
            "batches": [["a", "b"], ["c"]],
            "settings": _Settings(embedding_model_name="mixedbread-ai/mxbai-embed-large-v1",
                                  t5_model_name="google-t5/t5-large"),
            "store_embedding": lambda r: asyncio.sleep(0),
            "process": lambda r: None,
            "asyncio": asyncio,
            "Result": pymodelmgr.Result,
            # names the settings examples use without importing them
            "BaseModel": BaseModel,
            "Field": Field,
            "WorkerPoolConfig": pymodelmgr.WorkerPoolConfig,
            "EmbeddingCacheConfig": pymodelmgr.EmbeddingCacheConfig,
        }
        if last_result is not None:  # the troubleshooting snippets read an earlier result
            ns["result"] = last_result
        out = await run_block(block, ns)
        ran += 1
        # Code that defines a service class: drive it through its whole life.
        svc_cls = out.get("DocumentProcessorService")
        if svc_cls is not None:
            settings_cls = _Settings(embedding_model_name="mixedbread-ai/mxbai-embed-large-v1",
                                     embedding_workers=2, embedding_device="gpu")
            svc = svc_cls(app)
            assert (await svc.initialize(settings_cls)).success
            r = await svc.embed_documents(["one", "two"])
            assert r.success and len(r.data["embeddings"][0]) == 1024
            await svc.cleanup_resources()
        fn = out.get("embed_documents_efficiently")
        if fn is not None:
            docs = [{"id": i, "text": f"document {i}"} for i in range(40)]
            r = await fn(docs, model_manager)
            assert r.success and len(r.data["embeddings"]) == len(docs)
            assert r.data["embeddings"][39]["document_id"] == 39
        cfg_cls = out.get("ModelManagerSettings")
        if cfg_cls is not None:  # the documented settings load into ours unchanged
            ours = ModelManagerSettings(**cfg_cls().model_dump())
            assert ours.worker_pool.model_idle_timeout == 300
            assert ours.embedding_cache.max_cache_size == 10000
        result = out.get("result")
        if isinstance(result, pymodelmgr.Result):
            assert result.success, result.error
            if "embeddings" in result.data:
                last_result = result
    assert ran >= 20
    printed = capsys.readouterr().out
    assert "Generated 2 embeddings" in printed  # the Quick start's own print
    assert "Dropped" in printed and "Cancelled" in printed
