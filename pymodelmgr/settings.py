"""Settings for the model manager (pydantic v2).

The shape follows the framework's ``modules/core/model_manager/settings.py``
so existing configuration files load unchanged; the extra fields below
tune batching, threads and the model cache.
"""
from __future__ import annotations

import os
from typing import Dict, List, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

# Durations are stored by the engine in int64 milliseconds and sizes in C size_t; these bounds keep
# every value representable (and sane) so a bad setting is a ValidationError that names the field,
# never an OverflowError from inside ModelManager().
MAX_SECONDS = 1e9  # about 31 years
MAX_COUNT = 1_000_000_000


def max_cpu_threads() -> int:
    """The largest ``cpu_threads`` accepted: four threads per core of this machine (at least 8).

    More intra-op threads than that only slow a worker down, and thousands make the OpenMP
    runtime fail to create threads and crash the process."""
    return max(8, 4 * (os.cpu_count() or 1))

__all__ = ["WorkerPoolConfig", "EmbeddingCacheConfig", "ModelManagerSettings"]


class WorkerPoolConfig(BaseModel):
    """Workers, queues and batching.

    Attributes:
        enabled: accepted for compatibility; workers are always created on demand.
        num_workers: workers per model when ``task()`` is called with ``num_workers=None``.
        devices: GPUs that ``device="gpu"`` may use: ``["auto"]`` for every visible GPU, or
            a list such as ``["cuda:0", "cuda:2"]``.
        queue_timeout: seconds a task may wait in the queue of a loaded model before it fails
            with ``QUEUE_TIMEOUT`` (time spent loading the model does not count); 0 disables.
        model_idle_timeout: default keep-alive in seconds for models whose first task gave no
            ``keep_alive`` (300 = 5 minutes); negative keeps models loaded forever.
        load_balancing: workers pull from one shared queue per model, so an idle worker always
            takes the next batch; ``"round_robin"`` is the only (and the effective) policy.
        max_queue_size: queued tasks per model before ``task()`` returns ``QUEUE_FULL`` at
            once; 0 means unbounded.
        max_batch_items: texts one worker takes into one batch.
        max_batch_tokens: tokens (padded) one worker takes into one batch.
        memory_fraction: the share of each device the manager may fill with models: of each
            GPU's total memory, and of the machine's RAM for the CPU (a cgroup memory limit,
            when lower, counts as the RAM).  A load that does not fit evicts idle models
            (least recently used first, never pinned ones), waits for busy ones up to
            ``queue_timeout``, or fails with ``INSUFFICIENT_MEMORY``.
        max_loaded_models: models loaded at once (all devices together); a load beyond it
            evicts the least recently used idle model.  0 means no cap.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True)

    enabled: bool = True
    num_workers: int = Field(default=2, ge=1, le=256)
    devices: List[str] = Field(default_factory=lambda: ["auto"])
    queue_timeout: float = Field(default=30, ge=0, le=MAX_SECONDS)
    model_idle_timeout: float = Field(default=300, le=MAX_SECONDS)
    load_balancing: Literal["round_robin"] = "round_robin"
    max_queue_size: int = Field(default=100_000, ge=0, le=MAX_COUNT)
    max_batch_items: int = Field(default=256, ge=1, le=MAX_COUNT)
    max_batch_tokens: int = Field(default=16384, ge=1, le=MAX_COUNT)
    memory_fraction: float = Field(default=0.9, gt=0, le=1)
    max_loaded_models: int = Field(default=0, ge=0, le=MAX_COUNT)

    @field_validator("devices")
    @classmethod
    def _check_devices(cls, v: List[str]) -> List[str]:
        if not v:
            raise ValueError('devices must not be empty: use ["auto"]')
        for d in v:
            if d == "auto":
                continue
            if not (d.startswith("cuda:") and d[5:].isdigit()):
                raise ValueError(f'devices entries are "auto" or "cuda:N", got {d!r}')
        if "auto" in v and len(v) > 1:
            raise ValueError('"auto" cannot be combined with explicit devices')
        return v


class EmbeddingCacheConfig(BaseModel):
    """The embedding cache (used by native embedding models).

    Attributes:
        enabled: cache vectors by model, options and text.
        max_cache_size: entries kept (least recently used are evicted).
        ttl_seconds: entries expire after this many seconds.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True)

    enabled: bool = True
    max_cache_size: int = Field(default=10000, ge=0, le=MAX_COUNT)
    ttl_seconds: float = Field(default=3600, gt=0, le=MAX_SECONDS)


