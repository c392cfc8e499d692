"""`RedisRoutingState` on a real redis-server: replicas agree on in-flight counts, breakers and
statistics; a dead replica's counts lapse; losing Redis degrades to local state and recovers.

Each "replica" is a `RedisRoutingState` with its own replica id in this process (one in a child
process, to be killed). Their sync loops run in real time with a short `refresh_s`; tests poll
for the expected state with a deadline and never assert timings.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio
from gateway_process import REPO_ROOT, free_port
from redis_server import RedisServer, redis_server_binary

from gateway.backend import BackendLoad
from gateway.config import BreakerConfig, RedisConfig, RoutingConfig, StatsConfig, parse_config
from gateway.routing.shared import LocalRoutingState, RedisRoutingState, RoutingState, make_routing_state
from gateway.routing.stats import LocalStats

BACKENDS = ["b1", "b2"]


class FakeClock:
    """Wall-clock based, but moved forward by the test (breaker windows, decay)."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def until(predicate: Callable[[], bool], within: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


ReplicaFactory = Callable[..., RedisRoutingState]


@pytest_asyncio.fixture
async def replicas(request: pytest.FixtureRequest) -> AsyncIterator[ReplicaFactory]:
    """Builds `RedisRoutingState`s on a test-unique key prefix and closes them all at the end."""
    made: list[RedisRoutingState] = []
    prefix = f"test:{request.node.name}"

    def make(url: str, replica_id: str, *, config: RoutingConfig | None = None, **options: Any) -> RedisRoutingState:
        options = {"refresh_s": 0.02, "retry_s": 0.05, "key_prefix": prefix, **options}
        state = RedisRoutingState(RedisConfig(url=url), BACKENDS, config or RoutingConfig(), replica_id=replica_id,
                                  **options)
        made.append(state)
        return state

    yield make
    for state in made:
        await state.aclose()


async def test_in_flight_counts_agree_across_replicas(redis_server: RedisServer, replicas: ReplicaFactory) -> None:
    a, b = replicas(redis_server.url, "a"), replicas(redis_server.url, "b")
    await a.start()
    await b.start()
    assert a.shared_ok and b.shared_ok
    a.stats.started("b1")
    assert a.stats.get("b1").in_flight == 1  # our own update is never stale
    await until(lambda: b.stats.get("b1").in_flight == 1, what="b to see a's request")
    a.stats.started("b1")
    b.stats.started("b1")
    await until(lambda: a.stats.get("b1").in_flight == 3 and b.stats.get("b1").in_flight == 3, what="3 open")
    assert a.stats.get("b2").in_flight == 0
    for replica in (a, a, b):
        replica.stats.finished("b1", ok=True, e2e_s=0.5, ttft_s=None, output_tokens=3)
    await until(lambda: a.stats.get("b1").in_flight == 0 and b.stats.get("b1").in_flight == 0, what="0 open")


async def test_breaker_state_and_a_single_probe_across_replicas(
    redis_server: RedisServer, replicas: ReplicaFactory
) -> None:
    clock = FakeClock()
    config = RoutingConfig(breaker=BreakerConfig(failures=3, open_s=5.0, max_open_s=60.0))
    a = replicas(redis_server.url, "a", config=config, clock=clock, replica_ttl_s=600.0)
    b = replicas(redis_server.url, "b", config=config, clock=clock, replica_ttl_s=600.0)
    await a.start()
    await b.start()

    a.breakers.record("b1", ok=False, hard=True)  # connection refused
    assert a.breakers.admission("b1") == "no"
    await until(lambda: b.breakers.admission("b1") == "no", what="b to see the open breaker")
    assert b.breakers.snapshot("b1").state == "open"
    assert b.breakers.admission("b2") == "yes"

    # Failures of requests b sent before it heard keep the window as it is.
    opened = a.breakers.snapshot("b1")
    b.breakers.record("b1", ok=False)
    await asyncio.sleep(0.1)
    assert a.breakers.snapshot("b1").open_until == opened.open_until

    clock.advance(5.0)
    assert a.breakers.admission("b1") == "probe" and b.breakers.admission("b1") == "probe"
    claims = await asyncio.gather(*(r.breakers.acquire_probe("b1") for r in (a, b) * 5))
    assert sum(claims) == 1
    winner, loser = (a, b) if any(claims[0::2]) else (b, a)
    assert winner.breakers.admission("b1") == "no"
    await until(lambda: loser.breakers.snapshot("b1").probing, what="the loser to see the probe")
    assert loser.breakers.admission("b1") == "no"

    winner.breakers.record("b1", ok=False)  # the probe failed: open for twice as long
    await until(lambda: loser.breakers.snapshot("b1").open_s == 10.0, what="the doubled window")
    assert loser.breakers.snapshot("b1").state == "open"

    clock.advance(10.0)
    assert await loser.breakers.acquire_probe("b1")
    loser.breakers.record("b1", ok=True)
    await until(lambda: winner.breakers.admission("b1") == "yes", what="the breaker to close everywhere")
    assert winner.breakers.snapshot("b1").open_s == 5.0


