"""Start-up capability probe for a draft/target pair (../shared/reference/speculative-decoding.md §2.0,
§2.6, §5.1): the gateway only speculates when both sides agree on token ids, because the committed
sequence is target ids sent verbatim to the draft.

- `probe_pair` checks tokenizer parity (identical ids on `PROBE_TEXTS`: whitespace, code, unicode,
  special-token strings) and BOS/EOS handling (which ids each side adds around a text when asked
  for special tokens).
- `probe_token_id_prompts` checks that a vLLM-compatible target takes token-id prompts, alone and
  batched, and answers with "token_id:<id>" tokens (what `VllmTokenTarget` reads).

Neither raises: every failure (HTTP, a body of the wrong shape, a tokenizer that throws) becomes a
reason in the result, so a pair that fails runs plain decoding and the reasons say why.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx

# Named probe texts; a reason names the text that differed.
PROBE_TEXTS: dict[str, str] = {
    "english": "The quick brown fox jumps over the lazy dog.",
    "spaces": "  leading and trailing  spaces,   runs of   three  ",
    "newlines": "line one\nline two\n\n\nafter blank lines\r\nwindows line\n",
    "tabs": "\tcol1\tcol2\t\tcol4\t",
    "code": 'def f(x):\n    if x > 0:\n        return {"a": [x, -1]}\n    return None  # done\n}\n',
    "cjk": "日本語のテキストと中文文本\uff0c한국어 텍스트。",
    "emoji": "emoji 🙂👍🏽 family 👨\u200d👩\u200d👧 flags 🇫🇷",
    "combining": "cafe\u0301 nai\u0308ve A\u030a e\u0301\u0301 Zalgo z\u0335\u0321a\u0336",
    "special": "<|im_start|>user\nhi<|im_end|>\n<|endoftext|>",
    "numbers": "3.14159 1,000,000 0x1F 2026-11-26",
}

# The text whose special-token wrapping (BOS and EOS) is compared between the sides.
BOS_PROBE_TEXT = "Hello world"


class TokenizerError(Exception):
    """A tokenizer backend could not answer (transport, status, or a body of the wrong shape)."""


class Tokenizer(Protocol):
    """One side's tokenizer: text to ids, with or without the special tokens it adds (BOS/EOS)."""

    name: str

    async def tokenize(self, text: str, *, add_special: bool) -> list[int]:
        """The ids of `text`; special-token strings in it are parsed as special tokens."""
        ...


def _token_list(body: Any, where: str) -> list[int]:
    tokens = body.get("tokens") if isinstance(body, dict) else None
    if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
        raise TokenizerError(f"{where} answered no integer 'tokens' list: {str(body)[:200]}")
    return tokens


async def _post_json(client: httpx.AsyncClient | None, url: str, body: dict[str, Any], timeout_s: float) -> Any:
    """POST `body`, return the decoded JSON of a 200 answer; anything else raises `TokenizerError`."""
    try:
        if client is None:
            async with httpx.AsyncClient(timeout=timeout_s) as own:
                response = await own.post(url, json=body)
        else:
            response = await client.post(url, json=body, timeout=timeout_s)
    except httpx.HTTPError as err:
        raise TokenizerError(f"POST {url} failed: {type(err).__name__}: {err}") from err
    if response.status_code != 200:
        raise TokenizerError(f"POST {url} answered {response.status_code}: {response.text[:200]}")
    try:
        return response.json()
    except ValueError as err:
        raise TokenizerError(f"POST {url} answered non-JSON: {response.text[:200]}") from err


class LlamaCppTokenizer:
    """llama.cpp server's POST /tokenize {"content", "add_special", "parse_special"} -> {"tokens"}.

    `parse_special=False` reads special-token strings as plain text (llama.cpp's choice per call;
    vLLM/HF always parse them), which is how a misconfigured side looks to the probe.
    """

    def __init__(self, base_url: str, *, client: httpx.AsyncClient | None = None, timeout_s: float = 10.0,
                 name: str = "llama.cpp", parse_special: bool = True) -> None:
        self.url = base_url.rstrip("/") + "/tokenize"
        self.client = client
        self.timeout_s = timeout_s
        self.name = name
        self.parse_special = parse_special

    async def tokenize(self, text: str, *, add_special: bool) -> list[int]:
        body = {"content": text, "add_special": add_special, "parse_special": self.parse_special}
        return _token_list(await _post_json(self.client, self.url, body, self.timeout_s), self.url)


