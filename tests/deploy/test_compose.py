"""compose.yaml and deploy/compose: the Compose Specification's schema, the stack's own rules, the
gateway configs it mounts, and nginx's own `nginx -t` on the balancer's config (see compose_check.py)."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gateway.config import ConfigError

from .compose_check import (
    GPU_PROFILES,
    compose_problems,
    compose_schema,
    gateway_config,
    image_repository,
    interpolate,
    load_compose,
    nginx_upstreams,
    schema_errors,
)

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_TEXT = (ROOT / "compose.yaml").read_text()
GPU_ENV = {"GATEWAY_CONFIG_FILE": "gateway-gpu.yaml"}


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return compose_schema()


@pytest.mark.parametrize("env", [{}, GPU_ENV], ids=["cpu", "gpu"])
def test_compose_file_follows_the_compose_specification(schema: dict[str, Any], env: dict[str, str]) -> None:
    assert schema_errors(load_compose(COMPOSE_TEXT, env), schema) == []


@pytest.mark.parametrize(("mutation", "problem"), [
    (lambda d: d["services"]["redis"].update(healtcheck={"test": ["CMD", "true"]}), "healtcheck"),
    (lambda d: d["services"]["lb"].update(ports=[{"target": 8080, "protocl": "tcp"}]), "services.lb.ports.0"),
    (lambda d: d["services"]["vllm"]["deploy"]["resources"]["reservations"]["devices"][0].update(
        capabilities="gpu"), "capabilities"),
    (lambda d: d["services"]["vllm"].update(ipc=["host"]), "services.vllm.ipc"),
    (lambda d: d["services"]["gateway-1"].update(depends_on={"redis": {"condition": "when_ready"}}), "condition"),
    (lambda d: d.update(service={}), "service"),
])
def test_the_schema_rejects_what_compose_would(
        schema: dict[str, Any], mutation: Callable[[dict[str, Any]], None], problem: str) -> None:
    doc = load_compose(COMPOSE_TEXT)
    mutation(doc)
    errors = schema_errors(doc, schema)
    assert errors and any(problem in e for e in errors), errors


@pytest.mark.parametrize("env", [{}, GPU_ENV], ids=["cpu", "gpu"])
def test_the_stack_has_no_problems(env: dict[str, str]) -> None:
    assert compose_problems(load_compose(COMPOSE_TEXT, env), ROOT) == []


@pytest.mark.parametrize(("mutation", "problem"), [
    (lambda d: d["services"]["gateway-2"]["depends_on"].update(redsi={"condition": "service_started"}),
     "names no service 'redsi'"),
    (lambda d: d["services"]["ollama"].pop("healthcheck"), "ollama: no healthcheck"),
    (lambda d: d["services"]["redis"].update(healthcheck={"disable": True}), "not a one-shot job"),
    (lambda d: d["services"]["redis"].update(image="bitnami/redis:7.4"), "not a server's official image"),
    (lambda d: d["services"]["tgi"].pop("profiles"), "tgi: a GPU server outside the GPU profiles"),
    (lambda d: d["services"]["triton"].update(profiles=["gpu", "extras"]), "outside the GPU profiles"),
    (lambda d: d["services"]["vllm"].pop("deploy"), "vllm: a GPU server that reserves no NVIDIA GPU"),
    (lambda d: d["services"]["ollama"].update(profiles=["gpu"]), "a CPU service in GPU profiles"),
    (lambda d: d["services"].pop("gateway-2"), "scale-out needs 2 or more"),
    (lambda d: d["services"]["gateway-2"].update(
        environment={**d["services"]["gateway-2"]["environment"], "GATEWAY_CONFIG": "/etc/gateway/missing.yaml"}),
     "is not a mounted repository file"),
    (lambda d: d["services"]["gateway-1"].update(build={"context": "deploy"}), "does not exist"),
    (lambda d: d["services"]["gateway-1"].update(stop_grace_period="20s"), "does not outlast server.drain_s"),
    (lambda d: d["services"]["gateway-1"]["depends_on"].pop("redis"), "does not wait for a healthy redis"),
    (lambda d: d["services"]["gateway-1"].update(healthcheck={"test": ["CMD", "true"]}), "does not ask /health"),
    (lambda d: d["services"]["lb"]["depends_on"].pop("gateway-2"), "does not wait for a healthy gateway-2"),
    (lambda d: d["services"]["lb"].update(ports=["8080:80"]), "nginx listens on [8080]"),
    (lambda d: d["services"]["lb"].update(image="traefik:v3"), "expected one nginx load balancer"),
    (lambda d: d["services"]["llamacpp"]["healthcheck"].update(
        test=["CMD", "curl", "-fsS", "http://127.0.0.1:8081/health"]), "uses port 8080, but llamacpp listens"),
    (lambda d: d["services"].pop("llamacpp") and d["services"]["lb"], "not a service of the stack"),
])
def test_a_broken_stack_is_caught(mutation: Callable[[dict[str, Any]], object], problem: str) -> None:
    doc = copy.deepcopy(load_compose(COMPOSE_TEXT))
    mutation(doc)
    problems = compose_problems(doc, ROOT)
    assert any(problem in p for p in problems), problems


def test_replicas_pointing_at_different_redis_servers_are_caught(tmp_path: Path) -> None:
    # A copy of deploy/compose where the second replica's config names another Redis.
    mounted = tmp_path / "deploy" / "compose"
    shutil.copytree(ROOT / "deploy" / "compose", mounted)
    other = (mounted / "gateway.yaml").read_text().replace("redis://redis:6379/0", "redis://redis:6379/1")
    (mounted / "other.yaml").write_text(other)
    (tmp_path / "Dockerfile").write_text("")
    doc = load_compose(COMPOSE_TEXT)
    doc["services"]["gateway-2"]["environment"]["GATEWAY_CONFIG"] = "/etc/gateway/other.yaml"
    assert any("do not share one Redis" in p for p in compose_problems(doc, tmp_path))


def test_a_nginx_upstream_that_misses_a_replica_is_caught(tmp_path: Path) -> None:
    shutil.copytree(ROOT / "deploy", tmp_path / "deploy")
    (tmp_path / "Dockerfile").write_text("")
    conf = tmp_path / "deploy" / "compose" / "nginx.conf"
    conf.write_text(conf.read_text().replace("server gateway-2:8080", "server gateway-3:8080"))
    conf_off = conf.read_text().replace("proxy_buffering off;", "proxy_buffering on;")
    problems = compose_problems(load_compose(COMPOSE_TEXT), tmp_path)
    assert any("are not the replicas" in p for p in problems), problems
    conf.write_text(conf_off)
    assert any("proxy_buffering is not off" in p for p in compose_problems(load_compose(COMPOSE_TEXT), tmp_path))


def test_the_default_stack_needs_no_gpu_service() -> None:
    """`docker compose up` without a profile: the replicas' config names only services that start."""
    doc = load_compose(COMPOSE_TEXT)
    always_on = {name for name, s in doc["services"].items() if not s.get("profiles")}
    config = gateway_config(ROOT / "deploy" / "compose" / "gateway.yaml", {})
    hosts = {re.sub(r"^https?://([^:/]+).*$", r"\1", b.url or "") for b in config.backends}
    assert hosts <= always_on
    gpu = {name for name, s in doc["services"].items() if set(s.get("profiles", [])) & GPU_PROFILES}
    assert gpu == {"vllm", "tgi", "triton"}
    gpu_config = gateway_config(ROOT / "deploy" / "compose" / "gateway-gpu.yaml", {})
    assert {re.sub(r"^https?://([^:/]+).*$", r"\1", b.url or "") for b in gpu_config.backends} == hosts | gpu


