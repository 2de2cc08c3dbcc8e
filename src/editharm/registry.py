"""The one registry: names to edit methods, guards, task parsers, task metrics and document processors.

Each table is filled by a decorator where the thing is defined, when its package is imported. The packages
are plugins, imported at the first lookup: this package's own, `editharm.builtins` (methods, guards, tasks), and
every entry point of the group `editharm.plugins` (pyproject.toml), so another installed package may add its methods
the same way. So a name is valid exactly when a module registers it, and this module imports none of them: the
registry sits below everything it lists.
"""
from __future__ import annotations

import warnings
from functools import cache
from importlib import import_module
from importlib.metadata import entry_points
from typing import Callable

from editharm.errors import ConfigError

PLUGINS = "editharm.plugins"

METHODS: dict[str, type] = {}
GUARDS: dict[str, Callable] = {}
PARSERS: dict[str, Callable] = {}
METRICS: dict[str, type] = {}
PROCESSORS: dict[str, Callable] = {}


def register_method(name: str, config: type) -> Callable[[type], type]:
    """Register an `EditModule` subclass under `name`, with `config` as its typed hyperparameters."""

    def wrap(cls: type) -> type:
        cls.name = name
        cls.config_class = config
        METHODS[name] = cls
        return cls

    return wrap


def register_guard(name: str, config: type) -> Callable:
    """Register a guard `(deltas, cfg, ctx) -> (deltas, metrics)` under `name`, with `config` as its typed
    parameters (`editharm.guards`)."""

    def wrap(fn: Callable) -> Callable:
        fn.config_class = config
        GUARDS[name] = fn
        return fn

    return wrap


def _register(table: dict, name: str) -> Callable:
    def wrap(obj):
        table[name] = obj
        return obj

    return wrap


def register_parser(name: str) -> Callable:
    """A parser maps a model output (str, or an earlier parser's result) to a value, or None if invalid."""
    return _register(PARSERS, name)


def register_metric(name: str) -> Callable:
    return _register(METRICS, name)


def register_processor(name: str) -> Callable:
    """A document processor (`doc -> doc`) or expander (`doc -> list of docs`)."""
    return _register(PROCESSORS, name)


BUILTIN = "editharm.builtins"
"""This package's own plugin, loaded even where the package runs from a source tree without its metadata
(`PYTHONPATH=src`, an environment `mlflow run` builds from conda.yaml)."""


@cache
def load_plugins() -> tuple[str, ...]:
    """Import this package's plugin and every `editharm.plugins` entry point, once; returns the modules loaded. A
    plugin that fails to import is reported and skipped: it must not take the built-in methods down with it."""
    modules = [BUILTIN, *sorted({ep.value for ep in entry_points(group=PLUGINS)} - {BUILTIN})]
    loaded = []
    for name in modules:
        try:
            import_module(name)
            loaded.append(name)
        except Exception as err:  # noqa: BLE001  (a third party's import error, of any kind)
            if name == BUILTIN:
                raise
            warnings.warn(f"editharm: plugin {name} (entry point group {PLUGINS}) failed to import and is skipped: "
                          f"{type(err).__name__}: {err}", stacklevel=2)
    return tuple(loaded)


def method(name: str) -> type:
    return lookup(METHODS, name, "method")


def method_names() -> list[str]:
    load_plugins()
    return sorted(METHODS)


def guard(name: str) -> Callable:
    return lookup(GUARDS, name, "guard")


def lookup(table: dict, name: str, kind: str):
    """`table[name]`, or a `ConfigError` listing the registered names."""
    load_plugins()
    if name not in table:
        raise ConfigError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(table))}")
    return table[name]
