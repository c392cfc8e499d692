"""The `logging` and `tracing` sections: the access log, the regular log's format, and OpenTelemetry traces.

```yaml
logging:
  format: text            # the regular log: text (one line per event) or json (one object per line)
  access: true            # one JSON line per OpenAI request (the default)
  access_path: null       # a file to append them to; null: stderr
tracing:                  # needs the extra: pip install '.[otel]'
  enabled: false
  endpoint: http://otel-collector:4318/v1/traces   # OTLP over HTTP; null: $OTEL_EXPORTER_OTLP_* or localhost
  service_name: llm-gateway
  sample_ratio: 1.0       # share of new traces kept; a caller's sampled traceparent is always followed
  headers: {}             # sent with every export (a collector's API key)
```
"""

from __future__ import annotations

import importlib.util
from typing import Literal
from urllib.parse import urlsplit

import msgspec

LogFormat = Literal["text", "json"]


class LoggingConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The regular log's format and the access log; see the module doc."""

    format: LogFormat = "text"
    # On by default: the first thing an operator asks after an incident is "which requests, from whom,
    # to which backend"; a line costs about a microsecond of the hot path (README, Performance).
    access: bool = True
    access_path: str | None = None


class TracingConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """OpenTelemetry traces over OTLP/HTTP; see the module doc."""

    enabled: bool = False
    endpoint: str | None = None
    service_name: str = "llm-gateway"
    sample_ratio: float = 1.0
    headers: dict[str, str] = msgspec.field(default_factory=dict)


def otel_installed() -> bool:
    """Whether the `otel` extra is importable (found without importing it)."""
    try:
        return all(importlib.util.find_spec(name) is not None for name in (
            "opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http"))
    except ModuleNotFoundError:  # a parent package is missing
        return False


def logging_problems(config: LoggingConfig) -> list[str]:
    """Problems with the `logging` section, each `path: what is wrong`."""
    if config.access_path is not None and not config.access_path.strip():
        return ["logging.access_path: must not be empty (leave it out to log to stderr)"]
    return []


def tracing_problems(config: TracingConfig) -> list[str]:
    """Problems with the `tracing` section; asking for traces without the extra installed is one."""
    problems: list[str] = []
    if not 0.0 <= config.sample_ratio <= 1.0:
        problems.append("tracing.sample_ratio: must be between 0 and 1")
    if not config.service_name.strip():
        problems.append("tracing.service_name: must not be empty")
    if config.endpoint is not None:
        parts = urlsplit(config.endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            problems.append("tracing.endpoint: not a URL (expected http(s)://host:4318/v1/traces)")
    if config.enabled and not otel_installed():
        problems.append("tracing.enabled: OpenTelemetry is not installed; pip install '.[otel]'")
    return problems
