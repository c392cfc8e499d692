"""Config hot reload: on SIGHUP, on a change of the config file, or on POST /admin/reload.

A reload reads and validates the file first; a config with problems is refused with every
problem logged and the running config keeps serving. A valid one becomes a new `GatewayState`
that takes over what did not change (backends with the same settings keep their connections and
managed servers, the routing statistics, the response cache, the metrics) and starts the rest;
only when it is up is it swapped in. Requests already running, streams included, finish on the
state they started with; that state is closed when its last request is done, or after
`server.drain_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.ops.live_state import LiveState, wait_drained
from gateway.plugins import BackendRegistry, PluginError
from gateway.routing.periodic import PeriodicTask
from gateway.state import GatewayState

log = logging.getLogger("gateway.reload")


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class ReloadOutcome:
    """What one reload did: `ok`, the generation now serving, and the problems or changes."""

    __slots__ = ("changes", "generation", "ok", "problems", "trigger")

    def __init__(self, trigger: str, ok: bool, generation: int, *, problems: list[str] | None = None,
                 changes: dict[str, list[str]] | None = None) -> None:
        self.trigger = trigger
        self.ok = ok
        self.generation = generation
        self.problems = problems or []
        self.changes = changes or {}

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "trigger": self.trigger, "generation": self.generation, "problems": self.problems,
                **self.changes}


class ConfigReloader:
    """Reloads `config_path` into `live`; one reload at a time."""

    def __init__(self, live: LiveState, config_path: str | Path, registry: BackendRegistry, *,
                 watch_interval_s: float | None = None,
                 build: Callable[[GatewayConfig, GatewayState], GatewayState] | None = None) -> None:
        self.live = live
        # Not resolved through symlinks: a Kubernetes ConfigMap volume swaps a `..data` link to a new
        # folder on each update and deletes the old one, so the path must be followed afresh every read.
        self.path = Path(config_path).absolute()
        self.registry = registry
        self._build = build or self._build_state
        self._lock = asyncio.Lock()
        self._digest = _digest(self.path)
        self._retiring: set[asyncio.Task[None]] = set()
        self._watch = (PeriodicTask("config-watch", self._check_file, watch_interval_s)
                       if watch_interval_s else None)
        self.last: ReloadOutcome | None = None

    def _build_state(self, config: GatewayConfig, previous: GatewayState) -> GatewayState:
        return GatewayState(config, self.registry, config_dir=self.path.parent, previous=previous)

    def start(self) -> None:
        if self._watch is not None:
            self._watch.start()
            log.info("watching %s for changes", self.path)

    async def aclose(self) -> None:
        """Stop watching; states still draining are closed now (the process is stopping)."""
        if self._watch is not None:
            await self._watch.stop()
        for task in list(self._retiring):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _check_file(self) -> None:
        # The content, not the mtime: editors and Kubernetes' ConfigMap volumes replace files in ways
        # that move mtimes without changes (and the other way round on coarse clocks).
        digest = await asyncio.to_thread(_digest, self.path)
        if digest is not None and digest != self._digest:
            await self.reload("file change")

    async def reload(self, trigger: str) -> ReloadOutcome:
        async with self._lock:
            outcome = await self._reload(trigger)
            self.last = outcome
            return outcome

    async def _reload(self, trigger: str) -> ReloadOutcome:
        live = self.live
        digest = await asyncio.to_thread(_digest, self.path)
        self._digest = digest  # a refused file is not retried until it changes again
        log.info("reloading %s (%s)", self.path, trigger)
        try:
            config = await asyncio.to_thread(load_config, self.path, validators=self.registry.validators())
        except ConfigError as err:
            for problem in err.problems:
                log.error("reload refused: %s", problem)
            log.error("config %s has %d problem(s); still serving generation %d", self.path,
                      len(err.problems), live.generation)
            return ReloadOutcome(trigger, False, live.generation, problems=list(err.problems))
        except (OSError, PluginError) as err:
            log.error("reload refused: %s; still serving generation %d", err, live.generation)
            return ReloadOutcome(trigger, False, live.generation, problems=[str(err)])
        old = live.current
        try:
            new = self._build(config, old)
        except Exception as err:
            log.exception("reload refused: building the new state failed")
            return ReloadOutcome(trigger, False, live.generation, problems=[f"building the new state: {err}"])
        try:
            await new.startup()
        except Exception as err:
            log.error("reload refused: the new config did not start (%s); still serving generation %d",
                      err, live.generation)
            return ReloadOutcome(trigger, False, live.generation, problems=[f"start-up: {err}"])
        await old.stop_background()
        live.swap(new)
        changes = _changes(old, new)
        log.info("config reloaded: generation %d serving; backends kept %s, started %s, stopped %s; "
                 "%d request(s) finishing on the previous config", live.generation, changes["kept"] or "none",
                 changes["started"] or "none", changes["stopped"] or "none", old.open_requests)
        task = asyncio.create_task(self._retire(old, new), name="retire-config")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
        return ReloadOutcome(trigger, True, live.generation, changes=changes)

    async def _retire(self, old: GatewayState, new: GatewayState) -> None:
        """Close the replaced state once its requests are done (or its drain deadline passes)."""
        deadline = old.config.server.drain_s
        try:
            if not await wait_drained(old, deadline):
                log.warning("%d request(s) still open on the previous config after %.0fs; closing it",
                            old.open_requests, deadline)
        finally:
            await old.shutdown(successor=new)


def _changes(old: GatewayState, new: GatewayState) -> dict[str, list[str]]:
    return {
        "kept": sorted(new.carried_backends),
        "started": sorted(set(new.backends) - new.carried_backends),
        "stopped": sorted(set(old.backends) - new.carried_backends),
        "carried": sorted(new.carried),
    }
