"""TensorRT-LLM behind Triton as a speculative-decoding `Target`, with the engine's own external-draft
verification (../shared/reference/speculative-decoding.md §2.3).

`verify` is one call of Triton's HTTP generate endpoint on the `tensorrt_llm` model (tensor names as
JSON keys): `input_ids` = the committed ids, `draft_input_ids` = the draft, `request_output_len` =
len(draft) + 1, greedy (`beam_width` 1, `runtime_top_k` 1). The engine keeps drafts while each equals
its own greedy token and adds one more (the correction, or the bonus after a fully accepted draft), so
`output_ids` past the input are exactly the tokens this round commits: the loop of NVIDIA/TensorRT-LLM
triton_backend/inflight_batcher_llm/client/e2e_grpc_speculative_decoding_client.py, with KV reuse
making a round cost about one decode step. `generate` streams plain decoding over `generate_stream`
with `streaming` set, one SSE event per executor response.

End tokens: the executor stops on `end_id` but leaves it out of the output (NVIDIA/TensorRT-LLM issue
#2190), and without `end_id` there is none at all (docs/model_config.md: "defaults to -1"). So an answer
shorter than asked for means the engine stopped on `end_id` right after it: the target reports that
token, so the decoder ends exactly where target-alone decoding ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import aiohttp
import msgspec

from gateway.speculative.interfaces import TargetFailed, Verification
from gateway.speculative.pooled_http import SessionClient, post_json


def _error_detail(body: bytes) -> str:
    """Triton's `{"error": "<message>"}` body, or the start of whatever came instead."""
    try:
        decoded = msgspec.json.decode(body)
    except msgspec.DecodeError:
        decoded = None
    if isinstance(decoded, dict) and decoded.get("error"):
        return str(decoded["error"])
    return body[:200].decode("utf-8", "replace")


def _output_ids(answer: Any) -> list[int]:
    """Beam 0 of one response's `output_ids`, cut to its `sequence_length`.

    Triton writes a one-element output tensor as a scalar and any other as a flat list, so a single
    token arrives as a bare int; the backend pads beams to one length with -1.
    """
    if not isinstance(answer, dict):
        raise TargetFailed("a Triton response is not an object")
    if "error" in answer:
        raise TargetFailed(f"Triton failed the request: {answer['error']}")
    raw, length = answer.get("output_ids"), answer.get("sequence_length")
    ids = [raw] if isinstance(raw, int) else raw
    if isinstance(length, list):
        length = length[0] if length else 0
    if not isinstance(ids, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in ids):
        raise TargetFailed(f"Triton response has no output_ids: {str(answer)[:200]}")
    if not isinstance(length, int) or not 0 <= length <= len(ids):
        raise TargetFailed(f"Triton response has a bad sequence_length: {length!r}")
    return ids[:length]


