"""Ollama's `keep_alive` values: a Go duration string or a number of seconds.

Ollama decodes `keep_alive` with `api.Duration.UnmarshalJSON` (ollama/ollama api/types.go):
a JSON number is seconds, a string goes through Go's `time.ParseDuration` ("5m", "1h30m",
"0"), and a negative value of either kind means "keep loaded forever". The plugin checks a
configured value with the same grammar so a typo fails `gateway check-config`, not every
request; the emulator parses requests with it.
"""

from __future__ import annotations

import math
import re

# Go's time.ParseDuration units (src/time/format.go, unitMap), in nanoseconds.
_UNITS_NS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": 1_000_000_000,
             "m": 60_000_000_000, "h": 3_600_000_000_000}
_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
FOREVER_S = math.inf


class DurationError(ValueError):
    """Not a Go duration; the message is Go's own (`time: invalid duration "x"`)."""


def parse_go_duration(text: str) -> float:
    """Seconds in a Go duration string; raises `DurationError` with Go's message."""
    invalid = DurationError(f'time: invalid duration "{text}"')
    body = text
    sign = 1.0
    if body[:1] in ("+", "-"):
        sign = -1.0 if body[0] == "-" else 1.0
        body = body[1:]
    if body == "0":
        return 0.0
    if not body:
        raise invalid
    total_ns = 0.0
    position = 0
    while position < len(body):
        match = _PART.match(body, position)
        if match is None:
            if re.match(r"(\d+\.?\d*|\.\d+)", body[position:]):
                raise DurationError(f'time: missing unit in duration "{text}"')
            raise invalid
        total_ns += float(match.group(1)) * _UNITS_NS[match.group(2)]
        position = match.end()
    return sign * total_ns / 1e9


def keep_alive_seconds(value: object) -> float:
    """Seconds a model stays loaded after a request; `FOREVER_S` for a negative value.

    Raises `DurationError` (or `TypeError` for a value of the wrong JSON type) as Ollama does.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(f"Unsupported type: '{type(value).__name__}'")
    seconds = parse_go_duration(value) if isinstance(value, str) else float(value)
    return FOREVER_S if seconds < 0 else seconds