class VllmTokenizer:
    """vLLM's POST /tokenize {"model", "prompt", "add_special_tokens"} -> {"tokens", "count", ...}."""

    def __init__(self, base_url: str, model: str, *, client: httpx.AsyncClient | None = None,
                 timeout_s: float = 10.0, name: str = "vllm") -> None:
        self.url = base_url.rstrip("/") + "/tokenize"
        self.model = model
        self.client = client
        self.timeout_s = timeout_s
        self.name = name

    async def tokenize(self, text: str, *, add_special: bool) -> list[int]:
        body = {"model": self.model, "prompt": text, "add_special_tokens": add_special}
        return _token_list(await _post_json(self.client, self.url, body, self.timeout_s), self.url)


@dataclass(frozen=True)
class SpecialIds:
    """The ids a tokenizer adds around a text when asked for special tokens (BOS before, EOS after)."""

    prefix: list[int]
    suffix: list[int]


@dataclass
class ProbeResult:
    """`ok` when no check failed; `reasons` says why otherwise (one line per failed check).

    `draft_special` / `target_special` are the ids each side adds (None when that could not be
    measured); `timings_ms` holds each side's summed call time ("draft", "target"; calls overlap, so
    these can exceed the wall time) and the probe's wall time ("total").
    """

    ok: bool
    reasons: list[str] = field(default_factory=list)
    draft_special: SpecialIds | None = None
    target_special: SpecialIds | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)


def first_difference(a: Sequence[int], b: Sequence[int]) -> int | None:
    """The first index where the id lists differ (a length difference counts), or None if equal."""
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def _at(ids: Sequence[int], i: int) -> str:
    return str(ids[i]) if i < len(ids) else "(end)"


def _added_ids(with_special: list[int], plain: list[int]) -> SpecialIds | None:
    """What wrapping `plain` gives `with_special` (None if `plain` is not a contiguous part of it)."""
    n = len(plain)
    for start in range(len(with_special) - n + 1):
        if with_special[start : start + n] == plain:
            return SpecialIds(with_special[:start], with_special[start + n :])
    return None


def _describe(ids: Sequence[int]) -> str:
    return "none" if not ids else " ".join(str(i) for i in ids)


class _Timed:
    """Runs one side's calls, adding their wall time to that side's total; errors become reasons."""

    def __init__(self, role: str, tokenizer: Tokenizer) -> None:
        self.role = role
        self.tokenizer = tokenizer
        self.elapsed_ms = 0.0

    async def tokenize(self, text: str, add_special: bool) -> list[int] | str:
        started = time.perf_counter()
        try:
            return await self.tokenizer.tokenize(text, add_special=add_special)
        except Exception as err:  # a probe reports, never raises: any failure disables speculation
            return f"{self.role} tokenizer ({getattr(self.tokenizer, 'name', '?')}) failed: {type(err).__name__}: {err}"
        finally:
            self.elapsed_ms += (time.perf_counter() - started) * 1000


