"""Routing end to end: gateway processes in front of vLLM emulator processes, driven by real clients.

Shown here: the route headers and cost, per-request policies, the latency policy following a
backend that slows down, a killed backend costing one failed attempt per breaker window and
coming back, a 429's Retry-After honoured, a stream resumed on another backend after a
mid-stream failure, and two gateways on one Redis agreeing on breakers and in-flight counts.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import math
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from gateway_process import EmulatorProcess, GatewayProcess, assert_openai_error, running, value, wait_until
from redis_server import RedisServer

MODEL = "emulated"
CHAT: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}


def emulator(tmp_path: Path, name: str, port: int | None = None) -> EmulatorProcess:
    return EmulatorProcess("plugins.vllm.emulator", tmp_path / f"{name}.log", ["--served-model-name", MODEL],
                           name=name, port=port)


@contextlib.contextmanager
def emulators(tmp_path: Path, *names: str) -> Iterator[dict[str, EmulatorProcess]]:
    started: dict[str, EmulatorProcess] = {}
    try:
        for name in names:
            started[name] = emulator(tmp_path, name)
        for process in started.values():
            process.wait_ready()
        yield started
    finally:
        for process in started.values():
            process.stop()


def gateway_config(backends: dict[str, EmulatorProcess], routes: list[dict[str, Any]] | None = None,
                   **sections: Any) -> dict[str, Any]:
    return {
        "backends": [
            {"name": name, "plugin": "vllm", "model": MODEL, "url": process.url + "/v1",
             "cost": {"input_per_mtok": 1.0, "output_per_mtok": 2.0}}
            for name, process in backends.items()
        ],
        "routes": routes or [{"model": MODEL, "backends": list(backends)}],
        # Active checks slowly, so what is shown is the breaker's doing, not the health monitor's.
        "server": {"health_interval_s": 60},
        **sections,
    }


@contextlib.contextmanager
def gateway(config: dict[str, Any], tmp_path: Path, name: str = "gateway") -> Iterator[GatewayProcess]:
    process = GatewayProcess(config, tmp_path, name=name)
    with running(process):
        process.wait_ready()
        yield process


def metrics(gw: GatewayProcess) -> str:
    return httpx.get(gw.url + "/metrics", timeout=10).text


def admin(gw: GatewayProcess) -> dict[str, Any]:
    response = httpx.get(gw.url + "/admin/backends", timeout=10)
    assert response.status_code == 200, response.text
    return {b["name"]: b for b in response.json()["backends"]}


def test_responses_say_which_backend_why_and_what_it_cost(tmp_path: Path) -> None:
    with emulators(tmp_path, "a", "b") as backends, gateway(gateway_config(backends), tmp_path) as gw:
        raw = gw.client().chat.completions.with_raw_response.create(**CHAT)
        assert raw.headers["x-gateway-backend"] == "a"
        assert raw.headers["x-gateway-route-reason"].startswith("first_healthy")
        usage = raw.parse().usage
        expected = (usage.prompt_tokens * 1.0 + usage.completion_tokens * 2.0) / 1e6
        assert float(raw.headers["x-gateway-cost-usd"]) == pytest.approx(expected, rel=1e-3)
        stream = gw.client().chat.completions.with_raw_response.create(**CHAT, stream=True)
        assert stream.headers["x-gateway-backend"] == "a" and stream.headers["x-gateway-route-reason"]
        assert float(stream.headers["x-gateway-cost-usd"]) > 0  # the estimate at dispatch
        assert "".join(c.choices[0].delta.content or "" for c in stream.parse() if c.choices)
        # The measured cost of both requests is summed per route, backend and tenant.
        total = value(metrics(gw), "gateway_cost_usd_total", route=MODEL, backend="a")
        assert total is not None and total >= expected


def test_the_policy_can_be_chosen_per_request_and_a_bad_one_is_a_400(tmp_path: Path) -> None:
    with emulators(tmp_path, "a", "b") as backends, gateway(gateway_config(backends), tmp_path) as gw:
        client = gw.client()
        served = collections.Counter()
        for _ in range(6):
            raw = client.chat.completions.with_raw_response.create(
                **CHAT, extra_headers={"x-gateway-policy": "round_robin"})
            served[raw.headers["x-gateway-backend"]] += 1
            assert raw.headers["x-gateway-route-reason"].startswith("round_robin")
        assert served == {"a": 3, "b": 3}
        response = httpx.post(gw.base_url + "/chat/completions", json=CHAT,
                              headers={"x-gateway-policy": "fastest-please"}, timeout=10)
        assert_openai_error(response, 400, param="x-gateway-policy", code="invalid_value")
        assert "latency" in response.json()["error"]["message"]


def test_latency_policy_prefers_the_fastest_and_leaves_it_when_it_slows(tmp_path: Path) -> None:
    """Three backends at 1x/2x/4x time per token; then the fastest becomes 5x slower."""
    with emulators(tmp_path, "fast", "mid", "slow") as backends:
        for name, tpot in (("fast", 4), ("mid", 8), ("slow", 16)):
            backends[name].knobs(tpot_ms=tpot)
        config = gateway_config(backends, [{"model": MODEL, "backends": ["slow", "mid", "fast"],
                                            "policy": "latency"}])
        with gateway(config, tmp_path) as gw:
            client = gw.client()

            reasons: list[str] = []

            def pick() -> str:
                raw = client.chat.completions.with_raw_response.create(**{**CHAT, "max_tokens": 16})
                reasons.append(f"{raw.headers['x-gateway-backend']}: {raw.headers['x-gateway-route-reason']}")
                return str(raw.headers["x-gateway-backend"])

            for _ in range(12):  # warm-up: every backend gets its samples
                pick()
            steady = [pick() for _ in range(40)]
            assert steady.count("fast") >= 0.85 * len(steady), "\n".join(reasons)  # leaves room for 2% exploring
            backends["fast"].knobs(tpot_ms=20)  # 5x slower: now behind both others
            after = [pick() for _ in range(20)]
            moved = next((i for i, name in enumerate(after) if name != "fast"), None)
            assert moved is not None, after
            assert after[-5:].count("fast") <= 1, after


def test_a_killed_backend_costs_one_attempt_per_breaker_window_and_comes_back(tmp_path: Path) -> None:
    with emulators(tmp_path, "a", "b") as backends:
        config = gateway_config(backends, [{"model": MODEL, "backends": ["a", "b"], "policy": "round_robin"}],
                                routing={"breaker": {"failures": 3, "open_s": 1.0, "max_open_s": 1.0}})
        with gateway(config, tmp_path) as gw:
            client = gw.client()
            port = backends["a"].port
            backends["a"].stop()
            started = time.monotonic()
            served = collections.Counter()
            while time.monotonic() - started < 3.5:
                raw = client.chat.completions.with_raw_response.create(**CHAT)
                served[raw.headers["x-gateway-backend"]] += 1  # every request succeeds
            windows = math.ceil((time.monotonic() - started) / 1.0)
            failed = value(metrics(gw), "gateway_backend_attempt_failures_total", backend="a") or 0
            assert 1 <= failed <= windows + 1, (failed, windows)
            assert served["b"] >= 20 and served["a"] == 0
            assert admin(gw)["a"]["breaker"]["state"] in ("open", "half_open")
            assert value(metrics(gw), "gateway_backend_breaker_state", backend="a") in (1, 2)  # half-open, open
            # The same picture as a table, from the CLI.
            table = subprocess.run(
                [sys.executable, "-m", "gateway.cli", "backends", "--config", str(gw.config_path),
                 "--url", gw.url + "/admin/backends"], capture_output=True, text=True, timeout=60, check=True,
            ).stdout
            rows = {line.split()[0]: line for line in table.splitlines() if line.startswith(("a ", "b "))}
            assert "open" in rows["a"] and "closed" in rows["b"], table
            revived = emulator(tmp_path, "a-again", port=port)
            try:
                revived.wait_ready()

                def a_serves_again() -> bool:
                    raw = client.chat.completions.with_raw_response.create(**CHAT)
                    return raw.headers["x-gateway-backend"] == "a"

                assert wait_until(a_serves_again, timeout=10)
                assert admin(gw)["a"]["breaker"]["state"] == "closed"
            finally:
                revived.stop()


def test_a_429_is_retried_after_its_retry_after(tmp_path: Path) -> None:
    with emulators(tmp_path, "a") as backends:
        backends["a"].knobs(fault="http_429", retry_after_s=1)
        config = gateway_config(backends, [{"model": MODEL, "backends": ["a"],
                                            "retries": {"attempts": 2, "max_retry_after_s": 2}}])
        with gateway(config, tmp_path) as gw:
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                future = pool.submit(lambda: httpx.post(gw.base_url + "/chat/completions", json=CHAT, timeout=30))
                time.sleep(0.3)  # the first attempt has been refused by now
                backends["a"].knobs(fault="none")
                response = future.result()
            assert response.status_code == 200, response.text
            assert value(metrics(gw), "gateway_backend_attempt_failures_total", backend="a",
                         outcome="throttled") == 1
            # A wait longer than the route will give is not slept: the client gets it at once.
            backends["a"].knobs(fault="http_429", retry_after_s=30)
            response = httpx.post(gw.base_url + "/chat/completions", json=CHAT, timeout=30)
            assert_openai_error(response, 503)
            assert response.headers["retry-after"] == "30"


def _stream_text(gw: GatewayProcess) -> tuple[str, str, list[str | None]]:
    raw = gw.client().chat.completions.with_raw_response.create(
        **{**CHAT, "max_tokens": 24, "temperature": 0}, stream=True)
    chunks = [c for c in raw.parse() if c.choices]
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    return raw.headers["x-gateway-backend"], text, [c.choices[0].finish_reason for c in chunks]


def test_a_stream_cut_mid_way_is_resumed_on_another_backend(tmp_path: Path) -> None:
    with emulators(tmp_path, "a", "b") as backends:
        # Cache off: the second, identical request must reach the backend that cuts it.
        config = gateway_config(backends, [{"model": MODEL, "backends": ["a", "b"], "resume": True,
                                            "cache": {"mode": "off"}}])
        with gateway(config, tmp_path) as gw:
            _, whole, _ = _stream_text(gw)  # what an uninterrupted stream says
            backends["a"].knobs(fault="cut_stream", fault_after_tokens=5)
            backend, text, finish = _stream_text(gw)
            assert backend == "a"  # the stream began there
            assert text == whole  # and the client saw one uninterrupted answer
            assert finish[-1] is not None
            assert value(metrics(gw), "gateway_stream_resumes_total", route=MODEL, outcome="resumed") == 1


def test_without_resume_a_cut_stream_ends_with_an_error_event(tmp_path: Path) -> None:
    with emulators(tmp_path, "a", "b") as backends:
        backends["a"].knobs(fault="cut_stream", fault_after_tokens=5)
        with gateway(gateway_config(backends), tmp_path) as gw:
            with pytest.raises(openai.APIError):
                _stream_text(gw)


def test_two_gateways_on_one_redis_agree_on_breakers_and_in_flight(tmp_path: Path) -> None:
    with RedisServer() as redis, emulators(tmp_path, "a", "b") as backends:
        backends["a"].knobs(ttft_ms=4000)  # holds streams open
        routes = [{"model": MODEL, "backends": ["a", "b"]}, {"model": "b-first", "backends": ["b", "a"]}]
        config = gateway_config(backends, routes, redis={"url": redis.url}, routing={"breaker": {"open_s": 30}})
        with gateway(config, tmp_path, "gw1") as gw1, gateway(config, tmp_path, "gw2") as gw2:
            stop = threading.Event()

            def hold_stream() -> None:
                with httpx.stream("POST", gw1.base_url + "/chat/completions", json={**CHAT, "stream": True},
                                  timeout=30) as response:
                    for _ in response.iter_bytes():
                        if stop.is_set():
                            break

            holders = [threading.Thread(target=hold_stream) for _ in range(3)]
            for thread in holders:
                thread.start()
            try:
                held = wait_until(lambda: admin(gw2)["a"]["stats"]["in_flight"] == 3, timeout=15)
                assert held, admin(gw2)["a"]["stats"]
            finally:
                stop.set()
                for thread in holders:
                    thread.join(30)
            assert wait_until(lambda: admin(gw2)["a"]["stats"]["in_flight"] == 0, timeout=15)
            assert value(metrics(gw2), "gateway_shared_state_up") == 1

            backends["a"].knobs(ttft_ms=0)
            backends["b"].stop()
            raw = gw1.client().chat.completions.with_raw_response.create(**{**CHAT, "model": "b-first"})
            assert raw.headers["x-gateway-backend"] == "a"  # b refused and its breaker opened on gw1
            assert wait_until(lambda: admin(gw2)["b"]["breaker"]["state"] == "open", timeout=15)
            raw = gw2.client().chat.completions.with_raw_response.create(**{**CHAT, "model": "b-first"})
            assert raw.headers["x-gateway-backend"] == "a"
            # gw2 never tried b: it learned of the open breaker from gw1 through Redis.
            assert value(metrics(gw2), "gateway_backend_attempt_failures_total", backend="b") is None

            redis.kill()  # Redis goes away: routing carries on from each gateway's local state
            for _ in range(5):
                raw = gw1.client().chat.completions.with_raw_response.create(**CHAT)
                assert raw.headers["x-gateway-backend"] == "a"
            assert wait_until(lambda: value(metrics(gw1), "gateway_shared_state_up") == 0, timeout=15)
            assert "shared routing state unavailable" in gw1.log_tail(200)


def test_cost_policy_takes_the_cheapest_backend_meeting_the_slo_and_leaves_it_when_it_misses(
    tmp_path: Path,
) -> None:
    with emulators(tmp_path, "cheap", "premium") as backends:
        backends["cheap"].knobs(ttft_ms=20)
        backends["premium"].knobs(ttft_ms=5)
        config = gateway_config(backends, [{"model": MODEL, "backends": ["premium", "cheap"], "policy": "cost",
                                            "slo": {"ttft_ms": 300}}])
        prices = {"cheap": {"input_per_mtok": 0.1, "output_per_mtok": 0.2},
                  "premium": {"input_per_mtok": 10.0, "output_per_mtok": 30.0}}
        for backend in config["backends"]:
            backend["cost"] = prices[backend["name"]]
        with gateway(config, tmp_path) as gw:
            client = gw.client()
            reasons: list[str] = []

            def pick() -> str:
                raw = client.chat.completions.with_raw_response.create(**CHAT, stream=True)
                for _ in raw.parse():  # the whole stream: its first token is what the SLO is about
                    pass
                reasons.append(f"{raw.headers['x-gateway-backend']}: {raw.headers['x-gateway-route-reason']}")
                return str(raw.headers["x-gateway-backend"])

            for _ in range(6):
                pick()
            steady = [pick() for _ in range(20)]
            assert steady.count("cheap") >= 16, "\n".join(reasons)  # 2% exploring: 5+ of 20 has p < 1e-4
            # The policy's own picks say why (an exploring request, 2% of them, says "explore" instead).
            chosen = [r for r in reasons[-20:] if ": explore" not in r]
            assert chosen and "meets slo ttft<=300ms" in chosen[-1], "\n".join(reasons)
            backends["cheap"].knobs(ttft_ms=600)  # now it misses the SLO
            before = len(reasons)
            after = [pick() for _ in range(20)]
            # The first slow answer is enough: from then on cheap only gets the policy's rare
            # exploring request (2%), never its pick.
            first_slow = after.index("cheap") if "cheap" in after else -1
            assert first_slow <= 1, "\n".join(reasons)
            later = reasons[before + first_slow + 1:]
            assert all(r.startswith("premium: cost") or r.startswith("cheap: explore") for r in later), \
                "\n".join(reasons)
            # Exploring is random at 2%: 3 of 19 happened in CI (p ~ 0.7%); 5 or more has p < 1e-4.
            assert sum(r.startswith("premium") for r in later) >= len(later) - 4, "\n".join(reasons)


def test_prefix_affinity_keeps_each_shared_prefix_on_one_backend_without_overloading_any(tmp_path: Path) -> None:
    """4 backends, 8 long shared system prompts (documents), each asked about many times."""
    names = ("p1", "p2", "p3", "p4")
    with emulators(tmp_path, *names) as backends:
        config = gateway_config(backends, [{"model": MODEL, "backends": list(names), "policy": "prefix_affinity"}])
        with gateway(config, tmp_path) as gw:
            client = gw.client()
            documents = [f"Document {d}: " + " ".join(f"fact-{d}-{i}" for i in range(300)) for d in range(8)]
            served: dict[int, collections.Counter[str]] = {d: collections.Counter() for d in range(8)}
            for turn in range(12):
                for d, document in enumerate(documents):
                    raw = client.chat.completions.with_raw_response.create(
                        model=MODEL, max_tokens=2,
                        messages=[{"role": "system", "content": document},
                                  {"role": "user", "content": f"question {turn} about document {d}"}])
                    served[d][raw.headers["x-gateway-backend"]] += 1
            for d, counts in served.items():
                assert counts.most_common(1)[0][1] >= 0.9 * sum(counts.values()), (d, counts)
            load = collections.Counter()
            for counts in served.values():
                load.update(counts)
            fair = sum(load.values()) / len(names)
            assert max(load.values()) <= 1.5 * fair, load
