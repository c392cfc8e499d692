"""The target's tokenizer over its server's own routes: chat rendering, tokenize, detokenize.

Speculation keeps the conversation as target token ids (reference §2.0.1), so the chat is rendered
once with the target's template, by the target's server, and never re-tokenized afterwards. Text for
the client comes back through `detokenize` (gateway.speculative.text_stream).

- llama.cpp: POST /apply-template {messages} -> {prompt}, then POST /tokenize with `add_special`
  and `parse_special` as its own chat route tokenizes (a BOS only where the model adds one);
  POST /detokenize {tokens} -> {content}.
- vLLM: POST /tokenize {messages, add_generation_prompt} (its chat route adds no special tokens
  around the rendered template); POST /detokenize {tokens} -> {prompt}.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import aiohttp

from gateway.speculative.pooled_http import post_json
from gateway.speculative.probe import TokenizerError


class _HttpCodec:
    """POSTs JSON to one server with a shared aiohttp session; every failure is a `TokenizerError`."""

    name = "codec"

    def __init__(self, base_url: str, session: aiohttp.ClientSession, *, timeout_s: float = 30.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def _post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        url = self.base_url + path
        decoded = await post_json(self.session, url, body, failure=TokenizerError, what=f"POST {url}",
                                  detail=lambda content: content[:200].decode("utf-8", "replace"),
                                  limits=self.timeout)
        if not isinstance(decoded, dict):
            raise TokenizerError(f"{url} answered {type(decoded).__name__}, not an object")
        return decoded

    @staticmethod
    def _ids(answer: dict[str, Any], key: str, where: str) -> list[int]:
        tokens = answer.get(key)
        if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
            raise TokenizerError(f"{where}: expected a list of token ids in {key!r}")
        return tokens

    @staticmethod
    def _text(answer: dict[str, Any], key: str, where: str) -> str:
        text = answer.get(key)
        if not isinstance(text, str):
            raise TokenizerError(f"{where}: expected text in {key!r}")
        return text


class LlamaCppCodec(_HttpCodec):
    """llama.cpp's llama-server as the tokenizer (its chat template, its vocabulary)."""

    name = "llamacpp"

    async def render_chat(self, messages: list[Any]) -> list[int]:
        """The prompt ids llama-server's own chat route would decode from."""
        rendered = self._text(await self._post("/apply-template", {"messages": messages}), "prompt", "/apply-template")
        body = {"content": rendered, "add_special": True, "parse_special": True}
        return self._ids(await self._post("/tokenize", body), "tokens", "/tokenize")

    async def tokenize(self, text: str, *, add_special: bool = False) -> list[int]:
        body = {"content": text, "add_special": add_special, "parse_special": True}
        return self._ids(await self._post("/tokenize", body), "tokens", "/tokenize")

    async def detokenize(self, ids: Sequence[int]) -> str:
        return self._text(await self._post("/detokenize", {"tokens": list(ids)}), "content", "/detokenize")


class VllmCodec(_HttpCodec):
    """A vLLM server as the tokenizer; `model` is the name it serves."""

    name = "vllm"

    def __init__(self, base_url: str, model: str, session: aiohttp.ClientSession, *, timeout_s: float = 30.0) -> None:
        super().__init__(base_url, session, timeout_s=timeout_s)
        self.model = model

    async def render_chat(self, messages: list[Any]) -> list[int]:
        body = {"model": self.model, "messages": messages, "add_generation_prompt": True,
                "add_special_tokens": False}
        return self._ids(await self._post("/tokenize", body), "tokens", "/tokenize")

    async def tokenize(self, text: str, *, add_special: bool = False) -> list[int]:
        body = {"model": self.model, "prompt": text, "add_special_tokens": add_special}
        return self._ids(await self._post("/tokenize", body), "tokens", "/tokenize")

    async def detokenize(self, ids: Sequence[int]) -> str:
        body = {"model": self.model, "tokens": list(ids)}
        return self._text(await self._post("/detokenize", body), "prompt", "/detokenize")


# A target's tokenizer with its chat template: what a speculative pair renders requests with.
ChatCodec = LlamaCppCodec | VllmCodec
