"""The TGI plugin's pure parts: parameter mapping, stop sequences, error classes, metrics, config."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from gateway.backend import BackendUnavailable
from gateway.config import BackendConfig
from gateway.errors import GatewayError
from plugins.tgi.backend import TGIBackend
from plugins.tgi.errors import event_error, http_error
from plugins.tgi.length import Limits, may_be_too_long, too_long
from plugins.tgi.metrics import parse_load
from plugins.tgi.params import chat_request, check_params, generate_request
from plugins.tgi.stop_sequences import StopTrimmer, openai_finish_reason, strip_stop


def _config(**options: Any) -> BackendConfig:
    return BackendConfig(name="tgi", plugin="tgi", model="m", url="http://127.0.0.1:1", options=options)


# -- OpenAI -> TGI --------------------------------------------------------------------------------


def test_completion_maps_onto_generate_parameters() -> None:
    body = {"prompt": "Hi", "max_tokens": 7, "temperature": 0.5, "top_p": 0.9, "stop": "END", "seed": 3,
            "logprobs": 2, "frequency_penalty": 0.1, "top_k": 5, "model": "x", "user": "u"}
    request = generate_request(body, None, stream=False)
    assert request == {"inputs": "Hi", "parameters": {
        "details": True, "do_sample": True, "temperature": 0.5, "max_new_tokens": 7, "top_p": 0.9, "stop": ["END"],
        "seed": 3, "frequency_penalty": 0.1, "top_k": 5, "top_n_tokens": 2}}


def test_temperature_zero_is_greedy_and_top_p_one_is_left_out() -> None:
    parameters = generate_request({"prompt": "Hi", "temperature": 0, "top_p": 1.0}, None, stream=True)["parameters"]
    assert parameters["do_sample"] is False and "temperature" not in parameters and "top_p" not in parameters


def test_best_of_is_sent_only_without_streaming_and_adapter_id_when_configured() -> None:
    assert generate_request({"prompt": "a", "best_of": 2}, "lora-a", stream=False)["parameters"]["best_of"] == 2
    assert generate_request({"prompt": "a", "best_of": 2}, None, stream=False)["parameters"].get("adapter_id") is None
    assert generate_request({"prompt": "a"}, "lora-a", stream=False)["parameters"]["adapter_id"] == "lora-a"


def test_chat_request_fixes_what_tgi_reads_differently() -> None:
    body = {"model": "client-name", "messages": [{"role": "user", "content": "hi"}], "stop": "x", "top_p": 1,
            "max_completion_tokens": 9, "n": 1, "user": "u", "stream_options": None, "parallel_tool_calls": False,
            "response_format": {"type": "json_schema",
                                "json_schema": {"name": "p", "schema": {"properties": {"a": {"type": "string"}}}}}}
    out = chat_request(body, None)
    assert out == {"model": "tgi", "messages": body["messages"], "stop": ["x"], "max_tokens": 9,
                   "response_format": {"type": "json_schema",
                                       "value": {"schema": {"properties": {"a": {"type": "string"}}}, "name": "p"}}}
    assert chat_request({"messages": [], "response_format": {"type": "text"}}, "lora")["model"] == "lora"
    assert "response_format" not in chat_request({"messages": [], "response_format": {"type": "text"}}, None)


@pytest.mark.parametrize(("kind", "body", "param"), [
    ("chat", {"n": 2}, "n"),
    ("chat", {"parallel_tool_calls": True}, "parallel_tool_calls"),
    ("chat", {"response_format": {"type": "json_object"}}, "response_format"),
    ("completion", {"prompt": ["a", "b"]}, "prompt"),
    ("completion", {"prompt": [1, 2, 3]}, "prompt"),
    ("completion", {"prompt": "a", "best_of": 2, "stream": True}, "best_of"),
    ("completion", {"prompt": "a", "echo": True, "logprobs": 1}, "echo"),
])
def test_values_tgi_cannot_honour_are_refused_by_name(kind: str, body: dict[str, Any], param: str) -> None:
    with pytest.raises(GatewayError) as caught:
        check_params(kind, body, "tgi")  # type: ignore[arg-type]
    assert caught.value.status == 422 and caught.value.param == param and caught.value.code == "unsupported_parameter"


def test_neutral_values_pass_and_unsupported_names_are_not_declared() -> None:
    check_params("chat", {"n": 1, "parallel_tool_calls": False}, "tgi")
    check_params("completion", {"prompt": ["one"], "best_of": 1, "echo": True}, "tgi")
    backend = TGIBackend(_config(), _context())
    for name in ("logit_bias", "suffix", "presence_penalty"):
        assert name not in backend.supported_params("completion")
    assert "logit_bias" not in backend.supported_params("chat")
    assert {"top_k", "grammar", "truncate", "seed", "logprobs"} <= backend.supported_params("completion")
    assert backend.supported_params("embedding") == frozenset()


def _context() -> Any:
    from gateway.backend import BackendContext
    from gateway.upstream.aiohttp_client import AiohttpUpstream

    return BackendContext(upstream=AiohttpUpstream())


# -- stop sequences -------------------------------------------------------------------------------


def test_finish_reasons_and_stop_stripping() -> None:
    assert [openai_finish_reason(r) for r in ("eos_token", "stop_sequence", "length", "stop")] == \
        ["stop", "stop", "length", "stop"]
    assert strip_stop("Test request failed: Error in test", ["test"]) == "Test request failed: Error in "
    assert strip_stop("no stop here", ["zzz"]) == "no stop here"


@pytest.mark.parametrize("pieces", [["Hello", " wor", "ld END"], ["Hello world", " E", "N", "D"],
                                    ["Hello world E", "ND"]])
def test_stop_trimmer_never_streams_the_stop_sequence(pieces: list[str]) -> None:
    trimmer = StopTrimmer(["END", "STOP"])
    streamed = "".join(trimmer.feed(p) for p in pieces) + trimmer.finish(stopped_by_sequence=True)
    assert streamed == "Hello world "


def test_stop_trimmer_releases_a_false_alarm() -> None:
    trimmer = StopTrimmer(["END"])
    assert trimmer.feed("the E") == "the "
    assert trimmer.feed("ND") == ""  # "END" is held: generation may stop right here
    assert trimmer.feed(" of it") == "END of it"  # it did not: TGI only stops on text ending in a stop
    assert trimmer.finish(stopped_by_sequence=False) == ""
    assert StopTrimmer([]).feed("x") == "x"


# -- errors ---------------------------------------------------------------------------------------


def test_error_classes() -> None:
    too_long_body = b'{"error":"Input validation error: `inputs` must have less than 64 tokens. Given: 80",' \
                    b'"error_type":"validation"}'
    error = http_error("b", 422, too_long_body, "chat")
    assert (error.status, error.param, error.code) == (400, "messages", "context_length_exceeded")
    assert "must have less than 64 tokens" in error.message
    error = http_error("b", 422, b'{"error":"Input validation error: `top_n_tokens` must be >= 0 and <= 5. Given: 9",'
                                 b'"error_type":"validation"}', "chat")
    assert (error.status, error.param) == (400, "top_logprobs")
    overloaded = http_error("b", 429, b'{"error":"Model is overloaded","error_type":"overloaded"}', "chat", "3")
    assert isinstance(overloaded, BackendUnavailable) and not overloaded.mark_down
    assert overloaded.status == 503 and overloaded.headers["retry-after"] == "3"
    failed = http_error("b", 424, b'{"error":"Request failed during generation: CUDA OOM","error_type":"generation"}',
                        "completion")
    assert failed.status == 502 and "CUDA OOM" in failed.message
    incomplete = http_error("b", 500, b'{"error":"Incomplete generation","error_type":"incomplete_generation"}', "chat")
    assert incomplete.status == 502
    unavailable = http_error("b", 503, b'{"error":"unhealthy","error_type":"healthcheck"}', "chat")
    assert isinstance(unavailable, BackendUnavailable) and unavailable.status == 503
    axum = http_error("b", 422, b"Failed to deserialize the JSON body into the target type: top_k: invalid type",
                      "completion")
    assert axum.status == 400 and "Failed to deserialize" in axum.message
    assert http_error("b", 404, b"", "chat").status == 502  # a wrong URL is the config's fault, not the client's
    unsupported = http_error("b", 422, b'{"error":"Input validation error: grammar is not supported",'
                                       b'"error_type":"validation"}', "completion")
    assert (unsupported.status, unsupported.code) == (422, "unsupported_parameter")


def test_stream_error_events() -> None:
    assert isinstance(event_error("b", {"message": "Model is overloaded", "http_status_code": 422}, None, "chat"),
                      BackendUnavailable)
    validation = event_error("b", {"message": "Input validation error: `inputs` must have less than 4 tokens. "
                                              "Given: 9", "http_status_code": 422}, None, "chat")
    assert validation.status == 400 and validation.code == "context_length_exceeded"
    assert event_error("b", "Request failed during generation: x", "generation", "completion").status == 502
    assert event_error("b", "Incomplete generation stream", "incomplete_generation_stream", "completion").status == 502


def test_length_guard() -> None:
    limits = Limits(max_input_tokens=100, max_total_tokens=150)
    assert not may_be_too_long(limits, 50, 20)
    assert may_be_too_long(limits, 95, None)
    assert may_be_too_long(limits, 50, 100)
    assert too_long("b", limits, 100, 50, "completion") is None
    over_input = too_long("b", limits, 101, None, "completion")
    assert over_input is not None and over_input.param == "prompt" and "max_input_tokens" in over_input.message
    over_total = too_long("b", limits, 60, 91, "chat")
    assert over_total is not None and over_total.param == "max_tokens" and "max_total_tokens" in over_total.message


# -- metrics and config ---------------------------------------------------------------------------


def test_load_from_metrics() -> None:
    text = ("# HELP tgi_queue_size Current queue size\n# TYPE tgi_queue_size gauge\ntgi_queue_size 3\n\n"
            "# TYPE tgi_batch_current_size gauge\ntgi_batch_current_size 2\ntgi_request_count 9\n")
    load = parse_load(text)
    assert (load.running, load.waiting, load.kv_cache_usage) == (2.0, 3.0, None)
    assert parse_load("").running is None


def test_validate_config() -> None:
    assert list(TGIBackend.validate_config(_config(adapter_id="a", check_length=False))) == []
    problems = dict(TGIBackend.validate_config(_config(bogus=1, max_input_tokens="many")))
    assert problems["options.bogus"] == "unknown key" and "options.max_input_tokens" in problems
    problems = dict(TGIBackend.validate_config(_config(max_input_tokens=10, max_total_tokens=5)))
    assert "options.max_input_tokens" in problems
    no_url = msgspec.structs.replace(_config(), url=None)
    assert ("url", "required key is missing") in list(TGIBackend.validate_config(no_url))


def test_chat_size_bound() -> None:
    from plugins.tgi.length import chat_bytes_bound

    text = chat_bytes_bound([{"role": "user", "content": "héllo"}])
    assert text == len("héllo".encode()) + 16
    image = chat_bytes_bound([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}])
    assert may_be_too_long(Limits(max_input_tokens=1 << 20, max_total_tokens=None), image, None)


# -- stream reading -------------------------------------------------------------------------------


class _FakeUpstream:
    """An upstream response body delivered in the given pieces."""

    status = 200
    content_type = "text/event-stream"

    def __init__(self, pieces: list[bytes]) -> None:
        self._pieces = pieces

    async def chunks(self) -> Any:
        for piece in self._pieces:
            yield piece

    async def read(self) -> bytes:
        return b""

    async def aclose(self) -> None:
        return None


def _token(i: int, text: str, last: bool = False) -> bytes:
    details = b'{"finish_reason":"length","generated_tokens":2,"seed":null,"input_length":3}' if last else b"null"
    generated = b'"Hi there"' if last else b"null"
    return (b'data:{"index":%d,"token":{"id":%d,"text":"%s","logprob":-0.1,"special":false},"generated_text":%s,'
            b'"details":%s}\n\n' % (i, i, text.encode(), generated, details))


async def _read(pieces: list[bytes], **options: Any) -> bytes:
    from plugins.tgi.stream import TGIEventStream
    from plugins.tgi.translate import CompletionTranslator

    translator = CompletionTranslator("b", "m", [], include_usage=options.get("usage", False), logprobs=None,
                                      echo_prompt=None)
    stream = TGIEventStream("b", _FakeUpstream(pieces), translator)  # type: ignore[arg-type]
    return b"".join([events async for events in stream])


async def test_stream_survives_any_split_and_keep_alives() -> None:
    raw = b":\n\n" + _token(1, "Hi") + b":\n\n" + _token(2, " there", last=True)
    for size in (1, 7, len(raw)):
        out = await _read([raw[i:i + size] for i in range(0, len(raw), size)], usage=True)
        events = out.split(b"\n\n")[:-1]
        assert events[-1] == b"data: [DONE]"
        bodies = [msgspec.json.decode(e[6:]) for e in events[:-1]]
        assert [b["choices"][0]["text"] for b in bodies[:2]] == ["Hi", " there"]
        assert bodies[1]["choices"][0]["finish_reason"] == "length"
        assert bodies[2]["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}


async def test_stream_cut_before_its_last_event_raises() -> None:
    with pytest.raises(GatewayError) as caught:
        await _read([_token(1, "Hi")])
    assert caught.value.status == 502 and "cut" in caught.value.message
    with pytest.raises(GatewayError) as caught:
        await _read([_token(1, "Hi"), b'data:{"index":2,"tok\n\n'])
    assert caught.value.status == 502 and "malformed" in caught.value.message
