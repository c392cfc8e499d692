"""Continuing a stream that failed mid-way on another backend, so the client sees one stream.

Three parts, used only on routes with `resume: true`:

- `StreamProgress` reads every batch of events the client was sent and keeps what a
  continuation needs: the first chunk's `id`, `created`, `model` and `system_fingerprint`,
  and per choice the text sent, whether the role went out, the finish reason, and how many
  content events there were (about one per output token).
- `continuation_request` builds the request that picks the generation up on another
  backend: for chat, the original messages plus an assistant message holding the text
  already sent, which the server continues instead of starting a new turn (an assistant
  prefill, `Capabilities.assistant_prefill`; vLLM also needs `continue_final_message`); for
  text completions, the prompt with the text already sent appended. The output budget
  (`max_tokens`, `max_completion_tokens`) shrinks by what was sent.
- `ResumedStreamRewriter` makes the continuing backend's events look like the rest of the
  first stream: the same `id`, `created`, `model` and fingerprint, no second role chunk, and
  usage counted over the whole answer.

Limits, documented rather than hidden:

- A continuation is a new generation conditioned on the text so far, not the output the
  first backend would have produced. With sampling (temperature > 0) it is one plausible
  ending among many. Greedy decoding (temperature 0) of the same model continues with the
  same text when both servers tokenize the prompt and the prefill alike and compute the
  same logits, which is likely but not promised: a cut inside a word, or a token boundary
  that the re-tokenized prefill does not reproduce, can change the next token.
- Trailing whitespace is where a prefill goes wrong: TGI trims it from the rendered prompt,
  and where it is kept the prompt ends on a whitespace token the model would rarely have
  produced there (tokens usually carry their leading space), which derails the next token
  (seen on llama.cpp). The gateway therefore sends the prefill without trailing whitespace
  and drops that whitespace from the start of the continuation when the model produces it
  again, so the client never sees it twice.
- One choice only (`n` > 1 is not resumed: the choices would have to be continued one
  request each and interleaved), no tool calls or reasoning text (neither has a prefill
  form servers agree on), no chat request that already ends with an assistant message
  (whether the first server continued it depends on that server), and for completions a
  single text prompt without `echo`.
- A stop string that straddles the cut is not seen by the continuing server; the usage
  of a resumed stream is an estimate (content events are counted as tokens).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec

from gateway.backend import Backend
from gateway.schemas import RequestKind

_DONE = b"[DONE]"
_BUDGET_FIELDS = ("max_tokens", "max_completion_tokens")


class _Delta(msgspec.Struct):
    """The parts of a chat delta the gateway reads; everything else is skipped by the decoder."""

    role: str | None = None
    content: str | None = None
    tool_calls: Any = None
    function_call: Any = None
    reasoning_content: str | None = None
    reasoning: str | None = None


class _Choice(msgspec.Struct):
    index: int = 0
    delta: _Delta | None = None
    text: str | None = None  # text_completion chunks
    finish_reason: str | None = None


class _Chunk(msgspec.Struct):
    id: str | None = None
    object: str | None = None
    created: int | float | None = None
    model: str | None = None
    system_fingerprint: str | None = None
    choices: list[_Choice] = msgspec.field(default_factory=list)


_decode_chunk = msgspec.json.Decoder(_Chunk).decode
_decode_any = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode


def _event_data(event: bytes) -> bytes | None:
    """The `data` of one SSE event (several data lines joined by newlines), or None if it has none."""
    lines = [line[5:] for line in event.split(b"\n") if line.startswith(b"data:")]
    if not lines:
        return None
    # The SSE spec strips one space after the colon; the JSON decoder does not mind the rest.
    return b"\n".join(line[1:] if line.startswith(b" ") else line for line in lines)


def _split_events(events: bytes) -> list[bytes]:
    """Whole events of a batch, each with its blank-line terminator."""
    pieces = events.split(b"\n\n")
    out = [piece + b"\n\n" for piece in pieces[:-1] if piece]
    if pieces[-1]:  # not expected (batches hold whole events), but never lose bytes
        out.append(pieces[-1])
    return out


def _held_back(kind: RequestKind, text: str) -> tuple[str, str]:
    """(prefill, whitespace held back): chat prefills go without trailing whitespace, which
    templates trim inconsistently; completion prompts are taken as they are."""
    if kind != "chat":
        return text, ""
    prefill = text.rstrip()
    return prefill, text[len(prefill):]


@dataclass(slots=True)
class ChoiceProgress:
    """What one choice of a stream has sent the client so far."""

    parts: list[str] = field(default_factory=list)
    role_sent: bool = False
    finish_reason: str | None = None
    content_events: int = 0  # events that carried text: about one per output token

    @property
    def text(self) -> str:
        """The text sent so far (chat `delta.content`, or completion `text`)."""
        if len(self.parts) > 1:
            self.parts[:] = ["".join(self.parts)]  # join once, not on every read
        return self.parts[0] if self.parts else ""


class StreamProgress:
    """Everything the client has been sent of one OpenAI stream, fed batch by batch.

    Feed it the bytes exactly as they went to the client, the events of a continuation
    (after `ResumedStreamRewriter`) included, so a second failure can be resumed too.
    Batches must hold whole events, as the gateway's streams always do.
    """

    __slots__ = ("choices", "created", "done", "id", "model", "object", "system_fingerprint", "unsupported")

    def __init__(self) -> None:
        self.id: str | None = None
        self.object: str | None = None
        self.created: int | float | None = None
        self.model: str | None = None
        self.system_fingerprint: str | None = None
        self.choices: dict[int, ChoiceProgress] = {}
        self.done = False  # `data: [DONE]` went out
        # Why this stream cannot be continued (tool calls, reasoning, an unreadable event), or None.
        self.unsupported: str | None = None

    @property
    def content_events(self) -> int:
        """Content events over all choices: the estimate of output tokens already sent."""
        return sum(c.content_events for c in self.choices.values())

    @property
    def finished(self) -> bool:
        """Every choice has its finish reason: nothing is left to generate."""
        return bool(self.choices) and all(c.finish_reason is not None for c in self.choices.values())

    def feed(self, events: bytes) -> None:
        """Take one batch of whole SSE events sent to the client."""
        for event in events.split(b"\n\n"):
            # The usual event is one `data: ` line: no need to look at it line by line.
            data = event[6:] if event.startswith(b"data: ") and b"\n" not in event else _event_data(event)
            if data is None:
                continue  # a comment (keep-alive) or the empty tail after the last event
            if data.strip() == _DONE:
                self.done = True
                continue
            try:
                chunk = _decode_chunk(data)
            except (msgspec.DecodeError, msgspec.ValidationError) as err:
                # Text this parser cannot read may have reached the client: continuing
                # without it would repeat or lose part of the answer.
                self.unsupported = f"unreadable stream event ({err})"
                continue
            self._take(chunk)

    def _take(self, chunk: _Chunk) -> None:
        if self.id is None and chunk.id is not None:
            self.id = chunk.id
        if self.object is None and chunk.object is not None:
            self.object = chunk.object
        if self.created is None and chunk.created is not None:
            self.created = chunk.created
        if self.model is None and chunk.model is not None:
            self.model = chunk.model
        if self.system_fingerprint is None and chunk.system_fingerprint is not None:
            self.system_fingerprint = chunk.system_fingerprint
        for choice in chunk.choices:
            state = self.choices.get(choice.index)
            if state is None:
                state = self.choices[choice.index] = ChoiceProgress()
            delta = choice.delta
            text = choice.text
            if delta is not None:
                if delta.role is not None:
                    state.role_sent = True
                if delta.tool_calls or delta.function_call:
                    self.unsupported = "the stream has tool calls"
                if delta.reasoning_content or delta.reasoning:
                    self.unsupported = "the stream has reasoning text"
                text = delta.content
            if text:
                state.parts.append(text)
                state.content_events += 1
            if choice.finish_reason is not None:
                state.finish_reason = choice.finish_reason


def _reduce_budget(request: dict[str, Any], used: int) -> bool:
    """Take `used` tokens off every output limit the request sets; False when one is spent."""
    for key in _BUDGET_FIELDS:
        limit = request.get(key)
        if isinstance(limit, int) and not isinstance(limit, bool):
            if limit - used <= 0:
                return False
            request[key] = limit - used
    return True


def _chat_continuation(request: dict[str, Any], body: dict[str, Any], prefill: str, backend: Backend) -> bool:
    """Add the assistant prefill to `request`; False when `backend` cannot continue it."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return False
    last = messages[-1]
    if isinstance(last, dict) and last.get("role") == "assistant":
        return False  # the client's own prefill: whether the first server continued it is unknown
    request.pop("echo", None)  # vLLM's chat `echo` would send the prefill to the client again
    if not prefill:
        return True  # nothing but the role (or whitespace) went out: start the answer afresh
    if not backend.capabilities.assistant_prefill:
        return False
    request["messages"] = [*messages, {"role": "assistant", "content": prefill}]
    if "continue_final_message" in backend.supported_params("chat"):
        # vLLM's spelling of a prefill: without it, a trailing assistant message gets a new
        # turn after it, and the two flags are refused together.
        request["continue_final_message"] = True
        request["add_generation_prompt"] = False
    return True


