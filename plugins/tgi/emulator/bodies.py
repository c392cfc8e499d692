"""One generation of the fake model and the TGI bodies that report it.

Key order and optional-field rules copy the serde derives in router/src/lib.rs: `details` is
left out of a `/generate` answer without `details: true`; `top_tokens` and `best_of_sequences`
are left out when empty; a stream event always has `generated_text` and `details` (null until
the last). The Messages API objects put `object` first (`#[serde(tag = "object")]`) and keep
`id: ""` and a `system_fingerprint` of "<version>-<docker label or native>" (server.rs).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import Any

from plugins.emulation import FakeModel
from plugins.tgi.emulator import tokens as tok

# FakeModel's finish -> TGI's `FinishReason` serialization
_FINISH = {"eos": "eos_token", "length": "length", "stop": "stop_sequence"}
# `FinishReason::format(true)`: the Messages API says "stop" for EOS only
_CHAT_FINISH = {"eos_token": "stop", "length": "length", "stop_sequence": "stop_sequence"}


@dataclass(slots=True)
class Run:
    """The tokens of one generation, the last one ending it."""

    tokens: list[dict[str, Any]]
    top_tokens: list[list[dict[str, Any]]]
    finish_reason: str  # eos_token | length | stop_sequence
    input_length: int
    seed: int | None
    prompt: str = ""
    text: str = field(default="")

    def __post_init__(self) -> None:
        # TGI decodes without special tokens, so EOS is in `tokens` but not in the text
        self.text = "".join(t["text"] for t in self.tokens if not t["special"])


def generate(model: FakeModel, vocabulary: list[str], *, prompt: str, input_length: int,
             max_new_tokens: int | None, stop: list[str], top_n: int, sampling: bool, seed: int | None,
             prefill: str = "") -> Run:
    """Run the fake model the way TGI stops: after EOS, at max_new_tokens, or after a stop sequence."""
    generation = model.generate(prompt, max_tokens=max_new_tokens, stop=stop or None, prefill=prefill)
    tokens = [tok.token(t) for t in generation.tokens]
    if generation.finish == "stop" and generation.stop_sequence is not None:
        tokens.append(tok.token(generation.stop_sequence))  # TGI keeps the stop sequence in the text
    elif generation.finish == "eos":
        tokens.append(tok.token(tok.EOS_TEXT, special=True))
    tops = [tok.top_tokens(t, top_n, vocabulary) for t in tokens] if top_n else []
    if sampling and seed is None:
        seed = random.getrandbits(63)  # TGI picks one and reports it; only when sampling
    return Run(tokens=tokens, top_tokens=tops, finish_reason=_FINISH[generation.finish], input_length=input_length,
               seed=seed if sampling else None, prompt=prompt)


def details(run: Run, prefill: list[dict[str, Any]]) -> dict[str, Any]:
    """`Details`."""
    out: dict[str, Any] = {
        "finish_reason": run.finish_reason, "generated_tokens": len(run.tokens), "seed": run.seed,
        "prefill": prefill, "tokens": run.tokens,
    }
    if run.top_tokens:
        out["top_tokens"] = run.top_tokens
    return out


def prefill_tokens(prompt: str) -> list[dict[str, Any]]:
    """`PrefillToken`s; the first has no logprob (serialized as null)."""
    out = []
    for i, t in enumerate(tok.tokenize(prompt)):
        out.append({"id": t["id"], "text": t["text"], "logprob": None if i == 0 else tok.logprob(t["text"])})
    return out


def generate_response(run: Run, *, with_details: bool, prefill: list[dict[str, Any]],
                      full_text: bool, best_of: list[Run] | None = None) -> dict[str, Any]:
    """`GenerateResponse`."""
    text = run.prompt + run.text if full_text else run.text
    out: dict[str, Any] = {"generated_text": text}
    if with_details:
        body = details(run, prefill)
        if best_of:
            sequences = []
            for other in best_of:
                seq = {"generated_text": (other.prompt if full_text else "") + other.text,
                       "finish_reason": other.finish_reason, "generated_tokens": len(other.tokens),
                       "seed": other.seed, "prefill": prefill, "tokens": other.tokens}
                if other.top_tokens:
                    seq["top_tokens"] = other.top_tokens
                sequences.append(seq)
            top = body.pop("top_tokens", None)
            body["best_of_sequences"] = sequences
            if top is not None:
                body["top_tokens"] = top
        out["details"] = body
    return out


def stream_event(run: Run, index: int, *, with_details: bool, full_text: bool) -> dict[str, Any]:
    """`StreamResponse` for token `index` (0-based here; TGI counts from 1)."""
    last = index == len(run.tokens) - 1
    out: dict[str, Any] = {"index": index + 1, "token": run.tokens[index]}
    if run.top_tokens:
        out["top_tokens"] = run.top_tokens[index]
    out["generated_text"] = ((run.prompt if full_text else "") + run.text) if last else None
    out["details"] = {"finish_reason": run.finish_reason, "generated_tokens": len(run.tokens), "seed": run.seed,
                      "input_length": run.input_length} if last and with_details else None
    return out


def error(message: str, error_type: str) -> dict[str, str]:
    """`ErrorResponse`."""
    return {"error": message, "error_type": error_type}


def chat_error_event(message: str) -> dict[str, Any]:
    """`OpenaiErrorEvent`: how the Messages API stream reports any error (always labelled 422)."""
    return {"error": {"message": message, "http_status_code": 422}}


def _chat_logprobs(run: Run, indexes: range) -> dict[str, Any]:
    content = []
    for i in indexes:
        t = run.tokens[i]
        tops = run.top_tokens[i] if i < len(run.top_tokens) else []
        content.append({"token": t["text"], "logprob": t["logprob"],
                        "top_logprobs": [{"token": c["text"], "logprob": c["logprob"]} for c in tops]})
    return {"content": content}


def usage(run: Run) -> dict[str, int]:
    return {"prompt_tokens": run.input_length, "completion_tokens": len(run.tokens),
            "total_tokens": run.input_length + len(run.tokens)}


def chat_completion(run: Run, *, model: str, fingerprint: str, logprobs: bool) -> dict[str, Any]:
    """`CompletionType::ChatCompletion`."""
    return {
        "object": "chat.completion", "id": "", "created": int(time.time()), "model": model,
        "system_fingerprint": fingerprint,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": run.text},
                     "logprobs": _chat_logprobs(run, range(len(run.tokens))) if logprobs else None,
                     "finish_reason": _CHAT_FINISH[run.finish_reason]}],
        "usage": usage(run),
    }


def chat_chunk(run: Run, index: int, *, model: str, fingerprint: str, logprobs: bool) -> dict[str, Any]:
    """`CompletionType::ChatCompletionChunk` for token `index` (`create_event_from_stream_token`, chat.rs)."""
    t = run.tokens[index]
    last = index == len(run.tokens) - 1
    return {
        "object": "chat.completion.chunk", "id": "", "created": int(time.time()), "model": model,
        "system_fingerprint": fingerprint,
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": "" if t["special"] else t["text"]},
                     "logprobs": _chat_logprobs(run, range(index, index + 1)) if logprobs else None,
                     "finish_reason": _CHAT_FINISH[run.finish_reason] if last else None}],
        "usage": None,
    }


def chat_usage_chunk(run: Run, *, model: str, fingerprint: str) -> dict[str, Any]:
    """The extra chunk `stream_options.include_usage` asks for: no choices, usage set (chat.rs)."""
    return {"object": "chat.completion.chunk", "id": "", "created": int(time.time()), "model": model,
            "system_fingerprint": fingerprint, "choices": [], "usage": usage(run)}
