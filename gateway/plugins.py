"""The plugin manager: discovers plugins through the `gateway.plugins` entry-point group."""

from __future__ import annotations

import importlib.metadata
import logging
from collections.abc import Iterable
from typing import Any

import pluggy

from gateway import hookspecs
from gateway.config import BackendConfig, BackendValidator

ENTRY_POINT_GROUP = "gateway.plugins"

log = logging.getLogger("gateway.plugins")


class PluginError(Exception):
    """A plugin failed to load or registered something twice."""


class BackendRegistry:
    """Backend types by plugin name, as registered through `register_backends`."""

    def __init__(self) -> None:
        self.types: dict[str, Any] = {}
        self.sources: dict[str, str] = {}
        self.failures: dict[str, str] = {}  # plugins that failed to import, and why

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

        def failed(why: str) -> BackendValidator:
            return lambda _config: [("plugin", f"the plugin is installed but failed to load: {why}")]

        checks = {name: failed(why) for name, why in self.failures.items()}
        checks.update({name: getattr(factory, "validate_config", no_problems) for name, factory in self.types.items()})
        return checks


def make_plugin_manager(extra_plugins: Iterable[object] = (), *, entry_points: bool = True) -> pluggy.PluginManager:
    """A plugin manager with every installed plugin loaded (and `extra_plugins`, for tests).

    A plugin that fails to import is recorded in `manager.load_failures` (name -> why) and
    skipped: one broken package must not take down backends that do not use it, and a config
    that names it is told why it is missing.
    """
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    failures: dict[str, str] = {}
    if entry_points:
        for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            if manager.get_plugin(entry_point.name) is not None or manager.is_blocked(entry_point.name):
                continue
            try:
                plugin = entry_point.load()
            except Exception as err:
                failures[entry_point.name] = f"{type(err).__name__}: {err}"
                log.error("plugin %s (%s) failed to load: %s", entry_point.name, entry_point.value, err)
                continue
            manager.register(plugin, name=entry_point.name)
    for plugin in extra_plugins:
        manager.register(plugin)
    manager.load_failures = failures  # type: ignore[attr-defined]
    return manager


def collect_backends(manager: pluggy.PluginManager) -> BackendRegistry:
    """Call every plugin's `register_backends` and gather what they register."""
    registry = BackendRegistry()
    registry.failures = dict(getattr(manager, "load_failures", {}))
    for impl in manager.hook.register_backends.get_hookimpls():
        source = impl.plugin_name

        def register(name: str, factory: Any, _source: str = source) -> None:
            registry.register(name, factory, _source)

        impl.function(register=register)
    return registry


def load_backend_registry() -> BackendRegistry:
    """The registry of every installed backend type."""
    return collect_backends(make_plugin_manager())
