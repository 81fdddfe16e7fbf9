"""pymodelmgr: an in-process model manager for Python apps.

One awaitable, :meth:`ModelManager.task`, loads Hugging Face models on first
use, queues and batches work per model on C worker threads, and releases
idle models.  See README.md and the docstrings of the names below.
"""
import logging as _logging
import types as _types
from typing import Mapping as _Mapping

from . import _core
from .context import SERVICE_NAME, AppContext, install
from . import fallback as _fallback
from .manager import ModelManager, StreamError
from .result import ErrorInfo, Result
from .settings import EmbeddingCacheConfig, GenerationConfig, ModelManagerSettings, WorkerPoolConfig
from .tokenizer import Tokenizer

__version__ = "0.1.0"

#: Every stable error code a :class:`Result` can carry (``result.error.code``), mapped to a
#: short phrase: read-only, derived from the C core's one table of codes
#: (csrc/base/mm_err.h), so a code added there appears here too.
ERROR_CODES: _Mapping[str, str] = _types.MappingProxyType(
    {code: phrase for code, phrase in _core.ERROR_CODES.items() if code != "OK"})

#: The lock every transformers / sentence-transformers model load of the fallback backend
#: holds (a ``threading.RLock``).  transformers' ``from_pretrained`` swaps process-wide
#: functions while it builds a model, so two loads on two threads must not overlap: hold it
#: around your own loads if your threads run them while a ModelManager is busy.
TRANSFORMERS_LOAD_LOCK = _fallback.LOAD_LOCK

# A library logs; the application decides where the lines go.
_logging.getLogger("pymodelmgr").addHandler(_logging.NullHandler())

__all__ = [
    "ModelManager",
    "StreamError",
    "Tokenizer",
    "Result",
    "ErrorInfo",
    "ModelManagerSettings",
    "WorkerPoolConfig",
    "EmbeddingCacheConfig",
    "GenerationConfig",
    "AppContext",
    "install",
    "SERVICE_NAME",
    "ERROR_CODES",
    "TRANSFORMERS_LOAD_LOCK",
    "__version__",
]
