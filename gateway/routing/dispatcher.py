"""Sends one request to a route's backends: policy order, breakers, limits, retries and fallbacks.

The order of work for each request:
1. candidates that can honour every parameter (422 naming it when none can);
2. of those, the ones available now: healthy by the active check, admitted by their circuit
   breaker, under their concurrency limit (503 listing why each was left out when none is);
3. the policy ranks them; the first is tried, then the others as fallbacks. After a full pass
   fails, passes repeat after a jittered exponential backoff, up to `retries.attempts` tries
   in all. A backend's 429 Retry-After is honoured (it is not tried again sooner), and only
   failures before the first byte reaches the client are ever retried.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from gateway.backend import Backend, BackendUnavailable, EventStream
from gateway.errors import GatewayError, backend_timeout, unsupported_parameter
from gateway.routing.admission import BackendSlots
from gateway.routing.give_up import give_up, none_available, retry_after_seconds
from gateway.routing.health import HealthState
from gateway.routing.interfaces import Policy, RequestFeatures, RouteChoice
from gateway.routing.policies import make_policy
from gateway.routing.table import Route
from gateway.schemas import RequestKind

if TYPE_CHECKING:
    from gateway.config import RetryConfig, StatsConfig
    from gateway.routing.shared import RoutingState
    from gateway.tracing import RequestTracer

T = TypeVar("T")
Timer = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
# Called once per attempt that failed before its first byte: (backend name, what happened).
AttemptObserver = Callable[[str, str], None]


@dataclass(slots=True)
class Served:
    """A non-streaming answer: the backend that served it, its OpenAI JSON body and why it was chosen."""

    backend: Backend
    body: bytes
    reason: str


@dataclass(slots=True)
class StreamResult:
    """An accepted stream: the backend serving it, its first events, and the rest.

    `finish` must be called once when the stream is over, whatever happened: it closes the
    backend's in-flight count and records the attempt in the live statistics.
    """

    backend: Backend
    first: bytes
    rest: AsyncIterator[bytes]
    stream: EventStream
    reason: str
    sent_at: float  # timer value when the request went to the backend
    _done: Callable[[bool | None, int | None, float | None], None] = field(repr=False)
    _finished: bool = False

    def finish(self, *, ok: bool | None, output_tokens: int | None = None, ttft_s: float | None = None) -> None:
        """Record how the stream ended: ok, failed mid-way (False) or cut by the client (None)."""
        if not self._finished:
            self._finished = True
            self._done(ok, output_tokens, ttft_s)


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


def _throttled(err: GatewayError) -> bool:
    return isinstance(err, BackendUnavailable) and err.throttled


class Dispatcher:
    """Tries a route's candidates in policy order and keeps the books on every attempt."""

    def __init__(
        self,
        health: HealthState,
        routing: RoutingState,
        stats_config: StatsConfig,
        *,
        sleep: Sleep = asyncio.sleep,
        rng: random.Random | None = None,
        timer: Timer = time.perf_counter,
        clock: Callable[[], float] = time.time,
        on_attempt_failed: AttemptObserver | None = None,
        slots: BackendSlots | None = None,
    ) -> None:
        """`slots`: the concurrency counts and wait queues to use; a reload passes its predecessor's, so
        requests still running on the old config count against the new one's limits (no 2x in a drain)."""
        self.health = health
        self.stats = routing.stats
        self.breakers = routing.breakers
        self._stats_config = stats_config
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._timer = timer
        self._clock = clock  # the breakers' clock, to say how long one stays open
        self._on_attempt_failed = on_attempt_failed
        # This process's requests open per backend (concurrency limits), and those waiting for a slot.
        self.slots = slots if slots is not None else BackendSlots()
        self._active = self.slots.active
        self._throttled_until: dict[str, float] = {}  # timer value before which a 429'd backend is not retried
        self._policies: dict[tuple[str, str], Policy] = {}
        self.tracer: RequestTracer | None = None  # set by the gateway's state when tracing is on

    def elapsed_since(self, sent_at: float) -> float:
        """Seconds since `sent_at`, a value of this dispatcher's timer (StreamResult.sent_at)."""
        return self._timer() - sent_at

    # -- choosing ---------------------------------------------------------------------------

    def policy_for(self, route: Route, name: str | None) -> Policy:
        """The route's own policy, or a per-request one (the `x-gateway-policy` header)."""
        if name is None or name == route.policy.name:
            return route.policy
        key = (route.model, name)
        policy = self._policies.get(key)
        if policy is None:
            policy = self._policies[key] = make_policy(name, route.config, self._stats_config, rng=self._rng)
        return policy

    def _able(self, route: Route, kind: RequestKind, body: dict[str, Any]) -> list[Backend]:
        """Backends that can honour every parameter, in config order; 422 if none can."""
        able: list[Backend] = []
        first_refusal: GatewayError | None = None
        for backend in route.backends:
            refusal = _unsupported(backend, kind, body)
            if refusal is None:
                able.append(backend)
            elif first_refusal is None:
                first_refusal = refusal
        if not able:
            assert first_refusal is not None
            raise first_refusal
        return able

    def _unavailable_reason(self, backend: Backend) -> str | None:
        """Why `backend` cannot take a request right now, or None when it can."""
        name = backend.name
        if not self.health.is_healthy(name):
            return self.health.reasons.get(name, "unhealthy")
        if self.breakers.admission(name) == "no":
            snapshot = self.breakers.snapshot(name)
            left = max(0.0, snapshot.open_until - self._clock())
            if snapshot.state == "open":
                return f"circuit open for {left:.1f}s more after {snapshot.failures} failure(s)"
            return "circuit half-open, its probe request is out"
        limit = backend.config.max_concurrency
        if limit is not None and self._active.get(name, 0) >= limit:
            return f"at its concurrency limit ({limit})"
        return None

    def plan(
        self,
        route: Route,
        kind: RequestKind,
        features: RequestFeatures,
        policy: Policy,
        exclude: Collection[str] = (),
    ) -> tuple[list[RouteChoice], list[tuple[str, str]]]:
        """(ranked available candidates, [(backend, why it was left out)])."""
        available: list[Backend] = []
        skipped: list[tuple[str, str]] = []
        for backend in self._able(route, kind, features.body):
            if backend.name in exclude:
                continue
            why = self._unavailable_reason(backend)
            if why is None:
                available.append(backend)
            else:
                skipped.append((backend.name, why))
        if not available:
            raise self._none_available(skipped)
        return policy.rank(available, features, self.stats), skipped

    async def _plan_or_queue(
        self,
        route: Route,
        kind: RequestKind,
        features: RequestFeatures,
        policy: Policy,
        exclude: Collection[str],
    ) -> tuple[list[RouteChoice], list[tuple[str, str]]]:
        """`plan`, except that when no candidate is available and those at their concurrency limit have
        wait queues (`max_queue`), the request waits there for a slot (gateway/routing/admission.py)."""
        try:
            return self.plan(route, kind, features, policy, exclude)
        except GatewayError as err:
            if err.code != "no_healthy_backend":
                raise
            full = [b for b in self._able(route, kind, features.body) if b.name not in exclude and self._only_full(b)]
            if not full:
                raise
            if not any(b.config.max_queue > 0 for b in full):
                self.slots.shed(full)  # no queue to wait in: shed as it always was, but counted
                raise
            backend = await self.slots.wait(full, self.stats)
        name = backend.name
        # The slot is counted for this request already, and `_attempt` counts it again when it sends:
        # give it back for that moment (nothing else runs in between), and should the request go
        # elsewhere after all, hand it on once this step is over.
        self._active[name] -= 1
        asyncio.get_running_loop().call_soon(self.slots.kick, name, backend.config.max_concurrency or 1)
        skipped = [(b.name, why) for b in route.backends
                   if b.name != name and b.name not in exclude and (why := self._unavailable_reason(b)) is not None]
        return policy.rank([backend], features, self.stats), skipped

    def _only_full(self, backend: Backend) -> bool:
        """At its concurrency limit and otherwise able to serve (healthy, breaker letting requests in)."""
        limit = backend.config.max_concurrency
        name = backend.name
        return (limit is not None and self._active.get(name, 0) >= limit and self.health.is_healthy(name)
                and self.breakers.admission(name) != "no")

    # -- trying -----------------------------------------------------------------------------

    def _backoff(self, retries: RetryConfig, round_number: int) -> float:
        """Full jitter: uniform up to base x 2^(round - 1), capped."""
        ceiling = min(retries.max_backoff_s, retries.backoff_s * 2 ** max(0, round_number - 1))
        return self._rng.uniform(0.0, ceiling)

    async def _attempt(
        self,
        route: Route,
        kind: RequestKind,
        features: RequestFeatures,
        policy: Policy,
        try_one: Callable[[Backend, float], Awaitable[T]],
        exclude: Collection[str] = (),
        passes_over: Callable[[Backend], bool] | None = None,
    ) -> tuple[T, RouteChoice, float]:
        """Run `try_one` on candidates until one succeeds: (its result, its choice, when it was sent).

        A backend `passes_over` is true for is not tried and not counted against anything.
        """
        choices, skipped = await self._plan_or_queue(route, kind, features, policy, exclude)
        retries = route.config.retries
        failures: list[tuple[str, GatewayError]] = []
        waiting: dict[str, float] = {}  # backends passed over because their 429 asked for a longer wait
        timed_out: set[str] = set()
        attempts, round_number = 0, 0
        while attempts < retries.attempts:
            progressed = deferred = False
            for choice in choices:
                if attempts >= retries.attempts:
                    break
                backend = choice.backend
                name = backend.name
                if round_number > 0 and (name in timed_out or self._unavailable_reason(backend) is not None):
                    continue  # a backend that timed out already cost the client its time limit once
                if passes_over is not None and passes_over(backend):
                    continue
                wait = self._throttled_until.get(name, 0.0) - self._timer()
                if wait > retries.max_retry_after_s:
                    waiting[name] = wait  # it asked for more patience than this request has
                    continue
                if round_number == 0 and wait > 0:
                    deferred = True  # the others first; its wait is slept in the next round
                    continue
                if round_number > 0:
                    await self._sleep(max(wait, self._backoff(retries, round_number)))
                probing = self.breakers.admission(name) == "probe"
                if probing and not await self.breakers.acquire_probe(name):
                    continue  # another request (or replica) is probing it
                attempts += 1
                progressed = True
                self._active[name] = self._active.get(name, 0) + 1
                self.stats.started(name)
                sent_at = self._timer()
                try:
                    call = try_one(backend, sent_at)
                    # One span per attempt when tracing is on (gateway/tracing.py); a None check when off.
                    result = await (call if self.tracer is None else
                                    self.tracer.attempt(call, backend, kind, attempts, failures))
                except GatewayError as err:
                    if err.status < 500 and not _throttled(err):
                        self.breakers.record(name, ok=True)  # it answered: alive, whatever the request's fault
                        self._release(name, None, sent_at, None, None)
                        raise  # the request's own fault: another backend would refuse it too
                    if probing and _throttled(err):
                        self.breakers.release_probe(name)  # busy, not broken: no verdict on the probe
                    self._failed(name, err, sent_at)
                    failures.append((name, err))
                    if err.status == 504:
                        timed_out.add(name)
                    continue
                except BaseException:
                    if probing:
                        self.breakers.release_probe(name)
                    self._release(name, None, sent_at, None, None)  # the client went away
                    raise
                if failures:
                    tried = ", ".join(dict.fromkeys(n for n, _ in failures))
                    choice = RouteChoice(backend, f"{choice.reason}; fallback after {tried} failed")
                return result, choice, sent_at
            if not progressed and not deferred:
                break
            round_number += 1
        raise self._give_up(failures, skipped, waiting)

    def _failed(self, name: str, err: GatewayError, sent_at: float) -> None:
        """Book a failed attempt: breaker, statistics, and a 429's Retry-After."""
        throttled = _throttled(err)
        hard = isinstance(err, BackendUnavailable) and err.mark_down
        if throttled:
            # Busy is not broken: the breaker stays closed, the backend just waits its turn.
            seconds = retry_after_seconds(err.headers.get("retry-after"))
            self._throttled_until[name] = self._timer() + (seconds if seconds is not None else 1.0)
            self._release(name, None, sent_at, None, None)
        else:
            self.breakers.record(name, ok=False, hard=hard)
            self._release(name, False, sent_at, None, None)
        if self._on_attempt_failed is not None:
            self._on_attempt_failed(name, "throttled" if throttled else "refused" if hard else f"http_{err.status}")

    def _release(
        self, name: str, ok: bool | None, sent_at: float, output_tokens: int | None, ttft_s: float | None
    ) -> None:
        self.slots.release(name)  # to the first request waiting for a slot on it, if any
        self.stats.finished(name, ok=ok, e2e_s=self._timer() - sent_at, ttft_s=ttft_s, output_tokens=output_tokens)

    def _none_available(self, skipped: list[tuple[str, str]]) -> GatewayError:
        return none_available(skipped, self.breakers, self._clock())

    def _give_up(
        self, failures: list[tuple[str, GatewayError]], skipped: list[tuple[str, str]], waiting: dict[str, float]
    ) -> GatewayError:
        return give_up(failures, skipped, waiting, self.breakers, self._clock())

    # -- the two kinds of request -----------------------------------------------------------

    async def call(
        self,
        route: Route,
        kind: RequestKind,
        features: RequestFeatures,
        *,
        policy: Policy | None = None,
        output_tokens: Callable[[bytes], int | None] = lambda _body: None,
    ) -> Served:
        """A non-streaming request. `output_tokens` reads the answer's usage for the statistics."""
        body = features.body

        async def try_one(backend: Backend, _sent_at: float) -> bytes:
            if kind == "chat":
                return await backend.chat(body)
            if kind == "completion":
                return await backend.completion(body)
            return await backend.embeddings(body)

        payload, choice, sent_at = await self._attempt(route, kind, features, policy or route.policy, try_one)
        name = choice.backend.name
        self.breakers.record(name, ok=True)
        self._release(name, True, sent_at, output_tokens(payload), None)
        return Served(backend=choice.backend, body=payload, reason=choice.reason)

    async def open_stream(
        self,
        route: Route,
        kind: RequestKind,
        features: RequestFeatures,
        *,
        policy: Policy | None = None,
        exclude: Collection[str] = (),
        body_for: Callable[[Backend], dict[str, Any] | None] | None = None,
    ) -> StreamResult:
        """A streaming request, accepted once its first events have arrived.

        Waiting for the first event before answering the client means a backend that fails
        before producing anything can still be replaced, and its error reported as a status.
        `body_for` gives a backend-specific body (a resumed stream's continuation); a backend
        it returns None for is passed over. `exclude` names backends not to use.
        """

        bodies: dict[str, dict[str, Any] | None] = {}

        def passes_over(backend: Backend) -> bool:
            """A backend that cannot take this backend-specific body (a continuation it cannot do)."""
            if body_for is None:
                return False
            if backend.name not in bodies:
                body = body_for(backend)
                bodies[backend.name] = body if body is None or _unsupported(backend, kind, body) is None else None
            return bodies[backend.name] is None

        async def try_one(backend: Backend, _sent_at: float) -> tuple[bytes, AsyncIterator[bytes], EventStream]:
            body = features.body if body_for is None else bodies[backend.name]
            assert body is not None
            stream: EventStream | None = None
            try:
                stream = await (backend.stream_chat(body) if kind == "chat" else backend.stream_completion(body))
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
                return first, iterator, stream
            except BaseException:
                if stream is not None:
                    await stream.aclose()
                raise

        (first, rest, stream), choice, sent_at = await self._attempt(
            route, kind, features, policy or route.policy, try_one, exclude, passes_over
        )
        name = choice.backend.name
        self.breakers.record(name, ok=True)

        def done(ok: bool | None, output_tokens: int | None, ttft_s: float | None) -> None:
            if ok is False:
                self.breakers.record(name, ok=False)
            self._release(name, ok, sent_at, output_tokens, ttft_s)

        return StreamResult(backend=choice.backend, first=first, rest=rest, stream=stream, reason=choice.reason,
                            sent_at=sent_at, _done=done)
