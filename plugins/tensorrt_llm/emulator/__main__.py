"""`python -m plugins.tensorrt_llm.emulator --port P --mode triton|trtllm_serve [knobs]`."""

from __future__ import annotations

import argparse

from aiohttp import web

from plugins.emulation import EmulatorRuntime, add_knob_arguments, knobs_from_args, serve
from plugins.emulation.runtime import control_routes
from plugins.tensorrt_llm.emulator.triton import TritonEmulator
from plugins.tensorrt_llm.emulator.trtllm_serve import TrtllmServeEmulator


def build_app(mode: str, runtime: EmulatorRuntime, *, model_name: str | None = None, max_seq_len: int = 4096,
              exclude_input_in_output: bool = False) -> web.Application:
    """The emulator of `mode` as an aiohttp application (tests may run it in-process)."""
    app = web.Application()
    if mode == "triton":
        routes = TritonEmulator(runtime, model_name or "ensemble", exclude_input_in_output).routes()
    else:
        routes = TrtllmServeEmulator(runtime, model_name or "TinyLlama-1.1B-Chat-v1.0", max_seq_len).routes()
    app.add_routes(routes + control_routes(runtime))
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m plugins.tensorrt_llm.emulator", description=__doc__)
    add_knob_arguments(parser)
    parser.add_argument("--mode", choices=["trtllm_serve", "triton"], required=True)
    parser.add_argument("--model-name", default=None,
                        help="Triton model to serve (default ensemble) or trtllm-serve's model id")
    parser.add_argument("--max-seq-len", type=int, default=4096, help="trtllm-serve: prompt + max_tokens limit")
    parser.add_argument("--exclude-input-in-output", action="store_true",
                        help="Triton: the tensorrt_llm model's exclude_input_in_output parameter (default false)")
    args = parser.parse_args(argv)
    runtime = EmulatorRuntime(knobs_from_args(args))
    app = build_app(args.mode, runtime, model_name=args.model_name, max_seq_len=args.max_seq_len,
                    exclude_input_in_output=args.exclude_input_in_output)
    # Both servers abort a request whose client hung up (openai_server.py await_disconnected; Triton's
    # request cancellation), and a short shutdown keeps a `hang` fault from holding SIGTERM.
    serve(app, args.host, args.port, f"TensorRT-LLM ({args.mode})", shutdown_timeout=1.0, handler_cancellation=True)


if __name__ == "__main__":
    main()
