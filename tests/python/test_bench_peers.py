"""Smoke test of benchmarks/bench_peers.py --quick: the peers' harness runs end to end and
its checks hold (pymodelmgr's and CTranslate2's greedy ids equal transformers', ONNX Runtime's
and pymodelmgr's embeddings equal sentence-transformers').  Correctness only: the timings it
prints are not asserted."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("ctranslate2")
pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_bench_peers_quick(tmp_path):
    out = tmp_path / "peers.json"
    p = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "bench_peers.py"), "--quick",
         "--models", "t5", "--modes", "greedy", "--gen-engines", "pymodelmgr,transformers,ct2-fp32",
         "--emb-engines", "pymodelmgr,sentence-transformers,ort-fp32", "--ours-dtypes", "int8",
         "--workdir", str(tmp_path / "models"), "--json", str(out)],
        capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "load average before" in p.stdout and "load average after" in p.stdout
    rep = json.loads(out.read_text())
    assert rep["errors"] == {}
    checks = rep["checks"]
    assert checks["t5 greedy | pymodelmgr"] == "burst 3/3 equal, lone 2/2 equal"
    assert checks["t5 greedy | ct2-fp32"] == "burst 3/3 equal, lone 2/2 equal"
    for eng in ("pymodelmgr", "ort-fp32"):
        text = checks[f"MiniLM | {eng}"]
        assert float(text.split("min ")[1].split(",")[0]) > 0.99999, text
    text = checks["MiniLM | pymodelmgr-int8"]
    assert float(text.split("min ")[1].split(",")[0]) > 0.95, text
    # pymodelmgr-int8 (--ours-gen-dtypes' default) runs beside the fp32 engines
    assert "t5 greedy | pymodelmgr-int8" in checks, checks
    for key in ("t5 greedy | pymodelmgr | burst_s", "t5 greedy | pymodelmgr-int8 | burst_s",
                "MiniLM | ort-fp32 | conc_s",
                "MiniLM | pymodelmgr-int8 | bulk_s"):
        assert len(rep["results"][key]) == 1
