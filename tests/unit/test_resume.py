"""Resuming a failed stream: `StreamProgress`, `continuation_request`, `ResumedStreamRewriter`.

Progress is read from chunks recorded from the real vLLM and llama.cpp servers; requests are
built for the real plugin classes (so their `assistant_prefill` capability is what is tested).
Resuming on the emulators and on the real llama.cpp server: test_resume_servers.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from gateway.backend import Backend, BackendContext
from gateway.config import parse_config
from gateway.plugins import load_backend_registry
from gateway.routing.resume import ResumedStreamRewriter, StreamProgress, continuation_request

from .fakes import FakeUpstream

REPO = Path(__file__).resolve().parents[2]
DONE = b"data: [DONE]\n\n"
CHAT = {"model": "m", "messages": [{"role": "user", "content": "Say hello in five words."}], "max_tokens": 8,
        "temperature": 0, "stream": True}
COMPLETION = {"model": "m", "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0, "stream": True}


def recorded(plugin: str, name: str) -> bytes:
    """The raw SSE body of a stream recorded from the real server (plugins/<plugin>/fixtures)."""
    return json.loads((REPO / "plugins" / plugin / "fixtures" / name).read_text())["raw"].encode()


def events_of(raw: bytes) -> list[bytes]:
    return [event + b"\n\n" for event in raw.split(b"\n\n") if event]


def data_of(events: bytes) -> list[Any]:
    """The decoded `data` of each event (the string "[DONE]" for the end marker)."""
    out: list[Any] = []
    for event in events_of(events):
        payload = event.strip()[len(b"data:"):].strip()
        out.append("[DONE]" if payload == b"[DONE]" else msgspec.json.decode(payload))
    return out


def text_of(events: bytes) -> str:
    """The text a client reads from chat or completion chunks."""
    parts = []
    for chunk in data_of(events):
        for choice in chunk["choices"] if isinstance(chunk, dict) else ():
            delta = choice.get("delta")
            parts.append((delta.get("content") if delta is not None else choice.get("text")) or "")
    return "".join(parts)


def chat_chunk(content: str | None = None, *, role: str | None = None, finish: str | None = None,
               index: int = 0, chunk_id: str = "first-id", created: int = 100, model: str = "first-model",
               **extra: Any) -> bytes:
    delta: dict[str, Any] = {}
    if role is not None:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    delta.update(extra.pop("delta", {}))
    chunk = {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model,
             "choices": [{"index": index, "delta": delta, "finish_reason": finish}], **extra}
    return b"data: " + msgspec.json.encode(chunk) + b"\n\n"


def progress_of(*batches: bytes) -> StreamProgress:
    progress = StreamProgress()
    for batch in batches:
        progress.feed(batch)
    return progress


def plugin_backend(plugin: str, options: dict[str, Any] | None = None) -> Backend:
    """A real plugin's backend object (no server behind it: only its capabilities and params are read)."""
    registry = load_backend_registry()
    entry: dict[str, Any] = {"name": plugin, "plugin": plugin, "model": "m", "url": "http://127.0.0.1:9"}
    if options:
        entry["options"] = options
    config = parse_config({"backends": [entry], "routes": [{"model": "m", "backends": [plugin]}]}, env={},
                          validators=registry.validators())
    backend: Backend = registry.types[plugin](config.backends[0], BackendContext(upstream=FakeUpstream()))
    return backend


# -- StreamProgress over recorded streams ------------------------------------------------------


def test_progress_of_a_recorded_vllm_chat_stream() -> None:
    raw = recorded("vllm", "chat_stream.json")
    progress = progress_of(raw)
    assert (progress.id, progress.created, progress.model) == ("chatcmpl-831026d5051650d1", 1795638733, "smollm2-hf")
    assert progress.object == "chat.completion.chunk"
    assert progress.system_fingerprint == "vllm-0.32.0-00557c3d"  # only the usage chunk carries it
    choice = progress.choices[0]
    assert choice.text == "Hello, welcome to my little corner of"
    assert choice.role_sent and choice.finish_reason == "length"
    assert choice.content_events == progress.content_events == 8  # max_tokens 8, one event a token
    assert progress.done and progress.finished and progress.unsupported is None


