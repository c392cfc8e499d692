"""Fuzzing the real ASGI app: no body yields a 500 or a traceback, every error has OpenAI's shape."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .conftest import GatewayUnderTest
from .fakes import assert_error_shape
from .strategies import request_bytes

PATHS = [
    ("/v1/chat/completions", "chat"),
    ("/v1/completions", "completion"),
    ("/v1/embeddings", "embedding"),
]


@pytest.mark.parametrize(("path", "kind"), PATHS)
@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
async def test_fuzzed_bodies_never_500(gateway: GatewayUnderTest, path: str, kind: str, data: st.DataObject) -> None:
    body = data.draw(request_bytes(kind), label="body")
    response = await gateway.client.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code != 500, response.text
    assert b"Traceback" not in response.content
    if response.status_code == 200:
        if response.headers["content-type"].startswith("text/event-stream"):
            assert response.content.endswith(b"data: [DONE]\n\n")
        else:
            assert msgspec.json.decode(response.content)["object"] == "chat.completion"
        assert response.headers["x-gateway-backend"] == "f1"
        return
    assert response.status_code in (400, 404, 413, 422), response.text
    assert response.headers["content-type"].startswith("application/json")
    assert_error_shape(msgspec.json.decode(response.content))
