"""Route table lookups, health state, and the simplest policies (the rest: test_policies.py)."""

from __future__ import annotations

import pytest

from gateway.config import POLICY_NAMES, RouteConfig, StatsConfig
from gateway.routing.health import HealthState
from gateway.routing.interfaces import BackendStats, Policy, RequestFeatures
from gateway.routing.policies import FirstHealthyPolicy, RoundRobinPolicy, make_policy
from gateway.routing.stats import LocalStats
from gateway.routing.table import Route, RouteTable

from .fakes import FakeBackend, make_backend

A, B, C = make_backend("a", model="model-a"), make_backend("b", model="model-b"), make_backend("c", model="model-a")


def route(model: str, *backends: FakeBackend) -> Route:
    return Route(model=model, backends=backends, policy=FirstHealthyPolicy())


def test_exact_route_wins_over_an_earlier_glob() -> None:
    table = RouteTable([route("*", A), route("llama-*", B), route("llama-3", C)])
    found = table.lookup("llama-3")
    assert found is not None and found.model == "llama-3"


def test_globs_are_tried_in_config_order() -> None:
    table = RouteTable([route("llama-*", A), route("*", B), route("llama-3*", C)])
    assert table.lookup("llama-3-8b").model == "llama-*"  # type: ignore[union-attr]
    assert table.lookup("mistral").model == "*"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("pattern", "model", "hit"),
    [
        ("qwen?", "qwen2", True),
        ("qwen?", "qwen25", False),
        ("[ab]-model", "b-model", True),
        ("[ab]-model", "c-model", False),
        ("Llama-*", "llama-3", False),  # case-sensitive
    ],
)
def test_glob_syntax(pattern: str, model: str, hit: bool) -> None:
    table = RouteTable([route(pattern, A)])
    assert (table.lookup(model) is not None) is hit


def test_unknown_model_is_none_and_repeated_lookups_agree() -> None:
    table = RouteTable([route("llama-*", A), route("exact", B)])
    assert table.lookup("gpt-4") is None
    assert table.lookup("gpt-4") is None
    first = table.lookup("llama-x")
    assert first is table.lookup("llama-x") and first is not None


def test_is_glob() -> None:
    assert route("*", A).is_glob and route("a?", A).is_glob and route("[x]", A).is_glob
    assert not route("llama-3.1:8b", A).is_glob


def test_model_names_exact_then_backends_behind_globs_without_duplicates() -> None:
    table = RouteTable([route("*", A, B, C), route("alias", A), route("model-b", B), route("x-*", C)])
    assert table.model_names() == ["alias", "model-b", "model-a"]


# -- policies ------------------------------------------------------------------------------------


class NoStats(LocalStats):
    """Live statistics with nothing observed: the simple policies never need more."""

    def get(self, backend: str) -> BackendStats:
        return BackendStats()


REQUEST = RequestFeatures("chat", {"messages": [{"role": "user", "content": "hi"}]})


def ranked(policy: Policy, candidates: list[FakeBackend]) -> list[str]:
    return [choice.backend.name for choice in policy.rank(candidates, REQUEST, NoStats())]  # type: ignore[arg-type]


def test_first_healthy_keeps_config_order_of_the_available_candidates() -> None:
    policy = FirstHealthyPolicy()
    assert ranked(policy, [A, B, C]) == ["a", "b", "c"]
    assert ranked(policy, [B, C]) == ["b", "c"]  # the dispatcher leaves unavailable ones out
    assert ranked(policy, []) == []
    reasons = [c.reason for c in policy.rank([A, B], REQUEST, NoStats())]  # type: ignore[list-item, arg-type]
    assert reasons == ["first_healthy: first available in config order", "first_healthy fallback: #2 in config order"]


def test_round_robin_rotates_the_start_over_the_candidates() -> None:
    policy = RoundRobinPolicy()
    orders = [ranked(policy, [A, B, C]) for _ in range(4)]
    assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    orders = [ranked(policy, [A, C]) for _ in range(2)]
    assert sorted(map(tuple, orders)) == [("a", "c"), ("c", "a")]
    assert ranked(policy, []) == []


def test_make_policy_gives_fresh_instances_for_every_configured_name() -> None:
    route, stats = RouteConfig(model="m", backends=["a", "b"]), StatsConfig()
    first, second = make_policy("round_robin", route, stats), make_policy("round_robin", route, stats)
    assert first is not second
    assert ranked(first, [A, B]) == ["a", "b"]
    assert ranked(second, [A, B]) == ["a", "b"]  # its own counter
    assert isinstance(make_policy("first_healthy", route, stats), FirstHealthyPolicy)
    for name in POLICY_NAMES:
        assert make_policy(name, route, stats).name == name
    with pytest.raises(ValueError, match="unknown policy 'random'"):
        make_policy("random", route, stats)


def test_health_state_reasons() -> None:
    health = HealthState()
    assert health.is_healthy("never-checked")
    health.mark("a", False)
    assert health.reasons["a"] == "health check failed"
    health.mark("a", False, "connection refused")
    assert (health.is_healthy("a"), health.reasons["a"]) == (False, "connection refused")
    assert not health.any_healthy(["a"]) and health.any_healthy(["a", "b"])
    health.mark("a", True)
    assert "a" not in health.reasons
    assert health.snapshot() == {"a": True}
