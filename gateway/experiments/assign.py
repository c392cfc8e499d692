"""Which arm of an experiment serves a request: a pure function of the sticky key, with no state.

A key (a user, a header value, an API key) is hashed together with the experiment's name into
two uniforms in [0, 1): the first decides control or candidate, the second which candidate.
Every replica therefore assigns the same arm to the same key without sharing anything, and two
experiments with different names assign independently of each other.

Keeping the two decisions on separate uniforms is what makes a ramp safe: a key is a candidate
while its first uniform lies in the top `share` of [0, 1). As the candidates' share grows that
region only widens, so a key moves from control to a candidate at most once and never back,
and the second uniform, untouched by the ramp, keeps it on the same candidate throughout.

Requests without a sticky key fall back to the injected rng and are not sticky.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

Clock = Callable[[], float]
Rng = Callable[[], float]

# The label `gateway.api.tenant` gives every caller without an API key; it names no one, so it
# must not make all anonymous requests stick to one arm.
ANONYMOUS_TENANT = "anonymous"
_STICKY_FORMS = "'user', 'api_key' or 'header:<name>'"


class Arm(NamedTuple):
    """One arm of an experiment and its relative weight in the design."""

    name: str
    weight: float


@dataclass(frozen=True, slots=True)
class Ramp:
    """Grows the candidates' total share linearly from `from_share` to `to_share` over `duration_s`.

    Before `start_at` the share is `from_share`, after the ramp it stays at `to_share`; the
    control takes the rest. `to_share=None` means the share the arms' weights design. A ramp
    may only grow: shrinking it would move keys back from a candidate to the control.
    """

    start_at: float
    duration_s: float
    from_share: float = 0.0
    to_share: float | None = None

    def share_at(self, now: float, designed_share: float) -> float:
        """The candidates' total share at `now`."""
        to_share = designed_share if self.to_share is None else self.to_share
        if self.duration_s <= 0 or now >= self.start_at + self.duration_s:
            return to_share if now >= self.start_at else self.from_share
        progress = max(0.0, (now - self.start_at) / self.duration_s)
        return self.from_share + (to_share - self.from_share) * progress


def _unit(chunk: bytes) -> float:
    # The top 53 bits, so the float is exact and strictly below 1.0.
    return (int.from_bytes(chunk, "big") >> 11) * 2.0**-53


def key_units(experiment: str, key: str) -> tuple[float, float]:
    """Two independent uniforms in [0, 1) for `key` in `experiment`; the same on every process."""
    # The NUL keeps ("ab", "c") and ("a", "bc") apart.
    digest = hashlib.blake2b(f"{experiment}\0{key}".encode(), digest_size=16).digest()
    return _unit(digest[:8]), _unit(digest[8:])


