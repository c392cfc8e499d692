"""Checking a config section against its msgspec Struct, reporting every problem with its key path.

msgspec stops at the first error; `check_struct` walks nested structs and lists so `gateway
check-config` can print all of them (`backends[1].timeouts.total_s: expected a number`). Plugins
check their own `options` with it.
"""

from __future__ import annotations

import re
import types
from typing import Any, Literal, Union, get_args, get_origin

import msgspec

_MSGSPEC_PATH = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)


def _join(path: str, key: str) -> str:
    if not key:
        return path
    return f"{path}.{key}" if path else key


def _describe(err: msgspec.ValidationError, prefix: str) -> tuple[str, str]:
    """msgspec's `Expected int, got str - at $.port` as (`server.port`, `expected int, got str`)."""
    match = _MSGSPEC_PATH.match(str(err))
    assert match is not None
    message, sub = match.group("msg"), match.group("path") or ""
    path = prefix + sub if sub.startswith("[") else _join(prefix, sub.lstrip("."))
    if message.startswith("Object contains unknown field"):
        return _join(path, message.split("`")[1]), "unknown key"
    if message.startswith("Object missing required field"):
        return _join(path, message.split("`")[1]), "required key is missing"
    message = message.replace("`", "")
    return path, message[0].lower() + message[1:]


def _struct_in(annotation: Any) -> type[msgspec.Struct] | None:
    """The Struct class inside `S` or `S | None`, if any."""
    if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
        return annotation
    if isinstance(annotation, types.UnionType) or get_origin(annotation) is Union:
        structs = [a for a in get_args(annotation) if isinstance(a, type) and issubclass(a, msgspec.Struct)]
        return structs[0] if len(structs) == 1 else None
    return None


def check_struct(raw: Any, kind: type[msgspec.Struct], path: str = "") -> list[tuple[str, str]]:
    """Every problem of `raw` as a `kind`, as (key path, message): unknown keys, missing keys,
    and a type error per field, recursing into nested sections, rather than msgspec's first."""
    if not isinstance(raw, dict):
        return [(path or "<root>", f"expected a mapping, got {type(raw).__name__}")]
    fields = {f.encode_name: f for f in msgspec.structs.fields(kind)}
    problems = [(_join(path, str(key)), "unknown key") for key in raw if key not in fields]
    for name, field in fields.items():
        sub = _join(path, name)
        if name not in raw:
            if field.required:
                problems.append((sub, "required key is missing"))
            continue
        nested = _struct_in(field.type)
        if nested is not None and isinstance(raw[name], dict):
            problems.extend(check_struct(raw[name], nested, sub))
            continue
        try:
            msgspec.convert(raw[name], field.type, strict=False)
        except msgspec.ValidationError as err:
            where, message = _describe(err, sub)
            if get_origin(field.type) is Literal:  # name the choices, not only the bad value
                message += f" (expected one of: {', '.join(map(str, get_args(field.type)))})"
            problems.append((where, message))
    return problems


def convert_section(raw: Any, kind: type[Any], prefix: str, problems: list[str]) -> Any:
    found = check_struct(raw, kind, prefix)
    if found:
        problems.extend(f"{path}: {message}" for path, message in found)
        return None
    return msgspec.convert(raw, kind, strict=False)