class GenerationConfig(BaseModel):
    """Decoder-only generation (Llama, Mistral, Qwen2/3, Gemma, Phi-3): continuous batching.

    Attributes:
        kv_cache_mb: the model's KV-cache budget in MiB, shared by its workers.  A request
            reserves the cache blocks (64 positions of one sequence, all layers) that its prompt
            plus ``max_new_tokens`` can fill, times ``num_return_sequences``, when it joins a
            running batch, and gives them back when it finishes; one that does not fit waits in
            the queue, one that could never fit fails with ``INSUFFICIENT_MEMORY``.  0 (the
            default) takes the memory policy's budget left on the model's device once its
            weights are loaded (``memory_fraction`` of the device, minus what every model holds
            there).  ``status()`` shows a model's ``kv_blocks`` (used / total).
        prefill_tokens_per_step: prompt tokens prefilled between two decoding steps of a
            running batch; newcomers are prefilled in arrival order until this many are spent
            (at least one prompt a step; a prompt is never split), so a burst of long prompts
            delays the running sequences' next token by about this many tokens of prefill.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True)

    kv_cache_mb: float = Field(default=0, ge=0, le=MAX_COUNT)
    prefill_tokens_per_step: int = Field(default=512, ge=1, le=MAX_COUNT)


class ModelManagerSettings(BaseModel):
    """All settings of a :class:`~pymodelmgr.ModelManager`.

    Attributes:
        enabled: when False every ``task()`` returns ``MODEL_MANAGER_DISABLED``.
        worker_pool: see :class:`WorkerPoolConfig`.
        embedding_cache: see :class:`EmbeddingCacheConfig`.
        generation: see :class:`GenerationConfig` (decoder-only continuous batching).
        cache_dir: where downloaded models live (relative to the working directory), laid out
            like the Hugging Face cache so both can share it; ``"hf"`` uses the standard
            Hugging Face cache itself (``HF_HUB_CACHE``, else ``$HF_HOME/hub``).
        cpu_threads: intra-op threads per CPU worker; 0 divides the cores among the workers; at
            most four per core of the machine (see :func:`max_cpu_threads`).
        dtype: the weights' dtype of a new model: ``"auto"`` (GPU: fp16 for encoders, bf16/fp32
            for T5; CPU: float32), ``"float32"``, ``"float16"`` (GPU only), ``"bfloat16"`` /
            ``"bf16"`` (on the CPU only where it has AVX512_BF16 or AMX-BF16; refused elsewhere)
            or ``"int8"`` (CPU: int8 linear layers of embedding and native generation models,
            see README); a task's
            ``dtype=`` keyword overrides it for the model that task creates.
        fake_gpus: a simulated GPU list for tests, free MiB per GPU (``"24000,16000"``), or
            ``"none"`` for a machine without GPUs; also read from ``PYMODELMGR_FAKE_GPUS``.
            Leave None in production.
        model_aliases: model names to serve from another source, e.g.
            ``{"sentence-transformers/all-MiniLM-L6-v2": "/srv/models/minilm"}`` for an
            air-gapped machine, or a ``"synthetic/..."`` model in an app's tests.  Applies to
            ``task()``, ``release_model()`` and ``drop_model_queue()``.
        model_backends: the backend per model name: ``"native"``, ``"transformers"`` (the
            sentence-transformers / transformers fallback) or ``"auto"`` (the default: native
            when the architecture has a native graph); a task's ``backend=`` kwarg wins.
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, validate_assignment=True)

    enabled: bool = True
    worker_pool: WorkerPoolConfig = Field(default_factory=WorkerPoolConfig)
    embedding_cache: EmbeddingCacheConfig = Field(default_factory=EmbeddingCacheConfig)
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    cache_dir: str = "data/models"
    cpu_threads: int = Field(default=0, ge=0)
    dtype: Literal["auto", "float32", "float16", "bfloat16", "bf16", "int8"] = "auto"
    fake_gpus: Optional[str] = None
    model_aliases: Dict[str, str] = Field(default_factory=dict)
    model_backends: Dict[str, Literal["auto", "native", "transformers"]] = Field(default_factory=dict)

    @field_validator("cpu_threads")
    @classmethod
    def _check_cpu_threads(cls, v: int) -> int:
        limit = max_cpu_threads()
        if v > limit:
            raise ValueError(f"cpu_threads={v} is too many: this machine has {os.cpu_count()} CPU "
                             f"core(s), so at most {limit} threads per worker (0 divides the cores "
                             f"among the workers)")
        return v

    @field_validator("cache_dir", "fake_gpus")
    @classmethod
    def _check_text(cls, v: Optional[str], info: ValidationInfo) -> Optional[str]:
        _check_c_string(v, info.field_name)
        return v

    @field_validator("model_aliases")
    @classmethod
    def _check_aliases(cls, v: Dict[str, str]) -> Dict[str, str]:
        for name, target in v.items():
            _check_c_string(name, "model_aliases key")
            _check_c_string(target, f"model_aliases[{name!r}]")
            if not target:
                raise ValueError(f"model_aliases[{name!r}] is empty")
        return v


def _check_c_string(v: Optional[str], what: str) -> None:
    """Strings handed to the C engine: no NUL byte (C would cut the string there) and valid UTF-8."""
    if v is None:
        return
    if "\x00" in v:
        raise ValueError(f"{what} {v!r} contains a NUL byte")
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{what} {v!r} is not valid Unicode (it contains a lone surrogate)") from None
