"""The error a client gets when no backend could serve its request, and its Retry-After.

One failure is reported as itself (a 502 or 504 with the backend's own message); several are
listed, each backend once with why it failed or was left out, as a 503 whose Retry-After is
the longest wait a backend asked for, else the time until the first open breaker lets a
probe through, else one second.
"""

from __future__ import annotations

import math

from gateway.backend import BackendUnavailable
from gateway.errors import GatewayError, no_healthy_backend
from gateway.routing.interfaces import Breakers


def retry_after_seconds(retry_after: str | None) -> int | None:
    """Retry-After in whole seconds, rounded up; None for a missing or HTTP-date value."""
    if not retry_after:
        return None
    try:
        return max(0, math.ceil(float(retry_after)))
    except ValueError:
        return None


def _reason(err: GatewayError) -> str:
    return err.reason if isinstance(err, BackendUnavailable) else err.message


def none_available(skipped: list[tuple[str, str]], breakers: Breakers, now: float) -> GatewayError:
    """No candidate could be tried: each one left out, and when to come back."""
    error = no_healthy_backend(skipped)
    waits = [breakers.snapshot(name).open_until - now for name, _ in skipped]
    soonest = min((w for w in waits if w > 0), default=1.0)
    error.headers["retry-after"] = str(max(1, math.ceil(soonest)))
    return error


def give_up(
    failures: list[tuple[str, GatewayError]],
    skipped: list[tuple[str, str]],
    waiting: dict[str, float],
    breakers: Breakers,
    now: float,
) -> GatewayError:
    """Every candidate failed, was left out, or asked (by a 429) for more patience than the
    route has (`waiting`: backend -> seconds still to wait)."""
    failures = list(failures)
    tried = {name for name, _ in failures}
    for name, wait in waiting.items():
        if name not in tried:
            failures.append((name, GatewayError(
                503, f"asked to be retried in {wait:.1f}s (HTTP 429)", type="api_error",
                code="backend_unavailable", headers={"retry-after": str(math.ceil(wait))},
            )))
    if not failures:
        return none_available(skipped, breakers, now)
    tried = {name for name, _ in failures}
    skipped = [(name, why) for name, why in skipped if name not in tried]
    distinct: dict[str, GatewayError] = {}
    for name, err in failures:
        distinct.setdefault(name, err)  # a retried backend is listed once, with its first error
    if len(distinct) == 1 and not skipped and failures[-1][1].status in (502, 504):
        return failures[-1][1]
    error = no_healthy_backend([(name, _reason(err)) for name, err in distinct.items()] + skipped)
    waits = [retry_after_seconds(err.headers.get("retry-after")) for _, err in failures]
    if any(w is not None for w in waits):
        # The longest wait any backend asked for: sooner, every candidate is still refusing.
        error.headers["retry-after"] = str(max(w for w in waits if w is not None))
    statuses = {err.status for _, err in failures}
    if len(statuses) == 1 and (status := statuses.pop()) in (502, 504):
        error.status = status
        error.code = "backend_error" if status == 502 else "backend_timeout"
    return error
