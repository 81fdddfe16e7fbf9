"""The hub client (csrc/hub through pymodelmgr.hub) against the loopback fake hub.

Every test runs with hub_env: HF_ENDPOINT points at the fake hub, the cache
and HF_HOME are fresh folders, no token, no offline mode.  Nothing here
touches a network beyond 127.0.0.0/8.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import subprocess
import sys
import textwrap

import pytest

from conftest_hub import MINILM_REPO, fake_hub, hf_hub_lib, hub_env, minilm_dir, tiny_model_files  # noqa: F401

from pymodelmgr import _core  # noqa: E402

if not hasattr(_core, "hub_snapshot"):
    pytest.skip("pymodelmgr._core was built without the hub client", allow_module_level=True)
from pymodelmgr import hub  # noqa: E402

FAST = dict(retry_base_s=0.01, retry_max_s=0.05, progress=False)
TINY = "acme/tiny"


def snap(repo, revision="main", **kw):
    opts = dict(FAST)
    opts.update(kw)
    return hub.snapshot(repo, revision, **opts)


def error_of(repo, revision="main", **kw) -> hub.HubError:
    with pytest.raises(hub.HubError) as ei:
        snap(repo, revision, **kw)
    return ei.value


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def tree(root):
    out = set()
    for d, _, files in os.walk(root):
        for f in files:
            out.add(os.path.relpath(os.path.join(d, f), root))
    return out


# ---- first download and the cache -------------------------------------------------------------

def test_first_download_then_served_from_cache(hub_env, minilm_dir):
    fh = hub_env.hub
    seen = []
    r = snap(MINILM_REPO, progress=seen.append)
    assert not r.from_cache and r.commit == hub_env.minilm_commit
    repo_dir = os.path.join(hub_env.cache_dir, "models--sentence-transformers--all-MiniLM-L6-v2")
    assert r.path == os.path.realpath(os.path.join(repo_dir, "snapshots", r.commit))
    assert tree(r.path) == {"config.json", "config_sentence_transformers.json", "model.safetensors", "modules.json",
                            "sentence_bert_config.json", "special_tokens_map.json", "tokenizer.json",
                            "tokenizer_config.json", "vocab.txt", "1_Pooling/config.json"}
    for rel in tree(r.path):
        assert sha256(os.path.join(r.path, rel)) == sha256(os.path.join(minilm_dir, rel)), rel
        link = os.readlink(os.path.join(r.path, rel))
        assert link.startswith("../../" + "../" * rel.count("/") + "blobs/")
    with open(os.path.join(repo_dir, "refs", "main")) as f:
        assert f.read() == r.commit  # no newline
    assert os.path.basename(os.readlink(os.path.join(r.path, "model.safetensors"))) == \
        sha256(os.path.join(minilm_dir, "model.safetensors"))
    assert r.bytes_downloaded == r.bytes_total > 90_000_000
    # progress: monotone, per model and per file, ends at the total
    assert seen and seen[-1]["model_done"] == seen[-1]["model_total"] == r.bytes_total
    dones = [p["model_done"] for p in seen]
    assert dones == sorted(dones)
    assert all(p["file_done"] <= p["file_total"] for p in seen if p["file"])
    assert not any(n.endswith(".incomplete") for n in os.listdir(os.path.join(repo_dir, "blobs")))
    # metadata by HEAD on the hub only (the CDN redirect is not followed), bodies by GET,
    # always asking for the identity encoding
    assert fh.count(host="cdn", method="HEAD") == 0 and fh.count(host="cdn", method="GET") == 1
    assert all(q.headers.get("Accept-Encoding") == "identity" for q in fh.requests)

    fh.clear_requests()
    r2 = snap(MINILM_REPO)
    assert r2.from_cache and r2.path == r.path and r2.n_requests == 0
    assert fh.count() == 0, fh.requests


def test_only_the_files_a_model_needs(hub_env):
    files = tiny_model_files()
    files.update({
        "onnx/model.onnx": b"x" * 1000, "model.onnx": b"x", "tf_model.h5": b"x", "flax_model.msgpack": b"x",
        "openvino/openvino_model.xml": b"<x/>", "openvino/openvino_model.bin": b"x", "model.gguf": b"x",
        "pytorch_model.bin": b"x" * 100, "rust_model.ot": b"x", "2_Dense/config.json": b"{}",
        "2_Dense/model.safetensors": b"dense", "1_Pooling/onnx/model.onnx": b"x", "generation_config.json": b"{}",
        ".gitattributes": b"*.bin lfs",
    })
    hub_env.hub.add_files(TINY, files)
    r = snap(TINY)
    assert tree(r.path) == {"config.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt", "modules.json",
                            "1_Pooling/config.json", "model.safetensors", "2_Dense/config.json",
                            "2_Dense/model.safetensors", "generation_config.json"}
    assert hub_env.hub.count(contains="onnx") == 0 and hub_env.hub.count(contains="pytorch_model") == 0


def test_sharded_safetensors(hub_env):
    files = tiny_model_files()
    del files["model.safetensors"]
    files["model-00001-of-00002.safetensors"] = b"a" * 5000
    files["weights-part-b.safetensors"] = b"b" * 5000  # a shard under another name: the index decides
    files["model-00009-of-00009.safetensors"] = b"c" * 5000  # not in the index
    files["model.safetensors.index.json"] = json.dumps({"metadata": {}, "weight_map": {
        "w1": "model-00001-of-00002.safetensors", "w2": "weights-part-b.safetensors",
        "w3": "model-00001-of-00002.safetensors"}}).encode()
    files["pytorch_model-00001-of-00001.bin"] = b"x"
    hub_env.hub.add_files(TINY, files)
    r = snap(TINY)
    names = tree(r.path)
    assert {"model.safetensors.index.json", "model-00001-of-00002.safetensors", "weights-part-b.safetensors"} <= names
    assert "model-00009-of-00009.safetensors" not in names
    assert not any(n.endswith(".bin") for n in names)
    assert hub_env.hub.count(contains="model-00009") == 0
    hub_env.hub.clear_requests()
    assert snap(TINY).from_cache and hub_env.hub.count() == 0


def test_index_naming_a_missing_shard_is_file_not_found(hub_env):
    files = tiny_model_files()
    del files["model.safetensors"]
    files["model-00001-of-00002.safetensors"] = b"a" * 5000
    files["model.safetensors.index.json"] = json.dumps({"weight_map": {
        "w1": "model-00001-of-00002.safetensors", "w2": "model-00002-of-00002.safetensors"}}).encode()
    hub_env.hub.add_files(TINY, files)
    e = error_of(TINY)
    assert e.code == "FILE_NOT_FOUND" and "model-00002-of-00002.safetensors" in str(e)


def test_pytorch_bin_only_is_unsupported(hub_env):
    files = tiny_model_files()
    del files["model.safetensors"]
    files["pytorch_model.bin"] = b"x" * 1000
    hub_env.hub.add_files(TINY, files)
    e = error_of(TINY)
    assert e.code == "UNSUPPORTED_FORMAT" and "pytorch_model.bin" in str(e)


def test_local_directory_used_in_place(hub_env, minilm_dir):
    r = snap(minilm_dir)
    assert r.local_dir and r.path == os.path.realpath(minilm_dir)
    assert hub_env.hub.count() == 0


# ---- resume, corruption, retries --------------------------------------------------------------

def test_resume_after_a_dropped_connection(hub_env):
    files = tiny_model_files(weights_size=3_000_000)
    hub_env.hub.add_files(TINY, files)
    hub_env.hub.faults.drop_after = 1_000_000
    hub_env.hub.faults.drop_count = 1
    r = snap(TINY)
    with open(os.path.join(r.path, "model.safetensors"), "rb") as f:
        assert f.read() == files["model.safetensors"]
    gets = [q for q in hub_env.hub.requests if q.host == "cdn"]
    assert len(gets) == 2 and gets[0].range is None and gets[1].range == "bytes=1000000-"
    assert gets[1].status == 206
    assert r.bytes_downloaded < sum(len(v) for v in files.values()) + 100_000  # not downloaded twice


def test_resume_across_calls_and_restart_on_200(hub_env):
    files = tiny_model_files(weights_size=2_000_000)
    hub_env.hub.add_files(TINY, files)
    fh = hub_env.hub
    fh.faults.drop_after = 500_000
    fh.faults.drop_count = 1
    e = error_of(TINY, max_retries=0)
    assert e.code == "NETWORK_ERROR" and "resume" in str(e)
    blobs = os.path.join(hub_env.cache_dir, "models--acme--tiny", "blobs")
    part = [n for n in os.listdir(blobs) if n.endswith(".incomplete")]
    assert len(part) == 1 and os.path.getsize(os.path.join(blobs, part[0])) == 500_000
    assert not os.path.isdir(os.path.join(hub_env.cache_dir, "models--acme--tiny", "snapshots"))
    # the server answers the Range request with 200: start over, still correct
    fh.clear_requests()
    fh.faults.ignore_range_count = 1
    r = snap(TINY)
    cdn = [q for q in fh.requests if q.host == "cdn"]
    assert len(cdn) == 1 and cdn[0].range == "bytes=500000-" and cdn[0].status == 200
    with open(os.path.join(r.path, "model.safetensors"), "rb") as f:
        assert f.read() == files["model.safetensors"]
    assert not any(n.endswith(".incomplete") for n in os.listdir(blobs))


def test_corruption_is_detected(hub_env):
    files = tiny_model_files()
    hub_env.hub.add_files(TINY, files)
    hub_env.hub.faults.corrupt_count = 1
    hub_env.hub.faults.match = "model.safetensors"
    e = error_of(TINY)
    assert e.code == "CORRUPT_DOWNLOAD" and "sha256" in str(e) and "model.safetensors" in str(e)
    repo_dir = os.path.join(hub_env.cache_dir, "models--acme--tiny")
    blobs = os.listdir(os.path.join(repo_dir, "blobs"))
    assert hashlib.sha256(files["model.safetensors"]).hexdigest() not in blobs
    assert not any(n.endswith(".incomplete") for n in blobs)
    assert not os.path.exists(os.path.join(repo_dir, "refs", "main"))
    r = snap(TINY)  # a clean retry works
    assert sha256(os.path.join(r.path, "model.safetensors")) == hashlib.sha256(files["model.safetensors"]).hexdigest()


def test_corrupted_small_file_fails_git_sha1(hub_env):
    files = tiny_model_files()
    hub_env.hub.add_files(TINY, files)
    fh = hub_env.hub
    # corrupt the first regular (non-LFS) file body served from the hub host
    fh.faults.corrupt_count = 1
    fh.faults.match = "tokenizer.json"
    e = error_of(TINY)
    assert e.code == "CORRUPT_DOWNLOAD" and "git sha1" in str(e) and "tokenizer.json" in str(e)


def test_retries_then_success(hub_env):
    hub_env.hub.add_files(TINY, tiny_model_files())
    fh = hub_env.hub
    fh.faults.fail_status, fh.faults.fail_count, fh.faults.fail_scope = 500, 2, "api"
    snap(TINY)
    assert fh.count(contains="/api/models/") == 3


def test_429_retry_after_then_success(hub_env):
    hub_env.hub.add_files(TINY, tiny_model_files())
    fh = hub_env.hub
    fh.faults.fail_status, fh.faults.fail_count, fh.faults.fail_scope = 429, 2, "cdn"
    fh.faults.retry_after = 0
    r = snap(TINY)
    assert not r.from_cache
    assert [q.status for q in fh.requests if q.host == "cdn"] == [429, 429, 200]


def test_retries_exhausted_is_a_clean_error(hub_env):
    hub_env.hub.add_files(TINY, tiny_model_files())
    fh = hub_env.hub
    fh.faults.fail_status, fh.faults.fail_count, fh.faults.fail_scope = 503, 1000, "cdn"
    e = error_of(TINY, max_retries=2)
    assert e.code == "NETWORK_ERROR" and "3 attempts" in str(e)
    assert fh.count(host="cdn") == 3
    assert not os.path.isdir(os.path.join(hub_env.cache_dir, "models--acme--tiny", "snapshots"))


def test_slow_server_times_out_and_retries(hub_env):
    hub_env.hub.add_files(TINY, tiny_model_files())
    fh = hub_env.hub
    fh.faults.slow_chunk_s = 1.6
    e = error_of(TINY, max_retries=1, read_timeout_s=1.0)
    assert e.code == "NETWORK_ERROR"
    fh.faults.slow_chunk_s = 0.0
    assert not snap(TINY).from_cache


# ---- auth -------------------------------------------------------------------------------------

GOOD = "hf_good_token_0123456789abcdefghijklmnop"
BAD = "hf_bad_token_zyxwvutsrqponmlkjihgfedcba"


def test_gated_repo_without_and_with_token(hub_env, monkeypatch):
    fh = hub_env.hub
    fh.add_files("acme/gated", tiny_model_files(), gated=True, allowed_tokens={GOOD})
    fh.valid_tokens.add(BAD + "x")
    e = error_of("acme/gated")
    assert e.code == "AUTH_REQUIRED" and "HF_TOKEN" in str(e) and "terms" in str(e)
    e = error_of("acme/gated", token=BAD)
    assert e.code == "INVALID_TOKEN" and BAD not in str(e)
    fh.add_files("acme/other-gated", tiny_model_files(1), gated=True, allowed_tokens={BAD + "x"})
    e = error_of("acme/gated", token=BAD + "x")  # valid token, not on the list
    assert e.code == "AUTH_REQUIRED" and BAD not in str(e)

    fh.clear_requests()
    monkeypatch.setenv("HF_TOKEN", GOOD)
    r = snap("acme/gated")
    assert not r.from_cache
    hub_reqs = [q for q in fh.requests if q.host == "hub"]
    cdn_reqs = [q for q in fh.requests if q.host == "cdn"]
    assert hub_reqs and all(q.auth for q in hub_reqs)
    assert cdn_reqs and not any(q.auth for q in cdn_reqs)  # never to another host
    # the token is nowhere in the cache
    for root, _, names in os.walk(hub_env.cache_dir):
        for n in names:
            p = os.path.join(root, n)
            assert GOOD not in n
            if os.path.isfile(p):
                with open(p, "rb") as f:
                    assert GOOD.encode() not in f.read()


def test_token_from_file_and_dotenv(hub_env, monkeypatch):
    fh = hub_env.hub
    fh.add_files("acme/gated", tiny_model_files(), gated=True, allowed_tokens={GOOD})
    with open(os.path.join(hub_env.work, ".env"), "w") as f:
        f.write("OTHER=1\nHF_TOKEN='%s'\n" % GOOD)
    assert hub._core.hub_default_params()["has_token"]
    snap("acme/gated")
    os.remove(os.path.join(hub_env.work, ".env"))
    assert not hub._core.hub_default_params()["has_token"]
    with open(os.path.join(hub_env.hf_home, "token"), "w") as f:
        f.write(GOOD + "\n")
    assert hub._core.hub_default_params()["has_token"]
    fh.clear_requests()
    snap("acme/gated", refresh=True)
    assert fh.count(method="GET", contains="/api/") == 1 and all(q.auth for q in fh.requests)


def test_missing_repo_revision_and_file(hub_env):
    hub_env.hub.add_files(TINY, tiny_model_files())
    e = error_of("acme/nope")
    assert e.code == "MODEL_NOT_FOUND" and "acme/nope" in str(e)
    e = error_of(TINY, revision="no-such-branch")
    assert e.code == "REVISION_NOT_FOUND" and "no-such-branch" in str(e)


# ---- offline and network down -----------------------------------------------------------------

def test_offline_hit_and_miss(hub_env, monkeypatch):
    hub_env.hub.add_files(TINY, tiny_model_files())
    r = snap(TINY)
    hub_env.hub.clear_requests()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    r2 = snap(TINY, refresh=True)
    assert r2.from_cache and r2.path == r.path
    e = error_of(MINILM_REPO)
    assert e.code == "MODEL_NOT_FOUND" and "offline" in str(e).lower()
    assert hub_env.hub.count() == 0


def test_network_down_but_cached_serves_the_cache(hub_env, caplog):
    hub_env.hub.add_files(TINY, tiny_model_files())
    r = snap(TINY)
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = "http://127.0.0.1:%d" % s.getsockname()[1]
    s.close()
    with caplog.at_level("WARNING", logger="pymodelmgr"):
        r2 = snap(TINY, refresh=True, endpoint=dead)
    assert r2.stale and r2.path == r.path
    assert any("cached" in m for m in caplog.messages)
    e = error_of(MINILM_REPO, endpoint=dead)
    assert e.code == "NETWORK_ERROR" and "not cached" in str(e)


# ---- concurrency ------------------------------------------------------------------------------

def test_two_threads_download_once(hub_env):
    files = tiny_model_files(weights_size=2_000_000)
    hub_env.hub.add_files(TINY, files)
    hub_env.hub.faults.slow_chunk_s = 0.01
    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        rs = list(ex.map(lambda _: snap(TINY), range(2)))
    assert rs[0].path == rs[1].path
    assert hub_env.hub.count(host="cdn") == 1
    assert hub_env.hub.count(method="GET", contains="/resolve/") == len(files) - 2  # README skipped; LFS via CDN


def test_two_processes_download_once(hub_env):
    files = tiny_model_files(weights_size=2_000_000)
    hub_env.hub.add_files(TINY, files)
    hub_env.hub.faults.slow_chunk_s = 0.01
    import pymodelmgr

    root = os.path.dirname(os.path.dirname(os.path.abspath(pymodelmgr.__file__)))
    code = textwrap.dedent("""
        import sys
        sys.path.insert(0, %r)
        from pymodelmgr import hub
        print(hub.snapshot(%r, progress=False).path)
    """ % (root, TINY))
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert outs[0][0] == outs[1][0]
    assert hub_env.hub.count(host="cdn") == 1


# ---- revisions and names ----------------------------------------------------------------------

def test_revision_pinning(hub_env):
    fh = hub_env.hub
    old = fh.add_files(TINY, tiny_model_files(seed=1))
    fh.add_files(TINY, tiny_model_files(seed=1), revision="v1.0")
    new = fh.add_files(TINY, tiny_model_files(seed=2))
    assert old != new
    r_old = snap(TINY, revision=old)
    assert r_old.commit == old and os.path.basename(r_old.path) == old
    with open(os.path.join(r_old.path, "config.json")) as f:
        assert json.load(f)["seed"] == 1
    r_new = snap(TINY)
    assert r_new.commit == new
    with open(os.path.join(r_new.path, "config.json")) as f:
        assert json.load(f)["seed"] == 2
    r_tag = snap(TINY, revision="v1.0")
    refs = os.path.join(hub_env.cache_dir, "models--acme--tiny", "refs")
    with open(os.path.join(refs, "main")) as f:
        assert f.read() == new
    with open(os.path.join(refs, "v1.0")) as f:
        assert f.read() == r_tag.commit
    assert not os.path.exists(os.path.join(refs, old))  # a commit gets no ref
    fh.clear_requests()
    assert snap(TINY, revision=old, refresh=True).from_cache and fh.count() == 0
    # main moves on the hub: the cache keeps serving the old main until refresh=True
    newer = fh.add_files(TINY, tiny_model_files(seed=3))
    assert snap(TINY).commit == new
    assert snap(TINY, refresh=True).commit == newer
    e = error_of(TINY, revision="0" * 40)
    assert e.code == "REVISION_NOT_FOUND"


@pytest.mark.parametrize("name", ["../etc", "acme/../../x", "acme/..", "/etc/passwd", "acme/na me", "a/b/c",
                                  "acme/tiny/", "", "acme--x/y", "-acme/x", "acme/x.git", "./nope", "~/nope"])
def test_bad_names_are_rejected(hub_env, name):
    e = error_of(name)
    assert e.code == "INVALID_ARGUMENT"
    assert hub_env.hub.count() == 0


@pytest.mark.parametrize("rev", ["../main", "a/../b", "/main", "ma in", "refs\\x"])
def test_bad_revisions_are_rejected(hub_env, rev):
    e = error_of(TINY, revision=rev)
    assert e.code == "INVALID_ARGUMENT"


def test_server_file_names_cannot_escape_the_snapshot(hub_env):
    files = tiny_model_files()
    files["1_Pooling/../../../../evil.json"] = b"{}"
    hub_env.hub.add_files(TINY, files)
    r = snap(TINY)
    assert "evil.json" not in str(tree(hub_env.cache_dir)) and not os.path.exists(
        os.path.join(os.path.dirname(hub_env.cache_dir), "evil.json"))
    assert os.path.isfile(os.path.join(r.path, "config.json"))


def test_pr_revision_is_quoted(hub_env):
    c = hub_env.hub.add_files(TINY, tiny_model_files(), revision="refs/pr/1")
    r = snap(TINY, revision="refs/pr/1")
    assert r.commit == c
    assert hub_env.hub.count(contains="/revision/refs%2Fpr%2F1") == 1
    with open(os.path.join(hub_env.cache_dir, "models--acme--tiny", "refs", "refs", "pr", "1")) as f:
        assert f.read() == c


# ---- interoperability with huggingface_hub ----------------------------------------------------

def test_huggingface_hub_reads_our_cache(hub_env, hf_hub_lib):
    hfh = hf_hub_lib

    r = snap(MINILM_REPO)
    hub_env.hub.clear_requests()
    p = hfh.snapshot_download(MINILM_REPO, cache_dir=hub_env.cache_dir, local_files_only=True)
    assert os.path.realpath(p) == r.path
    f = hfh.hf_hub_download(MINILM_REPO, "config.json", cache_dir=hub_env.cache_dir, local_files_only=True)
    assert os.path.realpath(os.path.dirname(f)) == r.path
    info = hfh.scan_cache_dir(hub_env.cache_dir)
    (repo,) = [x for x in info.repos if x.repo_id == MINILM_REPO]
    assert repo.size_on_disk >= r.bytes_total and not info.warnings
    assert hub_env.hub.count(contains=MINILM_REPO) == 0, hub_env.hub.requests


def test_we_read_huggingface_hubs_cache(hub_env, hf_hub_lib):
    hfh = hf_hub_lib

    p = hfh.snapshot_download(MINILM_REPO, cache_dir=hub_env.cache_dir, endpoint=hub_env.hub.url)
    hub_env.hub.clear_requests()
    r = snap(MINILM_REPO, offline=True)
    assert r.from_cache and r.path == os.path.realpath(p)
    r = snap(MINILM_REPO, refresh=True)  # online: lists, finds every file, downloads nothing
    assert r.path == os.path.realpath(p) and r.bytes_downloaded == 0
    assert hub_env.hub.count(host="cdn") == 0 and hub_env.hub.count(contains="/resolve/") == 0


def test_import_model(hub_env, minilm_dir, hf_hub_lib):
    hfh = hf_hub_lib

    path = hub.import_model(minilm_dir, "acme/minilm", cache_dir=hub_env.cache_dir)
    assert os.path.isfile(os.path.join(path, "model.safetensors"))
    r = snap("acme/minilm", offline=True)
    assert r.from_cache and r.path == os.path.realpath(path)
    assert os.path.realpath(hfh.snapshot_download("acme/minilm", cache_dir=hub_env.cache_dir,
                                                  local_files_only=True)) == r.path
    assert hub.import_model(minilm_dir, "acme/minilm", cache_dir=hub_env.cache_dir) == path  # idempotent
    (m,) = [c for c in hub.list_cache(hub_env.cache_dir) if c.repo_id == "acme/minilm"]
    assert m.size_bytes > 90_000_000 and m.refs["main"] == r.commit
    assert hub_env.hub.count(contains="minilm") == 0


# ---- Python layer -----------------------------------------------------------------------------

def test_progress_bar_goes_to_stderr_only(hub_env, capsys):
    hub.download(MINILM_REPO, progress=True)
    out, err = capsys.readouterr()
    assert out == ""


def test_progress_callback_can_cancel(hub_env):
    hub_env.hub.add_files(TINY, tiny_model_files(weights_size=2_000_000))
    hub_env.hub.faults.slow_chunk_s = 0.02

    class Stop(Exception):
        pass

    def cb(p):
        if p["file"] == "model.safetensors" and p["file_done"] > 0:
            raise Stop

    with pytest.raises(Stop):
        snap(TINY, progress=cb)
    hub_env.hub.faults.slow_chunk_s = 0.0
    hub_env.hub.clear_requests()
    r = snap(TINY)  # resumes
    assert [q.range is not None for q in hub_env.hub.requests if q.host == "cdn"] == [True]
    assert os.path.getsize(os.path.join(r.path, "model.safetensors")) == 2_000_000


def test_default_params_from_environment(hub_env, monkeypatch):
    d = hub._core.hub_default_params()
    assert d["endpoint"] == hub_env.hub.url and d["cache_dir"] == hub_env.cache_dir
    assert not d["has_token"] and not d["offline"]
    monkeypatch.setenv("HF_ENDPOINT", hub_env.hub.url + "/")
    monkeypatch.setenv("MM_HUB_CACHE", "hf")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    d = hub._core.hub_default_params()
    assert d["endpoint"] == hub_env.hub.url and d["offline"]
    assert d["cache_dir"] == os.path.join(hub_env.hf_home, "hub")


def test_cli_download_cache_and_import(hub_env, minilm_dir, capsys):
    assert hub.cli_main(["download", MINILM_REPO]) == 0
    out, err = capsys.readouterr()
    path = out.strip()
    assert os.path.isfile(os.path.join(path, "model.safetensors"))
    assert hub.cli_main(["import-model", minilm_dir, "--as", "acme/imported"]) == 0
    capsys.readouterr()
    assert hub.cli_main(["cache"]) == 0
    out, _ = capsys.readouterr()
    assert MINILM_REPO in out and "acme/imported" in out and "MB" in out
    assert hub.cli_main(["download", "acme/../x"]) == 1
    _, err = capsys.readouterr()
    assert "INVALID_ARGUMENT" in err


def test_hub_failing_mid_download_serves_the_cached_revision(hub_env):
    fh = hub_env.hub
    old = fh.add_files(TINY, tiny_model_files(seed=1))
    assert snap(TINY).commit == old
    fh.add_files(TINY, tiny_model_files(seed=2))  # main moves on
    fh.faults.fail_status, fh.faults.fail_count, fh.faults.fail_scope = 503, 1000, "cdn"
    r = snap(TINY, refresh=True, max_retries=1)
    assert r.stale and r.commit == old


def test_renamed_repo_follows_the_relative_redirect(hub_env):
    c = hub_env.hub.add_files("acme/new-name", tiny_model_files())
    hub_env.hub.renamed["acme/old-name"] = "acme/new-name"
    r = snap("acme/old-name")
    assert r.commit == c and "models--acme--old-name" in r.path
    assert hub_env.hub.count(contains="/acme/old-name/") >= 2  # the listing and the HEADs were redirected


def test_not_enough_disk_space_is_disk_full(hub_env):
    hub_env.hub.add_files(TINY, tiny_model_files())
    hub_env.hub.faults.claim_size = 1 << 60  # an exabyte of weights
    hub_env.hub.faults.match = "model.safetensors"
    e = error_of(TINY)
    assert e.code == "DISK_FULL" and "free" in str(e) and "MB needed" in str(e)
    assert hub_env.hub.count(host="cdn") == 0  # checked before downloading anything


def test_a_bad_partial_file_from_an_earlier_run_is_redownloaded(hub_env):
    files = tiny_model_files()
    hub_env.hub.add_files(TINY, files)
    blobs = os.path.join(hub_env.cache_dir, "models--acme--tiny", "blobs")
    os.makedirs(blobs)
    sha = hashlib.sha256(files["model.safetensors"]).hexdigest()
    with open(os.path.join(blobs, sha + ".incomplete"), "wb") as f:
        f.write(b"\0" * 1000)  # not the blob's first bytes
    r = snap(TINY)
    assert sha256(os.path.join(r.path, "model.safetensors")) == sha
    assert [q.range for q in hub_env.hub.requests if q.host == "cdn"] == ["bytes=1000-", None]


def test_progress_bar_draws_on_a_terminal_like_stream(hub_env):
    import io

    class Tty(io.StringIO):
        def isatty(self):
            return True

    bar = hub._ProgressBar("acme/x", stream=Tty(), delay=0.0)
    bar({"file": "model.safetensors", "file_done": 50, "file_total": 100, "model_done": 50, "model_total": 100,
         "file_index": 0, "file_count": 1})
    bar.close(True)
    text = bar.stream.getvalue()
    assert "acme/x" in text and "50%" in text and text.endswith("\r")
    assert max(len(seg) for seg in text.split("\r")) <= 200


def test_a_thread_reuses_its_connection_across_calls(hub_env):
    hub_env.hub.add_files(TINY, tiny_model_files())
    snap(TINY)
    first = {q.client_port for q in hub_env.hub.requests if q.host == "hub"}
    hub_env.hub.clear_requests()
    snap(TINY, refresh=True)  # one listing request, on the same thread
    (q,) = hub_env.hub.requests
    assert q.client_port in first


def test_a_token_with_control_characters_is_rejected_before_any_request(hub_env):
    hub_env.hub.add_files(TINY, tiny_model_files())
    e = error_of(TINY, token="hf_abc\r\nX-Evil: 1")
    assert e.code == "INVALID_TOKEN" and "hf_abc" not in str(e)
    assert hub_env.hub.count() == 0


async def test_snapshot_async_keeps_the_loop_running(hub_env):
    import asyncio

    hub_env.hub.add_files(TINY, tiny_model_files(weights_size=1_000_000))
    hub_env.hub.faults.slow_chunk_s = 0.01
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    t = asyncio.ensure_future(ticker())
    r = await hub.snapshot_async(TINY, **FAST)
    t.cancel()
    assert not r.from_cache and ticks >= 5


def test_we_complete_a_partial_huggingface_hub_snapshot(hub_env, hf_hub_lib):
    hfh = hf_hub_lib
    hub_env.hub.add_files(TINY, tiny_model_files())
    p = hfh.hf_hub_download(TINY, "config.json", cache_dir=hub_env.cache_dir, endpoint=hub_env.hub.url)
    hub_env.hub.clear_requests()
    r = snap(TINY)  # refs/main exists but the snapshot lacks weights: not a cache hit
    assert not r.from_cache and r.path == os.path.realpath(os.path.dirname(p))
    fetched = [q.path.split("/resolve/")[1].split("/", 1)[1] for q in hub_env.hub.requests
               if q.method == "GET" and "/resolve/" in q.path]
    assert "config.json" not in fetched and "1_Pooling/config.json" in fetched  # hf's file is reused
    assert os.path.isfile(os.path.join(r.path, "model.safetensors"))
    hub_env.hub.clear_requests()
    assert snap(TINY).from_cache and hub_env.hub.count() == 0
