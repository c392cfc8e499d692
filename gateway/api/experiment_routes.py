"""Experiment routes: user feedback joined to the serving arm, and the reports.

`POST /v1/feedback {request_id, score | label}`: `request_id` is the response's `x-request-id`
(set it yourself on the request to know it up front). Feedback is accepted once per request, only
from the caller that made it (the same API key), for `experiments.feedback_ttl_s`.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, Response, delete, get, post

from gateway.api.tenant import cache_tenant
from gateway.errors import GatewayError
from gateway.experiments.service import parse_feedback
from gateway.ops.live_state import serving_state

_MAX_FEEDBACK_BYTES = 16 * 1024


def _error(err: GatewayError) -> Response[bytes]:
    headers = {"retry-after": "1"} if err.status == 503 else None
    return Response(err.body(), status_code=err.status, media_type="application/json", headers=headers)


def _json(body: Any) -> Response[bytes]:
    return Response(msgspec.json.encode(body), media_type="application/json")


@post("/v1/feedback", status_code=200)
async def feedback(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Record a score and/or a label for an earlier request, on the experiment arm that served it."""
    raw = await request.body()
    try:
        if len(raw) > _MAX_FEEDBACK_BYTES:
            raise GatewayError(413, f"feedback bodies are at most {_MAX_FEEDBACK_BYTES} bytes",
                               code="request_too_large")
        try:
            data = msgspec.json.decode(raw)
        except (msgspec.DecodeError, UnicodeDecodeError) as err:
            raise GatewayError(400, f"the body is not valid JSON: {err}", code="invalid_json") from err
        request_id, score, label = parse_feedback(data)
        authorization = request.headers.get("authorization")
        tenant = cache_tenant(authorization.encode("latin-1") if authorization is not None else None)
        experiment, arm = await serving_state(request).experiments.feedback(request_id, tenant, score, label)
    except GatewayError as err:
        return _error(err)
    return _json({"object": "feedback", "request_id": request_id, "experiment": experiment, "arm": arm,
                  "score": score, "label": label})


@get("/admin/experiments", sync_to_thread=False)
def list_experiments(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Every configured experiment and shadow: name, kind, route, whether it is assigning."""
    return _json({"experiments": serving_state(request).experiments.names()})


@get("/admin/experiments/{name:str}")
async def experiment_report(request: Request[Any, Any, Any], name: str) -> Response[bytes]:
    """One experiment's report: per-arm metrics with intervals, comparisons with control, SRM, history."""
    try:
        return _json(await serving_state(request).experiments.report(name))
    except GatewayError as err:
        return _error(err)


@delete("/admin/experiments/{name:str}", status_code=200)
async def experiment_reset(request: Request[Any, Any, Any], name: str) -> Response[bytes]:
    """Forget an experiment's numbers, history and stop: start it over (do it before traffic, not during)."""
    try:
        await serving_state(request).experiments.reset(name)
    except GatewayError as err:
        return _error(err)
    return _json({"name": name, "reset": True})


ROUTES = [feedback, list_experiments, experiment_report, experiment_reset]
