"""Spend budgets: which period a moment belongs to, when it ends, and how long its total is kept.

Spend is summed per key per period (UTC calendar days or months, or one running total) from the
cost model's price of each answered request (`record.cost_usd`; cache hits cost nothing). A request
is admitted while the period's spend is below the budget and charged when it is done, so a key can
overshoot by what its requests in flight cost, never by more; the overshoot stays on the books.

In Redis a period's total is one key, `<prefix>:spend:<period id>`, in nano-dollars raised with INCRBY, kept a
day past the period's end (so last month's spend can still be read), while a `total` budget's key
never expires. A refused request's Retry-After is the time until the period rolls over; a `total`
budget never rolls over, so its refusal has none and tells clients not to retry.
"""

from __future__ import annotations

import calendar
import math
import time
from typing import NamedTuple

from gateway.limits.settings import BudgetPeriod

_DAY_S = 86_400.0
KEEP_AFTER_END_S = _DAY_S  # a finished period's total stays readable this long


class Period(NamedTuple):
    """One budget period: its id (part of the Redis key), when it started and when it ends (epoch
    seconds; None: never)."""

    id: str
    starts_at: float
    ends_at: float | None

    def holds(self, now: float) -> bool:
        return self.starts_at <= now and (self.ends_at is None or now < self.ends_at)

    def seconds_left(self, now: float) -> int | None:
        """Whole seconds until the period rolls over (at least 1), None for a total budget."""
        if self.ends_at is None:
            return None
        return max(1, math.ceil(self.ends_at - now))

    def ttl_s(self, now: float) -> int:
        """The TTL a spend key written now gets (0: no expiry)."""
        if self.ends_at is None:
            return 0
        return max(1, math.ceil(self.ends_at - now + KEEP_AFTER_END_S))


def period_at(period: BudgetPeriod, now: float) -> Period:
    """The period `now` (epoch seconds) falls in, in UTC."""
    if period == "total":
        return Period("total", float("-inf"), None)
    t = time.gmtime(now)
    if period == "day":
        start = calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0, 0, 0, 0))
        return Period(f"d{t.tm_year:04d}{t.tm_mon:02d}{t.tm_mday:02d}", float(start), start + _DAY_S)
    start = calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0, 0, 0, 0))
    year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
    return Period(f"m{t.tm_year:04d}{t.tm_mon:02d}", float(start),
                  float(calendar.timegm((year, month, 1, 0, 0, 0, 0, 0, 0))))


class PeriodClock:
    """The current period of one budget, recomputed only when the cached one has ended (admission
    asks on every request; `time.gmtime` and string formatting are not free)."""

    __slots__ = ("_current", "_period")

    def __init__(self, period: BudgetPeriod) -> None:
        self._period = period
        self._current: Period | None = None

    def at(self, now: float) -> Period:
        current = self._current
        if current is None or not current.holds(now):
            current = self._current = period_at(self._period, now)
        return current


class SpendBooks:
    """The in-process store's spend: one running total per key, for its current period only."""

    def __init__(self) -> None:
        self._spent: dict[str, tuple[str, float]] = {}

    def spent(self, name: str, period: Period) -> float:
        found = self._spent.get(name)
        return found[1] if found is not None and found[0] == period.id else 0.0

    def add(self, name: str, period: Period, usd: float) -> None:
        self._spent[name] = (period.id, self.spent(name, period) + usd)
