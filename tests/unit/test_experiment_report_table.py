"""The report's terminal table, its PNG plot, and `gateway experiments list | report` against a stub gateway."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import msgspec
import pytest

from gateway.cli import main
from gateway.experiments.plot import PlotUnavailable, plot_report
from gateway.experiments.report import build_report, estimate_point
from gateway.experiments.report_table import format_report

from .test_experiment_report import NOW, live_report, simulate

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def report() -> dict[str, Any]:
    """A live report of a slower candidate, with a few looks of history."""
    history = []
    for i, n in enumerate((100, 300, 1000, 2000)):
        totals = {"control": simulate("control", n, seed=1), "candidate": simulate("candidate", n, seed=2, scale=1.2)}
        point = estimate_point(metric="e2e", alpha=0.05, target_n=1000, control="control", totals=totals,
                               now=NOW + 60 * i)
        assert point is not None
        history.append(point)
    return live_report(totals, history=history)


def test_table_has_arms_comparisons_and_verdict(report: dict[str, Any]) -> None:
    text = format_report(report)
    assert "experiment exp (live) on route chat" in text
    assert "control" in text and "candidate" in text and "backend small" in text
    assert "SRM: ok" in text
    assert report["verdict"] in text
    assert "conclusive: control wins" in text
    # Latencies in ms: the control's e2e p50 (about 1 s) shows as about 1,000.
    p50_ms = report["arms"]["control"]["latency"]["e2e"]["p50"] * 1000
    assert f"{p50_ms:,.0f}" in text


def test_table_columns_align(report: dict[str, Any]) -> None:
    lines = format_report(report).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("arm "))
    header, rule = lines[start], lines[start + 1]
    rows = lines[start + 2:start + 4]
    assert set(rule) <= {"-", " "}
    # Every right-aligned column ends where its rule ends.
    for row in rows:
        assert len(row) == len(rule) == len(header)


def test_table_shows_srm_alarm_and_shadow_agreement() -> None:
    totals = {"control": simulate("control", 100, seed=5, assigned=1100),
              "candidate": simulate("candidate", 100, seed=6, assigned=900)}
    text = format_report(live_report(totals))
    assert "SRM: ALARM" in text and "sample ratio mismatch" in text
    shadow = build_report(
        name="sh", kind="shadow", route="chat", metric="e2e", alpha=0.05, target_n=1000, control="control",
        targets={"control": "route chat", "candidate": "backend small"}, shares={}, active=False, stopped=None,
        totals={"control": simulate("control", 50, seed=1),
                "candidate": simulate("candidate", 50, seed=2, agreement=(0.5, 0.9))},
        history=[], now=NOW)
    text = format_report(shadow)
    assert "exact" in text and "similarity" in text and "SRM: not checked" in text and "inactive" in text


def test_table_of_an_empty_report() -> None:
    text = format_report(live_report({}))
    assert "unbounded" in text and "not conclusive yet (n=0/0)" in text


def test_plot_writes_a_png(report: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "exp.png"
    plot_report(report, str(path))
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 1000


def test_plot_of_an_empty_report(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    plot_report(live_report({}, metric="score"), str(path))
    assert path.read_bytes().startswith(PNG_MAGIC)


def test_plot_without_matplotlib(report: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    with pytest.raises(PlotUnavailable, match=r"pip install 'llm-inference-gateway\[plot\]'"):
        plot_report(report, str(tmp_path / "never.png"))


# -- the CLI against a stub of the gateway's admin API -------------------------------------------------


@pytest.fixture
def gateway_url(report: dict[str, Any]) -> Iterator[str]:
    """A tiny HTTP server that answers /admin/experiments like the gateway, with `report` as 'exp'."""
    listing = {"experiments": [{"name": "exp", "kind": "live", "route": "chat", "active": True, "stopped": None}]}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/admin/experiments":
                status, body = 200, listing
            elif self.path == "/admin/experiments/exp":
                status, body = 200, report
            else:
                name = self.path.rsplit("/", 1)[-1]
                status, body = 404, {"error": {"message": f"no experiment named '{name}'", "type": "not_found"}}
            payload = msgspec.json.encode(body)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_cli_report_json(gateway_url: str, report: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["experiments", "report", "exp", "--url", gateway_url, "--json"]) == 0
    printed = msgspec.json.decode(capsys.readouterr().out)
    assert printed == msgspec.json.decode(msgspec.json.encode(report))


def test_cli_report_table_and_plot(gateway_url: str, report: dict[str, Any], tmp_path: Path,
                                   capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "cli.png"
    assert main(["experiments", "report", "exp", "--url", gateway_url + "/", "--plot", str(path)]) == 0
    out = capsys.readouterr().out
    assert report["verdict"] in out and f"plot written to {path}" in out
    assert path.read_bytes().startswith(PNG_MAGIC)


def test_cli_accepts_the_endpoint_as_url(gateway_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["experiments", "report", "exp", "--url", gateway_url + "/admin/experiments", "--json"]) == 0
    assert msgspec.json.decode(capsys.readouterr().out)["name"] == "exp"


def test_cli_unknown_name_shows_the_message(gateway_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["experiments", "report", "nope", "--url", gateway_url]) == 1
    captured = capsys.readouterr()
    assert "404" in captured.err and "no experiment named 'nope'" in captured.err
    assert captured.out == ""


def test_cli_list(gateway_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["experiments", "list", "--url", gateway_url]) == 0
    out = capsys.readouterr().out
    assert "exp" in out and "live" in out and "chat" in out and "active" in out


def test_cli_plot_without_matplotlib(gateway_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["experiments", "report", "exp", "--url", gateway_url, "--plot", str(tmp_path / "x.png")]) == 1
    assert "plotting needs matplotlib" in capsys.readouterr().err


def test_cli_gateway_not_reachable(capsys: pytest.CaptureFixture[str]) -> None:
    # A port that was free a moment ago: nothing answers there.
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = server.server_address[1]
    server.server_close()
    assert main(["experiments", "report", "exp", "--url", f"http://127.0.0.1:{port}"]) == 1
    assert "no gateway answering" in capsys.readouterr().err
    assert main(["experiments", "list", "--url", f"http://127.0.0.1:{port}"]) == 1
    assert "no gateway answering" in capsys.readouterr().err
