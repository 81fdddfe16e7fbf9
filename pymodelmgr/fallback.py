"""The transformers fallback backend: the library calls behind ``backend="transformers"``.

Models without a native graph (ModernBERT, Marian, Pegasus, custom-code models, every
rerank and classification model without a native head ...) run here, through
sentence-transformers and transformers.  The C engine keeps everything else: queues,
batching, keep-alive, memory accounting and release.  Its worker thread
(``csrc/fallback/mm_fallback.c``) calls into this module holding the GIL only for the
call:

* :func:`load` on the worker's thread, once per worker: returns a model object with
  ``memory_bytes``, ``embedding_dim``, ``run(batch)`` and ``close()``;
* ``run(batch)`` once per batch the engine hands over: ``batch`` is a list of
  ``(texts, params_json, single_input)``, one per task; the answer is one tuple per task:
  ``("error", code_name, message)``, ``("embeddings", float32 bytes, rows, dim, extras)``,
  ``("texts", [str, ...], per_item, extras)`` or ``("fields", extras)``, where
  ``extras`` is a list of ``(key, json_text)`` merged into the result dict;
* ``close()`` on unload: drops the weights (and empties the CUDA cache on a GPU).

Tasks in one batch that ask for the same settings share one library call, so the batch
is padded and sorted by the library (sentence-transformers sorts by length); a task sent
alone gets exactly what calling the library directly on its inputs gives.

Remote code (``config.json`` ``auto_map``, custom sentence-transformers modules) never
runs unless the task says ``trust_remote_code=True`` for that model.

Loads are serialized process-wide (:data:`LOAD_LOCK`, exported as
``pymodelmgr.TRANSFORMERS_LOAD_LOCK``).  transformers' ``from_pretrained`` swaps
process-wide functions while it builds a model (``PreTrainedModel.tie_weights`` and
``init_weights`` with no-ops, ``torch.nn.init.*``, ``torch.linspace``) and puts back what it
saw on entry, so two loads on two threads that overlap leave the no-ops in place for the
rest of the process: every later model with tied embeddings (T5, BART, BERT heads ...)
then loads with random weights where its tied ones should be, silently.  Two workers of
one fallback model load at the same time, so without the lock that happened in the test
suite under load (the reference models of later parity tests came out wrong).  Before
each load :func:`_repair_loading_patches` also puts back any such leftover found while no
load of ours runs (one left by the application's own threads), with a warning.

Sampling (a seeded task, or ``do_sample``) draws from torch's one process-wide random
generator, so generate() calls that sample hold a lock of their own: two workers of one
model sampling at once would otherwise draw from each other's seeded stream.

Nothing here is public API except :data:`LOAD_LOCK`; :func:`live_models` and
:func:`loading_patches` are for tests.
"""
from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import sys
import threading
import weakref
from typing import Any, Dict, List, Optional, Tuple

__all__ = ["FallbackError", "load", "live_models", "LOAD_LOCK", "loading_patches"]

_LIVE: "weakref.WeakSet[Any]" = weakref.WeakSet()
_log = logging.getLogger("pymodelmgr")

#: Held by every fallback model load (and every model the fallback builds later), so no
#: two of them overlap: transformers' loading is not thread-safe (see the module text).
#: An application that loads transformers / sentence-transformers models on its own
#: threads while a ModelManager runs fallback models holds it around those loads too.
LOAD_LOCK = threading.RLock()

# Held by every fallback generate() that samples (see _Generator._generate).
_RNG_LOCK = threading.Lock()
_NO_LOCK = contextlib.nullcontext()

# PreTrainedModel's own methods as first seen unpatched (see loading_patches).
_PRISTINE_METHODS: Dict[str, Any] = {}


def _patch_sites():
    """(holder, attribute, pristine value or None, current value) for every process-wide
    attribute transformers' model loading swaps; empty when transformers is not loaded."""
    init = sys.modules.get("transformers.initialization")
    mu = sys.modules.get("transformers.modeling_utils")
    torch = sys.modules.get("torch")
    sites = []
    if init is not None:
        originals = getattr(init, "TORCH_INIT_FUNCTIONS", {})
        for module_name in getattr(init, "TORCH_MODULES_TO_PATCH", ()):
            module = sys.modules.get(module_name)
            for name, orig in originals.items():
                if module is not None and hasattr(module, name):
                    sites.append((module, name, orig, getattr(module, name)))
    if torch is not None:
        sites.append((torch, "linspace", torch._C._VariableFunctions.linspace, torch.linspace))
    if mu is not None and hasattr(mu, "PreTrainedModel"):
        cls = mu.PreTrainedModel
        for name in ("init_weights", "tie_weights"):
            cur = cls.__dict__.get(name)
            if cur is None:
                continue
            if getattr(cur, "__qualname__", "") == f"PreTrainedModel.{name}":
                _PRISTINE_METHODS.setdefault(name, cur)
            sites.append((cls, name, _PRISTINE_METHODS.get(name), cur))
    return sites


