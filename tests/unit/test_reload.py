"""Config hot reload in the real app: validate first, swap whole, keep what did not change, and
let requests that started before the swap (streams included) finish on the config they began with."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from litestar import Litestar

from gateway.app import create_app
from gateway.config import load_config
from gateway.ops.live_state import LiveState
from gateway.state import GatewayState

from .asgi_client import serving
from .asgi_post import post
from .fakes import BACKEND_MODEL, DONE, FakeBackend, FakeUpstream, ScriptedStream, chunk_event, fake_registry

CHAT = {"messages": [{"role": "user", "content": "hi"}]}


def config(routes: dict[str, list[str]], backends: list[str], **server: Any) -> dict[str, Any]:
    return {
        "server": server,
        "backends": [{"name": name, "plugin": "fake", "model": BACKEND_MODEL} for name in backends],
        "routes": [{"model": model, "backends": names} for model, names in routes.items()],
    }


class Reloadable:
    def __init__(self, client: httpx.AsyncClient, app: Litestar, path: Path) -> None:
        self.client = client
        self.app = app
        self.path = path

    @property
    def live(self) -> LiveState:
        live: LiveState = self.app.state.live
        return live

    def backend(self, name: str) -> FakeBackend:
        backend = self.live.current.backends[name]
        assert isinstance(backend, FakeBackend)
        return backend

    def write(self, raw: dict[str, Any] | str) -> None:
        self.path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw, sort_keys=False))

    async def reload(self) -> tuple[int, dict[str, Any]]:
        response = await self.client.post("/admin/reload")
        return response.status_code, response.json()

    async def chat(self, model: str, **extra: Any) -> Any:
        return await self.client.post("/v1/chat/completions", json={**CHAT, "model": model, **extra})


@asynccontextmanager
async def reloadable(tmp_path: Path, raw: dict[str, Any]) -> AsyncIterator[Reloadable]:
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    async with serving_file(path) as gw:
        yield gw


@asynccontextmanager
async def serving_file(path: Path) -> AsyncIterator[Reloadable]:
    """The app serving the config file at `path`, as `gateway serve --config` would: reloadable from it."""
    registry = fake_registry()
    state = GatewayState(load_config(path, validators=registry.validators()), registry, upstream=FakeUpstream(),
                         config_dir=path.parent)
    app = create_app(state, tune_gc=False, config_path=path, registry=registry)
    async with serving(app) as client:
        yield Reloadable(client, app, path)


def slow_stream(pieces: int, delay_s: float) -> ScriptedStream:
    return ScriptedStream([chunk_event(f"p{i} ") for i in range(pieces)] + [DONE], delay_s=delay_s)


async def stream_started(gw: Reloadable, backend: FakeBackend, stream: ScriptedStream) -> asyncio.Task[Any]:
    """A streamed request to route 'alpha', running once `backend` has begun answering it."""
    backend.stream_factory = lambda: stream
    # A task, so the stream stays open while the test goes on.
    running = asyncio.create_task(post(gw, {**CHAT, "model": "alpha", "stream": True}))  # type: ignore[arg-type]
    for _ in range(500):
        if backend.streams:
            break
        await asyncio.sleep(0.01)
    return running


async def test_a_reload_swaps_routes_and_keeps_unchanged_backends(tmp_path: Path) -> None:
    async with reloadable(tmp_path, config({"alpha": ["f1"]}, ["f1"])) as gw:
        f1 = gw.backend("f1")
        assert (await gw.chat("alpha")).status_code == 200
        gw.write(config({"alpha": ["f1"], "beta": ["f2"]}, ["f1", "f2"]))
        status, outcome = await gw.reload()
        assert status == 200, outcome
        assert outcome["ok"] and outcome["generation"] == 2
        assert outcome["kept"] == ["f1"] and outcome["started"] == ["f2"] and outcome["stopped"] == []
        assert gw.backend("f1") is f1 and not f1.closed  # the same backend object, still open
        assert gw.backend("f2").started
        assert (await gw.chat("beta")).status_code == 200
        assert (await gw.chat("alpha")).status_code == 200
        models = (await gw.client.get("/v1/models")).json()
        assert {m["id"] for m in models["data"]} == {"alpha", "beta"}


async def test_a_config_with_problems_is_refused_and_the_old_one_keeps_serving(tmp_path: Path) -> None:
    async with reloadable(tmp_path, config({"alpha": ["f1"]}, ["f1"])) as gw:
        gw.write(config({"alpha": ["f1"], "beta": ["nope"]}, ["f1"]) | {"server": {"port": 99999}})
        status, outcome = await gw.reload()
        assert status == 400 and not outcome["ok"]
        assert outcome["generation"] == 1
        problems = " | ".join(outcome["problems"])
        assert "routes[1].backends[0]: unknown backend 'nope'" in problems
        assert "server.port" in problems  # every problem, not just the first
        assert (await gw.chat("alpha")).status_code == 200
        assert (await gw.chat("beta")).status_code == 404
        gw.write("backends: [unclosed")
        status, outcome = await gw.reload()
        assert status == 400 and outcome["problems"]
        assert (await gw.chat("alpha")).status_code == 200


async def test_a_stream_running_across_a_reload_finishes_on_its_own_config(tmp_path: Path) -> None:
    async with reloadable(tmp_path, config({"alpha": ["f1"]}, ["f1"])) as gw:
        old_f1 = gw.backend("f1")
        running = await stream_started(gw, old_f1, slow_stream(8, 0.1))
        old_state = gw.live.current
        assert old_state.open_requests == 1
        assert "\ngateway_in_flight_requests 1.0" in (await gw.client.get("/metrics")).text
        # The new config drops f1 for f2 and the route with it: the stream must not notice.
        gw.write(config({"gamma": ["f2"]}, ["f2"]))
        status, outcome = await gw.reload()
        assert status == 200 and outcome["stopped"] == ["f1"], outcome
        assert not old_f1.closed  # still streaming: closed only once its request is done
        assert (await gw.chat("gamma")).status_code == 200
        assert (await gw.chat("alpha")).status_code == 404
        response = await running
        assert response.status_code == 200
        body = response.content.decode()
        assert all(f"p{i} " in body for i in range(8)) and body.rstrip().endswith("data: [DONE]")
        for _ in range(100):
            if old_f1.closed:
                break
            await asyncio.sleep(0.02)
        assert old_f1.closed and old_state.open_requests == 0
        assert "\ngateway_in_flight_requests 0.0" in (await gw.client.get("/metrics")).text


async def test_concurrency_limits_hold_across_a_reload(tmp_path: Path) -> None:
    """A request still running on the old config holds its backend's slot in the new one: a reload
    must not let a backend take max_concurrency more requests while the old ones drain."""
    def limited(weight: int) -> dict[str, Any]:
        raw = config({"alpha": ["f1"]}, ["f1"])
        # A changed option makes the reload build a new f1: the count belongs to the name, not the object.
        raw["backends"][0].update(max_concurrency=1, options={"weight": weight})
        return raw

    async with reloadable(tmp_path, limited(1)) as gw:
        old_f1 = gw.backend("f1")
        running = await stream_started(gw, old_f1, slow_stream(6, 0.1))
        gw.write(limited(2))
        status, outcome = await gw.reload()
        assert status == 200 and gw.backend("f1") is not old_f1, outcome
        refused = await gw.chat("alpha")
        assert refused.status_code == 503 and "concurrency limit" in refused.json()["error"]["message"]
        assert (await running).status_code == 200
        assert (await gw.chat("alpha")).status_code == 200  # the slot came back with the old request's end
        assert gw.live.current.dispatcher.slots.active["f1"] == 0


async def test_in_process_experiment_numbers_carry_on_across_a_reload(tmp_path: Path) -> None:
    def with_experiment(**server: Any) -> dict[str, Any]:
        raw = config({"chat": ["f1"]}, ["f1", "f2"], **server)
        raw["routes"][0]["experiment"] = {"name": "ab", "arms": {"control": "f1", "candidate": "f2"}}
        return raw

    async def arms(gw: Reloadable) -> dict[str, Any]:
        response = await gw.client.get("/admin/experiments/ab")
        assert response.status_code == 200, response.text
        return {arm: (body["assigned"], body["requests"]) for arm, body in response.json()["arms"].items()}

    async with reloadable(tmp_path, with_experiment()) as gw:
        for _ in range(6):
            assert (await gw.chat("chat")).status_code == 200
        before = await arms(gw)
        assert sum(requests for _, requests in before.values()) == 6
        gw.write(with_experiment(health_interval_s=1.0))
        assert (await gw.reload())[0] == 200
        assert await arms(gw) == before  # not restarted at zero
        assert (await gw.chat("chat")).status_code == 200
        assert sum(requests for _, requests in (await arms(gw)).values()) == 7


async def test_counters_carry_on_across_a_reload(tmp_path: Path) -> None:
    async with reloadable(tmp_path, config({"alpha": ["f1"]}, ["f1"])) as gw:
        for _ in range(3):
            await gw.chat("alpha")
        gw.write(config({"alpha": ["f1"]}, ["f1"], health_interval_s=1.0))
        assert (await gw.reload())[0] == 200
        await gw.chat("alpha")
        metrics = (await gw.client.get("/metrics")).text
        line = next(x for x in metrics.splitlines()
                    if x.startswith("gateway_requests_total{") and 'route="alpha"' in x and 'status="200"' in x)
        assert line.endswith(" 4.0"), line


async def test_a_changed_file_is_reloaded_when_watched(tmp_path: Path) -> None:
    async with reloadable(tmp_path, config({"alpha": ["f1"]}, ["f1"], watch_config=True,
                                           watch_interval_s=0.05)) as gw:
        gw.write(config({"alpha": ["f1"], "beta": ["f1"]}, ["f1"], watch_config=True, watch_interval_s=0.05))
        for _ in range(200):
            if gw.live.generation == 2:
                break
            await asyncio.sleep(0.02)
        assert gw.live.generation == 2
        assert (await gw.chat("beta")).status_code == 200
        # A broken edit is refused once and not retried until the file changes again.
        gw.write("routes: {")
        await asyncio.sleep(0.3)
        assert gw.live.generation == 2
        assert (await gw.chat("beta")).status_code == 200


async def test_ready_fails_while_draining(tmp_path: Path) -> None:
    async with reloadable(tmp_path, config({"alpha": ["f1"]}, ["f1"])) as gw:
        assert (await gw.client.get("/ready")).status_code == 200
        gw.live.begin_drain()
        response = await gw.client.get("/ready")
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "draining"
        assert response.headers["retry-after"] == "1"
        assert (await gw.chat("alpha")).status_code == 200  # open connections are still answered


async def test_reload_needs_a_config_file() -> None:
    from .conftest import running_gateway

    async with running_gateway() as gw:
        response = await gw.client.post("/admin/reload")
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "reload_unavailable"


@pytest.mark.parametrize("bad", [{"drain_s": -1}, {"watch_interval_s": 0}])
def test_server_drain_and_watch_settings_are_checked(tmp_path: Path, bad: dict[str, Any]) -> None:
    from gateway.config import ConfigError

    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump(config({"alpha": ["f1"]}, ["f1"], **bad)))
    with pytest.raises(ConfigError) as err:
        load_config(path, validators=fake_registry().validators())
    assert any(p.startswith(f"server.{next(iter(bad))}") for p in err.value.problems)


async def test_a_configmap_style_symlink_swap_is_followed(tmp_path: Path) -> None:
    """Kubernetes mounts a ConfigMap as file -> ..data/file, ..data -> ..<timestamp>/, and on an update
    points ..data at a new folder and deletes the old one: the watched path must be followed afresh."""
    first = tmp_path / "..2026_a"
    first.mkdir()
    (first / "gateway.yaml").write_text(yaml.safe_dump(config({"alpha": ["f1"]}, ["f1"], watch_config=True,
                                                             watch_interval_s=0.05)))
    (tmp_path / "..data").symlink_to(first.name)
    mounted = tmp_path / "gateway.yaml"
    mounted.symlink_to("..data/gateway.yaml")
    async with serving_file(mounted) as gw:
        second = tmp_path / "..2026_b"
        second.mkdir()
        (second / "gateway.yaml").write_text(yaml.safe_dump(config({"alpha": ["f1"], "beta": ["f1"]}, ["f1"],
                                                                  watch_config=True, watch_interval_s=0.05)))
        (tmp_path / "..data_tmp").symlink_to(second.name)
        (tmp_path / "..data_tmp").replace(tmp_path / "..data")
        for leftover in first.iterdir():
            leftover.unlink()
        first.rmdir()
        for _ in range(200):
            if gw.live.generation == 2:
                break
            await asyncio.sleep(0.02)
        assert gw.live.generation == 2
        assert (await gw.chat("beta")).status_code == 200
