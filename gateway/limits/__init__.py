"""Per-key limits: requests and tokens per minute (GCRA) and spend budgets, shared through Redis."""
