"""The Ollama plugin's parts without a server: config, parameters, translation, errors, streams, load."""

from __future__ import annotations

import base64
import struct
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from gateway.backend import BackendContext, BackendUnavailable
from gateway.config import BackendConfig
from gateway.errors import GatewayError
from gateway.upstream import UpstreamError, UpstreamProtocolError
from plugins.ollama import OllamaBackend
from plugins.ollama.config import OllamaOptions
from plugins.ollama.duration import FOREVER_S, DurationError, keep_alive_seconds, parse_go_duration
from plugins.ollama.errors import http_error
from plugins.ollama.load import parse_ps
from plugins.ollama.responses import chat_completion, embedding_list
from plugins.ollama.stream import OllamaEventStream, make_translator
from plugins.ollama.translate import RequestBuilder
from plugins.ollama.wire import ChatAnswer, EmbedAnswer

USER = [{"role": "user", "content": "hi"}]


def config(**extra: Any) -> BackendConfig:
    raw = {"name": "ol", "plugin": "ollama", "model": "llama3.2", "url": "http://127.0.0.1:11434", **extra}
    return msgspec.convert(raw, BackendConfig)


def backend(**extra: Any) -> OllamaBackend:
    return OllamaBackend(config(**extra), BackendContext(upstream=None))  # type: ignore[arg-type]


def native(kind: str, body: dict[str, Any], **options: Any) -> dict[str, Any]:
    builder = RequestBuilder("llama3.2", msgspec.convert(options, OllamaOptions))
    encoded = {"chat": lambda: builder.chat(body, stream=True), "generate": lambda: builder.generate(body, False),
               "embed": lambda: builder.embed(body)}[kind]()
    decoded: dict[str, Any] = msgspec.json.decode(encoded)
    return decoded


# -- durations and config -----------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [("5m", 300), ("1h30m", 5400), ("0", 0), ("1.5s", 1.5),
                                               ("300ms", 0.3), ("-1m", -60)])
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_go_duration(text) == pytest.approx(seconds)


def test_keep_alive_values_and_errors() -> None:
    assert keep_alive_seconds(300) == 300 and keep_alive_seconds(-1) == FOREVER_S
    assert keep_alive_seconds("-5m") == FOREVER_S
    with pytest.raises(DurationError, match='time: invalid duration "soon"'):
        keep_alive_seconds("soon")
    with pytest.raises(DurationError, match="missing unit"):
        keep_alive_seconds("5")
    with pytest.raises(TypeError):
        keep_alive_seconds(True)


def test_config_problems_name_their_keys() -> None:
    assert list(OllamaBackend.validate_config(config(options={"keep_alive": "10m", "num_ctx": 8192}))) == []
    problems = dict(OllamaBackend.validate_config(config(url=None, launch={"model": "x"}, options={
        "keep_alive": "forever", "num_ctx": 0, "default_options": {"num_thread": "8", "bogus": 1, "top_k": 5}})))
    assert set(problems) == {"url", "launch", "options.keep_alive", "options.num_ctx",
                             "options.default_options.num_thread", "options.default_options.bogus",
                             "options.default_options.top_k"}
    assert "must be of type integer" in problems["options.default_options.num_thread"]
    assert dict(OllamaBackend.validate_config(config(options={"kepp_alive": "5m"}))) == {
        "options.kepp_alive": "unknown key"}


# -- parameters -----------------------------------------------------------------------------------


def test_params_ollama_cannot_honour_are_not_declared() -> None:
    b = backend()
    for kind, param in (("chat", "logit_bias"), ("completion", "logit_bias"), ("embedding", "temperature")):
        assert param not in b.supported_params(kind)
    assert {"top_k", "keep_alive", "tools", "response_format", "seed"} <= b.supported_params("chat")


@pytest.mark.parametrize(("kind", "body", "param"), [
    ("chat", {"messages": USER, "n": 2}, "n"),
    ("chat", {"messages": USER, "logprobs": True}, "logprobs"),
    ("chat", {"messages": USER, "tool_choice": "required"}, "tool_choice"),
    ("chat", {"messages": USER, "parallel_tool_calls": False}, "parallel_tool_calls"),
    ("chat", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {
        "url": "https://example.com/cat.png"}}]}]}, "messages[0].content[0].image_url"),
    ("completion", {"prompt": [1, 2, 3]}, "prompt"),
    ("completion", {"prompt": ["one", "two"]}, "prompt"),
    ("completion", {"prompt": "x", "echo": True}, "echo"),
    ("completion", {"prompt": "x", "best_of": 3}, "best_of"),
    ("embedding", {"input": [[1, 2], [3]]}, "input"),
])
def test_values_ollama_cannot_honour_are_422(kind: str, body: dict[str, Any], param: str) -> None:
    with pytest.raises(GatewayError) as caught:
        backend().check_params(kind, body)  # type: ignore[arg-type]
    assert (caught.value.status, caught.value.param) == (422, param)


