"""The vLLM and llama.cpp emulators against answers recorded from the real servers.

Each fixture in plugins/{vllm,llamacpp}/fixtures/ (tests/backends/record_fixtures.py) names the
request that produced it; the same request goes to the emulator, configured as the recorded
server was, and the answers must match in status, content type, fields and their types
(recursively), SSE framing and event count, metric names and labels. Values (text, ids,
numbers) are the fake model's and are not compared.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp.test_utils import TestServer

from plugins.emulation import EmulatorRuntime
from plugins.llamacpp.emulator.app import ServerArgs
from plugins.llamacpp.emulator.app import build_app as build_llamacpp
from plugins.vllm.emulator.app import ServedModel
from plugins.vllm.emulator.app import build_app as build_vllm

REPO = Path(__file__).resolve().parents[2]
FIXTURES = {"vllm": REPO / "plugins" / "vllm" / "fixtures", "llamacpp": REPO / "plugins" / "llamacpp" / "fixtures"}
CASES = [(server, path.stem) for server, folder in FIXTURES.items() for path in sorted(folder.glob("*.json"))]


def shape(value: Any) -> Any:
    """The structure of a JSON value: dict keys and value types, recursively; a list by its first item."""
    if isinstance(value, dict):
        return {key: shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return type(value).__name__


def sse_events(raw: str) -> list[str]:
    """The events of an SSE body, checking the framing: `data: ` lines, each followed by a blank line."""
    assert raw.endswith("\n\n"), "an SSE body ends with a blank line"
    blocks = raw[:-2].split("\n\n")
    assert all(block.startswith("data: ") and "\n" not in block for block in blocks), blocks
    return [block[len("data: "):] for block in blocks]


def metric_labels(page: str) -> dict[str, set[tuple[str, ...]]]:
    """Each sample's metric name and the label names it carries."""
    out: dict[str, set[tuple[str, ...]]] = {}
    for line in page.splitlines():
        if not line or line.startswith("#"):
            continue
        head = line.rsplit(" ", 1)[0]
        name, _, labels = head.partition("{")
        keys = tuple(sorted(part.split("=", 1)[0] for part in labels.rstrip("}").split(",") if part))
        out.setdefault(name, set()).add(keys)
    return out


def recorded_request(fixture: dict[str, Any]) -> tuple[str, str, Any]:
    """(method, path, body) from the fixture's `_source`: "..., request: POST /path {json}"."""
    request = fixture["_source"].split(", request: ", 1)[1]
    method, path, *rest = request.split(" ", 2)
    return method, path, json.loads(rest[0]) if rest else None


@pytest.fixture
async def emulators() -> AsyncIterator[dict[str, str]]:
    """Both emulators in-process on 127.0.0.1, configured as the recorded servers were."""
    vllm = TestServer(build_vllm(EmulatorRuntime(), ServedModel(name="smollm2-hf")), host="127.0.0.1")
    llama = TestServer(build_llamacpp(EmulatorRuntime(), ServerArgs(alias="smollm2", ctx_size=2048, parallel=2)),
                       host="127.0.0.1")
    await vllm.start_server()
    await llama.start_server()
    try:
        yield {"vllm": str(vllm.make_url("")), "llamacpp": str(llama.make_url(""))}
    finally:
        await vllm.close()
        await llama.close()


@pytest.mark.parametrize(("server", "name"), CASES, ids=[f"{s}-{n}" for s, n in CASES])
async def test_emulator_answers_like_the_recording(emulators: dict[str, str], server: str, name: str) -> None:
    fixture = json.loads((FIXTURES[server] / f"{name}.json").read_text())
    method, path, body = recorded_request(fixture)
    async with httpx.AsyncClient(base_url=emulators[server], timeout=10) as client:
        response = await client.request(method, path, json=body)
    assert response.status_code == fixture["status"], response.text
    assert response.headers.get("content-type", "") == fixture["content_type"]
    if "body" in fixture:
        assert shape(response.json()) == shape(fixture["body"])
    elif path == "/metrics":
        recorded, emulated = metric_labels(fixture["raw"]), metric_labels(response.text)
        assert {n: emulated.get(n) for n in recorded} == recorded
    elif "text/event-stream" in fixture["content_type"]:
        want, got = sse_events(fixture["raw"]), sse_events(response.text)
        assert want[-1] == got[-1] == "[DONE]"
        assert len(got) == len(want)
        for recorded_event, emulated_event in zip(want[:-1], got[:-1], strict=True):
            assert shape(json.loads(emulated_event)) == shape(json.loads(recorded_event))
    else:
        assert response.text == fixture["raw"]


async def test_vllm_error_messages_are_the_real_ones(emulators: dict[str, str]) -> None:
    """The messages the vllm plugin's errors.py keys on, word for word where they carry no numbers."""
    folder = FIXTURES["vllm"]
    for name in ("error_unknown_model", "error_context_length", "error_prompt_too_long"):
        fixture = json.loads((folder / f"{name}.json").read_text())
        method, path, body = recorded_request(fixture)
        async with httpx.AsyncClient(base_url=emulators["vllm"], timeout=10) as client:
            error = (await client.request(method, path, json=body)).json()["error"]
        recorded = fixture["body"]["error"]
        assert (error["type"], error["param"], error["code"]) == (recorded["type"], recorded["param"], recorded["code"])
        if name == "error_prompt_too_long":  # the prompt's count is the fake model's
            assert error["message"].split(" However")[0] == recorded["message"].split(" However")[0]
        else:
            assert error["message"] == recorded["message"]


async def test_llamacpp_stream_error_is_its_error_line(emulators: dict[str, str]) -> None:
    """The stream_error fault: tokens, then llama-server's `error: {...}` line, no [DONE]."""
    async with httpx.AsyncClient(base_url=emulators["llamacpp"], timeout=10) as client:
        await client.post("/__emulator/knobs", json={"fault": "stream_error", "fault_after_tokens": 2})
        raw = (await client.post("/v1/chat/completions", json={
            "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8, "stream": True})).text
    blocks = raw.rstrip("\n").split("\n\n")
    assert [b.split(":", 1)[0] for b in blocks] == ["data", "data", "data", "error"]
    assert set(json.loads(blocks[-1][len("error: "):])) == {"code", "message", "type"}
