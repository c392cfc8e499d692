"""The `speculative` section of a route: checked with key paths by the config loader."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import ConfigError, parse_config
from gateway.plugins import load_backend_registry
from gateway.speculative.eligibility import max_new_tokens, plain_reason, stop_strings
from gateway.state import GatewayState

from .conftest import gateway_serving

BACKENDS = [
    {"name": "big", "plugin": "vllm", "model": "m", "url": "http://127.0.0.1:1"},
    {"name": "small", "plugin": "llamacpp", "model": "m", "url": "http://127.0.0.1:2"},
    {"name": "tgi", "plugin": "tgi", "model": "m", "url": "http://127.0.0.1:3"},
    {"name": "trt", "plugin": "tensorrt_llm", "model": "m", "url": "http://127.0.0.1:4"},
    {"name": "ol", "plugin": "ollama", "model": "m", "url": "http://127.0.0.1:5"},
]


def load(speculative: dict[str, Any], backends: list[str] | None = None) -> Any:
    raw = {"backends": BACKENDS, "routes": [{"model": "coder", "backends": backends or ["big"],
                                             "speculative": speculative}]}
    return parse_config(raw, env={}, validators=load_backend_registry().validators())


def problems(speculative: dict[str, Any], backends: list[str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as err:
        load(speculative, backends)
    return err.value.problems


def test_a_valid_pair_loads_with_defaults() -> None:
    spec = load({"target": "big"}).routes[0].speculative
    assert (spec.draft, spec.k, spec.max_k, spec.min_speedup) == ("ngram", "auto", 8, 1.05)
    assert load({"target": "big", "draft": "small", "k": 4}).routes[0].speculative.k == 4


@pytest.mark.parametrize(("speculative", "backends", "expected"), [
    ({"target": "nope"}, None, "routes[0].speculative.target: unknown backend 'nope'"),
    ({"target": "ol"}, ["ol"], "routes[0].speculative.target: a 'ollama' backend cannot verify drafts"),
    ({"target": "small"}, ["big"], "routes[0].speculative.target: 'small' must be one of the route's backends"),
    ({"target": "big", "draft": "tgi"}, None, "routes[0].speculative.draft: a 'tgi' backend cannot draft"),
    ({"target": "big", "draft": "ghost"}, None, "routes[0].speculative.draft: unknown backend 'ghost'"),
    ({"target": "big", "draft": "big"}, None, "routes[0].speculative.draft: the target cannot draft for itself"),
    ({"target": "trt"}, ["trt"], "routes[0].speculative.draft: a tensorrt_llm target needs a llamacpp or vllm"),
    ({"target": "trt", "draft": "ol"}, ["trt"], "routes[0].speculative.draft: a tensorrt_llm target needs"),
    ({"target": "big", "k": 9}, None, "routes[0].speculative.k: must be `auto` or between 1 and max_k (8)"),
    ({"target": "big", "max_k": 0}, None, "routes[0].speculative.max_k: must be between 1 and 32"),
    ({"target": "big", "min_speedup": 0}, None, "routes[0].speculative.min_speedup"),
    ({"target": "big", "eos_ids": [-1]}, None, "routes[0].speculative.eos_ids"),
    ({"target": "big", "prompt_logprobs_below": -1}, None, "routes[0].speculative.prompt_logprobs_below"),
    ({"target": "trt", "draft": "small", "prompt_logprobs_below": 512}, ["trt"],
     "routes[0].speculative.prompt_logprobs_below: only a vllm target"),
    ({"target": "big", "k": "fast"}, None, "routes[0].speculative.k"),
    ({"target": "big", "drafts": 2}, None, "routes[0].speculative.drafts: unknown key"),
])
def test_bad_sections_are_refused_with_the_path(speculative: dict[str, Any], backends: list[str] | None,
                                                  expected: str) -> None:
    found = problems(speculative, backends)
    assert any(p.startswith(expected) for p in found), found


async def test_a_tgi_target_loads_and_its_pair_decodes_plainly_saying_why() -> None:
    config = load({"target": "tgi", "draft": "small"}, ["tgi"])
    state = GatewayState(config, load_backend_registry())
    async with gateway_serving(state) as gw:
        pair = (await gw.client.get("/admin/speculative")).json()["pairs"][0]
        assert pair["state"] == "plain" and pair["reason"].startswith("TGI takes no token-id prompts"), pair
        backends = {b["name"]: b for b in (await gw.client.get("/admin/backends")).json()["backends"]}
        assert backends["tgi"]["speculative"] == [{"route": "coder", "pair": "small->tgi", "state": "plain",
                                                   "reason": pair["reason"], "role": "target"}]
        assert backends["small"]["speculative"][0]["role"] == "draft"


def test_a_tensorrt_llm_target_with_a_model_draft_loads() -> None:
    assert load({"target": "trt", "draft": "small", "eos_ids": [2]}, ["trt"]).routes[0].speculative.eos_ids == [2]


@pytest.mark.parametrize(("body", "reason"), [
    ({"temperature": 0, "messages": [{"role": "user", "content": "x"}]}, None),
    ({"top_k": 1, "temperature": 0.8, "messages": [{"role": "user", "content": "x"}]}, None),
    ({"messages": [{"role": "user", "content": "x"}]}, "sampling"),
    ({"temperature": 0, "n": 3, "messages": [1]}, "n"),
    ({"temperature": 0, "frequency_penalty": 0.1, "messages": [1]}, "penalties"),
    ({"temperature": 0, "repetition_penalty": 1.1, "messages": [1]}, "penalties"),
    ({"temperature": 0, "logit_bias": {"5": 2}, "messages": [1]}, "penalties"),
    ({"temperature": 0, "guided_json": {"type": "object"}, "messages": [1]}, "grammar"),
    ({"temperature": 0, "response_format": {"type": "json_schema"}, "messages": [1]}, "grammar"),
    ({"temperature": 0, "response_format": {"type": "text"}, "messages": [1]}, None),
    ({"temperature": 0, "tools": [{"type": "function"}], "messages": [1]}, "tools"),
    ({"temperature": 0, "logprobs": True, "messages": [1]}, "logprobs"),
    ({"temperature": 0, "messages": []}, "messages"),
])
def test_only_greedy_plain_chat_requests_speculate(body: dict[str, Any], reason: str | None) -> None:
    assert plain_reason("chat", body) == reason
    assert plain_reason("completion", {"temperature": 0, "prompt": "x"}) == "not_chat"


def test_limits_and_stops_are_read_as_openai_sends_them() -> None:
    assert max_new_tokens({"max_completion_tokens": 7, "max_tokens": 9}, 100) == 7
    assert max_new_tokens({"max_tokens": 9}, 100) == 9
    assert max_new_tokens({}, 100) == 100
    assert stop_strings({"stop": "END"}) == ["END"]
    assert stop_strings({"stop": ["a", "b"]}) == ["a", "b"]
    assert stop_strings({}) == []
