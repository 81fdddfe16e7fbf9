"""``python -m pymodelmgr serve``: an OpenAI-compatible HTTP server over one ModelManager.

Routes: ``POST /v1/embeddings``, ``POST /v1/completions``, ``POST /v1/chat/completions``,
``POST /v1/rerank`` (also ``/rerank``), ``GET /v1/models``, ``GET /health``, ``GET /metrics`` (Prometheus).  Errors use OpenAI's
error body with the manager's error code in ``error.code``.

The stack is Starlette under uvicorn (``pip install pymodelmgr[server]``): Starlette is the
small, maintained ASGI toolkit FastAPI itself is built on, and this server needs its
routing, streaming responses and lifespan, not FastAPI's schema layer (requests are checked
by hand so every refusal names its field in OpenAI's format); uvicorn is the reference ASGI
server, with graceful SIGTERM handling and uvloop/httptools when installed.

Use from code::

    from pymodelmgr.server import ServerConfig, create_app, run
    run(ServerConfig(port=8080, embedding_models=["sentence-transformers/all-MiniLM-L6-v2"]))
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from typing import List, Optional

from .app import ServerConfig, create_app

__all__ = ["ServerConfig", "create_app", "run", "main"]

logger = logging.getLogger("pymodelmgr.server")


def run(config: ServerConfig, log_level: str = "info") -> int:
    """Serves until SIGTERM or SIGINT, then shuts down gracefully: the listening socket
    closes, requests in flight get up to ``config.shutdown_timeout`` seconds, the manager
    finishes its queued tasks and releases every model.  Returns 0."""
    import uvicorn

    if config.host not in ("127.0.0.1", "localhost", "::1") and not config.api_key:
        logger.warning("listening on %s without an API key: anyone who can reach this port "
                       "can use the models (set --api-key or PYMODELMGR_API_KEY)", config.host)
    app = create_app(config)
    uconfig = uvicorn.Config(app, host=config.host, port=config.port, log_level=log_level,
                             access_log=False, server_header=False, date_header=True,
                             timeout_graceful_shutdown=int(max(config.shutdown_timeout, 1)),
                             lifespan="on", log_config=None,
                             limit_concurrency=config.max_connections)
    server = uvicorn.Server(uconfig)
    # uvicorn re-raises the signal it caught once it has shut down; a handler of our own
    # turns that into a clean exit 0 (the shutdown was graceful).
    stopped: List[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda s, f: stopped.append(s))
    logger.info("pymodelmgr server on http://%s:%d (API key %s)", config.host, config.port,
                "required" if config.api_key else "not required")
    server.run()
    if not server.started:
        return 1
    logger.info("server stopped")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pymodelmgr serve",
                                description="OpenAI-compatible HTTP server over a ModelManager")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None,
                   help="require Authorization: Bearer KEY (default: env PYMODELMGR_API_KEY, "
                        "which other users cannot read in the process list)")
    p.add_argument("--settings", default=None,
                   help="a JSON file with ModelManagerSettings fields")
    p.add_argument("--embedding-model", action="append", default=[], metavar="NAME",
                   help="pre-load this embedding model; with any --*-model flag only the "
                        "named models are served")
    p.add_argument("--generation-model", action="append", default=[], metavar="NAME")
    p.add_argument("--rerank-model", action="append", default=[], metavar="NAME")
    p.add_argument("--allow-local-models", action="store_true",
                   help="accept local model directories as model names")
    p.add_argument("--device", default="gpu", help='"gpu" (default), "cpu" or "cuda:N"')
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--keep-alive", type=float, default=None, help="minutes")
    p.add_argument("--max-body-bytes", type=int, default=8 * 1024 * 1024)
    p.add_argument("--body-timeout", type=float, default=30.0,
                   help="seconds a client has to send its request body")
    p.add_argument("--shutdown-timeout", type=float, default=30.0,
                   help="seconds SIGTERM waits for requests in flight")
    p.add_argument("--max-connections", type=int, default=None,
                   help="answer 503 beyond this many concurrent connections")
    p.add_argument("--log-level", default="info",
                   choices=["critical", "error", "warning", "info", "debug"])
    return p


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of ``python -m pymodelmgr serve``."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = None
    if args.settings:
        from ..settings import ModelManagerSettings

        try:
            with open(args.settings, encoding="utf-8") as fh:
                settings = ModelManagerSettings(**json.load(fh))
        except (OSError, ValueError, TypeError) as exc:  # pydantic's errors are ValueErrors
            print(f"--settings {args.settings}: {exc}", file=sys.stderr)
            return 2
    config = ServerConfig(
        host=args.host, port=args.port,
        api_key=args.api_key or os.environ.get("PYMODELMGR_API_KEY") or None,
        settings=settings, embedding_models=args.embedding_model,
        generation_models=args.generation_model, rerank_models=args.rerank_model,
        allow_local_models=args.allow_local_models,
        device=args.device, num_workers=args.num_workers, keep_alive=args.keep_alive,
        max_body_bytes=args.max_body_bytes, body_timeout=args.body_timeout,
        shutdown_timeout=args.shutdown_timeout, max_connections=args.max_connections)
    return run(config, args.log_level)
