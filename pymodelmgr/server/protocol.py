"""The OpenAI wire format: request checks, error bodies, status codes.

Requests are plain JSON dicts checked field by field here (not through a schema library) so
that every refusal names the offending field in OpenAI's error format,
``{"error": {"message", "type", "param", "code"}}``, with the status a client library
expects.  Nothing here touches the model manager.
"""
from __future__ import annotations

import math
import re
from typing import Any, Dict, List, Optional, Tuple

__all__ = ["ApiError", "STATUS_BY_CODE", "error_body", "status_for", "check_model_name",
           "parse_embeddings", "parse_completions", "parse_chat", "parse_rerank"]

# The manager's error codes (Result.error.code) -> HTTP status.
STATUS_BY_CODE: Dict[str, int] = {
    "INVALID_ARGUMENT": 400,
    "PARSE_ERROR": 400,
    "UNSUPPORTED": 400,
    "UNSUPPORTED_FORMAT": 400,
    "UNSUPPORTED_ARCHITECTURE": 400,
    "MODEL_NOT_FOUND": 404,
    "REVISION_NOT_FOUND": 404,
    "FILE_NOT_FOUND": 404,
    "AUTH_REQUIRED": 404,  # a gated repo this server has no token for: not servable here
    "INVALID_TOKEN": 502,
    "QUEUE_FULL": 429,
    "BUSY": 429,
    "SHUTTING_DOWN": 503,
    "INSUFFICIENT_MEMORY": 503,  # the model cannot be placed now (others are busy)
    "MODEL_MANAGER_DISABLED": 503,
    "QUEUE_TIMEOUT": 504,
    "NETWORK_ERROR": 502,
    "CANCELLED": 499,
    "DROPPED": 503,
}

_TYPE_BY_STATUS = {400: "invalid_request_error", 401: "authentication_error",
                   404: "not_found_error", 408: "invalid_request_error",
                   413: "invalid_request_error", 415: "invalid_request_error",
                   429: "rate_limit_error", 503: "service_unavailable", 504: "timeout_error"}


