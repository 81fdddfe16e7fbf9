"""ModelManager: the one awaitable entry point, ``task()``, and its lifecycle calls.

The work happens in the C engine (``pymodelmgr._core``): this class validates
nothing it can leave to C, submits, and awaits a future.  Completions arrive
through one eventfd per event loop (``loop.add_reader``); one callback drains
every finished task at once and resolves the futures, so there is no thread
hop per task and no polling.
"""
from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import math
import reprlib
import warnings
import weakref
from asyncio.events import _get_running_loop
from gc import disable as _gc_disable, enable as _gc_enable, isenabled as _gc_isenabled
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, Optional

from . import _core
from . import chat as _chat
from . import metrics as _metrics
from .result import ErrorInfo, Result
from .settings import ModelManagerSettings

__all__ = ["ModelManager", "StreamError"]

logger = logging.getLogger("pymodelmgr")

_FLAG_NUMPY = 1
# dtype= of a task: the weights' dtype of the model it creates (settings.dtype otherwise)
_DTYPES = ("auto", "float32", "float16", "bfloat16", "bf16", "int8")
_FLAG_DEFER_WAKE = 2
_FLAG_FUTURE = 4  # submit() returns a _core.TaskFuture registered on the loop's channel

_INT64_MIN, _INT64_MAX = -(2 ** 63), 2 ** 63 - 1
_MAX_PARAM_DEPTH = 32


def _bad_name(value: Any, what: str = "model_name") -> Optional[Result]:
    """INVALID_ARGUMENT for a name the C engine cannot take as is: not a non-empty str, a NUL
    byte (C would cut the name there and serve or fetch another model), or a lone surrogate."""
    if not isinstance(value, str):
        return Result.error("INVALID_ARGUMENT",
                            f"{what} must be a string, got {type(value).__name__} {value!r:.100}")
    if not value and what == "model_name":
        return Result.error("INVALID_ARGUMENT", "model_name must be a non-empty string, got ''")
    if "\x00" in value:
        return Result.error("INVALID_ARGUMENT", f"{what} {value!r:.200} contains a NUL byte")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return Result.error("INVALID_ARGUMENT",
                            f"{what} {value!r:.200} is not valid Unicode (it contains a lone "
                            f"surrogate)")
    return None


def _param_problem(value: Any, depth: int = 0) -> Optional[str]:
    """Why a task parameter cannot go to the engine as JSON (None when it can): nesting deeper
    than the engine reads, integers outside int64, non-finite floats, non-str keys, NUL bytes or
    lone surrogates in strings, or values JSON has no type for."""
    if value is None or value is True or value is False:
        return None
    if isinstance(value, int):
        if not _INT64_MIN <= value <= _INT64_MAX:
            return f"the integer {value} is out of range (at most {_INT64_MAX})"
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{value} is not a finite number"
    if isinstance(value, str):
        if "\x00" in value:
            return f"the string {value!r:.100} contains a NUL byte"
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return f"the string {value!r:.100} contains a lone surrogate"
        return None
    if depth >= _MAX_PARAM_DEPTH:
        return f"it is nested more than {_MAX_PARAM_DEPTH} levels deep"
    if isinstance(value, (list, tuple)):
        for v in value:
            why = _param_problem(v, depth + 1)
            if why:
                return why
        return None
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                return f"its key {k!r:.60} is not a string"
            why = _param_problem(k, depth + 1) or _param_problem(v, depth + 1)
            if why:
                return why
        return None
    return f"{type(value).__name__} is not a JSON value"
# Set by ModelManager.stream() around the task() it starts: task() registers the
# stream's queue under the submitted task's id, where _drain puts the pieces.
_STREAM_QUEUE: contextvars.ContextVar = contextvars.ContextVar("pymodelmgr_stream", default=None)


class StreamError(RuntimeError):
    """A streamed generation failed: ``code`` is the stable error code (as
    ``Result.error.code``), ``message`` says why."""

    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class _LoopState:
    """Per event loop: the completion channel, and whether a worker kick is scheduled.

    The first task() of a loop iteration wakes a worker and schedules a kick; the others
    of that iteration submit with the defer-wake flag, so a gather burst reaches the workers
    as one batch with one more wake-up instead of one per task."""

    __slots__ = ("channel", "kick_scheduled", "_engine")

    def __init__(self, channel, engine):
        self.channel = channel
        self.kick_scheduled = False
        self._engine = engine

    def kick(self) -> None:
        self.kick_scheduled = False
        self._engine.kick()


