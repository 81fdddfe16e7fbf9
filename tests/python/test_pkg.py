"""What a user of the installed package meets first (issue 14, items 3-5): the public
ERROR_CODES, writable numpy outputs, py.typed, the pytest plugin, a ResourceWarning and no
leaked threads or descriptors for a manager dropped without close(), and the names the
app used for aliased models in results and status()."""
import asyncio
import gc
import os
import re
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import pymodelmgr
from pymodelmgr import ModelManager, ModelManagerSettings, _core

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EMB = "synthetic/embedding?dim=8"


# ---- ERROR_CODES -----------------------------------------------------------------

def test_error_codes_are_public_complete_and_read_only():
    codes = pymodelmgr.ERROR_CODES
    assert "ERROR_CODES" in pymodelmgr.__all__
    assert "MODEL_MANAGER_DISABLED" in codes and "QUEUE_FULL" in codes
    # derived from the C table: every code there (but OK) is public, with its phrase
    assert dict(codes) == {k: v for k, v in _core.ERROR_CODES.items() if k != "OK"}
    with pytest.raises(TypeError):
        codes["NEW"] = "x"  # type: ignore[index]
    # every code the Python layer can return by itself is listed too
    used = set()
    for dirpath, _, names in os.walk(os.path.join(ROOT, "pymodelmgr")):
        for n in names:
            if n.endswith(".py"):
                with open(os.path.join(dirpath, n)) as f:
                    src = f.read()
                used |= set(re.findall(r'(?:Result\.error|ErrorInfo)\(\s*(?:code=)?"([A-Z_]+)"', src))
    assert used and used <= set(codes), used - set(codes)


async def test_disabled_code_is_listed():
    async with ModelManager(ModelManagerSettings(enabled=False, fake_gpus="none")) as m:
        r = await m.task(["x"], "embedding", EMB)
    assert r.error.code == "MODEL_MANAGER_DISABLED" and r.error.code in pymodelmgr.ERROR_CODES


# ---- numpy outputs -----------------------------------------------------------------

@pytest.mark.parametrize("cache", [False, True])
async def test_numpy_output_is_writable(make_mm, cache):
    m = make_mm(embedding_cache={"enabled": cache})
    for _ in range(2):  # the second call is a cache hit when the cache is on
        r = await m.task(["a", "bb", "ccc"], "embedding", EMB, device="cpu", output="numpy")
        assert r.success, r.error
        arr = r.data["embeddings"]
        assert isinstance(arr, np.ndarray) and arr.dtype == np.float32 and arr.shape == (3, 8)
        assert arr.flags.writeable
        before = arr[0].copy()
        arr /= 2  # in place, as apps normalise or quantise
        np.testing.assert_allclose(arr[0], before / 2)


# ---- aliases -------------------------------------------------------------------------

async def test_aliases_report_the_name_the_app_used(make_mm):
    app = "my-org/my-embedder"
    m = make_mm(model_aliases={app: EMB})
    pre = await m.task(None, "embedding", app, device="cpu")
    assert pre.success and pre.data["model_name"] == app
    r = await m.task(["x"], "embedding", app, device="cpu")
    assert r.success and r.data["model_name"] == app
    models = (await m.status()).data["models"]
    assert [(s["model_name"], s["alias_of"]) for s in models] == [(app, EMB)]
    d = await m.drop_model_queue(app)
    assert d.data["model_name"] == app
    rel = await m.release_model(app)
    assert rel.data["model_name"] == app and rel.data["released"] is True
    # a name that is no alias is reported as given
    r = await m.task(["x"], "embedding", EMB, device="cpu")
    assert r.data["model_name"] == EMB


# ---- a manager dropped without close() ---------------------------------------------

def _threads():
    return len(os.listdir("/proc/self/task"))


def _fds():
    return len(os.listdir("/proc/self/fd"))


async def _use_and_drop(tmp_path):
    m = ModelManager(ModelManagerSettings(fake_gpus="none", cache_dir=str(tmp_path)))
    r = await m.task(["a", "b"], "embedding", EMB, num_workers=2, device="cpu")
    assert r.success, r.error
    # no close(): the last reference goes here, while the event loop runs on


async def test_unclosed_managers_warn_and_leak_nothing(tmp_path):
    await _use_and_drop(tmp_path)  # one-off descriptors (the loop's executor...) first
    gc.collect()
    threads, fds = _threads(), _fds()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for _ in range(20):
            await _use_and_drop(tmp_path)
        gc.collect()
    unclosed = [w for w in caught if issubclass(w.category, ResourceWarning)
                and "unclosed <ModelManager" in str(w.message)]
    assert len(unclosed) == 20
    assert _threads() == threads and _fds() == fds


def test_unclosed_manager_after_its_loop_closed(tmp_path):
    gc.collect()
    threads = _threads()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        for _ in range(3):
            asyncio.run(_use_and_drop(tmp_path))
        gc.collect()
    assert sum(issubclass(w.category, ResourceWarning) for w in caught) >= 3
    assert _threads() == threads


async def test_closed_manager_does_not_warn(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        async with ModelManager(ModelManagerSettings(fake_gpus="none", cache_dir=str(tmp_path))) as m:
            assert (await m.task(["a"], "embedding", EMB, device="cpu")).success
        del m
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


# ---- py.typed and the pytest plugin ---------------------------------------------------

def test_py_typed_ships_with_the_package():
    assert os.path.exists(os.path.join(os.path.dirname(pymodelmgr.__file__), "py.typed"))
    import tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        meta = tomllib.load(f)
    assert "py.typed" in meta["tool"]["setuptools"]["package-data"]["pymodelmgr"]
    assert meta["project"]["entry-points"]["pytest11"] == {"pymodelmgr": "pymodelmgr.testing"}
    # torch never comes from pip through this package (a CUDA build by default)
    assert not any("torch" in r for r in meta["build-system"]["requires"])
    assert "torch" not in str(meta["project"].get("optional-dependencies", {}))


PLUGIN_USER_TESTS = '''
import asyncio
import pytest

MINILM = "sentence-transformers/all-MiniLM-L6-v2"

def test_plain(model_manager):
    async def go():
        return await model_manager.task(["hello", "world"], "embedding", MINILM)
    r = asyncio.run(go())
    assert r.success, r.error
    assert len(r.data["embeddings"][0]) == 384 and r.data["model_name"] == MINILM

@pytest.fixture
def pymodelmgr_aliases():
    return {"acme/summarizer": "synthetic/text_generation"}

@pytest.mark.asyncio
async def test_async_own_alias(model_manager):
    r = await model_manager.task("some text", "text_generation", "acme/summarizer")
    assert r.success, r.error
    assert isinstance(r.data["generated_text"], str)
    st = (await model_manager.status()).data["models"]
    assert [s["model_name"] for s in st] == ["acme/summarizer"]
    # left open on purpose: the fixture closes it
'''


def test_pytest_plugin_fixture(tmp_path):
    (tmp_path / "test_app.py").write_text(textwrap.dedent(PLUGIN_USER_TESTS))
    env = dict(os.environ, PYTHONPATH=ROOT, PYTHONWARNINGS="error::ResourceWarning")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "pymodelmgr.testing",
                        "-p", "asyncio", "-W", "error::ResourceWarning", "test_app.py"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 passed" in r.stdout
