"""The one registry: names to edit methods (and, later, guards, parsers and metrics)."""
from __future__ import annotations

from typing import Callable

METHODS: dict[str, type] = {}


def register_method(name: str, config: type) -> Callable[[type], type]:
    """Register an `EditModule` subclass under `name`, with `config` as its typed hyperparameters."""

    def wrap(cls: type) -> type:
        cls.name = name
        cls.config_class = config
        METHODS[name] = cls
        return cls

    return wrap


def method(name: str) -> type:
    """The method class registered as `name`; imports the built-in methods on first use."""
    import editharm.methods  # noqa: F401  (registers the built-in methods)

    return METHODS[name]


def method_names() -> list[str]:
    import editharm.methods  # noqa: F401

    return sorted(METHODS)