def test_progress_of_a_recorded_llamacpp_chat_stream_event_by_event() -> None:
    raw = recorded("llamacpp", "chat_stream.json")
    whole = progress_of(raw)
    one_by_one = progress_of(*events_of(raw))
    for progress in (whole, one_by_one):
        assert progress.id == "chatcmpl-dBdLIa3WAtsvugi6t6x7bzc0hI9lGUCT"
        assert (progress.model, progress.system_fingerprint) == ("smollm2", "b0-unknown")
        assert progress.choices[0].text == text_of(raw)
        assert progress.content_events == 8
        assert progress.done and progress.finished
    assert whole.choices[0].text == one_by_one.choices[0].text


@pytest.mark.parametrize("plugin", ["vllm", "llamacpp"])
def test_progress_of_recorded_completion_streams(plugin: str) -> None:
    raw = recorded(plugin, "completion_stream.json")
    progress = progress_of(raw)
    assert progress.object == "text_completion"
    assert progress.choices[0].text == text_of(raw) == " Paris.\n\n"
    assert progress.content_events == 4
    assert progress.finished and progress.done


def test_progress_mid_stream_is_not_finished() -> None:
    events = events_of(recorded("vllm", "chat_stream.json"))
    progress = progress_of(b"".join(events[:4]))  # role, "Hello", ",", " welcome"
    assert progress.choices[0].text == "Hello, welcome"
    assert progress.content_events == 3
    assert not progress.finished and not progress.done


def test_progress_marks_what_cannot_be_continued() -> None:
    tool = chat_chunk(delta={"tool_calls": [{"index": 0, "id": "call_1", "function": {"name": "f"}}]})
    assert progress_of(chat_chunk(role="assistant"), tool).unsupported == "the stream has tool calls"
    reasoning = chat_chunk(delta={"reasoning_content": "thinking..."})
    assert progress_of(reasoning).unsupported == "the stream has reasoning text"
    broken = progress_of(b"data: {not json\n\n")
    assert broken.unsupported is not None and broken.unsupported.startswith("unreadable stream event")
    # Comments (keep-alives) and empty reasoning fields are nothing to worry about.
    fine = progress_of(b": keep-alive\n\n", chat_chunk("Hi", delta={"reasoning_content": None}))
    assert fine.unsupported is None and fine.choices[0].text == "Hi"


# -- continuation_request ------------------------------------------------------------------------


def test_vllm_chat_continues_with_continue_final_message() -> None:
    events = events_of(recorded("vllm", "chat_stream.json"))
    progress = progress_of(b"".join(events[:4]))
    body = {**CHAT, "echo": False}
    request = continuation_request("chat", body, progress, plugin_backend("vllm"))
    assert request is not None
    assert request["messages"] == [*CHAT["messages"], {"role": "assistant", "content": "Hello, welcome"}]
    assert request["continue_final_message"] is True and request["add_generation_prompt"] is False
    assert "echo" not in request  # vLLM's chat echo would send the prefill to the client again
    assert request["max_tokens"] == 8 - 3
    assert body == {**CHAT, "echo": False}  # the client's request is left alone


def test_llamacpp_chat_continues_with_a_plain_prefill() -> None:
    progress = progress_of(chat_chunk(role="assistant"), chat_chunk("Hello"), chat_chunk(","))
    request = continuation_request("chat", CHAT, progress, plugin_backend("llamacpp"))
    assert request is not None
    assert request["messages"][-1] == {"role": "assistant", "content": "Hello,"}
    assert "continue_final_message" not in request and "add_generation_prompt" not in request
    assert request["max_tokens"] == 6


@pytest.mark.parametrize("plugin", ["tgi", "ollama"])
def test_other_prefill_servers_get_the_assistant_message(plugin: str) -> None:
    progress = progress_of(chat_chunk("Hello"), chat_chunk(" there"))
    request = continuation_request("chat", CHAT, progress, plugin_backend(plugin))
    assert request is not None and request["messages"][-1] == {"role": "assistant", "content": "Hello there"}


@pytest.mark.parametrize("plugin", ["openai_compat", "tensorrt_llm"])
def test_a_server_without_prefill_cannot_continue_a_chat(plugin: str) -> None:
    backend = plugin_backend(plugin)
    assert backend.capabilities.assistant_prefill is False
    progress = progress_of(chat_chunk(role="assistant"), chat_chunk("Hello"))
    assert continuation_request("chat", CHAT, progress, backend) is None
    # Nothing but the role went out: any backend can start the answer afresh.
    restart = continuation_request("chat", CHAT, progress_of(chat_chunk(role="assistant", content="")), backend)
    assert restart == CHAT


