"""The experiments of a running gateway: arm metrics, feedback, history, auto-stop and reports.

One `ExperimentService` per process. The request path asks `for_route` (a dict lookup; routes
without an experiment pay nothing else), records through `finish`, and mirrors through `mirror`.
Everything shared between replicas (arm totals, the request -> arm ledger for feedback, the
running estimate's history and a stop) lives in Redis when a `redis` section is set, in this process
otherwise. A checker task samples each experiment's running estimate every `check_interval_s`
and, with `auto_stop`, stops an experiment once it is conclusive; every replica then follows the
stop it finds in the journal.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from gateway.errors import GatewayError
from gateway.experiments.arm_stats import (
    ArmStatsStore,
    ArmStatsUnavailable,
    InProcessArmStats,
    RedisArmStats,
    Tally,
)
from gateway.experiments.journal import ExperimentJournal, InProcessJournal, JournalUnavailable, RedisJournal
from gateway.experiments.ledger import FeedbackLedger, InProcessLedger, LedgerUnavailable, RedisLedger
from gateway.experiments.report import auto_stop_decision, build_report, estimate_point
from gateway.experiments.runtime import (
    ArmChoice,
    LiveExperiment,
    RouteExperiments,
    ShadowExperiment,
    build_route_experiments,
)
from gateway.experiments.shadow import ShadowRun
from gateway.experiments.tap import ServeTap
from gateway.routing.periodic import PeriodicTask
from gateway.schemas import RequestKind

if TYPE_CHECKING:
    from gateway.config import GatewayConfig
    from gateway.routing.dispatcher import Dispatcher
    from gateway.routing.shared import RoutingState
    from gateway.routing.table import RouteTable

log = logging.getLogger("gateway.experiments")
MAX_LABEL_CHARS = 64


def _unavailable(what: str, err: Exception) -> GatewayError:
    return GatewayError(503, f"{what} unavailable: {err}", type="api_error", code="experiments_unavailable")


class ExperimentService:
    """Every experiment and shadow of this gateway, and where their numbers are kept."""

    def __init__(self, config: GatewayConfig, table: RouteTable, backends: dict[str, Any], *,
                 clock: Callable[[], float] = time.time, previous: ExperimentService | None = None) -> None:
        """`previous`: the service of the config this one replaces (a reload). Numbers kept in this
        process (no Redis) are taken over from it, so a reload does not restart an experiment's counts,
        history or stop, just as one kept in Redis would not."""
        self.settings = config.experiments
        self.routes: dict[str, RouteExperiments] = build_route_experiments(config, table, backends, clock=clock)
        self.live: dict[str, LiveExperiment] = {r.live.name: r.live for r in self.routes.values() if r.live}
        self.shadows: dict[str, ShadowExperiment] = {r.shadow.name: r.shadow for r in self.routes.values()
                                                     if r.shadow}
        self._clock = clock
        redis = config.redis
        self.store: ArmStatsStore
        self.ledger: FeedbackLedger
        self.journal: ExperimentJournal
        if redis is not None and self.routes:
            self.store = RedisArmStats(redis, flush_interval_s=self.settings.flush_interval_s)
            self.ledger = RedisLedger(redis, self.settings.feedback_ttl_s,
                                      flush_interval_s=self.settings.flush_interval_s)
            self.journal = RedisJournal(redis)
            self.where = "redis"
        elif previous is not None and previous.where == "memory":
            self.store, self.journal = previous.store, previous.journal
            same_ttl = previous.settings.feedback_ttl_s == self.settings.feedback_ttl_s
            self.ledger = previous.ledger if same_ttl else InProcessLedger(self.settings.feedback_ttl_s)
            self.where = "memory"
        else:
            self.store = InProcessArmStats()
            self.ledger = InProcessLedger(self.settings.feedback_ttl_s)
            self.journal = InProcessJournal()
            self.where = "memory"
        self._checker = PeriodicTask("experiments-check", self._check_logged, self.settings.check_interval_s)
        self._mirrors: set[asyncio.Task[None]] = set()

    def describe(self) -> str:
        if not self.routes:
            return "none configured"
        names = ", ".join([*self.live, *self.shadows])
        return f"{len(self.live)} live, {len(self.shadows)} shadow ({names}); metrics in {self.where}"

    # -- the request path -------------------------------------------------------------------------

    def for_route(self, route_model: str) -> RouteExperiments | None:
        """The route's experiment and shadow, or None (the common case: one dict miss)."""
        return self.routes.get(route_model)

    def assigned(self, choice: ArmChoice, request_id: bytes, tenant: str) -> None:
        """Count an assignment and remember it for feedback."""
        if choice.recorded:
            live = self.live[choice.experiment]
            # The sample-ratio check compares the steady split only: mid-ramp shares keep moving.
            tally: Tally = "ramp_assigned" if live.ramping(self._clock()) else "assigned"
            self.store.count(choice.experiment, choice.arm, tally)
            self.ledger.remember(request_id.decode("ascii", "replace"), tenant, choice.experiment, choice.arm)

    def finish(self, choice: ArmChoice | None, tap: ServeTap, mirror: ShadowRun | None) -> None:
        """The request is over: record it for its arm and hand the served answer to its mirror."""
        if mirror is not None:
            self._spawn(mirror, tap)
        if choice is None or not choice.recorded or tap.status in (0, 499):
            return  # a client that hung up tells nothing about the arm
        if tap.dispatched:
            self.store.record(tap.observation(choice.experiment, choice.arm))
        elif tap.status == 200:
            self.store.count(choice.experiment, choice.arm, "cache_hits")

    def mirror(self, shadow: ShadowExperiment, kind: RequestKind, body: dict[str, Any], tenant: str, *,
               stream: bool, dispatcher: Dispatcher, routing: RoutingState) -> ShadowRun | None:
        """A mirror of this request when it is in the sample and a slot is free (None otherwise); it is
        sent by `finish`, once the user's response is over."""
        if not shadow.sampled():
            return None
        if not shadow.reserve():
            self.store.count(shadow.name, ShadowExperiment.CANDIDATE, "skipped")
            return None
        return ShadowRun(shadow, kind, body, tenant, stream=stream, dispatcher=dispatcher, routing=routing,
                         store=self.store)

    def _spawn(self, run: ShadowRun, tap: ServeTap) -> None:
        task = asyncio.get_running_loop().create_task(run.run(tap), name=f"shadow-{run.shadow.name}")
        self._mirrors.add(task)  # a strong reference until it ends, or the loop may drop it
        task.add_done_callback(self._mirrors.discard)

    # -- feedback -----------------------------------------------------------------------------------

    async def feedback(self, request_id: str, tenant: str, score: float | None, label: str | None) -> tuple[str, str]:
        """Join feedback to the arm that served `request_id` (for this tenant); (experiment, arm)."""
        try:
            taken = await self.ledger.take(request_id, tenant)
        except LedgerUnavailable as err:
            raise _unavailable("the experiment feedback store is", err) from err
        if taken.already_used:
            raise GatewayError(409, f"feedback for request {request_id!r} was already recorded",
                               param="request_id", code="feedback_exists")
        if taken.found is None:
            raise GatewayError(404, f"no experiment request {request_id!r} is known for this caller (unknown, "
                               f"not in an experiment, or older than {self.settings.feedback_ttl_s:g} s)",
                               param="request_id", code="request_not_found")
        experiment, arm = taken.found
        self.store.record_feedback(experiment, arm, score, label)
        return experiment, arm

    # -- reports --------------------------------------------------------------------------------------

    def names(self) -> list[dict[str, Any]]:
        """Every experiment, for `GET /admin/experiments`."""
        listed: list[dict[str, Any]] = []
        for live in self.live.values():
            stopped = live.stopped
            listed.append({"name": live.name, "kind": "live", "route": live.route_model, "active": live.active(),
                           "stopped": None if stopped is None else stopped.reason})
        for shadow in self.shadows.values():
            listed.append({"name": shadow.name, "kind": "shadow", "route": shadow.route_model, "active": True,
                           "stopped": None})
        return listed

    async def report(self, name: str) -> dict[str, Any]:
        """The full report of one experiment (404 for an unknown name, 503 when its store is away)."""
        if name not in self.live and name not in self.shadows:
            known = ", ".join([*self.live, *self.shadows]) or "none configured"
            raise GatewayError(404, f"no experiment named {name!r} (experiments: {known})", param="name",
                               code="experiment_not_found")
        flush = getattr(self.store, "flush", None)
        try:
            if flush is not None:
                await flush()  # this replica's last interval too
            totals = await self.store.totals(name)
            history = await self.journal.history(name)
        except (ArmStatsUnavailable, JournalUnavailable) as err:
            raise _unavailable("experiment statistics are", err) from err
        now = self._clock()
        live = self.live.get(name)
        if live is not None:
            config = live.config
            return build_report(
                name=name, kind="live", route=live.route_model, metric=config.metric, alpha=config.alpha,
                target_n=config.target_n, control=live.control, targets=live.targets,
                shares=live.assigner.shares(now), active=live.active(), stopped=live.stopped, totals=totals,
                history=history, now=now,
            )
        shadow = self.shadows[name]
        targets = {ShadowExperiment.SERVED: f"route {shadow.route_model}", ShadowExperiment.CANDIDATE: shadow.target}
        return build_report(
            name=name, kind="shadow", route=shadow.route_model, metric="e2e", alpha=0.05, target_n=1000,
            control=ShadowExperiment.SERVED, targets=targets, shares={}, active=True, stopped=None,
            totals=totals, history=history, now=now,
        )

    async def reset(self, name: str) -> None:
        """Forget an experiment's numbers, history and stop (404 for an unknown name)."""
        if name not in self.live and name not in self.shadows:
            raise GatewayError(404, f"no experiment named {name!r}", param="name", code="experiment_not_found")
        try:
            await self.store.reset(name)
            await self.journal.reset(name)
        except (ArmStatsUnavailable, JournalUnavailable) as err:
            raise _unavailable("experiment statistics are", err) from err
        if name in self.live:
            self.live[name].stop(None)

    # -- the checker ----------------------------------------------------------------------------------

    async def _check_logged(self) -> None:
        try:
            await self.check()
        except (ArmStatsUnavailable, JournalUnavailable) as err:
            log.debug("experiment check skipped: %s", err)
        except Exception:  # the checker must outlive any surprise
            log.exception("experiment check failed unexpectedly")

    async def check(self) -> None:
        """Sample every experiment's running estimate, follow or make stops (one pass of the checker)."""
        now = self._clock()
        for live in self.live.values():
            stopped = await self.journal.stopped(live.name)
            if stopped is not None and live.stopped is None:
                log.warning("experiment %s stopped: %s; serving %s", live.name, stopped.reason, stopped.serve)
            if stopped is not None or live.stopped is not None:
                live.stop(stopped)
            if live.stopped is not None or not live.assigner.active(now):
                continue
            config = live.config
            totals = await self.store.totals(live.name)
            point = estimate_point(metric=config.metric, alpha=config.alpha, target_n=config.target_n,
                                   control=live.control, totals=totals, now=now)
            if point is not None:
                await self.journal.append(live.name, point, min_gap_s=self.settings.check_interval_s * 0.9)
            decision = auto_stop_decision(config, totals, now)
            if decision is not None:
                in_force = await self.journal.stop(live.name, decision)
                live.stop(in_force)
                log.warning("experiment %s stopped: %s; serving %s", live.name, in_force.reason, in_force.serve)
        for shadow in self.shadows.values():
            totals = await self.store.totals(shadow.name)
            point = estimate_point(metric="e2e", alpha=0.05, target_n=1000, control=ShadowExperiment.SERVED,
                                   totals=totals, now=now)
            if point is not None:
                await self.journal.append(shadow.name, point, min_gap_s=self.settings.check_interval_s * 0.9)

    async def start(self) -> None:
        if not self.routes:
            return
        await self.store.start()
        await self.ledger.start()
        try:
            await self.check()  # pick up a stop another replica made before this one started
        except (ArmStatsUnavailable, JournalUnavailable) as err:
            log.warning("experiments: first check failed (%s); retrying every %g s", err,
                        self.settings.check_interval_s)
        self._checker.start()

    async def aclose(self) -> None:
        await self._checker.stop()
        pending = [task for task in self._mirrors if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        await self.store.aclose()
        await self.ledger.aclose()
        await self.journal.aclose()


def parse_feedback(data: Any) -> tuple[str, float | None, str | None]:
    """`{request_id, score?, label?}` -> (request_id, score, label); a 400 naming the field otherwise."""
    if not isinstance(data, dict):
        raise GatewayError(400, "the body must be a JSON object {request_id, score | label}", code="invalid_json")
    unknown = sorted(set(data) - {"request_id", "score", "label"})
    if unknown:
        raise GatewayError(400, f"unknown field {unknown[0]!r}: use request_id, score and/or label",
                           param=unknown[0], code="invalid_value")
    request_id = data.get("request_id")
    if not isinstance(request_id, str) or not 0 < len(request_id) <= 200:
        raise GatewayError(400, "'request_id' must be the request's x-request-id (a string of 1-200 characters)",
                           param="request_id", code="invalid_value")
    score, label = data.get("score"), data.get("label")
    if score is None and label is None:
        raise GatewayError(400, "give a 'score' (a number) or a 'label' (a string), or both", param="score",
                           code="missing_required_parameter")
    if score is not None and (isinstance(score, bool) or not isinstance(score, int | float)
                              or not math.isfinite(score)):
        raise GatewayError(400, "'score' must be a finite number", param="score", code="invalid_value")
    if label is not None and (not isinstance(label, str) or not 0 < len(label) <= MAX_LABEL_CHARS
                              or not label.isprintable()):
        raise GatewayError(400, f"'label' must be 1-{MAX_LABEL_CHARS} printable characters", param="label",
                           code="invalid_value")
    return request_id, None if score is None else float(score), label