class ApiError(Exception):
    """A refusal: HTTP status, message, the manager's (or our) error code, the field."""

    def __init__(self, status: int, message: str, code: str = "INVALID_ARGUMENT",
                 param: Optional[str] = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param


def status_for(code: str) -> int:
    """The HTTP status of a manager error code (500 for anything not listed)."""
    return STATUS_BY_CODE.get(code, 500)


def error_body(status: int, message: str, code: str, param: Optional[str] = None) -> Dict[str, Any]:
    """OpenAI's error object; ``code`` carries the manager's error code."""
    return {"error": {"message": message,
                      "type": _TYPE_BY_STATUS.get(status, "server_error"),
                      "param": param, "code": code}}


# ---- model names ---------------------------------------------------------------

# A Hugging Face repo id: one optional "org/" and a name, no "..", nothing that walks a
# filesystem (the cache lays repo ids out as models--org--name).
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")


def check_model_name(name: Any, allowed: Optional[set], allow_local: bool) -> str:
    """The model name of a request, or ApiError.

    With an allow-list (``--model``), exactly those names are served (they may be synthetic
    or local: the operator chose them).  Without one, Hugging Face repo ids only; a local
    path only with ``allow_local`` (``--allow-local-models``)."""
    if not isinstance(name, str) or not name:
        raise ApiError(400, "model must be a non-empty string", param="model")
    if allowed is not None:
        if name not in allowed:
            raise ApiError(404, f"model {name!r} is not served here; GET /v1/models lists "
                           "the models this server offers", "MODEL_NOT_FOUND", "model")
        return name
    if _HUB_ID.match(name) and ".." not in name:
        return name
    if allow_local and (name.startswith("/") or name.startswith("./")) and "\x00" not in name:
        return name
    raise ApiError(400, f"model {name!r} is not a Hugging Face repo id (org/name); local paths "
                   "need the server's --allow-local-models", param="model")


# ---- field checks --------------------------------------------------------------

def _get(body: Dict[str, Any], key: str, types, default=None, *, allow_none=True):
    v = body.get(key, default)
    if v is None:
        if not allow_none:
            raise ApiError(400, f"{key} must not be null", param=key)
        return default
    if types is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ApiError(400, f"{key} must be a number, got {_show(v)}", param=key)
        return float(v)
    if types is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise ApiError(400, f"{key} must be an integer, got {_show(v)}", param=key)
        return v
    if not isinstance(v, types) or (types is not bool and isinstance(v, bool)):
        name = getattr(types, "__name__", "the right type")
        raise ApiError(400, f"{key} must be a {name}, got {_show(v)}", param=key)
    return v


def _show(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def _texts(v: Any, key: str, max_items: int) -> Tuple[List[str], bool]:
    """A string or a list of strings -> (list, was_single)."""
    if isinstance(v, str):
        return [v], True
    if isinstance(v, list) and v:
        if len(v) > max_items:
            raise ApiError(400, f"{key} has {len(v)} entries; at most {max_items} per request",
                           param=key)
        for i, x in enumerate(v):
            if not isinstance(x, str):
                if isinstance(x, int) or (isinstance(x, list) and x and isinstance(x[0], int)):
                    raise ApiError(400, f"{key}[{i}]: token arrays are not supported; send text",
                                   param=key)
                raise ApiError(400, f"{key}[{i}] must be a string, got {_show(x)}", param=key)
        return list(v), False
    if isinstance(v, list):
        raise ApiError(400, f"{key} must not be empty", param=key)
    raise ApiError(400, f"{key} must be a string or a list of strings, got {_show(v)}", param=key)


def _require_object(body: Any) -> Dict[str, Any]:
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


def parse_embeddings(body: Any, max_items: int) -> Dict[str, Any]:
    """POST /v1/embeddings -> {model, texts, single, base64, kwargs}."""
    body = _require_object(body)
    if "input" not in body:
        raise ApiError(400, "input is required", param="input")
    texts, single = _texts(body["input"], "input", max_items)
    fmt = _get(body, "encoding_format", str, "float")
    if fmt not in ("float", "base64"):
        raise ApiError(400, f'encoding_format must be "float" or "base64", got {fmt!r}',
                       param="encoding_format")
    kwargs: Dict[str, Any] = {}
    dims = _get(body, "dimensions", int)
    if dims is not None:
        if dims < 1:
            raise ApiError(400, f"dimensions must be at least 1, got {dims}", param="dimensions")
        kwargs["dimensions"] = dims
    _get(body, "user", str)  # accepted, ignored
    return {"model": body.get("model"), "texts": texts, "single": single,
            "base64": fmt == "base64", "kwargs": kwargs}


def _stop(body: Dict[str, Any]) -> List[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if (not isinstance(stop, list) or len(stop) > 4
            or not all(isinstance(s, str) and s for s in stop)):
        raise ApiError(400, "stop must be a non-empty string or a list of at most 4 of them",
                       param="stop")
    return stop


def _sampling(body: Dict[str, Any], default_max_tokens: int, max_tokens_key: str) -> Dict[str, Any]:
    """The generation settings shared by completions and chat -> task() kwargs and extras."""
    max_tokens = _get(body, max_tokens_key, int)
    if max_tokens is None and max_tokens_key != "max_tokens":
        max_tokens = _get(body, "max_tokens", int)
    if max_tokens is None:
        max_tokens = default_max_tokens
    if max_tokens < 1:
        raise ApiError(400, f"{max_tokens_key} must be at least 1, got {max_tokens}",
                       param=max_tokens_key)
    temperature = _get(body, "temperature", float)
    top_p = _get(body, "top_p", float)
    n = _get(body, "n", int, 1)
    seed = _get(body, "seed", int)
    stream = _get(body, "stream", bool, False)
    if temperature is not None and not 0 <= temperature <= 2:
        raise ApiError(400, f"temperature must be between 0 and 2, got {temperature}",
                       param="temperature")
    if top_p is not None and not 0 < top_p <= 1:
        raise ApiError(400, f"top_p must be in (0, 1], got {top_p}", param="top_p")
    if not 1 <= n <= 16:
        raise ApiError(400, f"n must be between 1 and 16, got {n}", param="n")
    for key in ("presence_penalty", "frequency_penalty"):
        v = _get(body, key, float)
        if v not in (None, 0.0):
            raise ApiError(400, f"{key} is not supported (only 0)", param=key)
    if body.get("logprobs") not in (None, False, 0):
        raise ApiError(400, "logprobs are not supported", param="logprobs")
    if body.get("logit_bias"):
        raise ApiError(400, "logit_bias is not supported", param="logit_bias")
    stream_options = _get(body, "stream_options", dict)
    include_usage = bool(stream_options and stream_options.get("include_usage"))
    kwargs: Dict[str, Any] = {"max_new_tokens": max_tokens}
    # No temperature or 0: greedy decoding, reproducible (the usual choice of local
    # servers for deterministic clients); above 0: sampling, as OpenAI does.
    if temperature:
        kwargs["do_sample"] = True
        kwargs["temperature"] = temperature
        if top_p is not None:
            kwargs["top_p"] = top_p
    elif top_p is not None and top_p < 1:
        kwargs["do_sample"] = True
        kwargs["top_p"] = top_p
    if n > 1:
        kwargs["num_return_sequences"] = n
        if not kwargs.get("do_sample"):
            kwargs["num_beams"] = n  # greedy cannot return n different sequences
    if seed is not None:
        kwargs["seed"] = seed
    _get(body, "user", str)
    return {"kwargs": kwargs, "max_tokens": max_tokens, "n": n, "stop": _stop(body),
            "stream": stream, "include_usage": include_usage}


def parse_completions(body: Any, default_max_tokens: int, max_items: int) -> Dict[str, Any]:
    """POST /v1/completions -> {model, prompts, kwargs, max_tokens, n, stop, stream, ...}."""
    body = _require_object(body)
    if "prompt" not in body:
        raise ApiError(400, "prompt is required", param="prompt")
    prompts, _ = _texts(body["prompt"], "prompt", max_items)
    for key in ("echo",):
        if body.get(key):
            raise ApiError(400, f"{key} is not supported", param=key)
    if body.get("suffix"):
        raise ApiError(400, "suffix is not supported", param="suffix")
    if body.get("best_of") not in (None, 1, body.get("n", 1)):
        raise ApiError(400, "best_of is not supported", param="best_of")
    out = _sampling(body, default_max_tokens, "max_tokens")
    out.update(model=body.get("model"), prompts=prompts)
    return out


_ROLES = ("system", "developer", "user", "assistant", "tool")


def parse_chat(body: Any, default_max_tokens: int) -> Dict[str, Any]:
    """POST /v1/chat/completions -> {model, messages, kwargs, ...}; messages are
    ``{"role", "content"}`` dicts with string content (text parts are joined)."""
    body = _require_object(body)
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise ApiError(400, "messages must be a non-empty list", param="messages")
    clean = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict):
            raise ApiError(400, f"messages[{i}] must be an object", param="messages")
        role = m.get("role")
        if role not in _ROLES:
            raise ApiError(400, f"messages[{i}].role must be one of {', '.join(_ROLES)}, "
                           f"got {_show(role)}", param="messages")
        content = m.get("content")
        if isinstance(content, list):
            parts = []
            for p in content:
                if not (isinstance(p, dict) and p.get("type") == "text"
                        and isinstance(p.get("text"), str)):
                    raise ApiError(400, f"messages[{i}].content: only text parts are supported",
                                   param="messages")
                parts.append(p["text"])
            content = "".join(parts)
        if content is None and role == "assistant":
            content = ""
        if not isinstance(content, str):
            raise ApiError(400, f"messages[{i}].content must be a string, got {_show(content)}",
                           param="messages")
        clean.append({"role": "system" if role == "developer" else role, "content": content})
    if body.get("tools") or body.get("functions"):
        raise ApiError(400, "tools are not supported", param="tools")
    rf = body.get("response_format")
    if rf not in (None, {"type": "text"}):
        raise ApiError(400, "response_format other than text is not supported",
                       param="response_format")
    out = _sampling(body, default_max_tokens, "max_completion_tokens")
    out.update(model=body.get("model"), messages=clean)
    return out


def parse_rerank(body: Any, max_items: int) -> Dict[str, Any]:
    """POST /v1/rerank (Cohere / Jina / TEI shape) -> {model, query, documents, top_n,
    return_documents}."""
    body = _require_object(body)
    query = body.get("query")
    if not isinstance(query, str) or not query:
        raise ApiError(400, "query must be a non-empty string", param="query")
    docs = body.get("documents", body.get("texts"))
    if not isinstance(docs, list) or not docs:
        raise ApiError(400, "documents must be a non-empty list of strings", param="documents")
    texts = []
    for i, d in enumerate(docs):
        if isinstance(d, dict) and isinstance(d.get("text"), str):
            d = d["text"]
        if not isinstance(d, str):
            raise ApiError(400, f"documents[{i}] must be a string, got {_show(d)}",
                           param="documents")
        texts.append(d)
    if len(texts) > max_items:
        raise ApiError(400, f"documents has {len(texts)} entries; at most {max_items}",
                       param="documents")
    top_n = _get(body, "top_n", int)
    if top_n is not None and top_n < 1:
        raise ApiError(400, f"top_n must be at least 1, got {top_n}", param="top_n")
    return {"model": body.get("model"), "query": query, "documents": texts, "top_n": top_n,
            "return_documents": bool(_get(body, "return_documents", bool, False))}


def cut_at_stop(text: str, stop: List[str]) -> Tuple[str, bool]:
    """Text up to the first stop string, and whether one was found."""
    cut = len(text)
    for s in stop:
        i = text.find(s)
        if 0 <= i < cut:
            cut = i
    return text[:cut], cut < len(text)
