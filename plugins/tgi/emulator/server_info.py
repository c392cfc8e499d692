"""`GET /info` and `GET /metrics` of the emulated server.

`/info` is `Info` in router/src/lib.rs, field for field. `/metrics` is the Prometheus text the
`metrics-exporter-prometheus` crate renders for the names and descriptions TGI registers in
router/src/server.rs (`describe_counter!`, `describe_gauge!`): counters without a `_total`
suffix, `# HELP` and `# TYPE` before each family.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from plugins.tgi.emulator.validation import ServerLimits

VERSION = "3.3.6"  # the release line whose router code this emulator follows


@dataclass(slots=True)
class ServerState:
    """What the emulated router knows about itself and has counted."""

    model_id: str = "HuggingFaceTB/SmolLM2-135M-Instruct"
    limits: ServerLimits = field(default_factory=ServerLimits)
    max_concurrent_requests: int = 128
    enable_prefill_logprobs: bool = False
    requests: Counter[str] = field(default_factory=Counter)  # per route, for tests (GET /__emulator/requests)
    request_count: int = 0
    request_success: int = 0
    failures: Counter[str] = field(default_factory=Counter)  # tgi_request_failure{err=...}

    @property
    def fingerprint(self) -> str:
        return f"{VERSION}-native"  # "{version}-{docker_label or native}"

    def info(self) -> dict[str, Any]:
        limits = self.limits
        return {
            "model_id": self.model_id, "model_sha": None, "model_pipeline_tag": "text-generation",
            "max_concurrent_requests": self.max_concurrent_requests, "max_best_of": limits.max_best_of,
            "max_stop_sequences": limits.max_stop_sequences, "max_input_tokens": limits.max_input_tokens,
            "max_total_tokens": limits.max_total_tokens, "validation_workers": 2,
            "max_client_batch_size": limits.max_client_batch_size, "router": "text-generation-router",
            "version": VERSION, "sha": None, "docker_label": None,
        }

    def metrics(self, *, queue_size: int, batch_size: int) -> str:
        families = [
            ("tgi_request_count", "counter", "Total number of requests", [("", self.request_count)]),
            ("tgi_request_success", "counter", "Number of successful requests", [("", self.request_success)]),
            ("tgi_request_failure", "counter", "Number of failed requests",
             [(f'{{err="{err}"}}', n) for err, n in sorted(self.failures.items())]),
            ("tgi_queue_size", "gauge", "Current queue size", [("", queue_size)]),
            ("tgi_batch_current_size", "gauge", "Current batch size", [("", batch_size)]),
            ("tgi_batch_current_max_tokens", "gauge", "Maximum tokens for the current batch",
             [("", batch_size * self.limits.max_total_tokens)]),
        ]
        lines: list[str] = []
        for name, kind, help_text, samples in families:
            if not samples:
                continue
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
            lines += [f"{name}{labels} {value}" for labels, value in samples]
            lines.append("")
        return "\n".join(lines)
