"""What both emulators share: the fake model's generation and the faults raised before an answer.

The generic parts live in plugins/emulation/openai_wire.py (the vLLM and llama.cpp emulators use
them too); they are re-exported here under the names the TensorRT-LLM emulators import.
"""

from __future__ import annotations

from plugins.emulation.openai_wire import ErrorResponder, cut, fault_before_answer, generate

__all__ = ["ErrorResponder", "cut", "fault_before_answer", "generate"]
