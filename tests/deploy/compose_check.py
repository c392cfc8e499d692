"""compose.yaml checked without a container engine: the Compose Specification's JSON schema, and the
things a schema cannot say about this stack (replicas sharing Redis, nginx naming the replicas,
GPU servers only in GPU profiles, official images, backends that exist in the stack).

The schema comes from the `check-jsonschema` package (the `test` extra), which ships the Compose
Specification's `compose_spec.json` among its vendored schemas.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import yaml

from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.plugins import load_backend_registry

GPU_PROFILES = frozenset({"gpu", "vllm", "tgi", "trtllm"})
# Each server's own image, as its project publishes it (repository without the tag).
OFFICIAL_IMAGES = frozenset({
    "redis", "nginx", "ollama/ollama", "ghcr.io/ggml-org/llama.cpp",
    "vllm/vllm-openai", "ghcr.io/huggingface/text-generation-inference", "nvcr.io/nvidia/tritonserver",
})
GPU_IMAGES = frozenset({"vllm/vllm-openai", "ghcr.io/huggingface/text-generation-inference",
                        "nvcr.io/nvidia/tritonserver"})

_VAR = re.compile(r"\$(?:(\$)|\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}|([A-Za-z_][A-Za-z0-9_]*))")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)")


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's variable substitution: `${VAR}`, `${VAR:-default}`, `${VAR-default}`, `$VAR`, `$$`."""
    if isinstance(value, str):
        def one(m: re.Match[str]) -> str:
            if m.group(1):
                return "$"
            name = m.group(2) or m.group(5)
            op, default = m.group(3), m.group(4) or ""
            current = env.get(name)
            if op == ":-" and not current:
                return default
            if op == "-" and current is None:
                return default
            return current or ""
        return _VAR.sub(one, value)
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    return value


def load_compose(text: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose file as Compose reads it: YAML (anchors and merge keys resolved), then substitution."""
    doc = interpolate(yaml.safe_load(text), env or {})
    assert isinstance(doc, dict)
    return doc


def compose_schema() -> dict[str, Any]:
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema: dict[str, Any] = json.loads(schema_file.read_text(encoding="utf-8"))
    return schema


def schema_errors(doc: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """Every place the document breaks the Compose Specification, as `path: message`."""
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [f"{'.'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(doc)]


def image_repository(image: str) -> str:
    """`nvcr.io/nvidia/tritonserver:25.06-trtllm-python-py3` -> `nvcr.io/nvidia/tritonserver`."""
    image = image.split("@", 1)[0]
    head, _, tag = image.rpartition(":")
    return head if head and "/" not in tag else image


def seconds(duration: str) -> float:
    """A Compose or nginx duration (`1m30s`, `45s`, `600`) in seconds."""
    if duration.isdigit():
        return float(duration)
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    return sum(float(n) * scale[unit] for n, unit in _DURATION.findall(duration))


def strip_comments(conf: str) -> str:
    return "\n".join(line.split("#", 1)[0] for line in conf.splitlines())


def nginx_upstreams(conf: str) -> dict[str, list[str]]:
    """Each `upstream NAME { server ADDRESS ...; }` block's addresses."""
    blocks = re.findall(r"upstream\s+(\S+)\s*\{(.*?)\}", strip_comments(conf), re.S)
    return {name: re.findall(r"^\s*server\s+([^\s;]+)", body, re.M) for name, body in blocks}


def nginx_directive(conf: str, name: str) -> list[str]:
    """The arguments of every `name ...;` directive in the file."""
    return [m.strip() for m in re.findall(rf"^\s*{re.escape(name)}\s+([^;]*);", strip_comments(conf), re.M)]


def mounted_file(service: dict[str, Any], container_path: str, root: Path) -> Path | None:
    """The repository file a bind mount of `service` puts at `container_path`."""
    for volume in service.get("volumes", []):
        if not isinstance(volume, str) or not volume.startswith("."):
            continue
        source, target = volume.split(":")[:2]
        target_path, wanted = PurePosixPath(target), PurePosixPath(container_path)
        if wanted == target_path or target_path in wanted.parents:
            return root / source / wanted.relative_to(target_path)
    return None


def _depends(service: dict[str, Any]) -> dict[str, dict[str, Any]]:
    deps = service.get("depends_on", {})
    return {name: {} for name in deps} if isinstance(deps, list) else dict(deps)


def _health_text(service: dict[str, Any]) -> str:
    test = (service.get("healthcheck") or {}).get("test", [])
    return " ".join(test) if isinstance(test, list) else str(test)


def _reserves_nvidia(service: dict[str, Any]) -> bool:
    devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    return any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices)


