"""Per-event translation of TGI's streams into OpenAI chunks.

`/generate_stream` sends one `StreamResponse` per token and ends after the one carrying
`generated_text` (`generate_stream` in router/src/server.rs): no `[DONE]`. The Messages API
stream sends `chat.completion.chunk`s and ends with `data:[DONE]`.
"""

from __future__ import annotations

import msgspec

from gateway.errors import GatewayError, backend_failed
from plugins.tgi.errors import event_error
from plugins.tgi.openai_out import (
    DONE,
    ChatChunkChoiceOut,
    ChatChunkOut,
    ChatDeltaOut,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    new_id,
    now,
    sse,
)
from plugins.tgi.responses import tool_calls_out
from plugins.tgi.stop_sequences import StopTrimmer, openai_finish_reason
from plugins.tgi.wire import Usage, decode_chat_chunk, decode_stream_event


def _malformed(backend: str, payload: bytes, err: Exception) -> GatewayError:
    return backend_failed(backend, f"malformed stream event from TGI ({err}): {payload[:120]!r}")


class CompletionTranslator:
    """TGI `/generate_stream` events -> OpenAI `text_completion` chunks."""

    def __init__(self, backend: str, model: str, stops: list[str], *, include_usage: bool,
                 logprobs: int | None, echo_prompt: str | None, fingerprint: str | None = None) -> None:
        self.backend = backend
        self._fingerprint = fingerprint
        self.finished = False
        self.ended_by_done = False  # TGI's native stream has no [DONE]: the last token event ends it
        self._id = new_id("cmpl")
        self._created = now()
        self._model = model
        self._trimmer = StopTrimmer(stops)
        self._include_usage = include_usage
        self._logprobs = logprobs
        self._prefix = echo_prompt
        self._offset = len(echo_prompt or "")
        self._usage: Usage | None = None

    def _chunk(self, text: str, finish: str | None, logprobs: CompletionLogprobs | None) -> bytes:
        choice = CompletionChoice(index=0, text=text, logprobs=logprobs, finish_reason=finish)
        return sse(Completion(id=self._id, object="text_completion", created=self._created, model=self._model,
                              system_fingerprint=self._fingerprint, choices=[choice]))

    def event(self, payload: bytes) -> bytes:
        """The OpenAI chunk for one TGI event (b"" when there is nothing to send yet)."""
        try:
            event = decode_stream_event(payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as err:
            raise _malformed(self.backend, payload, err) from err
        if event.error is not None:
            raise event_error(self.backend, event.error, event.error_type, "completion")
        if event.token is None:
            raise backend_failed(self.backend, f"stream event without a token: {payload[:120]!r}")
        token = event.token
        text = self._trimmer.feed("" if token.special else token.text)
        finish: str | None = None
        if event.generated_text is not None:  # the last event
            self.finished = True
            details = event.details
            reason = details.finish_reason if details is not None else "eos_token"
            text += self._trimmer.finish(reason == "stop_sequence")
            finish = openai_finish_reason(reason)
            if details is not None:
                prompt = details.input_length or 0
                self._usage = Usage(prompt_tokens=prompt, completion_tokens=details.generated_tokens,
                                    total_tokens=prompt + details.generated_tokens)
        logprobs = None
        if self._logprobs is not None and text:
            tops = [{t.text: t.logprob for t in event.top_tokens if t.logprob is not None}] \
                if self._logprobs > 0 else None
            logprobs = CompletionLogprobs(tokens=[text], token_logprobs=[token.logprob], top_logprobs=tops,
                                          text_offset=[self._offset])
        self._offset += len(text)
        if self._prefix is not None:
            text, self._prefix = self._prefix + text, None
        if not text and finish is None:
            return b""
        return self._chunk(text, finish, logprobs)

    def tail(self) -> bytes:
        """What follows the last token: the usage chunk when asked for, then `[DONE]`."""
        if self._include_usage and self._usage is not None:
            usage = Completion(id=self._id, object="text_completion", created=self._created, model=self._model,
                               system_fingerprint=self._fingerprint, choices=[], usage=self._usage)
            return sse(usage) + DONE
        return DONE


class ChatTranslator:
    """TGI Messages API chunks -> OpenAI `chat.completion.chunk`s with OpenAI's finish reasons."""

    def __init__(self, backend: str, model: str, stops: list[str]) -> None:
        self.backend = backend
        self.finished = False
        self.ended_by_done = True
        self._id = new_id("chatcmpl")
        self._model = model
        self._trimmer = StopTrimmer(stops)
        self._tools = False

    def event(self, payload: bytes) -> bytes:
        try:
            chunk = decode_chat_chunk(payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as err:
            raise _malformed(self.backend, payload, err) from err
        if chunk.error is not None:
            raise event_error(self.backend, chunk.error, chunk.error_type, "chat")
        choices = []
        for choice in chunk.choices:
            delta = choice.delta
            tool_calls = tool_calls_out(delta.tool_calls)
            self._tools = self._tools or bool(tool_calls)
            content = self._trimmer.feed(delta.content) if delta.content is not None else None
            finish = choice.finish_reason
            if finish is not None:
                tail = self._trimmer.finish(finish == "stop_sequence")
                content = (content or "") + tail if content is not None or tail else content
                finish = "tool_calls" if self._tools else openai_finish_reason(finish)
            if not content and not tool_calls and finish is None and choice.logprobs is None and delta.role is None:
                continue
            choices.append(ChatChunkChoiceOut(
                index=choice.index, delta=ChatDeltaOut(role=delta.role, content=content, tool_calls=tool_calls),
                logprobs=choice.logprobs, finish_reason=finish))
        if not choices and chunk.usage is None:
            return b""
        return sse(ChatChunkOut(id=self._id, object="chat.completion.chunk", created=chunk.created or now(),
                                model=self._model, system_fingerprint=chunk.system_fingerprint, choices=choices,
                                usage=chunk.usage))

    def tail(self) -> bytes:
        return DONE
