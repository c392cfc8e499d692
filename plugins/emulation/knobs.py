"""The knobs every emulator has: pacing, capacity and faults."""

from __future__ import annotations

from enum import StrEnum

import msgspec


class Fault(StrEnum):
    """What goes wrong, on purpose."""

    NONE = "none"
    REFUSE = "refuse"  # close the connection without answering
    HTTP_500 = "http_500"
    HTTP_503 = "http_503"
    HTTP_429 = "http_429"  # with Retry-After
    MALFORMED_CHUNK = "malformed_chunk"  # a stream chunk that is not valid JSON
    CUT_STREAM = "cut_stream"  # the connection drops mid-stream, no end marker
    HANG = "hang"  # accept the request, never answer
    # The server reports a failure in its own in-stream error format after fault_after_tokens
    # (Ollama's `{"error": ...}` NDJSON line). Emulators without such a format may ignore it.
    STREAM_ERROR = "stream_error"


class Knobs(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Behaviour of a running emulator; `POST /__emulator/knobs` updates any subset."""

    ttft_ms: float = 0.0
    tpot_ms: float = 0.0
    max_concurrency: int = 0  # 0: unlimited
    max_queue: int = 64  # requests waiting for a slot before the server refuses more
    fault: Fault = Fault.NONE
    fault_after_tokens: int = 2  # for malformed_chunk and cut_stream
    retry_after_s: int = 1
    # The fake model's vocabulary of one: it answers with these words, cycling.
    reply: str = "Hello from the emulator. This reply is deterministic and repeats on demand."