def gateway_config(path: Path, env: Mapping[str, str]) -> GatewayConfig:
    """The gateway's own validation, with every installed plugin's checks."""
    return load_config(path, env=dict(env), validators=load_backend_registry().validators())


def compose_problems(doc: dict[str, Any], root: Path) -> list[str]:
    """What the schema cannot catch, one problem per string."""
    problems: list[str] = []
    services: dict[str, dict[str, Any]] = doc.get("services", {})
    for name, service in services.items():
        for dep in _depends(service):
            if dep not in services:
                problems.append(f"{name}: depends_on names no service '{dep}'")
        health = service.get("healthcheck")
        if not health or not (health.get("test") or health.get("disable")):
            problems.append(f"{name}: no healthcheck")
        elif health.get("disable") and service.get("restart") != "no":
            problems.append(f"{name}: healthcheck disabled on a service that is not a one-shot job (restart: 'no')")
        if "build" in service:
            build = service["build"]
            context, dockerfile = (build, "Dockerfile") if isinstance(build, str) else (
                build.get("context", "."), build.get("dockerfile", "Dockerfile"))
            if not (root / context / dockerfile).is_file():
                problems.append(f"{name}: builds from {context}/{dockerfile}, which does not exist")
        else:
            repository = image_repository(service.get("image", ""))
            if repository not in OFFICIAL_IMAGES:
                problems.append(f"{name}: image {service.get('image')!r} is not a server's official image")
        gpu = image_repository(service.get("image", "")) in GPU_IMAGES or _reserves_nvidia(service)
        profiles = set(service.get("profiles", []))
        if gpu and ("gpu" not in profiles or not profiles <= GPU_PROFILES):
            problems.append(f"{name}: a GPU server outside the GPU profiles (profiles: {sorted(profiles)})")
        if gpu and not _reserves_nvidia(service):
            problems.append(f"{name}: a GPU server that reserves no NVIDIA GPU")
        if not gpu and profiles & GPU_PROFILES:
            problems.append(f"{name}: a CPU service in GPU profiles {sorted(profiles & GPU_PROFILES)}")
    problems.extend(_gateway_problems(services, root))
    return problems


