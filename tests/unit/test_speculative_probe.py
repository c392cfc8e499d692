"""The start-up capability probe (gateway.speculative.probe) with fake tokenizers and a mocked HTTP
transport: parity passes for identical tokenizers, and every difference or failure is a reason that
names what differed, never an exception."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from gateway.speculative.probe import (
    PROBE_TEXTS,
    LlamaCppTokenizer,
    SpecialIds,
    VllmTokenizer,
    first_difference,
    probe_pair,
    probe_token_id_prompts,
)


class FakeTokenizer:
    """Bytes as ids (plus `bos` before when special tokens are asked for); `override` maps a text to ids."""

    def __init__(self, name: str = "fake", *, bos: list[int] | None = None, eos: list[int] | None = None,
                 override: dict[str, list[int]] | None = None, fail: Exception | None = None) -> None:
        self.name = name
        self.bos = bos or []
        self.eos = eos or []
        self.override = override or {}
        self.fail = fail
        self.calls: list[tuple[str, bool]] = []

    async def tokenize(self, text: str, *, add_special: bool) -> list[int]:
        self.calls.append((text, add_special))
        if self.fail is not None:
            raise self.fail
        ids = self.override.get(text, list(text.encode()))
        return self.bos + ids + self.eos if add_special else list(ids)


def test_the_probe_set_covers_whitespace_code_unicode_and_special_tokens() -> None:
    joined = "".join(PROBE_TEXTS.values())
    for needle in ("  ", "\n\n", "\t", "{", "    return", "日本語", "🙂", "\u0301", "<|im_start|>", "<|endoftext|>"):
        assert needle in joined, needle


async def test_identical_tokenizers_pass() -> None:
    draft, target = FakeTokenizer("d"), FakeTokenizer("t")
    result = await probe_pair(draft, target)
    assert result.ok and result.reasons == []
    assert result.draft_special == result.target_special == SpecialIds([], [])
    assert {text for text, _ in target.calls} >= set(PROBE_TEXTS.values())
    assert set(result.timings_ms) == {"draft", "target", "total"}


async def test_one_differing_text_is_named_with_its_first_differing_position() -> None:
    code = PROBE_TEXTS["code"]
    changed = list(code.encode())
    changed[3] = 1250
    result = await probe_pair(FakeTokenizer(), FakeTokenizer(override={code: changed}))
    assert not result.ok
    assert result.reasons == [
        f"tokenizer mismatch on 'code': first difference at id 3: draft {code.encode()[3]} vs target 1250 "
        f"({len(changed)} vs {len(changed)} ids)"
    ]


async def test_a_shorter_id_list_differs_at_its_end() -> None:
    english = PROBE_TEXTS["english"]
    ids = list(english.encode())
    result = await probe_pair(FakeTokenizer(override={english: ids[:-1]}), FakeTokenizer())
    assert result.reasons == [
        f"tokenizer mismatch on 'english': first difference at id {len(ids) - 1}: draft (end) vs target {ids[-1]} "
        f"({len(ids) - 1} vs {len(ids)} ids)"
    ]


async def test_a_bos_difference_is_reported_and_texts_still_compare_without_it() -> None:
    result = await probe_pair(FakeTokenizer(bos=[1]), FakeTokenizer())
    assert not result.ok
    assert result.reasons == ["BOS differs: draft adds 1, target adds none"]
    assert result.draft_special == SpecialIds([1], [])
    assert result.target_special == SpecialIds([], [])


async def test_an_eos_difference_is_reported() -> None:
    result = await probe_pair(FakeTokenizer(bos=[1]), FakeTokenizer(bos=[1], eos=[2]))
    assert result.reasons == ["EOS differs: draft adds none, target adds 2"]


async def test_a_raising_tokenizer_is_a_reason_not_an_exception() -> None:
    result = await probe_pair(FakeTokenizer(), FakeTokenizer("broken", fail=RuntimeError("backend down")))
    assert not result.ok
    assert result.reasons == ["target tokenizer (broken) failed: RuntimeError: backend down"]  # once, not per text
    assert result.target_special is None and result.draft_special == SpecialIds([], [])


def test_first_difference() -> None:
    assert first_difference([1, 2], [1, 2]) is None
    assert first_difference([1, 2], [1, 3]) == 1
    assert first_difference([1], [1, 2]) == 1
    assert first_difference([], []) is None


def mock_client(handler: Callable[[httpx.Request], httpx.Response]) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


async def test_adapters_send_each_servers_field_names() -> None:
    seen: list[tuple[str, bytes]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.content))
        return httpx.Response(200, json={"tokens": [5, 6]})

    async with mock_client(handler) as client:
        assert await LlamaCppTokenizer("http://l/", client=client).tokenize("x", add_special=True) == [5, 6]
        assert await VllmTokenizer("http://v", "m", client=client).tokenize("y", add_special=False) == [5, 6]
    assert seen[0][0] == "http://l/tokenize"
    llama_body = {"content": "x", "add_special": True, "parse_special": True}
    assert httpx.Response(200, content=seen[0][1]).json() == llama_body
    assert seen[1][0] == "http://v/tokenize"
    assert httpx.Response(200, content=seen[1][1]).json() == {"model": "m", "prompt": "y", "add_special_tokens": False}


async def test_http_errors_and_bad_bodies_are_reasons() -> None:
    def not_found(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": {"message": "no such model"}})

    def no_tokens(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"count": 1})

    async with mock_client(not_found) as bad, mock_client(no_tokens) as odd:
        result = await probe_pair(VllmTokenizer("http://v", "m", client=bad), LlamaCppTokenizer("http://l", client=odd))
    assert not result.ok
    assert len(result.reasons) == 2
    assert result.reasons[0].startswith(
        "draft tokenizer (vllm) failed: TokenizerError: POST http://v/tokenize answered 404")
    assert result.reasons[1].startswith(
        "target tokenizer (llama.cpp) failed: TokenizerError: http://l/tokenize answered no integer 'tokens' list")


async def test_an_unreachable_server_is_a_reason(free_port: int) -> None:
    url = f"http://127.0.0.1:{free_port}"
    result = await probe_pair(LlamaCppTokenizer(url, timeout_s=2), FakeTokenizer())
    assert not result.ok and len(result.reasons) == 1
    assert "ConnectError" in result.reasons[0]
    ids_result = await probe_token_id_prompts(url, "m", [1, 2], timeout_s=2)
    assert not ids_result.ok and "ConnectError" in ids_result.reasons[0]


def completions(choices_per_call: Callable[[object], list[dict[str, object]]]) -> httpx.AsyncClient:
    def handler(request: httpx.Request) -> httpx.Response:
        prompt = httpx.Response(200, content=request.content).json()["prompt"]
        return httpx.Response(200, json={"choices": choices_per_call(prompt)})

    return mock_client(handler)


def choice(index: int, token: str = "token_id:7") -> dict[str, object]:
    return {"index": index, "text": "x", "logprobs": {"tokens": [token]}}


async def test_token_id_prompts_pass_with_one_choice_per_prompt() -> None:
    def answer(prompt: object) -> list[dict[str, object]]:
        assert isinstance(prompt, list)
        return [choice(i) for i in range(len(prompt))] if isinstance(prompt[0], list) else [choice(0)]

    async with completions(answer) as client:
        result = await probe_token_id_prompts("http://v", "m", [1, 2, 3], client=client)
    assert result.ok and result.reasons == []


async def test_token_id_prompts_report_missing_choices_and_text_tokens() -> None:
    async with completions(lambda prompt: [choice(0, "hello")]) as client:
        result = await probe_token_id_prompts("http://v", "m", [1, 2, 3], client=client)
    assert result.reasons == [
        "token-id prompt: choice 0 token 'hello' is not 'token_id:<id>'",
        "batched token-id prompts: expected choices indexed 0..1, got indices [0]",
    ]


async def test_a_rejected_token_id_prompt_is_a_reason() -> None:
    async with mock_client(lambda request: httpx.Response(400, text="prompt must be a string")) as client:
        result = await probe_token_id_prompts("http://v", "m", [1], client=client)
    assert not result.ok
    assert result.reasons[0].startswith("token-id prompt rejected: POST http://v/v1/completions answered 400")
