"""The official `ollama` Python client against the emulator: if Ollama's own client reads it, so will others.

The client (ollama/ollama-python, ollama/_client.py and _types.py) validates every answer
into its pydantic models, parses NDJSON streams line by line and raises `ResponseError` for
an error status or an `{"error": ...}` stream line.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from datetime import datetime

import httpx
import pytest
from contract.providers.ollama import OllamaEmulatorProcess, running_emulator

ollama = pytest.importorskip("ollama", reason="the conformance client: pip install 'ollama==0.6.3'")

pytestmark = pytest.mark.integration

MODEL = "llama3.2"
QUESTION = [{"role": "user", "content": "Why is the sky blue?"}]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OllamaEmulatorProcess]:
    with running_emulator(tmp_path_factory.mktemp("ollama-client") / "emulator.log",
                          models=[MODEL, "all-minilm", "mistral"]) as server:
        yield server


@pytest.fixture
async def client(emulator: OllamaEmulatorProcess) -> AsyncIterator[ollama.AsyncClient]:
    async with ollama.AsyncClient(host=emulator.url, timeout=30) as async_client:
        yield async_client


async def test_chat_whole_and_streamed(client: ollama.AsyncClient) -> None:
    whole = await client.chat(model=MODEL, messages=QUESTION)
    assert isinstance(whole, ollama.ChatResponse)
    assert whole.message.role == "assistant" and whole.message.content
    assert (whole.done, whole.done_reason, whole.model) == (True, "stop", MODEL)
    assert whole.eval_count and whole.prompt_eval_count and whole.total_duration and whole.load_duration
    datetime.fromisoformat(whole.created_at.replace("Z", "+00:00"))
    parts = [part async for part in await client.chat(model=MODEL, messages=QUESTION, stream=True)]
    assert all(not p.done for p in parts[:-1]) and parts[-1].done and parts[-1].done_reason == "stop"
    assert "".join(p.message.content or "" for p in parts) == whole.message.content


async def test_generate_whole_and_streamed(client: ollama.AsyncClient) -> None:
    whole = await client.generate(model=MODEL, prompt="Why is the sky blue?", options={"num_predict": 3})
    assert isinstance(whole, ollama.GenerateResponse)
    assert whole.done_reason == "length" and whole.eval_count == 3 and whole.context
    parts = [p async for p in await client.generate(model=MODEL, prompt="Why?", stream=True, raw=True,
                                                    options={"num_predict": 3})]
    assert "".join(p.response or "" for p in parts) == whole.response
    assert parts[-1].done and parts[-1].context is None  # raw mode returns no context (docs/api.md)


async def test_tools_and_structured_output(client: ollama.AsyncClient) -> None:
    def get_weather(city: str) -> str:
        """Get the weather in a city.

        Args:
          city: The city to get the weather for
        """
        return "sunny"

    called = await client.chat(model=MODEL, messages=[{"role": "user", "content": "Tokyo"}], tools=[get_weather])
    call = called.message.tool_calls[0]
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Tokyo"}
    schema = {"type": "object", "properties": {"age": {"type": "integer"}, "available": {"type": "boolean"}},
              "required": ["age", "available"]}
    shaped = await client.chat(model=MODEL, messages=QUESTION, format=schema)
    assert set(json.loads(shaped.message.content)) == {"age", "available"}


async def test_embed(client: ollama.AsyncClient) -> None:
    result = await client.embed(model="all-minilm", input=["Why is the sky blue?", "Why is the grass green?"])
    assert isinstance(result, ollama.EmbedResponse)
    assert len(result.embeddings) == 2 and len(result.embeddings[0]) == 384 and result.prompt_eval_count


async def test_list_ps_and_version(client: ollama.AsyncClient, emulator: OllamaEmulatorProcess) -> None:
    pulled = await client.list()
    assert {m.model for m in pulled.models} == {"llama3.2:latest", "all-minilm:latest", "mistral:latest"}
    assert all(m.modified_at and m.size and m.digest and m.details and m.details.format == "gguf"
               for m in pulled.models)
    await client.generate(model="mistral", prompt="hi", keep_alive="1h")
    running = {m.model: m for m in (await client.ps()).models}
    assert running["mistral:latest"].expires_at and running["mistral:latest"].size_vram
    assert running["mistral:latest"].context_length == 4096
    unloaded = await client.generate(model="mistral", keep_alive=0)
    assert unloaded.done_reason == "unload"
    assert "mistral:latest" not in {m.model for m in (await client.ps()).models}
    # ollama-python has no version() (ollama/_client.py); its transport, httpx, reads the route directly.
    async with httpx.AsyncClient(base_url=emulator.url, timeout=10) as http:
        version = (await http.get("/api/version")).json()
    assert isinstance(version["version"], str) and version["version"].count(".") == 2


async def test_errors_reach_the_client_as_response_errors(client: ollama.AsyncClient,
                                                          emulator: OllamaEmulatorProcess) -> None:
    with pytest.raises(ollama.ResponseError) as missing:
        await client.chat(model="qwen9", messages=QUESTION)
    assert missing.value.status_code == 404 and missing.value.error == "model 'qwen9' not found"
    with pytest.raises(ollama.ResponseError) as missing_stream:
        async for _ in await client.chat(model="qwen9", messages=QUESTION, stream=True):
            pass
    assert missing_stream.value.status_code == 404
    emulator.knobs(fault="stream_error", fault_after_tokens=2)
    try:
        seen = []
        with pytest.raises(ollama.ResponseError) as mid_stream:
            async for part in await client.chat(model=MODEL, messages=QUESTION, stream=True):
                seen.append(part)
    finally:
        emulator.knobs(fault="none")
    assert len(seen) == 2 and "error was encountered" in mid_stream.value.error
