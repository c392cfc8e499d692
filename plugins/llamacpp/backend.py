"""`LlamaCppBackend`: llama.cpp's OpenAI routes plus its native API, optionally self-launched."""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar, Literal

import msgspec

from gateway.backend import BackendContext, BackendLoad, BackendUnavailable, Capabilities
from gateway.config import BackendConfig
from gateway.config_structs import check_struct
from gateway.errors import unsupported_parameter
from gateway.schemas import RequestKind
from gateway.upstream import UpstreamError
from plugins.llamacpp.metrics import parse_load, parse_slots
from plugins.llamacpp.model_path import ModelNotFound, resolve_model
from plugins.llamacpp.split_model import is_split_reference, parse_split_reference
from plugins.llamacpp.supervisor import ManagedProcess
from plugins.openai_compat.backend import OpenAICompatBackend, OpenAICompatOptions
from plugins.openai_compat.errors import http_error, transport_error


class LaunchConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """`launch:`: the gateway starts llama.cpp's server itself and supervises it."""

    model: str  # a GGUF path, or `package:file.gguf` shipped in an installed wheel
    ctx: int = 4096
    threads: int = 2
    parallel: int = 2
    embedding: bool = False
    pooling: Literal["mean", "cls", "last"] = "mean"
    startup_timeout_s: float = 120.0


class LlamaCppOptions(OpenAICompatOptions, forbid_unknown_fields=True, kw_only=True):
    """`options:` of a llamacpp backend."""


