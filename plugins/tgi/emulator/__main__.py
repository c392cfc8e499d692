"""`python -m plugins.tgi.emulator --port P [--ttft-ms ..] [--fault ..] [--max-input-tokens N --max-total-tokens N]`."""

from __future__ import annotations

import argparse

from plugins.emulation import EmulatorRuntime, add_knob_arguments, knobs_from_args, serve
from plugins.tgi.emulator.app import build_app
from plugins.tgi.emulator.server_info import ServerState
from plugins.tgi.emulator.validation import ServerLimits


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m plugins.tgi.emulator", description=__doc__)
    add_knob_arguments(parser)
    # The launcher's flags of the same names (docs/source/reference/launcher.md).
    parser.add_argument("--model-id", default="HuggingFaceTB/SmolLM2-135M-Instruct")
    parser.add_argument("--max-input-tokens", type=int, default=4095)
    parser.add_argument("--max-total-tokens", type=int, default=4096)
    parser.add_argument("--max-stop-sequences", type=int, default=4)
    parser.add_argument("--max-top-n-tokens", type=int, default=5)
    parser.add_argument("--max-best-of", type=int, default=2)
    parser.add_argument("--max-client-batch-size", type=int, default=4)
    parser.add_argument("--enable-prefill-logprobs", action="store_true")
    args = parser.parse_args(argv)
    if args.max_input_tokens >= args.max_total_tokens:
        parser.error("--max-input-tokens must be less than --max-total-tokens (as TGI's launcher requires)")
    knobs = knobs_from_args(args)
    limits = ServerLimits(
        max_input_tokens=args.max_input_tokens, max_total_tokens=args.max_total_tokens,
        max_stop_sequences=args.max_stop_sequences, max_top_n_tokens=args.max_top_n_tokens,
        max_best_of=args.max_best_of, max_client_batch_size=args.max_client_batch_size,
    )
    # TGI's --max-concurrent-requests: admitted = running batch + waiting queue.
    concurrent = knobs.max_concurrency + knobs.max_queue if knobs.max_concurrency > 0 else 128
    state = ServerState(model_id=args.model_id, limits=limits, max_concurrent_requests=concurrent,
                        enable_prefill_logprobs=args.enable_prefill_logprobs)
    # TGI stops generating for a client that hung up; a hung request must not hold SIGTERM for 60 s.
    serve(build_app(EmulatorRuntime(knobs), state), args.host, args.port, "TGI", shutdown_timeout=1.0,
          handler_cancellation=True)


if __name__ == "__main__":
    main()
