"""A minimal plugin-framework context, so code written for the framework's
``app_context.get_service("core.model_manager.service")`` runs unchanged."""
from __future__ import annotations

from typing import Any, Dict, Optional

from .manager import ModelManager
from .settings import ModelManagerSettings

__all__ = ["AppContext", "install", "SERVICE_NAME"]

SERVICE_NAME = "core.model_manager.service"
"""The name the model manager is registered under."""


class AppContext:
    """A registry of named services, as a plugin framework's app context has."""

    def __init__(self) -> None:
        self._services: Dict[str, Any] = {}

    def register_service(self, name: str, service: Any) -> None:
        """Registers ``service`` under ``name`` (replacing any previous one)."""
        if not isinstance(name, str) or not name:
            raise ValueError("service name must be a non-empty string")
        self._services[name] = service

    def get_service(self, name: str) -> Optional[Any]:
        """Returns the service registered under ``name``, or None."""
        return self._services.get(name)


def install(app_context: Any,
            settings: Optional[ModelManagerSettings | Dict[str, Any]] = None) -> ModelManager:
    """Creates a :class:`ModelManager` and registers it in ``app_context`` as
    ``"core.model_manager.service"``; returns it."""
    manager = ModelManager(settings)
    app_context.register_service(SERVICE_NAME, manager)
    return manager
