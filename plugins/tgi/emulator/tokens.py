"""The emulator's tokenizer and chat template: whitespace words, ids and logprobs from a hash.

Real TGI tokenizes with the model's tokenizer and applies the model's Jinja chat template; the
emulator only has to be deterministic and consistent: the prompt length it validates, reports
in `usage`/`input_length` and returns from `/tokenize` are all the same word count.
"""

from __future__ import annotations

import json
import re
import zlib
from typing import Any

from plugins.tgi.emulator.requests import ChatMessage

WORD = re.compile(r"\S+")
EOS_ID = 2
EOS_TEXT = "</s>"  # the end-of-sequence token of Llama-style tokenizers, `special: true`


def token_id(text: str) -> int:
    """A stable id in a 32k vocabulary (0-2 are <unk>, <s>, </s>)."""
    return 3 + zlib.crc32(text.encode()) % 31997


def logprob(text: str, rank: int = 0) -> float:
    """A stable log-probability, lower for lower-ranked alternatives; rounded like an f32."""
    base = ((zlib.crc32(text.encode()) >> 8) % 900) / 1000 + 0.01
    return -round(base + rank * 0.75, 7)


def token(text: str, *, special: bool = False, rank: int = 0) -> dict[str, Any]:
    """`Token` (router/src/lib.rs): id, text, logprob, special - in that order."""
    if special:
        return {"id": EOS_ID, "text": text, "logprob": -0.0009, "special": True}
    return {"id": token_id(text), "text": text, "logprob": logprob(text, rank), "special": False}


def top_tokens(chosen: dict[str, Any], n: int, vocabulary: list[str]) -> list[dict[str, Any]]:
    """The `n` most likely tokens at one step: the chosen one first, then other words."""
    if n <= 0:
        return []
    out = [dict(chosen)]
    for word in vocabulary:
        if len(out) >= n:
            break
        text = " " + word
        if text != chosen["text"]:
            out.append(token(text, rank=len(out)))
    return out


def tokenize(text: str) -> list[dict[str, Any]]:
    """`SimpleToken`s of `POST /tokenize`: id, text, start, stop (offsets into `text`)."""
    return [{"id": token_id(m.group()), "text": m.group(), "start": m.start(), "stop": m.end()}
            for m in WORD.finditer(text)]


def count(text: str) -> int:
    return sum(1 for _ in WORD.finditer(text))


def message_text(message: ChatMessage) -> str:
    """`impl From<Message> for TextMessage`: text chunks joined, images as markdown, tool calls as JSON."""
    if isinstance(message.content, str):
        return message.content
    if isinstance(message.content, list):
        parts = []
        for chunk in message.content:
            if chunk.get("type") == "image_url":
                parts.append(f"![]({(chunk.get('image_url') or {}).get('url', '')})")
            else:
                parts.append(str(chunk.get("text", "")))
        return "".join(parts)
    return json.dumps(message.tool_calls or [])


def chat_template(messages: list[ChatMessage]) -> str:
    """A Zephyr-style template with the generation prompt added, as TGI renders one."""
    rendered = "".join(f"<|{m.role}|>\n{message_text(m)}</s>\n" for m in messages)
    prefill = assistant_prefill(messages)
    if prefill is not None:
        # ChatTemplate::apply: a final assistant message is continued, the render cut (and
        # trimmed) right after its content.
        return rendered[: rendered.rfind(prefill) + len(prefill)].rstrip()
    return rendered + "<|assistant|>\n"


def assistant_prefill(messages: list[ChatMessage]) -> str | None:
    """The text TGI (3.0 and later) continues when the last message is the assistant's, else None."""
    if not messages or messages[-1].role != "assistant":
        return None
    return message_text(messages[-1])
