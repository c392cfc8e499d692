"""A third-party plugin, installed with pip into a throwaway venv, served and called with the openai SDK.

The venv is made with `--system-site-packages`; since the gateway itself lives in this
project's venv (not the base interpreter's site-packages), a `.pth` file adds the project
venv as a site directory, so the new venv sees the gateway and its dependencies while
anything installed lands only in the new venv.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openai import OpenAI

from gateway.plugins import load_backend_registry

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "gateway_echo_plugin"
ROOT = Path(__file__).resolve().parents[2]

CONFIG = """\
server: {host: 127.0.0.1, port: 1, health_interval_s: 60}
backends:
  - {name: echo1, plugin: echo, model: echo-model, options: {prefix: "echo: "}}
routes:
  - {model: "*", backends: [echo1]}
"""


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, **kwargs)  # type: ignore[call-overload, no-any-return]


def client(base_url: str) -> OpenAI:
    """The official SDK, ignoring any proxy settings in the environment: the gateway is on 127.0.0.1."""
    return OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=30,
                  http_client=httpx.Client(trust_env=False))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def plugin_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The python of a fresh venv with the echo plugin pip-installed into it (and nowhere else)."""
    base = tmp_path_factory.mktemp("echo-plugin")
    venv = base / "venv"
    made = run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)])
    assert made.returncode == 0, made.stderr
    python = venv / "bin" / "python"
    purelib = run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
    site_dir = Path(purelib.stdout.strip())
    project_site = sysconfig.get_paths()["purelib"]
    (site_dir / "_gateway_project_venv.pth").write_text(f"import site; site.addsitedir({project_site!r})\n")
    # Build from a copy, so nothing a build writes lands in the repository.
    source = base / "src"
    shutil.copytree(FIXTURE, source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
    installed = run([
        str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--no-build-isolation",
        "--disable-pip-version-check", "--no-input", str(source),
    ])
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert (site_dir / "gateway_echo_plugin" / "__init__.py").is_file()
    return python


@pytest.fixture(scope="module")
def echo_gateway(plugin_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`gateway serve` in the plugin's venv with a config naming `plugin: echo`; yields its base URL."""
    base = tmp_path_factory.mktemp("echo-gateway")
    config = base / "gateway.yaml"
    config.write_text(CONFIG)
    port = free_port()
    log = (base / "gateway.log").open("w+")
    process = subprocess.Popen(
        [str(plugin_venv), "-m", "gateway.cli", "serve", "--config", str(config), "--port", str(port),
         "--log-level", "warning"],
        stdout=log, stderr=subprocess.STDOUT, cwd=base, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"gateway exited early:\n{(base / 'gateway.log').read_text()}"
            with contextlib.suppress(OSError):
                with opener.open(f"{url}/ready", timeout=2) as response:
                    if response.status == 200:
                        break
            assert time.monotonic() < deadline, f"gateway not ready:\n{(base / 'gateway.log').read_text()}"
            time.sleep(0.1)
        yield url
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        log.close()


def test_gateway_backends_lists_the_installed_plugin(plugin_venv: Path) -> None:
    result = run([str(plugin_venv), "-m", "gateway.cli", "backends"], cwd=ROOT)
    assert result.returncode == 0, result.stderr
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[1:] if line.strip()}
    assert set(rows) >= {"echo", "openai_compat", "llamacpp"}
    assert "gateway_echo_plugin.backend.EchoBackend" in rows["echo"]
    assert "(plugin echo)" in rows["echo"]


def test_check_config_runs_the_plugins_validator(plugin_venv: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(CONFIG)
    result = run([str(plugin_venv), "-m", "gateway.cli", "check-config", str(good)])
    assert result.returncode == 0, result.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(CONFIG.replace('options: {prefix: "echo: "}', 'url: "http://h:1", options: {volume: 11}'))
    result = run([str(plugin_venv), "-m", "gateway.cli", "check-config", str(bad)])
    assert result.returncode == 1
    assert "backends[0].url: the echo backend has no server; leave url out" in result.stderr
    assert "backends[0].options: unknown option(s): volume" in result.stderr


def test_chat_through_the_plugin_with_the_openai_sdk(echo_gateway: str) -> None:
    raw = client(echo_gateway).chat.completions.with_raw_response.create(
        model="any-model",
        messages=[{"role": "system", "content": "ignored"}, {"role": "user", "content": "first"},
                  {"role": "assistant", "content": "ok"}, {"role": "user", "content": "hello there"}],
    )
    assert raw.headers["x-gateway-backend"] == "echo1"
    completion = raw.parse()
    assert completion.object == "chat.completion"
    assert completion.model == "any-model"
    assert completion.choices[0].message.content == "echo: hello there"
    assert completion.choices[0].finish_reason == "stop"


def test_stream_through_the_plugin_with_the_openai_sdk(echo_gateway: str) -> None:
    with client(echo_gateway).chat.completions.with_streaming_response.create(
        model="streamer",
        messages=[{"role": "user", "content": [{"type": "text", "text": "one two three"}]}],
        stream=True,
        stream_options={"include_usage": True},
    ) as response:
        assert response.headers["x-gateway-backend"] == "echo1"
        assert response.headers["content-type"].startswith("text/event-stream")
        chunks = list(response.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: one two three"
    assert {c.model for c in chunks} == {"streamer"}
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert len([c for c in chunks if c.choices]) > 3  # really streamed in pieces


def test_the_plugin_left_no_trace_in_the_project_venv(plugin_venv: Path) -> None:
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.distribution("gateway-echo-plugin")
    assert importlib.util.find_spec("gateway_echo_plugin") is None
    assert "echo" not in load_backend_registry().types
    listed = run([sys.executable, "-m", "pip", "list", "--disable-pip-version-check", "--format=freeze"])
    assert "gateway-echo-plugin" not in listed.stdout.lower().replace("_", "-")
