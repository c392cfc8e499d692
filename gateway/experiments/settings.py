"""The configuration of experiments: a route's live A/B `experiment`, its `shadow`, and the
gateway-wide `experiments` section.

Kept beside the experiments rather than in gateway/config.py, which imports these sections and
checks them through `route_experiment_problems` and `experiments_problems`.

```yaml
routes:
  - model: chat
    backends: [big]                 # serves the route outside the experiment's [start, stop)
    experiment:
      name: small-vs-big
      arms: {control: big, candidate: small}   # arm -> backend or route (`backend:x`/`route:x` if both)
      weights: {control: 1, candidate: 1}      # default: equal
      sticky_by: user               # user | api_key | header:<name>
      ramp: {from_share: 0.05, duration_s: 3600}   # needs `start`
      start: 2026-11-26T09:00:00Z
      stop: 2026-12-03T09:00:00Z
    shadow:
      name: small-shadow
      target: small                 # backend or route
      sample: 0.1                   # share of the route's requests mirrored
```
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Literal, Protocol, get_args

import msgspec

from gateway.experiments.assign import parse_sticky_by

ExperimentMetric = Literal["e2e", "ttft", "tpot", "error_rate", "cost", "score"]
EXPERIMENT_METRICS: tuple[str, ...] = get_args(ExperimentMetric)
OnStop = Literal["control", "winner"]
CONTROL = "control"
# Names travel in a response header (`name=arm`) and in URL paths, so they stay plain.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_NAME_RULE = "must be 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit"


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """An unknown key is an error, as everywhere in the config."""


class RampConfig(_Section):
    """Grow the candidates' share from `from_share` to `to_share` (default: the weights' share)
    over `duration_s`, starting at the experiment's `start`. Keys only ever move from control to
    a candidate as it grows, never back."""

    duration_s: float
    from_share: float = 0.0
    to_share: float | None = None


class ExperimentConfig(_Section):
    """A live A/B experiment on one route: every request is served by exactly one arm."""

    name: str
    # Arm name -> a backend name or an exact route's model (prefix `backend:` or `route:` when a
    # name is both). The arm called `control` is the control; without one, the first arm is.
    arms: dict[str, str]
    weights: dict[str, float] | None = None  # relative; arms left out weigh 0; default: all equal
    sticky_by: str = "user"
    ramp: RampConfig | None = None
    start: datetime | None = None  # ISO 8601 (naive = UTC); outside [start, stop) the route serves as usual
    stop: datetime | None = None
    # The statistics: error rate of the always-valid comparisons, the metric that decides the
    # experiment, and where its intervals should be tightest (per-arm samples).
    alpha: float = 0.05
    metric: ExperimentMetric = "e2e"
    target_n: int = 1000
    # Stop by itself once `metric` is conclusive for every candidate (each arm with at least
    # `min_samples`); then serve `on_stop`: the control, or the arm that won.
    auto_stop: bool = False
    min_samples: int = 200
    on_stop: OnStop = "control"

    def control_arm(self) -> str:
        """The control arm's name."""
        return CONTROL if CONTROL in self.arms else next(iter(self.arms))

    def arm_weights(self) -> dict[str, float]:
        """Every arm's weight, control first (the order `Assigner` wants)."""
        control = self.control_arm()
        order = [control, *(a for a in self.arms if a != control)]
        if self.weights is None:
            return dict.fromkeys(order, 1.0)
        return {arm: float(self.weights.get(arm, 0.0)) for arm in order}


class ShadowConfig(_Section):
    """Mirror a sample of a route's requests to `target` off the response path, to compare its
    answers, latency and cost with what was served, without a user ever seeing it."""

    name: str
    target: str  # a backend name or an exact route's model (`backend:`/`route:` prefixes as for arms)
    sample: float = 1.0
    # Mirrored requests in flight at once from this process; beyond it a request is not mirrored
    # (counted as skipped), so a slow candidate can never pile up work in the gateway.
    max_in_flight: int = 8


class ExperimentsConfig(_Section):
    """Gateway-wide experiment settings. Arm metrics live in Redis when `redis.url` is set (every
    replica's requests in one report), otherwise in this process."""

    # How long after a request `POST /v1/feedback` can still be joined to the arm that served it.
    feedback_ttl_s: float = 7 * 86400.0
    # How often the running estimate is sampled for the report's history and auto-stop is checked.
    check_interval_s: float = 10.0
    # Redis: how often each replica writes its buffered arm metrics (one pipeline per interval).
    flush_interval_s: float = 0.1


def as_unix(moment: datetime | None) -> float | None:
    """A config time as unix seconds; a time without a zone is UTC."""
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def split_target(target: str) -> tuple[str | None, str]:
    """`backend:x` -> ("backend", "x"), `route:x` -> ("route", "x"), `x` -> (None, "x")."""
    kind, sep, name = target.partition(":")
    if sep and kind in ("backend", "route"):
        return kind, name
    return None, target


def resolve_target(target: str, backends: set[str], exact_routes: set[str]) -> tuple[str, str] | str:
    """("backend" | "route", name) for an arm or shadow target, or a problem as text."""
    kind, name = split_target(target)
    if kind == "backend":
        return ("backend", name) if name in backends else f"unknown backend '{name}'"
    if kind == "route":
        return ("route", name) if name in exact_routes else f"no route with the exact model '{name}'"
    in_backends, in_routes = name in backends, name in exact_routes
    if in_backends and in_routes:
        return f"'{name}' is both a backend and a route: write 'backend:{name}' or 'route:{name}'"
    if in_backends:
        return ("backend", name)
    if in_routes:
        return ("route", name)
    return f"'{name}' is neither a backend nor an exact route's model"


