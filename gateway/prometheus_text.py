"""Reading samples out of a Prometheus text page, for plugins whose servers report load there.

Every inference server names its gauges differently, but the exposition format is the same:
`name{label="value",...} value [timestamp]`. Plugins pick their names; this reads them.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from typing import NamedTuple

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class Sample(NamedTuple):
    """One line of a Prometheus page."""

    name: str
    labels: dict[str, str]
    value: float


def parse_samples(text: str, names: Collection[str]) -> list[Sample]:
    """The samples of the metrics in `names` (others are skipped without parsing them)."""
    prefixes = tuple(names)
    found: list[Sample] = []
    for line in text.splitlines():
        if not line.startswith(prefixes):
            continue
        match = _SAMPLE.match(line)
        if match is None or match.group(1) not in names:
            continue
        try:
            value = float(match.group(3))
        except ValueError:
            continue
        found.append(Sample(match.group(1), dict(_LABEL.findall(match.group(2) or "")), value))
    return found


def values_of(samples: list[Sample], name: str, **labels: str | None) -> list[float]:
    """Values of `name` whose labels match every given label (a None label matches any)."""
    return [
        s.value for s in samples
        if s.name == name and all(want is None or s.labels.get(key) == want for key, want in labels.items())
    ]


def total(samples: list[Sample], name: str, **labels: str | None) -> float | None:
    """The sum of matching samples, or None when the page has none."""
    found = values_of(samples, name, **labels)
    return sum(found) if found else None