@pytest.mark.parametrize("body", [{"messages": USER, "keep_alive": "soon"},
                                  {"messages": USER, "response_format": {"type": "xml"}},
                                  {"messages": USER, "response_format": {"type": "json_schema", "json_schema": {}}}])
def test_malformed_values_are_400(body: dict[str, Any]) -> None:
    with pytest.raises(GatewayError) as caught:
        backend().check_params("chat", body)
    assert caught.value.status == 400


def test_values_ollama_honours_pass() -> None:
    b = backend()
    b.check_params("chat", {"messages": USER, "n": 1, "logprobs": False, "tool_choice": "auto",
                            "response_format": {"type": "json_object"}, "keep_alive": -1})
    b.check_params("completion", {"prompt": ["only one"], "best_of": 1, "echo": False})
    b.check_params("embedding", {"input": ["a", "b"]})


# -- translation ----------------------------------------------------------------------------------


def test_chat_options_and_defaults() -> None:
    body = {"messages": USER, "max_tokens": 5, "max_completion_tokens": 7, "temperature": 0.2, "top_p": 0.5,
            "top_k": 4, "seed": 1, "stop": "END", "frequency_penalty": 0.1, "keep_alive": "1m"}
    out = native("chat", body, num_ctx=2048, keep_alive="10m", default_options={"num_thread": 4}, shift=False)
    assert out["options"] == {"num_thread": 4, "num_ctx": 2048, "temperature": 0.2, "top_p": 0.5, "seed": 1,
                              "frequency_penalty": 0.1, "top_k": 4, "num_predict": 7, "stop": ["END"]}
    assert (out["model"], out["stream"], out["keep_alive"], out["shift"]) == ("llama3.2", True, "1m", False)
    plain = native("chat", {"messages": USER})
    assert "options" not in plain and "keep_alive" not in plain  # unset stays unset: the Modelfile decides


def test_chat_formats_and_tools() -> None:
    schema = {"type": "object", "properties": {"age": {"type": "integer"}}}
    assert native("chat", {"messages": USER, "response_format": {"type": "json_object"}})["format"] == "json"
    assert native("chat", {"messages": USER, "response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": schema}}})["format"] == schema
    assert "format" not in native("chat", {"messages": USER, "response_format": {"type": "text"}})
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    assert native("chat", {"messages": USER, "tools": tools})["tools"] == tools
    assert "tools" not in native("chat", {"messages": USER, "tools": tools, "tool_choice": "none"})


def test_chat_messages_become_ollama_messages() -> None:
    png = base64.b64encode(b"png").decode()
    messages = [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "what is"}, {"type": "text", "text": "this?"},
                                     {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{png}"}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "look", "arguments": '{"q": "x"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "a cat"},
    ]
    assert native("chat", {"messages": messages})["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "what is\nthis?", "images": [png]},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "look", "arguments": {"q": "x"}}, "id": "call_1"}]},
        {"role": "tool", "content": "a cat", "tool_name": "look", "tool_call_id": "call_1"},
    ]
    bad = [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": "f", "arguments": "{nope"}}]}]
    with pytest.raises(GatewayError) as caught:
        native("chat", {"messages": bad})
    assert caught.value.status == 400 and caught.value.param == "messages[0].tool_calls[0].function.arguments"


def test_generate_is_raw_unless_filling_in_the_middle() -> None:
    out = native("generate", {"prompt": ["once upon"], "max_tokens": 3})
    assert (out["prompt"], out["raw"], out["options"], out["stream"]) == ("once upon", True, {"num_predict": 3}, False)
    fim = native("generate", {"prompt": "def f(", "suffix": "return x"})
    assert fim["suffix"] == "return x" and "raw" not in fim
    assert "raw" not in native("generate", {"prompt": "hi"}, completion_raw=False)


def test_embed_request() -> None:
    out = native("embed", {"input": ["a", "b"], "dimensions": 8}, keep_alive=-1, truncate=False, num_ctx=512)
    assert out == {"model": "llama3.2", "input": ["a", "b"], "dimensions": 8, "keep_alive": -1, "truncate": False,
                   "options": {"num_ctx": 512}}


# -- answers --------------------------------------------------------------------------------------


def test_chat_answer_with_tool_calls_and_thinking() -> None:
    answer = msgspec.json.decode(
        b'{"model":"m","message":{"role":"assistant","content":"","thinking":"hmm","tool_calls":[{"function":'
        b'{"name":"get_weather","arguments":{"city":"Tokyo"}}}]},"done":true,"done_reason":"stop",'
        b'"prompt_eval_count":169,"eval_count":15}', type=ChatAnswer)
    out = msgspec.json.decode(chat_completion(answer))
    choice = out["choices"][0]
    assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
    assert choice["message"]["reasoning_content"] == "hmm"
    call = choice["message"]["tool_calls"][0]
    assert call["id"].startswith("call_") and call["type"] == "function"  # an id even where the server sent none
    assert call["function"] == {"name": "get_weather", "arguments": '{"city":"Tokyo"}'}
    assert out["usage"] == {"prompt_tokens": 169, "completion_tokens": 15, "total_tokens": 184}


def test_embeddings_in_base64_are_little_endian_float32() -> None:
    out = msgspec.json.decode(embedding_list(EmbedAnswer(model="m", embeddings=[[0.5, -1.0]], prompt_eval_count=2),
                                             "base64"))
    raw = base64.b64decode(out["data"][0]["embedding"])
    assert struct.unpack("<2f", raw) == (0.5, -1.0) and out["usage"]["prompt_tokens"] == 2


# -- errors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b'{"error":"model \'phi9\' not found"}',
                                  b'{"error":"model \\"phi9\\" not found, try pulling it first"}'])
