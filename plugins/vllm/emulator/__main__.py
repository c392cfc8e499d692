"""`python -m plugins.vllm.emulator --port P [--served-model-name N] [--max-model-len L] [knobs]`."""

from __future__ import annotations

import argparse

from plugins.emulation import EmulatorRuntime, add_knob_arguments, knobs_from_args, serve
from plugins.vllm.emulator.app import ServedModel, build_app
from plugins.vllm.emulator.token_model import TokenKnobs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m plugins.vllm.emulator", description=__doc__)
    add_knob_arguments(parser)
    # `vllm serve`'s flags of the same names.
    parser.add_argument("--served-model-name", default=ServedModel.name)
    parser.add_argument("--model", default=ServedModel.root, help="the model path /v1/models reports as root")
    parser.add_argument("--max-model-len", type=int, default=ServedModel.max_model_len)
    # The token-id model (token-id prompts on /v1/completions) and its GPU-like costs.
    defaults = TokenKnobs()
    parser.add_argument("--edit-rate", type=float, default=defaults.edit_rate,
                        help="share of positions where the token model departs from what it copies")
    parser.add_argument("--eos-token-id", type=int, default=defaults.eos_token_id)
    parser.add_argument("--rtt-ms", type=float, default=defaults.rtt_ms, help="per call (token-id prompts)")
    parser.add_argument("--decode-ms", type=float, default=defaults.decode_ms, help="per generated token")
    parser.add_argument("--verify-token-ms", type=float, default=defaults.verify_token_ms,
                        help="per extra sequence of a batched call, per step")
    args = parser.parse_args(argv)
    served = ServedModel(name=args.served_model_name, root=args.model, max_model_len=args.max_model_len)
    token_knobs = TokenKnobs(edit_rate=args.edit_rate, eos_token_id=args.eos_token_id, rtt_ms=args.rtt_ms,
                             decode_ms=args.decode_ms, verify_token_ms=args.verify_token_ms)
    # vLLM aborts a request whose client hung up; a short shutdown keeps a `hang` fault from holding SIGTERM.
    serve(build_app(EmulatorRuntime(knobs_from_args(args)), served, token_knobs), args.host, args.port, "vLLM")


if __name__ == "__main__":
    main()