def _design_problems(prefix: str, exp: ExperimentConfig) -> list[str]:
    problems: list[str] = []
    if not _NAME.fullmatch(exp.name):
        problems.append(f"{prefix}.name: {_NAME_RULE}")
    if len(exp.arms) < 2:
        problems.append(f"{prefix}.arms: needs a control and at least one candidate")
    for arm in exp.arms:
        if not _NAME.fullmatch(arm):
            problems.append(f"{prefix}.arms.{arm}: an arm's name {_NAME_RULE}")
    if exp.weights is not None:
        for arm, weight in exp.weights.items():
            if arm not in exp.arms:
                problems.append(f"{prefix}.weights.{arm}: not an arm (arms: {', '.join(exp.arms)})")
            elif not (math.isfinite(weight) and weight >= 0):
                problems.append(f"{prefix}.weights.{arm}: must be a finite number >= 0")
        if not any(exp.weights.get(arm, 0) > 0 for arm in exp.arms):
            problems.append(f"{prefix}.weights: at least one arm needs a positive weight")
    try:
        parse_sticky_by(exp.sticky_by)
    except ValueError as err:
        problems.append(f"{prefix}.sticky_by: {err}")
    start, stop = as_unix(exp.start), as_unix(exp.stop)
    if start is not None and stop is not None and stop <= start:
        problems.append(f"{prefix}.stop: must come after start")
    if exp.ramp is not None:
        ramp = exp.ramp
        if start is None:
            problems.append(f"{prefix}.ramp: needs `start`, so every replica ramps on the same clock")
        if not (math.isfinite(ramp.duration_s) and ramp.duration_s >= 0):
            problems.append(f"{prefix}.ramp.duration_s: must be a finite number >= 0")
        if not 0 <= ramp.from_share <= 1:
            problems.append(f"{prefix}.ramp.from_share: must be between 0 and 1")
        if ramp.to_share is not None and not ramp.from_share <= ramp.to_share <= 1:
            problems.append(f"{prefix}.ramp.to_share: must be between from_share and 1 (a ramp only grows)")
    if not 0 < exp.alpha < 0.5:
        problems.append(f"{prefix}.alpha: must be between 0 and 0.5")
    if exp.target_n < 10:
        problems.append(f"{prefix}.target_n: must be at least 10")
    if exp.min_samples < 2:
        problems.append(f"{prefix}.min_samples: must be at least 2")
    return problems


def route_experiment_problems(
    prefix: str, experiment: ExperimentConfig | None, shadow: ShadowConfig | None,
    backends: set[str], exact_routes: dict[str, bool],
) -> list[str]:
    """Problems of one route's `experiment` and `shadow` sections, each as `path: what is wrong`.

    `exact_routes` maps every exact route's model to whether it has an experiment itself (an
    arm may not be a route that runs its own experiment: assignments would nest).
    """
    problems: list[str] = []
    routes = set(exact_routes)
    if experiment is not None:
        problems.extend(_design_problems(f"{prefix}.experiment", experiment))
        for arm, target in experiment.arms.items():
            found = resolve_target(target, backends, routes)
            if isinstance(found, str):
                problems.append(f"{prefix}.experiment.arms.{arm}: {found}")
            elif found[0] == "route" and exact_routes.get(found[1]):
                problems.append(f"{prefix}.experiment.arms.{arm}: route '{found[1]}' runs an experiment "
                                "itself; experiments do not nest")
    if shadow is not None:
        where = f"{prefix}.shadow"
        if not _NAME.fullmatch(shadow.name):
            problems.append(f"{where}.name: {_NAME_RULE}")
        if experiment is not None and shadow.name == experiment.name:
            problems.append(f"{where}.name: must differ from the route's experiment name")
        found = resolve_target(shadow.target, backends, routes)
        if isinstance(found, str):
            problems.append(f"{where}.target: {found}")
        if not 0 < shadow.sample <= 1:
            problems.append(f"{where}.sample: must be in (0, 1]")
        if shadow.max_in_flight < 1:
            problems.append(f"{where}.max_in_flight: must be at least 1")
    return problems


class _RouteSections(Protocol):
    model: str
    experiment: ExperimentConfig | None
    shadow: ShadowConfig | None


def experiment_problems(routes: Sequence[_RouteSections], backends: set[str]) -> list[str]:
    """Problems of every route's `experiment` and `shadow`, and of names used twice across routes."""
    exact_routes = {r.model: r.experiment is not None for r in routes if not any(c in r.model for c in "*?[")}
    problems: list[str] = []
    used: dict[str, str] = {}
    for i, route in enumerate(routes):
        problems.extend(route_experiment_problems(f"routes[{i}]", route.experiment, route.shadow, backends,
                                                  exact_routes))
        for section, what in ((route.experiment, "experiment"), (route.shadow, "shadow")):
            if section is None:
                continue
            if section.name in used:
                problems.append(f"routes[{i}].{what}.name: '{section.name}' is already used by {used[section.name]}")
            used.setdefault(section.name, f"routes[{i}].{what}")
    return problems


def experiments_problems(section: ExperimentsConfig) -> list[str]:
    """Range problems of the gateway-wide `experiments` section."""
    checks = [
        ("feedback_ttl_s", section.feedback_ttl_s > 0, "be positive"),
        ("check_interval_s", section.check_interval_s > 0, "be positive"),
        ("flush_interval_s", section.flush_interval_s > 0, "be positive"),
    ]
    return [f"experiments.{key}: must {must}" for key, ok, must in checks if not ok]
