"""`gateway.prometheus_text`: the samples plugins read their servers' load from."""

from __future__ import annotations

from gateway.prometheus_text import parse_samples, total, values_of

PAGE = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="m"} 2.0
vllm:num_requests_running{engine="1",model_name="m"} 3.0
vllm:num_requests_running_total 99
tgi_queue_size 4 1700000000000
weird{path="a\\"b} c",kind="x"} 7
broken{engine="0"} not-a-number
"""


def test_only_the_named_metrics_are_read_with_their_labels() -> None:
    samples = parse_samples(PAGE, ("vllm:num_requests_running", "tgi_queue_size", "weird", "broken"))
    assert [(s.name, s.value) for s in samples] == [
        ("vllm:num_requests_running", 2.0), ("vllm:num_requests_running", 3.0), ("tgi_queue_size", 4.0), ("weird", 7.0)
    ]  # a name that only starts like a wanted one, and an unreadable value, are left out
    assert samples[3].labels == {"path": 'a\\"b} c', "kind": "x"}


def test_totals_and_label_filters() -> None:
    samples = parse_samples(PAGE, ("vllm:num_requests_running",))
    assert total(samples, "vllm:num_requests_running") == 5.0
    assert total(samples, "vllm:num_requests_running", engine="1") == 3.0
    assert total(samples, "vllm:num_requests_running", engine=None, model_name="m") == 5.0
    assert total(samples, "vllm:num_requests_running", engine="7") is None
    assert values_of(samples, "nothing") == []
