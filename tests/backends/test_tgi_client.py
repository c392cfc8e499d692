"""Conformance: Hugging Face's own `text-generation` client (0.7.0) against the TGI emulator.

The client's pydantic models are TGI's response types as its authors wrote them; parsing the
emulator's answers with them (and getting its typed errors back) checks fields, types and
the SSE framing from the other side.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from contract.providers.tgi import TGIEmulatorProcess, running_emulator

text_generation = pytest.importorskip("text_generation", reason="pip install text-generation==0.7.0")
from text_generation import AsyncClient  # noqa: E402
from text_generation.errors import GenerationError, OverloadedError, ValidationError  # noqa: E402
from text_generation.types import FinishReason, Grammar, GrammarType, Message  # noqa: E402

# The client is deprecated upstream (in favour of huggingface_hub's InferenceClient) and still
# calls pydantic's v1 `.dict()`: its own warnings, not ours.
pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore::DeprecationWarning")]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TGIEmulatorProcess]:
    with running_emulator(tmp_path_factory.mktemp("tgi-client") / "emulator.log") as process:
        yield process


@pytest.fixture(autouse=True)
def clean_knobs(emulator: TGIEmulatorProcess) -> Iterator[None]:
    yield
    emulator.knobs(fault="none", ttft_ms=0, max_concurrency=0, max_queue=64)


@pytest.fixture
def client(emulator: TGIEmulatorProcess) -> AsyncClient:
    return AsyncClient(emulator.url, timeout=10)


async def test_generate(client: AsyncClient) -> None:
    response = await client.generate("What is Deep Learning?", max_new_tokens=5, decoder_input_details=True)
    assert response.generated_text == "Hello from the emulator. This"
    assert response.details.finish_reason is FinishReason.Length
    assert response.details.generated_tokens == 5 == len(response.details.tokens)
    assert "".join(t.text for t in response.details.tokens) == response.generated_text
    assert response.details.seed is None  # greedy: TGI reports a seed only when it sampled


async def test_generate_with_tgi_parameters(client: AsyncClient) -> None:
    response = await client.generate("Hi", max_new_tokens=3, do_sample=True, seed=42, top_n_tokens=2,
                                     stop_sequences=["emulator"], return_full_text=True,
                                     grammar=Grammar(type=GrammarType.Regex, value="[A-Za-z .]+"))
    assert response.details.seed == 42
    assert response.details.top_tokens is not None and all(len(top) == 2 for top in response.details.top_tokens)
    assert response.generated_text.startswith("Hi")  # return_full_text
    eos = await client.generate("Hi", max_new_tokens=40, stop_sequences=["reply"])
    assert eos.details.finish_reason is FinishReason.StopSequence and eos.generated_text.endswith("reply")


async def test_generate_stream(client: AsyncClient) -> None:
    responses = [r async for r in client.generate_stream("What is Deep Learning?", max_new_tokens=4)]
    assert len(responses) == 4
    assert all(r.details is None and r.generated_text is None for r in responses[:-1])
    last = responses[-1]
    assert last.details is not None and last.details.finish_reason is FinishReason.Length
    assert last.details.generated_tokens == 4
    assert last.generated_text == "".join(r.token.text for r in responses)


async def test_chat(client: AsyncClient) -> None:
    completion = await client.chat([Message(role="user", content="hello")], max_tokens=3)
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == "Hello from the"
    assert completion.choices[0].finish_reason == "length"


async def test_validation_error(client: AsyncClient) -> None:
    with pytest.raises(ValidationError, match="`top_n_tokens` must be >= 0 and <= 5"):
        await client.generate("Hi", top_n_tokens=9)
    with pytest.raises(ValidationError, match="stop sequences"):
        async for _ in client.generate_stream("Hi", stop_sequences=["a", "b", "c", "d", "e"]):
            pass


async def test_overloaded(client: AsyncClient, emulator: TGIEmulatorProcess) -> None:
    emulator.knobs(max_concurrency=1, max_queue=0, ttft_ms=2000)
    holder = asyncio.ensure_future(client.generate("Hi", max_new_tokens=1))
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(200):
                if "tgi_batch_current_size 1" in (await http.get(emulator.url + "/metrics")).text:
                    break
                await asyncio.sleep(0.02)
        with pytest.raises(OverloadedError):
            await client.generate("Hi")
        with pytest.raises(OverloadedError):  # a 200 whose first event is the overload
            async for _ in client.generate_stream("Hi"):
                pass
    finally:
        holder.cancel()
        await asyncio.gather(holder, return_exceptions=True)


async def test_generation_error_mid_stream(client: AsyncClient, emulator: TGIEmulatorProcess) -> None:
    emulator.knobs(fault="stream_error", fault_after_tokens=2)
    received = []
    with pytest.raises(GenerationError, match="Request failed during generation"):
        async for response in client.generate_stream("Hi", max_new_tokens=5):
            received.append(response.token.text)
    assert received == ["Hello", " from"]
    with pytest.raises(GenerationError):
        await client.generate("Hi", max_new_tokens=5)
