"""What both emulators share: the fake model's generation and the faults raised before an answer."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from plugins.emulation import EmulatorRuntime, Fault, Generation
from plugins.emulation.runtime import refuse

ErrorResponder = Callable[[int, str, dict[str, str]], web.Response]


def generate(runtime: EmulatorRuntime, prompt: str, max_tokens: int | None, stop: list[str]) -> Generation:
    """The fake model's reply: it ends on its own (the end token) unless max_tokens or a stop string comes first."""
    natural = runtime.model.generate(prompt, max_tokens=None, stop=stop)
    if max_tokens is not None and len(natural.tokens) > max_tokens:
        return runtime.model.generate(prompt, max_tokens=max_tokens, stop=stop)
    return natural


async def fault_before_answer(request: web.Request, runtime: EmulatorRuntime,
                              error: ErrorResponder) -> web.Response | None:
    """The response for a fault that strikes before any byte of the answer, or None."""
    fault = runtime.knobs.fault
    if fault is Fault.REFUSE:
        refuse(request)
    await runtime.hang_if_asked()
    if fault is Fault.HTTP_500:
        return error(500, "emulated fault: internal server error", {})
    if fault is Fault.HTTP_503:
        return error(503, "emulated fault: server unavailable", {})
    if fault is Fault.HTTP_429:
        return error(429, "emulated fault: too many requests", {"Retry-After": str(runtime.knobs.retry_after_s)})
    return None


def cut(request: web.Request) -> None:
    """Drop the connection mid-answer, as a crashed server would (no end of the chunked body).

    `close()`, not `abort()`: what was already written still goes out first, as it would have
    from a real server that sent it before crashing.
    """
    if request.transport is not None:
        request.transport.close()