class Assigner:
    """Assigns requests to the arms of one experiment; the first arm is the control.

    `start` and `stop` (unix seconds, either may be None) bound the experiment to
    [start, stop); outside it `assign` answers None and the route serves as if there were no
    experiment. `clock` and `rng` are injected for tests; `rng` is used only for requests
    that have no sticky key.
    """

    def __init__(
        self, name: str, arms: Sequence[Arm], *, ramp: Ramp | None = None, start: float | None = None,
        stop: float | None = None, clock: Clock = time.time, rng: Rng = random.random,
    ) -> None:
        if not name:
            raise ValueError("an experiment needs a name")
        if len(arms) < 2:
            raise ValueError(f"experiment {name!r} needs a control and at least one candidate arm")
        names = [arm.name for arm in arms]
        if len(set(names)) != len(names) or not all(names):
            raise ValueError(f"experiment {name!r}: arm names must be non-empty and distinct, got {names}")
        if any(not (arm.weight >= 0 and math.isfinite(arm.weight)) for arm in arms):
            raise ValueError(f"experiment {name!r}: arm weights must be finite and non-negative")
        total = math.fsum(arm.weight for arm in arms)
        if total <= 0:
            raise ValueError(f"experiment {name!r}: arm weights must not all be zero")
        if start is not None and stop is not None and stop <= start:
            raise ValueError(f"experiment {name!r}: stop ({stop}) must come after start ({start})")
        self.name = name
        self.arms = tuple(arms)
        self.control = arms[0].name
        candidate_weight = math.fsum(arm.weight for arm in arms[1:])
        self.designed_share = candidate_weight / total
        if ramp is not None:
            _check_ramp(name, ramp, self.designed_share)
        self.ramp = ramp
        self.start = start
        self.stop = stop
        self._clock = clock
        self._rng = rng
        # Cumulative bounds of each candidate within the candidates' own [0, 1).
        self._candidates: list[tuple[float, str]] = []
        running = 0.0
        for arm in arms[1:]:
            if arm.weight > 0:
                running += arm.weight
                self._candidates.append((running / candidate_weight, arm.name))

    def active(self, now: float | None = None) -> bool:
        """Whether `now` lies within [start, stop)."""
        now = self._clock() if now is None else now
        return (self.start is None or now >= self.start) and (self.stop is None or now < self.stop)

    def candidate_share(self, now: float | None = None) -> float:
        """The candidates' total share at `now`: the designed one, or the ramp's."""
        now = self._clock() if now is None else now
        return self.designed_share if self.ramp is None else self.ramp.share_at(now, self.designed_share)

    def shares(self, now: float | None = None) -> dict[str, float]:
        """Each arm's expected share of requests at `now` (what an SRM check compares against)."""
        candidate_share = self.candidate_share(now)
        shares = {arm.name: 0.0 for arm in self.arms}
        shares[self.control] = 1.0 - candidate_share
        lower = 0.0
        for upper, arm_name in self._candidates:
            shares[arm_name] = candidate_share * (upper - lower)
            lower = upper
        return shares

    def assign(self, sticky_key: str | None, now: float | None = None) -> str | None:
        """The arm that serves a request with `sticky_key` at `now`, or None outside [start, stop)."""
        now = self._clock() if now is None else now
        if not self.active(now):
            return None
        if sticky_key is None:
            side, which = self._rng(), self._rng()
        else:
            side, which = key_units(self.name, sticky_key)
        return self.arm_for(side, which, self.candidate_share(now))

    def arm_for(self, side: float, which: float, candidate_share: float) -> str:
        """The arm for the uniforms (`side`, `which`) when the candidates hold `candidate_share`."""
        # Candidates own the top of [0, 1), so a growing share only ever adds keys to them.
        if not self._candidates or side < 1.0 - candidate_share:
            return self.control
        for upper, arm_name in self._candidates:
            if which < upper:
                return arm_name
        return self._candidates[-1][1]  # `which` at the rounding edge of the last bound


def _check_ramp(name: str, ramp: Ramp, designed_share: float) -> None:
    to_share = designed_share if ramp.to_share is None else ramp.to_share
    if not (0.0 <= ramp.from_share <= 1.0 and 0.0 <= to_share <= 1.0):
        raise ValueError(f"experiment {name!r}: ramp shares must lie in [0, 1]")
    if to_share < ramp.from_share:
        raise ValueError(f"experiment {name!r}: a ramp may only grow the candidates' share "
                         f"({ramp.from_share:g} -> {to_share:g})")
    if ramp.duration_s < 0 or not math.isfinite(ramp.duration_s):
        raise ValueError(f"experiment {name!r}: ramp duration must be finite and non-negative")
    if designed_share <= 0 and to_share > 0:
        raise ValueError(f"experiment {name!r}: a ramp needs a candidate with a positive weight")


class StickyBy(NamedTuple):
    """A parsed `sticky_by` setting: `kind` is user, api_key or header; `header` is lower-case."""

    kind: str
    header: bytes = b""


def parse_sticky_by(sticky_by: str) -> StickyBy:
    """Validates `sticky_by` ('user', 'api_key' or 'header:<name>'), e.g. when config loads."""
    if sticky_by in ("user", "api_key"):
        return StickyBy(sticky_by)
    prefix, sep, header = sticky_by.partition(":")
    if prefix == "header" and sep and header.strip():
        return StickyBy("header", header.strip().lower().encode("latin-1"))
    raise ValueError(f"invalid sticky_by {sticky_by!r}: use {_STICKY_FORMS}")


def sticky_key(
    sticky_by: str | StickyBy, body: Mapping[str, Any],
    headers: Mapping[bytes, bytes] | Sequence[tuple[bytes, bytes]], tenant: str | None,
) -> str | None:
    """The request's sticky key, or None when it has none (it is then assigned at random).

    "user" reads the body's `user` field, "header:<name>" the named header (matched without
    regard to case), "api_key" the tenant. Pass the exact per-key tenant
    (`gateway.api.tenant.cache_tenant`), not the capped metric label, which lumps callers together.
    """
    how = parse_sticky_by(sticky_by) if isinstance(sticky_by, str) else sticky_by
    if how.kind == "user":
        user = body.get("user")
        return user if isinstance(user, str) and user else None
    if how.kind == "api_key":
        return tenant if tenant and tenant != ANONYMOUS_TENANT else None
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    for header_name, value in pairs:
        if header_name.lower() == how.header:
            text = value.decode("latin-1").strip()
            return text or None
    return None
