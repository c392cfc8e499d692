"""A llama.cpp server (llama-server) as a speculative-decoding `Target`, over its native /completion route
with token-id prompts (../shared/reference/speculative-decoding.md §2.4: parallel-slot verification).

llama.cpp has no prompt logprobs and no batched-prompt verify, so `verify` sends the k+1 prefixes
committed + draft[:j] as k+1 concurrent single-token completions, prefix j pinned to slot first_slot + j.
Each answer is the server's own greedy pick after that prefix (the same sampler target-alone decoding
runs), so no score table is read. Pinning matters: slot j's KV cache then holds last round's
committed + draft[:j], which shares everything up to the last accepted token with this round's
prefix j, so each request re-evaluates only a few tokens (`cache_prompt`).

Measured on llama-server (xllamacpp 2026.10.11549, SmolLM2-135M-Instruct Q4_1), which the parsing relies on:
- `return_tokens: true` puts the generated ids in `tokens`, in the final answer and in every
  streamed chunk; the end token is included (<|im_end|>, id 2, is `tokens[-1]` when the answer
  stops on it) while `content` leaves it out (its text is "").
- A generation that ends on an end-of-generation token answers `stop_type: "eos"` (also with
  n_predict=1); one cut by n_predict answers "limit".
- A stream is `data: {...}` lines, one per token (`stop: false`), then one final chunk with
  `stop: true`, `tokens: []` and the `stop_type`. There is no `[DONE]`.
- Errors before the first byte are JSON `{"error": {"code", "message", "type"}}` with the status
  (400 for an empty prompt, invalid token ids, a prompt longer than the slot's context).
- The server's default sampler settings are neutral for greedy (repeat_penalty 1.0, DRY and XTC
  off) but a server may be started with others, so every request sets them explicitly.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any, NamedTuple

import aiohttp
import msgspec

from gateway.speculative.interfaces import TargetFailed, Verification
from gateway.speculative.pooled_http import SessionClient, send

# Greedy, with every sampler that could move the pick neutralised whatever the server's defaults are:
# top_k=1 keeps only the highest logit, temperature 0 is llama.cpp's own greedy, and the explicit
# sampler chain leaves penalties, DRY, XTC, typical/top-p/min-p and top-n-sigma out altogether.
GREEDY_SAMPLING: dict[str, Any] = {
    "temperature": 0.0,
    "top_k": 1,
    "top_p": 1.0,
    "min_p": 0.0,
    "typical_p": 1.0,
    "top_n_sigma": -1.0,
    "repeat_penalty": 1.0,
    "presence_penalty": 0.0,
    "frequency_penalty": 0.0,
    "dry_multiplier": 0.0,
    "xtc_probability": 0.0,
    "mirostat": 0,
    "samplers": ["top_k", "temperature"],
    "ignore_eos": False,
    "n_probs": 0,
}


class LlamaCppWireError(Exception):
    """A /completion answer that cannot be read (status, body, shape); the caller maps it to its own
    failure type (`TargetFailed` for a target, `DraftFailed` for a drafter)."""


def error_detail(body: bytes) -> str:
    """The message of a llama.cpp error body (`{"error": {"message": ...}}`), else its first bytes."""
    try:
        decoded = msgspec.json.decode(body)
    except msgspec.DecodeError:
        decoded = None
    error = decoded.get("error") if isinstance(decoded, dict) else None
    message = error.get("message") if isinstance(error, dict) else error
    return str(message) if message else body[:200].decode("utf-8", "replace")


def token_list(value: object, where: str) -> list[int]:
    """`value` as a list of token ids (raises `LlamaCppWireError` for anything else)."""
    if not isinstance(value, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        raise LlamaCppWireError(f"{where} carries no integer 'tokens' list (is return_tokens supported?)")
    return value


class CompletionAnswer(NamedTuple):
    """What a non-streamed /completion answered: the generated ids, why it stopped ("eos", "limit",
    "word", or None when not said) and how many prompt tokens it evaluated (`timings.prompt_n`: the
    part of the prompt its slot's cache did not hold; None when not reported)."""

    tokens: list[int]
    stop_type: str | None
    evaluated: int | None


def parse_completion(status: int, content: bytes, where: str) -> CompletionAnswer:
    """A non-streamed /completion answer (raises `LlamaCppWireError` for a failure or a bad shape)."""
    if status != 200:
        raise LlamaCppWireError(f"{where} answered {status}: {error_detail(content)}")
    try:
        body = msgspec.json.decode(content)
    except msgspec.DecodeError as err:
        raise LlamaCppWireError(f"{where} answer is not JSON: {err}") from err
    if not isinstance(body, dict):
        raise LlamaCppWireError(f"{where} answer is not an object")
    if "error" in body:
        raise LlamaCppWireError(f"{where} failed: {error_detail(content)}")
    stop_type = body.get("stop_type")
    timings = body.get("timings")
    evaluated = timings.get("prompt_n") if isinstance(timings, dict) else None
    return CompletionAnswer(
        token_list(body.get("tokens"), f"{where} answer"),
        stop_type if isinstance(stop_type, str) else None,
        evaluated if isinstance(evaluated, int) and not isinstance(evaluated, bool) else None,
    )


async def post_completion(session: aiohttp.ClientSession, url: str, body: dict[str, Any],
                          where: str) -> CompletionAnswer:
    """POST one non-streamed /completion; transport failures become `LlamaCppWireError` too."""
    try:
        async with await send(session, "POST", url, body) as response:
            content = await response.read()
            status = response.status
    except (TimeoutError, aiohttp.ClientError) as err:
        raise LlamaCppWireError(f"{where} failed: {type(err).__name__}: {err}") from err
    return parse_completion(status, content, where)


async def _first_failure(calls: Sequence[Awaitable[CompletionAnswer]]) -> list[CompletionAnswer]:
    """Run `calls` concurrently; the first failure cancels the rest (their slots are needed by the
    next round, and a failed verify has no use for them) and is raised as it is."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:  # in prefix order, so the reason names the first failing prefix
            error = task.exception() if task.done() else None
            if error is not None:
                raise error
        return [task.result() for task in tasks]
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class LlamaCppSlotTarget(SessionClient):
    """`Target` over llama-server's /completion with token-id prompts (§2.4 parallel-slot verification).

    `base_url`: the server's root. `slots`: how many slots this target may use, from `first_slot`
    on (default, and upper bound: the server's `total_slots` from GET /props, read once on the
    first call, less `first_slot`); a
    verify never needs more, so it checks at most `max_draft` = slots - 1 drafts and a longer draft
    is verified up to there (exact: the rest is unknown, `accept_round` stops at it). Give each
    decoder that runs at the same time its own slot range: two verifies on the same slots queue
    behind each other and evict each other's caches. `generate` streams on `first_slot`, so the
    next verify's prefix 0 finds its tokens cached.

    `eos_ids` starts with the server's `eos_token` (from /props, when it tokenizes to one id) and
    grows with every token an answer stopped on (`stop_type: "eos"`), so other end-of-generation
    tokens (<|endoftext|> and the like) are learned the first time the target emits one.

    `session` may be shared (it is then not closed by `aclose`), else one is made on first use.
    Every failure (transport, timeout, HTTP status, a body that does not parse, an answer without
    `tokens`, a stream that ends without its final chunk) raises `TargetFailed` with the reason.
    """

    name = "llama.cpp"

    def __init__(
        self,
        base_url: str,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = 60.0,
        slots: int | None = None,
        first_slot: int = 0,
    ) -> None:
        if first_slot < 0:
            raise ValueError(f"first_slot must be >= 0, got {first_slot}")
        if slots is not None and slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self.base_url = base_url.rstrip("/")
        self.url = self.base_url + "/completion"
        super().__init__(session, timeout_s)
        self.first_slot = first_slot
        self.slots = slots
        self.eos_ids: set[int] = set()
        # Verify requests sent, and the prompt tokens the server evaluated for them (`prompt_n`): few
        # per request when slot pinning lets each one reuse its slot's cache. For metrics and tests.
        self.verify_requests = 0
        self.verify_evaluated = 0
        self._props_read = False
        self._props_lock: asyncio.Lock | None = None

    @property
    def max_draft(self) -> int | None:
        """The most drafts one verify checks (slots - 1), or None until the slot count is known
        (`slots` given, or after `load_props` / the first call)."""
        return None if self.slots is None else self.slots - 1


    async def load_props(self) -> None:
        """Read GET /props once: `total_slots` (when `slots` was not given) and the `eos_token`.

        Raises `TargetFailed` only when the slot count is needed and cannot be read; an unreadable
        `eos_token` just leaves `eos_ids` to be learned from answers.
        """
        if self._props_read:
            return
        if self._props_lock is None:
            self._props_lock = asyncio.Lock()
        async with self._props_lock:
            if self._props_read:
                return
            props = await self._get_props()
            total = props.get("total_slots") if props is not None else None
            if isinstance(total, int) and not isinstance(total, bool) and total > self.first_slot:
                # A `slots` larger than the server has is cut: a verify must never wait for a slot
                # that does not exist (llama-server would run that prefix on another, busy one).
                self.slots = total - self.first_slot if self.slots is None else min(self.slots, total - self.first_slot)
            elif self.slots is None:
                if isinstance(total, int) and not isinstance(total, bool) and total >= 1:
                    raise TargetFailed(f"server has {total} slots, none from first_slot {self.first_slot}")
                raise TargetFailed(f"cannot read total_slots from {self.base_url}/props")
            eos_text = props.get("eos_token") if props is not None else None
            if isinstance(eos_text, str) and eos_text:
                await self._learn_eos_text(eos_text)
            self._props_read = True

    async def _get_props(self) -> dict[str, Any] | None:
        try:
            async with await send(self._client(), "GET", self.base_url + "/props") as response:
                content = await response.read()
                if response.status != 200:
                    if self.slots is None:
                        raise TargetFailed(f"GET /props answered {response.status}: {error_detail(content)}")
                    return None
        except (TimeoutError, aiohttp.ClientError) as err:
            if self.slots is None:
                raise TargetFailed(f"GET /props failed: {type(err).__name__}: {err}") from err
            return None  # only the eos seed is lost; the call that follows reports the server's state
        try:
            props = msgspec.json.decode(content)
        except msgspec.DecodeError as err:
            if self.slots is None:
                raise TargetFailed(f"GET /props answer is not JSON: {err}") from err
            return None
        return props if isinstance(props, dict) else None

    async def _learn_eos_text(self, text: str) -> None:
        # Best effort: the answers' stop_type teaches the same id later if this fails.
        body = {"content": text, "add_special": False, "parse_special": True}
        try:
            async with await send(self._client(), "POST", self.base_url + "/tokenize", body) as response:
                if response.status != 200:
                    return
                decoded = msgspec.json.decode(await response.read())
        except (TimeoutError, aiohttp.ClientError, msgspec.DecodeError):
            return
        tokens = decoded.get("tokens") if isinstance(decoded, dict) else None
        if isinstance(tokens, list) and len(tokens) == 1 and isinstance(tokens[0], int):
            self.eos_ids.add(tokens[0])

    def _body(self, prompt: list[int], n_predict: int, slot: int, *, stream: bool) -> dict[str, Any]:
        return {
            "prompt": prompt,
            "n_predict": n_predict,
            "return_tokens": True,
            "cache_prompt": True,
            "id_slot": slot,
            "stream": stream,
            **GREEDY_SAMPLING,
        }

    def _learn(self, tokens: list[int], stop_type: str | None) -> None:
        # The server includes the end token in `tokens`: the one it stopped on is the last.
        if stop_type == "eos" and tokens:
            self.eos_ids.add(tokens[-1])

    async def verify(self, committed: Sequence[int], draft: Sequence[int]) -> Verification:
        """k+1 concurrent one-token completions over committed + draft[:j], prefix j on slot first_slot + j."""
        await self.load_props()
        assert self.slots is not None  # load_props set it or raised
        base = list(committed)
        checked = min(len(draft), self.slots - 1)
        calls = [
            post_completion(self._client(), self.url, self._body(base + list(draft[:j]), 1, self.first_slot + j,
                                                                 stream=False), f"verify prefix {j}")
            for j in range(checked + 1)
        ]
        try:
            answers = await _first_failure(calls)
        except LlamaCppWireError as err:
            raise TargetFailed(str(err)) from err
        self.verify_requests += len(answers)
        picks: list[int | None] = []
        for tokens, stop_type, evaluated in answers:
            self.verify_evaluated += evaluated or 0
            self._learn(tokens, stop_type)
            if not tokens:
                break  # the server generated nothing there (context full): unknown from here on
            picks.append(tokens[0])
        return Verification(argmax=picks)

    async def generate(self, committed: Sequence[int], max_tokens: int) -> AsyncIterator[int]:
        """Plain greedy decoding on `first_slot`, yielding each id as its chunk arrives.

        A token whose chunk has no text (an end token, or part of a multi-byte character) is held
        until the next chunk: if that one is the final chunk and says the stream stopped on EOS, the
        id is added to `eos_ids` before it is yielded, so the decoder cuts right after it.
        """
        await self.load_props()
        body = self._body(list(committed), max_tokens, self.first_slot, stream=True)
        held: list[int] = []
        last: list[int] = []  # the last id yielded, for a stop chunk that names no token of its own
        yielded: list[int] = []
        try:
            response = await send(self._client(), "POST", self.url, body)
        except (TimeoutError, aiohttp.ClientError) as err:
            raise TargetFailed(f"generate call failed: {type(err).__name__}: {err}") from err
        try:
            async with response:
                if response.status != 200:
                    raise TargetFailed(
                        f"generate call answered {response.status}: {error_detail(await response.read())}")
                async for raw in response.content:
                    line = raw.decode("utf-8", "replace").strip()
                    if line.startswith("error:"):
                        raise TargetFailed(f"target stream failed: {line[6:].strip()[:200]}")
                    if not line.startswith("data:"):
                        continue
                    try:
                        chunk = msgspec.json.decode(line[5:].strip())
                    except msgspec.DecodeError as err:
                        raise TargetFailed(f"malformed stream chunk: {err}") from err
                    if not isinstance(chunk, dict):
                        raise TargetFailed("a stream chunk is not an object")
                    if "error" in chunk:
                        raise TargetFailed(f"target stream failed: {chunk['error']}")
                    try:
                        tokens = token_list(chunk.get("tokens"), "a stream chunk")
                    except LlamaCppWireError as err:
                        raise TargetFailed(str(err)) from err
                    if chunk.get("stop") is True:
                        stop_type = chunk.get("stop_type")
                        self._learn(last + held + tokens, stop_type if isinstance(stop_type, str) else None)
                        for token in (*held, *tokens):
                            yielded.append(token)
                            yield token
                        predicted = chunk.get("tokens_predicted")
                        if isinstance(predicted, int) and predicted > len(yielded) and stop_type != "eos":
                            # Measured: llama-server never streams the tokens of a character still
                            # incomplete when the generation stops (n_predict reached mid-character),
                            # not even in the final chunk, which still counts them.
                            async for token in self._withheld(committed, yielded, predicted - len(yielded)):
                                yield token
                        return
                    if held:
                        for token in held:
                            yielded.append(token)
                            yield token
                        last, held = held[-1:], []
                    if tokens and chunk.get("content") == "":
                        held = tokens
                    elif tokens:
                        for token in tokens:
                            yielded.append(token)
                            yield token
                        last = tokens[-1:]
        except (TimeoutError, aiohttp.ClientError) as err:
            raise TargetFailed(f"generate stream failed: {type(err).__name__}: {err}") from err
        finally:
            # The server hangs up after a stream: keep its connection out of the pool.
            response.close()
        # A stream that ends without its final `stop: true` chunk was cut: what came is real, the end is not.
        raise TargetFailed("generate stream ended without its final chunk")

    async def _withheld(self, committed: Sequence[int], streamed: list[int], missing: int) -> AsyncIterator[int]:
        """The `missing` tokens a stream generated but did not send: decoded again, unstreamed, on the same
        slot (its cache holds the prefix), which answers with every id."""
        body = self._body([*committed, *streamed], missing, self.first_slot, stream=False)
        try:
            answer = await post_completion(self._client(), self.url, body, "generate")
        except LlamaCppWireError as err:
            raise TargetFailed(str(err)) from err
        self._learn(answer.tokens, answer.stop_type)
        for token in answer.tokens[:missing]:
            yield token
