"""The Starlette application: OpenAI-compatible routes over one ModelManager.

Each request is one ``await mm.task(...)`` on the server's event loop, so concurrent HTTP
requests reach the C workers in the same loop iteration and are batched like any other
burst of tasks.  The app holds no model state of its own: ``/v1/models`` and ``/metrics``
read the manager.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import os
import sys
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..manager import ModelManager
from ..settings import ModelManagerSettings
from . import protocol as P
from .protocol import ApiError

__all__ = ["ServerConfig", "create_app"]

logger = logging.getLogger("pymodelmgr.server")


@dataclass
class ServerConfig:
    """How ``python -m pymodelmgr serve`` runs (each field is a command-line flag).

    Attributes:
        host: address to bind; ``127.0.0.1`` (loopback only) unless told otherwise.
        port: TCP port.
        api_key: when set, every route but ``/health`` needs ``Authorization: Bearer KEY``
            (compared in constant time).  Also read from ``PYMODELMGR_API_KEY``.
        settings: the manager's settings (a ``ModelManagerSettings``, a dict, or None).
        embedding_models, generation_models, rerank_models: pre-loaded at startup; when any
            is given they are the only models served (an allow-list).
        allow_local_models: without an allow-list, model names are Hugging Face repo ids;
            this also admits local directories (absolute or ``./`` paths).
        device, num_workers, keep_alive: what ``task()`` is called with for a model the
            server loads (``keep_alive`` in minutes; None: the settings default).
        max_body_bytes: larger request bodies get 413.
        body_timeout: seconds a client has to send its whole body (408 after).
        max_items: most texts in one request.
        default_max_tokens: completions' ``max_tokens`` when the request has none (16, as
            OpenAI).
        shutdown_timeout: seconds SIGTERM waits for requests in flight.
        max_connections: concurrent connections and requests beyond which uvicorn answers
            503 at once (None: no limit; the manager's queue bound gives 429s first).
    """

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: Optional[str] = None
    settings: Any = None
    embedding_models: List[str] = field(default_factory=list)
    generation_models: List[str] = field(default_factory=list)
    rerank_models: List[str] = field(default_factory=list)
    allow_local_models: bool = False
    device: str = "gpu"
    num_workers: int = 1
    keep_alive: Optional[float] = None
    max_body_bytes: int = 8 * 1024 * 1024
    body_timeout: float = 30.0
    max_items: int = 2048
    default_max_tokens: int = 16
    shutdown_timeout: float = 30.0
    max_connections: Optional[int] = None

    def __repr__(self) -> str:  # never show the key
        return (f"ServerConfig(host={self.host!r}, port={self.port}, "
                f"api_key={'<set>' if self.api_key else None})")


def _json(data: Any, status: int = 200, headers: Optional[Dict[str, str]] = None) -> Response:
    body = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return Response(body, status_code=status, media_type="application/json", headers=headers)


def _error(status: int, message: str, code: str, param: Optional[str] = None) -> Response:
    headers = {"Connection": "close"} if status in (408, 413) else None
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    return _json(P.error_body(status, message, code, param), status, headers)


def _from_result(r) -> ApiError:
    code = r.error.code
    return ApiError(P.status_for(code), r.error.message, code)


def _has_numpy() -> bool:
    try:
        import numpy  # noqa: F401
    except ImportError:
        return False
    return True


def _f32_base64(vec) -> str:
    """A vector as OpenAI's base64: little-endian float32 bytes."""
    if hasattr(vec, "astype"):
        return base64.b64encode(vec.astype("<f4", copy=False).tobytes()).decode("ascii")
    from array import array

    a = array("f", vec)
    if sys.byteorder == "big":
        a.byteswap()
    return base64.b64encode(a.tobytes()).decode("ascii")


class _Http:
    """The HTTP layer's own metrics (requests by route and status, latency)."""

    def __init__(self, registry):
        from prometheus_client import Counter, Gauge, Histogram

        self.requests = Counter("pymodelmgr_http_requests", "HTTP requests, by route and status.",
                                ["route", "status"], registry=registry)
        self.seconds = Histogram("pymodelmgr_http_request_seconds",
                                 "Seconds to answer an HTTP request (to the last byte of a "
                                 "stream).", ["route"], registry=registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                          0.5, 1, 2.5, 5, 10, 30, 60))
        self.in_progress = Gauge("pymodelmgr_http_requests_in_progress",
                                 "HTTP requests being answered.", registry=registry)


