"""llama-server's slots: a fixed number of sequences (--parallel), each with its share of the context,
and the `GET /slots` answer that shows what each one holds (server_slot::to_json, as recorded).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


def _params(n_predict: int, stream: bool, temperature: float) -> dict[str, Any]:
    """A slot's sampling parameters: the server's defaults, as the recorded /slots shows them."""
    return {
        "seed": 4294967295, "temperature": temperature, "dynatemp_range": 0.0, "dynatemp_exponent": 1.0,
        "top_k": 40, "top_p": 0.949999988079071, "min_p": 0.05000000074505806, "top_n_sigma": -1.0,
        "xtc_probability": 0.0, "xtc_threshold": 0.10000000149011612, "typical_p": 1.0, "repeat_last_n": 64,
        "repeat_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0, "dry_multiplier": 0.0,
        "dry_base": 1.75, "dry_allowed_length": 2, "dry_penalty_last_n": 64, "mirostat": 0, "mirostat_tau": 5.0,
        "mirostat_eta": 0.10000000149011612, "adaptive_target": -1.0, "adaptive_decay": 0.8999999761581421,
        "max_tokens": n_predict, "n_predict": n_predict, "n_keep": 0, "n_discard": 0, "ignore_eos": False,
        "stream": stream, "n_probs": 0, "min_keep": 0, "chat_format": "Content-only", "reasoning_format": "deepseek",
        "reasoning_in_content": False, "generation_prompt": "",
        "samplers": ["penalties", "dry", "top_n_sigma", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature"],
        "speculative.types": "none", "timings_per_token": False, "post_sampling_probs": False,
        "backend_sampling": False, "lora": [],
    }


@dataclass
class Slot:
    """One sequence of the server's batch: idle, or processing one task."""

    id: int
    n_ctx: int
    busy: bool = False
    id_task: int = -1
    n_prompt_tokens: int = 0
    n_decoded: int = 0
    n_predict: int = -1
    params: dict[str, Any] = field(default_factory=lambda: _params(-1, False, 0.8))

    def to_json(self) -> dict[str, Any]:
        remain = self.n_predict - self.n_decoded if self.busy and self.n_predict >= 0 else -1
        return {
            "id": self.id, "n_ctx": self.n_ctx, "speculative": False, "is_processing": self.busy,
            "id_task": self.id_task, "n_prompt_tokens": self.n_prompt_tokens, "n_prompt_tokens_processed": 0,
            "n_prompt_tokens_cache": 0, "params": self.params,
            "next_token": [{"has_next_token": self.busy, "has_new_line": False, "n_remain": remain,
                            "n_decoded": self.n_decoded}],
        }


class SlotTable:
    """The server's slots; a running request takes the first idle one and keeps its prompt after it ends."""

    def __init__(self, parallel: int, ctx_size: int) -> None:
        self.slots = [Slot(i, ctx_size // parallel) for i in range(parallel)]
        self._tasks = 0

    @property
    def n_ctx(self) -> int:
        return self.slots[0].n_ctx

    def take(self, prompt_tokens: int, n_predict: int, *, stream: bool, temperature: float) -> Slot | None:
        """An idle slot for a request that got through the runtime's queue (None past --parallel)."""
        for slot in self.slots:
            if not slot.busy:
                self._tasks += 1
                slot.busy, slot.id_task, slot.n_prompt_tokens, slot.n_decoded = True, self._tasks, prompt_tokens, 0
                slot.n_predict, slot.params = n_predict, _params(n_predict, stream, temperature)
                return slot
        return None

    def to_json(self) -> list[dict[str, Any]]:
        return [slot.to_json() for slot in self.slots]
