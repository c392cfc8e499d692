"""Maps a client's model name to a route: exact names first, then globs in config order."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from gateway.backend import Backend
from gateway.config import RouteConfig
from gateway.routing.interfaces import Policy


@dataclass(frozen=True, slots=True)
class Route:
    """A model name (or glob) with its candidate backends and the policy that orders them."""

    model: str
    backends: tuple[Backend, ...]
    policy: Policy
    config: RouteConfig = field(default_factory=lambda: RouteConfig(model="*", backends=[]))

    @property
    def is_glob(self) -> bool:
        return any(ch in self.model for ch in "*?[")


class RouteTable:
    """Looks routes up by model name; exact matches are cached dict hits."""

    def __init__(self, routes: list[Route]) -> None:
        self.routes = routes
        self._exact = {r.model: r for r in routes if not r.is_glob}
        self._globs = [r for r in routes if r.is_glob]
        self._resolved: dict[str, Route | None] = {}

    def lookup(self, model: str) -> Route | None:
        route = self._exact.get(model)
        if route is not None:
            return route
        if model in self._resolved:
            return self._resolved[model]
        found = next((r for r in self._globs if fnmatch.fnmatchcase(model, r.model)), None)
        if len(self._resolved) < 10_000:  # bounded: model names come from clients
            self._resolved[model] = found
        return found

    def model_names(self) -> list[str]:
        """Names for `GET /v1/models`: exact routes, then the backends' models behind glob routes."""
        names: list[str] = [r.model for r in self.routes if not r.is_glob]
        for route in self._globs:
            for backend in route.backends:
                if backend.config.model not in names:
                    names.append(backend.config.model)
        return names
