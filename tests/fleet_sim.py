"""A discrete-event simulation of a fleet of inference backends, for routing tests and benchmarks.

Virtual time, no sleeping, no network. Each simulated backend runs up to `slots` requests at
once (more wait in its queue, first come first served); a request takes the backend's TTFT and
then its TPOT per further output token, both multiplied by a slowdown after `degrade_at`, and
a shorter TTFT when its prompt prefix is in the backend's (LRU) prefix cache. Requests arrive
as a Poisson process. The simulator calls `policy.rank()` and feeds the `RoutingStats` exactly
as the dispatcher does (`started`, `first_token`, `finished`), and reads each backend's load
into them every `load_interval_s` like the load monitor.

Imported by tests (`tests/` is on sys.path through tests/conftest.py) and by
`benchmarks/routing.py`.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, cast

from gateway.backend import Backend, BackendLoad, Capabilities
from gateway.config import BackendConfig, CostConfig
from gateway.routing.cost import request_cost_usd
from gateway.routing.interfaces import Policy, RequestFeatures, RouteChoice, RoutingStats


class VirtualClock:
    """The simulation's time: read by calling it, moved only by the simulator."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True, slots=True)
class BackendSpec:
    """One simulated backend: its speed, parallelism, price and (optional) degradation."""

    name: str
    ttft_s: float
    tpot_s: float
    slots: int = 4
    cost: CostConfig = field(default_factory=CostConfig)
    weight: float = 1.0
    degrade_at: float | None = None  # virtual time (seconds after the start) the slowdown begins
    degrade_factor: float = 1.0
    report_capacity: bool = True  # whether its load signal says how many slots it has
    prefix_cache: int = 0  # prompt prefixes its KV cache holds (LRU); 0: prefix caching not modelled
    cached_ttft_factor: float = 0.2  # TTFT of a prefix-cache hit relative to a miss

    def slowdown(self, elapsed: float) -> float:
        return self.degrade_factor if self.degrade_at is not None and elapsed >= self.degrade_at else 1.0

    def service_s(self, output_tokens: int, elapsed: float, cached: bool = False) -> tuple[float, float]:
        """(TTFT, total time) of a request once it has a slot."""
        factor = self.slowdown(elapsed)
        ttft = self.ttft_s * factor * (self.cached_ttft_factor if cached else 1.0)
        return ttft, ttft + self.tpot_s * factor * max(0, output_tokens - 1)

    def capacity_rps(self, mean_output_tokens: float) -> float:
        """Requests per second it sustains with every slot busy (before any slowdown)."""
        return self.slots / (self.ttft_s + self.tpot_s * max(0.0, mean_output_tokens - 1))


@dataclass(slots=True)
class SimRequest:
    """One client request: when it arrives, its body, and what it will really produce."""

    id: int
    arrival: float  # seconds after the start
    body: dict[str, Any]
    output_tokens: int
    prefix: str | None = None  # the shared-prefix group it belongs to, for the prefix cache


@dataclass(slots=True)
class Outcome:
    """What happened to one request."""

    request: SimRequest
    backend: str
    reason: str
    sent: float  # absolute virtual time it was routed
    started: float = 0.0  # it got a slot
    first_token: float = 0.0
    finished: float = 0.0
    cost_usd: float = 0.0
    cache_hit: bool = False

    @property
    def latency_s(self) -> float:
        return self.finished - self.sent

    @property
    def ttft_s(self) -> float:
        return self.first_token - self.sent


