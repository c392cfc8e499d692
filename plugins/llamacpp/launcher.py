"""Runs llama.cpp's own C++ HTTP server (from the `xllamacpp` wheel) as a child process.

`python -m plugins.llamacpp.launcher --model FILE --port P ...` serves until SIGTERM. The
gateway runs it as a separate process so the model's threads never contend with the
gateway's event loop for the GIL, and so a crash can be seen and the server restarted.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True, help="path of a GGUF file")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ctx", type=int, default=4096, help="context size shared by all slots")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=2, help="number of slots (concurrent requests)")
    parser.add_argument("--alias", default=None, help="model name the server reports")
    parser.add_argument("--embedding", action="store_true", help="serve /v1/embeddings")
    parser.add_argument("--pooling", choices=("mean", "cls", "last"), default="mean",
                        help="how token vectors become one embedding (OpenAI's API needs one)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import xllamacpp
    except ImportError:
        print("xllamacpp is not installed: pip install 'xllamacpp==2026.10.11549'", file=sys.stderr)
        return 3
    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.hostnames = [args.host]
    params.port = args.port
    params.n_ctx = args.ctx
    params.n_parallel = args.parallel
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.endpoint_metrics = True
    params.endpoint_props = True
    params.endpoint_slots = True
    if args.alias:
        params.model_alias = {args.alias}
    if args.embedding:
        params.embedding = True
        # A generative GGUF has no pooling of its own ("none"), which llama.cpp refuses to
        # serve on /v1/embeddings.
        params.pooling_type = getattr(xllamacpp.llama_pooling_type, f"LLAMA_POOLING_TYPE_{args.pooling.upper()}")
    parent = os.getppid()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server = xllamacpp.Server(params)  # starts serving on its own threads
    print(f"llama.cpp server for {args.model} at {server.listening_address}", file=sys.stderr, flush=True)
    # Exit with the gateway even when it dies without stopping us (SIGKILL, OOM): once our
    # parent is gone we are re-parented, and a model server nobody supervises is a leak.
    while not stop.wait(1.0):
        if os.getppid() != parent:
            print("launcher: parent process gone; stopping", file=sys.stderr, flush=True)
            break
    # Leave at once: the model's threads need no orderly teardown, and a slow one would
    # only delay the supervisor's restart or the gateway's shutdown.
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(main())