async def test_samples_on_one_replica_shape_the_others_stats(
    redis_server: RedisServer, replicas: ReplicaFactory
) -> None:
    clock = FakeClock()
    config = RoutingConfig(stats=StatsConfig(half_life_s=10.0))
    a = replicas(redis_server.url, "a", config=config, clock=clock, replica_ttl_s=600.0)
    b = replicas(redis_server.url, "b", config=config, clock=clock, replica_ttl_s=600.0)
    reference = LocalStats(10.0, clock)
    await a.start()
    await b.start()

    def both(action: Callable[[Any], None]) -> None:
        action(a.stats)
        action(reference)

    both(lambda s: s.started("b1"))
    both(lambda s: s.first_token("b1", 0.2))
    clock.advance(1.5)
    both(lambda s: s.finished("b1", ok=True, e2e_s=1.2, ttft_s=0.2, output_tokens=21))
    clock.advance(3.0)
    both(lambda s: s.started("b1"))
    both(lambda s: s.finished("b1", ok=False, e2e_s=0.1, ttft_s=None, output_tokens=None))
    clock.advance(2.0)
    both(lambda s: s.started("b1"))
    both(lambda s: s.first_token("b1", 0.5))  # slower: the peak mean jumps to it
    both(lambda s: s.finished("b1", ok=True, e2e_s=2.5, ttft_s=0.5, output_tokens=41))
    clock.advance(1.0)
    both(lambda s: s.started("b1"))
    both(lambda s: s.finished("b1", ok=True, e2e_s=0.9, ttft_s=None, output_tokens=9))  # TTFT from the mean
    clock.advance(0.5)

    expected = reference.get("b1")
    await until(lambda: b.stats.get("b1").samples == pytest.approx(expected.samples), what="b to see a's samples")
    fields = ("ttft_s", "tpot_s", "e2e_s", "output_tokens", "error_rate", "samples", "recent_requests",
              "output_tokens_per_s")
    for later in (0.0, 1.0, 4.0, 30.0):  # peaks fade and counts decay the same way on both
        clock.advance(later)
        expected, seen = reference.get("b1"), b.stats.get("b1")
        for field in fields:
            assert getattr(seen, field) == pytest.approx(getattr(expected, field), rel=1e-9), (field, later)
    assert 0.0 < seen.error_rate < 1.0
    assert b.stats.get("b2").samples == 0.0

    # Both replicas' samples add up in the shared record.
    b.stats.started("b1")
    b.stats.finished("b1", ok=True, e2e_s=1.0, ttft_s=None, output_tokens=5)
    await until(lambda: a.stats.get("b1").samples > expected.samples + 0.5, what="a to see b's sample")

    # The engine's own load signal is read by every replica itself.
    b.stats.observe_load("b1", BackendLoad(running=3, waiting=2, capacity=8, kv_cache_usage=0.5))
    seen = b.stats.get("b1")
    assert (seen.running, seen.queued, seen.capacity, seen.kv_cache_usage) == (3, 2, 8, 0.5)


