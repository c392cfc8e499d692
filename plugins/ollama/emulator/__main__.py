"""`python -m plugins.ollama.emulator --port P [--models a,b] [--ttft-ms ..] [--fault ..]`."""

from __future__ import annotations

import argparse

from plugins.emulation import add_knob_arguments, knobs_from_args, serve
from plugins.ollama.emulator.app import DEFAULT_VERSION, OllamaEmulator


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m plugins.ollama.emulator", description=__doc__)
    add_knob_arguments(parser)
    parser.add_argument("--models", default="llama3.2,all-minilm",
                        help="comma-separated models the server has pulled (default: %(default)s)")
    parser.add_argument("--num-ctx", type=int, default=4096, help="context length when a request sets none")
    parser.add_argument("--version", dest="server_version", default=DEFAULT_VERSION,
                        help="what GET /api/version reports")
    args = parser.parse_args(argv)
    models = [m for m in (part.strip() for part in args.models.split(",")) if m]
    emulator = OllamaEmulator(knobs_from_args(args), models=models, num_ctx=args.num_ctx,
                              version=args.server_version)
    # Ollama stops a generation when its client hangs up (the request context is cancelled,
    # server/routes.go), and a hanging fault must not hold up SIGTERM.
    serve(emulator.app(), args.host, args.port, "Ollama", shutdown_timeout=1.0, handler_cancellation=True)


if __name__ == "__main__":
    main()
