"""Merging the workers' expositions under `gateway serve --workers N`."""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from gateway.ops.worker_metrics import Exposition, WorkerMetrics, merge


def worker(requests: int, in_flight: int, healthy: int, latencies: list[float]) -> str:
    registry = CollectorRegistry()
    Counter("gateway_requests", "Requests", ("route",), registry=registry).labels("chat").inc(requests)
    Gauge("gateway_in_flight_requests", "Open", registry=registry).set(in_flight)
    Gauge("gateway_backend_healthy", "Health", ("backend",), registry=registry).labels("a").set(healthy)
    histogram = Histogram("gateway_request_duration_seconds", "Duration", buckets=(0.1, 1.0), registry=registry)
    for latency in latencies:
        histogram.observe(latency)
    return generate_latest(registry).decode()


def samples(text: str) -> dict[str, float]:
    parsed = Exposition.parse(text)
    return {key: value for family in parsed.samples.values() for key, value in family}


def test_counters_and_histograms_add_up_and_gauges_follow_their_rule() -> None:
    own = worker(3, 1, 1, [0.05, 0.5])
    other = worker(4, 2, 0, [2.0])
    merged = samples(merge(own, [(other, True)]))
    assert merged['gateway_requests_total{route="chat"}'] == 7.0
    assert merged["gateway_in_flight_requests"] == 3.0  # each worker's own open requests: summed
    assert merged['gateway_backend_healthy{backend="a"}'] == 1.0  # a shared view: the answering worker's
    assert merged['gateway_request_duration_seconds_bucket{le="0.1"}'] == 1.0
    assert merged['gateway_request_duration_seconds_bucket{le="+Inf"}'] == 3.0
    assert merged["gateway_request_duration_seconds_count"] == 3.0
    assert merged["gateway_request_duration_seconds_sum"] == 2.55
    created = samples(own)['gateway_requests_created{route="chat"}']
    assert merged['gateway_requests_created{route="chat"}'] == min(created, samples(other)[
        'gateway_requests_created{route="chat"}'])
    # A worker that is gone (replaced on SIGHUP) still counts in the totals, not in the gauges.
    gone = samples(merge(own, [(other, False)]))
    assert gone['gateway_requests_total{route="chat"}'] == 7.0 and gone["gateway_in_flight_requests"] == 1.0


def test_the_merged_text_is_an_exposition_prometheus_reads() -> None:
    from prometheus_client.parser import text_string_to_metric_families

    text = merge(worker(1, 0, 1, [0.2]), [(worker(2, 1, 1, [0.3]), True), ("garbage line\n", True)])
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert families["gateway_requests"].type == "counter"
    assert families["gateway_request_duration_seconds"].type == "histogram"
    total = next(s for s in families["gateway_requests"].samples if s.name == "gateway_requests_total")
    assert total.value == 3.0


def test_workers_publish_and_each_scrape_answers_for_all(tmp_path: Path) -> None:
    first = WorkerMetrics(tmp_path, lambda: worker(5, 1, 1, []).encode(), pid=os.getpid())
    dead_pid = 2**22 + 12345  # beyond pid_max on Linux: never a live process
    second = WorkerMetrics(tmp_path, lambda: worker(2, 4, 1, []).encode(), pid=dead_pid)
    second.publish()
    merged = samples(first.collect().decode())
    assert merged['gateway_requests_total{route="chat"}'] == 7.0
    assert merged["gateway_in_flight_requests"] == 1.0  # the other one is not alive: its gauge is left out
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([f"{os.getpid()}.prom", f"{dead_pid}.prom"])
