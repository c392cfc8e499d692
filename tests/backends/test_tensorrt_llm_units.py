"""The tensorrt_llm plugin's parts without any server: config, prompts, stop words, mapping, metrics.

Where a real response is needed it is one of the recorded fixtures in plugins/tensorrt_llm/fixtures.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.backend import BackendContext, BackendUnavailable
from gateway.config import ConfigError, parse_config
from gateway.errors import GatewayError
from gateway.plugins import load_backend_registry
from gateway.upstream.aiohttp_client import AiohttpUpstream
from plugins.openai_compat.stream import split_at_problem
from plugins.tensorrt_llm import TensorRTLLMBackend
from plugins.tensorrt_llm.chat_templates import BUILTIN_TEMPLATES, render_chat
from plugins.tensorrt_llm.options import TritonOptions
from plugins.tensorrt_llm.serve_backend import TrtllmServeBackend
from plugins.tensorrt_llm.serve_metrics import IterationLoad
from plugins.tensorrt_llm.stop_words import StopTrimmer, trim_stop
from plugins.tensorrt_llm.triton_backend import TritonBackend
from plugins.tensorrt_llm.triton_errors import triton_http_error
from plugins.tensorrt_llm.triton_metrics import parse_load
from plugins.tensorrt_llm.triton_request import build_call, check_request
from plugins.tensorrt_llm.triton_response import whole_reply

FIXTURES = Path(__file__).resolve().parents[2] / "plugins" / "tensorrt_llm" / "fixtures"


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / name).read_text())
    return data


def config(**options: Any) -> dict[str, Any]:
    return {"backends": [{"name": "trt", "plugin": "tensorrt_llm", "model": "m", "url": "http://127.0.0.1:9",
                          "options": options}],
            "routes": [{"model": "m", "backends": ["trt"]}]}


def problems(**options: Any) -> list[str]:
    try:
        parse_config(config(**options), env={}, validators=load_backend_registry().validators())
    except ConfigError as err:
        return err.problems
    return []


# -- configuration ------------------------------------------------------------------------------


def test_both_modes_validate() -> None:
    assert problems() == []
    assert problems(mode="trtllm_serve", extra_params=["foo"]) == []
    assert problems(mode="triton", model_name="tensorrt_llm_bls", chat_template="llama3", end_id=2) == []
    assert problems(mode="triton", chat_template={"message": "{role}: {content}\n", "generation_prompt": "A:"}) == []


@pytest.mark.parametrize(("options", "expected"), [
    ({"mode": "vllm"}, "backends[0].options.mode: must be one of trtllm_serve, triton (got vllm)"),
    ({"mode": "triton", "modle_name": "x"}, "backends[0].options.modle_name: unknown key"),
    ({"mode": "trtllm_serve", "model_name": "x"}, "backends[0].options.model_name: unknown key"),
    ({"mode": "triton", "chat_template": "nope"}, "backends[0].options.chat_template: unknown template 'nope'"),
    ({"mode": "triton", "default_max_tokens": 0}, "backends[0].options.default_max_tokens: must be positive"),
    ({"mode": "triton", "chat_template": {"message": "x"}},
     "backends[0].options.chat_template.generation_prompt: required key is missing"),
])
def test_bad_options_name_the_key(options: dict[str, Any], expected: str) -> None:
    assert any(p.startswith(expected) for p in problems(**options)), problems(**options)


def test_the_mode_picks_the_backend_class() -> None:
    registry = load_backend_registry()
    assert registry.types["tensorrt_llm"] is TensorRTLLMBackend
    parsed = parse_config(config(mode="triton"), env={}, validators=registry.validators())
    context = BackendContext(upstream=AiohttpUpstream())
    assert isinstance(TensorRTLLMBackend(parsed.backends[0], context), TritonBackend)
    parsed = parse_config(config(), env={}, validators=registry.validators())
    backend = TensorRTLLMBackend(parsed.backends[0], context)
    assert isinstance(backend, TrtllmServeBackend)
    assert backend.plugin == "tensorrt_llm" and "top_k" in backend.supported_params("chat")


# -- prompts and requests -----------------------------------------------------------------------


def test_chatml_prompt_and_text_parts() -> None:
    messages: list[dict[str, Any]] = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]}]
    assert render_chat(BUILTIN_TEMPLATES["chatml"], messages) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n")
    with pytest.raises(GatewayError) as caught:
        render_chat(BUILTIN_TEMPLATES["chatml"], [{"role": "user", "content": [{"type": "image_url"}]}])
    assert caught.value.status == 422 and caught.value.param == "messages[0].content"


def test_chat_request_as_ensemble_inputs() -> None:
    options = msgspec.convert({"mode": "triton", "end_id": 2, "pad_id": 2}, TritonOptions)
    call = build_call("chat", {"messages": [{"role": "user", "content": "hi"}], "stop": "END", "temperature": 0.5,
                               "top_k": 5, "max_completion_tokens": 7}, options, stream=True)
    assert call.body == {
        "text_input": "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "max_tokens": 7,
        "temperature": 0.5, "top_k": 5, "end_id": 2, "pad_id": 2, "stop_words": ["END", "<|im_end|>"],
        "exclude_input_in_output": True, "return_num_input_tokens": True, "return_num_output_tokens": True,
        "stream": True,
    }
    legacy = msgspec.convert({"mode": "triton", "exclude_input_in_output": False, "token_counts": False,
                              "default_max_tokens": 64}, TritonOptions)
    call = build_call("completion", {"prompt": ["Once"]}, legacy, stream=False)
    assert call.body == {"text_input": "Once", "max_tokens": 64, "stream": False}


@pytest.mark.parametrize(("kind", "body", "param"), [
    ("chat", {"n": 2}, "n"),
    ("completion", {"best_of": 3}, "best_of"),
    ("completion", {"prompt": [1, 2, 3]}, "prompt"),
    ("completion", {"prompt": ["a", "b"]}, "prompt"),
])
def test_values_the_ensemble_cannot_honour_are_422(kind: str, body: dict[str, Any], param: str) -> None:
    with pytest.raises(GatewayError) as caught:
        check_request(kind, body, "trt", "tensorrt_llm")  # type: ignore[arg-type]
    assert caught.value.status == 422 and caught.value.param == param


# -- stop words -----------------------------------------------------------------------------------


def test_only_a_stop_word_at_the_end_is_cut() -> None:
    assert trim_stop("Machine learning lets computers learn", ["learn", "x"]) == ("Machine learning lets computers ",
                                                                                  "learn")
    assert trim_stop("Machine learning", ["learn"]) == ("Machine learning", None)
    trimmer = StopTrimmer(["<|im_end|>"])
    assert [trimmer.feed(t) for t in ["Hi", " there<|im", "_end|>"]] == ["Hi", " there", ""]
    assert trimmer.flush() == "" and trimmer.stopped == "<|im_end|>"


@given(text=st.text(alphabet="ab<|>ED ", max_size=40), cuts=st.lists(st.integers(0, 40), max_size=8),
       stops=st.lists(st.text(alphabet="ab<|>ED", min_size=1, max_size=4), max_size=3))
def test_streamed_trim_equals_whole_trim(text: str, cuts: list[int], stops: list[str]) -> None:
    bounds = sorted({c for c in cuts if c <= len(text)} | {0, len(text)})
    trimmer = StopTrimmer(stops)
    streamed = "".join(trimmer.feed(text[a:b]) for a, b in itertools.pairwise(bounds)) + trimmer.flush()
    whole, found = trim_stop(text, stops)
    assert streamed == whole
    assert trimmer.stopped == found


# -- responses, from the recorded real ones -------------------------------------------------------


def test_generate_response_as_chat_completion() -> None:
    options = msgspec.convert({"mode": "triton"}, TritonOptions)
    recorded = fixture("triton_generate_llama.json")
    call = build_call("chat", {"messages": [{"role": "user", "content": "What is machine learning?"}],
                               "max_tokens": 20}, options, stream=False)
    reply = json.loads(whole_reply("trt", "chat", call, "m", json.dumps(recorded["response"]).encode()))
    assert reply["object"] == "chat.completion" and reply["model"] == "m"
    assert reply["choices"][0]["message"] == {"role": "assistant", "content": recorded["response"]["text_output"]}
    # No token counts in that response: usage is an estimate and says so.
    assert reply["usage"]["estimated"] is True
    assert reply["usage"]["total_tokens"] == reply["usage"]["prompt_tokens"] + reply["usage"]["completion_tokens"]


def test_a_kept_stop_word_is_cut_and_the_finish_is_stop() -> None:
    options = msgspec.convert({"mode": "triton"}, TritonOptions)
    recorded = fixture("triton_generate_stop_words.json")
    call = build_call("completion", {"prompt": recorded["request"]["text_input"], "max_tokens": 20,
                                     "stop": recorded["request"]["stop_words"]}, options, stream=False)
    reply = json.loads(whole_reply("trt", "completion", call, "m", json.dumps(recorded["response"]).encode()))
    choice = reply["choices"][0]
    assert recorded["response"]["text_output"].endswith("to learn")
    assert choice["text"].endswith("allows computers to ") and choice["finish_reason"] == "stop"


def test_an_echoed_prompt_is_cut() -> None:
    options = msgspec.convert({"mode": "triton", "exclude_input_in_output": False}, TritonOptions)
    call = build_call("completion", {"prompt": "The future of AI is", "max_tokens": 4}, options, stream=False)
    body = {"model_name": "m", "model_version": "1", "text_output": "The future of AI is bright",
            "num_input_tokens": 5, "num_output_tokens": 4}
    reply = json.loads(whole_reply("trt", "completion", call, "m", json.dumps(body).encode()))
    assert reply["choices"][0] == {"index": 0, "text": " bright", "logprobs": None, "finish_reason": "length"}
    assert reply["usage"] == {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}


@pytest.mark.parametrize(("status", "body", "expected_status", "code"), [
    (404, b'{"error":"Request for unknown model: \'nope\' is not found"}', 404, "model_not_found"),
    (400, b'{"error":"attempt to access JSON non-string as string"}', 400, None),
    (503, b'{"error":"Exceeds maximum queue size"}', 503, "backend_unavailable"),
    (500, b'data: {"error":"executor failed"}\n\n', 502, "backend_error"),
])
def test_triton_errors_keep_their_message(status: int, body: bytes, expected_status: int, code: str | None) -> None:
    error = triton_http_error("trt", "nope", status, body)
    assert error.status == expected_status and error.code == code
    assert json.loads(body.removeprefix(b"data: "))["error"] in error.message
    if status == 503:
        assert isinstance(error, BackendUnavailable) and error.mark_down is False
    if status == 404:
        assert "'nope'" in error.message and error.param == "model"


# -- load -----------------------------------------------------------------------------------------


def test_triton_metrics_page_as_load() -> None:
    load = parse_load(fixture("triton_metrics.json")["text"])
    assert load.running == 0 and load.capacity == 512
    assert load.waiting == 1  # TensorRT-LLM's own queue (1) plus Triton's pending count (0)
    assert load.kv_cache_usage == pytest.approx(1 / 6239)
    assert parse_load("# nothing here\n").running is None


def test_iteration_stats_as_load() -> None:
    iterations = IterationLoad()
    assert iterations.update(b"[]").running is None  # never seen any: unknown, not idle
    load = iterations.update(json.dumps(fixture("trtllm_serve_metrics.json")["response"]).encode())
    assert load.running == 1 and load.kv_cache_usage == pytest.approx(3 / 101256)
    stats = [{"numActiveRequests": 2, "numQueuedRequests": 3, "maxNumActiveRequests": 8,
              "inflightBatchingStats": {"numPausedRequests": 1}}]
    load = iterations.update(json.dumps(stats).encode())
    assert (load.running, load.waiting, load.capacity) == (2, 4, 8)
    idle = iterations.update(b"[]")  # drained and nothing ran since
    assert (idle.running, idle.waiting, idle.capacity) == (0, 0, 8)


def test_a_malformed_passthrough_event_is_found() -> None:
    good = b'data: {"id": "a"} \n\ndata: [DONE]\n\n'
    assert split_at_problem("trt", good) == (good, None)
    events, problem = split_at_problem("trt", b'data: {"id": "a"}\n\ndata: {"id": \n\ndata: [DONE]\n\n')
    assert events == b'data: {"id": "a"}\n\n' and problem is not None and problem.status == 502