@pytest.mark.parametrize("name", ["gateway.yaml", "gateway-gpu.yaml"])
def test_compose_gateway_configs_pass_the_gateways_own_validation(name: str) -> None:
    config = gateway_config(ROOT / "deploy" / "compose" / name, {"GATEWAY_HOST": "0.0.0.0"})
    assert config.server.host == "0.0.0.0"
    assert config.redis is not None and config.redis.url == "redis://redis:6379/0"
    # Without GATEWAY_HOST the config binds loopback only, which is why the image sets it.
    assert gateway_config(ROOT / "deploy" / "compose" / name, {}).server.host == "127.0.0.1"


def test_a_broken_compose_gateway_config_is_refused(tmp_path: Path) -> None:
    text = (ROOT / "deploy" / "compose" / "gateway-gpu.yaml").read_text()
    broken = tmp_path / "gateway.yaml"
    broken.write_text(text.replace("mode: triton", "mode: tritonn").replace("backends: [vllm, tgi, triton]",
                                                                           "backends: [vllm, tgi, trition]", 1))
    with pytest.raises(ConfigError) as info:
        gateway_config(broken, {})
    assert any("options.mode" in p for p in info.value.problems)
    assert any("unknown backend 'trition'" in p for p in info.value.problems)


def test_interpolation_follows_compose() -> None:
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate("${SET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d} ${UNSET} $SET $$SET", env) == "x d  d  x $SET"
    assert image_repository("nvcr.io/nvidia/tritonserver:25.06-trtllm-python-py3") == "nvcr.io/nvidia/tritonserver"
    assert image_repository("localhost:5000/gateway") == "localhost:5000/gateway"
    assert image_repository("redis:7.4-alpine@sha256:abc") == "redis"


