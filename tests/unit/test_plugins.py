"""Plugin discovery: the built-ins come through the entry-point group; registrations are checked."""

from __future__ import annotations

from collections.abc import Iterable
from importlib.metadata import entry_points
from typing import Any

import pytest

from gateway.config import BackendConfig
from gateway.hookspecs import RegisterBackend, hookimpl
from gateway.plugins import (
    ENTRY_POINT_GROUP,
    BackendRegistry,
    PluginError,
    collect_backends,
    load_backend_registry,
    make_plugin_manager,
)
from plugins.llamacpp.backend import LlamaCppBackend
from plugins.openai_compat.backend import OpenAICompatBackend

from .fakes import FakeBackend


def test_builtins_are_announced_in_the_entry_point_group() -> None:
    announced = {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}
    assert announced["openai_compat"] == "plugins.openai_compat"
    assert announced["llamacpp"] == "plugins.llamacpp"


def test_load_backend_registry_finds_the_builtins() -> None:
    registry = load_backend_registry()
    assert registry.types["openai_compat"] is OpenAICompatBackend
    assert registry.types["llamacpp"] is LlamaCppBackend
    assert registry.sources["openai_compat"] == "openai_compat"
    assert registry.sources["llamacpp"] == "llamacpp"
    assert "echo" not in registry.types  # the fixture plugin is never installed in this venv


def test_without_entry_points_nothing_is_registered() -> None:
    assert collect_backends(make_plugin_manager(entry_points=False)).types == {}


def test_same_name_by_two_classes_is_refused() -> None:
    registry = BackendRegistry()
    registry.register("vllm", OpenAICompatBackend, "plugin-a")
    with pytest.raises(PluginError) as info:
        registry.register("vllm", LlamaCppBackend, "plugin-b")
    assert "'vllm'" in str(info.value) and "plugin-a" in str(info.value) and "plugin-b" in str(info.value)
    assert registry.types["vllm"] is OpenAICompatBackend


def test_same_class_registered_again_is_fine() -> None:
    registry = BackendRegistry()
    registry.register("fake", FakeBackend, "a")
    registry.register("fake", FakeBackend, "a")
    assert registry.types == {"fake": FakeBackend}


class ExtraPlugin:
    """A plugin object registered directly, as tests and embedders may do."""

    @staticmethod
    @hookimpl
    def register_backends(register: RegisterBackend) -> None:
        register("fake", FakeBackend)


class Clash:
    """A third-party plugin that claims a built-in's name with its own class."""

    @staticmethod
    @hookimpl
    def register_backends(register: RegisterBackend) -> None:
        register("openai_compat", FakeBackend)


def test_extra_plugins_join_the_entry_point_ones() -> None:
    registry = collect_backends(make_plugin_manager([ExtraPlugin()]))
    assert set(registry.types) >= {"openai_compat", "llamacpp", "fake"}
    assert registry.types["fake"] is FakeBackend


def test_a_plugin_taking_a_builtin_name_fails_loudly() -> None:
    with pytest.raises(PluginError, match="openai_compat"):
        collect_backends(make_plugin_manager([Clash()]))


def test_validators_use_validate_config_or_accept_anything() -> None:
    class Picky(FakeBackend):
        @staticmethod
        def validate_config(config: BackendConfig) -> Iterable[tuple[str, str]]:
            yield ("options.size", "too big")

    registry = BackendRegistry()
    registry.register("fake", FakeBackend)
    registry.register("picky", Picky)
    validators = registry.validators()
    config = BackendConfig(name="x", plugin="picky", model="m")
    assert list(validators["picky"](config)) == [("options.size", "too big")]
    assert list(validators["fake"](config)) == []


def test_a_plugin_that_fails_to_import_is_reported_not_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.metadata

    import gateway.plugins as plugins_module
    from gateway.config import ConfigError, parse_config

    real = importlib.metadata.entry_points
    broken = importlib.metadata.EntryPoint(name="broken", value="no_such_module_for_gateway", group="gateway.plugins")

    def entry_points(**kwargs: Any) -> Any:
        return [*real(**kwargs), broken]

    monkeypatch.setattr(plugins_module.importlib.metadata, "entry_points", entry_points)
    registry = plugins_module.load_backend_registry()
    assert {"openai_compat", "llamacpp"} <= set(registry.types)  # the others still load
    assert "ModuleNotFoundError" in registry.failures["broken"]
    config = {
        "backends": [{"name": "b", "plugin": "broken", "model": "m", "url": "http://127.0.0.1:1"}],
        "routes": [{"model": "m", "backends": ["b"]}],
    }
    with pytest.raises(ConfigError) as info:
        parse_config(config, env={}, validators=registry.validators())
    assert info.value.problems == [
        f"backends[0].plugin: the plugin is installed but failed to load: {registry.failures['broken']}"
    ]