# Sampling and control fields llama.cpp reads from OpenAI-style bodies besides OpenAI's own
# (tools/server/server-common.cpp and server-task.cpp, params_from_json_cmpl).
_LLAMACPP_PARAMS = frozenset({
    "top_k", "min_p", "typical_p", "repeat_penalty", "repeat_last_n", "penalize_nl",
    "dynatemp_range", "dynatemp_exponent", "mirostat", "mirostat_tau", "mirostat_eta",
    "xtc_probability", "xtc_threshold", "top_n_sigma", "dry_multiplier", "dry_base",
    "dry_allowed_length", "dry_penalty_last_n", "dry_sequence_breakers", "min_keep",
    "n_predict", "n_keep", "n_probs", "ignore_eos", "grammar", "json_schema", "samplers",
    "cache_prompt", "id_slot", "t_max_predict_ms", "post_sampling_probs", "return_tokens",
    "timings_per_token", "chat_template_kwargs", "reasoning_format", "n_indent",
})


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class LlamaCppBackend(OpenAICompatBackend):
    """llama.cpp's server: OpenAI routes for traffic, native routes for tokens and load."""

    plugin: ClassVar[str] = "llamacpp"
    options_type: ClassVar[type[OpenAICompatOptions]] = LlamaCppOptions
    native_params: ClassVar[frozenset[str]] = _LLAMACPP_PARAMS

    def __init__(self, config: BackendConfig, context: BackendContext) -> None:
        super().__init__(config, context)
        self._config_dir = context.config_dir
        self.launch = msgspec.convert(config.launch, LaunchConfig) if config.launch is not None else None
        self.process: ManagedProcess | None = None
        self.capabilities = Capabilities(
            embeddings=self.options.embeddings or bool(self.launch and self.launch.embedding),
            token_id_prompts=True,
            tokenize=True,
            assistant_prefill=True,
        )

    @classmethod
    def validate_config(cls, config: BackendConfig) -> Iterable[tuple[str, str]]:
        if config.url is None and config.launch is None:
            yield ("url", "required unless `launch` is given")
        yield from check_struct(config.options, cls.options_type, "options")
        if config.launch is not None:
            problems = check_struct(config.launch, LaunchConfig, "launch")
            yield from problems
            if not problems:
                launch = msgspec.convert(config.launch, LaunchConfig)
                if launch.ctx <= 0 or launch.threads <= 0 or launch.parallel <= 0:
                    yield ("launch", "ctx, threads and parallel must be positive")
                if is_split_reference(launch.model):  # a typo shows at check-config, not at start
                    try:
                        parse_split_reference(launch.model)
                    except ModelNotFound as err:
                        yield ("launch.model", str(err))

    # -- parameters -------------------------------------------------------------------------

    def check_params(self, kind: RequestKind, body: dict[str, Any]) -> None:
        # llama.cpp's /v1/completions accepts these and silently ignores them (checked on the
        # xllamacpp 2026.10 build): the output would not be what the client asked for.
        if kind != "completion":
            return
        best_of = body.get("best_of")
        if best_of is not None and (isinstance(best_of, bool) or best_of != 1):
            raise unsupported_parameter("best_of", self.name, self.plugin)
        if body.get("echo") is True:
            raise unsupported_parameter("echo", self.name, self.plugin)
        if body.get("suffix") not in (None, ""):
            raise unsupported_parameter("suffix", self.name, self.plugin)

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        if self.launch is None:
            return
        # A split model is joined on first use (seconds): off the event loop, so other backends start meanwhile.
        model = await asyncio.to_thread(resolve_model, self.launch.model, self._config_dir)
        host, port = "127.0.0.1", None
        if self.config.url is not None:
            from urllib.parse import urlsplit

            parts = urlsplit(self.config.url)
            host, port = parts.hostname or host, parts.port
        if port is None:
            port = _free_port(host)
            self._set_url(f"http://{host}:{port}")
        argv = [
            sys.executable, "-m", "plugins.llamacpp.launcher", "--model", str(model), "--host", host,
            "--port", str(port), "--ctx", str(self.launch.ctx), "--threads", str(self.launch.threads),
            "--parallel", str(self.launch.parallel), "--alias", self.config.model,
        ]
        if self.launch.embedding:
            argv += ["--embedding", "--pooling", self.launch.pooling]
        self.process = ManagedProcess(
            self.name, argv, self.health, startup_timeout_s=self.launch.startup_timeout_s
        )
        await self.process.start()

    async def aclose(self) -> None:
        if self.process is not None:
            await self.process.stop()

    # -- native API -------------------------------------------------------------------------

    async def _native_json(self, path: str, payload: dict[str, Any]) -> Any:
        return msgspec.json.decode(await self._native(path, payload))

    async def tokenize(self, text: str, *, add_special: bool = False) -> list[int]:
        """Token ids of `text` in this server's vocabulary (`POST /tokenize`)."""
        result = await self._native_json("/tokenize", {"content": text, "add_special": add_special})
        return list(result["tokens"])

    async def detokenize(self, tokens: list[int]) -> str:
        """Text of token ids (`POST /detokenize`)."""
        result = await self._native_json("/detokenize", {"tokens": tokens})
        return str(result["content"])

    async def native_completion(self, payload: dict[str, Any]) -> dict[str, Any]:
        """llama.cpp's own `/completion`: token-id prompts, `n_probs`, `cache_prompt`, `id_slot`."""
        payload = {**payload, "stream": False}
        result: dict[str, Any] = await self._native_json("/completion", payload)
        return result

    async def slots(self) -> list[dict[str, Any]]:
        """Per-slot state from `GET /slots`."""
        try:
            status, body = await self.get("/slots")
        except UpstreamError as err:
            raise transport_error(self.name, err) from err
        if status != 200:
            raise http_error(self.name, status, body)
        decoded: list[dict[str, Any]] = msgspec.json.decode(body)
        return decoded

    async def load(self) -> BackendLoad:
        """Requests processing / deferred from `/metrics`, slots and KV-cache use from `/slots`."""
        try:
            (metrics_status, metrics), (slots_status, slots) = await asyncio.gather(
                self.get("/metrics"), self.get("/slots")
            )
        except UpstreamError as err:
            raise BackendUnavailable(self.name, str(err)) from err
        load = parse_load(metrics.decode("utf-8", "replace")) if metrics_status == 200 else BackendLoad()
        if slots_status == 200:
            count, processing, usage = parse_slots(msgspec.json.decode(slots))
            load.capacity, load.kv_cache_usage = count, usage
            if load.running is None:
                load.running = processing
        return load

    def model_file(self) -> Path | None:
        """The GGUF file a managed server runs, for `gateway backends`."""
        if self.launch is None:
            return None
        try:
            return resolve_model(self.launch.model, self._config_dir)
        except ModelNotFound:
            return None
