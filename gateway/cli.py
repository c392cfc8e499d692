"""`gateway serve | check-config | backends | cache | experiments (list | report NAME)`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gateway.cli_admin import admin_url, cmd_cache, cmd_experiments, fetch_report, keys_admin
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.plugins import PluginError, load_backend_registry

DEFAULT_CONFIG = "configs/local.yaml"


def _default_config() -> str:
    """$GATEWAY_CONFIG, else configs/local.yaml here, else the one beside the installed sources."""
    if os.environ.get("GATEWAY_CONFIG"):
        return os.environ["GATEWAY_CONFIG"]
    if Path(DEFAULT_CONFIG).is_file():
        return DEFAULT_CONFIG
    bundled = Path(__file__).resolve().parent.parent / DEFAULT_CONFIG
    return str(bundled) if bundled.is_file() else DEFAULT_CONFIG


def _load(path: str) -> GatewayConfig:
    registry = load_backend_registry()
    return load_config(path, validators=registry.validators())


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        config = _load(args.config)
    except ConfigError as err:
        print(f"{args.config}: {len(err.problems)} problem(s)", file=sys.stderr)
        for problem in err.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    except PluginError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"{args.config}: OK ({len(config.backends)} backend(s), {len(config.routes)} route(s))")
    return 0


def cmd_backends(args: argparse.Namespace) -> int:
    """Installed backend types, and with --config the configured backends and their health."""
    registry = load_backend_registry()
    print("backend types:")
    for name in sorted(registry.types):
        factory = registry.types[name]
        print(f"  {name:<16} {factory.__module__}.{factory.__qualname__}  (plugin {registry.sources[name]})")
    for name, why in sorted(registry.failures.items()):
        print(f"  {name:<16} FAILED TO LOAD: {why}")
    if not args.config:
        return 1 if registry.failures else 0
    try:
        config = load_config(args.config, validators=registry.validators())
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 1
    url = args.url or admin_url(config)
    report = fetch_report(url)
    if report is not None:
        from gateway.routing.report import format_table

        print(f"live routing state from {url}:")
        print(format_table(report))
        return 0
    print(f"no gateway answering at {url}; probing the configured backends directly:")
    from gateway.state import GatewayState

    config_dir = Path(args.config).resolve().parent

    async def probe() -> list[tuple[str, str, str, str]]:
        state = GatewayState(config, registry, config_dir=config_dir)
        rows = []
        try:
            for backend in state.backends.values():
                managed = backend.config.launch is not None
                healthy = "managed (not started)" if managed else ("healthy" if await backend.health() else "UNHEALTHY")
                rows.append((backend.name, backend.plugin, backend.config.model, healthy))
        finally:
            await state.upstream.aclose()
        return rows

    print("configured backends:")
    for name, plugin, model, health in asyncio.run(probe()):
        print(f"  {name:<16} {plugin:<14} {model:<24} {health}")
    return 0


def cmd_keys(args: argparse.Namespace) -> int:
    """`keys new`: a fresh random key and its config lines; `keys hash`: a key's digest (read from stdin)."""
    import secrets

    from gateway.auth.keys import key_digest

    if args.action in ("add", "revoke", "list"):
        return keys_admin(args)
    if args.action == "hash":
        key = sys.stdin.readline().strip()
        if not key:
            print("error: give the key on standard input (echo -n \"$KEY\" | gateway keys hash)", file=sys.stderr)
            return 1
        print(key_digest(key))
        return 0
    key = "gw-" + secrets.token_urlsafe(32)
    print(f"key (shown once; give it to the caller): {key}", file=sys.stderr)
    name = args.name or "key"
    print(f"    - {{name: {name}, sha256: {key_digest(key)}}}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.observability import configure_logging, json_log_config

    configure_logging(args.log_level)
    try:
        config = _load(args.config)
    except (ConfigError, PluginError) as err:
        print(err, file=sys.stderr)
        return 1
    if config.logging.format == "json":
        configure_logging(args.log_level, "json")  # the format is known once the config is read
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    workers = args.workers
    if workers < 1:
        print("error: --workers must be 1 or more", file=sys.stderr)
        return 1
    launched = [b.name for b in config.backends if b.launch is not None]
    if workers > 1 and launched:
        # Each worker is a process of its own: each would launch (and own) its own copy of the server.
        print(f"error: --workers {workers} with backends the gateway launches itself ({', '.join(launched)}): "
              "every worker would start its own server. Run those servers separately and give their `url`, "
              "or serve with one worker.", file=sys.stderr)
        return 1
    serving = f"serving {args.config} on http://{host}:{port} ({args.server}, {workers} worker(s))"
    if config.logging.format == "json":
        logging.getLogger("gateway").info("%s", serving)  # a log shipper reads only JSON lines
    else:
        print(f"gateway: {serving}", file=sys.stderr, flush=True)
    config_path = str(Path(args.config).absolute())  # symlinks followed on every read (ConfigMap volumes)
    if args.server == "granian":
        from granian import Granian  # optional extra: pip install '.[granian]'
        from granian.constants import Interfaces, Loops

        os.environ["GATEWAY_CONFIG"] = config_path
        # granian sets logging up in each worker from this dict: JSON there too when the config asks.
        log_dictconfig = json_log_config(args.log_level) if config.logging.format == "json" else None
        with _shared_metrics_dir() if workers > 1 else contextlib.nullcontext():
            Granian(
                "gateway.app:app_from_env", factory=True, address=host, port=port, interface=Interfaces.ASGI,
                workers=workers, loop=Loops.uvloop, log_level=args.log_level, log_dictconfig=log_dictconfig,
            ).serve()
        return 0
    import uvicorn

    options: dict[str, Any] = {
        "host": host, "port": port, "loop": "uvloop", "http": "httptools", "lifespan": "on", "access_log": False,
        "log_level": args.log_level,
        # Open requests (streams included) finish for up to drain_s after SIGTERM, then are cut.
        "timeout_graceful_shutdown": config.server.drain_s,
    }
    if config.logging.format == "json":  # uvicorn sets logging up in each worker: JSON there too
        options["log_config"] = json_log_config(args.log_level)
    if workers > 1:
        # Worker processes import the app by name; each builds its own state from $GATEWAY_CONFIG.
        # SIGHUP to this (parent) process replaces the workers one by one, each new one started and
        # ready before an old one drains: a config with problems never gets a worker up, so the old
        # ones keep serving.
        os.environ["GATEWAY_CONFIG"] = config_path
        with _shared_metrics_dir():
            uvicorn.run("gateway.app:app_from_env", factory=True, workers=workers, **options)
        return 0

    from gateway.app import build_state, create_app

    registry = load_backend_registry()
    app = create_app(build_state(config_path, registry), config_path=config_path, registry=registry,
                     handle_signals=True)
    uvicorn.run(app, **options)
    return 0


@contextlib.contextmanager
def _shared_metrics_dir() -> Iterator[None]:
    """Where the workers publish their metrics, so a scrape of any one answers for all of them."""
    import shutil
    import tempfile

    from gateway.ops.worker_metrics import ENV

    directory = tempfile.mkdtemp(prefix="gateway-metrics-")
    os.environ[ENV] = directory
    try:
        yield
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="OpenAI-compatible gateway for self-hosted LLMs")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", default=_default_config(), help="YAML config (default: %(default)s)")
    serve.add_argument("--host", default=None, help="overrides server.host")
    serve.add_argument("--port", type=int, default=None, help="overrides server.port")
    serve.add_argument("--server", choices=("uvicorn", "granian"), default="uvicorn",
                       help="ASGI server (default: %(default)s; see README for the measurement)")
    serve.add_argument("--workers", type=int, default=1,
                       help="worker processes sharing the port (default: %(default)s); give them a Redis "
                       "(`redis.url`) so routing state, cache and limits are shared")
    serve.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    serve.set_defaults(func=cmd_serve)

    check = sub.add_parser("check-config", help="validate a config file and list every problem")
    check.add_argument("config")
    check.set_defaults(func=cmd_check_config)

    backends = sub.add_parser(
        "backends", help="list backend types and, with --config, the backends' live routing state (from the "
        "running gateway) or their health")
    backends.add_argument("--config", default=None)
    backends.add_argument("--url", default=None, help="the gateway's /admin/backends URL (default: from the "
                          "config's server.host and server.port)")
    backends.set_defaults(func=cmd_backends)

    cache = sub.add_parser("cache", help="the response cache of a running gateway: stats, or clear entries")
    cache.add_argument("action", choices=("stats", "clear"))
    cache.add_argument("--config", default=_default_config(), help="YAML config (default: %(default)s)")
    cache.add_argument("--url", default=None, help="the gateway's /admin/cache URL (default: from the config)")
    cache.add_argument("--model", default=None, help="clear: only this route model's entries")
    cache.add_argument("--tenant", default=None, help="clear: only this tenant's entries (its metric label)")
    cache.set_defaults(func=cmd_cache)

    keys = sub.add_parser("keys", help="API keys: make a new one (prints its config line), or hash one for the "
                          "config (auth.keys[].sha256, auth.admin_keys)")
    keys.add_argument("action", choices=("new", "hash", "add", "revoke", "list"),
                      help="new/hash: for keys in the config file; add/revoke/list: keys in Redis, through the "
                      "running gateway's /admin/keys (auth.store: redis; sends $GATEWAY_ADMIN_KEY)")
    keys.add_argument("--name", default=None, help="new: the key's name in the printed config line; add/revoke: "
                      "the key's name")
    keys.add_argument("--tenant", default=None, help="add: the tenant its requests count to (default: its name)")
    keys.add_argument("--models", default=None, help="add: route models it may call, comma-separated globs "
                      "(default: all)")
    keys.add_argument("--config", default=_default_config(), help="YAML config (default: %(default)s)")
    keys.add_argument("--url", default=None, help="the gateway's base URL (default: from the config)")
    keys.set_defaults(func=cmd_keys)

    experiments = sub.add_parser("experiments", help="A/B and shadow experiments of a running gateway")
    exp_sub = experiments.add_subparsers(dest="action", required=True)
    exp_list = exp_sub.add_parser("list", help="every experiment: name, kind, route, state")
    exp_report = exp_sub.add_parser("report", help="one experiment's arms, comparisons and verdict")
    exp_report.add_argument("name", help="the experiment's name")
    exp_report.add_argument("--plot", default=None, metavar="PNG",
                            help="also write a PNG of the latency distributions and the running estimate "
                            "(needs matplotlib)")
    exp_report.add_argument("--json", action="store_true", help="print the report as JSON instead of tables")
    for exp_parser in (exp_list, exp_report):
        exp_parser.add_argument("--config", default=_default_config(), help="YAML config (default: %(default)s)")
        exp_parser.add_argument("--url", default=None, help="the gateway's base URL (default: from the config's "
                                "server.host and server.port)")
        exp_parser.set_defaults(func=cmd_experiments)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