def test_the_triton_image_is_the_tensorrt_llm_build() -> None:
    image = load_compose(COMPOSE_TEXT)["services"]["triton"]["image"]
    assert re.fullmatch(r"nvcr\.io/nvidia/tritonserver:\d{2}\.\d{2}-trtllm-python-py3", image), image


def _nginx() -> str | None:
    local = ROOT / ".cache" / "tools" / "nginx" / "usr" / "sbin" / "nginx"
    return shutil.which("nginx") or (str(local) if local.is_file() else None)


def _nginx_test(conf_text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """`nginx -t` on the file as the nginx image includes it: inside http {}, with the replicas'
    names pointed at loopback (nginx resolves upstream names while it checks)."""
    nginx = _nginx()
    assert nginx is not None
    for name in nginx_upstreams(conf_text).get("gateway", []):
        conf_text = conf_text.replace(f"server {name}", "server 127.0.0.1:" + name.rsplit(":", 1)[1])
    (tmp_path / "default.conf").write_text(conf_text)
    temp_paths = " ".join(f"{kind}_temp_path {tmp_path}/{kind};" for kind in ("proxy", "fastcgi", "uwsgi", "scgi"))
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log stderr;\nevents {{}}\n"
        f"http {{ access_log off; client_body_temp_path {tmp_path}/body; {temp_paths}\n"
        f"include {tmp_path}/default.conf; }}\n")
    return subprocess.run([nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", "stderr"],
                          capture_output=True, text=True, timeout=30)


@pytest.mark.skipif(_nginx() is None, reason="no nginx binary (scripts/setup --test unpacks Debian's)")
def test_nginx_accepts_the_balancer_config_and_rejects_a_broken_one(tmp_path: Path) -> None:
    conf = (ROOT / "deploy" / "compose" / "nginx.conf").read_text()
    good = _nginx_test(conf, tmp_path)
    assert good.returncode == 0, good.stderr
    bad = _nginx_test(conf.replace("proxy_buffering off;", "proxy_buffering of;"), tmp_path)
    assert bad.returncode != 0 and "proxy_buffering" in bad.stderr


def _docker_compose() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30).returncode == 0


@pytest.mark.skipif(not _docker_compose(), reason="`docker compose` is not installed here")
@pytest.mark.parametrize("profile", [[], ["--profile", "gpu"]], ids=["cpu", "gpu"])
def test_docker_compose_accepts_the_file(profile: list[str]) -> None:
    result = subprocess.run(["docker", "compose", "-f", str(ROOT / "compose.yaml"), *profile, "config", "-q"],
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
