"""The Ollama emulator against recorded responses of the real server (plugins/ollama/fixtures).

Each fixture holds a request from Ollama's docs or tests and the response it documents. The
emulator gets the same request and must answer with the same status, the same fields with
the same JSON types, and the same framing: one JSON object for a whole answer, NDJSON for a
stream. Fields a fixture predates are allowed only where the fixture names them, with the
source saying why (`_may_add`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from contract.providers.ollama import OllamaEmulatorProcess, running_emulator

pytestmark = pytest.mark.integration

FIXTURES = Path(__file__).resolve().parents[2] / "plugins" / "ollama" / "fixtures"
# Every model the fixtures' requests name, pulled on the emulator.
MODELS = ["llama3.2", "llama3.1", "llama3.1:8b", "all-minilm", "mistral", "deepseek-r1", "test"]


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    return {float: "float", str: "str", list: "list", dict: "dict", type(None): "null"}[type(value)]


def assert_same_shape(expected: Any, actual: Any, may_add: dict[str, str], path: str = "") -> None:
    """Same keys (beyond `may_add`), same JSON types, recursively; list items compared with the first."""
    where = path or "<root>"
    assert _kind(actual) == _kind(expected), f"{where}: expected {_kind(expected)}, got {_kind(actual)} ({actual!r})"
    if isinstance(expected, dict):
        missing = set(expected) - set(actual)
        assert not missing, f"{where}: emulator lacks {sorted(missing)}"
        extra = {k for k in set(actual) - set(expected) if f"{path}.{k}".lstrip(".") not in may_add}
        assert not extra, f"{where}: emulator adds {sorted(extra)} that the fixture does not allow"
        for key, value in expected.items():
            assert_same_shape(value, actual[key], may_add, f"{path}.{key}".lstrip("."))
    elif isinstance(expected, list) and expected:
        assert actual, f"{where}: emulator sent an empty list"
        for item in actual:
            assert_same_shape(expected[0], item, may_add, f"{path}[]")


def load_json(name: str) -> dict[str, Any]:
    fixture: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    assert fixture["_source"].startswith("ollama/ollama ")
    return fixture


def load_ndjson(name: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    header: dict[str, Any] = {}
    lines = []
    for line in (FIXTURES / name).read_text().splitlines():
        if line.startswith("# "):
            key, _, value = line[2:].partition(": ")
            header[key] = json.loads(value) if key in ("request", "may_add") else value
        elif line.strip():
            lines.append(json.loads(line))
    assert header["source"].startswith("ollama/ollama ")
    return header, lines


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OllamaEmulatorProcess]:
    with running_emulator(tmp_path_factory.mktemp("ollama-fixtures") / "emulator.log", models=MODELS) as server:
        yield server


@pytest.fixture(scope="module")
def http(emulator: OllamaEmulatorProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emulator.url, timeout=30) as client:
        yield client


def send(http: httpx.Client, request: dict[str, Any]) -> httpx.Response:
    if request["method"] == "GET":
        return http.get(request["path"])
    return http.post(request["path"], content=json.dumps(request["body"]))


@pytest.mark.parametrize("name", ["chat.json", "chat_tools.json", "generate.json", "embed.json",
                                  "embed_multiple.json", "tags.json", "version.json"])
def test_whole_answers_match_the_fixtures(http: httpx.Client, name: str) -> None:
    fixture = load_json(name)
    response = send(http, fixture["request"])
    assert response.status_code == fixture["status"], response.text
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.content.count(b"\n") == 0  # one object, not a stream
    assert_same_shape(fixture["response"], response.json(), fixture.get("_may_add", {}))


def test_ps_matches_its_fixture_once_a_model_is_loaded(http: httpx.Client) -> None:
    fixture = load_json("ps.json")
    names = [m["name"] for m in http.get("/api/ps").json()["models"]]
    assert "mistral:latest" not in names  # not loaded before its first request
    http.post("/api/generate", json={"model": "mistral", "prompt": "hi", "stream": False})
    response = send(http, fixture["request"])
    assert_same_shape(fixture["response"], response.json(), fixture["_may_add"])
    assert "mistral:latest" in [m["name"] for m in response.json()["models"]]


@pytest.mark.parametrize("name", ["chat_stream.ndjson", "chat_stream_tools.ndjson", "generate_stream.ndjson"])
def test_streams_match_the_fixtures(http: httpx.Client, name: str) -> None:
    header, expected = load_ndjson(name)
    response = send(http, header["request"])
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    body = response.content
    assert body.endswith(b"\n") and not body.startswith(b"data:")
    lines = [json.loads(line) for line in body.split(b"\n")[:-1]]  # every line one JSON object
    assert len(lines) >= 2
    may_add = header.get("may_add", {})
    assert_same_shape(expected[-1], lines[-1], may_add)  # the final done line
    for line in lines[:-1]:
        assert_same_shape(expected[0], line, may_add)  # every token line
    assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]


@pytest.mark.parametrize("name", ["error_chat_missing_model.json", "error_generate_missing_model.json"])
def test_errors_match_the_real_servers_bytes(http: httpx.Client, name: str) -> None:
    fixture = load_json(name)
    response = send(http, fixture["request"])
    assert response.status_code == fixture["status"]
    assert response.content == json.dumps(fixture["response"], separators=(",", ":")).encode()


@pytest.mark.parametrize("name", ["error_overloaded.json", "error_rate_limited.json"])
def test_fault_errors_have_the_real_status_and_shape(emulator: OllamaEmulatorProcess, http: httpx.Client,
                                                     name: str) -> None:
    fixture = load_json(name)
    emulator.knobs(**fixture["_knobs"])
    try:
        response = send(http, fixture["request"])
    finally:
        emulator.knobs(fault="none")
    assert response.status_code == fixture["status"]
    assert_same_shape(fixture["response"], response.json(), {})


def test_go_json_escapes_and_an_unknown_route(http: httpx.Client) -> None:
    """Go's json.Marshal writes <, > and & as \\u escapes; gin answers an unknown path in plain text."""
    tool = {"type": "function", "function": {"name": "echo", "parameters": {
        "type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}}}
    response = http.post("/api/chat", json={"model": "llama3.2", "stream": False, "tools": [tool],
                                            "messages": [{"role": "user", "content": "<b>&</b>"}]})
    assert b"\\u003cb\\u003e\\u0026" in response.content and b"<b>" not in response.content
    missing = http.get("/api/nothing")
    assert (missing.status_code, missing.text) == (404, "404 page not found")
