"""The `prefix_affinity` policy: requests sharing a prompt prefix go where its KV cache already is.

A prefix seen before goes back to its home, the backend that last served it (a sticky table
over every key of the prompt's chain, so a follow-up turn finds its conversation). A new
prefix is placed by consistent hashing with bounded loads (CHWBL) over two quantities: the
number of live prefixes homed on each backend, against its fair share, and the backend's live
load (in flight + recently started), against `placement_bound` x its fair share. Fair shares
follow capacity, slots over the time a typical request decodes there, so a slow or degraded
backend is given less.

A prefix is re-homed when the move really evens things out, judged on the policy's own books
(requests of the prefixes homed on each backend, decayed over `balance_half_life_s` and moved
with a prefix at once, so a move shows at once): after the move the target must carry less,
relative to capacity, than the home would with half the prefix still on it, or the two would
swap roles and the prefix bounce back; and that gap must exceed chance, a few standard
deviations of the counts, so noise never moves a prefix. The live load vetoes a move onto a
busier backend. A prefix too busy for any one backend stays: splitting it would make every
backend pay its prefill. The tables are per gateway process; the ring is the same everywhere.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

from gateway.backend import Backend
from gateway.routing.interfaces import BackendStats, RequestFeatures, RouteChoice, RoutingStats
from gateway.routing.latency import slots, typical_output_tokens
from gateway.routing.prefix import DEFAULT_BUDGET_BYTES, HashRing, PrefixKeys, prefix_keys

PLACEMENT_BOUND = 2.0  # a new prefix skips backends over twice their fair share of the live load
SIGNIFICANCE = 2.0  # standard deviations by which an imbalance must beat chance before a prefix moves
TTL_S = 600.0  # a prefix unused this long is forgotten: by then the engine has evicted it too
MAX_ENTRIES = 100_000


def _decay(value: float, since: float, now: float, half_life_s: float) -> float:
    return value * 0.5 ** (max(0.0, now - since) / half_life_s) if value else 0.0


class _Entry:
    __slots__ = ("at", "backend", "count", "seen")

    def __init__(self, backend: str, now: float) -> None:
        self.backend = backend
        self.seen = now
        self.count = 0.0  # requests under this key, decayed
        self.at = now


class StickyTable:
    """prefix key -> the backend that last served it, and the key's recent requests.

    Entries unused for `ttl_s` or beyond `max_entries` (least recently used first) drop out.
    With `count_homes`, it also keeps how many live keys each backend is home to.
    """

    def __init__(self, *, max_entries: int = MAX_ENTRIES, ttl_s: float = TTL_S, half_life_s: float = 60.0,
                 count_homes: bool = False) -> None:
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self.half_life_s = half_life_s
        self.homes: dict[str, int] | None = {} if count_homes else None
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str, now: float) -> tuple[str, float] | None:
        """(home, the key's recent requests), or None when unknown or expired."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now - entry.seen > self.ttl_s:
            self._drop(key)
            return None
        return entry.backend, _decay(entry.count, entry.at, now, self.half_life_s)

    def put(self, keys: Iterable[str], backend: str, now: float) -> None:
        """One request under each of `keys` went to `backend`."""
        entries, homes = self._entries, self.homes
        for key in keys:
            entry = entries.get(key)
            if entry is None:
                entry = entries[key] = _Entry(backend, now)
                if homes is not None:
                    homes[backend] = homes.get(backend, 0) + 1
            else:
                entries.move_to_end(key)
                if homes is not None and entry.backend != backend:
                    homes[entry.backend] -= 1
                    homes[backend] = homes.get(backend, 0) + 1
            entry.count = _decay(entry.count, entry.at, now, self.half_life_s) + 1.0
            entry.backend, entry.seen, entry.at = backend, now, now
        # Least recently used first: drop the expired from the front, and any beyond the bound.
        while entries:
            oldest_key, oldest = next(iter(entries.items()))
            if len(entries) <= self.max_entries and now - oldest.seen <= self.ttl_s:
                break
            self._drop(oldest_key)

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key)
        if self.homes is not None:
            self.homes[entry.backend] -= 1


