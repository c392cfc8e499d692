"""What an experiment keeps besides its arm totals: the running estimate over time, and whether
(and why) it stopped. Stored by an `ExperimentJournal` (`gateway.experiments.journal`), in process
or in Redis, so every replica reports the same history and obeys the same stop.
"""

from __future__ import annotations

import msgspec


class Estimate(msgspec.Struct, frozen=True):
    """One candidate against control on the experiment's metric at one look.

    `low`/`high` bound the confidence-sequence interval of `difference` (candidate - control);
    None while it is unbounded (too few samples).
    """

    n_control: int
    n_candidate: int
    difference: float
    low: float | None
    high: float | None


class HistoryPoint(msgspec.Struct, frozen=True):
    """The running estimate of every candidate at unix time `at`, on `metric`."""

    at: float
    metric: str
    arms: dict[str, Estimate]


class StopState(msgspec.Struct, frozen=True):
    """An experiment that stopped by itself at `at` because of `reason`; `serve` now serves every request."""

    at: float
    reason: str
    serve: str