async def probe_pair(
    draft: Tokenizer,
    target: Tokenizer,
    texts: dict[str, str] | None = None,
    *,
    bos_text: str = BOS_PROBE_TEXT,
) -> ProbeResult:
    """Tokenizer parity on `texts` (default `PROBE_TEXTS`, without special tokens added) and the
    special ids each side adds around `bos_text`. Never raises; a failed call is a reason."""
    texts = PROBE_TEXTS if texts is None else texts
    sides = _Timed("draft", draft), _Timed("target", target)
    started = time.perf_counter()
    reasons: list[str] = []
    failures: set[str] = set()  # one line per failing side and message, not one per text

    def failed(answer: list[int] | str) -> bool:
        if isinstance(answer, str):
            if answer not in failures:
                failures.add(answer)
                reasons.append(answer)
            return True
        return False

    async def both(text: str, add_special: bool) -> tuple[list[int] | str, list[int] | str]:
        d, t = await asyncio.gather(sides[0].tokenize(text, add_special), sides[1].tokenize(text, add_special))
        return d, t

    # Special tokens: compare the wrapping each side adds, not whole lists, so the report says "BOS".
    specials: list[SpecialIds | None] = [None, None]
    (d_plain, t_plain), (d_special, t_special) = await asyncio.gather(both(bos_text, False), both(bos_text, True))
    for k, (plain, special) in enumerate(((d_plain, d_special), (t_plain, t_special))):
        if failed(plain) or failed(special):
            continue
        assert isinstance(plain, list) and isinstance(special, list)
        added = _added_ids(special, plain)
        if added is None:
            reasons.append(f"{sides[k].role} tokenizes {bos_text!r} differently with special tokens: "
                           f"{_describe(special)} vs {_describe(plain)} without")
        specials[k] = added
    d_added, t_added = specials
    if d_added is not None and t_added is not None:
        if d_added.prefix != t_added.prefix:
            reasons.append(f"BOS differs: draft adds {_describe(d_added.prefix)}, "
                           f"target adds {_describe(t_added.prefix)}")
        if d_added.suffix != t_added.suffix:
            reasons.append(f"EOS differs: draft adds {_describe(d_added.suffix)}, "
                           f"target adds {_describe(t_added.suffix)}")

    answers = await asyncio.gather(*(both(text, False) for text in texts.values()))
    for name, (d_ids, t_ids) in zip(texts, answers, strict=True):
        if failed(d_ids) | failed(t_ids):
            continue
        assert isinstance(d_ids, list) and isinstance(t_ids, list)
        i = first_difference(d_ids, t_ids)
        if i is not None:
            reasons.append(f"tokenizer mismatch on {name!r}: first difference at id {i}: "
                           f"draft {_at(d_ids, i)} vs target {_at(t_ids, i)} "
                           f"({len(d_ids)} vs {len(t_ids)} ids)")

    timings = {"draft": sides[0].elapsed_ms, "target": sides[1].elapsed_ms,
               "total": (time.perf_counter() - started) * 1000}
    return ProbeResult(ok=not reasons, reasons=reasons, draft_special=d_added, target_special=t_added,
                       timings_ms=timings)


async def probe_token_id_prompts(
    base_url: str,
    model: str,
    prompt_ids: Sequence[int],
    *,
    client: httpx.AsyncClient | None = None,
    timeout_s: float = 60.0,
) -> ProbeResult:
    """Whether a vLLM-compatible target answers /v1/completions with a token-id prompt, alone and as
    a batch of two (what `VllmTokenTarget.verify` sends), with max_tokens 1: 200, one choice per
    prompt, and a "token_id:<id>" token in each. `prompt_ids` must be valid ids in the target's
    vocabulary (e.g. the target tokenizer's ids for a short text). Never raises."""
    url = base_url.rstrip("/") + "/v1/completions"
    ids = list(prompt_ids)
    started = time.perf_counter()
    reasons: list[str] = []
    if not ids:
        reasons.append("token-id prompt probe needs at least one prompt id")
    else:
        checks = (("token-id prompt", ids, 1), ("batched token-id prompts", [ids, ids[:-1] or ids], 2))
        for label, prompt, expected in checks:
            body = {"model": model, "prompt": prompt, "max_tokens": 1, "temperature": 0, "logprobs": 1,
                    "return_tokens_as_token_ids": True}
            try:
                answer = await _post_json(client, url, body, timeout_s)
            except TokenizerError as err:
                reasons.append(f"{label} rejected: {err}")
                continue
            reason = _completion_problem(answer, expected)
            if reason is not None:
                reasons.append(f"{label}: {reason}")
    return ProbeResult(ok=not reasons, reasons=reasons, timings_ms={"total": (time.perf_counter() - started) * 1000})


def _completion_problem(answer: Any, expected: int) -> str | None:
    choices = answer.get("choices") if isinstance(answer, dict) else None
    if not isinstance(choices, list) or not choices:
        return f"answer has no choices: {str(answer)[:200]}"
    indices = sorted(c.get("index", -1) if isinstance(c, dict) else -1 for c in choices)
    if indices != list(range(expected)):
        return f"expected choices indexed 0..{expected - 1}, got indices {indices}"
    for choice in choices:
        logprobs = choice.get("logprobs")
        tokens = logprobs.get("tokens") if isinstance(logprobs, dict) else None
        if not isinstance(tokens, list) or not tokens:
            return f"choice {choice['index']} has no logprobs tokens"
        if not isinstance(tokens[0], str) or not tokens[0].startswith("token_id:"):
            return f"choice {choice['index']} token {tokens[0]!r} is not 'token_id:<id>'"
    return None