def _completion_continuation(request: dict[str, Any], body: dict[str, Any], text: str) -> bool:
    """Append the text sent to the prompt of `request`; False for prompts that cannot take it."""
    if body.get("echo"):
        return False  # the text sent starts with the echoed prompt; not worth untangling
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        request["prompt"] = prompt + text
        return True
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        request["prompt"] = [prompt[0] + text]
        return True
    return False  # token ids or several prompts


def continuation_request(
    kind: RequestKind, body: dict[str, Any], progress: StreamProgress, backend: Backend
) -> dict[str, Any] | None:
    """The request that continues `progress` on `backend`, or None when it cannot be continued.

    `body` is the client's request (left untouched); the answer is a new dict to send with the
    same streaming call. None when: the kind is not chat or completion; the stream finished,
    sent `[DONE]`, or has tool calls, reasoning text or an unreadable event; the request asks
    for several choices (`n` > 1 is not supported: each choice would need its own request);
    the output budget is already spent; or `backend` cannot continue this request (a chat
    prefill on a server that starts a new turn instead, a completion prompt of token ids).
    When nothing but the role was sent, the request is the original one and any backend
    serving the kind will do. Logprobs requests are continued like any other.
    """
    if kind not in ("chat", "completion"):
        return None
    if progress.unsupported is not None or progress.done or progress.finished:
        return None
    n = body.get("n")
    if (n is not None and n != 1) or any(index != 0 for index in progress.choices):
        return None
    capabilities = backend.capabilities
    if not (capabilities.chat if kind == "chat" else capabilities.completion):
        return None
    choice = progress.choices.get(0)
    request = dict(body)
    if not _reduce_budget(request, choice.content_events if choice is not None else 0):
        return None
    text = choice.text if choice is not None else ""
    if kind == "chat":
        prefill, _ = _held_back(kind, text)
        return request if _chat_continuation(request, body, prefill, backend) else None
    if not text:
        return request
    return request if _completion_continuation(request, body, text) else None


