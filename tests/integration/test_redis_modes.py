"""`redis.mode: sentinel | cluster` on real deployments: the same shared state as on one server.

For a primary + replica + sentinel and for a three-primary Redis Cluster (tests/redis_topologies.py,
started once for the module), every part of the gateway that shares state through Redis is driven
through `connect_redis` exactly as a replica would: routing state syncs between two replicas, the
response cache stores, serves and deletes entries spread over every cluster primary, single-flight
leads and follows across replicas, and experiment statistics, the feedback ledger and the journal
write and read back. A cluster refuses any script or transaction whose keys span slots, so these
tests are also the check that every key layout keeps its hash tags. Two gateway processes on each
deployment then coalesce identical requests into one backend call. Last, the sentinel deployment's
primary is killed and the clients must follow the promoted replica. The `redis` section's checks per mode
are tests/unit/test_redis_settings.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import msgspec
import pytest
import pytest_asyncio
from gateway_process import EmulatorProcess, GatewayProcess, free_port, running
from redis_fixtures import redis_cluster, redis_sentinel  # noqa: F401  (module-scoped deployments)
from redis_topologies import SentinelDeployment

from gateway.cache.entry import ENTRY_VERSION, CacheEntry, decode_entry
from gateway.cache.flight import Flight
from gateway.cache.remote_flight import RemoteFlights
from gateway.cache.stores import RedisStore
from gateway.config import BreakerConfig, RedisConfig, RoutingConfig
from gateway.experiments.arm_stats import ArmObservation, InProcessArmStats, RedisArmStats
from gateway.experiments.journal import RedisJournal
from gateway.experiments.ledger import RedisLedger, Taken
from gateway.experiments.timeline import Estimate, HistoryPoint, StopState
from gateway.redis_connect import connect_redis, describe_redis
from gateway.routing.shared import RedisRoutingState

T = TypeVar("T")
GUARD_S = 5.0  # only catches a call that hangs


async def returns(call: Awaitable[T], within: float = GUARD_S) -> T:
    return await asyncio.wait_for(call, within)


async def until(predicate: Callable[[], Any], within: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + within
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


# -- the deployments -------------------------------------------------------------------------------

MODES = ["sentinel", "cluster"]


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def redis_config(mode: str, request: pytest.FixtureRequest) -> RedisConfig:
    config: RedisConfig = request.getfixturevalue(f"redis_{mode}").config()
    return config


@pytest_asyncio.fixture
async def closing() -> AsyncIterator[list[Any]]:
    """Things with `aclose()` a test made, closed at its end (last made, first closed)."""
    made: list[Any] = []
    yield made
    for thing in reversed(made):
        await thing.aclose()


async def test_connect_and_describe(mode: str, redis_config: RedisConfig) -> None:
    client = connect_redis(redis_config, decode_responses=True)
    try:
        keys = [f"modes:{mode}:{i}" for i in range(20)]  # on a cluster, spread over every primary
        for key in keys:
            assert await client.set(key, key, ex=60)
        assert [await client.get(key) for key in keys] == keys
        assert await client.delete(*keys) == len(keys)  # the cluster client splits it by slot
    finally:
        await client.aclose()
    text = describe_redis(redis_config)
    assert text.startswith(f"redis {mode} ") and "secret" not in text


async def test_routing_state_is_shared(mode: str, redis_config: RedisConfig, closing: list[Any],
                                       caplog: pytest.LogCaptureFixture) -> None:
    clock_now = [time.time()]
    config = RoutingConfig(breaker=BreakerConfig(failures=3, open_s=5.0, max_open_s=60.0))

    def replica(name: str) -> RedisRoutingState:
        state = RedisRoutingState(redis_config, ["b1", "b2"], config, replica_id=name, key_prefix=f"modes:{mode}",
                                  refresh_s=0.02, retry_s=0.05, replica_ttl_s=600.0, clock=lambda: clock_now[0])
        closing.append(state)
        return state

    a, b = replica("a"), replica("b")
    await returns(a.start())
    await returns(b.start())
    assert a.shared_ok and b.shared_ok  # the first sync (with the prune script over every key) went through
    assert a.describe().startswith(f"redis {mode} ")
    a.stats.started("b1")
    a.stats.started("b1")
    b.stats.started("b2")
    await until(lambda: b.stats.get("b1").in_flight == 2 and a.stats.get("b2").in_flight == 1, what="in-flight")
    a.stats.finished("b1", ok=True, e2e_s=0.5, ttft_s=0.1, output_tokens=9)
    await until(lambda: b.stats.get("b1").samples > 0.5 and b.stats.get("b1").in_flight == 1, what="a's sample")

    # A Redis that lost its scripts (restarted, flushed): the queued updates are loaded and sent again.
    admin = connect_redis(redis_config)
    try:
        await admin.script_flush()  # on a cluster: every primary
    finally:
        await admin.aclose()
    a.breakers.record("b1", ok=False, hard=True)
    await until(lambda: b.breakers.admission("b1") == "no", what="b to see the open breaker")
    clock_now[0] += 5.0
    claims = await returns(asyncio.gather(*(r.breakers.acquire_probe("b1") for r in (a, b) * 3)))
    assert sum(claims) == 1  # one probe across replicas, claimed by a script on the shared record
    assert not any(r.levelname == "ERROR" for r in caplog.records)


def entry(text: str) -> CacheEntry:
    return CacheEntry(version=ENTRY_VERSION, kind="chat", backend="b", created_at=0.0, body=text.encode())


async def test_response_cache_stores_serves_and_deletes(mode: str, redis_config: RedisConfig,
                                                        closing: list[Any]) -> None:
    store = RedisStore(redis_config, key_prefix=f"modes:{mode}:cache:", budget_s=1.0)
    closing.append(store)
    assert store.describe().startswith(f"redis {mode} ")
    # Keys as `store_key` builds them: the digest is the hash tag, so they spread over the primaries.
    keys = [f"e/m{i % 2}/t/{{{i:064x}}}" for i in range(40)]
    for i, key in enumerate(keys):
        assert await returns(store.set(key, f"v{i}".encode(), ttl_s=60))
    assert [await store.get(key) for key in keys] == [f"v{i}".encode() for i in range(40)]
    assert await returns(store.delete_matching("e/m0/*")) == 20  # SCAN on every primary
    assert [await store.get(key) for key in keys[:4]] == [None, b"v1", None, b"v3"]
    assert await returns(store.delete_matching("e/*")) == 20
    assert store.errors == 0


async def test_single_flight_across_replicas(mode: str, redis_config: RedisConfig, closing: list[Any]) -> None:
    def replica(owner: str) -> RemoteFlights:
        store = RedisStore(redis_config, key_prefix=f"modes:{mode}:flight:", budget_s=1.0, retry_s=60.0)
        closing.append(store)
        flights = RemoteFlights(store, owner=owner, poll_s=0.05)
        closing.append(flights)
        return flights

    a, b = replica("a"), replica("b")
    digest = f"{mode}{'d' * 60}"
    entry_key = f"e/m/t/{{{digest}}}"
    claim = await returns(a.claim(digest, entry_key))
    assert claim.stored is None and claim.lead is not None and claim.lead.shared  # a leads
    lead = claim.lead
    follower = await returns(b.claim(digest, entry_key))
    assert follower.stored is None and follower.lead is None  # b follows

    lead.publish(b"one")
    into = Flight(digest)
    local = asyncio.create_task(_collect(into))
    following = asyncio.create_task(b.follow(digest, into, GUARD_S))
    # b asked for the payloads on the flight-wanted channel (pub/sub reaches every cluster node).
    await until(lambda: lead.sharing, what="the lead to hear the follower")
    lead.publish(b"two")
    assert await returns(lead.complete(entry("answer"), store=(entry_key, 60.0)))
    assert await returns(following) is True
    assert into.entry == entry("answer")
    assert await returns(local) == [b"one", b"two"]

    again = await returns(b.claim(digest, entry_key))  # stored by the end script: a hit, in one round trip
    assert again.stored is not None and decode_entry(again.stored) == entry("answer")
    assert (await returns(a.lead(digest))) is not None  # the lock was released: a new flight may start


async def flushed(writer: Any, within: float = 10.0) -> bool:
    """A writer's flush, tried again while it returns False: the writers keep what Redis did not take
    and try again (their contract), and a cluster's first call (slot map, connections, script load)
    can run over a flush's budget on a loaded 2-core machine."""
    deadline = time.monotonic() + within
    while not await returns(writer.flush()):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def connected(client: Any, key: str) -> None:
    """Open a new client's connection to the node serving `key` before the calls under test: a store
    call has a budget of a fraction of a second, and on a loaded 2-core machine a cluster's first
    connection (slot map, then the node) can take longer, which the stores rightly report as
    'unavailable'; these tests are about what the calls do once Redis answers."""
    await returns(client.exists(key))


