"""deploy/k8s checked without a cluster: every document against the Kubernetes OpenAPI schemas that
the `kubernetes-validate` package ships (strict: an unknown field is an error), and the links
between the documents that no schema sees (probes, selectors, the HPA's target and metric, the
Secret the config needs, the grace period the drain needs).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml
from kubernetes_validate.utils import latest_version

# The oldest Kubernetes these manifests are for, and the newest the installed schemas know.
K8S_VERSIONS = ("1.29.0", latest_version())
_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")

Doc = dict[str, Any]


def documents(text: str) -> list[Doc]:
    return [d for d in yaml.safe_load_all(text) if d is not None]


def schema_error(doc: Doc, version: str) -> str | None:
    """The first way `doc` breaks the Kubernetes `version` schema for its kind, or None."""
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as err:
        return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}: {err.message}"
    except kubernetes_validate.SchemaNotFoundError as err:
        return f"{doc.get('kind')}: {err.message}"
    return None


def find(docs: Iterable[Doc], kind: str, name: str | None = None) -> Doc | None:
    for doc in docs:
        if doc.get("kind") == kind and (name is None or doc["metadata"]["name"] == name):
            return doc
    return None


def required_env(config_text: str) -> set[str]:
    """`${VAR}` references without a default: the pod must provide them."""
    return {m.group(1) for m in _ENV_REF.finditer(config_text) if m.group(2) is None}


def prestop_sleep(container: Doc) -> float:
    exec_cmd = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    if exec_cmd[:1] == ["sleep"] and len(exec_cmd) == 2:
        return float(exec_cmd[1])
    return float(container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0))


def _labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _port_numbers(container: Doc) -> dict[str | int, int]:
    ports: dict[str | int, int] = {}
    for port in container.get("ports", []):
        ports[port["containerPort"]] = port["containerPort"]
        if "name" in port:
            ports[port["name"]] = port["containerPort"]
    return ports


def pod_security_problems(docs: Iterable[Doc]) -> list[str]:
    """Pod Security "restricted" essentials for every pod template (the namespace enforces them)."""
    problems: list[str] = []
    for doc in docs:
        spec = doc.get("spec", {}).get("template", {}).get("spec")
        if spec is None:
            continue
        where, pod_sc = f"{doc['kind']}/{doc['metadata']['name']}", spec.get("securityContext", {})
        if pod_sc.get("runAsNonRoot") is not True:
            problems.append(f"{where}: securityContext.runAsNonRoot is not true")
        if pod_sc.get("runAsUser") == 0:
            problems.append(f"{where}: runs as uid 0")
        for container in spec.get("containers", []):
            sc = container.get("securityContext", {})
            if sc.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{where}/{container['name']}: allowPrivilegeEscalation is not false")
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                problems.append(f"{where}/{container['name']}: capabilities are not all dropped")
            seccomp = sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}
            if seccomp.get("type") not in ("RuntimeDefault", "Localhost"):
                problems.append(f"{where}/{container['name']}: no RuntimeDefault seccomp profile")
    return problems


def deployment_problems(docs: list[Doc], drain_s: float, uid: int, port: int) -> list[str]:
    """The gateway Deployment against its Service, HPA, PDB, ConfigMap and Secret.

    `drain_s` is the config's server.drain_s, `uid` the Dockerfile's USER, `port` the gateway's port.
    """
    deployment = find(docs, "Deployment", "gateway")
    if deployment is None:
        return ["no Deployment named gateway"]
    problems: list[str] = []
    pod = deployment["spec"]["template"]
    labels, spec = pod["metadata"].get("labels", {}), pod["spec"]
    if not _labels_match(deployment["spec"]["selector"].get("matchLabels", {}), labels):
        problems.append("Deployment: selector does not match its pod labels")
    if spec.get("securityContext", {}).get("runAsUser") != uid:
        problems.append(f"Deployment: runAsUser is not the image's uid {uid}")
    container = spec["containers"][0]
    ports = _port_numbers(container)
    for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/health")):
        get = container.get(probe, {}).get("httpGet", {})
        if get.get("path") != path or ports.get(get.get("port", "")) != port:
            problems.append(f"Deployment: {probe} is not GET {path} on the container port {port}: {get}")
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if grace <= prestop_sleep(container) + drain_s:
        problems.append(f"Deployment: terminationGracePeriodSeconds {grace} does not cover preStop "
                        f"({prestop_sleep(container):g} s) plus server.drain_s ({drain_s:g} s)")
    if prestop_sleep(container) <= 0:
        problems.append("Deployment: no preStop pause: the pod would refuse requests still routed to it")
    service = find(docs, "Service", "gateway")
    if service is None or not _labels_match(service["spec"].get("selector", {}), labels):
        problems.append("Service gateway: missing, or its selector does not match the gateway pods")
    elif any(ports.get(p.get("targetPort", p["port"])) != port for p in service["spec"]["ports"]):
        problems.append(f"Service gateway: a targetPort is not the container port {port}")
    pdb = find(docs, "PodDisruptionBudget")
    if pdb is None or not _labels_match(pdb["spec"]["selector"].get("matchLabels", {}), labels):
        problems.append("PodDisruptionBudget: missing, or its selector does not match the gateway pods")
    problems.extend(_hpa_problems(docs, pdb))
    return problems


def _hpa_problems(docs: list[Doc], pdb: Doc | None) -> list[str]:
    hpa = find(docs, "HorizontalPodAutoscaler")
    if hpa is None:
        return ["no HorizontalPodAutoscaler"]
    problems: list[str] = []
    target = hpa["spec"]["scaleTargetRef"]
    if (target.get("apiVersion"), target["kind"], target["name"]) != ("apps/v1", "Deployment", "gateway"):
        problems.append(f"HPA: scales {target}, not the gateway Deployment")
    pods_metrics = [m["pods"]["metric"]["name"] for m in hpa["spec"].get("metrics", []) if m["type"] == "Pods"]
    if "gateway_in_flight_requests" not in pods_metrics:
        problems.append(f"HPA: no Pods metric gateway_in_flight_requests (has {pods_metrics})")
    min_replicas = hpa["spec"].get("minReplicas", 1)
    if min_replicas < 2:
        problems.append("HPA: minReplicas under 2 leaves a single replica")
    if pdb is not None and pdb["spec"].get("minAvailable", 0) >= min_replicas:
        problems.append("PodDisruptionBudget: minAvailable is not below minReplicas: no node could be drained")
    return problems


def config_wiring_problems(docs: list[Doc], secret: Doc) -> list[str]:
    """The ConfigMap is mounted where GATEWAY_CONFIG points, and the pod provides every variable the
    config needs (from `env` or from the example Secret's keys through `envFrom`)."""
    deployment = find(docs, "Deployment", "gateway")
    assert deployment is not None
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"].get("volumes", [])}
    config_path = Path(env.get("GATEWAY_CONFIG") or "/nonexistent")
    problems: list[str] = []
    text = config_map_text(docs, container, volumes, config_path)
    if text is None:
        return [f"Deployment: GATEWAY_CONFIG {config_path} is not a key of a mounted ConfigMap"]
    secret_refs = {s["secretRef"]["name"] for s in container.get("envFrom", []) if "secretRef" in s}
    if secret["metadata"]["name"] not in secret_refs:
        problems.append(f"Deployment: envFrom does not name the Secret {secret['metadata']['name']}")
    provided = set(env) | (set(secret.get("stringData", {})) if secret["metadata"]["name"] in secret_refs else set())
    missing = sorted(required_env(text) - provided)
    if missing:
        problems.append(f"the config needs {missing}, which neither env nor the Secret provides")
    return problems


def config_map_text(docs: list[Doc], container: Doc, volumes: dict[str, Doc], path: Path) -> str | None:
    """The ConfigMap entry that the container sees at `path`."""
    for mount in container.get("volumeMounts", []):
        if Path(mount["mountPath"]) != path.parent:
            continue
        config_map = volumes.get(mount["name"], {}).get("configMap")
        doc = find(docs, "ConfigMap", config_map["name"]) if config_map else None
        if doc is not None and path.name in doc.get("data", {}):
            text: str = doc["data"][path.name]
            return text
    return None


def redis_problems(docs: list[Doc], redis_url: str) -> list[str]:
    """The config's Redis URL names a Service in the namespace that selects a Redis pod on that port."""
    match = re.fullmatch(r"redis://([^:/]+):(\d+)(/\d+)?", redis_url)
    if match is None:
        return [f"redis.url {redis_url} is not redis://service:port/db"]
    service = find(docs, "Service", match.group(1))
    statefulset = find(docs, "StatefulSet", match.group(1))
    if service is None or statefulset is None:
        return [f"no Service and StatefulSet named {match.group(1)} for redis.url {redis_url}"]
    pod = statefulset["spec"]["template"]
    if not _labels_match(service["spec"]["selector"], pod["metadata"]["labels"]):
        return [f"Service {match.group(1)} does not select the Redis pods"]
    container_ports = _port_numbers(pod["spec"]["containers"][0])
    for port in service["spec"]["ports"]:
        if port["port"] == int(match.group(2)) and container_ports.get(port.get("targetPort", port["port"])):
            return []
    return [f"Service {match.group(1)} has no port {match.group(2)} reaching the Redis container"]
