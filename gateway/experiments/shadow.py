"""Mirroring one request to a shadow candidate, off the response path.

The mirror is sent once the user's response is complete, as a task of its own: the user's response
never waits for it, never shares the gateway's event loop with it while it is being served (at one
request at a time, a mirror started alongside it added about 0.5 ms to a 20-chunk stream), and
nothing the candidate does (slow, failing, different) reaches the user. The candidate's latencies
are timed from when the mirror was sent. Its answer is then compared with the one served
(`gateway.experiments.similarity`), and both are recorded as the shadow experiment's arms `served`
and `candidate`: latency, tokens, cost, and for the candidate its agreement with what was served.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from typing import TYPE_CHECKING, Any

from gateway.api.usage import StreamTally, read_usage
from gateway.experiments.arm_totals import timed_observation
from gateway.experiments.runtime import ShadowExperiment
from gateway.experiments.similarity import compare_answers
from gateway.experiments.tap import MAX_CAPTURE_BYTES, ServeTap, answer_of
from gateway.routing.cost import has_price, request_cost_usd
from gateway.routing.interfaces import RequestFeatures
from gateway.schemas import RequestKind

if TYPE_CHECKING:
    from gateway.experiments.arm_stats import ArmStatsStore
    from gateway.routing.dispatcher import Dispatcher
    from gateway.routing.shared import RoutingState

log = logging.getLogger("gateway.experiments")


class CandidateResult:
    """What the candidate answered, timed from the moment the request arrived."""

    __slots__ = ("cost_usd", "finished_at", "first_token_at", "input_tokens", "ok", "output_tokens", "text")

    def __init__(self) -> None:
        self.ok = False
        self.text: str | None = None
        self.first_token_at: float | None = None
        self.finished_at: float | None = None
        self.input_tokens = 0
        self.output_tokens = 0
        self.cost_usd = 0.0


class ShadowRun:
    """One mirrored request: send it to the candidate, wait for the served answer, compare, record."""

    def __init__(self, shadow: ShadowExperiment, kind: RequestKind, body: dict[str, Any], tenant: str, *,
                 stream: bool, dispatcher: Dispatcher, routing: RoutingState, store: ArmStatsStore) -> None:
        self.shadow = shadow
        self.kind = kind
        # The handler's body may be changed on its way to the served backend; the mirror gets its own.
        self.features = RequestFeatures(kind, copy.deepcopy(body), tenant)
        self.stream = stream
        self.started = 0.0  # when the mirror was sent
        self.dispatcher = dispatcher
        self.routing = routing
        self.store = store

    async def run(self, tap: ServeTap) -> None:
        """The whole mirror, once the user's response `tap` is over; never raises (a shadow must not
        be able to hurt anything)."""
        try:
            if tap.status in (0, 499):
                # The user hung up: what was served is unknown, so there is nothing to compare with.
                self.store.count(self.shadow.name, ShadowExperiment.CANDIDATE, "skipped")
                return
            self.started = time.perf_counter()
            candidate = await self._candidate()
            self._record(tap, candidate)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("shadow %s: mirroring failed unexpectedly", self.shadow.name)
        finally:
            self.shadow.release()

    async def _candidate(self) -> CandidateResult:
        result = CandidateResult()
        route = self.shadow.target_route
        try:
            if self.stream:
                await self._stream(route, result)
            else:
                usage: list[Any] = [None]

                def output_tokens(payload: bytes) -> int | None:
                    usage[0] = read_usage(payload)
                    return usage[0].completion_tokens if usage[0] is not None else None

                served = await self.dispatcher.call(route, self.kind, self.features, policy=route.policy,
                                                    output_tokens=output_tokens)
                result.finished_at = time.perf_counter()
                result.ok = True
                if usage[0] is not None:
                    result.input_tokens, result.output_tokens = usage[0].prompt_tokens, usage[0].completion_tokens
                if len(served.body) <= MAX_CAPTURE_BYTES:
                    result.text = answer_of(self.kind, served.body, stream=False)
                result.cost_usd = self._cost(served.backend, result)
        except Exception as err:  # the candidate's failure is a result, not an error of the gateway
            result.ok = False
            result.finished_at = time.perf_counter()
            log.debug("shadow %s: candidate failed: %s", self.shadow.name, err)
        return result

    async def _stream(self, route: Any, result: CandidateResult) -> None:
        opened = await self.dispatcher.open_stream(route, self.kind, self.features, policy=route.policy)
        tally = StreamTally(completions=self.kind == "completion")
        kept: list[bytes] = []
        size = 0
        ok: bool | None = None

        def take(batch: bytes) -> None:
            nonlocal size
            if tally.feed(batch) and result.first_token_at is None:
                result.first_token_at = time.perf_counter()
            size += len(batch)
            if size <= MAX_CAPTURE_BYTES:
                kept.append(batch)

        try:
            take(opened.first)
            async for batch in opened.rest:
                take(batch)
            ok = True
        except Exception:
            ok = False
            raise
        finally:
            opened.finish(ok=ok, output_tokens=tally.output_tokens or None)
            await opened.stream.aclose()
            result.finished_at = time.perf_counter()
        result.output_tokens = tally.output_tokens
        result.input_tokens = tally.usage.prompt_tokens if tally.usage is not None else self.features.input_tokens
        text = answer_of(self.kind, b"".join(kept), stream=True) if size <= MAX_CAPTURE_BYTES else None
        # An SSE error event inside a 200 stream is a failed answer.
        result.ok = text is not None or size > MAX_CAPTURE_BYTES
        result.text = text
        result.cost_usd = self._cost(opened.backend, result)

    def _cost(self, backend: Any, result: CandidateResult) -> float:
        if not has_price(backend.config):
            return 0.0
        return request_cost_usd(backend.config, self.routing.stats.get(backend.name), result.input_tokens,
                                result.output_tokens)

    def _record(self, tap: ServeTap, candidate: CandidateResult) -> None:
        name = self.shadow.name
        served_text = tap.answer(self.kind)
        exact = similarity = None
        if candidate.ok and served_text is not None and candidate.text is not None:
            agreement = compare_answers(served_text, candidate.text)
            exact, similarity = agreement.exact, agreement.similarity
        if tap.dispatched:
            self.store.record(tap.observation(name, ShadowExperiment.SERVED))
        else:
            self.store.count(name, ShadowExperiment.SERVED, "cache_hits")
        self.store.record(timed_observation(
            name, ShadowExperiment.CANDIDATE, candidate.ok, started=self.started,
            first_token_at=candidate.first_token_at, finished_at=candidate.finished_at or time.perf_counter(),
            input_tokens=candidate.input_tokens, output_tokens=candidate.output_tokens, cost_usd=candidate.cost_usd,
            exact=exact, similarity=similarity,
        ))

