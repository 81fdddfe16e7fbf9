"""Drives test_hub_net (the C hub client, possibly built with ASan or TSan)
against the loopback fake hub, one scenario per run, switching faults in
between.  Usage: python3 run_net.py PATH/TO/test_hub_net

Each scenario states the error name every thread must get and what the
fake hub must have seen.  Exits non-zero on the first failed scenario.
"""

import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "python"))

from fakehub import FakeHub  # noqa: E402

TOKEN = "hf_c_test_token_abcdefghijklmnopqrstuvwxyz"


def files(seed, weights=1_500_000, bin_only=False):
    out = {
        "config.json": b'{"model_type": "bert", "seed": %d}' % seed,
        "tokenizer.json": b'{"version": "1.0"}',
        "vocab.txt": b"[PAD]\n[UNK]\nhello\n",
        "1_Pooling/config.json": b"{}",
        "modules.json": b'[{"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]',
        "onnx/model.onnx": b"x" * 100,
        "README.md": b"hi",
    }
    w = bytes((i * 131 + seed) & 0xFF for i in range(weights))
    out["pytorch_model.bin" if bin_only else "model.safetensors"] = w
    return out


def main():
    binary = sys.argv[1]
    for var in ("no_proxy", "NO_PROXY"):  # never through a proxy
        os.environ[var] = "127.0.0.1,127.0.0.2,localhost"
    hub = FakeHub()
    cache = tempfile.mkdtemp(prefix="mm_hub_net.")
    failures = 0

    def run(name, model, expect, rev="main", threads=1, token="", check=None, setup=None):
        nonlocal failures
        hub.clear_requests()
        if setup:
            setup()
        p = subprocess.run([binary, hub.url, cache, model, rev, expect, str(threads), token],
                           capture_output=True, text=True, timeout=120)
        ok = p.returncode == 0
        why = p.stderr.strip()
        if ok and check:
            try:
                check()
            except AssertionError as e:
                ok, why = False, "check failed: %s; requests: %s" % (e, [(r.host, r.method, r.path, r.status)
                                                                         for r in hub.requests])
        hub.faults.__init__()  # every fault off again
        print("%-40s %s" % (name, "ok" if ok else "FAILED"))
        if not ok:
            failures += 1
            print(p.stdout + "\n" + why, file=sys.stderr)

    try:
        hub.add_files("acme/tiny", files(1))
        hub.add_files("acme/gated", files(2), gated=True, allowed_tokens={TOKEN})
        hub.add_files("acme/binonly", files(3, bin_only=True))
        for i in range(4):
            hub.add_files("acme/m%d" % i, files(10 + i))

        def once():
            assert hub.count(host="cdn") == 1, "weights fetched %d times" % hub.count(host="cdn")

        run("first download, 4 threads at once", "acme/tiny", "OK", threads=4, check=once)
        run("cache hit", "acme/tiny", "OK", threads=4, check=lambda: _eq(hub.count(), 0))

        def drop():
            hub.faults.drop_after, hub.faults.drop_count = 400_000, 1
        run("resume after a drop", "acme/m0", "OK", setup=drop,
            check=lambda: _eq([r.range for r in hub.requests if r.host == "cdn"], [None, "bytes=400000-"]))

        def corrupt():
            hub.faults.corrupt_count, hub.faults.match = 1, "model.safetensors"
        run("corrupted body", "acme/m1", "CORRUPT_DOWNLOAD", setup=corrupt)
        run("then a clean download", "acme/m1", "OK")

        def fail500():
            hub.faults.fail_status, hub.faults.fail_count, hub.faults.fail_scope = 500, 2, "any"
        run("500 twice, then success", "acme/m2", "OK", setup=fail500)

        def fail503():
            hub.faults.fail_status, hub.faults.fail_count, hub.faults.fail_scope = 503, 1000, "cdn"
        run("503 forever", "acme/m3", "NETWORK_ERROR", setup=fail503, check=lambda: _eq(hub.count(host="cdn"), 4))

        run("gated, no token", "acme/gated", "AUTH_REQUIRED")
        run("gated, bad token", "acme/gated", "INVALID_TOKEN", token=TOKEN + "x")
        run("gated, token, 2 threads", "acme/gated", "OK", threads=2, token=TOKEN,
            check=lambda: _eq(any(r.auth for r in hub.requests if r.host == "cdn"), False))
        run("missing repo", "acme/nope", "MODEL_NOT_FOUND")
        run("missing revision", "acme/tiny", "REVISION_NOT_FOUND", rev="v9")
        run("pytorch .bin only", "acme/binonly", "UNSUPPORTED_FORMAT")
        run("bad name", "acme/../x", "INVALID_ARGUMENT", check=lambda: _eq(hub.count(), 0))
        hub.add_files("acme/oom", files(42))
        run("every allocation failure is OUT_OF_MEMORY", "acme/oom", "OOM_SWEEP")
        hub.add_files("acme/tiny", files(99))  # main moves on the hub
        run("refresh-free cache keeps old main", "acme/tiny", "OK", check=lambda: _eq(hub.count(), 0))
    finally:
        hub.close()
        shutil.rmtree(cache, ignore_errors=True)
    return 1 if failures else 0


def _eq(a, b):
    assert a == b, "%r != %r" % (a, b)


if __name__ == "__main__":
    sys.exit(main())
