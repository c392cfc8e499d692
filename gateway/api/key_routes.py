"""/admin/keys: list, create and revoke API keys kept in Redis (`auth.store: redis`).

A new key is shown once, in the answer to its POST; Redis and every listing keep only its digest's
record (name, tenant, models, revoked). Keys from the config file are listed too, marked
`source: config`: they change by editing the file and reloading.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, delete, get, post

from gateway.auth.key_store import KeyExists
from gateway.errors import GatewayError
from gateway.ops.live_state import serving_state

_MAX_NAME = 100


class NewKey(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str
    tenant: str | None = None
    models: list[str] = msgspec.field(default_factory=lambda: ["*"])


def _error(err: GatewayError) -> Response[bytes]:
    return Response(err.body(), status_code=err.status, media_type="application/json", headers=err.headers)


def _json(body: Any, status: int = 200) -> Response[bytes]:
    return Response(msgspec.json.encode(body), status_code=status, media_type="application/json")


_NO_STORE = GatewayError(409, "API keys are kept in the config file here: add or revoke them there and reload "
                              "(or set auth.store: redis)", code="key_store_unavailable")


@get("/admin/keys", sync_to_thread=False)
def list_keys(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Every key the gateway accepts or has revoked: name, tenant, models, revoked, source."""
    return _json({"keys": serving_state(request).auth.describe()})


@post("/admin/keys", status_code=201)
async def create_key(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Create a key in Redis; the answer is the only place the key itself ever appears."""
    state = serving_state(request)
    if state.key_sync is None:
        return _error(_NO_STORE)
    try:
        new = msgspec.json.decode(await request.body(), type=NewKey)
    except msgspec.DecodeError as err:
        return _error(GatewayError(400, f"invalid key request: {err}", code="invalid_request"))
    name = new.name.strip()
    if not name or len(name) > _MAX_NAME or not name.isprintable():
        return _error(GatewayError(400, f"name: 1 to {_MAX_NAME} printable characters", param="name",
                                   code="invalid_value"))
    if not new.models or not all(isinstance(m, str) and m for m in new.models):
        return _error(GatewayError(400, "models: a non-empty list of route models (globs)", param="models",
                                   code="invalid_value"))
    exists = _error(GatewayError(409, f"a key named '{name}' exists already", param="name", code="key_exists"))
    if name in state.auth.names():
        return exists
    try:
        key, record = await state.key_sync.store.add(name, new.tenant or name, new.models)
    except KeyExists:
        return exists
    await state.key_sync.refresh()  # usable on this replica at once; the others within auth.refresh_s
    return _json({"key": key, "name": record.name, "tenant": record.tenant, "models": record.models}, 201)


@delete("/admin/keys/{name:str}", status_code=200)
async def revoke_key(request: Request[Any, Any, Any], name: str) -> Response[bytes]:
    """Revoke a key kept in Redis, by name: refused here at once, on the other replicas within refresh_s."""
    state = serving_state(request)
    if state.key_sync is None:
        return _error(_NO_STORE)
    if not await state.key_sync.store.revoke(name):
        configured = name in state.auth.configured_names()
        message = (f"key '{name}' is in the config file: set revoked: true there and reload" if configured
                   else f"no key named '{name}' in Redis")
        return _error(GatewayError(404, message, code="key_not_found"))
    await state.key_sync.refresh()
    return _json({"revoked": name, "refresh_s": state.config.auth.refresh_s if state.config.auth else None})


ROUTES = [list_keys, create_key, revoke_key]