async def test_a_dead_replicas_in_flight_is_dropped(redis_server: RedisServer, replicas: ReplicaFactory) -> None:
    child = textwrap.dedent(f"""
        import asyncio
        from gateway.config import RedisConfig, RoutingConfig
        from gateway.routing.shared import RedisRoutingState

        async def main():
            state = RedisRoutingState(RedisConfig(url={redis_server.url!r}), ["b1"], RoutingConfig(),
                                      replica_id="doomed", key_prefix="test:dead", refresh_s=0.02)
            await state.start()
            state.stats.started("b1")
            state.stats.started("b1")
            await asyncio.sleep(0.2)
            print("ready", flush=True)
            await asyncio.sleep(3600)

        asyncio.run(main())
    """)
    observer = replicas(redis_server.url, "observer", key_prefix="test:dead", replica_ttl_s=0.5)
    leaver = replicas(redis_server.url, "leaver", key_prefix="test:dead", replica_ttl_s=0.5)
    await observer.start()
    await leaver.start()
    process = await asyncio.create_subprocess_exec(sys.executable, "-c", child, cwd=REPO_ROOT,
                                                   stdout=asyncio.subprocess.PIPE)
    try:
        assert process.stdout is not None
        assert (await asyncio.wait_for(process.stdout.readline(), 30)).strip() == b"ready"
        await until(lambda: observer.stats.get("b1").in_flight == 2, what="the child's requests")
    finally:
        process.kill()  # it crashes: it never withdraws its counts
        await process.wait()
    await until(lambda: observer.stats.get("b1").in_flight == 0, what="the dead replica's counts to lapse")

    # A replica that shuts down cleanly takes its counts with it at once.
    leaver.stats.started("b1")
    await until(lambda: observer.stats.get("b1").in_flight == 1, what="the leaver's request")
    await leaver.aclose()
    await until(lambda: observer.stats.get("b1").in_flight == 0, what="the leaver's withdrawal")


def _exercise(state: RoutingState) -> None:
    """Every synchronous method, which must keep working whatever Redis does."""
    state.stats.started("b2")
    state.stats.first_token("b2", 0.1)
    state.stats.finished("b2", ok=True, e2e_s=0.3, ttft_s=0.1, output_tokens=4)
    state.stats.observe_load("b2", BackendLoad(running=1))
    state.stats.get("b2")
    state.breakers.snapshot("b2")
    state.breakers.admission("b2")
    state.breakers.record("b2", ok=True)


async def test_losing_redis_degrades_to_local_state_and_recovers(
    redis_server: RedisServer, replicas: ReplicaFactory, caplog: pytest.LogCaptureFixture
) -> None:
    changes: list[bool] = []
    a = replicas(redis_server.url, "a", on_shared_change=changes.append)
    b = replicas(redis_server.url, "b")
    await a.start()
    await b.start()
    assert changes == [True]
    b.stats.started("b1")
    await until(lambda: a.stats.get("b1").in_flight == 1, what="b's request")

    caplog.set_level(logging.INFO, logger="gateway.routing")
    redis_server.kill()
    a.stats.started("b1")  # made just as Redis went away
    await until(lambda: not a.shared_ok, what="a to notice")
    assert changes == [True, False]
    _exercise(a)
    assert a.stats.get("b1").in_flight == 1  # only this replica's own request is known now
    a.breakers.record("b1", ok=False, hard=True)
    assert a.breakers.admission("b1") == "no"
    assert a.breakers.snapshot("b1").state == "open"
    assert not await a.breakers.acquire_probe("b1")
    assert await a.breakers.acquire_probe("b2")
    await asyncio.sleep(0.3)  # several reconnect attempts: still one warning and one callback each
    warnings = [r.getMessage() for r in caplog.records if r.name == "gateway.routing" and r.levelno == logging.WARNING]
    assert len(warnings) == 2  # one from each replica, however often they retried
    assert "shared routing state unavailable" in warnings[0] and "local state" in warnings[0]
    assert f"127.0.0.1:{redis_server.port}" in warnings[0]
    assert changes == [True, False]

    redis_server.start()  # an empty Redis on the same port
    await until(lambda: a.shared_ok and b.shared_ok, what="both to reconnect")
    assert changes == [True, False, True]
    assert any("reachable again" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)
    # What a did while Redis was away reached it: its breaker opening, and its open requests;
    # b's count comes back from b, which still has its request open.
    await until(lambda: b.breakers.admission("b1") == "no", what="a's breaker opening to be replayed")
    await until(lambda: a.stats.get("b1").in_flight == 2 and b.stats.get("b1").in_flight == 2,
                what="both replicas' counts in the new Redis")
    _exercise(a)


