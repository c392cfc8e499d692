"""The speculative route through the real ASGI app: a vllm backend on the vLLM emulator's token-id
model as the target, the n-gram drafter. The client's text must be the target-alone greedy output
(rendered, decoded and detokenized by the same server), streamed and whole, with stop strings, usage,
the header and the final chunk's counters; requests that cannot speculate go plainly to the route.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from gateway_process import EmulatorProcess, running

from gateway.api.speculative_serve import SpeculationFallback, SpeculativeResponse
from gateway.config import parse_config
from gateway.plugins import load_backend_registry
from gateway.speculative.adaptive_k import AdaptiveK, SpeculationPrior
from gateway.speculative.coordinator import SpeculativeDecoder
from gateway.speculative.pair import RequestSpeculation
from gateway.speculative.vllm_target import VllmTokenTarget
from gateway.state import GatewayState

from .asgi_post import post
from .conftest import GatewayUnderTest, gateway_serving
from .speculative_emulators import EmulatedTarget, PerfectDrafter, markov_next_token

MODEL = "emulated-gpu"
DOCUMENT = " ".join(f"word{i % 37}x{i}" for i in range(120))
# The emulator's model starts copying after a 1-gram match of the prompt's last token: the chat
# template ends on "<|im_start|>assistant", which the text also holds right before the document.
GROUNDED = [{"role": "user", "content": f"Copy this text:\n<|im_start|>assistant\n{DOCUMENT}\nNow copy it."}]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The emulated vLLM target in its own process, as a real one would be."""
    log: Path = tmp_path_factory.mktemp("spec-vllm") / "vllm.log"
    process = EmulatorProcess("plugins.vllm.emulator", log, ["--served-model-name", MODEL, "--edit-rate", "0.1"])
    with running(process):
        process.wait_ready()
        yield process.url


def config(url: str, **speculative: Any) -> dict[str, Any]:
    return {
        "backends": [{"name": "big", "plugin": "vllm", "model": MODEL, "url": url}],
        "routes": [{"model": "coder", "backends": ["big"],
                    "speculative": {"target": "big", "draft": "ngram", **speculative}}],
    }


@pytest.fixture
async def gw(emulator: str) -> AsyncIterator[GatewayUnderTest]:
    registry = load_backend_registry()
    state = GatewayState(parse_config(config(emulator), env={}, validators=registry.validators()), registry)
    async with gateway_serving(state) as running:
        yield running


async def target_alone(url: str, messages: list[dict[str, Any]], max_tokens: int) -> tuple[list[int], str]:
    """What the target alone decodes greedily from the same rendered prompt, and its text."""
    async with httpx.AsyncClient(base_url=url) as client:
        prompt = (await client.post("/tokenize", json={"model": MODEL, "messages": messages,
                                                       "add_generation_prompt": True})).json()["tokens"]
        target = VllmTokenTarget(url, MODEL)
        try:
            ids = [t async for t in target.generate(prompt, max_tokens)]
        finally:
            await target.aclose()
        text = (await client.post("/detokenize", json={"model": MODEL, "tokens": [t for t in ids if t != 2]}))
        return ids, text.json()["prompt"]


def sse_events(content: bytes) -> list[Any]:
    events = []
    for line in content.decode().splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            events.append(msgspec.json.decode(line[6:]))
    return events


async def test_whole_answer_is_the_target_alone_output_with_fewer_target_calls(gw: GatewayUnderTest,
                                                                               emulator: str) -> None:
    answer = await post(gw, {"model": "coder", "messages": GROUNDED, "temperature": 0, "max_tokens": 80})
    assert answer.status_code == 200, answer.content
    body = msgspec.json.decode(answer.content)
    ids, text = await target_alone(emulator, GROUNDED, 80)
    assert body["choices"][0]["message"]["content"] == text
    assert body["usage"]["completion_tokens"] == len(ids)
    spec = body["x_speculative"]
    assert spec["accepted"] > 0 and spec["target_calls"] < len(ids), spec
    assert gw.state.routing.stats.get("big").in_flight == 0  # counted while it ran, released after
    header = answer.headers["x-gateway-speculative"]
    assert f"accepted={spec['accepted']}" in header and "pair=ngram->big" in header
    assert answer.headers["x-gateway-backend"] == "big"
    pairs = (await gw.client.get("/admin/speculative")).json()["pairs"]
    assert pairs[0]["state"] == "ready" and pairs[0]["requests"] == 1 and pairs[0]["accepted"] == spec["accepted"]


