"""`POST /v1/embeddings` through the gateway to a real llama.cpp server launched in embedding mode."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import openai
import pytest
from gateway_process import SMOLLM2_REF, GatewayProcess

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def embedding_gateway(session_gateway_factory: Any, smollm2_path: Path) -> GatewayProcess:
    config = {
        "backends": [{
            "name": "embedder", "plugin": "llamacpp", "model": "smollm2-embed",
            "launch": {"model": SMOLLM2_REF, "ctx": 1024, "threads": 1, "parallel": 1, "embedding": True},
        }],
        "routes": [{"model": "embed", "backends": ["embedder"]}],
    }
    gateway: GatewayProcess = session_gateway_factory(config, name="embedding-gateway", timeout=180)
    return gateway


def test_embeddings_for_a_batch_of_inputs(embedding_gateway: GatewayProcess) -> None:
    response = embedding_gateway.client().embeddings.with_raw_response.create(
        model="embed", input=["The cat sat on the mat.", "A kitten rested on the rug.", "Quarterly tax filing"])
    assert response.status_code == 200
    assert response.headers["x-gateway-backend"] == "embedder"
    result = response.parse()
    assert result.model == "embed"
    vectors = [item.embedding for item in sorted(result.data, key=lambda item: item.index)]
    assert len(vectors) == 3
    assert len({len(v) for v in vectors}) == 1 and len(vectors[0]) > 100
    assert all(math.isfinite(x) for v in vectors for x in v)
    assert result.usage.prompt_tokens > 0

    def cosine(a: list[float], b: list[float]) -> float:
        dot = sum(x * y for x, y in zip(a, b, strict=True))
        return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))

    # Real embeddings: the same input gives the same vector, and a paraphrase is closer than an unrelated text.
    again = embedding_gateway.client().embeddings.create(model="embed", input="The cat sat on the mat.")
    assert cosine(again.data[0].embedding, vectors[0]) > 0.999
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2])


def test_token_id_input_is_accepted(embedding_gateway: GatewayProcess) -> None:
    result = embedding_gateway.client().embeddings.create(model="embed", input=[[1, 2, 3, 4]])
    assert len(result.data) == 1 and len(result.data[0].embedding) > 100


def test_a_backend_without_embeddings_refuses_with_422(llama_gateway: GatewayProcess) -> None:
    with pytest.raises(openai.UnprocessableEntityError) as info:
        llama_gateway.client().embeddings.create(model="smollm2", input="hello")
    body: Any = info.value.body
    assert body["code"] == "unsupported_endpoint" and "embeddings" in body["message"]
