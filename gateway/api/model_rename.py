"""Rewrites the `model` field of backend responses to the name the client asked for.

Backends report their own model names (llama.cpp reports a file path); clients expect
the name they sent. A byte-level substitution avoids decoding each streamed chunk. A quote
inside a JSON string is always escaped (`\\"model\\"`), so the pattern only matches keys.
"""

from __future__ import annotations

import re

import msgspec

_MODEL_FIELD = re.compile(rb'"model"\s*:\s*"(?:[^"\\]|\\.)*"')


class ModelRenamer:
    """Replaces every `"model": "..."` key in a response with the client's model name."""

    __slots__ = ("_replacement",)

    def __init__(self, client_model: str) -> None:
        self._replacement = b'"model":' + msgspec.json.encode(client_model)

    def __call__(self, data: bytes) -> bytes:
        if b'"model"' not in data:
            return data
        return _MODEL_FIELD.sub(self._replacement.replace(b"\\", b"\\\\"), data)
