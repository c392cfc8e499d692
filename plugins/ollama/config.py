"""`options:` of an ollama backend, and the checks `gateway check-config` runs on it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec

from gateway.config import BackendConfig
from gateway.config_structs import check_struct
from plugins.ollama.duration import DurationError, keep_alive_seconds
from plugins.ollama.model_options import OPTION_KINDS, option_error

# Options the plugin sets itself from a request or from its own keys below.
_SET_BY_PLUGIN = frozenset({"num_predict", "temperature", "top_p", "top_k", "stop", "seed", "presence_penalty",
                            "frequency_penalty", "min_p", "typical_p", "repeat_penalty", "repeat_last_n", "num_ctx"})


class OllamaOptions(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What an operator can set for one Ollama server."""

    # How long the model stays loaded after a request: a Go duration ("5m", "1h") or seconds;
    # negative keeps it loaded. Unset: the server's default (OLLAMA_KEEP_ALIVE, 5m).
    keep_alive: str | int | float | None = None
    # Context length to load the model with. Unset: the server's default. Every request
    # sends it, since a request with a different num_ctx makes Ollama reload the model.
    num_ctx: int | None = None
    # The server's OLLAMA_NUM_PARALLEL, when known: lets load() split in-flight requests
    # into running and waiting (Ollama itself publishes no request counts).
    num_parallel: int | None = None
    # Further Ollama options for every request (num_thread, num_gpu, num_batch, ...).
    default_options: dict[str, Any] = msgspec.field(default_factory=dict)
    # /v1/completions sends the prompt raw (no chat template): a text completion continues
    # the text as given. False applies the model's template, as Ollama's own /v1 does.
    completion_raw: bool = True
    embeddings: bool = True
    # Passed on as Ollama's `truncate` and `shift`: false makes an over-long prompt a 400
    # instead of silently dropping its start.
    truncate: bool | None = None
    shift: bool | None = None


def validate(config: BackendConfig) -> Iterator[tuple[str, str]]:
    """Problems with an ollama backend's config, as (key sub-path, message)."""
    if config.url is None:
        yield ("url", "required key is missing (the Ollama server, e.g. http://127.0.0.1:11434)")
    if config.launch is not None:
        yield ("launch", "not supported by the ollama plugin: run `ollama serve` (or the ollama/ollama image) "
                         "and point `url` at it")
    problems = check_struct(config.options, OllamaOptions, "options")
    yield from problems
    if problems:
        return
    options = msgspec.convert(config.options, OllamaOptions, strict=False)
    if options.keep_alive is not None:
        try:
            keep_alive_seconds(options.keep_alive)
        except (DurationError, TypeError) as err:
            yield ("options.keep_alive", f"not a duration ({err}); use e.g. \"5m\", \"1h\", 300 or -1")
    for key in ("num_ctx", "num_parallel"):
        value = getattr(options, key)
        if value is not None and value <= 0:
            yield (f"options.{key}", "must be positive")
    for name, value in options.default_options.items():
        if name not in OPTION_KINDS:
            known = ", ".join(sorted(OPTION_KINDS))
            yield (f"options.default_options.{name}", f"not an Ollama option (known: {known})")
        elif name in _SET_BY_PLUGIN:
            yield (f"options.default_options.{name}", "set per request (or by options.num_ctx), not here")
        elif (message := option_error(name, value)) is not None:
            yield (f"options.default_options.{name}", message)
