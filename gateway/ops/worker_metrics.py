"""One /metrics for all the workers of `gateway serve --workers N`.

Each worker is a process with its own registry, and a scrape of the shared port reaches whichever
worker accepts it. So every worker publishes its exposition into a directory the parent made
(`$GATEWAY_METRICS_DIR`): at each scrape it answers, and every `interval_s` (2 s) in the background. A
scrape renders this worker's own numbers fresh and merges them with what the others published:

- counters, histograms and summaries are summed sample by sample (a worker that was replaced keeps
  its last file, so totals never go down when SIGHUP rolls the workers);
- `*_created` timestamps take the earliest;
- gauges are summed for the families that count this worker's own work (open requests, queued
  requests), and otherwise taken from the answering worker: health, breaker state and the shared
  routing state's in-flight counts are the same view in every worker, so adding them would be wrong.
  A dead worker's gauges are left out.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from gateway.routing.periodic import PeriodicTask

ENV = "GATEWAY_METRICS_DIR"
SUMMED_GAUGES = frozenset({"gateway_in_flight_requests", "gateway_backend_queue_depth"})


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Exposition:
    """Prometheus text parsed into families (name -> type, help) and samples in their order."""

    def __init__(self) -> None:
        self.types: dict[str, str] = {}
        self.helps: dict[str, str] = {}
        self.order: list[str] = []  # family names, first seen first
        self.samples: dict[str, list[tuple[str, float]]] = {}  # family -> [(sample key, value)]

    @classmethod
    def parse(cls, text: str) -> Exposition:
        parsed = cls()
        family = ""
        for line in text.splitlines():
            if line.startswith("# HELP "):
                name, _, help_text = line[7:].partition(" ")
                parsed.helps.setdefault(name, help_text)
            elif line.startswith("# TYPE "):
                family, _, kind = line[7:].partition(" ")
                parsed.types.setdefault(family, kind)
                if family not in parsed.samples:
                    parsed.samples[family] = []
                    parsed.order.append(family)
            elif line and not line.startswith("#") and family:  # a sample outside a family is not ours
                key, _, value = line.rpartition(" ")
                try:
                    parsed.samples.setdefault(family, []).append((key, float(value)))
                except ValueError:
                    continue
        return parsed


def merge(own: str, others: Iterable[tuple[str, bool]]) -> str:
    """`own` (the answering worker's text) merged with the others' (text, alive); see the module doc."""
    base = Exposition.parse(own)
    totals: dict[str, dict[str, float]] = {f: dict(s) for f, s in base.samples.items()}
    for text, alive in others:
        other = Exposition.parse(text)
        for family, samples in other.samples.items():
            kind = other.types.get(family, "untyped")
            if family not in totals:
                base.order.append(family)
                base.types[family] = kind
                if family in other.helps:
                    base.helps[family] = other.helps[family]
                totals[family] = {}
            if kind == "gauge" and (family not in SUMMED_GAUGES or not alive):
                continue
            into = totals[family]
            for key, value in samples:
                if key.partition("{")[0].endswith("_created"):
                    into[key] = min(into.get(key, value), value)
                else:
                    into[key] = into.get(key, 0.0) + value
    lines: list[str] = []
    for family in base.order:
        if family in base.helps:
            lines.append(f"# HELP {family} {base.helps[family]}")
        lines.append(f"# TYPE {family} {base.types.get(family, 'untyped')}")
        lines.extend(f"{key} {value!r}" for key, value in totals[family].items())
    return "\n".join(lines) + "\n"


class WorkerMetrics:
    """Publishes this worker's exposition and answers scrapes with every worker's, merged."""

    def __init__(self, directory: str | Path, render: Callable[[], bytes], *, interval_s: float = 2.0,
                 pid: int | None = None) -> None:
        self.directory = Path(directory)
        self.pid = pid if pid is not None else os.getpid()
        self._render = render
        self._task = PeriodicTask("worker-metrics", self._publish_async, interval_s)

    def publish(self) -> str:
        text = self._render().decode()
        path = self.directory / f"{self.pid}.prom"
        temporary = path.with_suffix(".tmp")
        with contextlib.suppress(OSError):  # a full disk costs the others a fresh view, not the scrape
            temporary.write_text(text)
            temporary.replace(path)  # readers see the old file or the new one, never half
        return text

    async def _publish_async(self) -> None:
        self.publish()

    def collect(self) -> bytes:
        own = self.publish()
        others: list[tuple[str, bool]] = []
        for path in sorted(self.directory.glob("*.prom")):
            pid = int(path.stem) if path.stem.isdigit() else -1
            if pid == self.pid:
                continue
            with contextlib.suppress(OSError):
                others.append((path.read_text(), _alive(pid)))
        return merge(own, others).encode()

    def start(self) -> None:
        self.publish()
        self._task.start()

    async def aclose(self) -> None:
        await self._task.stop()
        self.publish()  # its final counts stay for the totals