class _State:
    def __init__(self, config: ServerConfig, manager: Optional[ModelManager]):
        from prometheus_client import CollectorRegistry

        from .. import metrics

        self.config = config
        self.mm = manager
        self.own_manager = manager is None
        self.closing = False
        self.started = int(time.time())
        allow = config.embedding_models + config.generation_models + config.rerank_models
        self.allowed = set(allow) if allow else None
        self.key = config.api_key.encode("utf-8") if config.api_key else None
        self.registry = CollectorRegistry(auto_describe=False)
        self.http = _Http(self.registry)
        self.collector = None
        self.metrics_mod = metrics
        self.numpy = _has_numpy()
        # model name -> whether its backend takes a "stop" kwarg (the native generators
        # do; the synthetic and transformers ones may not): learnt from the first refusal
        self.stop_ok: Dict[str, bool] = {}

    def task_args(self) -> Dict[str, Any]:
        c = self.config
        return {"num_workers": c.num_workers, "device": c.device, "keep_alive": c.keep_alive}


# ---- request plumbing ------------------------------------------------------------

async def _read_json(request: Request, st: _State) -> Any:
    limit = st.config.max_body_bytes
    cl = request.headers.get("content-length")
    if cl is not None:
        if not cl.isdigit():
            raise ApiError(400, "Content-Length is not a number")
        if int(cl) > limit:
            raise ApiError(413, f"request body of {int(cl)} bytes is larger than the limit of "
                           f"{limit} bytes", "REQUEST_TOO_LARGE")
    chunks: List[bytes] = []
    size = 0

    async def read_all():
        nonlocal size
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(413, f"request body is larger than the limit of {limit} bytes",
                               "REQUEST_TOO_LARGE")
            chunks.append(chunk)

    try:
        await asyncio.wait_for(read_all(), st.config.body_timeout)
    except asyncio.TimeoutError:
        raise ApiError(408, f"the request body did not arrive within {st.config.body_timeout:g} s",
                       "REQUEST_TIMEOUT") from None
    raw = b"".join(chunks)
    if not raw:
        raise ApiError(400, "the request body is empty: send a JSON object")

    def no_constants(c):
        raise ValueError(f"{c} is not valid JSON")

    try:
        return json.loads(raw, parse_constant=no_constants)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"the request body is not valid JSON: {exc}", "PARSE_ERROR") from None


def _authorized(request: Request, st: _State) -> None:
    if st.key is None:
        return
    auth = request.headers.get("authorization", "")
    scheme, _, given = auth.partition(" ")
    if not given and request.headers.get("x-api-key"):
        scheme, given = "bearer", request.headers["x-api-key"]
    if scheme.lower() != "bearer" or not given:
        raise ApiError(401, "an API key is required: send Authorization: Bearer <key>",
                       "invalid_api_key")
    if not hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), st.key):
        raise ApiError(401, "the API key is not valid", "invalid_api_key")


def _endpoint(route: str, auth: bool = True):
    """Wraps a handler: API key, OpenAI error bodies, HTTP metrics, no stack traces out."""

    def wrap(fn):
        async def handler(request: Request) -> Response:
            st: _State = request.app.state.pmm
            t0 = time.perf_counter()
            st.http.in_progress.inc()
            status = 500
            try:
                if auth:
                    _authorized(request, st)
                resp = await fn(request, st)
                status = resp.status_code
                if isinstance(resp, StreamingResponse):
                    resp = _measured_stream(resp, st, route, t0)
                    t0 = None
                return resp
            except ApiError as e:
                status = e.status
                return _error(e.status, e.message, e.code, e.param)
            except Exception as exc:  # a bug: say so without details that could leak input
                logger.error("%s: internal error (%s)", route, type(exc).__name__,
                             exc_info=logger.isEnabledFor(logging.DEBUG))
                status = 500
                return _error(500, "internal server error", "INTERNAL_ERROR")
            finally:
                st.http.in_progress.dec()
                st.http.requests.labels(route, str(status)).inc()
                if t0 is not None:
                    st.http.seconds.labels(route).observe(time.perf_counter() - t0)

        handler.__name__ = fn.__name__
        return handler

    return wrap


