"""`python -m plugins.vllm.emulator --port P [--served-model-name N] [--max-model-len L] [knobs]`."""

from __future__ import annotations

import argparse

from plugins.emulation import EmulatorRuntime, add_knob_arguments, knobs_from_args, serve
from plugins.vllm.emulator.app import ServedModel, build_app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m plugins.vllm.emulator", description=__doc__)
    add_knob_arguments(parser)
    # `vllm serve`'s flags of the same names.
    parser.add_argument("--served-model-name", default=ServedModel.name)
    parser.add_argument("--model", default=ServedModel.root, help="the model path /v1/models reports as root")
    parser.add_argument("--max-model-len", type=int, default=ServedModel.max_model_len)
    args = parser.parse_args(argv)
    served = ServedModel(name=args.served_model_name, root=args.model, max_model_len=args.max_model_len)
    # vLLM aborts a request whose client hung up; a short shutdown keeps a `hang` fault from holding SIGTERM.
    serve(build_app(EmulatorRuntime(knobs_from_args(args)), served), args.host, args.port, "vLLM")


if __name__ == "__main__":
    main()