class TritonDraftTarget(SessionClient):
    """`Target` over Triton's `tensorrt_llm` model with native draft verification (§2.3).

    `base_url` is Triton's HTTP root (…/v2/models/{model}/generate is appended); `model` the name of the
    TensorRT-LLM model in its repository (the engine must be built for `draft_tokens_external` with a
    `max_draft_len` at least the largest k). `end_id`/`pad_id` are sent with every call; without
    `end_id` the engine never stops early. `session` may be shared (then `aclose` leaves it open).
    Every failure (transport, HTTP status, a body that does not parse, an in-stream error event) raises
    `TargetFailed` with the reason.
    """

    name = "triton-tensorrt_llm"
    # Draft verification is native: a round needs no batch of prefixes and no logprobs.
    native_draft_verification = True

    def __init__(
        self,
        base_url: str,
        model: str = "tensorrt_llm",
        *,
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = 60.0,
        end_id: int | None = None,
        pad_id: int | None = None,
    ) -> None:
        root = base_url.rstrip("/") + f"/v2/models/{model}"
        self.generate_url = root + "/generate"
        self.stream_url = root + "/generate_stream"
        self.model = model
        self.end_id = end_id
        self.pad_id = pad_id
        # The engine ends a sequence on end_id only; the decoder reads this set live after every call.
        self.eos_ids: set[int] = set() if end_id is None else {end_id}
        super().__init__(session, timeout_s)
        self.last_perf: dict[str, Any] = {}  # acceptance_rate etc. of the last verify, when the server sent them


    def _body(self, committed: Sequence[int], output_len: int, draft: Sequence[int], *, stream: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "input_ids": list(committed),
            "input_lengths": len(committed),
            "request_output_len": output_len,
            # Greedy exactly as target-alone decoding runs it: one beam, top-1.
            "beam_width": 1,
            "runtime_top_k": 1,
            # Only the new tokens come back, whatever the model's exclude_input_in_output default.
            "exclude_input_in_output": True,
        }
        if draft:
            body["draft_input_ids"] = list(draft)
            body["return_perf_metrics"] = True
        if stream:
            body["streaming"] = True
        if self.end_id is not None:
            body["end_id"] = self.end_id
        if self.pad_id is not None:
            body["pad_id"] = self.pad_id
        return body

    def _new_tokens(self, answer: Any, committed: Sequence[int], asked: int) -> list[int]:
        """The generated ids of a whole answer (input stripped if a server echoed it anyway)."""
        ids = _output_ids(answer)
        if len(ids) > asked:
            # More than request_output_len: the server ignored exclude_input_in_output and echoed the input.
            if ids[: len(committed)] != list(committed):
                raise TargetFailed("Triton output_ids neither start with the input nor fit request_output_len")
            ids = ids[len(committed) :]
        return ids

    async def verify(self, committed: Sequence[int], draft: Sequence[int]) -> Verification:
        """One generate call checking the whole draft; the list stops after the correction or bonus
        (positions past the first mismatch are unknown, and `accept_round` never looks at them)."""
        asked = len(draft) + 1
        answer = await post_json(self._client(), self.generate_url, self._body(committed, asked, draft, stream=False),
                                 failure=TargetFailed, what="verify call", detail=_error_detail)
        tokens = self._new_tokens(answer, committed, asked)
        self.last_perf = {key: answer[key] for key in ("acceptance_rate", "total_accepted_draft_tokens",
                                                       "total_draft_tokens") if key in answer}
        return Verification(argmax=self._argmax(draft, tokens, asked))

    def _argmax(self, draft: Sequence[int], tokens: list[int], asked: int) -> list[int | None]:
        """The engine's answer as greedy choices: accepted drafts, then the correction or bonus."""
        for i, token in enumerate(tokens):
            if i < len(draft) and token != draft[i]:
                if i != len(tokens) - 1:
                    raise TargetFailed("Triton returned tokens past a rejected draft token")
                return list(tokens)
        if len(tokens) > len(draft):
            return list(tokens)  # every draft accepted, then the bonus
        # Fewer tokens than asked, all of them accepted drafts: the engine stopped because its next
        # token was end_id, which it never returns. Without an end_id that position is unknown.
        if len(tokens) < asked and self.end_id is not None:
            self.eos_ids.add(self.end_id)
            return [*tokens, self.end_id]
        return list(tokens)

    async def generate(self, committed: Sequence[int], max_tokens: int) -> AsyncIterator[int]:
        """Plain greedy decoding over generate_stream, yielding ids as their events arrive; a stream that
        ends short of `max_tokens` stopped on end_id, which is yielded last."""
        body = self._body(committed, max_tokens, (), stream=True)
        produced = 0
        try:
            async with self._client().post(self.stream_url, json=body) as response:
                if response.status != 200:
                    raise TargetFailed(
                        f"generate call answered {response.status}: {_error_detail(await response.read())}")
                async for raw in response.content:
                    line = raw.decode("utf-8", "replace").strip()
                    if not line.startswith("data:"):
                        continue
                    try:
                        event = msgspec.json.decode(line[5:].strip())
                    except msgspec.DecodeError as err:
                        raise TargetFailed(f"malformed stream event: {err}") from err
                    # [http] an error after the first response is an event under the 200 already sent.
                    for token in self._new_tokens(event, committed, max_tokens - produced):
                        produced += 1
                        yield token
        except (TimeoutError, aiohttp.ClientError) as err:
            raise TargetFailed(f"generate call failed: {type(err).__name__}: {err}") from err
        # Triton's stream has no end marker: the chunked body simply ends. Short of max_tokens, the
        # engine stopped on end_id (the only stop this target asks for).
        if produced < max_tokens and self.end_id is not None:
            self.eos_ids.add(self.end_id)
            yield self.end_id
