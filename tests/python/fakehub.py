"""A fake Hugging Face Hub on the loopback interface, for tests and benchmarks.

It speaks the parts of the hub's HTTP protocol that model downloads use, so
both pymodelmgr's C client and ``huggingface_hub`` run their real download
paths against it (point them at ``hub.url`` through ``HF_ENDPOINT`` or an
``endpoint=`` argument):

* ``GET /api/models/{repo}[/revision/{rev}]`` (``?blobs=true`` adds sizes,
  blob ids and LFS info) and ``GET /api/models/{repo}/tree/{rev}[/{path}]``;
* ``HEAD|GET /{repo}/resolve/{rev}/{path}``: regular files answer 200 with
  ``ETag`` (git blob sha1); LFS files (``*.safetensors``, ``*.bin`` and
  anything above ``lfs_threshold``) answer 302 to a second host name, the
  "CDN" (``127.0.0.2`` on its own port, loopback only), with
  ``X-Linked-Etag`` (sha256) and ``X-Linked-Size``; every answer carries
  ``X-Repo-Commit``;
* ``GET /cdn/{sha256}`` on the CDN host, with ``Range`` support;
* hub errors with ``X-Error-Code`` (``RepoNotFound``, ``RevisionNotFound``,
  ``EntryNotFound``, ``GatedRepo``), 401 for a bad token;
* renamed repos (``hub.renamed[old] = new``): a relative 307 to the new name.

Faults are switched on per test through ``hub.faults`` (see ``Faults``):
fail with a status a few times (500, 429 with Retry-After), drop the
connection mid-body, corrupt a body, ignore Range, go slow, or refuse
connections outright.  Every request is recorded in ``hub.requests`` (host,
method, path, whether an Authorization header came, Range) so tests can
assert "no request", "the CDN never saw the token", and so on.

Nothing here touches the network beyond 127.0.0.0/8.

Use::

    with FakeHub() as hub:
        hub.add_folder("sentence-transformers/all-MiniLM-L6-v2", model_dir)
        os.environ["HF_ENDPOINT"] = hub.url
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Union
from urllib.parse import quote, unquote, urlsplit

__all__ = ["FakeHub", "Faults", "HubFile", "Request"]

CHUNK = 1 << 20


@dataclass
class HubFile:
    """One file of one commit: content in memory or on disk."""

    path: str
    size: int
    sha256: str
    git_sha1: str
    lfs: bool
    data: Optional[bytes] = None
    disk_path: Optional[str] = None

    def read(self, start: int = 0, end: Optional[int] = None):
        """Yields the bytes [start, end) in chunks."""
        end = self.size if end is None else end
        if self.data is not None:
            for off in range(start, end, CHUNK):
                yield self.data[off:min(end, off + CHUNK)]
            return
        with open(self.disk_path, "rb") as f:
            f.seek(start)
            left = end - start
            while left > 0:
                b = f.read(min(CHUNK, left))
                if not b:
                    break
                left -= len(b)
                yield b


@dataclass
class Faults:
    """Switchable faults.  Counters go down as faults fire; scope is one of
    "api", "resolve", "cdn", "file" (resolve GET or CDN) or "any".

    fail_status: answer this status (e.g. 500, 429) to the next fail_count
        requests in fail_scope, with Retry-After: retry_after when set.
    drop_after: for the next drop_count file bodies, send this many bytes of
        the body, then close the connection.
    corrupt_count: the next N file bodies have one byte flipped.
    ignore_range_count: the next N Range requests get a 200 with everything.
    slow_chunk_s: sleep this long before each 64 KiB of every file body.
    match: the body faults above (drop, corrupt, ignore-range, slow) apply
        only to files whose repo path contains this string ("" = all); a
        drop also skips bodies not longer than drop_after.
    claim_size: advertise this size (listing, X-Linked-Size) for files
        whose path contains match, e.g. to look like a model too big for the disk.
    refuse: close every new connection without answering (hub "down").
    """

    fail_status: int = 0
    fail_count: int = 0
    fail_scope: str = "any"
    retry_after: Optional[int] = None
    drop_after: int = 0
    drop_count: int = 0
    corrupt_count: int = 0
    ignore_range_count: int = 0
    slow_chunk_s: float = 0.0
    match: str = ""
    claim_size: int = 0
    refuse: bool = False


@dataclass
class Request:
    host: str  # "hub" or "cdn"
    method: str
    path: str
    auth: bool
    range: Optional[str]
    status: int = 0
    headers: Dict[str, str] = field(default_factory=dict)  # request headers, Authorization left out
    client_port: int = 0  # the client's TCP port: the same port means a reused connection


@dataclass
class _Repo:
    refs: Dict[str, str] = field(default_factory=dict)  # branch/tag -> commit
    commits: Dict[str, Dict[str, HubFile]] = field(default_factory=dict)
    gated: bool = False
    allowed_tokens: set = field(default_factory=set)


def _git_sha1(size: int, chunks) -> str:
    h = hashlib.sha1(b"blob %d\0" % size)
    for c in chunks:
        h.update(c)
    return h.hexdigest()


_HASHES: Dict[tuple, tuple] = {}  # (path, size, mtime) -> (sha256, git sha1); files are hashed once per process
_HASHES_LOCK = threading.Lock()


def _disk_hashes(path: str) -> tuple:
    st = os.stat(path)
    key = (os.path.realpath(path), st.st_size, st.st_mtime_ns)
    with _HASHES_LOCK:
        if key in _HASHES:
            return _HASHES[key]
    h = hashlib.sha256()
    g = hashlib.sha1(b"blob %d\0" % st.st_size)
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(CHUNK), b""):
            h.update(b)
            g.update(b)
    with _HASHES_LOCK:
        _HASHES[key] = (h.hexdigest(), g.hexdigest())
    return _HASHES[key]


def _is_lfs_name(path: str) -> bool:
    return path.endswith((".safetensors", ".bin", ".onnx", ".h5", ".msgpack", ".gguf", ".model", ".ot"))


class FakeHub:
    """The fake hub: two loopback listeners (hub and CDN) sharing one state."""

    def __init__(self, lfs_threshold: int = 10 << 20, cdn_host: str = "127.0.0.2"):
        self.lfs_threshold = lfs_threshold
        self.faults = Faults()
        self.requests: List[Request] = []
        self.valid_tokens: set = set()
        self.renamed: Dict[str, str] = {}  # old repo id -> new one: answered with a relative 307
        self._repos: Dict[str, _Repo] = {}
        self._lock = threading.Lock()
        self._servers = []
        self._threads = []
        handler = _make_handler(self)
        self._hub = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        try:
            self._cdn = ThreadingHTTPServer((cdn_host, 0), handler)
        except OSError:  # a loopback without 127.0.0.2: "localhost" is still another host name
            cdn_host = "localhost"
            self._cdn = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        for s in (self._hub, self._cdn):
            s.daemon_threads = True
            s.block_on_close = False
        self._hub.kind = "hub"
        self._cdn.kind = "cdn"
        self.url = "http://127.0.0.1:%d" % self._hub.server_address[1]
        self.cdn_url = "http://%s:%d" % (cdn_host, self._cdn.server_address[1])
        for s in (self._hub, self._cdn):
            t = threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            t.start()
            self._threads.append(t)

    # ---- lifecycle -------------------------------------------------------

    def close(self) -> None:
        for s in (self._hub, self._cdn):
            s.shutdown()
            s.server_close()
        for t in self._threads:
            t.join(5)

    def __enter__(self) -> "FakeHub":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- content ---------------------------------------------------------

    def add_files(self, repo_id: str, files: Dict[str, Union[bytes, str]], revision: str = "main",
                  gated: bool = False, allowed_tokens=()) -> str:
        """Adds a commit of repo_id with the given files (path -> bytes, or
        path -> a file on disk) and points branch/tag `revision` at it.
        Returns the 40-hex commit id."""
        entries: Dict[str, HubFile] = {}
        for path, content in sorted(files.items()):
            if isinstance(content, (bytes, bytearray)):
                data = bytes(content)
                size = len(data)
                sha = hashlib.sha256(data).hexdigest()
                git = _git_sha1(size, [data])
                disk = None
            else:
                disk = str(content)
                size = os.path.getsize(disk)
                sha, git = _disk_hashes(disk)
                data = None
            lfs = _is_lfs_name(path) or size > self.lfs_threshold
            entries[path] = HubFile(path, size, sha, git, lfs, data, disk)
        manifest = json.dumps([[p, e.git_sha1] for p, e in sorted(entries.items())] + [repo_id, revision])
        commit = hashlib.sha1(manifest.encode()).hexdigest()
        with self._lock:
            repo = self._repos.setdefault(repo_id, _Repo())
            repo.commits[commit] = entries
            repo.refs[revision] = commit
            repo.gated = repo.gated or gated
            repo.allowed_tokens.update(allowed_tokens)
            self.valid_tokens.update(allowed_tokens)
        return commit

    def add_folder(self, repo_id: str, folder: str, revision: str = "main", extra: Optional[Dict] = None,
                   **kw) -> str:
        """Adds every file under folder (recursively, skipping dot-folders)
        as a commit of repo_id.  extra adds or replaces files."""
        files: Dict[str, Union[bytes, str]] = {}
        for root, dirs, names in os.walk(folder):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for n in names:
                full = os.path.join(root, n)
                files[os.path.relpath(full, folder).replace(os.sep, "/")] = full
        files.update(extra or {})
        return self.add_files(repo_id, files, revision=revision, **kw)

    def file(self, repo_id: str, path: str, revision: str = "main") -> HubFile:
        repo = self._repos[repo_id]
        return repo.commits[repo.refs.get(revision, revision)][path]

    # ---- request log -----------------------------------------------------

    def clear_requests(self) -> None:
        with self._lock:
            self.requests.clear()

    def count(self, host: Optional[str] = None, method: Optional[str] = None, contains: str = "") -> int:
        with self._lock:
            return sum(1 for r in self.requests
                       if (host is None or r.host == host) and (method is None or r.method == method)
                       and contains in r.path)

    def _log(self, req: Request) -> None:
        with self._lock:
            self.requests.append(req)

    # ---- fault helpers (called by the handler) ---------------------------

    def _take(self, name: str) -> bool:
        with self._lock:
            n = getattr(self.faults, name)
            if n > 0:
                setattr(self.faults, name, n - 1)
                return True
            return False

    def _take_fail(self, scope: str) -> Optional[int]:
        with self._lock:
            f = self.faults
            if f.fail_count > 0 and (f.fail_scope == "any" or f.fail_scope == scope
                                     or (f.fail_scope == "file" and scope in ("resolve-get", "cdn"))):
                f.fail_count -= 1
                return f.fail_status
            return None

    def _claimed_size(self, f: HubFile) -> int:
        fl = self.faults
        return fl.claim_size if fl.claim_size and fl.match in f.path else f.size

    def _auth(self, repo: _Repo, token: Optional[str]):
        """None when allowed, else (status, error code, message)."""
        if token is not None and token not in self.valid_tokens:
            return 401, None, "Invalid credentials in Authorization header"
        if repo.gated:
            if token is None:
                return 401, "GatedRepo", "Access to this model is restricted. You must be authenticated."
            if token not in repo.allowed_tokens:
                return 403, "GatedRepo", "Access to this model is restricted and you are not in the authorized list."
        return None


_API_RE = re.compile(r"^/api/models/(?P<repo>[^/]+(?:/[^/]+)??)(?:/(?P<kind>revision|tree)/(?P<rev>[^/]+)(?P<sub>/.*)?)?$")
_RESOLVE_RE = re.compile(r"^/(?P<repo>[^/]+/[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_CDN_RE = re.compile(r"^/cdn/(?P<sha>[0-9a-f]{64})$")
_RANGE_RE = re.compile(r"^bytes=(\d+)-(\d*)$")


def _make_handler(hub: FakeHub):
    _claimed = hub._claimed_size

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "FakeHub/1.0"

        def log_message(self, fmt, *args):  # quiet
            pass

        def handle(self):
            if hub.faults.refuse:
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            try:
                super().handle()
            except (ConnectionError, socket.timeout):
                pass

        def finish(self):
            try:
                super().finish()
            except (ConnectionError, OSError):
                pass

        # -- helpers --
        def _token(self) -> Optional[str]:
            a = self.headers.get("Authorization")
            if a and a.startswith("Bearer "):
                return a[7:].strip()
            return None

        def _record(self, status: int) -> None:
            hdrs = {k: v for k, v in self.headers.items() if k.lower() != "authorization"}
            hub._log(Request(self.server.kind, self.command, self.path, "Authorization" in self.headers,
                             self.headers.get("Range"), status, hdrs, self.client_address[1]))

        def _send(self, status: int, headers=None, body: bytes = b"") -> None:
            self._record(status)
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD" and body:
                self.wfile.write(body)

        def _error(self, status: int, code: Optional[str], msg: str, extra=None) -> None:
            h = {"Content-Type": "application/json"}
            if code:
                h["X-Error-Code"] = code
            h["X-Error-Message"] = msg
            h.update(extra or {})
            self._send(status, h, json.dumps({"error": msg}).encode())

        def _repo(self, repo_id: str):
            repo = hub._repos.get(repo_id)
            tok = self._token()
            if repo is None:
                # The hub hides missing repos behind 401 when no token is sent.
                self._error(404 if tok else 401, "RepoNotFound", "Repository not found")
                return None
            denied = hub._auth(repo, tok)
            if denied:
                self._error(*denied)
                return None
            return repo

        def _commit(self, repo: _Repo, rev: str):
            rev = unquote(rev)
            if rev in repo.refs:
                return repo.refs[rev]
            if rev in repo.commits:
                return rev
            self._error(404, "RevisionNotFound", "Invalid rev id: %s" % rev)
            return None

        # -- verbs --
        def do_HEAD(self):
            self._dispatch()

        def do_GET(self):
            self._dispatch()

        def _dispatch(self):
            path = urlsplit(self.path).path
            query = urlsplit(self.path).query
            if self.server.kind == "cdn":
                m = _CDN_RE.match(path)
                if not m:
                    return self._error(404, None, "not found")
                return self._serve_cdn(m.group("sha"))
            for old_id, new_id in hub.renamed.items():
                for prefix in ("/api/models/", "/"):
                    if path.startswith(prefix + old_id + "/") or path == prefix + old_id:
                        loc = prefix + new_id + self.path[len(prefix + old_id):]
                        return self._send(307, {"Location": loc})
            m = _API_RE.match(path)
            if m and self.command == "GET":
                scope = "api"
                status = hub._take_fail(scope)
                if status:
                    return self._fail(status)
                return self._serve_api(unquote(m.group("repo")), m.group("kind"), m.group("rev") or "main",
                                       m.group("sub"), "blobs=true" in query)
            m = _RESOLVE_RE.match(path)
            if m:
                status = hub._take_fail("resolve" if self.command == "HEAD" else "resolve-get")
                if status:
                    return self._fail(status)
                return self._serve_resolve(unquote(m.group("repo")), m.group("rev"), unquote(m.group("path")))
            self._error(404, None, "not found")

        def _fail(self, status: int):
            h = {}
            if hub.faults.retry_after is not None:
                h["Retry-After"] = str(hub.faults.retry_after)
            self._error(status, None, "fault injected: HTTP %d" % status, h)

        def _serve_api(self, repo_id, kind, rev, sub, blobs):
            repo = self._repo(repo_id)
            if repo is None:
                return
            commit = self._commit(repo, rev)
            if commit is None:
                return
            files = repo.commits[commit]
            if kind == "tree":
                prefix = (unquote(sub).strip("/") + "/") if sub else ""
                out, dirs = [], set()
                for p, f in sorted(files.items()):
                    if not p.startswith(prefix):
                        continue
                    parts = p.split("/")
                    for i in range(1, len(parts)):
                        d = "/".join(parts[:i])
                        if d.startswith(prefix) and d not in dirs:
                            dirs.add(d)
                            out.append({"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(),
                                        "size": 0, "path": d})
                    e = {"type": "file", "oid": f.git_sha1, "size": f.size, "path": p}
                    if f.lfs:
                        e["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
                    out.append(e)
                return self._send(200, {"Content-Type": "application/json"}, json.dumps(out).encode())
            siblings = []
            for p, f in sorted(files.items()):
                s = {"rfilename": p}
                if blobs:
                    size = _claimed(f)
                    s["size"] = size
                    s["blobId"] = f.git_sha1
                    if f.lfs:
                        s["lfs"] = {"sha256": f.sha256, "size": size, "pointerSize": 134}
                siblings.append(s)
            body = {"_id": commit[:24], "id": repo_id, "modelId": repo_id, "sha": commit, "private": False,
                    "gated": "auto" if repo.gated else False, "disabled": False, "tags": [],
                    "siblings": siblings, "lastModified": "2024-01-01T00:00:00.000Z"}
            self._send(200, {"Content-Type": "application/json"}, json.dumps(body).encode())

        def _serve_resolve(self, repo_id, rev, path):
            repo = self._repo(repo_id)
            if repo is None:
                return
            commit = self._commit(repo, rev)
            if commit is None:
                return
            f = repo.commits[commit].get(path)
            if f is None:
                return self._error(404, "EntryNotFound", "Entry not found", {"X-Repo-Commit": commit})
            if f.lfs:
                # signed CDN URLs are long (~1.5 kB of query): so are ours
                sig = hashlib.sha256((commit + path).encode()).hexdigest() * 24
                loc = "%s/cdn/%s?file=%s&X-Amz-Signature=%s" % (hub.cdn_url, f.sha256, quote(path), sig)
                return self._send(302, {"X-Repo-Commit": commit, "X-Linked-Etag": '"%s"' % f.sha256,
                                        "X-Linked-Size": str(_claimed(f)), "ETag": '"%s"' % f.git_sha1,
                                        "Location": loc, "Accept-Ranges": "bytes"})
            self._serve_body(f, {"X-Repo-Commit": commit, "ETag": '"%s"' % f.git_sha1})

        def _serve_cdn(self, sha):
            status = hub._take_fail("cdn")
            if status:
                return self._fail(status)
            found = None
            with hub._lock:
                for repo in hub._repos.values():
                    for files in repo.commits.values():
                        for f in files.values():
                            if f.sha256 == sha:
                                found = f
            if found is None:
                return self._error(404, None, "no such object")
            self._serve_body(found, {"ETag": '"%s"' % sha})

        def _serve_body(self, f: HubFile, headers):
            start, end, status = 0, f.size, 200
            rng = self.headers.get("Range")
            hit = hub.faults.match in f.path
            if rng and not (hit and hub._take("ignore_range_count")):
                m = _RANGE_RE.match(rng.strip())
                if m:
                    start = int(m.group(1))
                    if m.group(2):
                        end = min(f.size, int(m.group(2)) + 1)
                    if start >= f.size:
                        return self._error(416, None, "range not satisfiable",
                                           {"Content-Range": "bytes */%d" % f.size})
                    status = 206
            self._record(status)
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(end - start))
            if status == 206:
                self.send_header("Content-Range", "bytes %d-%d/%d" % (start, end - 1, f.size))
            self.end_headers()
            if self.command == "HEAD":
                return
            drop = None
            if hit and end - start > hub.faults.drop_after and hub._take("drop_count"):
                drop = hub.faults.drop_after
            corrupt = hit and hub._take("corrupt_count")
            slow = hub.faults.slow_chunk_s if hit else 0.0
            sent = 0
            for chunk in f.read(start, end):
                if corrupt and chunk:
                    chunk = bytes([chunk[0] ^ 0xFF]) + chunk[1:]
                    corrupt = False
                if slow:
                    for i in range(0, len(chunk), 65536):
                        time.sleep(slow)
                        self.wfile.write(chunk[i:i + 65536])
                elif drop is not None and sent + len(chunk) >= drop:
                    self.wfile.write(chunk[:max(0, drop - sent)])
                    self.wfile.flush()
                    self.close_connection = True
                    try:
                        self.connection.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                    return
                else:
                    self.wfile.write(chunk)
                sent += len(chunk)

    return Handler
