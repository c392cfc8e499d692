"""`ModelRenamer`: the client's model name replaces the backend's, and nothing else changes."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.api.model_rename import ModelRenamer

from .fakes import chat_completion_json, chunk_event


def test_replaces_the_top_level_model() -> None:
    out = ModelRenamer("gpt-4o")(chat_completion_json(model="/models/llama.gguf"))
    decoded = msgspec.json.decode(out)
    assert decoded["model"] == "gpt-4o"
    assert decoded == {**msgspec.json.decode(chat_completion_json()), "model": "gpt-4o"}


def test_replaces_the_model_of_every_chunk_in_a_batch() -> None:
    batch = chunk_event("a", "backend-1") + chunk_event("b", "backend-1") + b"data: [DONE]\n\n"
    out = ModelRenamer("client")(batch)
    events = out.split(b"\n\n")
    assert events[-2:] == [b"data: [DONE]", b""]
    for event in events[:2]:
        assert msgspec.json.decode(event[len(b"data: "):])["model"] == "client"
    assert out == chunk_event("a", "client") + chunk_event("b", "client") + b"data: [DONE]\n\n"


def test_whitespace_around_the_colon() -> None:
    assert ModelRenamer("x")(b'{"model" :  "y", "a": 1}') == b'{"model":"x", "a": 1}'


def test_leaves_an_escaped_model_inside_content_alone() -> None:
    content = 'say {"model": "secret"} and \\"model\\": \\"also\\"'
    body = chat_completion_json(content=content, model="backend")
    out = ModelRenamer("client")(body)
    decoded = msgspec.json.decode(out)
    assert decoded["model"] == "client"
    assert decoded["choices"][0]["message"]["content"] == content


def test_body_without_model_is_returned_as_is() -> None:
    body = b'{"object":"list","data":[]}'
    assert ModelRenamer("x")(body) is body


@pytest.mark.parametrize(
    "name",
    ['a"b', "back\\slash", "\\1 \\g<0> \\n", 'q"\\"', "ünïcødé/模型", "", "tab\tand\nnewline", "\\"],
)
def test_names_with_quotes_and_backslashes_give_valid_json(name: str) -> None:
    body = chat_completion_json(content='a "model": "x" inside', model='prev "quoted" \\ name')
    decoded = msgspec.json.decode(ModelRenamer(name)(body))
    assert decoded["model"] == name
    assert decoded["choices"][0]["message"]["content"] == 'a "model": "x" inside'


@settings(max_examples=200, deadline=None)
@given(client=st.text(), backend=st.text(), content=st.text())
def test_any_names_and_content(client: str, backend: str, content: str) -> None:
    body = chat_completion_json(content=content, model=backend)
    decoded = msgspec.json.decode(ModelRenamer(client)(body))
    assert decoded["model"] == client
    assert decoded["choices"][0]["message"]["content"] == content