async def test_starts_without_redis_and_bounds_what_it_queues(replicas: ReplicaFactory) -> None:
    binary = redis_server_binary()
    if binary is None:
        pytest.skip("no redis-server")
    server = RedisServer(binary, port=free_port())  # not started yet
    changes: list[bool] = []
    clock = FakeClock()
    a = replicas(server.url, "a", clock=clock, max_pending=5, on_shared_change=changes.append)
    await a.start()  # must not fail
    assert not a.shared_ok and changes == [False]
    for _ in range(20):
        a.stats.started("b1")
        a.stats.finished("b1", ok=True, e2e_s=0.2, ttft_s=None, output_tokens=1)
    assert a.stats.get("b1").samples == pytest.approx(20.0)  # local state
    try:
        server.start()
        await until(lambda: a.shared_ok, what="a to connect")
        assert changes == [False, True]
        # Only the newest five updates were kept: the last three of them `finished`.
        await until(lambda: a.stats.get("b1").samples > 0.0, what="the replayed updates")
        assert a.stats.get("b1").samples == pytest.approx(3.0)
    finally:
        await a.aclose()
        server.stop()


async def test_scripts_reload_after_redis_forgets_them(redis_server: RedisServer, replicas: ReplicaFactory) -> None:
    a, b = replicas(redis_server.url, "a"), replicas(redis_server.url, "b")
    await a.start()
    await b.start()
    with redis_server.client() as client:
        client.script_flush()
    a.breakers.record("b1", ok=False, hard=True)
    await until(lambda: b.breakers.admission("b1") == "no", what="the update to land after a reload")
    assert a.shared_ok and b.shared_ok


async def test_make_routing_state_picks_redis_only_when_configured() -> None:
    raw: dict[str, Any] = {
        "backends": [{"name": "b1", "plugin": "openai_compat", "model": "m", "url": "http://127.0.0.1:1"}],
        "routes": [{"model": "*", "backends": ["b1"]}],
    }
    local = make_routing_state(parse_config(raw))
    assert isinstance(local, LocalRoutingState)
    assert (local.shared, local.shared_ok, local.describe()) == (False, True, "in-process")
    await local.start()
    await local.aclose()

    port = free_port()
    shared = make_routing_state(parse_config({**raw, "redis": {"url": f"redis://:s3cret@127.0.0.1:{port}/2"}}))
    assert isinstance(shared, RedisRoutingState)
    assert shared.shared and not shared.shared_ok
    assert shared.describe() == f"redis at 127.0.0.1:{port}"
    await shared.aclose()  # never started: nothing to do


async def test_a_request_that_is_no_sample_only_lowers_in_flight(
    redis_server: RedisServer, replicas: ReplicaFactory
) -> None:
    a, b = replicas(redis_server.url, "a"), replicas(redis_server.url, "b")
    await a.start()
    await b.start()
    a.stats.started("b1")
    a.stats.finished("b1", ok=None, e2e_s=0.001, ttft_s=None, output_tokens=None)  # a hang-up, a 4xx
    a.stats.started("b1")
    a.stats.finished("b1", ok=True, e2e_s=0.5, ttft_s=None, output_tokens=4)
    await until(lambda: b.stats.get("b1").samples > 0, what="b to see a's finished request")
    seen = b.stats.get("b1")
    assert seen.in_flight == 0 and seen.error_rate == 0.0
    assert seen.samples == pytest.approx(1.0, rel=1e-2)  # one sample, not two
