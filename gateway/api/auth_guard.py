"""The key check for the Litestar-handled routes (the OpenAI routes check keys in their own handler).

With `auth` configured: /admin/* needs an admin key; /v1/models and /v1/feedback an API key (or an
admin key); /health, /ready and /metrics stay open for probes and scrapers.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response

from gateway.errors import GatewayError
from gateway.ops.live_state import serving_state

_OPEN = frozenset({"/health", "/ready", "/metrics"})


def _error(err: GatewayError) -> Response[bytes]:
    return Response(err.body(), status_code=err.status, media_type="application/json")


async def auth_guard(request: Request[Any, Any, Any]) -> Response[bytes] | None:
    """A 401/403 response for a caller without the right key, else None (the handler runs)."""
    keys = serving_state(request).auth
    path = request.url.path
    if not keys.enabled or path in _OPEN:
        return None
    header = request.headers.get("authorization")
    authorization = header.encode("latin-1") if header is not None else None
    try:
        if path.startswith("/admin"):
            keys.authenticate_admin(authorization)
        else:
            try:
                request.state.api_key = keys.authenticate(authorization)
            except GatewayError:
                keys.authenticate_admin(authorization)  # an operator may use the admin key here too
                request.state.api_key = None
    except GatewayError as err:
        return _error(err)
    return None
