"""Request decoding (`gateway.api.decode`): valid bodies, and a 400 naming the field for bad ones."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from gateway.api.decode import decode_request
from gateway.errors import GatewayError
from gateway.schemas import ChatCompletionRequest, ChatMessage, CompletionRequest, EmbeddingRequest

from .fakes import assert_gateway_error

CHAT: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def encode(value: Any) -> bytes:
    return msgspec.json.encode(value)


def decode_error(kind: str, body: bytes) -> GatewayError:
    with pytest.raises(GatewayError) as info:
        decode_request(kind, body)  # type: ignore[arg-type]
    return info.value


def test_valid_chat_body_keeps_unknown_fields_in_the_forwarded_dict() -> None:
    body = {
        **CHAT,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]},
            {"role": "tool", "content": "42", "tool_call_id": "c1"},
        ],
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0.5,
        "n": 1,
        "max_tokens": 16,
        "stop": ["\n"] * 16,
        "logit_bias": {"50256": -100},
        "tool_choice": "auto",
        "top_k": 40,
    }
    data, request = decode_request("chat", encode(body))
    assert data == body
    assert data["top_k"] == 40
    assert isinstance(request, ChatCompletionRequest)
    assert request.model == "m"
    assert request.stream is True
    assert request.stream_options is not None and request.stream_options.include_usage is True
    assert [m.role for m in request.messages] == ["system", "user", "assistant", "tool"]
    assert isinstance(request.messages[0], ChatMessage)
    assert request.messages[1].content == [{"type": "text", "text": "hi"}]
    assert request.stop == ["\n"] * 16


def test_chat_stop_may_be_a_single_string() -> None:
    _, request = decode_request("chat", encode({**CHAT, "stop": "END"}))
    assert request.stop == "END"


@pytest.mark.parametrize("prompt", ["hi", ["a", "b"], [1, 2, 3], [[1, 2], [3]]])
def test_valid_completion_body(prompt: Any) -> None:
    body = {"model": "m", "prompt": prompt, "max_tokens": 4, "echo": False, "logprobs": 2}
    data, request = decode_request("completion", encode(body))
    assert data == body
    assert isinstance(request, CompletionRequest)
    assert request.prompt == prompt


@pytest.mark.parametrize("value", ["hi", ["a", "b"], [1, 2, 3], [[1, 2], [3]]])
def test_valid_embedding_body(value: Any) -> None:
    body = {"model": "m", "input": value, "encoding_format": "float"}
    data, request = decode_request("embedding", encode(body))
    assert data == body
    assert isinstance(request, EmbeddingRequest)
    assert request.input == value


@pytest.mark.parametrize("kind", ["chat", "completion", "embedding"])
@pytest.mark.parametrize(
    "body",
    [b"", b"{", b'{"model": "m",}', b"not json", b"\xff\xfe\x00", b'{"model": "m"} trailing', b"{'model': 'm'}",
     b'"\x80"', b'{"model": "m\xc3"}'],
    ids=["empty", "unclosed", "trailing-comma", "text", "binary", "trailing-data", "single-quotes",
         "non-utf8-string", "truncated-utf8-in-object"],
)
def test_malformed_json_is_400_invalid_json(kind: str, body: bytes) -> None:
    err = decode_error(kind, body)
    error = assert_gateway_error(err, 400, None)
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_json"


@pytest.mark.parametrize("kind", ["chat", "completion", "embedding"])
@pytest.mark.parametrize("body", [b"[]", b"[1, 2]", b'"text"', b"42", b"null", b"true"])
def test_non_object_body_is_400(kind: str, body: bytes) -> None:
    err = decode_error(kind, body)
    error = assert_gateway_error(err, 400, None)
    assert error["code"] == "invalid_json"
    assert "JSON object" in error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "messages": [{"role": "user", "content": 1}]}, "messages[0].content"),
        ({"model": "m", "messages": [{"role": "user", "content": "a"}, {"role": "robot"}]}, "messages[1].role"),
        ({"model": "m", "messages": "hi"}, "messages"),
        ({"model": 3, "messages": [{"role": "user"}]}, "model"),
        ({**CHAT, "temperature": "hot"}, "temperature"),
        ({**CHAT, "n": 1.5}, "n"),
        ({**CHAT, "max_tokens": "10"}, "max_tokens"),
        ({**CHAT, "stream": "yes"}, "stream"),
        ({**CHAT, "stop": [1]}, "stop[0]"),
        ({**CHAT, "stream_options": {"include_usage": "x"}}, "stream_options.include_usage"),
        ({**CHAT, "logit_bias": {"1": "a lot"}}, "logit_bias[...]"),
        ({**CHAT, "messages": [{"role": "user", "content": [1]}]}, "messages[0].content[0]"),
    ],
)
def test_wrong_type_names_the_field(body: dict[str, Any], param: str) -> None:
    err = decode_error("chat", encode(body))
    error = assert_gateway_error(err, 400, param)
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_value"
    assert param in error["message"]
    assert "`" not in error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m"}, "messages"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({}, "model"),
        ({"model": "m", "messages": [{"content": "a"}]}, "messages[0].role"),
    ],
)
def test_missing_required_field(body: dict[str, Any], param: str) -> None:
    err = decode_error("chat", encode(body))
    error = assert_gateway_error(err, 400, param)
    assert error["code"] == "missing_required_parameter"
    assert f"'{param}'" in error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "m", "messages": []}, "messages"),
        ({**CHAT, "n": 0}, "n"),
        ({**CHAT, "n": -3}, "n"),
        ({**CHAT, "max_tokens": 0}, "max_tokens"),
        ({**CHAT, "max_completion_tokens": 0}, "max_completion_tokens"),
        ({**CHAT, "stop": [str(i) for i in range(17)]}, "stop"),
    ],
)
def test_values_beyond_types_are_checked(body: dict[str, Any], param: str) -> None:
    err = decode_error("chat", encode(body))
    error = assert_gateway_error(err, 400, param)
    assert error["code"] == "invalid_value"


@pytest.mark.parametrize(
    ("kind", "body", "param"),
    [
        ("completion", {"model": "m"}, "prompt"),
        ("completion", {"model": "m", "prompt": "x", "n": 0}, "n"),
        ("completion", {"model": "m", "prompt": "x", "max_tokens": 0}, "max_tokens"),
        ("completion", {"model": "m", "prompt": "x", "stop": ["s"] * 17}, "stop"),
        ("completion", {"model": "m", "prompt": {"a": 1}}, "prompt"),
        ("embedding", {"model": "m"}, "input"),
        ("embedding", {"model": "m", "input": []}, "input"),
        ("embedding", {"model": "m", "input": "x", "encoding_format": "hex"}, "encoding_format"),
    ],
)
def test_completion_and_embedding_errors_name_the_field(kind: str, body: dict[str, Any], param: str) -> None:
    err = decode_error(kind, encode(body))
    assert_gateway_error(err, 400, param)


@pytest.mark.parametrize("body", [b"[" * 100_000, b'{"a":' * 100_000])
def test_deeply_nested_json_is_a_400(body: bytes) -> None:
    err = decode_error("chat", body)
    assert_gateway_error(err, 400, None)