def loading_patches() -> List[str]:
    """The process-wide functions that transformers' model loading swapped and that are not
    their own right now, as ``"module.name"``: empty unless a load is running or two loads
    on two threads overlapped and left their stand-ins behind."""
    out = []
    for holder, name, pristine, cur in _patch_sites():
        patched = cur is not pristine if pristine is not None else \
            getattr(cur, "__qualname__", "").endswith("empty_func")
        if patched:
            out.append(f"{getattr(holder, '__name__', holder)}.{name}")
    return out


def _repair_loading_patches() -> None:
    """Puts back the functions a past overlap of transformers loads left swapped (called
    under LOAD_LOCK: none of our loads runs; an application's load running right now would
    only see the real functions during its build, which its own exit restores anyway)."""
    fixed = []
    for holder, name, pristine, cur in _patch_sites():
        if pristine is not None and cur is not pristine:
            setattr(holder, name, pristine)
            fixed.append(f"{getattr(holder, '__name__', holder)}.{name}")
    if fixed:
        _log.warning("transformers model loading had left %s swapped in this process (two "
                     "loads on two threads overlapped: hold pymodelmgr.TRANSFORMERS_LOAD_LOCK "
                     "around your own); put back before loading", ", ".join(fixed))


class FallbackError(Exception):
    """An error with a stable code (``pymodelmgr._core.ERROR_CODES``) for the task."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def live_models() -> int:
    """How many fallback models are loaded and not yet garbage-collected."""
    gc.collect()
    return len(_LIVE)


def _read_json(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _custom_code(model_dir: str) -> Optional[str]:
    """What in model_dir would run code from the model's repository, or None."""
    cfg = _read_json(os.path.join(model_dir, "config.json"))
    if isinstance(cfg, dict) and cfg.get("auto_map"):
        return f"config.json auto_map {json.dumps(cfg['auto_map'])[:200]}"
    tcfg = _read_json(os.path.join(model_dir, "tokenizer_config.json"))
    if isinstance(tcfg, dict) and tcfg.get("auto_map"):
        return f"tokenizer_config.json auto_map {json.dumps(tcfg['auto_map'])[:200]}"
    modules = _read_json(os.path.join(model_dir, "modules.json"))
    if isinstance(modules, list):
        for m in modules:
            t = m.get("type", "") if isinstance(m, dict) else ""
            if t and not t.startswith("sentence_transformers."):
                return f"modules.json module type {t}"
    return None


def _memory_bytes(module) -> int:
    total = 0
    for t in list(module.parameters()) + list(module.buffers()):
        total += t.numel() * t.element_size()
    return total


def _torch_dtype(device: str, options: Dict[str, Any]):
    import torch

    name = options.get("dtype", "auto")
    if device == "cpu" or name in (None, "auto", "float32"):
        return torch.float32 if device == "cpu" or name == "float32" else None
    return {"float16": torch.float16, "bfloat16": torch.bfloat16}.get(name)


def load(model_dir: str, task_type: str, device: str, cpu_threads: int, options_json: str,
         model_options_json: str, model_name: str):
    """Loads ``model_dir`` for ``task_type`` on ``device`` (``"cpu"``, ``"cuda:N"``)."""
    options = json.loads(options_json or "{}")
    model_options = json.loads(model_options_json or "{}")
    trust = model_options.get("trust_remote_code") is True
    asked = model_options.get("dtype")
    if asked in ("int8",) or (asked in ("bfloat16", "bf16") and device == "cpu"):
        # a task's explicit dtype= that only the native graphs run: refuse rather than
        # serve float32 in its place
        raise FallbackError(
            "UNSUPPORTED",
            f"dtype {asked} on {device} runs only on the native backend, which cannot serve "
            f"{model_name} for {task_type} with it")
    if asked is not None:
        options = dict(options, dtype=asked)
    custom = _custom_code(model_dir)
    if custom and not trust:
        raise FallbackError(
            "UNSUPPORTED",
            f"{model_name} needs code from its repository to run ({custom}); pymodelmgr does not "
            "run a model's own code unless asked: pass trust_remote_code=True to task() for "
            "this model, and only for code you trust")
    cls = {"embedding": _Embedder, "text_generation": _Generator, "rerank": _Reranker,
           "classification": _Classifier}.get(task_type)
    if cls is None:
        raise FallbackError("INVALID_ARGUMENT", f"no fallback for task_type {task_type}")
    _check_architecture(model_dir, task_type, model_name)
    try:
        with LOAD_LOCK:
            _repair_loading_patches()
            with _quiet_loading():
                model = cls(model_dir, device, trust, options, model_name)
    except ImportError as exc:
        raise FallbackError(
            "UNSUPPORTED",
            f"{model_name} has no native graph for {task_type} and the transformers fallback "
            f"cannot run: {exc} (pip install torch transformers sentence-transformers)") from exc
    _LIVE.add(model)
    return model


