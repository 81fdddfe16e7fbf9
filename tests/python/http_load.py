"""A small HTTP/1.1 load generator on asyncio streams, for the server's load test and
benchmarks/bench_http.py.

Each client keeps one keep-alive connection and sends requests back to back for the
duration; every answer is checked by the caller's ``check`` (status and body), so a lost,
duplicated or wrong answer counts as an error.  Plain asyncio keeps the client's own cost
per request small next to the server's (the machine is shared).
"""
from __future__ import annotations

import asyncio
import json
import statistics
import time
from typing import Callable, Dict, List, Optional, Tuple


async def read_response(reader: asyncio.StreamReader) -> Tuple[int, Dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length or chunked body."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for ln in lines[1:]:
        if ":" in ln:
            k, v = ln.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        body = b"".join(parts)
    else:
        body = await reader.read()
    return status, headers, body


def request_bytes(path: str, body: bytes, host: str = "127.0.0.1",
                  headers: Optional[Dict[str, str]] = None) -> bytes:
    h = {"Host": host, "Content-Type": "application/json", "Content-Length": str(len(body))}
    h.update(headers or {})
    return (f"POST {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h.items())
            + "\r\n").encode() + body


async def run_load(port: int, path: str, make_body: Callable[[int, int], bytes],
                   check: Callable[[int, int, int, bytes], bool], clients: int, seconds: float,
                   headers: Optional[Dict[str, str]] = None) -> Dict[str, float]:
    """``clients`` connections, each sending ``make_body(client, i)`` requests back to back
    for ``seconds``.  Returns requests, errors, requests/s and latency percentiles (ms)."""
    lat: List[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds

    async def client(c: int):
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = 0
        try:
            while time.perf_counter() < deadline:
                body = make_body(c, i)
                t0 = time.perf_counter()
                writer.write(request_bytes(path, body, headers=headers))
                status, _, resp = await read_response(reader)
                lat.append(time.perf_counter() - t0)
                if not check(c, i, status, resp):
                    errors += 1
                i += 1
        finally:
            writer.close()

    t0 = time.perf_counter()
    outcomes = await asyncio.gather(*(client(c) for c in range(clients)), return_exceptions=True)
    wall = time.perf_counter() - t0
    errors += sum(isinstance(o, BaseException) for o in outcomes)
    return summarize(lat, wall, errors)


def summarize(lat: List[float], wall: float, errors: int) -> Dict[str, float]:
    lat = sorted(lat)

    def pct(p):
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")

    return {"requests": len(lat), "errors": errors, "rps": len(lat) / wall if wall else 0.0,
            "p50_ms": pct(0.50), "p99_ms": pct(0.99),
            "mean_ms": statistics.fmean(lat) * 1000 if lat else float("nan"), "wall_s": wall}


def embedding_body(model: str, text: str) -> bytes:
    return json.dumps({"model": model, "input": [text], "encoding_format": "float"}).encode()
