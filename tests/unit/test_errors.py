"""`GatewayError` bodies and SSE events, and the helpers' statuses and codes."""

from __future__ import annotations

import msgspec
import pytest

from gateway.backend import BackendUnavailable
from gateway.errors import (
    GatewayError,
    backend_failed,
    backend_timeout,
    bad_request,
    model_not_found,
    no_healthy_backend,
    unsupported_parameter,
)

from .fakes import assert_error_shape


def test_body_is_openai_error_shape_with_nulls() -> None:
    err = GatewayError(418, "short and stout")
    assert msgspec.json.decode(err.body()) == {
        "error": {"message": "short and stout", "type": "invalid_request_error", "param": None, "code": None}
    }


def test_body_carries_type_param_and_code() -> None:
    err = GatewayError(400, 'bad "x"', type="custom", param="messages[0].content", code="invalid_value")
    assert msgspec.json.decode(err.body()) == {
        "error": {"message": 'bad "x"', "type": "custom", "param": "messages[0].content", "code": "invalid_value"}
    }
    assert str(err) == 'bad "x"'
    assert err.headers == {}


def test_sse_event_is_one_data_event_holding_the_body() -> None:
    err = GatewayError(502, "line1\nline2", type="api_error", code="backend_error")
    event = err.sse_event()
    assert event.startswith(b"data: ")
    assert event.endswith(b"\n\n")
    assert event.count(b"\n") == 2  # a newline in the message is escaped, so the event stays one line
    assert event[len(b"data: "):-2] == err.body()


@pytest.mark.parametrize(
    ("err", "status", "type_", "param", "code"),
    [
        (bad_request("nope", param="n", code="invalid_value"), 400, "invalid_request_error", "n", "invalid_value"),
        (unsupported_parameter("n", "b1", "llamacpp"), 422, "invalid_request_error", "n", "unsupported_parameter"),
        (model_not_found("gpt-9"), 404, "invalid_request_error", "model", "model_not_found"),
        (backend_timeout("b1", "the first token", 0.5), 504, "api_error", None, "backend_timeout"),
        (backend_failed("b1", "bad body"), 502, "api_error", None, "backend_error"),
        (no_healthy_backend([("a", "down")]), 503, "api_error", None, "no_healthy_backend"),
        (BackendUnavailable("b1", "refused"), 503, "api_error", None, "backend_unavailable"),
    ],
)
def test_helpers(err: GatewayError, status: int, type_: str, param: str | None, code: str) -> None:
    assert err.status == status
    error = assert_error_shape(msgspec.json.decode(err.body()))
    assert (error["type"], error["param"], error["code"]) == (type_, param, code)


def test_messages_name_what_failed() -> None:
    assert "'n'" in unsupported_parameter("n", "b1", "llamacpp").message
    assert "b1" in unsupported_parameter("n", "b1", "llamacpp").message
    assert "gpt-9" in model_not_found("gpt-9").message
    assert "0.5s" in backend_timeout("b1", "the first token", 0.5).message
    err = no_healthy_backend([("a", "connection refused"), ("b", "HTTP 500: oops")])
    assert "a: connection refused" in err.message and "b: HTTP 500: oops" in err.message
    assert err.headers == {"retry-after": "1"}
    assert "no candidates" in no_healthy_backend([]).message
    unavailable = BackendUnavailable("b1", "refused", mark_down=False)
    assert (unavailable.reason, unavailable.mark_down) == ("refused", False)
    assert BackendUnavailable("b1", "refused").mark_down is True