class SimulatedBackend:
    """A `Backend` as policies see it (name and config); the simulator holds its queue and slots."""

    plugin: ClassVar[str] = "simulated"
    capabilities = Capabilities()

    def __init__(self, spec: BackendSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.config = BackendConfig(name=spec.name, plugin=self.plugin, model="sim", cost=spec.cost,
                                    weight=spec.weight)
        self.running: dict[int, Outcome] = {}  # request id -> outcome, while it has a slot
        self.queue: deque[Outcome] = deque()
        self.cache: OrderedDict[str, None] = OrderedDict()

    def cached(self, prefix: str | None) -> bool:
        return prefix is not None and prefix in self.cache

    def remember(self, prefix: str | None) -> None:
        if prefix is None or self.spec.prefix_cache <= 0:
            return
        self.cache[prefix] = None
        self.cache.move_to_end(prefix)
        while len(self.cache) > self.spec.prefix_cache:
            self.cache.popitem(last=False)


@dataclass(slots=True)
class SimRun:
    """A finished simulation: every request's outcome, and each backend's queue length over time."""

    outcomes: list[Outcome]
    queue_lengths: dict[str, list[tuple[float, int]]]  # (seconds after the start, queued)

    def by_backend(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for outcome in self.outcomes:
            counts[outcome.backend] = counts.get(outcome.backend, 0) + 1
        return counts


class FleetSimulator:
    """Runs requests through a policy against simulated backends on a virtual clock."""

    def __init__(
        self,
        specs: Sequence[BackendSpec],
        policy: Policy,
        stats: RoutingStats,
        clock: VirtualClock,
        *,
        load_interval_s: float = 1.0,
        stream: bool = True,
    ) -> None:
        self.backends = [SimulatedBackend(spec) for spec in specs]
        self.policy = policy
        self.stats = stats
        self.clock = clock
        self.load_interval_s = load_interval_s
        self.stream = stream
        self.start = clock.now
        self.current: SimRequest | None = None  # the request being routed (the oracle reads it)
        self._events: list[tuple[float, int, str, Any]] = []
        self._seq = itertools.count()

    def _push(self, at: float, kind: str, payload: Any) -> None:
        heapq.heappush(self._events, (at, next(self._seq), kind, payload))

    def run(self, requests: Iterable[SimRequest]) -> SimRun:
        outcomes: list[Outcome] = []
        queues: dict[str, list[tuple[float, int]]] = {b.name: [] for b in self.backends}
        for request in requests:
            self._push(self.start + request.arrival, "arrive", request)
        self._push(self.start, "load", None)
        pending = len(self._events) - 1
        while self._events:
            at, _, kind, payload = heapq.heappop(self._events)
            self.clock.now = at
            if kind == "arrive":
                outcomes.append(self._route(payload))
            elif kind == "first_token":
                backend, outcome = payload
                if self.stream:
                    self.stats.first_token(backend.name, outcome.ttft_s)
            elif kind == "finish":
                backend, outcome = payload
                self._finish(backend, outcome)
                pending -= 1
            elif kind == "load":
                for backend in self.backends:
                    capacity = float(backend.spec.slots) if backend.spec.report_capacity else None
                    self.stats.observe_load(backend.name, BackendLoad(
                        running=float(len(backend.running)), waiting=float(len(backend.queue)), capacity=capacity))
                    queues[backend.name].append((at - self.start, len(backend.queue)))
                if pending > 0:
                    self._push(at + self.load_interval_s, "load", None)
        return SimRun(outcomes, queues)

    def _route(self, request: SimRequest) -> Outcome:
        self.current = request
        features = RequestFeatures("chat", request.body)
        choices: list[RouteChoice] = self.policy.rank(cast("list[Backend]", self.backends), features, self.stats)
        backend = cast(SimulatedBackend, choices[0].backend)
        outcome = Outcome(request, backend.name, choices[0].reason, sent=self.clock.now)
        self.stats.started(backend.name)
        if len(backend.running) < backend.spec.slots:
            self._begin(backend, outcome)
        else:
            backend.queue.append(outcome)
        return outcome

    def _begin(self, backend: SimulatedBackend, outcome: Outcome) -> None:
        now = self.clock.now
        request = outcome.request
        outcome.cache_hit = backend.cached(request.prefix)
        backend.remember(request.prefix)
        ttft, total = backend.spec.service_s(request.output_tokens, now - self.start, outcome.cache_hit)
        outcome.started = now
        outcome.first_token = now + ttft
        outcome.finished = now + total
        backend.running[request.id] = outcome
        self._push(outcome.first_token, "first_token", (backend, outcome))
        self._push(outcome.finished, "finish", (backend, outcome))

    def _finish(self, backend: SimulatedBackend, outcome: Outcome) -> None:
        del backend.running[outcome.request.id]
        tokens = outcome.request.output_tokens
        self.stats.finished(backend.name, ok=True, e2e_s=outcome.latency_s,
                            ttft_s=outcome.ttft_s if self.stream else None, output_tokens=tokens)
        prompt_tokens = RequestFeatures("chat", outcome.request.body).input_tokens
        outcome.cost_usd = request_cost_usd(backend.config, self.stats.get(backend.name), prompt_tokens, tokens)
        if backend.queue:
            self._begin(backend, backend.queue.popleft())


class OraclePolicy:
    """Knows every simulated backend's true speed, slots, queue and cache, and the request's true
    output length, and picks the earliest true completion: the best any greedy router can do."""

    name = "oracle"

    def __init__(self) -> None:
        self.simulator: FleetSimulator | None = None  # set once the simulator is built

    def rank(self, candidates: Sequence[Backend], request: RequestFeatures, stats: RoutingStats) -> list[RouteChoice]:
        sim = self.simulator
        assert sim is not None and sim.current is not None
        finishes = sorted((self._finish(cast(SimulatedBackend, b), sim.current), i) for i, b in enumerate(candidates))
        now = sim.clock.now
        return [RouteChoice(candidates[i], f"oracle: true completion {at - now:.3g}s") for at, i in finishes]

    def _finish(self, backend: SimulatedBackend, request: SimRequest) -> float:
        """When `request` would finish there, replaying its queue on its slots (FIFO)."""
        sim = self.simulator
        assert sim is not None
        now = sim.clock.now
        free = sorted(o.finished for o in backend.running.values())
        free += [now] * (backend.spec.slots - len(free))
        heapq.heapify(free)
        for queued in [*backend.queue, None]:
            at = max(now, heapq.heappop(free))
            r = request if queued is None else queued.request
            _, total = backend.spec.service_s(r.output_tokens, at - sim.start, backend.cached(r.prefix))
            if queued is None:
                return at + total
            heapq.heappush(free, at + total)
        raise AssertionError("unreachable")


def document(prefix: str, size: int) -> str:
    """A deterministic text of about `size` bytes that starts with, and is unique to, `prefix`."""
    words = [f"{prefix}-{i}" for i in range(size // 6 + 1)]
    return " ".join(words)[:size]


def poisson_requests(
    rng: random.Random,
    *,
    rate: float,
    count: int,
    mean_output_tokens: float = 128.0,
    max_tokens: int = 512,
    prefixes: Sequence[str] = (),
    document_bytes: int = 3000,
    start: float = 0.0,
    first_id: int = 0,
) -> list[SimRequest]:
    """`count` chat requests arriving as a Poisson process of `rate` per second.

    With `prefixes`, each request's system prompt is one of them (a shared document of
    `document_bytes`), chosen uniformly, and its user turn is a question of its own. Output
    lengths are exponential around `mean_output_tokens`, capped by `max_tokens`.
    """
    docs = {p: document(p, document_bytes) for p in prefixes}
    out: list[SimRequest] = []
    at = start
    for i in range(count):
        at += rng.expovariate(rate)
        prefix = rng.choice(prefixes) if prefixes else None
        system = docs[prefix] if prefix is not None else "You are a helpful assistant."
        question = f"question {first_id + i}: " + "x" * rng.randint(20, 200)
        body = {
            "model": "sim",
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}],
            "max_tokens": max_tokens,
            "stream": True,
        }
        tokens = min(max_tokens, 1 + int(rng.expovariate(1.0 / max(1.0, mean_output_tokens - 1))))
        out.append(SimRequest(first_id + i, at, body, tokens, prefix))
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by nearest rank."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    index = min(len(ordered) - 1, max(0, round(q / 100.0 * len(ordered) + 0.5) - 1))
    return ordered[index]
