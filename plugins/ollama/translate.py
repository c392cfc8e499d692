"""OpenAI request bodies as Ollama's native ones (`/api/chat`, `/api/generate`, `/api/embed`).

The mapping follows Ollama's own OpenAI layer (ollama/ollama openai/openai.go,
FromChatRequest / FromCompleteRequest) where it is right for a gateway: `max_tokens` is
`options.num_predict`, sampling fields go into `options`, `stop` is always a list,
`response_format` json_object is `format: "json"` and json_schema is the schema itself.
Where it is not, this plugin differs on purpose: unset sampling fields stay unset (the
model's Modelfile defaults apply, as a vLLM server's generation_config would) rather than
being forced to 1.0, and text completions are sent `raw` so no chat template wraps them.
"""

from __future__ import annotations

from typing import Any

import msgspec

from gateway.errors import bad_request
from plugins.ollama.config import OllamaOptions
from plugins.ollama.params import NATIVE_SAMPLING, image_data

# OpenAI name -> Ollama option name, for fields copied as they are.
_SAMPLING = {"temperature": "temperature", "top_p": "top_p", "seed": "seed", "presence_penalty": "presence_penalty",
             "frequency_penalty": "frequency_penalty", **{name: name for name in NATIVE_SAMPLING}}
# Ollama knows system, user, assistant and tool (docs/api.md, the message object).
_ROLES = {"developer": "system", "function": "tool"}


class RequestBuilder:
    """Builds native request bodies for one backend: its model and its configured defaults."""

    def __init__(self, model: str, options: OllamaOptions) -> None:
        self.model = model
        self.settings = options
        self._base_options: dict[str, Any] = dict(options.default_options)
        if options.num_ctx is not None:
            self._base_options["num_ctx"] = options.num_ctx

    def _common(self, body: dict[str, Any], stream: bool, max_tokens: Any) -> dict[str, Any]:
        options = dict(self._base_options)
        for openai_name, ollama_name in _SAMPLING.items():
            value = body.get(openai_name)
            if value is not None:
                options[ollama_name] = value
        if max_tokens is not None:
            options["num_predict"] = max_tokens
        stop = body.get("stop")
        if stop is not None:
            options["stop"] = [stop] if isinstance(stop, str) else list(stop)
        native: dict[str, Any] = {"model": self.model, "stream": stream}
        if options:
            native["options"] = options
        keep_alive = body.get("keep_alive", self.settings.keep_alive)
        if keep_alive is not None:
            native["keep_alive"] = keep_alive
        if self.settings.truncate is not None:
            native["truncate"] = self.settings.truncate
        if self.settings.shift is not None:
            native["shift"] = self.settings.shift
        return native

    def chat(self, body: dict[str, Any], stream: bool) -> bytes:
        max_tokens = body.get("max_completion_tokens")
        if max_tokens is None:
            max_tokens = body.get("max_tokens")
        native = self._common(body, stream, max_tokens)
        native["messages"] = _messages(body.get("messages") or [])
        fmt = _format(body.get("response_format"))
        if fmt is not None:
            native["format"] = fmt
        tools = body.get("tools")
        if tools and body.get("tool_choice") != "none":  # "none": the model must not call any
            native["tools"] = tools
        return msgspec.json.encode(native)

    def generate(self, body: dict[str, Any], stream: bool) -> bytes:
        native = self._common(body, stream, body.get("max_tokens"))
        prompt = body.get("prompt")
        native["prompt"] = prompt[0] if isinstance(prompt, list) else prompt
        suffix = body.get("suffix")
        if suffix:
            # Fill-in-the-middle goes through the model's template (GenerateHandler, values.Suffix),
            # which raw mode skips.
            native["suffix"] = suffix
        elif self.settings.completion_raw:
            native["raw"] = True
        return msgspec.json.encode(native)

    def embed(self, body: dict[str, Any]) -> bytes:
        native: dict[str, Any] = {"model": self.model, "input": body["input"]}
        if body.get("dimensions") is not None:
            native["dimensions"] = body["dimensions"]
        keep_alive = body.get("keep_alive", self.settings.keep_alive)
        if keep_alive is not None:
            native["keep_alive"] = keep_alive
        if self.settings.truncate is not None:
            native["truncate"] = self.settings.truncate
        if self._base_options:
            native["options"] = self._base_options
        return msgspec.json.encode(native)


def _format(response_format: Any) -> Any:
    if not isinstance(response_format, dict):
        return None
    kind = response_format.get("type")
    if kind == "json_object":
        return "json"
    if kind == "json_schema":
        return response_format["json_schema"]["schema"]
    return None


def _messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OpenAI messages as api.Message: text parts joined, data-URL images in `images`, tool calls as objects."""
    call_names: dict[str, str] = {}
    native: list[dict[str, Any]] = []
    for i, message in enumerate(messages):
        role = _ROLES.get(message["role"], message["role"])
        out: dict[str, Any] = {"role": role}
        content = message.get("content")
        if isinstance(content, list):
            out["content"] = "\n".join(p["text"] for p in content if p.get("type") == "text")
            images = [data for p in content if p.get("type") == "image_url" and (data := image_data(p)) is not None]
            if images:
                out["images"] = images
        else:
            out["content"] = content or ""
        if message.get("tool_calls"):
            out["tool_calls"] = [_tool_call(i, j, call, call_names) for j, call in enumerate(message["tool_calls"])]
        if role == "tool":
            call_id = message.get("tool_call_id")
            name = message.get("name") or (call_names.get(call_id, "") if call_id else "")
            if name:
                out["tool_name"] = name
            if call_id:
                out["tool_call_id"] = call_id
        native.append(out)
    return native


def _tool_call(i: int, j: int, call: dict[str, Any], names: dict[str, str]) -> dict[str, Any]:
    """An OpenAI tool call (arguments as a JSON string) as Ollama's (arguments as an object)."""
    function = call.get("function") or {}
    name = function.get("name", "")
    arguments: Any = function.get("arguments") or "{}"
    if isinstance(arguments, str):
        try:
            arguments = msgspec.json.decode(arguments)
        except msgspec.DecodeError as err:
            param = f"messages[{i}].tool_calls[{j}].function.arguments"
            raise bad_request(f"'{param}' is not valid JSON: {err}", param=param, code="invalid_value") from err
    if not isinstance(arguments, dict):
        param = f"messages[{i}].tool_calls[{j}].function.arguments"
        raise bad_request(f"'{param}' must encode a JSON object", param=param, code="invalid_value")
    out: dict[str, Any] = {"function": {"name": name, "arguments": arguments}}
    if call.get("id"):
        out["id"] = call["id"]
        names[call["id"]] = name
    return out
