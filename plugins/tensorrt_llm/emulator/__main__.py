"""`python -m plugins.tensorrt_llm.emulator --port P --mode triton|trtllm_serve [knobs]`."""

from __future__ import annotations

import argparse

from aiohttp import web

from plugins.emulation import EmulatorRuntime, add_knob_arguments, knobs_from_args, serve
from plugins.emulation.runtime import control_routes
from plugins.tensorrt_llm.emulator.serve_tokens import ServeTokenCompletions
from plugins.tensorrt_llm.emulator.triton import TritonEmulator
from plugins.tensorrt_llm.emulator.triton_tokens import TritonTokenModel
from plugins.tensorrt_llm.emulator.trtllm_serve import TrtllmServeEmulator
from plugins.vllm.emulator.token_completions import knob_routes
from plugins.vllm.emulator.token_model import TokenKnobs


def build_app(mode: str, runtime: EmulatorRuntime, *, model_name: str | None = None, max_seq_len: int = 4096,
              exclude_input_in_output: bool = False, token_knobs: TokenKnobs | None = None) -> web.Application:
    """The emulator of `mode` as an aiohttp application (tests may run it in-process).

    `token_knobs` drive the token-id model (Triton's `tensorrt_llm` model, trtllm-serve's token-id
    prompts); `/__emulator/knobs` reads and sets them together with the shared knobs.
    """
    app = web.Application()
    tokens: TritonTokenModel | ServeTokenCompletions
    if mode == "triton":
        emulator = TritonEmulator(runtime, model_name or "ensemble", exclude_input_in_output, token_knobs)
        routes, tokens = emulator.routes(), emulator.tokens
    else:
        serve_emulator = TrtllmServeEmulator(runtime, model_name or "TinyLlama-1.1B-Chat-v1.0", max_seq_len,
                                             token_knobs)
        routes, tokens = serve_emulator.routes(), serve_emulator.tokens
    shared = [route for route in control_routes(runtime) if route.path != "/__emulator/knobs"]
    # knob_routes only needs `.knobs` and `.update()`, which both token models have.
    app.add_routes(routes + shared + knob_routes(runtime, tokens))  # type: ignore[arg-type]
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
    # The token-id model (Triton's tensorrt_llm model, trtllm-serve token-id prompts) and its GPU-like costs.
    defaults = TokenKnobs()
    parser.add_argument("--edit-rate", type=float, default=defaults.edit_rate,
                        help="share of positions where the token model departs from what it copies")
    parser.add_argument("--eos-token-id", type=int, default=defaults.eos_token_id)
    parser.add_argument("--rtt-ms", type=float, default=defaults.rtt_ms, help="per call (token-id requests)")
    parser.add_argument("--decode-ms", type=float, default=defaults.decode_ms, help="per forward step")
    parser.add_argument("--verify-token-ms", type=float, default=defaults.verify_token_ms,
                        help="per draft token (Triton) or extra batched prompt (trtllm-serve) in one step")
    args = parser.parse_args(argv)
    runtime = EmulatorRuntime(knobs_from_args(args))
    token_knobs = TokenKnobs(edit_rate=args.edit_rate, eos_token_id=args.eos_token_id, rtt_ms=args.rtt_ms,
                             decode_ms=args.decode_ms, verify_token_ms=args.verify_token_ms)
    app = build_app(args.mode, runtime, model_name=args.model_name, max_seq_len=args.max_seq_len,
                    exclude_input_in_output=args.exclude_input_in_output, token_knobs=token_knobs)
    # Both servers abort a request whose client hung up (openai_server.py await_disconnected; Triton's
    # request cancellation), and a short shutdown keeps a `hang` fault from holding SIGTERM.
    serve(app, args.host, args.port, f"TensorRT-LLM ({args.mode})", shutdown_timeout=1.0, handler_cancellation=True)


if __name__ == "__main__":
    main()
