"""Sends one request to a route's backends in policy order, falling back before the first byte."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from gateway.backend import Backend, BackendUnavailable, EventStream
from gateway.errors import GatewayError, backend_timeout, no_healthy_backend, unsupported_parameter
from gateway.routing.health import HealthState
from gateway.routing.table import Route
from gateway.schemas import RequestKind


@dataclass(slots=True)
class StreamResult:
    """An accepted stream: the backend serving it, its first events, and the rest."""

    backend: Backend
    first: bytes
    rest: AsyncIterator[bytes]
    stream: EventStream


def _unsupported(backend: Backend, kind: RequestKind, body: dict[str, Any]) -> GatewayError | None:
    supported = backend.supported_params(kind)
    for key, value in body.items():
        if value is not None and key not in supported:
            return unsupported_parameter(key, backend.name, backend.plugin)
    try:
        backend.check_params(kind, body)
    except GatewayError as err:
        return err
    return None


class Dispatcher:
    """Tries candidates in order; a server-side failure before the first byte moves on to the next."""

    def __init__(self, health: HealthState) -> None:
        self.health = health

    def _candidates(self, route: Route, kind: RequestKind, body: dict[str, Any]) -> list[Backend]:
        """Backends that can honour every parameter, in policy order; 422 if none can."""
        ordered = route.policy.order(route.backends, self.health)
        if not ordered:
            raise no_healthy_backend(
                [(b.name, self.health.reasons.get(b.name, "unhealthy")) for b in route.backends]
            )
        able: list[Backend] = []
        first_refusal: GatewayError | None = None
        for backend in ordered:
            refusal = _unsupported(backend, kind, body)
            if refusal is None:
                able.append(backend)
            elif first_refusal is None:
                first_refusal = refusal
        if not able:
            assert first_refusal is not None
            raise first_refusal
        return able

    def _give_up(self, route: Route, failures: list[tuple[str, GatewayError]]) -> GatewayError:
        """The error for a request every candidate failed: one failure as itself, several listed."""
        tried = {name for name, _ in failures}
        skipped = [
            (b.name, self.health.reasons.get(b.name, "unhealthy"))
            for b in route.backends
            if not self.health.is_healthy(b.name) and b.name not in tried
        ]
        if len(failures) == 1 and not skipped and failures[0][1].status in (502, 504):
            return failures[0][1]
        error = no_healthy_backend([(name, _reason(err)) for name, err in failures] + skipped)
        waits = [_seconds(err.headers.get("retry-after")) for _, err in failures]
        if any(w is not None for w in waits):
            # The longest wait any backend asked for: sooner, every candidate is still refusing.
            error.headers["retry-after"] = str(max(w for w in waits if w is not None))
        statuses = {err.status for _, err in failures}
        if len(statuses) == 1 and (status := statuses.pop()) in (502, 504):
            error.status = status
            error.code = "backend_error" if status == 502 else "backend_timeout"
        return error

    async def call(self, route: Route, kind: RequestKind, body: dict[str, Any]) -> tuple[Backend, bytes]:
        """A non-streaming request: (backend that served it, OpenAI JSON body)."""
        failures: list[tuple[str, GatewayError]] = []
        for backend in self._candidates(route, kind, body):
            try:
                if kind == "chat":
                    return backend, await backend.chat(body)
                if kind == "completion":
                    return backend, await backend.completion(body)
                return backend, await backend.embeddings(body)
            except GatewayError as err:
                if err.status < 500:
                    raise  # the request's own fault: another backend would refuse it too
                self._note_failure(backend, err)
                failures.append((backend.name, err))
        raise self._give_up(route, failures)

    async def open_stream(self, route: Route, kind: RequestKind, body: dict[str, Any]) -> StreamResult:
        """A streaming request, accepted once its first events have arrived.

        Waiting for the first event before answering the client means a backend that fails
        before producing anything can still be replaced, and its error reported as a status.
        """
        failures: list[tuple[str, GatewayError]] = []
        for backend in self._candidates(route, kind, body):
            stream: EventStream | None = None
            try:
                if kind == "chat":
                    stream = await backend.stream_chat(body)
                else:
                    stream = await backend.stream_completion(body)
                iterator = aiter(stream)
                limit = backend.config.timeouts.first_token_s
                try:
                    async with asyncio.timeout(limit):
                        first = await anext(iterator)
                        # Keep-alive comments are not the first token: wait for real data so
                        # first_token_s, fallback and the TTFT metric all mean what they say.
                        while b"data:" not in first:
                            first += await anext(iterator)
                except TimeoutError as err:
                    raise backend_timeout(backend.name, "the first token", limit) from err
                except StopAsyncIteration as err:
                    raise BackendUnavailable(backend.name, "stream ended before any event") from err
                return StreamResult(backend=backend, first=first, rest=iterator, stream=stream)
            except GatewayError as err:
                if stream is not None:
                    await stream.aclose()
                if err.status < 500:
                    raise
                self._note_failure(backend, err)
                failures.append((backend.name, err))
            except BaseException:
                if stream is not None:
                    await stream.aclose()
                raise
        raise self._give_up(route, failures)

    def _note_failure(self, backend: Backend, err: GatewayError) -> None:
        # A refused connection marks the backend down until the next active check says
        # otherwise, so the following requests do not each pay for the same failure.
        if isinstance(err, BackendUnavailable) and err.mark_down:
            self.health.mark(backend.name, False, err.reason)


def _reason(err: GatewayError) -> str:
    return err.reason if isinstance(err, BackendUnavailable) else err.message


def _seconds(retry_after: str | None) -> int | None:
    """Retry-After in whole seconds, rounded up; None for a missing or HTTP-date value."""
    if not retry_after:
        return None
    try:
        return max(0, math.ceil(float(retry_after)))
    except ValueError:
        return None
