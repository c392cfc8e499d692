"""The plugin manager: discovers plugins through the `gateway.plugins` entry-point group."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pluggy

from gateway import hookspecs
from gateway.config import BackendConfig, BackendValidator

ENTRY_POINT_GROUP = "gateway.plugins"


class PluginError(Exception):
    """A plugin failed to load or registered something twice."""


class BackendRegistry:
    """Backend types by plugin name, as registered through `register_backends`."""

    def __init__(self) -> None:
        self.types: dict[str, Any] = {}
        self.sources: dict[str, str] = {}

    def register(self, name: str, factory: Any, source: str = "?") -> None:
        if name in self.types and self.types[name] is not factory:
            raise PluginError(
                f"backend type '{name}' registered twice (by {self.sources[name]} and {source})"
            )
        self.types[name] = factory
        self.sources[name] = source

    def validators(self) -> dict[str, BackendValidator]:
        """Per-plugin config checks for `parse_config`; plugins without one accept any config."""

        def no_problems(_config: BackendConfig) -> Iterable[tuple[str, str]]:
            return ()

        return {name: getattr(factory, "validate_config", no_problems) for name, factory in self.types.items()}


def make_plugin_manager(extra_plugins: Iterable[object] = (), *, entry_points: bool = True) -> pluggy.PluginManager:
    """A plugin manager with every installed plugin loaded (and `extra_plugins`, for tests)."""
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    if entry_points:
        try:
            manager.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        except Exception as err:  # a broken third-party plugin must say who it is
            raise PluginError(f"failed to load a plugin from entry-point group {ENTRY_POINT_GROUP}: {err}") from err
    for plugin in extra_plugins:
        manager.register(plugin)
    return manager


def collect_backends(manager: pluggy.PluginManager) -> BackendRegistry:
    """Call every plugin's `register_backends` and gather what they register."""
    registry = BackendRegistry()
    for impl in manager.hook.register_backends.get_hookimpls():
        source = impl.plugin_name

        def register(name: str, factory: Any, _source: str = source) -> None:
            registry.register(name, factory, _source)

        impl.function(register=register)
    return registry


def load_backend_registry() -> BackendRegistry:
    """The registry of every installed backend type."""
    return collect_backends(make_plugin_manager())