def test_model_not_pulled_is_404_naming_the_model(body: bytes) -> None:
    error = http_error("ol", "phi9", 404, body, "/api/chat")
    assert (error.status, error.code, error.param) == (404, "model_not_found", "model")
    assert "'phi9'" in error.message and "ollama pull phi9" in error.message and "not found" in error.message


def test_error_classes() -> None:
    route_missing = http_error("ol", "m", 404, b"404 page not found", "/api/embed")
    assert route_missing.status == 502 and "/api/embed" in route_missing.message
    for status in (429, 503):
        busy = http_error("ol", "m", status, b'{"error":"server busy"}', "/api/chat")
        assert isinstance(busy, BackendUnavailable) and not busy.mark_down and busy.status == 503
        assert "server busy" in busy.message
    crashed = http_error("ol", "m", 500, b'{"error":"llama runner process has terminated"}', "/api/chat")
    assert isinstance(crashed, BackendUnavailable) and crashed.status == 502 and "terminated" in crashed.message
    rejected = http_error("ol", "m", 400, b'{"error":"the prompt is longer than the context length"}', "/x")
    assert rejected.status == 400 and "longer than the context" in rejected.message
    assert http_error("ol", "m", 401, b"no", "/x").status == 502


# -- streams --------------------------------------------------------------------------------------


