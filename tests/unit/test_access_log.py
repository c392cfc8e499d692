"""The access log: one JSON line per OpenAI request with who, what, where and how much; never key material."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from gateway.access_log import AccessLine, AccessLog
from gateway.api.request_record import RequestRecord
from gateway.auth.keys import key_digest
from gateway.config import ConfigError, parse_config
from gateway.errors import GatewayError
from gateway.state import GatewayState

from .asgi_post import post
from .conftest import running_gateway
from .fakes import BACKEND_MODEL, FakeUpstream, fake_registry, gateway_config

KEY = "gw-team-a-secret-key"
FIELDS = list(AccessLine.__struct_fields__)


def config(path: Path, **logging: Any) -> dict[str, Any]:
    return {
        "backends": [{"name": "f1", "plugin": "fake", "model": BACKEND_MODEL,
                      "cost": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}}],
        "routes": [{"model": "chat", "backends": ["f1"]}],
        "auth": {"keys": [{"name": "team-a", "sha256": key_digest(KEY), "tenant": "acme"}]},
        "logging": {"access_path": str(path), **logging},
    }


def lines(path: Path) -> list[dict[str, Any]]:
    decoded = [msgspec.json.decode(line) for line in path.read_bytes().splitlines()]
    for line in decoded:
        assert list(line) == FIELDS  # every field on every line, in one order
    return decoded


CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}
AUTH = {"authorization": f"Bearer {KEY}"}


async def test_one_line_per_request_with_its_route_backend_status_tokens_cost_and_latency(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    async with running_gateway(config(log)) as gw:
        ok = await gw.client.post("/v1/chat/completions", json=CHAT, headers={**AUTH, "x-request-id": "req-1"})
        assert ok.status_code == 200
        streamed = await gw.client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=AUTH)
        assert streamed.status_code == 200
        await gw.client.get("/metrics")  # not an OpenAI request: no line
    first, second = lines(log)

    assert first["request_id"] == "req-1"
    assert first["time"].endswith("Z") and first["time"][10] == "T"
    assert {k: first[k] for k in ("key", "tenant", "path", "model", "route", "backend", "status", "stream",
                                  "cache", "speculative", "input_tokens", "output_tokens", "ttft_ms")} == {
        "key": "team-a", "tenant": "acme", "path": "/v1/chat/completions", "model": "chat", "route": "chat",
        "backend": "f1", "status": 200, "stream": False, "cache": "bypass", "speculative": False,
        "input_tokens": 1, "output_tokens": 1, "ttft_ms": None,
    }
    assert first["cost_usd"] == pytest.approx((1 * 1.0 + 1 * 2.0) / 1e6)
    assert first["duration_ms"] > 0
    assert second["stream"] is True and second["status"] == 200 and second["output_tokens"] == 2
    assert 0 < second["ttft_ms"] <= second["duration_ms"]
    assert second["request_id"] == streamed.headers["x-request-id"]


async def test_a_cache_hit_a_refusal_and_a_backend_429_each_leave_a_line_without_key_material(
    tmp_path: Path,
) -> None:
    log = tmp_path / "access.log"
    deterministic = {**CHAT, "temperature": 0}
    async with running_gateway(config(log)) as gw:
        for _ in range(2):
            assert (await gw.client.post("/v1/chat/completions", json=deterministic, headers=AUTH)).status_code == 200
        wrong = await gw.client.post("/v1/chat/completions", json=CHAT, headers={"authorization": "Bearer gw-wrong-1"})
        assert wrong.status_code == 401
        gw.backend().reply = GatewayError(429, "slow down", type="rate_limit_exceeded", code="rate_limit_exceeded")
        assert (await gw.client.post("/v1/chat/completions", json=CHAT, headers=AUTH)).status_code == 429
    miss, hit, refused, limited = lines(log)

    assert (miss["cache"], miss["backend"]) == ("miss", "f1")
    assert (hit["cache"], hit["backend"], hit["status"], hit["cost_usd"]) == ("hit", "cache", 200, 0.0)
    assert hit["output_tokens"] == miss["output_tokens"]  # what the stored answer counted
    assert (refused["status"], refused["key"], refused["backend"], refused["route"]) == (401, None, "", "")
    assert (limited["status"], limited["key"], limited["backend"]) == (429, "team-a", "")
    text = log.read_text()
    for secret in (KEY, "gw-wrong-1", key_digest(KEY)):
        assert secret not in text


async def test_a_shut_down_with_a_write_under_way_waits_for_it_and_writes_every_line(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    async with running_gateway(config(log)) as gw:
        access = gw.state.access_log
        assert access is not None
        write = access._write

        def slow_write(lines: list[bytes]) -> None:
            time.sleep(0.3)  # a destination slow to take lines: the shut-down comes while this runs
            write(lines)

        access._write = slow_write  # type: ignore[method-assign]
        assert (await post(gw, CHAT, headers=AUTH)).status_code == 200
        for _ in range(200):
            if access._write_done is not None:
                break
            await asyncio.sleep(0.005)
        assert access._write_done is not None and not access._write_done.done()
        assert (await post(gw, CHAT, headers=AUTH)).status_code == 200
    assert len(lines(log)) == 2  # the line being written and the one that waited behind it


async def test_turned_off_nothing_is_written(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    async with running_gateway(config(log, access=False)) as gw:
        assert gw.state.access_log is None
        assert (await gw.client.post("/v1/chat/completions", json=CHAT, headers=AUTH)).status_code == 200
    assert not log.exists()


def test_the_section_is_checked() -> None:
    base = {"backends": [{"name": "f1", "plugin": "fake", "model": "m"}],
            "routes": [{"model": "*", "backends": ["f1"]}]}
    default = parse_config(base, env={}, validators=fake_registry().validators())
    assert (default.logging.access, default.logging.access_path, default.logging.format) == (True, None, "text")
    with pytest.raises(ConfigError) as err:
        parse_config({**base, "logging": {"format": "xml", "access_path": " ", "acess": True}}, env={},
                     validators=fake_registry().validators())
    text = str(err.value)
    assert "logging.format" in text and "logging.acess" in text


def record(i: int) -> RequestRecord:
    r = RequestRecord(f"id-{i}".encode(), "chat", 0.0)
    r.model, r.route, r.backend, r.finished_at = "m" * 300, "chat", "f1", 0.25
    return r


async def test_lines_are_batched_and_never_split_across_writes(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    access = AccessLog(None, flush_interval_s=0.01)
    access._fd = write_end  # a pipe, as stderr usually is
    for i in range(100):  # ~50 KB: several PIPE_BUF-sized writes
        access(record(i))
    assert os.get_blocking(read_end)
    await asyncio.sleep(0.2)
    await access.aclose()
    os.close(write_end)
    data = b""
    while chunk := os.read(read_end, 65536):
        data += chunk
    os.close(read_end)
    got = [msgspec.json.decode(line) for line in data.splitlines()]
    assert [line["request_id"] for line in got] == [f"id-{i}" for i in range(100)]
    assert all(len(line["model"]) == 256 for line in got)  # a client's long model name is cut
    assert got[0]["duration_ms"] == 250.0


async def test_a_destination_that_stops_taking_lines_bounds_memory_and_counts_drops(tmp_path: Path) -> None:
    access = AccessLog(str(tmp_path / "a.log"), flush_interval_s=10.0, max_pending_bytes=2000)
    for i in range(50):
        access(record(i))
    assert access.dropped > 0 and access._pending_bytes < 2000 + 600
    kept = 50 - access.dropped
    await access.aclose()
    assert len((tmp_path / "a.log").read_bytes().splitlines()) == kept
    access(record(99))  # after closing: dropped, not written to a closed file
    assert access.dropped == 50 - kept + 1


def test_a_reload_keeps_the_writer_and_the_series_unless_the_section_changed(tmp_path: Path) -> None:
    raw = config(tmp_path / "access.log")
    first = GatewayState(gateway_config(raw), fake_registry(), upstream=FakeUpstream())
    same = GatewayState(gateway_config(raw), fake_registry(), upstream=FakeUpstream(), previous=first)
    assert same.access_log is first.access_log and "access_log" in same.carried
    assert same.genai_metrics is first.genai_metrics  # one set of gen_ai_* series per process, still counting
    assert same.access_log in same.request_sinks
    off = GatewayState(gateway_config({**raw, "logging": {"access": False}}), fake_registry(), upstream=FakeUpstream(),
                       previous=same)
    assert off.access_log is None and "access_log" not in off.carried


async def test_a_stream_cut_after_its_first_byte_is_marked_in_the_line_and_the_metrics(tmp_path: Path) -> None:
    from gateway.backend import BackendUnavailable

    from .fakes import DONE, ScriptedStream, chunk_event

    log = tmp_path / "access.log"
    async with running_gateway(config(log)) as gw:
        gw.backend().stream_factory = lambda: ScriptedStream(
            [chunk_event("partial"), BackendUnavailable("f1", "connection reset mid-stream")])
        response = await gw.client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=AUTH)
        assert response.status_code == 200  # the headers had gone out before the cut
        event = next(line for line in response.text.splitlines() if '"error"' in line)
        code = msgspec.json.decode(event.removeprefix("data: "))["error"]["code"]
        assert "[DONE]" not in response.text
        gw.backend().stream_factory = lambda: ScriptedStream([chunk_event("whole"), DONE])
        ok = await gw.client.post("/v1/chat/completions", json={**CHAT, "stream": True}, headers=AUTH)
        metrics = (await gw.client.get("/metrics")).text
    cut, whole = lines(log)
    assert code and cut["status"] == 200 and cut["error"] == code
    assert ok.status_code == 200 and whole["error"] == ""
    assert any(line.startswith("gen_ai_server_request_duration_seconds_count{") and f'error_type="{code}"' in line
               and line.endswith(" 1.0") for line in metrics.splitlines())
