"""One cacheable request: answered from the store, by following an identical request in flight, or by
the backend while its answer is recorded for later and for those following it.

With the in-process store the order is: the store (a hit), then the table of flights in this
process (follow the identical request already being answered). With Redis, the table of flights
comes first (identical requests here never reach Redis), and the first of its kind here makes one
Redis call that returns the stored answer, or the lead, or word that another replica answers it
(follow that replica). Only when nobody is answering it does the request go to a backend, as the
leader. A follower whose leader fails before it sent anything starts over (one of the
followers becomes the new leader); one that already streamed part of an answer ends it with an
error event, as the leader's own client sees.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from gateway.api.asgi_io import Send, send_bytes
from gateway.api.cache_send import CacheSend
from gateway.api.disconnect import DisconnectWatch
from gateway.api.model_rename import ModelRenamer
from gateway.api.request_record import RequestRecord
from gateway.api.stream_relay import SSE_HEADERS
from gateway.cache.entry import CacheEntry
from gateway.cache.flight import Flight, FlightFailed
from gateway.cache.plan import CachePlan
from gateway.cache.record import StreamRecorder
from gateway.cache.remote_flight import RemoteLead
from gateway.cache.replay import StreamReplay, pacing_delays, replay_body, replay_stream
from gateway.cache.service import ResponseCache
from gateway.cache.settings import RouteCacheConfig
from gateway.errors import GatewayError

log = logging.getLogger("gateway.cache")

Headers = list[tuple[bytes, bytes]]
# Sends the request to a backend through the given `send`, with these extra response headers;
# returns the backend's name. Raises `GatewayError` when it fails before the response started.
ServeBackend = Callable[[Send, Headers], Awaitable[str]]

CACHE_LABEL = "cache"  # the `backend` label of requests the cache answered
_MAX_ROUNDS = 3  # lookups before a request whose leaders keep failing goes to the backend on its own
_JSON = (b"content-type", b"application/json")
_END = {"type": "http.response.body", "body": b"", "more_body": False}
_background: set[asyncio.Task[None]] = set()  # strong references: a bare task may be collected mid-run


def _keep(task: asyncio.Task[None]) -> None:
    _background.add(task)
    task.add_done_callback(_background.discard)


class CachedRequest:
    """Serves one request whose route caches it (a `CachePlan` exists)."""

    def __init__(
        self,
        cache: ResponseCache,
        plan: CachePlan,
        route_config: RouteCacheConfig,
        *,
        route_name: str,
        kind: str,
        stream: bool,
        include_usage: bool,
        client_model: str,
        request_id: bytes,
        watch: DisconnectWatch,
        estimated_prompt_tokens: int,
        record: RequestRecord,
    ) -> None:
        self.cache = cache
        self.plan = plan
        self.route_config = route_config
        self.route_name = route_name
        self.kind = kind
        self.stream = stream
        self.include_usage = include_usage
        self.rename = ModelRenamer(client_model)
        self.request_id = request_id
        self.watch = watch
        self.estimated_prompt_tokens = estimated_prompt_tokens
        self.record = record

    def _count(self, result: str) -> None:
        self.cache.count(self.route_name, result)
        self.record.cache = result

    async def serve(self, send: Send, serve_backend: ServeBackend) -> str:
        """Answer the request; the `backend` label for its metrics."""
        cache, plan = self.cache, self.plan
        if not plan.read:
            # `Cache-Control: no-cache` asks for a fresh answer: neither the store nor an identical
            # request in flight gives it one. The answer is still recorded (unless no-store).
            self._count("miss")
            return await self._produce(send, Flight(plan.digest), None, serve_backend)
        for _ in range(_MAX_ROUNDS):
            if cache.remote is None:
                # In-process store: a lookup is a dict access, cheaper than a flight for every hit.
                entry = await cache.lookup(plan)
                if entry is not None:
                    self._count("hit")
                    await self.send_entry(send, entry, b"hit")
                    return CACHE_LABEL
            flight, leads = cache.flights.join(plan.digest)
            if leads:
                served = await self._lead(send, flight, serve_backend)
                if served is not None:
                    return served
            served = await self._follow(send, flight)
            if served is not None:
                return served
        # Leader after leader failed: stop coordinating and ask a backend directly (still recorded).
        self._count("miss")
        return await self._produce(send, Flight(plan.digest), None, serve_backend)

    # -- leading -----------------------------------------------------------------------------

    async def _lead(self, send: Send, flight: Flight, serve_backend: ServeBackend) -> str | None:
        """Answer as this process's leader; None when another replica already answers (then follow)."""
        cache = self.cache
        handed_over = False
        try:
            lead: RemoteLead | None = None
            if cache.remote is not None:
                # One round trip to Redis: the stored answer, or the lock, or word that another replica leads.
                claimed = await cache.claim(self.plan)
                if claimed.entry is not None:
                    flight.from_store = True
                    flight.complete(claimed.entry)  # identical requests already waiting here get it too
                    self._count("hit")
                    await self.send_entry(send, claimed.entry, b"hit")
                    return CACHE_LABEL
                if claimed.follow:
                    _keep(asyncio.create_task(self._follow_remote(flight)))
                    handed_over = True  # the task lands the flight when the other replica is done
                    return None
                lead = claimed.lead
            self._count("miss")
            return await self._produce(send, flight, lead, serve_backend)
        finally:
            if not handed_over:
                cache.flights.land(flight)

    async def _produce(self, send: Send, flight: Flight, lead: RemoteLead | None, serve_backend: ServeBackend) -> str:
        """Ask a backend, teeing its answer to the client, the followers and, once complete, the store."""
        cache = self.cache
        recorder = StreamRecorder(self.kind, max_bytes=cache.config.max_entry_bytes) if self.stream else None
        tee = CacheSend(send, flight, lead, recorder)

        def client_gone() -> None:
            tee.muted = True

        # Followers read this answer, here or on other replicas: a hang-up of this client must not
        # cut it off for them.
        self.watch.hold_while(lambda: flight.followers > 0 or (lead is not None and lead.sharing), client_gone)
        try:
            backend = await serve_backend(tee, [(b"x-gateway-cache", b"miss")])
        except BaseException:
            flight.fail("the identical request being answered failed")
            if lead is not None:
                _keep(asyncio.create_task(lead.abort("the backend call failed")))
            raise
        entry = tee.entry(estimated_prompt_tokens=self.estimated_prompt_tokens, kind=self.kind)
        if entry is None:
            why = tee.why_incomplete()
            flight.fail(why)
            if lead is not None:
                await lead.abort(why)
            log.info("answer for %s not cached: %s", self.route_name, why)
            return backend
        flight.complete(entry)
        outcome = await cache.save(self.plan, entry, self.route_config, lead)
        log.debug("answer for %s from %s: %s", self.route_name, backend, outcome)
        return backend

    async def _follow_remote(self, flight: Flight) -> None:
        """Copy another replica's answer into this process's flight; fail the flight if it never comes."""
        remote = self.cache.remote
        assert remote is not None
        try:
            await remote.follow(self.plan.digest, flight, self.cache.follower_timeout_s)
        finally:
            # Not complete: the other replica failed, vanished or went quiet; our followers start over.
            if not flight.done:
                flight.fail("the replica answering the identical request stopped")
            self.cache.flights.land(flight)

    # -- following ---------------------------------------------------------------------------

    async def _follow(self, send: Send, flight: Flight) -> str | None:
        """Answer from a flight; None when its leader failed before anything was sent (start over)."""
        timeout = self.cache.follower_timeout_s
        if not self.stream:
            try:
                entry = await flight.wait(timeout)
            except FlightFailed as err:
                log.info("identical request's leader failed (%s); trying again", err.reason)
                return None
            return await self._send_whole(send, flight, entry)
        replay = StreamReplay(include_usage=self.include_usage)
        started = False
        try:
            async for payload in flight.follow(timeout):
                if not started:
                    await send(self._start(SSE_HEADERS, b"coalesced", None))
                    started = True
                out = replay.event(payload)
                if out:
                    await send({"type": "http.response.body", "body": self.rename(out), "more_body": True})
        except FlightFailed as err:
            if not started:
                log.info("identical request's leader failed (%s); trying again", err.reason)
                return None
            error = GatewayError(502, f"the identical request this stream was following failed: {err.reason}",
                                 type="api_error", code="upstream_stream_failed")
            await send({"type": "http.response.body", "body": error.sse_event(), "more_body": True})
            await send(_END)
            self._count("coalesced")
            self.record.error = "upstream_stream_failed"
            return CACHE_LABEL
        done = flight.entry
        assert done is not None  # `follow` returns only once the flight completed
        if not started:  # the answer came whole (a body, or from the store): replay it as a stream
            return await self._send_whole(send, flight, done)
        self._count("coalesced")
        await send({"type": "http.response.body", "body": self.rename(replay.end(done)), "more_body": True})
        await send(_END)
        return CACHE_LABEL

    async def _send_whole(self, send: Send, flight: Flight, entry: CacheEntry) -> str:
        """A flight's complete answer: a hit when its leader found it stored, else coalesced."""
        result = "hit" if flight.from_store else "coalesced"
        self._count(result)
        await self.send_entry(send, entry, result.encode())
        return CACHE_LABEL

    # -- replay ------------------------------------------------------------------------------

    def _start(self, base: Headers, status: bytes, entry: CacheEntry | None) -> dict[str, object]:
        headers = [*base, (b"x-gateway-cache", status), (b"x-gateway-cost-usd", b"0.00000000"),
                   (b"x-request-id", self.request_id)]
        if entry is not None:
            headers.append((b"x-gateway-backend", entry.backend.encode()))
            headers.append((b"x-gateway-route-reason", b"cache " + status))
        return {"type": "http.response.start", "status": 200, "headers": headers}

    async def send_entry(self, send: Send, entry: CacheEntry, status: bytes) -> None:
        """A stored (or just completed) answer, in the form this request asked for."""
        record = self.record
        if entry.usage is not None:
            # What the answer counted when it was made; its cost to this caller is nothing.
            record.input_tokens, record.output_tokens = entry.usage.prompt_tokens, entry.usage.completion_tokens
        if not self.stream:
            start = self._start([_JSON], status, entry)
            await send_bytes(send, 200, self.rename(replay_body(entry)), start["headers"])  # type: ignore[arg-type]
            return
        events = [self.rename(event) for event in replay_stream(entry, include_usage=self.include_usage)]
        await send(self._start(SSE_HEADERS, status, entry))
        if self.route_config.pace_replay:
            for delay, event in zip(pacing_delays(entry), events, strict=True):
                if delay > 0:
                    await asyncio.sleep(delay)
                if event:  # an empty slot is a chunk this request does not get (a usage chunk)
                    await send({"type": "http.response.body", "body": event, "more_body": True})
        else:
            await send({"type": "http.response.body", "body": b"".join(events), "more_body": True})
        await send(_END)