# Heads that generate text.  A checkpoint whose architectures name none of them has no
# trained language-model head: transformers would add a random one and "generate" noise.
_GENERATIVE = ("ForCausalLM", "ForConditionalGeneration", "LMHeadModel", "ForSeq2SeqLM")


def _check_architecture(model_dir: str, task_type: str, model_name: str) -> None:
    """Refuses, as UNSUPPORTED_ARCHITECTURE, a task the checkpoint was not trained for:
    generation from an encoder without a language-model head, and embeddings from a
    generation checkpoint that is not a sentence-transformers model (no modules.json)."""
    import os

    cfg = _read_json(os.path.join(model_dir, "config.json"))
    archs = [a for a in (cfg or {}).get("architectures") or [] if isinstance(a, str)]
    if not archs:
        return  # nothing declared: let the library decide, as it would for the user
    generative = any(a.endswith(_GENERATIVE) for a in archs)
    if task_type == "text_generation" and not generative:
        raise FallbackError(
            "UNSUPPORTED_ARCHITECTURE",
            f"{model_name} is a {', '.join(archs)} checkpoint without a language-model head: "
            "it cannot generate text (use task_type='embedding' for an encoder)")
    if task_type == "embedding" and all(a.endswith(_GENERATIVE) for a in archs) and \
            not os.path.exists(os.path.join(model_dir, "modules.json")):
        raise FallbackError(
            "UNSUPPORTED_ARCHITECTURE",
            f"{model_name} is a {', '.join(archs)} text-generation checkpoint, not an embedding "
            "model (no sentence-transformers modules.json): use task_type='text_generation'")


class _quiet_loading:
    """transformers' "Loading weights" progress bar off during a load (the library
    prints nothing; the bar's setting is put back after)."""

    def __enter__(self):
        try:
            from transformers.utils import logging as tlog
        except ImportError:
            self.tlog = None
            return self
        self.tlog = tlog
        self.was = tlog.is_progress_bar_enabled()
        if self.was:
            tlog.disable_progress_bar()
        return self

    def __exit__(self, *exc):
        if self.tlog is not None and self.was:
            self.tlog.enable_progress_bar()
        return False


def _group(batch) -> Dict[str, List[int]]:
    """Task indices by their kwargs text, in order."""
    groups: Dict[str, List[int]] = {}
    for i, (_, params, _) in enumerate(batch):
        groups.setdefault(params, []).append(i)
    return groups


def _err(exc: BaseException) -> Tuple[str, str, str]:
    if isinstance(exc, FallbackError):
        return ("error", exc.code, str(exc))
    return ("error", "TASK_FAILED", f"{type(exc).__name__}: {exc}")


class _Base:
    memory_bytes = 0
    embedding_dim = 0

    def __init__(self, device: str):
        self.device = device

    def run(self, batch) -> list:
        out: list = [None] * len(batch)
        for params, idx in _group(batch).items():
            try:
                kw = json.loads(params)
                results = self._run_group([batch[i] for i in idx], kw)
            except Exception as exc:  # noqa: BLE001 - every failure becomes the tasks' error
                results = [_err(exc)] * len(idx)
            for i, r in zip(idx, results):
                out[i] = r
        return out

    def _run_group(self, tasks, kw) -> list:
        raise NotImplementedError

    def close(self) -> None:
        for name in ("model", "pipe", "tokenizer", "_plain"):
            if hasattr(self, name):
                setattr(self, name, None)
        gc.collect()
        if self.device.startswith("cuda"):
            import torch

            torch.cuda.empty_cache()