async def _collect(flight: Flight) -> list[bytes]:
    return [payload async for payload in flight.follow(GUARD_S)]


async def test_experiment_stats_ledger_and_journal(mode: str, redis_config: RedisConfig,
                                                   closing: list[Any]) -> None:
    experiment = f"modes/{mode}"
    stores = [RedisArmStats(redis_config, flush_interval_s=0.02) for _ in range(2)]
    closing.extend(stores)
    reference = InProcessArmStats()
    for i in range(50):
        observation = ArmObservation(experiment, ("control", "cand:1")[i % 2], i % 7 != 0, ttft_s=0.1 + i / 100,
                                     tpot_s=0.02, e2e_s=1.0 + i / 10, input_tokens=10, output_tokens=20 + i,
                                     cost_usd=0.001)
        stores[i % 3 % 2].record(observation)
        reference.record(observation)
    stores[1].record_feedback(experiment, "control", 1.0, "good")
    reference.record_feedback(experiment, "control", 1.0, "good")
    for store in stores:
        assert await flushed(store)
    got, want = await returns(stores[0].totals(experiment)), await reference.totals(experiment)
    assert set(got) == {"control", "cand:1"}
    for arm in want:
        assert (got[arm].requests, got[arm].errors, got[arm].output_tokens, got[arm].labels) == (
            want[arm].requests, want[arm].errors, want[arm].output_tokens, want[arm].labels)
        assert got[arm].sketches["e2e"].bucket_counts() == want[arm].sketches["e2e"].bucket_counts()
    await returns(stores[1].reset(experiment))
    assert await returns(stores[0].totals(experiment)) == {}

    one, two = RedisLedger(redis_config, 60.0), RedisLedger(redis_config, 60.0)
    closing.extend([one, two])
    for ledger in (one, two):
        await connected(ledger.redis, ledger.key(f"{mode}-req-0", "tenant-0"))
    for i in range(30):  # one flush script over many requests' keys: they share the experiments' tag
        one.remember(f"{mode}-req-{i}", f"tenant-{i % 3}", experiment, "cand:1")
    assert await flushed(one)
    assert await returns(two.take(f"{mode}-req-4", "tenant-1")) == Taken(found=(experiment, "cand:1"))
    assert await returns(one.take(f"{mode}-req-4", "tenant-1")) == Taken(already_used=True)
    assert await returns(two.take(f"{mode}-req-4", "tenant-2")) == Taken()

    journal = RedisJournal(redis_config)
    closing.append(journal)
    await connected(journal.redis, journal.key(experiment, "history"))
    await returns(journal.reset(experiment))
    point = HistoryPoint(at=100.0, metric="score", arms={"cand:1": Estimate(10, 12, 0.5, None, 1.0)})
    assert await returns(journal.append(experiment, point, min_gap_s=5))
    assert not await returns(journal.append(experiment, point, min_gap_s=5))
    assert await returns(journal.history(experiment)) == [point]
    stop = StopState(at=101.0, reason="conclusive", serve="cand:1")
    assert await returns(journal.stop(experiment, stop)) == stop
    assert await returns(journal.stop(experiment, StopState(at=102.0, reason="other", serve="control"))) == stop
    assert await returns(journal.stopped(experiment)) == stop
    await returns(journal.reset(experiment))
    assert await returns(journal.stopped(experiment)) is None


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    process = EmulatorProcess("plugins.vllm.emulator", tmp_path_factory.mktemp("modes-vllm") / "vllm.log",
                              ["--served-model-name", "emulated"], name="vllm")
    with running(process):
        process.wait_ready()
        yield process


