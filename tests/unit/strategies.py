"""Hypothesis strategies for request bodies: arbitrary JSON, and valid bodies with one field broken."""

from __future__ import annotations

from typing import Any

import msgspec
from hypothesis import strategies as st

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)

json_values: st.SearchStrategy[Any] = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5),
    max_leaves=25,
)

VALID_BODIES: dict[str, dict[str, Any]] = {
    "chat": {
        "model": "m",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        "stream": False,
        "temperature": 0.2,
        "n": 1,
        "max_tokens": 8,
        "stop": ["\n"],
        "stream_options": {"include_usage": True},
        "logit_bias": {"1": 0.5},
        "tools": [{"type": "function", "function": {"name": "f"}}],
        "tool_choice": "auto",
    },
    "completion": {"model": "m", "prompt": "hi", "max_tokens": 8, "n": 1, "stop": "\n", "echo": False},
    "embedding": {"model": "m", "input": ["a", "b"], "encoding_format": "float", "dimensions": 8},
}


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a value inside `value` (dict keys and list indexes)."""
    found: list[tuple[Any, ...]] = []
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in items:
        found.append((*prefix, key))
        found.extend(_paths(child, (*prefix, key)))
    return found


@st.composite
def mutated_bodies(draw: st.DrawFn, kind: str) -> tuple[str, dict[str, Any]]:
    """(top-level field that was changed, a valid body with one value replaced or removed, or a field added)."""
    body = msgspec.json.decode(msgspec.json.encode(VALID_BODIES[kind]))
    paths = _paths(body)
    path = draw(st.sampled_from(paths))
    parent: Any = body
    for key in path[:-1]:
        parent = parent[key]
    action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
    if action == "delete" and isinstance(parent, dict):
        del parent[path[-1]]
    elif action == "add" and isinstance(parent, dict):
        key = draw(st.text(max_size=8))
        parent[key] = draw(json_values)
        if len(path) == 1:
            return key, body
    else:
        parent[path[-1]] = draw(json_values)
    return str(path[0]), body


def request_bytes(kind: str) -> st.SearchStrategy[bytes]:
    """Arbitrary bytes, arbitrary JSON, and near-valid bodies, all as request bodies."""
    return st.one_of(
        st.binary(max_size=200),
        st.text(max_size=100).map(str.encode),
        json_values.map(msgspec.json.encode),
        st.dictionaries(st.text(max_size=12), json_values, max_size=6).map(msgspec.json.encode),
        mutated_bodies(kind).map(lambda pair: msgspec.json.encode(pair[1])),
    )