class ResumedStreamRewriter:
    """Rewrites a continuing backend's events into the first stream's: returns whole events.

    Build it from the progress at the moment of the switch (with the request's kind); it
    keeps what it needs, so feeding the progress afterwards does not change it. Each event
    gets the first stream's `id`, `created`, `model` and `system_fingerprint` (the client's
    model name is still applied afterwards by `ModelRenamer`, as for any stream); a role-only
    opening chunk is dropped, as the client already has the role; whitespace held back from a
    chat prefill is not sent twice; a usage chunk counts the tokens sent before the switch as
    completion tokens; `data: [DONE]`, comments and anything unreadable pass unchanged.
    """

    __slots__ = ("_created", "_fingerprint", "_id", "_model", "_pending", "_sent_tokens")

    def __init__(self, kind: RequestKind, progress: StreamProgress) -> None:
        self._id = progress.id
        self._created = progress.created
        self._model = progress.model
        self._fingerprint = progress.system_fingerprint
        choice = progress.choices.get(0)
        text = choice.text if choice is not None else ""
        # Whitespace the client already has but the prefill left out: the continuation is
        # likely to start with it again.
        self._pending = _held_back(kind, text)[1]
        self._sent_tokens = progress.content_events

    def rewrite(self, events: bytes) -> bytes:
        """The client's version of one batch of whole events (b"" when every event is dropped)."""
        return b"".join(self._event(event) for event in _split_events(events))

    def _event(self, event: bytes) -> bytes:
        data = _event_data(event)
        if data is None or data.strip() == _DONE:
            return event
        try:
            chunk = _decode_any(data)
        except msgspec.DecodeError:
            return event
        if not isinstance(chunk, dict):
            return event
        for key, value in (("id", self._id), ("created", self._created), ("model", self._model)):
            if value is not None and key in chunk:
                chunk[key] = value
        if self._fingerprint is not None and chunk.get("system_fingerprint") is not None:
            chunk["system_fingerprint"] = self._fingerprint
        usage = chunk.get("usage")
        if isinstance(usage, dict) and self._sent_tokens:
            self._count_sent(usage)
        choices = chunk.get("choices")
        if isinstance(choices, list) and choices:
            kept = [choice for choice in choices if not self._empty_after_edit(choice)]
            if not kept and not usage:
                return b""
            chunk["choices"] = kept
        return b"data: " + _encode(chunk) + b"\n\n"

    def _count_sent(self, usage: dict[str, Any]) -> None:
        """Usage as the client expects it: the prefill's tokens were output, not prompt."""
        completion, prompt = usage.get("completion_tokens"), usage.get("prompt_tokens")
        if isinstance(completion, int):
            usage["completion_tokens"] = completion + self._sent_tokens
        if isinstance(prompt, int):
            usage["prompt_tokens"] = max(prompt - self._sent_tokens, 0)

    def _empty_after_edit(self, choice: Any) -> bool:
        """Edit one choice in place (role, repeated whitespace); True when nothing is left to send."""
        if not isinstance(choice, dict):
            return False
        delta = choice.get("delta")
        if isinstance(delta, dict):
            delta.pop("role", None)
            content = delta.get("content")
            if isinstance(content, str) and self._pending:
                delta["content"] = self._unsent(content)
            carries = any(value for value in delta.values())
        else:
            text = choice.get("text")
            if isinstance(text, str) and self._pending:
                choice["text"] = self._unsent(text)
            carries = bool(choice.get("text"))
        return not carries and choice.get("finish_reason") is None and not choice.get("logprobs")

    def _unsent(self, text: str) -> str:
        """`text` less its start where that repeats held-back whitespace."""
        pending = self._pending
        same = 0
        while same < len(text) and same < len(pending) and text[same] == pending[same]:
            same += 1
        if same == len(text):
            self._pending = pending[same:]
            return ""
        self._pending = ""  # the continuation went its own way: stop comparing
        return text[same:]