class _Books:
    """Requests assigned to a backend, decayed: a sum a move can shift at once."""

    __slots__ = ("at", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.at = 0.0

    def read(self, now: float, half_life_s: float) -> float:
        return _decay(self.value, self.at, now, half_life_s)

    def add(self, amount: float, now: float, half_life_s: float) -> None:
        self.value = max(0.0, self.read(now, half_life_s) + amount)
        self.at = now


def load(stats: BackendStats) -> float:
    """Open requests plus recently started ones (decayed): the backend's share of recent traffic,
    kept current by the in-flight count."""
    return stats.in_flight + stats.recent_requests


def capacities(candidates: Sequence[Backend], stats: dict[str, BackendStats]) -> dict[str, float]:
    """Requests per second each backend sustains with every slot busy: its slots over the time
    a typical request decodes there. TTFT is left out because it includes time spent queued,
    which says how busy a backend is, not how fast; a backend with no per-token figure yet
    counts as the average of the others."""
    tokens = typical_output_tokens(list(stats.values()))
    rates: dict[str, float] = {}
    for backend in candidates:
        backend_stats = stats[backend.name]
        if backend_stats.tpot_s is not None and backend_stats.tpot_s > 0:
            rates[backend.name] = slots(backend, backend_stats) / (backend_stats.tpot_s * tokens)
    default = sum(rates.values()) / len(rates) if rates else 1.0
    return {b.name: rates.get(b.name, default) for b in candidates}


class _Fleet(NamedTuple):
    """The candidates as one request sees them."""

    walk: list[str]  # ring order from the request's key
    loads: dict[str, float]  # in flight + recently started
    rates: dict[str, float]  # capacity, requests per second
    shares: dict[str, float]  # fair share: capacity over the candidates' total

    def load_limit(self, factor: float, name: str) -> float:
        """`factor` x the backend's fair share of all live load (+1: this request)."""
        return factor * (sum(self.loads.values()) + 1.0) * self.shares[name]


class PrefixAffinityPolicy:
    """Routes requests that share a prompt prefix to one backend, keeping load bounded (see the
    module's docstring). Fallbacks follow in ring order: where the prefix would go next."""

    name = "prefix_affinity"

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        half_life_s: float = 10.0,
        budget_bytes: int = DEFAULT_BUDGET_BYTES,
        placement_bound: float = PLACEMENT_BOUND,
    ) -> None:
        self.clock = clock
        self.budget_bytes = budget_bytes
        self.placement_bound = placement_bound
        # Balance is judged over several statistics half-lives: a prefix's traffic must be
        # known well before moving it is worth losing its cache.
        self.balance_half_life_s = 6.0 * half_life_s
        self.sticky = StickyTable(half_life_s=self.balance_half_life_s)  # every key of every chain
        self.prefixes = StickyTable(half_life_s=self.balance_half_life_s, count_homes=True)  # ring keys
        self._books: dict[str, _Books] = {}
        self._rings: dict[frozenset[str], HashRing] = {}

    def _ring(self, names: frozenset[str]) -> HashRing:
        ring = self._rings.get(names)
        if ring is None:
            if len(self._rings) >= 64:  # candidate sets come and go with health: keep a few
                self._rings.clear()
            ring = self._rings[names] = HashRing(names)
        return ring

    def _book(self, name: str) -> _Books:
        books = self._books.get(name)
        if books is None:
            books = self._books[name] = _Books()
        return books

    def rank(self, candidates: Sequence[Backend], request: RequestFeatures, stats: RoutingStats) -> list[RouteChoice]:
        if not candidates:
            return []
        by_name = {b.name: b for b in candidates}
        snapshot = {b.name: stats.get(b.name) for b in candidates}
        loads = {name: load(s) for name, s in snapshot.items()}
        keys = prefix_keys(request, self.budget_bytes)
        if keys is None:
            order = sorted(candidates, key=lambda b: loads[b.name])
            return [RouteChoice(order[0], "prefix_affinity: no prompt to key on, least loaded")] + [
                RouteChoice(b, "prefix_affinity fallback: less loaded") for b in order[1:]
            ]
        rates = capacities(candidates, snapshot)
        total_rate = sum(rates.values())
        fleet = _Fleet(
            walk=list(self._ring(frozenset(by_name)).walk(keys.key)),
            loads=loads,
            rates=rates,
            shares={name: rate / total_rate for name, rate in rates.items()},
        )
        now = self.clock()
        chosen, reason = self._choose(keys, fleet, now)
        self.sticky.put(keys.chain, chosen, now)
        self.prefixes.put((keys.key,), chosen, now)
        self._book(chosen).add(1.0, now, self.balance_half_life_s)
        choices = [RouteChoice(by_name[chosen], reason)]
        fallback = "prefix_affinity fallback: next on ring"
        return choices + [RouteChoice(by_name[n], fallback) for n in fleet.walk if n != chosen]

    def _choose(self, keys: PrefixKeys, fleet: _Fleet, now: float) -> tuple[str, str]:
        short = keys.key[:6]
        found = self._home(keys.chain, fleet.loads, now)
        if found is None:
            name, how = self._place(fleet)
            if self.prefixes.get(keys.key, now) is not None:  # known, but its home is not available
                return name, f"prefix_affinity: home of prefix {short} unavailable, {how}"
            return name, f"prefix_affinity: new prefix {short}, {how}"
        home, traffic = found
        stay = f"prefix_affinity: home of prefix {short}"
        half_life = self.balance_half_life_s
        books = {n: self._book(n).read(now, half_life) for n in fleet.walk}
        rates = fleet.rates
        target = min((n for n in fleet.walk if n != home), key=lambda n: (books[n] + traffic) / rates[n], default=None)
        if target is not None and self._evens_out(home, target, traffic, books, fleet):
            self._book(home).add(-traffic, now, half_life)
            self._book(target).add(traffic, now, half_life)
            return target, f"prefix_affinity: prefix {short} re-homed to even out the load"
        if fleet.loads[home] >= fleet.load_limit(self.placement_bound, home):
            return home, stay + " (busy, but moving it would not even the load)"
        return home, stay

    def _place(self, fleet: _Fleet) -> tuple[str, str]:
        """CHWBL for a new prefix: the first backend on the ring under both bounds, its fair share
        of the live prefixes (rounded to whole prefixes) and of the live load; failing that, the
        backend furthest under its share of prefixes (ring order among near-equals). Returns the
        backend and how it was chosen."""
        homes = self.prefixes.homes
        assert homes is not None
        counts = {n: homes.get(n, 0) for n in fleet.walk}
        total = sum(counts.values())
        loads, shares = fleet.loads, fleet.shares
        light = [n for n in fleet.walk if loads[n] < fleet.load_limit(self.placement_bound, n)] or fleet.walk
        for name in light:
            if counts[name] + 1 <= max(1.0, (total + 1) * shares[name] + 0.5):
                skipped = fleet.walk.index(name)
                return name, "ring owner" if skipped == 0 else f"skipped {skipped} over their share on the ring"
        fill = {n: (counts[n] + 1) / shares[n] for n in light}
        least = min(fill.values())
        return next(n for n in light if fill[n] <= 1.1 * least), "fewest prefixes for its share"

    def _home(self, chain: Sequence[str], loads: dict[str, float], now: float) -> tuple[str, float] | None:
        """The candidate holding the longest recorded part of this prompt, and that key's traffic."""
        for key in chain:
            found = self.sticky.get(key, now)
            if found is not None and found[0] in loads:
                return found
        return None

    def _evens_out(self, home: str, target: str, traffic: float, books: dict[str, float], fleet: _Fleet) -> bool:
        """Whether moving `traffic` from `home` to `target` makes the two more even, not swapped,
        by more than chance: relative to their capacities, the target must end up below the home
        with half the traffic still on it, by `SIGNIFICANCE` standard deviations of the counts
        (Poisson); and the live load must not say the target is busier."""
        rates, loads = fleet.rates, fleet.loads
        if loads[target] / rates[target] >= loads[home] / rates[home]:
            return False
        gap = (books[home] - traffic / 2) / rates[home] - (books[target] + traffic) / rates[target]
        noise = math.sqrt(books[home] / rates[home] ** 2 + books[target] / rates[target] ** 2)
        return gap > SIGNIFICANCE * noise