def _measured_stream(resp: StreamingResponse, st: _State, route: str, t0: float):
    inner = resp.body_iterator

    async def timed():
        try:
            async for chunk in inner:
                yield chunk
        finally:
            st.http.seconds.labels(route).observe(time.perf_counter() - t0)

    resp.body_iterator = timed()
    return resp


async def _unless_gone(request: Request, aw):
    """Awaits aw (task() calls) and, if that takes longer than a moment, watches the
    connection: a client that disconnects first gets its work cancelled (queued tasks
    leave their queue, running ones stop at their next chunk) instead of leaving it to run
    for nobody.  Quick requests pay one timer, not a watcher task."""
    loop = asyncio.get_running_loop()
    me = asyncio.current_task()
    state = {"gone": False, "watch": None, "done": False}

    async def watch():
        while (await request.receive())["type"] != "http.disconnect":
            pass
        if not state["done"]:
            state["gone"] = True
            me.cancel()

    def start_watch():
        state["watch"] = loop.create_task(watch())

    timer = loop.call_later(0.5, start_watch)
    try:
        return await aw
    except asyncio.CancelledError:
        if not state["gone"]:
            raise
        if hasattr(me, "uncancel"):  # Python 3.11+
            me.uncancel()
        raise ApiError(499, "the client closed the connection", "CANCELLED") from None
    finally:
        state["done"] = True
        timer.cancel()
        if state["watch"] is not None:
            state["watch"].cancel()


def _model(body: Any, st: _State) -> str:
    name = body.get("model") if isinstance(body, dict) else None
    return P.check_model_name(name, st.allowed, st.config.allow_local_models)


# ---- routes ------------------------------------------------------------------------

