"""Rendering OpenAI chat messages as the raw text prompt Triton's TensorRT-LLM ensemble takes.

trtllm-serve applies the model's own Jinja template; the Triton ensemble's preprocessing model
only tokenizes `text_input`, so for Triton the gateway has to write the prompt itself.
"""

from __future__ import annotations

from typing import Any

from gateway.errors import GatewayError
from plugins.tensorrt_llm.options import ChatTemplateSpec

# The formats published in each model family's tokenizer_config.json chat_template.
BUILTIN_TEMPLATES: dict[str, ChatTemplateSpec] = {
    # ChatML (Qwen, SmolLM, many fine-tunes).
    "chatml": ChatTemplateSpec(
        message="<|im_start|>{role}\n{content}<|im_end|>\n",
        generation_prompt="<|im_start|>assistant\n",
        stop=["<|im_end|>"],
    ),
    # Llama 3 / 3.1 / 3.3 instruct.
    "llama3": ChatTemplateSpec(
        bos="<|begin_of_text|>",
        message="<|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>",
        generation_prompt="<|start_header_id|>assistant<|end_header_id|>\n\n",
        stop=["<|eot_id|>"],
    ),
    # Zephyr / TinyLlama-1.1B-Chat (the model of TensorRT-LLM's own serving examples).
    "zephyr": ChatTemplateSpec(
        message="<|{role}|>\n{content}</s>\n",
        generation_prompt="<|assistant|>\n",
        stop=["</s>"],
    ),
    # No markup at all: `role: content` lines, for base models.
    "plain": ChatTemplateSpec(
        message="{role}: {content}\n",
        generation_prompt="assistant:",
        stop=["\nuser:"],
    ),
}


def resolve_template(template: str | ChatTemplateSpec) -> ChatTemplateSpec:
    """A configured template name or spec as a spec (names are checked at config load)."""
    return BUILTIN_TEMPLATES[template] if isinstance(template, str) else template


def message_text(content: Any, index: int) -> str:
    """The text of a message's `content`: a string, text parts joined, or nothing."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    for part in content:
        if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
            parts.append(part["text"])
        else:
            kind = part.get("type") if isinstance(part, dict) else type(part).__name__
            raise GatewayError(
                422,
                f"messages[{index}]: content part of type '{kind}' cannot be sent to a Triton text model",
                param=f"messages[{index}].content",
                code="unsupported_content",
            )
    return "".join(parts)


def render_chat(template: ChatTemplateSpec, messages: list[dict[str, Any]]) -> str:
    """The prompt for `messages`, ending with the assistant's turn so the model answers."""
    pieces = [template.bos]
    for i, message in enumerate(messages):
        role = "system" if message.get("role") == "developer" else str(message.get("role"))
        pieces.append(template.message.format(role=role, content=message_text(message.get("content"), i)))
    pieces.append(template.generation_prompt)
    return "".join(pieces)
