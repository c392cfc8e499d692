"""The plugin contract: the hooks a plugin module may implement.

A plugin is a plain module (or object) with functions decorated by `hookimpl`, announced in
the `gateway.plugins` entry-point group. Built-in backends in `plugins/` use this exact path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pluggy

PROJECT = "gateway"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

RegisterBackend = Callable[[str, Any], None]


@hookspec
def register_backends(register: RegisterBackend) -> None:
    """Register backend types that configs can name in `plugin:`.

    Call `register("vllm", VLLMBackend)` once per type. The class is built as
    `VLLMBackend(config, context)` and must implement `gateway.backend.Backend`; an optional
    static `validate_config(config)` yields `(key sub-path, message)` problems for
    `gateway check-config`.
    """