class ScriptedStream:
    """An upstream stream that yields the given chunks (or raises an UpstreamError among them)."""

    def __init__(self, chunks: list[bytes | UpstreamError]) -> None:
        self.status, self.content_type = 200, "application/x-ndjson"
        self._chunks = chunks
        self.read = 0
        self.closed = False

    async def chunks(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            if isinstance(chunk, UpstreamError):
                raise chunk
            self.read += 1
            yield chunk

    async def aclose(self) -> None:
        self.closed = True


def line(content: str, done: bool = False, **extra: Any) -> bytes:
    obj = {"model": "llama3.2", "created_at": "2024-01-01T00:00:00Z",
           "message": {"role": "assistant", "content": content}, "done": done, **extra}
    return msgspec.json.encode(obj) + b"\n"


async def collect(chunks: list[bytes | UpstreamError], kind: str = "chat",
                  **body: Any) -> tuple[list[dict[str, Any] | str], GatewayError | None, ScriptedStream]:
    upstream = ScriptedStream(chunks)
    stream = OllamaEventStream(upstream, make_translator(kind, "ol", body))  # type: ignore[arg-type]
    raw = b""
    failure = None
    try:
        async for events in stream:
            assert events.endswith(b"\n\n")  # whole events only
            raw += events
    except GatewayError as err:
        failure = err
    await stream.aclose()
    payloads: list[dict[str, Any] | str] = []
    for event in raw.split(b"\n\n")[:-1]:
        data = event.removeprefix(b"data: ")
        payloads.append("[DONE]" if data == b"[DONE]" else msgspec.json.decode(data))
    return payloads, failure, upstream


async def test_stream_lines_split_anywhere_become_whole_events() -> None:
    body = line("Hel") + line("lo") + line("", True, done_reason="length", prompt_eval_count=3, eval_count=2)
    chunks: list[bytes | UpstreamError] = [body[i:i + 7] for i in range(0, len(body), 7)] + [b"\n"]
    events, failure, upstream = await collect(chunks, stream_options={"include_usage": True})
    assert failure is None and events[-1] == "[DONE]"
    deltas = [e["choices"][0]["delta"] for e in events[:-2]]  # type: ignore[index]
    assert deltas == [{"role": "assistant", "content": "Hel"}, {"content": "lo"}, {}]
    assert events[2]["choices"][0]["finish_reason"] == "length"  # type: ignore[index]
    assert events[3]["choices"] == [] and events[3]["usage"]["total_tokens"] == 5  # type: ignore[index]
    assert upstream.read == len(chunks)  # drained after the end, so the connection can be reused


async def test_stream_error_line_ends_with_the_servers_message() -> None:
    events, failure, _ = await collect([line("a") + line("b") + b'{"error":"an error was encountered"}\n'])
    assert len(events) == 2 and "[DONE]" not in events
    assert failure is not None and failure.status == 502 and "an error was encountered" in failure.message


@pytest.mark.parametrize("chunks", [[line("a") + b'{"model":"x","created_at":\n' + line("b", True)],
                                    [line("a"), line("b")],
                                    [line("a"), UpstreamProtocolError("connection lost mid-response")]],
                         ids=["malformed", "no_done_line", "cut"])
async def test_broken_streams_raise_after_what_arrived(chunks: list[bytes | UpstreamError]) -> None:
    events, failure, _ = await collect(chunks)
    assert failure is not None and failure.status == 502 and "[DONE]" not in events
    assert events[0]["choices"][0]["delta"]["content"] == "a"  # type: ignore[index]


async def test_stream_tool_calls_and_completion_text() -> None:
    call = {"function": {"name": "get_weather", "arguments": {"city": "Tokyo"}}}
    called = {"model": "m", "message": {"role": "assistant", "content": "", "tool_calls": [call]}, "done": False}
    events, failure, _ = await collect([msgspec.json.encode(called) + b"\n" + line("", True, done_reason="stop")])
    assert failure is None
    delta = events[1]["choices"][0]["delta"]  # type: ignore[index]
    assert delta["tool_calls"][0]["index"] == 0 and delta["tool_calls"][0]["function"]["name"] == "get_weather"
    assert events[2]["choices"][0]["finish_reason"] == "tool_calls"  # type: ignore[index]
    text = (b'{"model":"m","response":"Hi","done":false}\n'
            b'{"model":"m","response":"","done":true,"done_reason":"stop","context":[1]}\n')
    events, failure, _ = await collect([text], kind="completion")
    assert failure is None and events[0]["choices"][0]["text"] == "Hi"  # type: ignore[index]
    assert events[0]["object"] == "text_completion" and events[-1] == "[DONE]"  # type: ignore[index]


# -- load -----------------------------------------------------------------------------------------


def test_load_from_ps_and_in_flight_requests() -> None:
    ps = (b'{"models":[{"name":"llama3.2:latest","model":"llama3.2:latest","size":100,"size_vram":50,'
          b'"expires_at":"2024-06-04T14:38:31Z","context_length":4096}]}')
    load = parse_ps(ps, "llama3.2", in_flight=5, num_parallel=4)
    assert (load.running, load.waiting, load.capacity, load.kv_cache_usage) == (4, 1, 4, None)
    assert (load.model_loaded, load.loaded_models, load.context_length, load.vram_fraction) == (True, 1, 4096, 0.5)
    cold = parse_ps(b'{"models":[]}', "llama3.2", in_flight=2, num_parallel=None)
    assert (cold.running, cold.waiting, cold.capacity, cold.model_loaded) == (2, None, None, False)


async def test_stream_thinking_comes_before_the_answer_and_the_role_once() -> None:
    thinking = msgspec.json.encode({"model": "m", "message": {"role": "assistant", "content": "",
                                                               "thinking": "hmm"}, "done": False}) + b"\n"
    events, failure, _ = await collect([thinking + line("Hi") + line("", True, done_reason="stop")])
    assert failure is None
    deltas = [e["choices"][0]["delta"] for e in events[:2]]  # type: ignore[index]
    assert deltas == [{"role": "assistant", "reasoning_content": "hmm"}, {"content": "Hi"}]
