"""What a contract-suite provider yields: how to reach one started backend server."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Provided:
    """A started server (real or emulated) and the gateway config block that points at it."""

    backend: dict[str, Any]  # one entry of the gateway config's `backends:` list
    model: str  # the model name the contract tests ask the gateway for
    knobs_url: str | None = None  # the emulator's /__emulator/knobs, None for a real server
