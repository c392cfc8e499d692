"""A route's experiment and shadow at run time: which arm serves a request, and what it is sent to.

Built once from the config (`build_route_experiments`): every arm becomes a `Route` the dispatcher
can serve, a backend arm a one-backend route that keeps the parent route's retries and resume, a
route arm that route itself with its own backends and policy. Arms never fall back to each other:
a candidate's failure is the candidate's result, not the control's.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import msgspec

from gateway.config import GatewayConfig
from gateway.experiments.assign import Arm, Assigner, Ramp, StickyBy, parse_sticky_by, sticky_key
from gateway.experiments.settings import ExperimentConfig, ShadowConfig, as_unix, resolve_target
from gateway.experiments.timeline import StopState
from gateway.routing.policies import make_policy
from gateway.routing.table import Route, RouteTable

Clock = Callable[[], float]


class ArmChoice(NamedTuple):
    """The arm that serves one request: `route` to dispatch to, `header` for the response.

    `recorded` is False once the experiment has stopped: the arm in force serves, but the
    experiment's books are closed.
    """

    experiment: str
    arm: str
    route: Route
    header: tuple[bytes, bytes]
    recorded: bool


class LiveExperiment:
    """One route's A/B experiment: assigns arms and knows each arm's route."""

    def __init__(self, config: ExperimentConfig, route_model: str, arm_routes: dict[str, Route],
                 targets: dict[str, str], *, clock: Clock = time.time, rng: Callable[[], float] = random.random,
                 ) -> None:
        self.config = config
        self.name = config.name
        self.route_model = route_model
        self.targets = targets
        self.control = config.control_arm()
        start = as_unix(config.start)
        ramp = None
        if config.ramp is not None and start is not None:
            ramp = Ramp(start, config.ramp.duration_s, config.ramp.from_share, config.ramp.to_share)
        self.assigner = Assigner(config.name, [Arm(a, w) for a, w in config.arm_weights().items()], ramp=ramp,
                                 start=start, stop=as_unix(config.stop), clock=clock, rng=rng)
        self.sticky: StickyBy = parse_sticky_by(config.sticky_by)
        self._choices = {arm: ArmChoice(config.name, arm, arm_routes[arm],
                                        (b"x-gateway-experiment", f"{config.name}={arm}".encode()), True)
                         for arm in config.arms}
        self.stopped: StopState | None = None
        self._stopped_choice: ArmChoice | None = None

    def stop(self, state: StopState | None) -> None:
        """Serve every request from `state.serve` from now on (None: run again)."""
        self.stopped = state
        if state is None:
            self._stopped_choice = None
            return
        chosen = self._choices[state.serve]
        self._stopped_choice = chosen._replace(
            header=(b"x-gateway-experiment", f"{self.name}={state.serve}; stopped".encode()), recorded=False)

    def ramping(self, now: float) -> bool:
        """Whether a ramp is still moving the split at `now` (its assignments have no fixed design)."""
        ramp = self.assigner.ramp
        return ramp is not None and now < ramp.start_at + ramp.duration_s

    def active(self) -> bool:
        """Assigning arms now: inside [start, stop) and not stopped."""
        return self.stopped is None and self.assigner.active()

    def choose(self, body: Mapping[str, Any], headers: Sequence[tuple[bytes, bytes]], tenant: str) -> ArmChoice | None:
        """The arm for this request, or None outside [start, stop) (the route then serves as usual)."""
        if self._stopped_choice is not None:
            return self._stopped_choice
        arm = self.assigner.assign(sticky_key(self.sticky, body, headers, tenant))
        return None if arm is None else self._choices[arm]


class ShadowExperiment:
    """One route's shadow: which requests are mirrored, and to what."""

    SERVED = "served"  # the arm that stands for what users got
    CANDIDATE = "candidate"

    def __init__(self, config: ShadowConfig, route_model: str, target_route: Route, target: str,
                 *, rng: Callable[[], float] = random.random) -> None:
        self.config = config
        self.name = config.name
        self.route_model = route_model
        self.target_route = target_route
        self.target = target
        self.in_flight = 0
        self._rng = rng

    def sampled(self) -> bool:
        """Whether this request is in the mirrored sample (before looking at capacity)."""
        return self.config.sample >= 1.0 or self._rng() < self.config.sample

    def reserve(self) -> bool:
        """Take a mirroring slot; False when `max_in_flight` are already out (the request is skipped)."""
        if self.in_flight >= self.config.max_in_flight:
            return False
        self.in_flight += 1
        return True

    def release(self) -> None:
        self.in_flight -= 1


class RouteExperiments(NamedTuple):
    """What runs on one route."""

    live: LiveExperiment | None
    shadow: ShadowExperiment | None


def _describe(kind: str, name: str) -> str:
    return f"{kind} {name}"


def _target_route(parent: Route, target: str, config: GatewayConfig, table: RouteTable,
                  backends: Mapping[str, Any]) -> tuple[Route, str]:
    exact = {r.model for r in table.routes if not r.is_glob}
    found = resolve_target(target, set(backends), exact)
    if isinstance(found, str):  # validated at load: only a config built around the loader gets here
        raise ValueError(found)
    kind, name = found
    if kind == "route":
        route = table.lookup(name)
        assert route is not None
        return route, _describe(kind, name)
    route_config = msgspec.structs.replace(parent.config, backends=[name], experiment=None, shadow=None,
                                           policy="first_healthy")
    return Route(model=parent.model, backends=(backends[name],),
                 policy=make_policy("first_healthy", route_config, config.routing.stats),
                 config=route_config), _describe(kind, name)


def build_route_experiments(config: GatewayConfig, table: RouteTable, backends: Mapping[str, Any], *,
                            clock: Clock = time.time, rng: Callable[[], float] = random.random,
                            ) -> dict[str, RouteExperiments]:
    """Route model -> its experiment and shadow, for every route that has either."""
    found: dict[str, RouteExperiments] = {}
    for route in table.routes:
        route_config = route.config
        live = shadow = None
        if route_config.experiment is not None:
            arm_routes: dict[str, Route] = {}
            targets: dict[str, str] = {}
            for arm, target in route_config.experiment.arms.items():
                arm_routes[arm], targets[arm] = _target_route(route, target, config, table, backends)
            live = LiveExperiment(route_config.experiment, route.model, arm_routes, targets, clock=clock, rng=rng)
        if route_config.shadow is not None:
            target_route, target = _target_route(route, route_config.shadow.target, config, table, backends)
            shadow = ShadowExperiment(route_config.shadow, route.model, target_route, target, rng=rng)
        if live is not None or shadow is not None:
            found[route.model] = RouteExperiments(live, shadow)
    return found
