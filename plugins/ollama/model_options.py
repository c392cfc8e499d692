"""The `options` object of Ollama's requests: names and JSON types.

From ollama/ollama api/types.go (`Options` and its embedded `Runner`, commit fb30760) and
`Options.FromMap`, which checks each value's JSON type and answers with the messages
below. The plugin checks configured default options against this table; the emulator
decodes request options with it.
"""

from __future__ import annotations

from typing import Any, Literal

OptionKind = Literal["int", "float", "bool", "strings"]

OPTION_KINDS: dict[str, OptionKind] = {
    # Runner: fixed when the model is loaded; changing one reloads the model.
    "num_ctx": "int", "num_batch": "int", "num_gpu": "int", "main_gpu": "int", "use_mmap": "bool",
    "num_thread": "int", "draft_num_predict": "int",
    # Options: per request.
    "num_keep": "int", "seed": "int", "num_predict": "int", "top_k": "int", "top_p": "float", "min_p": "float",
    "typical_p": "float", "repeat_last_n": "int", "temperature": "float", "repeat_penalty": "float",
    "presence_penalty": "float", "frequency_penalty": "float", "stop": "strings",
}

# Go's names for the kinds, as `FromMap` words its errors.
_GO_KIND = {"int": "integer", "float": "float32", "bool": "boolean", "strings": "array"}


def option_error(name: str, value: Any) -> str | None:
    """Ollama's message for a value of the wrong JSON type, or None when it is acceptable.

    Unknown names are not errors: Ollama logs "invalid option provided" and ignores them.
    """
    kind = OPTION_KINDS.get(name)
    if kind is None or value is None:
        return None
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind in ("int", "float") and not number:
        return f'option "{name}" must be of type {_GO_KIND[kind]}'
    if kind == "bool" and not isinstance(value, bool):
        return f'option "{name}" must be of type boolean'
    if kind == "strings":
        if not isinstance(value, list):
            return f'option "{name}" must be of type array'
        if not all(isinstance(item, str) for item in value):
            return f'option "{name}" must be of an array of strings'
    return None
