"""Experiments end to end: two gateway processes on one real redis-server in front of two vLLM emulator
processes, the candidate emulator set 20% slower. The report both replicas give finds it slower with the
right sign; feedback given to one replica joins the arm the other served; an auto-stop made by one replica
is obeyed by the other; the CLI prints the report and plots it; a shadow mirrors without changing answers.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_process import EmulatorProcess, GatewayProcess, running
from redis_server import RedisServer

MODEL = "emulated"
# Per-token pacing, so the candidate is 20% slower on every latency: TTFT, time per token and end to end.
CONTROL_PACE = {"ttft_ms": 20, "tpot_ms": 5}
CANDIDATE_PACE = {"ttft_ms": 24, "tpot_ms": 6}


@pytest.fixture(scope="module")
def emulators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmulatorProcess, EmulatorProcess]]:
    workdir = tmp_path_factory.mktemp("experiment-emulators")
    control = EmulatorProcess("plugins.vllm.emulator", workdir / "control.log", ["--served-model-name", MODEL],
                              name="control")
    candidate = EmulatorProcess("plugins.vllm.emulator", workdir / "candidate.log",
                                ["--served-model-name", MODEL], name="candidate")
    with running(control), running(candidate):
        control.wait_ready()
        candidate.wait_ready()
        yield control, candidate


@pytest.fixture(autouse=True)
def _paced(emulators: tuple[EmulatorProcess, EmulatorProcess]) -> None:
    control, candidate = emulators
    control.knobs(fault="none", **CONTROL_PACE)
    candidate.knobs(fault="none", **CANDIDATE_PACE)


def config(emulators: tuple[EmulatorProcess, EmulatorProcess], redis_url: str | None,
           experiment: dict[str, Any] | None = None, shadow: dict[str, Any] | None = None) -> dict[str, Any]:
    control, candidate = emulators
    route: dict[str, Any] = {"model": MODEL, "backends": ["fast"], "cache": {"mode": "off"}}
    if experiment is not None:
        route["experiment"] = {"name": "speed", "arms": {"control": "fast", "candidate": "slow"}, **experiment}
    if shadow is not None:
        route["shadow"] = {"name": "mirror", "target": "slow", **shadow}
    return {
        "backends": [{"name": "fast", "plugin": "vllm", "model": MODEL, "url": control.url + "/v1"},
                     {"name": "slow", "plugin": "vllm", "model": MODEL, "url": candidate.url + "/v1"}],
        "routes": [route],
        "server": {"health_interval_s": 60},
        "experiments": {"check_interval_s": 0.5, "flush_interval_s": 0.05},
        **({"redis": {"url": redis_url}} if redis_url else {}),
    }


@contextlib.contextmanager
def gateways(cfg: dict[str, Any], workdir: Path, n: int) -> Iterator[list[GatewayProcess]]:
    with contextlib.ExitStack() as stack:
        started = []
        for i in range(n):
            process = GatewayProcess(cfg, workdir / f"gw{i}", name=f"gateway-{i}")
            stack.enter_context(running(process))
            started.append(process)
        for process in started:
            process.wait_ready()
        yield started


def chat(user: str, *, stream: bool = False, max_tokens: int = 8) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": f"tell {user} a story"}], "user": user,
            "max_tokens": max_tokens, "stream": stream}


def send(gw: GatewayProcess, body: dict[str, Any], **headers: str) -> httpx.Response:
    response = httpx.post(gw.url + "/v1/chat/completions", json=body, headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    return response


def report(gw: GatewayProcess, name: str = "speed") -> dict[str, Any]:
    response = httpx.get(f"{gw.url}/admin/experiments/{name}", timeout=30)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def test_a_20_percent_slower_candidate_is_found_by_both_replicas_and_feedback_crosses_them(
    emulators: tuple[EmulatorProcess, EmulatorProcess], redis_server: RedisServer, tmp_path: Path
) -> None:
    cfg = config(emulators, redis_server.url, {"sticky_by": "user", "target_n": 200})
    with gateways(cfg, tmp_path, 2) as (gw1, gw2):
        served: dict[str, tuple[str, str]] = {}  # request id -> (arm, backend)

        def one(i: int) -> None:
            gw = (gw1, gw2)[i % 2]
            response = send(gw, chat(f"user-{i % 150}", stream=i % 3 == 0), **{"x-request-id": f"r-{i}"})
            name, _, arm = response.headers["x-gateway-experiment"].partition("=")
            assert name == "speed"
            served[f"r-{i}"] = (arm, response.headers["x-gateway-backend"])

        with ThreadPoolExecutor(6) as pool:
            list(pool.map(one, range(450)))
        assert {arm: backend for arm, backend in served.values()} == {"control": "fast", "candidate": "slow"}
        # Feedback to the *other* replica than the one that served: the ledger is shared through Redis.
        time.sleep(0.3)  # past one flush interval of both replicas
        for i in range(0, 40):
            arm, _ = served[f"r-{i}"]
            answer = httpx.post((gw2, gw1)[i % 2].url + "/v1/feedback",
                                json={"request_id": f"r-{i}", "score": 1 if arm == "control" else 0}, timeout=10)
            assert answer.status_code == 200, answer.text
            assert answer.json()["arm"] == arm
        time.sleep(0.3)
        first, second = report(gw1), report(gw2)
        for body in (first, second):
            assert body["arms"]["control"]["requests"] + body["arms"]["candidate"]["requests"] == 450
            assert body["srm"]["alarm"] is False
            e2e = body["comparisons"]["candidate"]["e2e"]
            assert e2e["conclusive"] and e2e["winner"] == "control", e2e
            assert e2e["difference"] > 0 and 0.08 < e2e["relative"] < 0.35, e2e
            ttft = body["comparisons"]["candidate"]["ttft"]
            assert ttft["difference"] > 0, ttft
            assert "slower" in body["verdict"]
            feedback = {arm: body["arms"][arm]["feedback"] for arm in ("control", "candidate")}
            given = {arm: sum(1 for i in range(40) if served[f"r-{i}"][0] == arm) for arm in feedback}
            assert {arm: f["n"] for arm, f in feedback.items()} == given
        assert first["arms"]["candidate"]["latency"] == second["arms"]["candidate"]["latency"]


def test_an_auto_stop_made_by_one_replica_is_obeyed_by_the_other_and_the_cli_reports_it(
    emulators: tuple[EmulatorProcess, EmulatorProcess], redis_server: RedisServer, tmp_path: Path
) -> None:
    cfg = config(emulators, redis_server.url, {"auto_stop": True, "min_samples": 60, "target_n": 100,
                                               "on_stop": "winner"})
    with gateways(cfg, tmp_path, 2) as (gw1, gw2):
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(lambda i: send(gw1, chat(f"u{i}")), range(300)))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not report(gw2)["stopped"]:
            time.sleep(0.2)  # gw1's checker stops it; gw2's finds the stop in Redis
        time.sleep(1.2)  # two check intervals: both replicas have read it
        for gw in (gw1, gw2):
            response = send(gw, chat("after the stop"))
            assert response.headers["x-gateway-experiment"] == "speed=control; stopped"
            assert response.headers["x-gateway-backend"] == "fast"
        body = report(gw2)
        assert body["stopped"]["serve"] == "control" and "e2e" in body["stopped"]["reason"]
        assert len(body["history"]) >= 1
        plot = tmp_path / "speed.png"
        result = subprocess.run(
            [sys.executable, "-m", "gateway.cli", "experiments", "report", "speed", "--url", gw2.url,
             "--plot", str(plot)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert "control" in result.stdout and "candidate" in result.stdout and "slower" in result.stdout
        assert plot.read_bytes().startswith(b"\x89PNG")
        unknown = subprocess.run([sys.executable, "-m", "gateway.cli", "experiments", "report", "nope", "--url",
                                  gw2.url], capture_output=True, text=True, timeout=60)
        assert unknown.returncode == 1 and "speed" in unknown.stderr


def test_a_shadow_mirrors_without_changing_what_users_get(
    emulators: tuple[EmulatorProcess, EmulatorProcess], tmp_path: Path
) -> None:
    candidate = emulators[1]
    with gateways(config(emulators, None), tmp_path / "plain", 1) as (plain,):
        expected = [send(plain, chat(f"s{i}", stream=i % 2 == 0)).content for i in range(10)]
    candidate.knobs(fault="none", ttft_ms=300, tpot_ms=5)  # a slow candidate
    with gateways(config(emulators, None, shadow={"sample": 1.0}), tmp_path / "shadow", 1) as (gw,):
        mirrored_before = candidate.requests_total()
        got = []
        for i in range(10):
            response = send(gw, chat(f"s{i}", stream=i % 2 == 0))
            assert "x-gateway-experiment" not in response.headers and response.headers["x-gateway-backend"] == "fast"
            got.append(response.content)
        assert [strip_ids(b) for b in got] == [strip_ids(b) for b in expected]
        candidate.knobs(fault="http_500")
        failing = send(gw, chat("s1"))
        assert strip_ids(failing.content) == strip_ids(expected[1])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and report(gw, "mirror")["arms"]["candidate"]["requests"] < 11:
            time.sleep(0.1)
        body = report(gw, "mirror")
        assert candidate.requests_total() - mirrored_before >= 10
        arm = body["arms"]["candidate"]
        assert arm["requests"] == 11 and arm["errors"] == 1
        assert arm["agreement"]["n"] == 10 and arm["agreement"]["exact_rate"] == 1.0
        assert body["comparisons"]["candidate"]["ttft"]["difference"] > 0.2  # the mirror's own latency, not the user's


def strip_ids(raw: bytes) -> bytes:
    """A response without what differs on every call: ids and creation times."""
    return re.sub(rb'"(id|created|system_fingerprint)":\s*("[^"]*"|\d+)', b"", raw)