def test_two_gateways_share_the_deployment(mode: str, redis_config: RedisConfig, emulator: EmulatorProcess,
                                           tmp_path: Path) -> None:
    """The whole gateway on the deployment: identical requests to two gateway processes make one
    backend call (the cache's single-flight across replicas), and the admin report names the mode."""
    section = {k: v for k, v in msgspec.structs.asdict(redis_config).items() if v not in (None, [], False)}
    config = {
        "backends": [{"name": "vllm", "plugin": "vllm", "model": "emulated", "url": emulator.url + "/v1"}],
        "routes": [{"model": "emulated", "backends": ["vllm"]}],
        "server": {"health_interval_s": 60},
        "redis": section,
    }
    emulator.knobs(ttft_ms=500, tpot_ms=5)  # the leader is still answering when the others arrive
    body = {"model": "emulated", "messages": [{"role": "user", "content": f"modes {mode}"}], "max_tokens": 8,
            "temperature": 0}
    gateways = [GatewayProcess(config, tmp_path, name=f"gw-{i}") for i in range(2)]
    with running(gateways[0]), running(gateways[1]):
        for gw in gateways:
            gw.wait_ready()
        before = emulator.requests_total()

        async def one(i: int) -> str:
            async with httpx.AsyncClient(base_url=gateways[i % 2].url, timeout=30) as client:
                response = await client.post("/v1/chat/completions", json=body)
                assert response.status_code == 200, response.text
                return str(response.json()["choices"][0]["message"]["content"])

        async def all_at_once() -> list[str]:
            return await asyncio.gather(*(one(i) for i in range(10)))

        texts = asyncio.run(all_at_once())
        assert emulator.requests_total() == before + 1 and len(set(texts)) == 1
        with httpx.Client(base_url=gateways[1].url, timeout=10) as client:
            report = client.get("/admin/cache").json()
        assert report["store"].startswith(f"redis {mode} ") and "secret" not in str(report)
    emulator.knobs(ttft_ms=0, tpot_ms=0)


