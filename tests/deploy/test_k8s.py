"""deploy/k8s: every document against the Kubernetes schemas (strict), the links between them, and
the ConfigMap's gateway config through the gateway's own validation (see k8s_check.py)."""

from __future__ import annotations

import copy
import hashlib
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import ConfigError, parse_config
from gateway.observability import Metrics
from gateway.plugins import load_backend_registry

from .dockerfile_check import stages, user_id
from .k8s_check import (
    K8S_VERSIONS,
    Doc,
    config_wiring_problems,
    deployment_problems,
    documents,
    find,
    pod_security_problems,
    redis_problems,
    schema_error,
)

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
FILES = sorted(K8S.glob("*.yaml"))
# Applied by hand or by another install, not by kustomization.yaml (each file says why).
NOT_IN_KUSTOMIZATION = {"kustomization.yaml", "secret.example.yaml", "prometheus-adapter-rules.yaml"}


def _docs(name: str) -> list[Doc]:
    return documents((K8S / name).read_text())


def _applied() -> list[Doc]:
    """What `kubectl apply -k deploy/k8s` applies, read from the files kustomization.yaml lists."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    return [doc for name in kustomization["resources"] for doc in _docs(name)]


def _config_text(docs: list[Doc]) -> str:
    config_map = find(docs, "ConfigMap", "gateway-config")
    assert config_map is not None
    text: str = config_map["data"]["gateway.yaml"]
    return text


def _digest(seed: str) -> str:
    return hashlib.sha256(seed.encode()).hexdigest()


# The pod's environment as the Deployment and a filled-in gateway-keys Secret make it.
POD_ENV = {"GATEWAY_HOST": "0.0.0.0", "GATEWAY_CONFIG": "/etc/gateway/gateway.yaml",
           "GATEWAY_API_KEY_SHA256": _digest("client key"), "GATEWAY_ADMIN_KEY_SHA256": _digest("admin key"),
           "VLLM_API_KEY": ""}


def _gateway_config(docs: list[Doc], env: dict[str, str]) -> Any:
    return parse_config(yaml.safe_load(_config_text(docs)), source="ConfigMap gateway-config", env=env,
                        validators=load_backend_registry().validators())


def _image_port_and_uid() -> tuple[int, int]:
    final = stages((ROOT / "Dockerfile").read_text())[-1]
    expose, user = final.last("EXPOSE"), final.last("USER")
    assert expose is not None and user is not None
    uid = user_id(user.args)
    assert uid is not None
    return int(expose.args.split("/")[0]), uid


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", [p for p in FILES if p.name != "kustomization.yaml"], ids=lambda p: p.name)
def test_every_manifest_follows_the_kubernetes_schema(path: Path, version: str) -> None:
    docs = documents(path.read_text())
    assert docs
    for doc in docs:
        assert schema_error(doc, version) is None


@pytest.mark.parametrize(("mutation", "problem"), [
    (lambda d: d["spec"]["template"]["spec"]["containers"][0].update(readinesProbe={}), "readinesProbe"),
    (lambda d: d["spec"].update(replicas="two"), "'two' is not of type 'integer'"),
    (lambda d: d["spec"]["template"]["spec"].pop("containers"), "'containers' is a required property"),
    (lambda d: d.update(apiVersion="apps/v1beta1"), "Couldn't find schema"),
])
def test_the_schema_rejects_a_broken_deployment(mutation: Callable[[Doc], object], problem: str) -> None:
    doc = copy.deepcopy(_docs("deployment.yaml")[0])
    mutation(doc)
    error = schema_error(doc, K8S_VERSIONS[-1])
    assert error is not None and problem in error, error


def test_kustomization_lists_every_manifest_and_only_existing_ones() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["namespace"] == "llm-gateway"
    assert sorted(kustomization["resources"]) == sorted(p.name for p in FILES if p.name not in NOT_IN_KUSTOMIZATION)
    images = {i["name"] for i in kustomization.get("images", [])}
    deployment = find(_applied(), "Deployment", "gateway")
    assert deployment is not None
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"].split(":")[0] in images


def test_the_gateway_deployment_is_wired_to_its_service_hpa_pdb_and_config() -> None:
    docs = _applied()
    port, uid = _image_port_and_uid()
    config = _gateway_config(docs, POD_ENV)
    assert config.server.port == port
    assert deployment_problems(docs, config.server.drain_s, uid, port) == []
    assert config_wiring_problems(docs, _docs("secret.example.yaml")[0]) == []
    assert config.redis is not None and config.redis.url
    assert redis_problems(docs, config.redis.url) == []
    assert pod_security_problems(docs) == []
    namespace = find(docs, "Namespace")
    assert namespace is not None
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def _deployment(docs: list[Doc]) -> Doc:
    found = find(docs, "Deployment", "gateway")
    assert found is not None
    return found


def _container(docs: list[Doc]) -> Doc:
    container: Doc = _deployment(docs)["spec"]["template"]["spec"]["containers"][0]
    return container


@pytest.mark.parametrize(("mutation", "problem"), [
    (lambda d: _container(d)["readinessProbe"]["httpGet"].update(path="/health"), "readinessProbe is not GET /ready"),
    (lambda d: _container(d)["livenessProbe"]["httpGet"].update(port=9090), "livenessProbe is not GET /health"),
    (lambda d: _deployment(d)["spec"]["template"]["spec"].update(terminationGracePeriodSeconds=30),
     "does not cover preStop"),
    (lambda d: _container(d).pop("lifecycle"), "no preStop pause"),
    (lambda d: _deployment(d)["spec"]["template"]["metadata"]["labels"].update(
        {"app.kubernetes.io/component": "api"}), "selector does not match"),
    (lambda d: find(d, "Service", "gateway")["spec"]["ports"][0].update(targetPort=8000),  # type: ignore[index]
     "targetPort is not the container port"),
    (lambda d: find(d, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"].update(name="gw"),  # type: ignore[index]
     "not the gateway Deployment"),
    (lambda d: find(d, "HorizontalPodAutoscaler")["spec"]["metrics"].pop(0),  # type: ignore[index]
     "no Pods metric gateway_in_flight_requests"),
    (lambda d: find(d, "HorizontalPodAutoscaler")["spec"].update(minReplicas=1),  # type: ignore[index]
     "minReplicas under 2"),
    (lambda d: find(d, "PodDisruptionBudget")["spec"].update(minAvailable=2),  # type: ignore[index]
     "no node could be drained"),
    (lambda d: _deployment(d)["spec"]["template"]["spec"]["securityContext"].update(runAsUser=1000),
     "runAsUser is not the image's uid"),
])
def test_a_broken_deployment_is_caught(mutation: Callable[[list[Doc]], object], problem: str) -> None:
    docs = copy.deepcopy(_applied())
    mutation(docs)
    port, uid = _image_port_and_uid()
    problems = deployment_problems(docs, 30.0, uid, port)
    assert any(problem in p for p in problems), problems


@pytest.mark.parametrize(("mutation", "problem"), [
    (lambda d: _container(d)["env"].pop(0), "is not a key of a mounted ConfigMap"),
    (lambda d: _container(d)["volumeMounts"][0].update(mountPath="/config"), "is not a key of a mounted ConfigMap"),
    (lambda d: _container(d).pop("envFrom"), "envFrom does not name the Secret gateway-keys"),
    (lambda d: find(d, "ConfigMap", "gateway-config")["data"].update(  # type: ignore[index]
        {"gateway.yaml": _config_text(d) + "\n# ${OTHER_SECRET}\n"}), "needs ['OTHER_SECRET']"),
])
def test_broken_config_wiring_is_caught(mutation: Callable[[list[Doc]], object], problem: str) -> None:
    docs = copy.deepcopy(_applied())
    mutation(docs)
    problems = config_wiring_problems(docs, _docs("secret.example.yaml")[0])
    assert any(problem in p for p in problems), problems


def test_the_security_checks_catch_a_root_or_privileged_pod() -> None:
    docs = copy.deepcopy(_applied())
    _deployment(docs)["spec"]["template"]["spec"]["securityContext"].pop("runAsNonRoot")
    redis = find(docs, "StatefulSet", "redis")
    assert redis is not None
    redis["spec"]["template"]["spec"]["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True
    problems = pod_security_problems(docs)
    assert any("Deployment/gateway: securityContext.runAsNonRoot" in p for p in problems), problems
    assert any("StatefulSet/redis/redis: allowPrivilegeEscalation" in p for p in problems), problems
    assert redis_problems(docs, "redis://cache:6379/0") == ["no Service and StatefulSet named cache for redis.url "
                                                            "redis://cache:6379/0"]
    assert "no Redis" not in " ".join(redis_problems(docs, "redis://redis:6380/0"))
    assert redis_problems(docs, "redis://redis:6380/0")


def test_the_example_secrets_placeholders_are_refused_not_served() -> None:
    """Deployed unedited, the example Secret makes the gateway fail its config check at start: it
    never serves with a key someone could read in this repository."""
    secret = _docs("secret.example.yaml")[0]
    env = {**POD_ENV, **secret["stringData"]}
    with pytest.raises(ConfigError) as info:
        _gateway_config(_applied(), env)
    assert any("auth.keys[0].sha256" in p for p in info.value.problems)
    assert any("auth.admin_keys[0]" in p for p in info.value.problems)
    with pytest.raises(ConfigError) as missing:  # and without the Secret at all
        _gateway_config(_applied(), {"GATEWAY_HOST": "0.0.0.0"})
    assert any("GATEWAY_API_KEY_SHA256 is not set" in p for p in missing.value.problems)


def test_the_configmap_config_passes_the_gateways_own_validation() -> None:
    config = _gateway_config(_applied(), POD_ENV)
    assert config.server.host == "0.0.0.0"
    assert config.auth is not None and [k.sha256 for k in config.auth.keys] == [POD_ENV["GATEWAY_API_KEY_SHA256"]]
    assert {b.plugin for b in config.backends} == {"vllm", "tgi", "llamacpp"}


def test_the_hpa_metric_is_the_one_the_adapter_rule_serves() -> None:
    hpa = find(_applied(), "HorizontalPodAutoscaler")
    assert hpa is not None
    metric = next(m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods")
    rules = yaml.safe_load(_docs("prometheus-adapter-rules.yaml")[0]["data"]["config.yaml"])["rules"]
    served = [r for r in rules if r["name"]["as"] == metric]
    assert len(served) == 1
    assert served[0]["seriesQuery"].startswith(metric + "{")
    assert set(served[0]["resources"]["overrides"]) == {"namespace", "pod"}


def test_the_gateway_exposes_the_metric_the_hpa_scales_on() -> None:
    names = {family.name for family in Metrics().registry.collect()}
    assert "gateway_in_flight_requests" in names  # its value under load: tests/unit/test_reload.py


def _kubectl() -> str | None:
    return shutil.which("kubectl")


@pytest.mark.skipif(_kubectl() is None, reason="kubectl is not installed here")
def test_kustomize_builds_the_namespaced_set_that_the_tests_read() -> None:
    result = subprocess.run([str(_kubectl()), "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    built = documents(result.stdout)
    assert sorted((d["kind"], d["metadata"]["name"]) for d in built) == sorted(
        (d["kind"], d["metadata"]["name"]) for d in _applied())
    for doc in built:
        assert schema_error(doc, K8S_VERSIONS[0]) is None
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "llm-gateway"