class _Embedder(_Base):
    """sentence-transformers ``SentenceTransformer.encode``."""

    def __init__(self, model_dir, device, trust, options, model_name):
        super().__init__(device)
        from sentence_transformers import SentenceTransformer

        kw = {}
        dtype = _torch_dtype(device, options)
        if dtype is not None:
            kw["model_kwargs"] = {"dtype": dtype}
        self.model = SentenceTransformer(model_dir, device=device, trust_remote_code=trust,
                                         local_files_only=True, **kw)
        self.model.eval()
        get_dim = getattr(self.model, "get_embedding_dimension", None) or \
            self.model.get_sentence_embedding_dimension
        self.embedding_dim = int(get_dim() or 0)
        self.memory_bytes = _memory_bytes(self.model)
        self._plain = None

    def _without_normalize(self):
        """The model without its Normalize module (normalize=False)."""
        from sentence_transformers import SentenceTransformer
        try:
            from sentence_transformers.sentence_transformer.modules import Normalize
        except ImportError:  # sentence-transformers < 6
            from sentence_transformers.models import Normalize

        if self._plain is None:
            mods = [m for m in self.model if not isinstance(m, Normalize)]
            if len(mods) == len(self.model):
                self._plain = self.model
            else:
                with LOAD_LOCK:
                    self._plain = SentenceTransformer(modules=mods, device=self.device)
                self._plain.prompts = self.model.prompts
                self._plain.default_prompt_name = self.model.default_prompt_name
        return self._plain

    def _run_group(self, tasks, kw):
        import numpy as np

        model = self.model
        normalize = kw.get("normalize")
        if normalize is False:
            model = self._without_normalize()
        dims = kw.get("dimensions")
        if dims is not None and dims > self.embedding_dim:
            raise FallbackError("INVALID_ARGUMENT",
                                f"dimensions={dims} exceeds the model's {self.embedding_dim}")
        prompt_name = kw.get("prompt_name")
        if prompt_name is not None and prompt_name not in (model.prompts or {}):
            names = ", ".join(model.prompts or {}) or "it has none"
            raise FallbackError("INVALID_ARGUMENT",
                                f"prompt_name {prompt_name} is not one of this model's prompts "
                                f"({names})")
        texts = [t for items, _, _ in tasks for t in items]
        if kw.get("truncate") is False:
            limit = model.max_seq_length
            prompt = kw.get("prompt") or (model.prompts or {}).get(
                prompt_name or model.default_prompt_name or "", "")
            for i, t in enumerate(texts):
                n = len(model.tokenizer(prompt + t)["input_ids"])
                if limit and n > limit:
                    raise FallbackError("INVALID_ARGUMENT",
                                        f"item {i} is {n} tokens, longer than the model's "
                                        f"max_seq_length {limit} (truncate=False)")
        # dimensions on a normalizing model: cut, then normalize again (as the native
        # backend does; sentence-transformers alone would cut the unit vector)
        renorm = normalize is None and dims is not None and self._without_normalize() is not model
        vecs = model.encode(texts, batch_size=32, convert_to_numpy=True, show_progress_bar=False,
                            normalize_embeddings=bool(normalize) or renorm,
                            prompt_name=prompt_name, prompt=kw.get("prompt"), truncate_dim=dims)
        vecs = np.ascontiguousarray(vecs, dtype=np.float32)
        out, k = [], 0
        for items, _, _ in tasks:
            part = vecs[k:k + len(items)]
            k += len(items)
            out.append(("embeddings", part.tobytes(), len(items), part.shape[1], []))
        return out