def _numpy_embeddings(raw):
    import numpy as np

    buf, n, dim = raw  # buf is a bytearray: the array is writable and owns no copy
    return np.frombuffer(buf, dtype=np.float32).reshape(n, dim)


def _drain_weak(ref, ch) -> None:
    """The event loop's reader callback: holds the manager weakly, so a manager dropped
    without close() can be collected (and clean up) while its event loop runs on."""
    mm = ref()
    if mm is not None:
        mm._drain(ch)


def _done_future(loop, result):
    """A settled task() future: an immediate answer (bad input, a closed manager)."""
    fut = _core.TaskFuture(loop)
    fut.set_result(result)
    return fut


def _rerank_items(task_data):
    """Rerank inputs as the engine takes them: one JSON text per query (the C side
    checks their shape), or an error Result."""
    if task_data is None:
        return None
    single = isinstance(task_data, dict)
    queries = [task_data] if single else task_data
    if not isinstance(queries, (list, tuple)) or not all(isinstance(q, dict) for q in queries):
        return Result.error("INVALID_ARGUMENT",
                            'rerank task_data must be {"query": str, "documents": [str, ...]} or '
                            f"a list of them, got {type(task_data).__name__}")
    try:
        items = [json.dumps(q, ensure_ascii=False, allow_nan=False) for q in queries]
    except (TypeError, ValueError) as exc:
        return Result.error("INVALID_ARGUMENT", f"rerank task_data must be JSON values: {exc}")
    return items[0] if single else items


