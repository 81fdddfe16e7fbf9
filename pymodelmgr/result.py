"""The Result value every ModelManager call returns.

Errors are values, not exceptions: check ``result.success`` and read
``result.data`` or ``result.error``.  ``Result.success(...)`` and
``Result.error(...)`` on the class build results (as the framework's
``core.error_utils.Result`` does); on an instance the same names are the
outcome: ``result.success`` is a bool and ``result.error`` an
:class:`ErrorInfo` or ``None``.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

__all__ = ["Result", "ErrorInfo"]


class ErrorInfo:
    """What went wrong: a stable ``code`` (e.g. ``"QUEUE_FULL"``), a ``message`` a
    person can act on, and optional ``details`` (a dict)."""

    __slots__ = ("code", "message", "details")

    def __init__(self, code: str, message: str, details: Optional[Dict[str, Any]] = None):
        self.code = code
        self.message = message
        self.details = details

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, ErrorInfo) and self.code == other.code
                and self.message == other.message and self.details == other.details)

    def __repr__(self) -> str:
        return f"ErrorInfo(code={self.code!r}, message={self.message!r}, details={self.details!r})"

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class _ClassOrInstance:
    """A name that builds a Result on the class and reads a field on an instance."""

    def __init__(self, factory, field: str):
        self._factory = factory
        self._field = field
        self.__doc__ = factory.__doc__

    def __get__(self, obj, cls=None):
        if obj is None:
            return self._factory.__get__(None, cls)
        return getattr(obj, self._field)


def _success(cls, data: Optional[Dict[str, Any]] = None) -> "Result":
    """Result.success(data=None) -> a successful Result carrying ``data`` (a dict)."""
    return cls(True, {} if data is None else data, None)


def _error(cls, code: str, message: str = "", details: Optional[Dict[str, Any]] = None) -> "Result":
    """Result.error(code, message, details=None) -> a failed Result."""
    return cls(False, {}, ErrorInfo(code, message, details))


class Result:
    """Outcome of a ModelManager call.

    Attributes on an instance:
        success: ``True`` when the call worked.
        data: the output dict (empty on error), e.g. ``{"embeddings": [[...], ...]}``.
        error: an :class:`ErrorInfo` on failure, ``None`` on success.
    """

    __slots__ = ("_ok", "data", "_error")

    def __init__(self, ok: bool, data: Optional[Dict[str, Any]] = None,
                 error: Optional[ErrorInfo] = None):
        self._ok = ok
        self.data = {} if data is None else data
        self._error = error

    success = _ClassOrInstance(classmethod(_success), "_ok")
    error = _ClassOrInstance(classmethod(_error), "_error")

    def __repr__(self) -> str:
        if self._ok:
            keys = ", ".join(sorted(self.data))
            return f"Result(success=True, data keys=[{keys}])"
        return f"Result(success=False, error={self._error!r})"
