"""Shared machinery for the server emulators kept beside each plugin.

An emulator is a test double for one inference server: it speaks that server's wire
protocol (routes, fields, framing, error bodies) and fakes the model. What every emulator
needs is here, so each one is only its protocol: a deterministic fake model, pacing (time
to first token, time per token), a concurrency limit with a queue, faults, and a control
endpoint so a test can change the knobs of a running emulator.
"""

from plugins.emulation.knobs import Fault, Knobs
from plugins.emulation.model import FakeModel, Generation
from plugins.emulation.runtime import EmulatorRuntime, QueueFull, add_knob_arguments, knobs_from_args, serve

__all__ = [
    "EmulatorRuntime",
    "FakeModel",
    "Fault",
    "Generation",
    "Knobs",
    "QueueFull",
    "add_knob_arguments",
    "knobs_from_args",
    "serve",
]