def _gateway_problems(services: dict[str, dict[str, Any]], root: Path) -> list[str]:
    problems: list[str] = []
    replicas = sorted(name for name, s in services.items() if "build" in s)
    if len(replicas) < 2:
        return [f"{len(replicas)} gateway replica(s) built from the Dockerfile; scale-out needs 2 or more"]
    configs: dict[str, GatewayConfig] = {}
    for name in replicas:
        service = services[name]
        env = {k: str(v) for k, v in (service.get("environment") or {}).items()}
        path = mounted_file(service, env.get("GATEWAY_CONFIG", ""), root)
        if path is None or not path.is_file():
            problems.append(f"{name}: GATEWAY_CONFIG {env.get('GATEWAY_CONFIG')!r} is not a mounted repository file")
            continue
        try:
            config = configs[name] = gateway_config(path, env)
        except ConfigError as err:
            problems.append(f"{name}: {err}")
            continue
        if _depends(service).get("redis", {}).get("condition") != "service_healthy":
            problems.append(f"{name}: does not wait for a healthy redis")
        if f"127.0.0.1:{config.server.port}/health" not in _health_text(service):
            problems.append(f"{name}: the healthcheck does not ask /health on port {config.server.port}")
        grace = seconds(str(service.get("stop_grace_period", "10s")))
        if grace <= config.server.drain_s:
            problems.append(f"{name}: stop_grace_period {grace:g}s does not outlast "
                            f"server.drain_s {config.server.drain_s:g}s")
        for backend in config.backends:
            problems.extend(_backend_problems(name, backend.name, backend.url, services))
    redis_urls = {c.redis.url if c.redis else None for c in configs.values()}
    if len(redis_urls) != 1 or None in redis_urls:
        problems.append(f"the replicas do not share one Redis: {sorted(map(str, redis_urls))}")
    else:
        host = urlsplit(str(next(iter(redis_urls)))).hostname or ""
        if image_repository(services.get(host, {}).get("image", "")) != "redis":
            problems.append(f"the replicas' Redis host '{host}' is not the stack's redis service")
    ports = {c.server.port for c in configs.values()}
    problems.extend(_lb_problems(services, replicas, ports, root))
    return problems


def _backend_problems(replica: str, backend: str, url: str | None, services: dict[str, dict[str, Any]]) -> list[str]:
    if url is None:
        return []
    parts = urlsplit(url)
    service = services.get(parts.hostname or "")
    if service is None:
        return [f"{replica}: backend {backend} points at {url}, not a service of the stack"]
    ports = re.findall(r"127\.0\.0\.1:(\d+)", _health_text(service))
    if ports and parts.port not in {int(p) for p in ports}:
        return [f"{replica}: backend {backend} uses port {parts.port}, but {parts.hostname} listens on {ports}"]
    return []


def _lb_problems(services: dict[str, dict[str, Any]], replicas: list[str], ports: set[int], root: Path) -> list[str]:
    balancers = [n for n, s in services.items() if image_repository(s.get("image", "")) == "nginx"]
    if len(balancers) != 1:
        return [f"expected one nginx load balancer, found {balancers}"]
    name, lb = balancers[0], services[balancers[0]]
    conf_path = mounted_file(lb, "/etc/nginx/conf.d/default.conf", root)
    if conf_path is None or not conf_path.is_file():
        return [f"{name}: no nginx.conf from the repository at /etc/nginx/conf.d/default.conf"]
    conf = conf_path.read_text()
    problems: list[str] = []
    servers = sorted(s for addresses in nginx_upstreams(conf).values() for s in addresses)
    wanted = sorted(f"{r}:{p}" for r in replicas for p in ports)
    if servers != wanted:
        problems.append(f"{name}: nginx upstream servers {servers} are not the replicas {wanted}")
    for replica in replicas:
        if _depends(lb).get(replica, {}).get("condition") != "service_healthy":
            problems.append(f"{name}: does not wait for a healthy {replica}")
    if "off" not in nginx_directive(conf, "proxy_buffering"):
        problems.append(f"{name}: proxy_buffering is not off: streams would arrive in bursts")
    if "1.1" not in nginx_directive(conf, "proxy_http_version"):
        problems.append(f"{name}: proxy_http_version is not 1.1")
    if not any(seconds(t) >= 300 for t in nginx_directive(conf, "proxy_read_timeout")):
        problems.append(f"{name}: proxy_read_timeout is under 300 s: long generations would be cut")
    if not any(h.lower().startswith("x-request-id ") for h in nginx_directive(conf, "proxy_set_header")):
        problems.append(f"{name}: X-Request-Id is not passed on")
    listen = {int(v.split()[0].rsplit(":", 1)[-1]) for v in nginx_directive(conf, "listen")}
    published = {int(str(p).rsplit(":", 1)[-1].split("/")[0]) for p in lb.get("ports", [])}
    if not published or not published <= listen:
        problems.append(f"{name}: publishes container ports {sorted(published)}, nginx listens on {sorted(listen)}")
    return problems