async def test_stream_sends_only_verified_text_and_reports_counts_in_the_final_chunk(gw: GatewayUnderTest,
                                                                                     emulator: str) -> None:
    answer = await post(gw, {"model": "coder", "messages": GROUNDED, "temperature": 0, "max_tokens": 60,
                             "stream": True, "stream_options": {"include_usage": True}})
    assert answer.status_code == 200
    assert answer.headers["x-gateway-speculative"] == "pair=ngram->big"
    events = sse_events(answer.content)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    ids, expected = await target_alone(emulator, GROUNDED, 60)
    assert text == expected
    final = next(e for e in events if e["choices"] and e["choices"][0]["finish_reason"])
    assert final["choices"][0]["finish_reason"] == "length"
    assert final["x_speculative"]["rounds"] > 0
    assert events[-1]["usage"]["completion_tokens"] == len(ids) == 60
    # Fewer content chunks than tokens: each verified round is sent as one chunk.
    assert len([e for e in events if e["choices"] and e["choices"][0]["delta"].get("content")]) < 60


async def test_a_stop_string_cuts_the_text_and_the_usage(gw: GatewayUnderTest, emulator: str) -> None:
    _, full = await target_alone(emulator, GROUNDED, 40)
    words = full.split()
    stop = words[12]
    answer = await post(gw, {"model": "coder", "messages": GROUNDED, "temperature": 0, "max_tokens": 40,
                             "stop": [stop]})
    body = msgspec.json.decode(answer.content)
    content = body["choices"][0]["message"]["content"]
    assert content == full[: full.index(stop)]
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == words.index(stop) + 1


@pytest.mark.parametrize(("extra", "reason"), [
    ({}, "sampling"), ({"temperature": 0.7}, "sampling"), ({"temperature": 0, "n": 2}, "n"),
    ({"temperature": 0, "presence_penalty": 0.5}, "penalties"),
    ({"temperature": 0, "response_format": {"type": "json_object"}}, "grammar"),
])
async def test_requests_that_cannot_speculate_are_served_plainly_and_counted(
    gw: GatewayUnderTest, extra: dict[str, Any], reason: str
) -> None:
    answer = await post(gw, {"model": "coder", "messages": GROUNDED, "max_tokens": 5, **extra})
    assert answer.status_code == 200, answer.content
    assert "x-gateway-speculative" not in answer.headers
    assert "x_speculative" not in msgspec.json.decode(answer.content)
    pair = (await gw.client.get("/admin/speculative")).json()["pairs"][0]
    assert pair["fallbacks"] == {reason: 1} and pair["plain_requests"] == 1
    metrics = (await gw.client.get("/metrics")).text
    assert f'gateway_speculative_fallbacks_total{{pair="ngram->big",reason="{reason}",route="coder"}} 1.0' in metrics


async def test_a_pair_whose_target_takes_no_token_ids_runs_plain_and_says_why(emulator: str) -> None:
    registry = load_backend_registry()
    raw = config(emulator)
    raw["backends"].append({"name": "small", "plugin": "vllm", "model": "other", "url": "http://127.0.0.1:9"})
    raw["routes"][0]["speculative"]["draft"] = "small"
    state = GatewayState(parse_config(raw, env={}, validators=registry.validators()), registry)
    async with gateway_serving(state) as gw:
        pair = (await gw.client.get("/admin/speculative")).json()["pairs"][0]
        assert pair["state"] == "plain" and "draft/target tokenizers" in pair["reason"], pair
        backends = {b["name"]: b for b in (await gw.client.get("/admin/backends")).json()["backends"]}
        assert backends["big"]["speculative"][0]["state"] == "plain"
        answer = await post(gw, {"model": "coder", "messages": GROUNDED, "temperature": 0, "max_tokens": 5})
        assert answer.status_code == 200 and "x-gateway-speculative" not in answer.headers


async def test_a_loaded_target_serves_plainly_until_its_queue_drains(gw: GatewayUnderTest) -> None:
    pair = gw.state.speculative.get("coder")
    assert pair is not None
    waiting = [10.0]
    pair.target_waiting = lambda: waiting[0]  # what the load monitor reads from vLLM's num_requests_waiting
    body = {"model": "coder", "messages": GROUNDED, "temperature": 0, "max_tokens": 5}
    assert "x-gateway-speculative" not in (await post(gw, body)).headers
    waiting[0] = 0.0
    assert "x-gateway-speculative" in (await post(gw, body)).headers
    assert pair.describe()["fallbacks"] == {"target_load": 1}


@pytest.fixture(scope="module")
def draft_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorProcess]:
    log: Path = tmp_path_factory.mktemp("spec-draft") / "vllm.log"
    process = EmulatorProcess("plugins.vllm.emulator", log, ["--served-model-name", MODEL, "--edit-rate", "0.1"])
    with running(process):
        process.wait_ready()
        yield process


