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
    # Not installed here (scripts/check_wheel.sh checks the entry point of an installed
    # wheel): load the plugin by name, and nothing else automatically.
    env = dict(os.environ, PYTHONPATH=ROOT, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "pymodelmgr.testing",
                        "-p", "pytest_asyncio.plugin", "-W", "error::ResourceWarning",
                        "test_app.py"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 passed" in r.stdout


# ---- the command line (item 2) ------------------------------------------------------

def _cli(*args, **kw):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "pymodelmgr", *args], capture_output=True,
                          text=True, timeout=120, env=env, **kw)


def test_cli_help_lists_every_command_without_markup():
    r = _cli("--help")
    assert r.returncode == 0, r.stderr
    listed = {line.split()[0] for line in r.stdout.splitlines() if line.startswith("    ")}
    assert {"demo", "download", "import-model", "cache", "status", "serve"} <= listed, r.stdout
    assert "``" not in r.stdout and "--version" in r.stdout
    for cmd in ("demo", "download", "import-model", "cache", "status"):
        sub = _cli(cmd, "--help")
        assert sub.returncode == 0 and sub.stdout.startswith("usage: pymodelmgr " + cmd), sub


def test_cli_version():
    r = _cli("--version")
    assert r.returncode == 0 and r.stdout.startswith(f"pymodelmgr {pymodelmgr.__version__} ("), r


def test_cli_status_cache_and_loaded_model(tmp_path):
    import json

    r = _cli("status", "--cache-dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "cache: " + str(tmp_path) + " (0 models)" in r.stdout and "loaded models: none" in r.stdout
    r = _cli("status", "--cache-dir", str(tmp_path), "--load", "synthetic/embedding?dim=4",
             "--num-workers", "2", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["version"] == pymodelmgr.__version__ and out["cached_models"] == []
    (m,) = out["loaded_models"]
    assert m["model_name"] == "synthetic/embedding?dim=4" and m["state"] == "ready"
    assert m["workers"] == 2 and m["load_seconds"] >= 0
    bad = _cli("status", "--cache-dir", str(tmp_path), "--load", "synthetic/embedding?fail=load")
    assert bad.returncode == 1 and "MODEL_LOAD_FAILED" in bad.stdout


def test_cli_progress_is_plain_lines_when_stderr_is_not_a_terminal():
    r = _cli("demo", "--synthetic")
    assert r.returncode == 0, r.stderr
    assert "\r" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if "embedding corpus" in ln]
    assert len(lines) == 5 and lines[-1].endswith("5/5")


def test_download_log_says_100_percent_once(caplog):
    import io
    import logging

    from pymodelmgr import hub

    bar = hub._ProgressBar("acme/x", stream=io.StringIO(), delay=0.0, log_every=0.0)
    p = {"file": "model.safetensors", "file_index": 0, "file_count": 1}
    with caplog.at_level(logging.INFO, logger="pymodelmgr"):
        for done in (10, 50, 100, 100, 100, 100, 100, 100):  # 100%: hashing, renaming
            bar({**p, "file_done": done, "file_total": 100, "model_done": done, "model_total": 100})
        bar.close(True)
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("100%" in m for m in msgs) == 1, msgs
    assert [m.split(": ")[1].split()[0] for m in msgs if "%" in m] == ["10%", "50%", "100%"]
    assert bar.stream.getvalue() == ""  # not a terminal: no bar, no carriage return


def test_build_is_quiet():
    """`make build`'s step: CMake's output goes to build/py/build.log (V=1 shows it)."""
    env = dict(os.environ, PYMODELMGR_VERBOSE="0")
    r = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=ROOT,
                       capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    out = (r.stdout + r.stderr).splitlines()
    assert not [ln for ln in out if "%]" in ln or "Building" in ln or "Linking" in ln], out
    assert len(out) <= 3, out
    assert os.path.getsize(os.path.join(ROOT, "build", "py", "build.log")) > 0


# ---- packaging (item 1) ---------------------------------------------------------------

def test_shim_runpath_is_relative_to_the_torch_package():
    shim = os.path.join(os.path.dirname(pymodelmgr.__file__), "libmm_torch.so")
    if not os.path.exists(shim):
        pytest.skip("built without the libtorch shim")
    out = subprocess.run(["readelf", "-d", shim], capture_output=True, text=True, check=True).stdout
    paths = re.findall(r"\((?:RUNPATH|RPATH)\)\s+Library r(?:un)?path: \[(.*)\]", out)
    assert paths == ["$ORIGIN/../torch/lib"], paths


def test_shim_loads_without_runpath_help_or_torch_import(tmp_path):
    """pymodelmgr and torch in different folders (this source tree and site-packages): the
    shim's RUNPATH finds nothing, so the backend loads libtorch from the torch package it
    located first; the app never imported torch."""
    shim = os.path.join(os.path.dirname(pymodelmgr.__file__), "libmm_torch.so")
    if not os.path.exists(shim):
        pytest.skip("built without the libtorch shim")
    from test_embed_shim import minilm_dir

    code = textwrap.dedent(f'''
        import asyncio, sys
        import pymodelmgr
        async def main():
            async with pymodelmgr.ModelManager({{"fake_gpus": "none"}}) as mm:
                r = await mm.task(["hello"], "embedding", {minilm_dir()!r}, device="cpu")
                assert r.success, r.error
                print(len(r.data["embeddings"][0]), "torch" in sys.modules)
        asyncio.run(main())
    ''')
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300, env=dict(os.environ, PYTHONPATH=ROOT))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["384", "False"]


def test_setup_without_torch_stops_with_what_to_run(tmp_path):
    """As in pip's isolated build environment of a venv without torch: the build stops
    before CMake and says what to run, unless PYMODELMGR_BUILD_TORCH=0."""
    import venv

    venv.EnvBuilder(with_pip=False, system_site_packages=False).create(tmp_path / "v")
    vpy = str(tmp_path / "v" / "bin" / "python")
    site = subprocess.run([sys.executable, "-c", "import setuptools, os; "
                           "print(os.path.dirname(os.path.dirname(setuptools.__file__)))"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # the venv sees setuptools (through PYTHONPATH, as pip's build environment does) but
    # not torch; `python -I` (the target environment) has no torch either
    shim_dir = tmp_path / "only-setuptools"
    shim_dir.mkdir()
    for name in ("setuptools", "pkg_resources", "_distutils_hack", "distutils-precedence.pth"):
        if os.path.exists(os.path.join(site, name)):
            os.symlink(os.path.join(site, name), shim_dir / name)
    env = dict(os.environ, PYTHONPATH=str(shim_dir), PYMODELMGR_BUILD_DIR=str(tmp_path / "b"))
    r = subprocess.run([vpy, os.path.join(ROOT, "setup.py"), "-q", "build_ext",
                        "--build-lib", str(tmp_path / "lib"), "--build-temp", str(tmp_path / "t")],
                       cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "torch is not installed in this Python environment" in r.stderr
    assert "pip install torch==" in r.stderr and "PYMODELMGR_BUILD_TORCH=0" in r.stderr
    assert not os.path.exists(tmp_path / "b" / "CMakeCache.txt")  # stopped before CMake
