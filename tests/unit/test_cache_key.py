"""The response cache's canonical key: what must and must not change it, and which requests are deterministic."""

from __future__ import annotations

import copy
import json
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.cache.key import OUTPUT_NEUTRAL, CacheKey, cache_key, is_deterministic

from .strategies import json_values


def chat_body(**overrides: Any) -> dict[str, Any]:
    """A greedy chat request; keyword arguments replace or add fields."""
    body: dict[str, Any] = {
        "model": "alias",
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        "temperature": 0,
        "max_tokens": 32,
    }
    body.update(overrides)
    return body


def digest(body: dict[str, Any], *, tenant: str = "t1", model: str = "llama", kind: str = "chat") -> str:
    return cache_key(kind, model, body, tenant).digest


def test_key_fields() -> None:
    key = cache_key("chat", "llama", chat_body(), "t1")
    assert isinstance(key, CacheKey)
    assert key.tenant == "t1"
    assert key.model == "llama"
    assert len(key.digest) == 64
    int(key.digest, 16)


def test_json_key_order_and_whitespace_do_not_matter() -> None:
    compact = '{"model":"alias","messages":[{"role":"user","content":"hi"}],"temperature":0,"stop":["\\n"]}'
    spread = """
    {
      "stop" : [ "\\n" ],
      "temperature": 0.0,
      "messages": [ { "content": "hi",   "role": "user" } ],
      "model":   "alias"
    }
    """
    assert compact != spread
    assert digest(msgspec.json.decode(compact)) == digest(msgspec.json.decode(spread))
    assert digest(json.loads(compact)) == digest(json.loads(spread))


def test_stream_and_other_neutral_fields_do_not_matter() -> None:
    base = digest(chat_body())
    assert digest(chat_body(stream=True)) == base
    assert digest(chat_body(stream=False)) == base
    assert digest(chat_body(stream=True, stream_options={"include_usage": True})) == base
    assert digest(chat_body(user="alice", metadata={"trace": "x"}, store=True)) == base
    assert "stream" in OUTPUT_NEUTRAL
    assert "n" not in OUTPUT_NEUTRAL


def test_tenant_changes_key() -> None:
    assert digest(chat_body(), tenant="t1") != digest(chat_body(), tenant="t2")


def test_kind_changes_key_and_unknown_kind_is_refused() -> None:
    body = {"model": "alias", "prompt": "hi", "temperature": 0}
    assert digest(body, kind="completion") != digest(body, kind="chat")
    with pytest.raises(ValueError, match="kind"):
        cache_key("chats", "llama", body, "t1")


def test_route_model_replaces_body_model() -> None:
    assert digest(chat_body(model="alias-a")) == digest(chat_body(model="alias-b"))
    assert digest(chat_body(), model="llama") != digest(chat_body(), model="qwen")
    assert digest(chat_body(model="llama"), model="llama") == digest(chat_body(model="other"), model="llama")


def test_temperature_int_and_float_are_equal() -> None:
    assert digest(chat_body(temperature=0)) == digest(chat_body(temperature=0.0))
    assert digest(chat_body(temperature=1)) == digest(chat_body(temperature=1.0))
    assert digest(chat_body(max_tokens=32)) == digest(chat_body(max_tokens=32.0))


def test_null_field_equals_absent() -> None:
    assert digest(chat_body(seed=None, stop=None)) == digest(chat_body())
    with_null_name = chat_body(messages=[{"role": "user", "content": "hi", "name": None}])
    assert digest(with_null_name) == digest(chat_body(messages=[{"role": "user", "content": "hi"}]))


def test_string_content_equals_single_text_part() -> None:
    as_string = chat_body(messages=[{"role": "user", "content": "hi there"}])
    as_part = chat_body(messages=[{"role": "user", "content": [{"type": "text", "text": "hi there"}]}])
    assert digest(as_string) == digest(as_part)
    two_parts = chat_body(
        messages=[{"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "there"}]}]
    )
    assert digest(two_parts) != digest(as_string)


def test_bool_is_not_a_number() -> None:
    assert digest(chat_body(logprobs=True)) != digest(chat_body(logprobs=1))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", 0.7),
        ("max_tokens", 33),
        ("stop", ["\n"]),
        ("seed", 7),
        ("n", 2),
        ("logprobs", True),
        ("top_p", 0.5),
        ("response_format", {"type": "json_object"}),
        ("some_backend_extra", 1),
    ],
)
def test_output_affecting_parameter_changes_key(field: str, value: Any) -> None:
    assert digest(chat_body(**{field: value})) != digest(chat_body())


def test_message_text_changes_key() -> None:
    changed = chat_body(messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}])
    assert digest(changed) != digest(chat_body())


def test_whitespace_inside_prompt_matters() -> None:
    base = {"model": "alias", "prompt": "Once upon a time", "temperature": 0}
    trailing = {**base, "prompt": "Once upon a time "}
    assert digest(trailing, kind="completion") != digest(base, kind="completion")
    spaced_chat = chat_body(messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi "}])
    assert digest(spaced_chat) != digest(chat_body())


def test_body_is_not_mutated() -> None:
    body = chat_body(messages=[{"role": "user", "content": [{"type": "text", "text": "x"}]}], stream=True, seed=None)
    before = copy.deepcopy(body)
    cache_key("chat", "llama", body, "t1")
    assert body == before


def _reverse_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _reverse_keys(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reverse_keys(v) for v in value]
    return value


@given(
    fields=st.dictionaries(st.text(max_size=12), json_values, max_size=8),
    data=st.data(),
)
def test_any_key_permutation_gives_same_key(fields: dict[str, Any], data: st.DataObject) -> None:
    body = {"model": "alias", **fields}
    order = data.draw(st.permutations(list(body)))
    permuted = {k: _reverse_keys(body[k]) for k in order}
    assert digest(permuted) == digest(body)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"temperature": 0}, True),
        ({"temperature": 0.0}, True),
        ({"temperature": 0.7, "seed": 42}, True),
        ({"seed": 0}, True),
        ({"temperature": 1.0, "top_k": 1}, True),
        ({"top_k": 1}, True),
        ({}, False),
        ({"temperature": 0.2}, False),
        ({"temperature": None}, False),
        ({"temperature": False}, False),
        ({"seed": None, "temperature": 0.5}, False),
        ({"top_k": 40}, False),
    ],
)
def test_is_deterministic(body: dict[str, Any], expected: bool) -> None:
    assert is_deterministic(body) is expected
