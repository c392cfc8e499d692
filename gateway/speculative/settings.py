"""The `speculative` section of a route: which backend verifies, what drafts, how many tokens a round.

Kept beside the speculative decoder; gateway/config.py holds it on `RouteConfig` and checks it
through `speculative_problems`.

```yaml
routes:
  - model: coder
    backends: [big]            # serves what cannot speculate (sampling, penalties, tools, n > 1)
    speculative:
      target: big              # vllm, tensorrt_llm (trtllm_serve or triton) or llamacpp (tgi: plain)
      draft: small             # a llamacpp, vllm or ollama backend, or `ngram` (no model)
      k: auto                  # drafts per round: auto (from measured acceptance and costs) or 1..max_k
      max_k: 8
```
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import msgspec

NGRAM = "ngram"
# Plugins that can verify a block of drafts in one call (see gateway.speculative.backends).
TARGET_PLUGINS = ("vllm", "tensorrt_llm", "llamacpp", "tgi")
# Targets a pair may name but that always decode plainly, with the reason shown (reference §2.5):
# TGI takes no token-id prompts, and its prompt scores cost its prefix cache.
PLAIN_TARGETS = {"tgi": "TGI takes no token-id prompts and scores a prompt only with its prefix cache "
                        "off (reference §2.5): plain decoding, until a measurement shows a gain"}
DRAFT_PLUGINS = ("llamacpp", "vllm", "ollama")


class SpeculativeConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A route's draft/target pair. `min_speedup`: below this predicted speedup the request decodes
    plainly on the target (re-trying a short draft every `reprobe_tokens`); `max_target_waiting`: the
    target's own queue (requests waiting, from its metrics) at which speculation stops for new
    requests, since a compute-bound target loses more to verification than it gains."""

    target: str
    draft: str = NGRAM
    k: int | Literal["auto"] = "auto"
    max_k: int = 8
    min_speedup: float = 1.05
    reprobe_tokens: int = 32
    max_target_waiting: float | None = 4.0
    # The target's end-of-generation ids, for servers that never name the id they stopped on
    # (trtllm-serve drops it from the answer; Triton needs `end_id` to stop at all). vLLM and
    # llama.cpp targets learn theirs from their answers.
    eos_ids: list[int] = msgspec.field(default_factory=list)
    # vLLM targets: verify sequences shorter than this with prompt_logprobs (one prompt; vLLM then skips
    # its prefix cache and recomputes it) instead of a batch of k+1 prefixes; 0 = always the batch.
    prompt_logprobs_below: int = 0


def speculative_problems(
    prefix: str,
    config: SpeculativeConfig,
    route_backends: list[str],
    plugins: Mapping[str, str],
) -> list[str]:
    """Problems with one route's `speculative` section, each `path: what is wrong`; `plugins` maps
    each declared backend name to its plugin."""
    problems: list[str] = []
    where = f"{prefix}.speculative"
    target_plugin = plugins.get(config.target)
    if target_plugin is None:
        problems.append(f"{where}.target: unknown backend '{config.target}'")
    elif target_plugin not in TARGET_PLUGINS:
        problems.append(f"{where}.target: a '{target_plugin}' backend cannot verify drafts "
                        f"(targets: {', '.join(TARGET_PLUGINS)} backends)")
    elif config.target not in route_backends:
        problems.append(f"{where}.target: '{config.target}' must be one of the route's backends "
                        "(they serve the requests that cannot speculate)")
    if config.draft != NGRAM:
        draft_plugin = plugins.get(config.draft)
        if draft_plugin is None:
            problems.append(f"{where}.draft: unknown backend '{config.draft}' (or `{NGRAM}`)")
        elif draft_plugin not in DRAFT_PLUGINS:
            problems.append(f"{where}.draft: a '{draft_plugin}' backend cannot draft "
                            f"(drafts: {', '.join(DRAFT_PLUGINS)} backends, or `{NGRAM}`)")
        elif config.draft == config.target:
            problems.append(f"{where}.draft: the target cannot draft for itself; use `{NGRAM}` or another backend")
    if target_plugin == "tensorrt_llm" and plugins.get(config.draft) not in ("llamacpp", "vllm"):
        # TensorRT-LLM serves ids but no tokenizer route: the draft's tokenizer must render the chat.
        problems.append(f"{where}.draft: a tensorrt_llm target needs a llamacpp or vllm draft backend, whose "
                        "tokenizer renders the chat (trtllm-serve and Triton serve no /tokenize)")
    if not 1 <= config.max_k <= 32:
        problems.append(f"{where}.max_k: must be between 1 and 32")
    if config.k != "auto" and not 1 <= config.k <= config.max_k:
        problems.append(f"{where}.k: must be `auto` or between 1 and max_k ({config.max_k})")
    if not 0 < config.min_speedup < 10:
        problems.append(f"{where}.min_speedup: must be between 0 and 10")
    if config.reprobe_tokens < 1:
        problems.append(f"{where}.reprobe_tokens: must be at least 1")
    if config.prompt_logprobs_below < 0:
        problems.append(f"{where}.prompt_logprobs_below: must not be negative")
    elif config.prompt_logprobs_below and target_plugin not in (None, "vllm"):
        problems.append(f"{where}.prompt_logprobs_below: only a vllm target answers prompt_logprobs")
    if any(i < 0 for i in config.eos_ids):
        problems.append(f"{where}.eos_ids: token ids are not negative")
    if config.max_target_waiting is not None and config.max_target_waiting < 0:
        problems.append(f"{where}.max_target_waiting: must not be negative")
    return problems
