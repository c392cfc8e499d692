"""`python -m plugins.llamacpp.emulator --port P [--alias A] [--ctx-size N] [--parallel N] [knobs]`."""

from __future__ import annotations

import argparse

import msgspec

from plugins.emulation import EmulatorRuntime, add_knob_arguments, knobs_from_args, serve
from plugins.llamacpp.emulator.app import ServerArgs, build_app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m plugins.llamacpp.emulator", description=__doc__)
    add_knob_arguments(parser)
    # llama-server's flags of the same names.
    parser.add_argument("--alias", default=ServerArgs.alias)
    parser.add_argument("--ctx-size", type=int, default=ServerArgs.ctx_size, help="split evenly over the slots")
    parser.add_argument("--parallel", type=int, default=ServerArgs.parallel, help="slots (sequences at once)")
    args = parser.parse_args(argv)
    knobs = knobs_from_args(args)
    if knobs.max_concurrency <= 0:
        # llama-server never runs more requests than it has slots; the rest wait (requests_deferred).
        knobs = msgspec.structs.replace(knobs, max_concurrency=args.parallel)
    server = ServerArgs(alias=args.alias, ctx_size=args.ctx_size, parallel=args.parallel)
    serve(build_app(EmulatorRuntime(knobs), server), args.host, args.port, "llama.cpp")


if __name__ == "__main__":
    main()