def test_completion_appends_the_text_sent_to_the_prompt() -> None:
    events = events_of(recorded("llamacpp", "completion_stream.json"))
    progress = progress_of(b"".join(events[:2]))  # " Paris", "."
    for plugin in ("llamacpp", "vllm", "openai_compat", "tensorrt_llm"):  # no prefill needed for completions
        request = continuation_request("completion", COMPLETION, progress, plugin_backend(plugin))
        assert request is not None
        assert request["prompt"] == "The capital of France is Paris."
        assert request["max_tokens"] == 2
    one = continuation_request("completion", {**COMPLETION, "prompt": ["Once"]}, progress, plugin_backend("vllm"))
    assert one is not None and one["prompt"] == ["Once Paris."]


def test_completion_prompts_that_cannot_take_the_text() -> None:
    progress = progress_of(b'data: {"id":"c","object":"text_completion","choices":[{"index":0,"text":" Paris"}]}\n\n')
    backend = plugin_backend("vllm")
    for prompt in ([1, 2, 3], ["a", "b"], [[1, 2]]):
        assert continuation_request("completion", {**COMPLETION, "prompt": prompt}, progress, backend) is None
    assert continuation_request("completion", {**COMPLETION, "echo": True}, progress, backend) is None


def test_output_budget_shrinks_by_the_content_events_sent() -> None:
    progress = progress_of(chat_chunk(role="assistant"), *(chat_chunk(w) for w in ("a", " b", " c")), chat_chunk(""))
    backend = plugin_backend("llamacpp")
    both = continuation_request("chat", {**CHAT, "max_tokens": 10, "max_completion_tokens": 5}, progress, backend)
    assert both is not None and (both["max_tokens"], both["max_completion_tokens"]) == (7, 2)
    unbounded = continuation_request("chat", {**CHAT, "max_tokens": None}, progress, backend)
    assert unbounded is not None and unbounded["max_tokens"] is None
    assert continuation_request("chat", {**CHAT, "max_tokens": 3}, progress, backend) is None  # spent
    assert continuation_request("chat", {**CHAT, "max_completion_tokens": 2}, progress, backend) is None


def test_several_choices_are_not_resumed() -> None:
    backend = plugin_backend("llamacpp")
    progress = progress_of(chat_chunk("a"))
    assert continuation_request("chat", {**CHAT, "n": 2}, progress, backend) is None
    assert continuation_request("chat", {**CHAT, "n": 1}, progress, backend) is not None
    assert continuation_request("chat", CHAT, progress_of(chat_chunk("a"), chat_chunk("b", index=1)), backend) is None


def test_what_is_never_continued() -> None:
    backend = plugin_backend("llamacpp")
    sent = (chat_chunk(role="assistant"), chat_chunk("Hi"))
    assert continuation_request("chat", CHAT, progress_of(*sent, chat_chunk(finish="stop")), backend) is None
    assert continuation_request("chat", CHAT, progress_of(*sent, DONE), backend) is None
    tool = chat_chunk(delta={"tool_calls": [{"index": 0, "function": {"name": "f"}}]})
    assert continuation_request("chat", CHAT, progress_of(*sent, tool), backend) is None
    own_prefill = {**CHAT, "messages": [*CHAT["messages"], {"role": "assistant", "content": "Sure"}]}
    assert continuation_request("chat", own_prefill, progress_of(*sent), backend) is None
    assert continuation_request("embedding", {"input": "x"}, progress_of(*sent), backend) is None


def test_trailing_whitespace_is_held_back_from_the_prefill() -> None:
    progress = progress_of(chat_chunk("Paris."), chat_chunk("\n\n"))
    request = continuation_request("chat", CHAT, progress, plugin_backend("llamacpp"))
    assert request is not None and request["messages"][-1]["content"] == "Paris."
    only_space = continuation_request("chat", CHAT, progress_of(chat_chunk("\n")), plugin_backend("tensorrt_llm"))
    assert only_space is not None and only_space["messages"] == CHAT["messages"]  # a restart, no prefill


# -- ResumedStreamRewriter -------------------------------------------------------------------------


