"""Per-key limits: requests and tokens per minute, and a spend budget per period.

Set on an API key (`auth.keys[].limits`) or for every key without its own (`auth.default_limits`);
a key's own `limits` replaces the defaults whole (`limits: {}` makes a key unlimited). Every field
is optional: one left out is not limited.

```yaml
auth:
  default_limits: {requests_per_minute: 600, tokens_per_minute: 200000}
  keys:
    - name: team-a
      sha256: 9f86d081884c7d65...
      limits: {requests_per_minute: 60, tokens_per_minute: 40000, budget_usd: 25, budget_period: month}
```

Kept beside the limiter; `gateway/auth/settings.py` embeds these structs and checks them with
`limits_problems`.
"""

from __future__ import annotations

from typing import Literal, get_args

import msgspec

BudgetPeriod = Literal["day", "month", "total"]
BUDGET_PERIODS: tuple[str, ...] = get_args(BudgetPeriod)


class LimitsConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, frozen=True):
    """One key's limits (None: not limited)."""

    # Requests admitted per minute; a full minute's worth may come at once (the burst), then
    # one every 60/requests_per_minute seconds.
    requests_per_minute: int | None = None
    # Prompt + completion tokens a backend processed for the key per minute, charged when the
    # answer is complete; a request is refused while the key is a minute or more in debt.
    tokens_per_minute: int | None = None
    # US dollars of backend cost (the backends' `cost:` model) per `budget_period` (UTC).
    budget_usd: float | None = None
    budget_period: BudgetPeriod = "month"

    @property
    def any(self) -> bool:
        """Whether anything is limited at all."""
        return self.requests_per_minute is not None or self.tokens_per_minute is not None or \
            self.budget_usd is not None


def limits_problems(prefix: str, limits: LimitsConfig) -> list[str]:
    """Range problems of one `limits` mapping, each `prefix.key: must ...`."""
    checks = [
        ("requests_per_minute", limits.requests_per_minute is None or limits.requests_per_minute >= 1,
         "be at least 1 (leave it out for no limit)"),
        ("tokens_per_minute", limits.tokens_per_minute is None or limits.tokens_per_minute >= 1,
         "be at least 1 (leave it out for no limit)"),
        ("budget_usd", limits.budget_usd is None or limits.budget_usd > 0,
         "be positive (leave it out for no budget; revoke a key to stop it)"),
    ]
    return [f"{prefix}.{key}: must {must}" for key, ok, must in checks if not ok]
