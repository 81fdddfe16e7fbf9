"""pymodelmgr: an in-process model manager for Python apps.

One awaitable, :meth:`ModelManager.task`, loads Hugging Face models on first
use, queues and batches work per model on C worker threads, and releases
idle models.  See README.md and the docstrings of the names below.
"""
import logging as _logging

from .context import SERVICE_NAME, AppContext, install
from .manager import ModelManager
from .result import ErrorInfo, Result
from .settings import EmbeddingCacheConfig, ModelManagerSettings, WorkerPoolConfig
from .tokenizer import Tokenizer

__version__ = "0.1.0"

# A library logs; the application decides where the lines go.
_logging.getLogger("pymodelmgr").addHandler(_logging.NullHandler())

__all__ = [
    "ModelManager",
    "Tokenizer",
    "Result",
    "ErrorInfo",
    "ModelManagerSettings",
    "WorkerPoolConfig",
    "EmbeddingCacheConfig",
    "AppContext",
    "install",
    "SERVICE_NAME",
    "__version__",
]