@_endpoint("/v1/embeddings")
async def embeddings(request: Request, st: _State) -> Response:
    body = await _read_json(request, st)
    req = P.parse_embeddings(body, st.config.max_items)
    name = _model(body, st)
    kwargs = dict(req["kwargs"])
    if st.numpy:
        kwargs["output"] = "numpy"
    r = await _unless_gone(request, st.mm.task(req["texts"], "embedding", name,
                                                **st.task_args(), **kwargs))
    if not r.success:
        raise _from_result(r)
    vecs = r.data["embeddings"]
    if req["base64"]:
        data = [{"object": "embedding", "index": i, "embedding": _f32_base64(v)}
                for i, v in enumerate(vecs)]
    else:
        rows = vecs.tolist() if hasattr(vecs, "tolist") else vecs
        data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(rows)]
    tokens = r.data.get("usage", {}).get("prompt_tokens", 0)
    return _json({"object": "list", "data": data, "model": name,
                  "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


async def _generate(request: Request, st: _State, name: str, prompts: List[str],
                    req: Dict[str, Any]):
    """One task per prompt, submitted together (one batch for the workers), so each
    prompt's usage and finish_reason are its own.  Stop strings go to the backend when it
    takes them (generation then ends there); the text is cut here as well."""
    kwargs = dict(req["kwargs"])
    if req["stop"] and st.stop_ok.get(name, True):
        kwargs["stop"] = req["stop"]

    def run(kw):
        return _unless_gone(request, asyncio.gather(*(
            st.mm.task([p], "text_generation", name, **st.task_args(), **kw) for p in prompts)))

    results = await run(kwargs)
    if "stop" in kwargs and any(_refuses_stop(r) for r in results):
        st.stop_ok[name] = False
        del kwargs["stop"]
        results = await run(kwargs)
    elif "stop" in kwargs:
        st.stop_ok[name] = True
    for r in results:
        if not r.success:
            raise _from_result(r)
    return results


def _refuses_stop(r) -> bool:
    return (not r.success and r.error.code in ("INVALID_ARGUMENT", "TASK_FAILED")
            and "stop" in r.error.message)


def _choices(results, req) -> tuple:
    """[(index, text, finish_reason)], prompt_tokens, completion_tokens."""
    n, out, pt, ct = req["n"], [], 0, 0
    for i, r in enumerate(results):
        texts = r.data.get("generated_texts")
        if texts is None:  # one conversation in, one text out
            texts = [r.data["generated_text"]]
        seqs = texts[0] if n > 1 else texts
        usage = r.data.get("usage", {})
        pt += usage.get("prompt_tokens", 0)
        ct += usage.get("completion_tokens", 0)
        per_seq = usage.get("completion_tokens", 0) / max(len(seqs), 1)
        # backends that know it say it: finish_reasons for a list input, per output text
        given = r.data.get("finish_reasons", r.data.get("finish_reason"))
        for j, text in enumerate(seqs):
            text, stopped = P.cut_at_stop(text, req["stop"])
            known = given[j] if isinstance(given, list) and j < len(given) else given
            if stopped:
                finish = "stop"
            elif isinstance(known, str):
                finish = known
            else:
                finish = "stop" if per_seq < req["max_tokens"] else "length"
            out.append((i * n + j, text, finish))
    return out, pt, ct


def _usage(pt: int, ct: int) -> Dict[str, int]:
    return {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": pt + ct}


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


def _stream(chunks: List[Dict[str, Any]]) -> StreamingResponse:
    """Server-sent events: each chunk, then ``data: [DONE]``."""

    async def gen():
        for c in chunks:
            yield _sse(c)
        yield b"data: [DONE]\n\n"

    return StreamingResponse(gen(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


class _StopCutter:
    """Cuts a streamed text at its first stop string, holding back a tail short enough
    to be the start of one, so no stop string (or part of one) is ever sent."""

    def __init__(self, stop: List[str]):
        self.stop = stop
        self.hold = max((len(s) for s in stop), default=1) - 1
        self.buf = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        self.buf += piece
        text, hit = P.cut_at_stop(self.buf, self.stop)
        if hit:
            self.stopped, self.buf = True, ""
            return text
        keep = min(self.hold, len(self.buf))
        out, self.buf = self.buf[:len(self.buf) - keep], self.buf[len(self.buf) - keep:]
        return out

    def flush(self) -> str:
        out, self.buf = self.buf, ""
        return out


def _piece(item) -> tuple:
    """A streamed item as (text, finish_reason, usage): a str, or a dict / object with
    ``text`` and optionally ``finish_reason`` and ``usage``."""
    if isinstance(item, str):
        return item, None, None
    get = item.get if isinstance(item, dict) else (lambda k, d=None: getattr(item, k, d))
    return get("text", "") or "", get("finish_reason"), get("usage")


async def _token_stream(st: _State, name: str, inputs: List[Any], req: Dict[str, Any],
                        make_chunk, usage_chunk) -> StreamingResponse:
    """Real streaming through ``ModelManager.stream()``: one stream per input, merged as
    pieces arrive; stop strings are cut here (the stream is closed at once, which stops
    its generation).  The first piece (or error) of every input is awaited before the
    response starts, so a bad model or argument is still an HTTP error status."""
    q: asyncio.Queue = asyncio.Queue()
    cutters = [_StopCutter(req["stop"]) for _ in inputs]
    results: List[Any] = [None] * len(inputs)
    reports = _stream_reports_result(st.mm)

    def open_stream(i: int, x: Any):
        kw = dict(req["kwargs"])
        if req["stop"] and st.stop_ok.get(name):  # known to take it (see _generate)
            kw["stop"] = req["stop"]
        if reports:
            kw["on_result"] = lambda r: results.__setitem__(i, r)
        return st.mm.stream(x, "text_generation", name, **st.task_args(), **kw)

    gens = [open_stream(i, x) for i, x in enumerate(inputs)]

    async def pump(i: int):
        gen = gens[i]
        try:
            async for item in gen:
                await q.put((i, item))
            r = results[i]
            if r is not None and r.success:  # the finished task: finish_reason and usage
                reason = r.data.get("finish_reason")
                await q.put((i, {"text": "", "usage": r.data.get("usage"),
                                 "finish_reason": reason if isinstance(reason, str) else None}))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - reported to the client below
            await q.put((i, exc))
            return
        finally:
            aclose = getattr(gen, "aclose", None)
            if aclose is not None:
                await aclose()
        await q.put((i, None))

    pumps = [asyncio.ensure_future(pump(i)) for i in range(len(inputs))]
    early: List[tuple] = []
    seen = set()
    try:
        while len(seen) < len(inputs):  # everyone's first event: errors become statuses
            i, item = await q.get()
            if isinstance(item, Exception):
                raise _stream_error(item)
            seen.add(i)
            early.append((i, item))
    except BaseException:
        for p in pumps:
            p.cancel()
        raise

    async def events():
        finish: Dict[int, str] = {}
        usage = {"prompt_tokens": 0, "completion_tokens": 0}
        done: set = set()
        pending = list(early)
        try:
            while len(done) < len(inputs):
                i, item = pending.pop(0) if pending else await q.get()
                if i in done:
                    continue
                if isinstance(item, Exception):
                    e = _stream_error(item)
                    yield _sse(P.error_body(e.status, e.message, e.code, e.param))
                    break
                if item is not None:
                    text, reason, u = _piece(item)
                    if reason:
                        finish[i] = reason
                    if isinstance(u, dict):
                        for k in usage:
                            usage[k] += int(u.get(k, 0))
                    out = cutters[i].feed(text)
                    if out:
                        yield _sse(make_chunk(i, out, None))
                    if not cutters[i].stopped:
                        continue
                    pumps[i].cancel()  # a stop string: end that generation now
                done.add(i)
                tail = cutters[i].flush()
                if tail:
                    yield _sse(make_chunk(i, tail, None))
                reason = "stop" if cutters[i].stopped else finish.get(i, "stop")
                yield _sse(make_chunk(i, "", reason))
            if req["include_usage"]:
                yield _sse(usage_chunk(usage["prompt_tokens"], usage["completion_tokens"]))
            yield b"data: [DONE]\n\n"
        finally:
            for p in pumps:  # the client left, or we are done: stop every generation
                p.cancel()

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _stream_reports_result(mm) -> bool:
    """Whether ModelManager.stream() takes ``on_result`` (the finished task's Result, for
    finish_reason and usage at the end of a stream)."""
    import inspect

    try:
        return "on_result" in inspect.signature(mm.stream).parameters
    except (TypeError, ValueError):
        return False


def _stream_error(exc: Exception) -> ApiError:
    """An exception out of ModelManager.stream() as an HTTP error."""
    if isinstance(exc, ApiError):
        return exc
    code = getattr(exc, "code", None)
    if isinstance(code, str):
        return ApiError(P.status_for(code), str(getattr(exc, "message", exc)), code)
    return ApiError(500, f"generation failed ({type(exc).__name__})", "TASK_FAILED")


def _can_stream(st: _State, req: Dict[str, Any]) -> bool:
    """Token streaming needs ModelManager.stream() (the decoder issue adds it) and one
    sequence per input."""
    return req["stream"] and req["n"] == 1 and callable(getattr(st.mm, "stream", None))


@_endpoint("/v1/completions")
async def completions(request: Request, st: _State) -> Response:
    body = await _read_json(request, st)
    req = P.parse_completions(body, st.config.default_max_tokens, st.config.max_items)
    name = _model(body, st)
    cid, created = "cmpl-" + uuid.uuid4().hex, int(time.time())
    base = {"id": cid, "object": "text_completion", "created": created, "model": name}
    if _can_stream(st, req):
        def chunk(i, text, reason):
            return {**base, "choices": [{"index": i, "text": text, "logprobs": None,
                                         "finish_reason": reason}]}

        def usage(pt, ct):
            return {**base, "choices": [], "usage": _usage(pt, ct)}
        return await _token_stream(st, name, req["prompts"], req, chunk, usage)
    results = await _generate(request, st, name, req["prompts"], req)
    choices, pt, ct = _choices(results, req)
    if not req["stream"]:
        return _json({"id": cid, "object": "text_completion", "created": created, "model": name,
                      "choices": [{"index": i, "text": t, "logprobs": None, "finish_reason": f}
                                  for i, t, f in choices],
                      "usage": _usage(pt, ct)})
    # Without ModelManager.stream() (or with n > 1) a stream carries each choice's whole
    # text as one chunk, then its finish_reason.
    chunks = []
    for i, t, f in choices:
        chunks.append({**base, "choices": [{"index": i, "text": t, "logprobs": None,
                                            "finish_reason": None}]})
        chunks.append({**base, "choices": [{"index": i, "text": "", "logprobs": None,
                                            "finish_reason": f}]})
    if req["include_usage"]:
        chunks.append({**base, "choices": [], "usage": _usage(pt, ct)})
    return _stream(chunks)


@_endpoint("/v1/chat/completions")
async def chat_completions(request: Request, st: _State) -> Response:
    body = await _read_json(request, st)
    req = P.parse_chat(body, st.config.default_max_tokens)
    name = _model(body, st)
    if not callable(getattr(st.mm, "stream", None)):
        # Chat templates arrive with the decoder-only models (and ModelManager.stream()).
        raise ApiError(400, f"model {name!r} has no chat template: chat completions need a "
                       "decoder-only model whose tokenizer defines one, and this build's text "
                       "generation models are encoder-decoders (T5, BART); use /v1/completions",
                       "UNSUPPORTED", "model")
    cid, created = "chatcmpl-" + uuid.uuid4().hex, int(time.time())
    base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": name}
    messages = req["messages"]
    if _can_stream(st, req):
        started = set()

        def chunk(i, text, reason):
            delta = {"content": text} if text else {}
            if i not in started:  # the first chunk of a choice names the role
                started.add(i)
                delta = {"role": "assistant", **delta}
            return {**base, "choices": [{"index": i, "delta": delta, "logprobs": None,
                                         "finish_reason": reason}]}

        def usage(pt, ct):
            return {**base, "choices": [], "usage": _usage(pt, ct)}
        return await _token_stream(st, name, [messages], req, chunk, usage)
    results = await _generate(request, st, name, [messages], req)
    choices, pt, ct = _choices(results, req)
    if not req["stream"]:
        return _json({"id": cid, "object": "chat.completion", "created": created, "model": name,
                      "choices": [{"index": i, "message": {"role": "assistant", "content": t},
                                   "logprobs": None, "finish_reason": f}
                                  for i, t, f in choices],
                      "usage": _usage(pt, ct)})
    chunks = []
    for i, t, f in choices:
        chunks.append({**base, "choices": [{"index": i, "delta": {"role": "assistant",
                                                                   "content": t},
                                            "logprobs": None, "finish_reason": None}]})
        chunks.append({**base, "choices": [{"index": i, "delta": {}, "logprobs": None,
                                            "finish_reason": f}]})
    if req["include_usage"]:
        chunks.append({**base, "choices": [], "usage": _usage(pt, ct)})
    return _stream(chunks)


@_endpoint("/v1/rerank")
async def rerank(request: Request, st: _State) -> Response:
    """Cohere / Jina / Infinity shape: results best first, ``relevance_score``, the
    document as ``{"text": ...}`` when ``return_documents``."""
    body = await _read_json(request, st)
    req = P.parse_rerank(body, st.config.max_items)
    name = _model(body, st)
    kwargs = {"top_k": req["top_n"]} if req["top_n"] else {}
    r = await _unless_gone(request, st.mm.task({"query": req["query"],
                                                "documents": req["documents"]}, "rerank", name,
                                               **st.task_args(), **kwargs))
    if not r.success:
        raise _from_result(r)
    docs = req["documents"]
    results = []
    for x in r.data["results"]:
        item = {"index": x["index"], "relevance_score": x["score"]}
        if req["return_documents"]:
            item["document"] = {"text": docs[x["index"]]}
        results.append(item)
    tokens = r.data.get("usage", {}).get("prompt_tokens", 0)
    return _json({"id": "rerank-" + uuid.uuid4().hex, "object": "rerank", "model": name,
                  "results": results, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


@_endpoint("/v1/models")
async def list_models(request: Request, st: _State) -> Response:
    seen: Dict[str, Dict[str, Any]] = {}
    status = await st.mm.status()
    for m in status.data.get("models", []) if status.success else []:
        seen[m["model_name"]] = {"id": m["model_name"], "object": "model",
                                 "created": int(m.get("loaded_at") or st.started),
                                 "owned_by": "pymodelmgr", "task_type": m["task_type"],
                                 "state": m["state"]}
    if st.allowed is not None:
        c = st.config
        for names, tt in ((c.embedding_models, "embedding"),
                          (c.generation_models, "text_generation"), (c.rerank_models, "rerank")):
            for n in names:
                seen.setdefault(n, {"id": n, "object": "model", "created": st.started,
                                    "owned_by": "pymodelmgr", "task_type": tt,
                                    "state": "not_loaded"})
    else:
        for n in _cached_models(st):
            seen.setdefault(n, {"id": n, "object": "model", "created": st.started,
                                "owned_by": "pymodelmgr", "state": "cached"})
    return _json({"object": "list", "data": sorted(seen.values(), key=lambda d: d["id"])})


def _cached_models(st: _State) -> List[str]:
    try:
        from .. import hub

        cache_dir = st.mm.settings.cache_dir
        if cache_dir == "hf":
            cache_dir = hub.default_cache_dir() if hasattr(hub, "default_cache_dir") else None
        return [m.repo_id for m in hub.list_cache(cache_dir)]
    except Exception:  # no hub layer in this build, unreadable cache: list none
        return []


@_endpoint("/health", auth=False)
async def health(request: Request, st: _State) -> Response:
    if st.closing or st.mm is None or st.mm._closed:
        return _json({"status": "shutting_down"}, 503)
    return _json({"status": "ok"})


@_endpoint("/metrics")
async def metrics(request: Request, st: _State) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(st.registry), media_type=CONTENT_TYPE_LATEST)


async def _not_found(request: Request, exc: HTTPException) -> Response:
    if exc.status_code == 405:
        return _error(405, f"{request.method} is not allowed on {request.url.path}",
                      "METHOD_NOT_ALLOWED")
    return _error(exc.status_code, f"no route {request.method} {request.url.path}",
                  "NOT_FOUND" if exc.status_code == 404 else "HTTP_ERROR")


# ---- the app -------------------------------------------------------------------------

def create_app(config: Optional[ServerConfig] = None,
               manager: Optional[ModelManager] = None) -> Starlette:
    """The ASGI app.  Without ``manager`` it creates one ModelManager from
    ``config.settings`` when it starts (in the server's event loop), pre-loads the
    configured models, and closes it on shutdown (queued work finishes, models are
    released).  With ``manager`` it serves that one and leaves closing it to the caller."""
    config = config or ServerConfig()
    st = _State(config, manager)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if st.mm is None:
            settings = config.settings
            if isinstance(settings, dict):
                settings = ModelManagerSettings(**settings)
            st.mm = ModelManager(settings)
        st.collector = st.metrics_mod.register(st.registry, st.mm)
        await _preload(st)
        try:
            yield
        finally:
            st.closing = True
            if st.own_manager:
                await st.mm.close()
                logger.info("model manager closed: queued work finished, models released")

    routes = [
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/rerank", rerank, methods=["POST"]),
        Route("/rerank", rerank, methods=["POST"]),  # where Infinity serves it
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={404: _not_found, 405: _not_found})
    app.state.pmm = st
    return app


async def _preload(st: _State) -> None:
    c = st.config
    jobs = [(n, "embedding") for n in c.embedding_models]
    jobs += [(n, "text_generation") for n in c.generation_models]
    jobs += [(n, "rerank") for n in c.rerank_models]
    for name, tt in jobs:
        r = await st.mm.task(None, tt, name, **st.task_args())
        if r.success:
            logger.info("pre-loaded %s (%s) on %s", name, tt, r.data.get("devices"))
        else:
            logger.warning("could not pre-load %s: %s", name, r.error.code)


def _env_key() -> Optional[str]:
    return os.environ.get("PYMODELMGR_API_KEY") or None