@pytest.mark.parametrize("mode", MODES)
async def test_an_unreachable_deployment_is_a_quick_miss(mode: str, closing: list[Any],
                                                         caplog: pytest.LogCaptureFixture) -> None:
    nowhere = f"127.0.0.1:{free_port()}"
    config = (RedisConfig(mode="cluster", nodes=[nowhere]) if mode == "cluster"
              else RedisConfig(mode="sentinel", sentinels=[nowhere], master_name="gw"))
    store = RedisStore(config, budget_s=1.0)
    closing.append(store)
    assert await returns(store.get("e/m/t/{d}")) is None
    assert not store.available  # "no node answers" opened the breaker, like a refused connection
    state = RedisRoutingState(config, ["b1"], RoutingConfig(), retry_s=60.0)
    closing.append(state)
    await returns(state.start())
    assert not state.shared_ok
    assert not any(r.levelname == "ERROR" for r in caplog.records)  # expected, so no tracebacks


async def test_sentinel_failover_is_followed(redis_sentinel: SentinelDeployment, closing: list[Any],  # noqa: F811
                                             caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    config = redis_sentinel.config()
    store = RedisStore(config, key_prefix="modes:failover:", budget_s=1.0, retry_s=0.05)
    closing.append(store)
    states = [RedisRoutingState(config, ["b1"], RoutingConfig(), replica_id=name, key_prefix="modes:failover",
                                refresh_s=0.02, retry_s=0.05) for name in ("a", "b")]
    closing.extend(states)
    a, b = states
    for state in states:
        await returns(state.start())
    assert await returns(store.set("before", b"kept", ttl_s=300))
    a.stats.started("b1")
    await until(lambda: b.stats.get("b1").in_flight == 1, what="b to see a's request")
    old = redis_sentinel.master_port()
    with next(n for n in redis_sentinel.data_nodes if n.port == old).client() as primary:
        primary.execute_command("WAIT", 1, 5000)  # the replica has everything before it is promoted

    new = await asyncio.to_thread(redis_sentinel.kill_primary)
    assert new != old

    # Calls fail while the primary is gone (the guard and the routing state fall back meanwhile);
    # new connections ask the sentinel again and land on the new primary.
    await until(lambda: store.set("after", b"written", ttl_s=300), what="a write through the new primary")
    assert await returns(store.get("before")) == b"kept"
    with next(n for n in redis_sentinel.data_nodes if n.port == new).client() as primary:
        assert primary.get("modes:failover:after") == "written"  # it went to the new primary itself
    a.stats.started("b1")
    await until(lambda: b.stats.get("b1").in_flight == 2 and a.shared_ok and b.shared_ok,
                what="routing state to be shared again through the new primary")


# -- rate limits -------------------------------------------------------------------------------------

async def test_rate_limits_meter_and_charge_on_a_cluster(redis_cluster: Any) -> None:  # noqa: F811
    """Admission and the pipelined charges run their scripts on the node owning the key's slot."""
    from gateway.limits.budget import period_at
    from gateway.limits.redis_store import RedisLimitStore
    from gateway.limits.settings import LimitsConfig
    from gateway.limits.store import KeyRule

    store = RedisLimitStore(redis_cluster.config())
    try:
        rules = [KeyRule(f"cluster-key-{i}", LimitsConfig(requests_per_minute=2, tokens_per_minute=100,
                                                          budget_usd=1.0, budget_period="day"))
                 for i in range(4)]  # several keys: several slots, so several primaries
        for rule in rules:
            await connected(store.redis, rule.requests_key)  # admission's budget is 100 ms
        for rule in rules:
            period = period_at("day", time.time())
            verdicts = [await returns(store.admit(rule, period)) for _ in range(3)]
            assert [v.refused == 0 for v in verdicts] == [True, True, False]
            store.charge(rule, 150, 0.5, period)  # more tokens than a minute allows
        await returns(store.flush())
        for rule in rules:
            period = period_at("day", time.time())
            verdict = await returns(store.admit(rule, period))
            assert verdict.refused and verdict.spent_usd == pytest.approx(0.5)
    finally:
        await store.aclose()
