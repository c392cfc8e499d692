"""The Dockerfile and .dockerignore, read without a container engine (see dockerfile_check.py)."""

from __future__ import annotations

import http.server
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from .dockerfile_check import (
    dockerfile_problems,
    dockerignore_excludes,
    env_of,
    exec_form,
    healthcheck_command,
    stages,
    user_id,
)

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
DOCKERIGNORE = (ROOT / ".dockerignore").read_text()


def test_the_dockerfile_has_no_problems() -> None:
    assert dockerfile_problems(DOCKERFILE, DOCKERIGNORE) == []


def test_the_reader_joins_continuations_and_drops_comments() -> None:
    text = "ARG BASE=python:3.11-slim\nFROM ${BASE} AS build\nRUN a \\\n# note\n && b\nFROM $BASE\nUSER 7:7\n"
    build, final = stages(text)
    assert (build.base, build.name, final.base, final.name) == ("python:3.11-slim", "build", "python:3.11-slim", None)
    assert [(i.keyword, i.args, i.line) for i in build.instructions] == [("RUN", "a && b", 3)]
    assert user_id(final.instructions[0].args) == 7


def test_both_stages_start_from_python_311_slim_bookworm() -> None:
    assert [s.base for s in stages(DOCKERFILE)] == ["python:3.11-slim-bookworm"] * 2


def test_the_image_serves_from_the_configured_file_as_a_non_root_uid() -> None:
    final = stages(DOCKERFILE)[-1]
    env = env_of(final)
    # The default config is one of the example configs the final stage copies into WORKDIR /app.
    assert env["GATEWAY_CONFIG"].startswith("/app/configs/")
    assert (ROOT / "configs" / Path(env["GATEWAY_CONFIG"]).name).is_file()
    user = final.last("USER")
    assert user is not None and user_id(user.args) == 10001


@pytest.mark.parametrize(("mutation", "problem"), [
    (lambda t: t.replace("USER 10001:10001\n", ""), "no USER"),
    (lambda t: t.replace("USER 10001:10001", "USER gateway"), "not numeric"),
    (lambda t: t.replace("USER 10001:10001", "USER 0"), "USER is root"),
    (lambda t: t.replace("FROM ${PYTHON_IMAGE} AS runtime", "FROM ${PYTHON_IMAGE} AS build2"), None),
    (lambda t: "\n".join(line for line in t.splitlines() if not line.startswith("FROM ${PYTHON_IMAGE} AS runtime")),
     "not multi-stage"),
    (lambda t: t.replace("HEALTHCHECK", "# HEALTHCHECK").replace("  CMD [\"python\"", "# CMD [\"python\""),
     "no HEALTHCHECK"),
    (lambda t: t.replace("8080/health", "8080/ready"), "does not ask /health"),
    (lambda t: t.replace("EXPOSE 8080", "EXPOSE 9090"), "does not ask /health on an exposed port"),
    (lambda t: t.replace('ENTRYPOINT ["gateway"]', "ENTRYPOINT gateway"), "exec form"),
    (lambda t: t.replace('CMD ["serve"]', 'CMD ["check-config"]'), "does not run `gateway serve`"),
    (lambda t: t.replace("GATEWAY_HOST=0.0.0.0", "GATEWAY_HOST=127.0.0.1"), "GATEWAY_HOST"),
    (lambda t: t.replace("COPY --from=build /opt/venv /opt/venv", "COPY . /opt/venv"), "copies nothing"),
])
def test_a_broken_dockerfile_is_caught(mutation: Callable[[str], str], problem: str | None) -> None:
    broken = mutation(DOCKERFILE)
    assert broken != DOCKERFILE
    problems = dockerfile_problems(broken, DOCKERIGNORE)
    if problem is None:  # renaming a stage is harmless
        assert problems == []
    else:
        assert any(problem in p for p in problems), problems


def test_dockerignore_keeps_out_what_the_image_does_not_need_and_nothing_it_copies() -> None:
    patterns = [line for line in DOCKERIGNORE.splitlines() if line and not line.startswith("#")]
    for path in (".git/HEAD", ".venv/bin/python", ".venv-vllm/x", "gateway/__pycache__/app.cpython-311.pyc",
                 "tests/unit/test_app.py", "redis-8.1.0-py3-none-any.whl", ".cache/models/x.gguf"):
        assert dockerignore_excludes(patterns, path), path
    for path in ("pyproject.toml", "README.md", "gateway/app.py", "plugins/vllm/backend.py", "configs/local.yaml"):
        assert not dockerignore_excludes(patterns, path), path
    ignoring_configs = dockerfile_problems(DOCKERFILE, DOCKERIGNORE + "configs\n")
    assert any("COPY configs: excluded from the build context" in p for p in ignoring_configs)
    assert not dockerignore_excludes(["tests", "!tests"], "tests/x.py")  # the last match wins


def test_the_exposed_port_is_the_port_of_every_deployment_config() -> None:
    expose = stages(DOCKERFILE)[-1].last("EXPOSE")
    assert expose is not None
    port = int(expose.args.split("/")[0])
    for name in ("gateway.yaml", "gateway-gpu.yaml"):
        assert yaml.safe_load((ROOT / "deploy" / "compose" / name).read_text())["server"]["port"] == port
    config_map = yaml.safe_load((ROOT / "deploy" / "k8s" / "configmap.yaml").read_text())
    assert yaml.safe_load(config_map["data"]["gateway.yaml"])["server"]["port"] == port
    deployment = yaml.safe_load((ROOT / "deploy" / "k8s" / "deployment.yaml").read_text())
    assert deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] == port


def test_the_compose_replicas_run_the_same_health_command_as_the_image() -> None:
    command = healthcheck_command(stages(DOCKERFILE)[-1])
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert compose["x-gateway"]["healthcheck"]["test"] == ["CMD", *(command or [])]


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[tuple[int, type[_Health]]]:
    handler = type("Handler", (_Health,), {"status": 200})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], handler
    server.shutdown()
    server.server_close()


def _run_healthcheck(port: int) -> int:
    command = healthcheck_command(stages(DOCKERFILE)[-1])
    assert command is not None and command[0] == "python"
    argv = [sys.executable, *(arg.replace("127.0.0.1:8080", f"127.0.0.1:{port}") for arg in command[1:])]
    return subprocess.run(argv, capture_output=True, timeout=30).returncode


def test_the_health_command_passes_on_200_and_fails_on_503_or_no_listener(
        health_server: tuple[int, type[_Health]]) -> None:
    port, handler = health_server
    assert _run_healthcheck(port) == 0
    handler.status = 503
    assert _run_healthcheck(port) != 0
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]
    assert _run_healthcheck(free) != 0


def test_exec_form_rejects_a_shell_string_and_malformed_arrays() -> None:
    assert exec_form("gateway serve") is None
    assert exec_form('["gateway", "serve"]') == ["gateway", "serve"]
    with pytest.raises(ValueError):
        exec_form('["gateway", 1]')