class ModelManager:
    """Loads Hugging Face models on first use, queues work per model, runs it on worker
    threads, and releases idle models.

    Use it as an async context manager, or call :meth:`close` when done::

        async with ModelManager() as mm:
            result = await mm.task(["hello"], "embedding", "sentence-transformers/all-MiniLM-L6-v2")

    Args:
        settings: a :class:`~pymodelmgr.ModelManagerSettings`, a dict of its fields, or None
            for the defaults.
    """

    def __init__(self, settings: Optional[ModelManagerSettings | Dict[str, Any]] = None):
        if settings is None:
            settings = ModelManagerSettings()
        elif isinstance(settings, dict):
            settings = ModelManagerSettings(**settings)
        elif not isinstance(settings, ModelManagerSettings):
            raise TypeError("settings must be a ModelManagerSettings, a dict, or None")
        else:
            # Validated again: a settings object built with model_construct() skipped its checks.
            ModelManagerSettings.model_validate(settings.model_dump())
        self.settings = settings
        wp = settings.worker_pool
        allowed = None
        if wp.devices != ["auto"]:
            allowed = ",".join(d.split(":", 1)[1] for d in wp.devices)
        cache_dir = settings.cache_dir
        if cache_dir == "hf" and hasattr(_core, "hub_default_params"):
            cache_dir = _core.hub_default_params()["hf_cache_dir"]
        options = {
            "dtype": settings.dtype,
            "embedding_cache": settings.embedding_cache.model_dump(),
            "generation": settings.generation.model_dump(),
        }
        self._engine = _core.Engine(
            max_queue_size=wp.max_queue_size,
            queue_timeout_ms=int(wp.queue_timeout * 1000),
            default_keep_alive_ms=-1 if wp.model_idle_timeout < 0 else int(wp.model_idle_timeout * 1000),
            max_batch_items=wp.max_batch_items,
            max_batch_tokens=wp.max_batch_tokens,
            cpu_threads=settings.cpu_threads,
            cache_dir=cache_dir,
            fake_gpus=settings.fake_gpus,
            backend_options_json=json.dumps(options),
            allowed_gpus=allowed,
            embed_cache_entries=(settings.embedding_cache.max_cache_size
                                 if settings.embedding_cache.enabled else 0),
            embed_cache_ttl_ms=int(settings.embedding_cache.ttl_seconds * 1000),
            memory_fraction=wp.memory_fraction,
            max_loaded_models=wp.max_loaded_models,
        )
        self._aliases = dict(settings.model_aliases)
        # alias target -> the name the app last used for it (results and status() say that)
        self._alias_names: Dict[str, str] = {}
        self._backends = dict(settings.model_backends)
        self._cache_dir = cache_dir
        self._chat_templates: Dict[tuple, tuple] = {}  # (model, revision) -> (template, specials)
        self._futures: Dict[int, asyncio.Future] = {}
        self._app_names: Dict[int, str] = {}  # task id -> the alias its caller used
        self._streams: Dict[int, asyncio.Queue] = {}
        self._loops: Dict[asyncio.AbstractEventLoop, _LoopState] = {}
        self._closed = False
        _metrics._track(self)  # pymodelmgr.metrics.register() finds every manager

    def _model_options(self, model_name, kwargs):
        """Pops the load options (backend, trust_remote_code, dtype) out of kwargs: a JSON
        text for the engine, None for the defaults, or an error Result."""
        backend = kwargs.pop("backend", None)
        dtype = kwargs.pop("dtype", None)
        if dtype is not None and (dtype.__class__ is not str or dtype not in _DTYPES):
            return Result.error("INVALID_ARGUMENT",
                                f"dtype must be one of {', '.join(_DTYPES)}; got "
                                f"{reprlib.repr(dtype)}")
        if backend is None and model_name.__class__ is str:
            backend = self._backends.get(model_name) or self._backends.get(
                self._aliases.get(model_name, model_name))
        trust = kwargs.pop("trust_remote_code", False)
        if backend not in (None, "auto", "native", "transformers"):
            return Result.error("INVALID_ARGUMENT",
                                f'backend must be "auto", "native" or "transformers", got {backend!r}')
        if trust.__class__ is not bool:
            return Result.error("INVALID_ARGUMENT",
                                f"trust_remote_code must be True or False, got {trust!r}")
        opts = {}
        if backend not in (None, "auto"):
            opts["backend"] = backend
        if trust:
            opts["trust_remote_code"] = True
        if dtype is not None:
            opts["dtype"] = dtype
        return json.dumps(opts, sort_keys=True) if opts else None

    # ---- the event-loop bridge -------------------------------------------------

    def _loop_state(self, loop: asyncio.AbstractEventLoop) -> _LoopState:
        st = self._loops.get(loop)
        if st is None:
            for old_loop in [lp for lp in self._loops if lp.is_closed()]:
                self._loops.pop(old_loop).channel.close()
            # The channel keeps this loop's task() futures and settles them in drain().
            ch = _core.Channel(loop, Result, ErrorInfo)
            loop.add_reader(ch.fileno(), _drain_weak, weakref.ref(self), ch)
            st = self._loops[loop] = _LoopState(ch, self._engine)
        return st

    def _channel(self, loop: asyncio.AbstractEventLoop):
        return self._loop_state(loop).channel

    def _drain(self, ch) -> None:
        # A burst's results are thousands of small containers: with the cyclic collector
        # on, making them runs it every few hundred allocations over every live future
        # (half the dispatch time in a 20,000-task gather).  It runs once, afterwards.
        if _gc_isenabled():
            _gc_disable()
            try:
                self._drain_all(ch)
            finally:
                _gc_enable()
        else:
            self._drain_all(ch)

    def _drain_all(self, ch) -> None:
        futures = self._futures
        app_names = self._app_names
        # The channel settles its TaskFutures itself (_core.TaskFuture: the Result built in C,
        # the burst's done callbacks run from one loop callback); what comes back here is
        # the rest: stream pieces, numpy results, control tasks (release, shutdown).
        for tid, status, payload in ch.drain(app_names, self._streams):
            if status == 5:  # a streamed piece: (index, text)
                q = self._streams.get(tid)
                if q is not None:
                    q.put_nowait(payload[1])
                continue
            if self._streams:
                self._streams.pop(tid, None)
            fut = futures.pop(tid, None)
            if fut is None:  # a TaskFuture the channel leaves to us (numpy, a stream's end)
                fut = ch.take(tid)
            if app_names:
                name = app_names.pop(tid, None)
                if name is not None and status in (0, 4) and "model_name" in payload:
                    payload["model_name"] = name
            if fut is None or fut.done():
                continue
            if status == 0:
                fut.set_result(Result(True, payload, None))
            elif status == 4:
                payload["embeddings"] = _numpy_embeddings(payload["embeddings"])
                fut.set_result(Result(True, payload, None))
            elif status == 1:
                fut.set_result(Result(False, {}, ErrorInfo(payload[0], payload[1], None)))
            elif status == 2:
                fut.set_exception(RuntimeError(f"Task dropped: {payload}"))
            else:
                fut.cancel()
        for level, msg in _core.take_logs():
            logger.log(level, msg)

    async def _await_id(self, loop, tid: int) -> Result:
        fut = loop.create_future()
        self._futures[tid] = fut
        try:
            return await fut
        except asyncio.CancelledError:
            self._futures.pop(tid, None)
            self._engine.cancel(tid)
            raise

    def _unusable(self) -> Optional[Result]:
        """SHUTTING_DOWN once closed; UNSUPPORTED in a fork() child of the manager's process."""
        if self._closed:
            return Result.error("SHUTTING_DOWN", "the model manager is closed")
        forked = self._engine.forked()
        return None if forked is None else Result.error("UNSUPPORTED", forked)

    # ---- the public API ---------------------------------------------------------

    def task(self, task_data: Any, task_type: str, model_name: str,
             num_workers: Optional[int] = 1, device: str = "gpu",
             keep_alive: Optional[float] = None, **kwargs: Any) -> Awaitable[Result]:
        """Runs one task on a model, loading the model first if needed.

        Returns an awaitable of the :class:`~pymodelmgr.Result`: ``await mm.task(...)``,
        ``asyncio.gather(*(mm.task(...) ...))``, ``asyncio.create_task(mm.task(...))``,
        ``asyncio.ensure_future``, ``asyncio.wait_for(mm.task(...), t)``, ``asyncio.shield``
        and ``asyncio.timeout`` all work.  Inside a running event loop it is a
        ``pymodelmgr._core.TaskFuture``: an asyncio future implemented in C (so gather needs
        no Task per task) that is also a coroutine object (so ``create_task`` takes it;
        ``asyncio.wait``, which refuses coroutines, takes ``create_task(mm.task(...))``).
        Cancelling it cancels the task (a queued task leaves its queue).  Called outside a
        running loop it is a coroutine, submitted when first awaited.

        Args:
            task_data: a list of texts (or one text); ``None`` pre-loads the model and
                returns ``{"preloaded": True, "model_name", "workers", "device",
                "keep_alive_minutes"}``.
            task_type: ``"embedding"``, ``"text_generation"``, ``"rerank"`` (task_data
                ``{"query": str, "documents": [str, ...]}`` or a list of them) or
                ``"classification"`` (texts).
            model_name: a Hugging Face repo id, a local model directory, or a
                ``"synthetic/..."`` test model.
            num_workers: workers to create when the model is not loaded yet (capped at the GPU
                count on ``device="gpu"``, exact on ``"cpu"``); None takes
                ``settings.worker_pool.num_workers``.
            device: ``"gpu"`` (the GPUs with the most free memory; the CPU when there is
                none), ``"cpu"``, or ``"cuda:N"``.
            keep_alive: minutes of inactivity before the model is released (floats allowed);
                None keeps the model's current value (the settings default for a new model);
                0 releases as soon as the queue is empty; negative never releases.
            **kwargs: task parameters: for embeddings ``normalize``, ``prompt_name``,
                ``prompt``, ``truncate``, ``dimensions``, ``output="numpy"``; for text
                generation ``max_length``, ``num_beams`` and the other ``generate()``
                settings; for rerank ``top_k`` and ``return_documents``; for classification
                ``top_k`` (default 1; None for every label) and ``function_to_apply``;
                ``revision`` (a branch, tag or commit) for any model; ``backend``
                (``"auto"``, ``"native"`` or ``"transformers"``; default
                ``settings.model_backends`` or ``"auto"``: native when the architecture has
                a native graph), ``trust_remote_code`` (default False) and ``dtype``
                (``"float32"``, ``"bfloat16"``, ``"int8"``...: see the settings' ``dtype``;
                default ``settings.dtype``) when the task loads the model.

        A model that is already loaded serves the task with its existing configuration,
        even if this call asks for another device or worker count; the result's
        ``data["warnings"]`` says so.  Use :meth:`release_model` to change it.

        Returns:
            A :class:`~pymodelmgr.Result`: ``data["embeddings"]`` (a list of float lists, or a
            float32 array with ``output="numpy"``), ``data["generated_text"]`` for a string
            input or ``data["generated_texts"]`` for a list; ``data["device"]`` says which
            device ran it and ``data["backend"]`` which backend (``"native"`` or
            ``"transformers"``); rerank gives ``data["results"]`` (``[{"index", "score",
            "document"?}, ...]`` best first, a list of such lists for a list of queries),
            classification ``data["labels"]`` (``[[{"label", "score"}, ...], ...]``, one
            list per text).  Errors come back as ``result.error`` with a stable code.

        Raises:
            RuntimeError: the task was dropped by :meth:`drop_model_queue` (the message
                carries the reason).
        """
        loop = _get_running_loop()
        if loop is None:
            return self._task_later(task_data, task_type, model_name, num_workers, device,
                                    keep_alive, kwargs)
        if task_type == "text_generation" and task_data.__class__ is list and _chat.is_chat(task_data):
            return self._chat_task(task_data, task_type, model_name, num_workers, device,
                                   keep_alive, kwargs)
        r = self._start(loop, task_data, task_type, model_name, num_workers, device,
                        keep_alive, kwargs)
        if r.__class__ is Result:
            return _done_future(loop, r)
        return r

    async def _chat_task(self, task_data, task_type, model_name, num_workers, device, keep_alive,
                         kwargs):
        """task() for messages: renders them with the model's chat template first."""
        prompts = await self._chat_prompts(model_name, task_data, kwargs.get("revision"))
        if prompts.__class__ is Result:
            return prompts
        kwargs["add_special_tokens"] = False  # the template wrote them
        return await self.task(prompts, task_type, model_name, num_workers, device, keep_alive,
                               **kwargs)

    async def _task_later(self, task_data, task_type, model_name, num_workers, device,
                          keep_alive, kwargs):
        return await self.task(task_data, task_type, model_name, num_workers, device,
                               keep_alive, **kwargs)

    def _start(self, loop, task_data, task_type, model_name, num_workers, device, keep_alive,
               kwargs):
        """Validates and submits: a _core.TaskFuture, or a Result for an immediate answer."""
        if self._closed:
            return Result.error("SHUTTING_DOWN", "the model manager is closed")
        if not self.settings.enabled:
            return Result.error("MODEL_MANAGER_DISABLED",
                                "the model manager is disabled (settings.enabled is False)")
        if model_name.__class__ is not str or "\x00" in model_name:
            bad = _bad_name(model_name)
            if bad is not None:
                return bad
        st = self._loops.get(loop) or self._loop_state(loop)
        revision = None
        # The first task of a loop iteration wakes a worker at once (a lone request
        # waits for nothing); the rest of the iteration's burst defers to one kick.
        flags = _FLAG_DEFER_WAKE if st.kick_scheduled else 0
        params = None
        model_options = None
        if self._backends or kwargs:
            model_options = self._model_options(model_name, kwargs)
            if model_options.__class__ is Result:
                return model_options
        if task_type == "rerank":
            task_data = _rerank_items(task_data)
            if task_data.__class__ is Result:
                return task_data
        if kwargs:
            revision = kwargs.pop("revision", None)
            output = kwargs.pop("output", None)
            if output == "numpy":
                flags |= _FLAG_NUMPY
            elif output not in (None, "list"):
                return Result.error("INVALID_ARGUMENT",
                                    f'output must be "list" or "numpy", got {output!r}')
            if kwargs:
                for key, value in kwargs.items():
                    why = _param_problem(key) or _param_problem(value)
                    if why:
                        return Result.error("INVALID_ARGUMENT",
                                            f"task parameter {key}={reprlib.repr(value)} is not "
                                            f"accepted: {why}")
                # sorted: equal kwargs give equal cache keys whatever their order
                params = json.dumps(kwargs, allow_nan=False, sort_keys=True)
        if num_workers is None:
            num_workers = self.settings.worker_pool.num_workers
        if keep_alive is not None and (keep_alive.__class__ is bool or not isinstance(keep_alive, (int, float))):
            return Result.error("INVALID_ARGUMENT",
                                f"keep_alive must be a number of minutes or None, got {keep_alive!r}")
        app_name = None
        if self._aliases and model_name.__class__ is str and model_name in self._aliases:
            app_name, model_name = model_name, self._aliases[model_name]
            self._alias_names[model_name] = app_name
        fut = self._engine.submit(st.channel, model_name, task_type, task_data, device,
                                  num_workers, keep_alive, revision, params, flags | _FLAG_FUTURE,
                                  model_options)
        if fut.__class__ is tuple:
            return Result(False, {}, ErrorInfo(fut[0], fut[1], None))
        if not st.kick_scheduled:
            st.kick_scheduled = True
            loop.call_soon(st.kick)
        if app_name is not None:
            self._app_names[fut.task_id] = app_name
        sq = _STREAM_QUEUE.get()
        if sq is not None:  # ModelManager.stream(): _drain puts the pieces there
            self._streams[fut.task_id] = sq
        return fut

    async def stream(self, task_data: Any, task_type: str, model_name: str,
                     num_workers: Optional[int] = 1, device: str = "gpu",
                     keep_alive: Optional[float] = None,
                     on_result: Optional[Callable[[Result], None]] = None,
                     **kwargs: Any) -> AsyncIterator[str]:
        """Generates text and yields it in pieces as tokens are produced::

            async for piece in mm.stream("Once upon a time", "text_generation", "org/model",
                                         max_new_tokens=64):
                print(piece, end="", flush=True)

        ``task_data`` is one prompt string or one conversation (a list of
        ``{"role", "content"}`` messages, rendered with the model's chat template);
        the other arguments are :meth:`task`'s.  The pieces never split a UTF-8
        character and are never revised by a later token; joined they equal the
        ``generated_text`` :meth:`task` returns for the same call (stop strings cut
        it the same way).  Leaving the loop early (``break``) or cancelling the
        consuming task cancels the generation: its sequence leaves the running batch
        at the next decoding step and the task is counted as cancelled.  ``on_result``,
        when given, is called with the finished task's :class:`Result` (its
        ``finish_reason``, token counts and ``usage``) before the iteration ends.

        Raises:
            StreamError: the task failed (``code`` and ``message`` as in ``Result.error``),
                or ``task_data`` is not one prompt or one conversation.
        """
        if task_type != "text_generation":
            raise StreamError("INVALID_ARGUMENT", f'stream() serves "text_generation", not {task_type!r}')
        one = isinstance(task_data, str) or (isinstance(task_data, list) and _chat.is_chat(task_data)
                                             and isinstance(task_data[0], dict))
        if not one:
            raise StreamError("INVALID_ARGUMENT", "stream() takes one prompt string or one conversation "
                                                  "(a list of {role, content} messages)")
        if kwargs.get("num_return_sequences", 1) not in (1, None):
            raise StreamError("INVALID_ARGUMENT", "stream() returns one sequence (num_return_sequences=1)")
        queue: asyncio.Queue = asyncio.Queue()
        token = _STREAM_QUEUE.set(queue)
        async def run():
            return await self.task(task_data, task_type, model_name, num_workers, device,
                                   keep_alive, stream=True, **kwargs)

        try:  # the task copies the context: task() sees the queue
            job = asyncio.ensure_future(run())
        finally:
            _STREAM_QUEUE.reset(token)
        getter = None
        try:
            while True:
                if not queue.empty():
                    yield queue.get_nowait()
                    continue
                if job.done():
                    break
                getter = asyncio.ensure_future(queue.get())
                await asyncio.wait((getter, job), return_when=asyncio.FIRST_COMPLETED)
                if getter.done():
                    yield getter.result()
                else:
                    getter.cancel()
                getter = None
            res = job.result()
            if on_result is not None:
                on_result(res)
            if not res.success:
                raise StreamError(res.error.code, res.error.message)
        finally:
            if getter is not None:
                getter.cancel()
            if not job.done():
                job.cancel()  # task()'s own handler cancels the engine task

    async def _chat_prompts(self, model_name: Any, data: list, revision: Any) -> Any:
        """The prompt text(s) for a conversation (or a list of them), rendered with
        the model's chat template (pymodelmgr/chat.py); a Result on error."""
        try:
            convs, batched = _chat.conversations(data)
        except _chat.ChatError as e:
            return Result.error("INVALID_ARGUMENT", str(e))
        if model_name.__class__ is not str:
            return Result.error("INVALID_ARGUMENT", "model_name must be a string")
        name = self._aliases.get(model_name, model_name)
        key = (name, revision)
        entry = self._chat_templates.get(key)
        if entry is None:
            if name.startswith("synthetic/"):
                entry = (None, {})
            else:
                import functools
                loop = asyncio.get_running_loop()
                try:
                    snap = await loop.run_in_executor(None, functools.partial(
                        _core.hub_snapshot, name, revision if isinstance(revision, str) else "main",
                        cache_dir=self._cache_dir))
                    entry = _chat.load_template(snap["path"])
                except _core.HubError as e:
                    return Result.error(getattr(e, "code", "MODEL_LOAD_FAILED"), str(e))
                except (OSError, ValueError) as e:
                    return Result.error("MODEL_LOAD_FAILED", f"{name}: reading its tokenizer files failed: {e}")
            self._chat_templates[key] = entry
        template, specials = entry
        if template is None:
            return Result.error("INVALID_ARGUMENT",
                                f"{name} has no chat template (tokenizer_config.json chat_template or "
                                "chat_template.jinja): send prompt text instead of messages")
        try:
            texts = [_chat.render(template, c, specials) for c in convs]
        except _chat.ChatError as e:
            return Result.error("INVALID_ARGUMENT", str(e))
        return texts if batched else texts[0]

    async def release_model(self, model_name: str) -> Result:
        """Releases a model now: its queued tasks finish first, then its workers stop and
        its memory is freed; the registry entry is removed, so the next task creates the
        model afresh with that task's configuration.

        Returns:
            ``data = {"model_name", "released"}``; ``released`` is False when the model was
            not loaded.  A released model adds ``released_bytes`` (the memory its devices got
            back, measured: the process's resident set on the CPU, the GPU's free memory after
            the CUDA cache is emptied), ``release_seconds`` (from the release to the memory
            being back) and ``reason``.
        """
        bad = _bad_name(model_name) or self._unusable()
        if bad is not None:
            return bad
        app_name, model_name = model_name, self._aliases.get(model_name, model_name)
        loop = asyncio.get_running_loop()
        tid = self._engine.release(self._channel(loop), model_name)
        res = await self._await_id(loop, tid)
        if res.success:
            res.data.setdefault("released", False)
            if "model_name" in res.data:
                res.data["model_name"] = app_name
            logger.info("release_model(%s): released=%s released_bytes=%s", model_name,
                        res.data["released"], res.data.get("released_bytes"))
        return res

    async def drop_model_queue(self, model_name: str, reason: str = "Manual drop") -> Result:
        """Drops every queued task of a model; their callers get ``RuntimeError`` carrying
        ``reason``.  Running tasks finish; workers and the model stay loaded.

        Returns:
            ``data = {"dropped", "futures_cancelled", "model_name", "reason"}``.
        """
        bad = _bad_name(model_name) or _bad_name(reason, "reason") or self._unusable()
        if bad is not None:
            return bad
        app_name, model_name = model_name, self._aliases.get(model_name, model_name)
        ids = self._engine.drop(model_name, reason) or []
        # Every dropped task had a caller waiting on a future, in whichever event loop called
        # task(): fail the ones still registered here (thread-safely for other loops).  A future
        # already gone from the table was taken by its own loop's drain, which resolves it from
        # the DROPPED completion the engine pushed on that loop's channel: it counts too.  Only
        # futures already done (their caller gave up) do not.
        cancelled = 0
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        for tid in ids:
            fut = self._futures.pop(tid, None)
            if fut is None:  # a task() future: in its loop's channel
                for st in list(self._loops.values()):
                    fut = st.channel.take(tid)
                    if fut is not None:
                        break
            if fut is None:
                cancelled += 1
                continue
            if fut.done():
                continue
            cancelled += 1
            exc = RuntimeError(f"Task dropped: {reason}")
            lp = fut.get_loop()
            if lp is running:
                fut.set_exception(exc)
            elif not lp.is_closed():
                try:
                    lp.call_soon_threadsafe(lambda f=fut, e=exc: f.done() or f.set_exception(e))
                except RuntimeError:  # closed meanwhile: nobody is waiting any more
                    pass
        logger.info("drop_model_queue(%s): dropped %d task(s): %s", model_name, len(ids), reason)
        return Result.success(data={"dropped": len(ids), "futures_cancelled": cancelled,
                                    "model_name": app_name, "reason": reason})

    async def status(self) -> Result:
        """Reports every model: ``data["models"]`` is a list of dicts with ``model_name``,
        ``task_type``, ``state`` (loading, ready, draining, released, failed), ``devices``,
        ``workers``, ``queue_depth``, ``in_flight``, ``keep_alive_minutes`` (None when pinned),
        ``seconds_until_release`` (None when not counting down), ``last_used`` (epoch
        seconds), and the counters ``submitted``, ``done``, ``failed``, ``dropped``,
        ``timed_out``, ``cancelled``, ``batches``, ``items``; ``data["tasks"]`` has the
        engine's task accounting; ``data["embedding_cache"]`` the cache's ``hits``,
        ``misses``, ``size``, ``capacity``, ``evictions`` and ``expirations`` (None when the
        cache is off).

        Memory: each model also has ``memory_bytes`` (all devices), ``memory_bytes_by_device``
        (``{"cpu": n, "cuda:0": n}``: measured after load, the estimate while loading) and
        ``last_release_reason`` (``idle``, ``manual``, ``evicted_for=<model>``, ``shutdown``,
        ``oom``, ``failed``: this entry's, or the previous instance's; None if never
        released); ``state`` is ``waiting_for_memory`` while a load waits for memory.
        A decoder-only generation model also has ``kv_blocks`` (``{"used", "total"}``: its
        KV-cache blocks reserved by running requests, and its budget; see
        :class:`~pymodelmgr.GenerationConfig`).
        ``data["devices"]`` lists each device: ``name``, ``label``, ``simulated``,
        ``total_bytes``, ``free_bytes``, ``budget_bytes`` (memory_fraction of the total),
        ``used_bytes`` (held by this manager's models) and ``models``.
        ``data["released_models"]`` has the last release of each model name: ``model_name``,
        ``reason``, ``released_bytes``, ``seconds``, ``at``."""
        bad = self._unusable()
        if bad is not None:
            return bad
        stats = self._engine.stats()
        cache = stats.pop("embedding_cache")
        models = self._engine.status()
        if self._alias_names:
            for m in models:
                app_name = self._alias_names.get(m.get("model_name"))
                if app_name is not None:
                    m["alias_of"] = m["model_name"]
                    m["model_name"] = app_name
        released = self._engine.releases()
        if self._alias_names:
            for r in released:
                app_name = self._alias_names.get(r["model_name"])
                if app_name is not None:
                    r["alias_of"] = r["model_name"]
                    r["model_name"] = app_name
        return Result.success(data={"models": models, "tasks": stats, "embedding_cache": cache,
                                    "devices": self._engine.devices(),
                                    "released_models": released})

    async def close(self, cancel_pending: bool = False) -> None:
        """Shuts down: with ``cancel_pending`` queued tasks fail with ``SHUTTING_DOWN``,
        otherwise they finish first; then every model is released, every thread joined and
        all memory freed.  Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._engine.forked():
            # A fork() child: the engine's threads live in the parent; just forget it.
            self._engine.close()
            self._loops.clear()
            self._futures.clear()
            return
        loop = asyncio.get_running_loop()
        tid = self._engine.shutdown(self._channel(loop), bool(cancel_pending))
        fut = loop.create_future()
        self._futures[tid] = fut
        await fut
        self._engine.close()
        pending = []  # task() futures whose completion never came
        for lp, st in list(self._loops.items()):
            ch = st.channel
            if not lp.is_closed():
                try:
                    lp.remove_reader(ch.fileno())
                except (ValueError, RuntimeError):
                    pass
            if lp is loop:
                self._drain(ch)
            pending.extend(ch.take_all())
            ch.close()
        self._loops.clear()
        for fut in list(self._futures.values()) + pending:
            if fut.done():
                continue
            lp = fut.get_loop()
            if lp.is_closed():
                continue  # its event loop is gone, and with it whoever awaited this future
            res = Result.error("SHUTTING_DOWN", "the model manager was closed")
            if lp is loop:
                fut.set_result(res)
            else:
                try:
                    lp.call_soon_threadsafe(lambda f=fut, r=res: f.done() or f.set_result(r))
                except RuntimeError:
                    pass
        self._futures.clear()

    def _close_now(self) -> None:
        """Closes without an event loop: queued tasks fail with SHUTTING_DOWN, every model
        is released and every worker thread joined (blocking), the completion channels'
        descriptors are closed.  For __del__ and pymodelmgr.testing's fixture teardown."""
        if self._closed:
            return
        self._closed = True
        self._engine.close()  # in a fork() child it only forgets the parent's engine
        if self._engine.forked():
            self._loops.clear()
            self._futures.clear()
            return
        pending = []
        for lp, st in list(self._loops.items()):
            if not lp.is_closed():
                try:
                    lp.remove_reader(st.channel.fileno())
                except (ValueError, RuntimeError, OSError):
                    pass
            pending.extend(st.channel.take_all())
            st.channel.close()
        self._loops.clear()
        for fut in list(self._futures.values()) + pending:
            if not fut.done() and not fut.get_loop().is_closed():
                try:
                    fut.get_loop().call_soon_threadsafe(
                        lambda f=fut: f.done() or f.set_result(
                            Result.error("SHUTTING_DOWN", "the model manager was closed")))
                except RuntimeError:
                    pass
        self._futures.clear()

    def __del__(self, _warn=warnings.warn) -> None:
        # A manager dropped without close(): free its threads, models and descriptors now,
        # and say so (a ResourceWarning, like an unclosed file; -W error makes it an
        # "exception ignored" report, after the cleanup).
        if getattr(self, "_closed", True) or not hasattr(self, "_loops"):
            return
        forked = self._engine.forked() is not None  # a fork() child owns none of it
        msg = f"unclosed {self!r}: call 'await close()' or use 'async with'"
        try:
            self._close_now()
        except Exception:  # noqa: BLE001 - never raise from a finaliser
            pass
        if not forked:
            _warn(msg, ResourceWarning, source=self)

    async def __aenter__(self) -> "ModelManager":
        return self

    async def __aexit__(self, exc_type, exc, tb) -> None:
        await self.close(cancel_pending=exc_type is not None)

    def __repr__(self) -> str:
        return f"<ModelManager closed={self._closed}>"