def test_rewriter_keeps_the_first_streams_identity_and_drops_the_role_chunk() -> None:
    first = events_of(recorded("vllm", "chat_stream.json"))
    progress = progress_of(b"".join(first[:4]))
    rewriter = ResumedStreamRewriter("chat", progress)
    llama = events_of(recorded("llamacpp", "chat_stream.json"))  # another server's chunks
    out = rewriter.rewrite(b"".join(llama))
    chunks = data_of(out)
    assert chunks[-1] == "[DONE]"
    assert len(chunks) == len(llama) - 1  # the role chunk is gone
    for chunk in chunks[:-1]:
        assert (chunk["id"], chunk["created"], chunk["model"]) == ("chatcmpl-831026d5051650d1", 1795638733,
                                                                   "smollm2-hf")
        assert chunk["system_fingerprint"] is None or chunk["system_fingerprint"] == "b0-unknown"
        for choice in chunk["choices"]:
            assert "role" not in choice["delta"]
    assert text_of(out) == text_of(b"".join(llama))


def test_rewriter_applies_the_first_fingerprint_and_counts_usage_over_the_whole_answer() -> None:
    first = chat_chunk(role="assistant", system_fingerprint="fp-first")
    progress = progress_of(first, chat_chunk("a"), chat_chunk(" b"))
    rewriter = ResumedStreamRewriter("chat", progress)
    usage = {"prompt_tokens": 40, "completion_tokens": 6, "total_tokens": 46}
    out = rewriter.rewrite(chat_chunk(" c", system_fingerprint="fp-second")
                           + b'data: {"id":"x","created":1,"choices":[],"usage":' + msgspec.json.encode(usage)
                           + b',"system_fingerprint":"fp-second"}\n\n' + DONE)
    content, tail, done = data_of(out)
    assert content["system_fingerprint"] == tail["system_fingerprint"] == "fp-first"
    assert content["id"] == tail["id"] == "first-id" and tail["created"] == 100
    # The two tokens sent before the switch were output, though the second server read them as prompt.
    assert tail["usage"] == {"prompt_tokens": 38, "completion_tokens": 8, "total_tokens": 46}
    assert done == "[DONE]"


def test_rewriter_keeps_content_that_shares_the_role_chunk() -> None:
    rewriter = ResumedStreamRewriter("chat", progress_of(chat_chunk(role="assistant"), chat_chunk("Hi")))
    (chunk,) = data_of(rewriter.rewrite(chat_chunk(" there", role="assistant", chunk_id="other")))
    assert chunk["choices"][0]["delta"] == {"content": " there"}
    assert chunk["id"] == "first-id"


def test_rewriter_passes_what_it_does_not_read() -> None:
    rewriter = ResumedStreamRewriter("chat", progress_of(chat_chunk("Hi")))
    for event in (b": keep-alive\n\n", b"data: not json\n\n", b"data: [1, 2]\n\n", DONE):
        assert rewriter.rewrite(event) == event
    assert rewriter.rewrite(b"") == b""


def test_rewriter_does_not_repeat_held_back_whitespace() -> None:
    progress = progress_of(chat_chunk("Paris."), chat_chunk("\n\n"))
    rewriter = ResumedStreamRewriter("chat", progress)
    assert rewriter.rewrite(chat_chunk("\n")) == b""  # already sent: nothing left of the event
    (chunk,) = data_of(rewriter.rewrite(chat_chunk("\nIt")))
    assert chunk["choices"][0]["delta"]["content"] == "It"
    (later,) = data_of(rewriter.rewrite(chat_chunk("\n")))  # past the start: passed as it is
    assert later["choices"][0]["delta"]["content"] == "\n"
    # A continuation that does not repeat the whitespace loses nothing.
    other = ResumedStreamRewriter("chat", progress)
    (first,) = data_of(other.rewrite(chat_chunk("The")))
    assert first["choices"][0]["delta"]["content"] == "The"


def test_rewriter_on_completion_chunks() -> None:
    first = events_of(recorded("vllm", "completion_stream.json"))
    progress = progress_of(first[0])
    out = ResumedStreamRewriter("completion", progress).rewrite(b"".join(events_of(
        recorded("llamacpp", "completion_stream.json"))))
    chunks = data_of(out)
    assert all(c["id"] == "cmpl-839cec7855676cbb" and c["model"] == "smollm2-hf" for c in chunks[:-1])
    assert text_of(out) == " Paris.\n\n"  # completions hold nothing back: the text passes whole
    assert chunks[-2]["usage"]["completion_tokens"] == 4 + 1
