"""Model downloads from the Hugging Face Hub, and the local model cache.

The work is done in C (``csrc/hub``, exposed as ``_core.hub_snapshot``):
this module adds the progress bar, the cache listing and a helper that
imports a local model folder into the cache.  The cache has the
``huggingface_hub`` layout (``models--org--name/{blobs,refs,snapshots}``),
so models downloaded here load with ``huggingface_hub`` /
``transformers`` from the same folder and the other way round.

Settings come from the environment, as ``huggingface_hub`` reads them:

* ``HF_ENDPOINT``: the hub (default https://huggingface.co);
* ``HF_TOKEN``, then the token file (``HF_TOKEN_PATH``, default
  ``$HF_HOME/token``), then ``HF_TOKEN=...`` in ``./.env``: sent to the hub
  only, never logged;
* ``HF_HUB_OFFLINE=1``: no request at all, the cache only;
* ``MM_HUB_CACHE``: the cache folder (default ``data/models`` under the
  working directory; the value ``hf`` means the standard huggingface cache,
  ``HF_HUB_CACHE`` or ``$HF_HOME/hub``);
* ``HF_HUB_ETAG_TIMEOUT`` / ``HF_HUB_DOWNLOAD_TIMEOUT`` (seconds), proxies
  through the usual ``https_proxy`` / ``no_proxy``, and a CA bundle from
  ``CURL_CA_BUNDLE``, ``REQUESTS_CA_BUNDLE`` or ``SSL_CERT_FILE``.

Example::

    from pymodelmgr import hub
    path = hub.download("sentence-transformers/all-MiniLM-L6-v2")
    # -> data/models/models--sentence-transformers--all-MiniLM-L6-v2/snapshots/<commit>

Errors raise :class:`HubError`, whose ``code`` is the stable error name:
``MODEL_NOT_FOUND``, ``REVISION_NOT_FOUND``, ``FILE_NOT_FOUND``,
``AUTH_REQUIRED``, ``INVALID_TOKEN``, ``UNSUPPORTED_FORMAT``,
``NETWORK_ERROR``, ``DISK_FULL``, ``CORRUPT_DOWNLOAD``,
``INVALID_ARGUMENT``, ``CANCELLED``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Union

from . import _core

__all__ = ["HubError", "Snapshot", "CachedModel", "download", "snapshot", "snapshot_async", "default_cache_dir",
           "list_cache", "import_model", "cli_main"]

log = logging.getLogger("pymodelmgr")

HubError = _core.HubError

ProgressArg = Union[bool, None, Callable[[Dict], None]]


@dataclass(frozen=True)
class Snapshot:
    """Where a model is on disk, and how it got there."""

    path: str              # the snapshot folder (or the local folder, used in place)
    commit: str            # the resolved commit ("" for a local folder)
    local_dir: bool        # the model name was a local folder
    from_cache: bool       # served from the cache without any request
    stale: bool            # the hub was unreachable and the cached copy was served
    n_files: int
    bytes_total: int
    bytes_downloaded: int  # received over the network by this call
    n_requests: int        # HTTP requests made by this call


def default_cache_dir() -> str:
    """The cache folder the C client uses when none is given (MM_HUB_CACHE
    or ``data/models``)."""
    return _core.hub_default_params()["cache_dir"]


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return ("%.0f %s" if unit == "B" else "%.1f %s") % (n, unit)
        n /= 1000.0
    return "%.1f GB" % n


class _ProgressBar:
    """Draws a one-line bar on stderr (a terminal) or logs progress lines
    (not a terminal), but only once a download has run for `delay` seconds,
    so cache hits and small files stay silent.  Never writes to stdout."""

    def __init__(self, name: str, stream=None, delay: float = 0.5, log_every: float = 5.0):
        self.name = name
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.start = time.monotonic()
        self.delay = delay
        self.log_every = log_every
        self.last_log = 0.0
        self.last_pct = -1  # the percentage last logged: 100% (hashing, renames) is logged once
        self.drawn = False
        self.last: Optional[Dict] = None

    def __call__(self, p: Dict) -> None:
        self.last = p
        now = time.monotonic()
        if now - self.start < self.delay or not p["model_total"]:
            return
        done, total = p["model_done"], p["model_total"]
        frac = min(1.0, done / total) if total else 0.0
        rate = done / max(1e-6, now - self.start)
        if self.tty:
            width = 24
            fill = int(frac * width)
            line = "%s %3d%% |%s%s| %s/%s %s/s %s" % (
                self.name, int(frac * 100), "#" * fill, "." * (width - fill), _fmt_bytes(done),
                _fmt_bytes(total), _fmt_bytes(rate), p["file"])
            cols = max(20, shutil.get_terminal_size((80, 24)).columns - 1)
            self.stream.write("\r" + line[:cols].ljust(cols))
            self.stream.flush()
            self.drawn = True
        elif now - self.last_log >= self.log_every and int(frac * 100) != self.last_pct:
            self.last_log = now
            self.last_pct = int(frac * 100)
            log.info("downloading %s: %d%% (%s of %s, %s/s)", self.name, int(frac * 100), _fmt_bytes(done),
                     _fmt_bytes(total), _fmt_bytes(rate))

    def close(self, ok: bool) -> None:
        if self.drawn:
            cols = max(20, shutil.get_terminal_size((80, 24)).columns - 1)
            self.stream.write("\r" + " " * cols + "\r")
            self.stream.flush()
        if ok and (self.drawn or self.last_log) and self.last:
            log.info("downloaded %s (%s in %.1f s)", self.name, _fmt_bytes(self.last["model_total"]),
                     time.monotonic() - self.start)


def _flush_logs() -> None:
    """Hands the C layers' buffered log lines to the ``pymodelmgr`` logger
    now (the engine does it when its event loop drains; a download called
    outside the engine would otherwise show its lines late)."""
    take = getattr(_core, "take_logs", None)
    if take is None:
        return
    for level, msg in take():
        log.log(level, "%s", msg)


def snapshot(repo_id: str, revision: str = "main", cache_dir: Optional[str] = None, *,
             progress: ProgressArg = True, endpoint: Optional[str] = None, token: Optional[str] = None,
             offline: Optional[bool] = None, refresh: bool = False, **options) -> Snapshot:
    """Makes sure ``repo_id`` at ``revision`` is in the cache and returns
    where it is, with what the call did.

    ``repo_id`` is ``"org/name"`` or a path to an existing local folder
    (used in place).  ``revision`` is a branch, tag or 40-hex commit (a
    commit pins exactly).  Only the files a model needs are fetched (config,
    tokenizer, sentence-transformers files, safetensors weights).  A cached
    snapshot is served with no request unless ``refresh=True``.

    ``progress``: True draws a bar on stderr (or logs, when stderr is not a
    terminal) for downloads that last; False is silent; a callable gets a
    dict (file, file_done, file_total, model_done, model_total, file_index,
    file_count) about ten times a second.  ``endpoint``, ``token`` and
    ``offline`` override the environment; other keyword options
    (max_retries, retry_base_s, retry_max_s, connect_timeout_s,
    read_timeout_s) tune the client.

    Blocks until done (the GIL is released meanwhile; Ctrl-C cancels and the
    partial file is resumed next time).  In asyncio code call it through
    ``loop.run_in_executor``.  Raises :class:`HubError`.
    """
    for what, value in (("repo id", repo_id), ("revision", revision)):
        if isinstance(value, str) and "\x00" in value:  # C would cut it there: another repo
            raise ValueError("%s %r contains a NUL byte" % (what, value))
    bar = None
    user_cb = None
    if callable(progress):
        user_cb = progress
    elif progress:
        bar = _ProgressBar(repo_id)
        user_cb = bar

    def cb(p: Dict) -> None:
        _flush_logs()
        if user_cb is not None:
            user_cb(p)

    ok = False
    try:
        r = _core.hub_snapshot(repo_id, revision or "main", cache_dir=cache_dir, endpoint=endpoint,
                               token=token, offline=offline, refresh=refresh, progress=cb, **options)
        ok = True
    finally:
        if bar is not None:
            bar.close(ok)
        _flush_logs()
    if r["stale"]:
        log.warning("the hub could not be reached; using the cached copy of %s (commit %s)", repo_id,
                    r["commit"][:12])
    return Snapshot(**r)


def download(repo_id: str, revision: str = "main", cache_dir: Optional[str] = None, **kwargs) -> str:
    """Downloads (or finds in the cache) ``repo_id`` at ``revision`` and
    returns the local snapshot folder.  See :func:`snapshot` for the
    arguments; raises :class:`HubError` with a ``code`` on failure."""
    return snapshot(repo_id, revision, cache_dir, **kwargs).path


async def snapshot_async(repo_id: str, revision: str = "main", cache_dir: Optional[str] = None,
                         **kwargs) -> Snapshot:
    """:func:`snapshot` for asyncio code: runs it in the loop's default
    executor, so the event loop keeps running while the model downloads."""
    import asyncio
    import functools

    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(None, functools.partial(snapshot, repo_id, revision, cache_dir, **kwargs))


# ---- the cache ---------------------------------------------------------------

@dataclass(frozen=True)
class CachedModel:
    repo_id: str
    path: str                 # models--org--name folder
    size_bytes: int           # bytes in blobs/
    refs: Dict[str, str]      # branch/tag -> commit
    snapshots: List[str]      # commits present


def list_cache(cache_dir: Optional[str] = None) -> List[CachedModel]:
    """The models in the cache, with their size on disk and refs."""
    root = cache_dir or default_cache_dir()
    out: List[CachedModel] = []
    if not os.path.isdir(root):
        return out
    for name in sorted(os.listdir(root)):
        if not name.startswith("models--"):
            continue
        repo_dir = os.path.join(root, name)
        repo_id = name[len("models--"):].replace("--", "/")
        size = 0
        blobs = os.path.join(repo_dir, "blobs")
        if os.path.isdir(blobs):
            for b in os.listdir(blobs):
                try:
                    size += os.path.getsize(os.path.join(blobs, b))
                except OSError:
                    pass
        refs: Dict[str, str] = {}
        refs_dir = os.path.join(repo_dir, "refs")
        for dirpath, _, files in os.walk(refs_dir):
            for f in files:
                full = os.path.join(dirpath, f)
                with open(full) as fh:
                    refs[os.path.relpath(full, refs_dir)] = fh.read().strip()
        snaps_dir = os.path.join(repo_dir, "snapshots")
        snaps = sorted(os.listdir(snaps_dir)) if os.path.isdir(snaps_dir) else []
        out.append(CachedModel(repo_id, repo_dir, size, refs, snaps))
    return out


_LFS_SUFFIXES = (".safetensors", ".bin", ".onnx", ".h5", ".msgpack", ".gguf", ".model", ".ot", ".pt", ".pth")


def _blob_id(path: str, size: int, lfs: bool) -> str:
    """sha256 for LFS-style files, the git blob sha1 for the rest (the names
    the hub gives blobs)."""
    h = hashlib.sha256() if lfs else hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".onnx", ".msgpack", ".h5")


def _check_model_folder(src_dir: str) -> None:
    """Raises HubError unless src_dir looks like a model: a config.json (or a
    sentence-transformers modules.json) and a weights file at its top, so a
    mistyped path (``/etc``, a home folder) is refused before anything is copied."""
    try:
        names = set(os.listdir(src_dir))
    except OSError as e:
        raise HubError("cannot read model folder %r: %s" % (src_dir, e.strerror)) from None
    has_config = bool(names & {"config.json", "modules.json"})
    has_weights = any(n.endswith(_WEIGHT_SUFFIXES) and os.path.isfile(os.path.join(src_dir, n)) for n in names)
    if not has_config or not has_weights:
        missing = " and no ".join(w for w, ok in (("config.json", has_config),
                                                   ("weights file (*.safetensors)", has_weights)) if not ok)
        err = HubError("%r is not a model folder: it has no %s at its top" % (src_dir, missing))
        err.code = "INVALID_ARGUMENT"
        raise err


def import_model(src_dir: str, repo_id: str, cache_dir: Optional[str] = None, revision: str = "main") -> str:
    """Imports a local model folder into the cache as ``repo_id`` at
    ``revision`` (a branch name), so it is served from the cache as if it
    had been downloaded (also by ``huggingface_hub`` with
    ``local_files_only=True``).  Every regular file under ``src_dir`` is
    copied into ``blobs/`` (hidden files and folders skipped); the commit id
    is derived from the content, so importing the same folder twice is a
    no-op.  Returns the snapshot folder."""
    _core.hub_validate_name(repo_id)
    parts = revision.split("/")
    if not revision or revision.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError("invalid revision %r" % revision)
    if not os.path.isdir(src_dir):
        raise HubError("model folder %r does not exist" % src_dir)
    _check_model_folder(src_dir)
    root = cache_dir or default_cache_dir()
    repo_dir = os.path.join(root, "models--" + repo_id.replace("/", "--"))
    files: Dict[str, tuple] = {}
    for dirpath, dirs, names in os.walk(src_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for n in sorted(names):
            if n.startswith("."):
                continue
            full = os.path.join(dirpath, n)
            if not os.path.isfile(full):
                continue
            rel = os.path.relpath(full, src_dir).replace(os.sep, "/")
            size = os.path.getsize(full)
            lfs = rel.endswith(_LFS_SUFFIXES) or size > (10 << 20)
            files[rel] = (full, _blob_id(full, size, lfs))
    if not files:
        raise HubError("model folder %r has no files" % src_dir)
    manifest = "\n".join("%s %s" % (rel, blob) for rel, (_, blob) in sorted(files.items()))
    commit = hashlib.sha1(("pymodelmgr-import\n" + manifest).encode()).hexdigest()
    blobs = os.path.join(repo_dir, "blobs")
    snap = os.path.join(repo_dir, "snapshots", commit)
    os.makedirs(blobs, exist_ok=True)
    for rel, (full, blob) in files.items():
        dst = os.path.join(blobs, blob)
        if not os.path.exists(dst):
            tmp = "%s.import.%d" % (dst, os.getpid())
            shutil.copyfile(full, tmp)
            os.replace(tmp, dst)
        link = os.path.join(snap, *rel.split("/"))
        os.makedirs(os.path.dirname(link), exist_ok=True)
        target = "../" * (rel.count("/") + 2) + "blobs/" + blob
        if os.path.islink(link) and os.readlink(link) == target:
            continue
        tmp = "%s.tmp.%d" % (link, os.getpid())
        if os.path.lexists(tmp):
            os.unlink(tmp)
        os.symlink(target, tmp)
        os.replace(tmp, link)
    ref = os.path.join(repo_dir, "refs", *revision.split("/"))
    os.makedirs(os.path.dirname(ref), exist_ok=True)
    tmp = "%s.tmp.%d" % (ref, os.getpid())
    with open(tmp, "w") as f:
        f.write(commit)
    os.replace(tmp, ref)
    return snap


# ---- command line ----------------------------------------------------------------

def add_cli_commands(sub) -> None:
    """Adds the ``download``, ``cache`` and ``import-model`` sub-commands to an argparse
    sub-parser set (``python -m pymodelmgr`` lists them beside its own); run them with
    :func:`run_cli`."""
    d = sub.add_parser("download", help="fetch a model into the cache without loading it",
                       description="Fetch a model from the Hugging Face Hub into the cache "
                                   "(progress on stderr); prints the snapshot folder.")
    d.add_argument("model", help="a Hugging Face repo id, org/name")
    d.add_argument("--revision", default="main", help="branch, tag or commit (default main)")
    d.add_argument("--cache-dir", default=None, help="the model cache (default: MM_HUB_CACHE or data/models)")
    d.add_argument("--refresh", action="store_true", help="ask the hub where the branch points now")
    c = sub.add_parser("cache", help="list cached models and their sizes",
                       description="List the models in the cache, their size and refs.")
    c.add_argument("--cache-dir", default=None, help="the model cache (default: MM_HUB_CACHE or data/models)")
    i = sub.add_parser("import-model", help="import a local model folder into the cache as a repo id",
                       description="Put a local model folder into the cache under a repo id, so "
                                   "task(..., model_name=REPO_ID) finds it offline.")
    i.add_argument("src_dir", help="the model folder (config.json, weights, tokenizer)")
    i.add_argument("--as", dest="repo_id", required=True, metavar="REPO_ID", help="org/name to file it under")
    i.add_argument("--revision", default="main", help="the branch name to record (default main)")
    i.add_argument("--cache-dir", default=None, help="the model cache (default: MM_HUB_CACHE or data/models)")


def run_cli(args) -> int:
    """Runs a sub-command parsed by :func:`add_cli_commands`; returns the exit status."""
    try:
        if args.cmd == "download":
            # Only a repo id: snapshot() would use an existing local folder in place, so a
            # mistyped "../../etc" would print /etc and "succeed".
            try:
                _core.hub_validate_name(args.model)
            except ValueError as e:
                print("error: INVALID_ARGUMENT: %s (download takes a Hugging Face repo id such as "
                      "\"org/name\")" % e, file=sys.stderr)
                return 1
            r = snapshot(args.model, args.revision, args.cache_dir, progress=True, refresh=args.refresh)
            print(r.path)
        elif args.cmd == "cache":
            models = list_cache(args.cache_dir)
            root = args.cache_dir or default_cache_dir()
            if not models:
                print("no models cached in %s" % root)
            for m in models:
                refs = ", ".join("%s=%s" % (k, v[:12]) for k, v in sorted(m.refs.items()))
                print("%-50s %10s  %s" % (m.repo_id, _fmt_bytes(m.size_bytes), refs))
        else:
            print(import_model(args.src_dir, args.repo_id, args.cache_dir, args.revision))
    except HubError as e:
        print("error: %s: %s" % (getattr(e, "code", "ERROR"), e), file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    return 0


def cli_main(argv: Optional[List[str]] = None) -> int:
    """``download``, ``cache`` and ``import-model`` on their own (``python -m pymodelmgr``
    has them too).  Results go to stdout, progress and errors to stderr; returns the exit
    status."""
    import argparse

    ap = argparse.ArgumentParser(prog="python -m pymodelmgr")
    add_cli_commands(ap.add_subparsers(dest="cmd", required=True))
    return run_cli(ap.parse_args(argv))