class _Generator(_Base):
    """transformers ``generate`` (encoder-decoder and decoder-only models)."""

    def __init__(self, model_dir, device, trust, options, model_name):
        super().__init__(device)
        from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM,
                                  AutoTokenizer)

        cfg = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust, local_files_only=True)
        self.seq2seq = bool(getattr(cfg, "is_encoder_decoder", False))
        cls = AutoModelForSeq2SeqLM if self.seq2seq else AutoModelForCausalLM
        kw = {}
        dtype = _torch_dtype(device, options)
        if dtype is not None:
            kw["dtype"] = dtype
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust,
                                                       local_files_only=True)
        if not self.seq2seq:
            self.tokenizer.padding_side = "left"
            if self.tokenizer.pad_token is None:
                self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = cls.from_pretrained(model_dir, trust_remote_code=trust,
                                         local_files_only=True, **kw).to(device).eval()
        self.memory_bytes = _memory_bytes(self.model)

    def _run_group(self, tasks, kw):
        kw = dict(kw)
        seed = kw.pop("seed", None)
        truncate = kw.pop("truncate", True)
        nrs = int(kw.get("num_return_sequences") or 1)
        if seed is not None:  # a seeded task reproduces a lone call with that seed
            return [self._generate([t], kw, truncate, nrs, seed)[0] for t in tasks]
        return self._generate(tasks, kw, truncate, nrs, None)

    def _generate(self, tasks, kw, truncate, nrs, seed):
        import torch

        texts = [t for items, _, _ in tasks for t in items]
        tok = self.tokenizer
        if truncate is False:
            limit = tok.model_max_length
            for i, t in enumerate(texts):
                n = len(tok(t)["input_ids"])
                if limit and limit < 10**8 and n > limit:
                    raise FallbackError("INVALID_ARGUMENT",
                                        f"item {i} is {n} tokens, longer than the model's input "
                                        f"limit {limit} (truncate=False)")
        enc = tok(texts, return_tensors="pt", padding=len(texts) > 1,
                  truncation=truncate is not False).to(self.device)
        sampling = seed is not None or kw.get(
            "do_sample", getattr(self.model.generation_config, "do_sample", False))
        # Sampling draws from torch's one process-wide generator: two workers sampling at
        # once would draw from each other's seeded stream (a seeded task not reproducible).
        with (_RNG_LOCK if sampling else _NO_LOCK), torch.inference_mode():
            if seed is not None:
                torch.manual_seed(seed)
            out = self.model.generate(**enc, **kw)
        if not self.seq2seq:
            out = out[:, enc["input_ids"].shape[1]:]
        decoded = tok.batch_decode(out, skip_special_tokens=True)
        results, k = [], 0
        for items, _, _ in tasks:
            n = len(items) * nrs
            results.append(("texts", decoded[k:k + n], nrs, []))
            k += n
        return results


def _fields(key: str, value: Any) -> tuple:
    return ("fields", [(key, json.dumps(value, allow_nan=False))])


class _Reranker(_Base):
    """sentence-transformers ``CrossEncoder.predict`` with its default activation."""

    def __init__(self, model_dir, device, trust, options, model_name):
        super().__init__(device)
        from sentence_transformers import CrossEncoder

        self.model = CrossEncoder(model_dir, device=device, trust_remote_code=trust,
                                  local_files_only=True)
        labels = getattr(self.model, "num_labels", 1)
        if labels != 1:
            raise FallbackError("UNSUPPORTED",
                                f"{model_name} has {labels} output labels: rerank needs a "
                                "cross-encoder with one score (use task_type=\"classification\")")
        self.memory_bytes = _memory_bytes(self.model.model)

    def _run_group(self, tasks, kw):
        queries = [json.loads(q) for items, _, _ in tasks for q in items]
        pairs = [(q["query"], d) for q in queries for d in q["documents"]]
        scores = self.model.predict(pairs, batch_size=32, convert_to_numpy=True,
                                    show_progress_bar=False)
        top_k = kw.get("top_k")
        with_docs = kw.get("return_documents", False)
        ranked, k = [], 0
        for q in queries:
            docs = q["documents"]
            s = [float(x) for x in scores[k:k + len(docs)]]
            k += len(docs)
            order = sorted(range(len(docs)), key=lambda i: (-s[i], i))
            if top_k is not None:
                order = order[:top_k]
            ranked.append([dict(index=i, score=s[i], **({"document": docs[i]} if with_docs else {}))
                           for i in order])
        out, k = [], 0
        for items, _, single in tasks:
            part = ranked[k:k + len(items)]
            k += len(items)
            out.append(_fields("results", part[0] if single else part))
        return out


class _Classifier(_Base):
    """transformers ``pipeline("text-classification")``."""

    def __init__(self, model_dir, device, trust, options, model_name):
        super().__init__(device)
        from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

        kw = {}
        dtype = _torch_dtype(device, options)
        if dtype is not None:
            kw["dtype"] = dtype
        model = AutoModelForSequenceClassification.from_pretrained(
            model_dir, trust_remote_code=trust, local_files_only=True, **kw)
        tok = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust,
                                            local_files_only=True)
        self.pipe = pipeline("text-classification", model=model, tokenizer=tok, device=device)
        self.memory_bytes = _memory_bytes(self.pipe.model)

    def _run_group(self, tasks, kw):
        texts = [t for items, _, _ in tasks for t in items]
        top_k = kw.get("top_k", 1)
        call = {"top_k": top_k, "truncation": kw.get("truncate", True)}
        if kw.get("function_to_apply") is not None:
            call["function_to_apply"] = kw["function_to_apply"]
        labels = self.pipe(texts, **call)
        labels = [x if isinstance(x, list) else [x] for x in labels]
        out, k = [], 0
        for items, _, _ in tasks:
            part = labels[k:k + len(items)]
            k += len(items)
            out.append(_fields("labels", [[{"label": d["label"], "score": float(d["score"])}
                                           for d in row] for row in part]))
        return out
