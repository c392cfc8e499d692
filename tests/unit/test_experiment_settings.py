"""The `experiment`, `shadow` and `experiments` config sections: what loads, and every problem named by its path."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import ConfigError, parse_config
from gateway.experiments.settings import ExperimentConfig, resolve_target

BACKENDS = [{"name": "a", "plugin": "vllm", "model": "m", "url": "http://h:1"},
            {"name": "b", "plugin": "vllm", "model": "m", "url": "http://h:2"}]


def load(routes: list[dict[str, Any]], **extra: Any) -> Any:
    return parse_config({"backends": BACKENDS, "routes": routes, **extra}, env={})


def problems(routes: list[dict[str, Any]], **extra: Any) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load(routes, **extra)
    return err.value.problems


def test_a_full_experiment_loads_with_its_times_and_defaults() -> None:
    config = load([{"model": "chat", "backends": ["a"], "experiment": {
        "name": "ab", "arms": {"candidate": "b", "control": "a"}, "weights": {"control": 3, "candidate": 1},
        "sticky_by": "header:X-Session", "start": "2026-11-26T09:00:00Z", "stop": "2026-12-03T09:00:00+01:00",
        "ramp": {"duration_s": 3600, "from_share": 0.05}, "auto_stop": True, "on_stop": "winner"},
        "shadow": {"name": "mirror", "target": "route:other", "sample": 0.25}},
        {"model": "other", "backends": ["b"]}], experiments={"feedback_ttl_s": 60})
    exp = config.routes[0].experiment
    assert exp is not None and exp.control_arm() == "control"  # named control wins over order
    assert list(exp.arm_weights()) == ["control", "candidate"] and exp.arm_weights()["control"] == 3.0
    assert exp.metric == "e2e" and exp.alpha == 0.05 and exp.min_samples == 200
    assert config.routes[0].shadow is not None and config.routes[0].shadow.sample == 0.25
    assert config.experiments.feedback_ttl_s == 60


def test_without_an_arm_called_control_the_first_is_the_control_and_weights_default_to_equal() -> None:
    exp = ExperimentConfig(name="x", arms={"q8": "a", "q4": "b"})
    assert exp.control_arm() == "q8" and exp.arm_weights() == {"q8": 1.0, "q4": 1.0}


def test_every_problem_is_named_by_its_path() -> None:
    found = problems([
        {"model": "chat", "backends": ["a"], "experiment": {
            "name": "bad name", "arms": {"control": "a", "candidate": "nope"}, "weights": {"other": 1},
            "sticky_by": "cookie", "ramp": {"duration_s": 5}, "alpha": 0.7, "metric": "speed"},
         "shadow": {"name": "s", "target": "a", "sample": 0, "max_in_flight": 0}},
    ])
    assert found == ["routes[0].experiment.metric: invalid enum value 'speed' (expected one of: e2e, ttft, tpot, "
                     "error_rate, cost, score)"]
    # A type error stops the route's other checks; fix it and the rest are listed.
    found = problems([
        {"model": "chat", "backends": ["a"], "experiment": {
            "name": "bad name", "arms": {"control": "a", "candidate": "nope"}, "weights": {"other": 1},
            "sticky_by": "cookie", "ramp": {"duration_s": 5}, "alpha": 0.7},
         "shadow": {"name": "s", "target": "a", "sample": 0, "max_in_flight": 0}},
    ])
    text = "\n".join(found)
    for expected in ("routes[0].experiment.name: must be 1-100 letters",
                     "routes[0].experiment.arms.candidate: 'nope' is neither a backend nor an exact route's model",
                     "routes[0].experiment.weights.other: not an arm",
                     "routes[0].experiment.weights: at least one arm needs a positive weight",
                     "routes[0].experiment.sticky_by: invalid sticky_by 'cookie'",
                     "routes[0].experiment.ramp: needs `start`",
                     "routes[0].experiment.alpha: must be between 0 and 0.5",
                     "routes[0].shadow.sample: must be in (0, 1]",
                     "routes[0].shadow.max_in_flight: must be at least 1"):
        assert expected in text, text


def test_names_must_be_unique_and_arms_must_not_nest_or_be_ambiguous() -> None:
    found = problems([
        {"model": "a", "backends": ["a"]},  # a route named like backend `a`
        {"model": "x", "backends": ["a"], "experiment": {"name": "e", "arms": {"control": "a", "candidate": "b"}}},
        {"model": "y", "backends": ["a"], "experiment": {"name": "e", "arms": {"control": "b", "candidate": "x"}}},
    ])
    text = "\n".join(found)
    assert ("routes[1].experiment.arms.control: 'a' is both a backend and a route: write 'backend:a' or "
            "'route:a'") in text
    assert "routes[2].experiment.arms.candidate: route 'x' runs an experiment itself; experiments do not nest" in text
    assert "routes[2].experiment.name: 'e' is already used by routes[1].experiment" in text


def test_a_single_arm_and_a_stop_before_start_are_refused() -> None:
    text = "\n".join(problems([{"model": "x", "backends": ["a"], "experiment": {
        "name": "e", "arms": {"control": "a"}, "start": "2026-01-02T00:00:00Z", "stop": "2026-01-01T00:00:00Z"}}]))
    assert "routes[0].experiment.arms: needs a control and at least one candidate" in text
    assert "routes[0].experiment.stop: must come after start" in text


def test_targets_resolve_with_and_without_prefixes() -> None:
    assert resolve_target("a", {"a"}, {"r"}) == ("backend", "a")
    assert resolve_target("r", {"a"}, {"r"}) == ("route", "r")
    assert resolve_target("backend:a", {"a"}, {"a"}) == ("backend", "a")
    assert resolve_target("route:a", {"a"}, {"a"}) == ("route", "a")
    assert resolve_target("route:zz", {"a"}, {"a"}) == "no route with the exact model 'zz'"


def test_experiments_section_ranges() -> None:
    text = "\n".join(problems([{"model": "x", "backends": ["a"]}],
                              experiments={"feedback_ttl_s": 0, "check_interval_s": -1, "flush_interval_s": 0}))
    for key in ("feedback_ttl_s", "check_interval_s", "flush_interval_s"):
        assert f"experiments.{key}: must be positive" in text
