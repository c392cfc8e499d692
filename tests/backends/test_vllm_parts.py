"""The vllm plugin's pure parts, no server: metrics parsing, legacy guided fields, error refinement, config."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.backend import BackendUnavailable
from gateway.config import BackendConfig
from gateway.errors import GatewayError
from plugins.openai_compat.errors import http_error
from plugins.vllm.backend import VLLMBackend
from plugins.vllm.errors import refine_error
from plugins.vllm.metrics import parse_load
from plugins.vllm.params import CHAT_PARAMS, COMPLETION_PARAMS, translate_legacy_guided

# The lines vLLM 0.32's CPU build printed (two engines added to show the aggregation).
V1_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="smollm2-hf"} 2.0
vllm:num_requests_running{engine="1",model_name="smollm2-hf"} 1.0
vllm:num_requests_waiting{engine="0",model_name="smollm2-hf"} 3.0
vllm:num_requests_waiting{engine="1",model_name="smollm2-hf"} 0.0
vllm:num_requests_waiting_by_reason{engine="0",model_name="smollm2-hf",reason="capacity"} 3.0
vllm:kv_cache_usage_perc{engine="0",model_name="smollm2-hf"} 0.5
vllm:kv_cache_usage_perc{engine="1",model_name="smollm2-hf"} 0.25
"""

V0_METRICS = """\
vllm:num_requests_running{model_name="m"} 4.0
vllm:num_requests_waiting{model_name="m"} 1.0
vllm:gpu_cache_usage_perc{model_name="m"} 0.42
"""


def test_load_sums_queues_and_averages_kv_over_engines() -> None:
    load = parse_load(V1_METRICS)
    assert (load.running, load.waiting, load.kv_cache_usage) == (3.0, 3.0, 0.375)


def test_load_falls_back_to_the_v0_kv_gauge() -> None:
    load = parse_load(V0_METRICS)
    assert (load.running, load.waiting, load.kv_cache_usage) == (4.0, 1.0, 0.42)


def test_load_is_unknown_where_the_page_says_nothing() -> None:
    load = parse_load("# nothing here\nprocess_cpu_seconds_total 1.5\nvllm:num_requests_running{x=\"1\"} junk\n")
    assert (load.running, load.waiting, load.kv_cache_usage) == (None, None, None)


def test_legacy_guided_fields_move_into_structured_outputs_without_touching_the_original() -> None:
    body: dict[str, Any] = {"prompt": "x", "guided_choice": ["a", "b"], "guided_whitespace_pattern": r"\s*"}
    out = translate_legacy_guided(body)
    assert out == {"prompt": "x", "structured_outputs": {"choice": ["a", "b"], "whitespace_pattern": r"\s*"}}
    assert "guided_choice" in body and "structured_outputs" not in body  # the dispatcher reuses the dict
    assert translate_legacy_guided({"prompt": "x"}) == {"prompt": "x"}


def test_a_constraint_given_both_ways_is_left_for_vllm_to_reject() -> None:
    out = translate_legacy_guided({"structured_outputs": {"regex": "a+"}, "guided_choice": ["a"]})
    assert out["structured_outputs"] == {"regex": "a+", "choice": ["a"]}


def test_declared_parameters_are_per_endpoint() -> None:
    assert {"top_k", "min_p", "repetition_penalty", "prompt_logprobs", "structured_outputs"} <= CHAT_PARAMS
    assert {"top_k", "min_p", "repetition_penalty", "prompt_logprobs", "structured_outputs"} <= COMPLETION_PARAMS
    assert "chat_template" in CHAT_PARAMS and "chat_template" not in COMPLETION_PARAMS
    assert "prompt_embeds" in COMPLETION_PARAMS and "prompt_embeds" not in CHAT_PARAMS
    # Silently ignored by vLLM 0.32, so never declared.
    assert "guided_decoding_backend" not in CHAT_PARAMS | COMPLETION_PARAMS
    assert "best_of" not in COMPLETION_PARAMS


VLLM_CONTEXT_ERROR = (
    b'{"error":{"message":"This model\'s maximum context length is 2048 tokens. However, your prompt contains '
    b'at least 2049 input tokens, which exceeds this limit even without any output tokens. Please reduce the '
    b'length of the input prompt. (parameter=input_tokens, value=2049)","type":"BadRequestError",'
    b'"param":"input_tokens","code":400}}'
)


@pytest.mark.parametrize(("kind", "param"), [("chat", "messages"), ("completion", "prompt")])
def test_context_length_error_gets_openai_code_and_prompt_param(kind: Any, param: str) -> None:
    err = refine_error(http_error("v", 400, VLLM_CONTEXT_ERROR), kind)
    assert (err.status, err.code, err.param) == (400, "context_length_exceeded", param)
    assert "maximum context length is 2048 tokens" in err.message


def test_pydantic_location_becomes_the_field_name_and_numeric_codes_go() -> None:
    body = (b'{"error":{"message":"1 validation error","type":"Bad Request","param":"body.top_k","code":400}}')
    err = refine_error(http_error("v", 400, body), "chat")
    assert (err.status, err.param, err.code) == (400, "top_k", None)


def test_unknown_model_is_model_not_found() -> None:
    body = (b'{"error":{"message":"The model `nope` does not exist. Valid aliases: smollm2-hf.",'
            b'"type":"NotFoundError","param":"model","code":404}}')
    err = refine_error(http_error("v", 404, body), "chat")
    assert (err.status, err.param, err.code) == (404, "model", "model_not_found")
    assert "The model `nope` does not exist" in err.message


def test_server_failures_stay_retryable() -> None:
    err = refine_error(http_error("v", 503, b'{"error":{"message":"busy","code":503}}'), "chat")
    assert isinstance(err, BackendUnavailable)


def _config(**extra: Any) -> BackendConfig:
    return BackendConfig(name="v", plugin="vllm", model="m", **extra)


def test_validate_config_names_each_problem() -> None:
    problems = dict(VLLMBackend.validate_config(_config(launch={"model": "x"}, options={"embedings": True})))
    assert set(problems) == {"url", "launch", "options.embedings"}
    assert list(VLLMBackend.validate_config(_config(url="http://127.0.0.1:1", options={"embeddings": True}))) == []


def test_best_of_other_than_one_is_refused_for_completions() -> None:
    from gateway.backend import BackendContext
    from gateway.upstream.aiohttp_client import AiohttpUpstream

    backend = VLLMBackend(_config(url="http://127.0.0.1:1"), BackendContext(upstream=AiohttpUpstream()))
    backend.check_params("completion", {"prompt": "x", "best_of": 1})
    with pytest.raises(GatewayError) as caught:
        backend.check_params("completion", {"prompt": "x", "best_of": 2})
    assert (caught.value.status, caught.value.param) == (422, "best_of")
    caps = backend.capabilities
    assert (caps.token_id_prompts, caps.prompt_logprobs, caps.tokenize, caps.embeddings) == (True, True, True, False)