async def test_a_model_draft_that_fails_mid_way_leaves_the_rest_to_the_target(
    emulator: str, draft_emulator: EmulatorProcess
) -> None:
    registry = load_backend_registry()
    raw = config(emulator)
    raw["backends"].append({"name": "small", "plugin": "vllm", "model": MODEL, "url": draft_emulator.url})
    raw["routes"][0]["speculative"]["draft"] = "small"
    state = GatewayState(parse_config(raw, env={}, validators=registry.validators()), registry)
    async with gateway_serving(state) as gw:
        pair = (await gw.client.get("/admin/speculative")).json()["pairs"][0]
        assert pair["state"] == "ready" and pair["probe"]["tokenizer_parity"] is True, pair
        body = {"model": "coder", "messages": GROUNDED, "temperature": 0, "max_tokens": 40}
        ok = msgspec.json.decode((await post(gw, body)).content)
        assert ok["x_speculative"]["fallback"] is None and ok["x_speculative"]["accepted"] > 0
        draft_emulator.knobs(fault="http_500")
        try:
            answer = await post(gw, body)
        finally:
            draft_emulator.knobs(fault="none")
        assert answer.status_code == 200
        failed = msgspec.json.decode(answer.content)
        assert failed["x_speculative"]["fallback"] == "draft_failed"
        assert failed["choices"][0]["message"]["content"] == ok["choices"][0]["message"]["content"]
        assert (await target_alone(emulator, GROUNDED, 40))[1] == ok["choices"][0]["message"]["content"]


async def test_short_contexts_verified_with_prompt_logprobs_give_the_same_answer(emulator: str) -> None:
    registry = load_backend_registry()
    raw = config(emulator, prompt_logprobs_below=100_000)
    state = GatewayState(parse_config(raw, env={}, validators=registry.validators()), registry)
    async with gateway_serving(state) as gw:
        answer = msgspec.json.decode((await post(gw, {"model": "coder", "messages": GROUNDED, "temperature": 0,
                                                      "max_tokens": 50})).content)
        assert answer["x_speculative"]["accepted"] > 0
        assert answer["choices"][0]["message"]["content"] == (await target_alone(emulator, GROUNDED, 50))[1]


class _IdsCodec:
    """A stand-in tokenizer for SpeculativeResponse alone: the chat is [1, 2, 3]; id n reads " t<n>"."""

    async def render_chat(self, messages: list[Any]) -> list[int]:
        return [1, 2, 3]

    async def tokenize(self, text: str) -> list[int]:
        raise NotImplementedError

    async def detokenize(self, ids: Sequence[int]) -> str:
        return "".join(f" t{i}" for i in ids)


class _Pair:
    name = "perfect->emulated"
    codec = _IdsCodec()


def _response(fail_on_call: int | None) -> SpeculativeResponse:
    next_token = markov_next_token([(7 * i + 3) % 11 + 20 for i in range(40 * 40)], 40)
    target = EmulatedTarget(next_token, fail_on_call=fail_on_call)
    decoder = SpeculativeDecoder(PerfectDrafter(next_token), target, choose_k=lambda: 3)
    spec = RequestSpeculation(_Pair(), decoder, AdaptiveK(SpeculationPrior(0.025, 0.004, 0.0005)), {}, "t")  # type: ignore[arg-type]
    return SpeculativeResponse(_Pair(), spec, {"messages": [{"role": "user", "content": "x"}], "max_tokens": 40},  # type: ignore[arg-type]
                               client_model="m", request_id=b"req-1", include_usage=False)


async def test_a_target_failing_mid_stream_ends_it_with_an_error_event() -> None:
    response = _response(fail_on_call=3)  # two rounds go out, the third verify fails
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await response.stream(send, [])
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body").decode()
    assert response.failed and sent[0]["status"] == 200
    assert body.count('"content":" t') == 2  # the two verified rounds, one chunk each
    assert body.rstrip().endswith("}") and "speculative decoding failed mid-stream" in body.splitlines()[-2]
    assert "[DONE]" not in body and sent[-1] == {"type": "http.response.body", "body": b"", "more_body": False}


async def test_a_target_failing_in_a_json_answer_hands_the_request_back_to_the_route() -> None:
    response = _response(fail_on_call=2)

    async def send(message: dict[str, Any]) -> None:
        raise AssertionError("nothing may be sent before the plain path answers")

    with pytest.raises(SpeculationFallback) as fallback:
        await response.whole(send, [])
    assert fallback.value.reason == "target_failed"
