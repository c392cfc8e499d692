"""Fuzzing `decode_request`: whatever the bytes, it returns or raises a 400 `GatewayError`."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.api.decode import decode_request
from gateway.errors import GatewayError
from gateway.schemas import REQUEST_TYPES

from .fakes import assert_error_shape
from .strategies import mutated_bodies, request_bytes

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KINDS = [
    "chat",
    "completion",
    "embedding",
]


def check_decode(kind: Any, body: bytes) -> tuple[dict[str, Any], Any] | GatewayError:
    try:
        data, request = decode_request(kind, body)
    except GatewayError as err:
        assert err.status == 400, err
        assert_error_shape(msgspec.json.decode(err.body()))
        return err
    assert isinstance(data, dict)
    assert isinstance(request, REQUEST_TYPES[kind])
    return data, request


@pytest.mark.parametrize("kind", KINDS)
@FUZZ
@given(data=st.data())
def test_any_bytes_decode_or_400(kind: str, data: st.DataObject) -> None:
    body = data.draw(request_bytes(kind))
    check_decode(kind, body)


@pytest.mark.parametrize("kind", KINDS)
@FUZZ
@given(data=st.data())
def test_a_broken_field_is_the_one_named(kind: str, data: st.DataObject) -> None:
    field, body = data.draw(mutated_bodies(kind))
    result = check_decode(kind, msgspec.json.encode(body))
    if isinstance(result, GatewayError):
        # Everything else in the body is valid, so the error can only be about the changed field.
        assert result.param is not None, result
        assert result.param == field or result.param.startswith((f"{field}[", f"{field}.")), (field, result)
