"""`gateway serve | check-config | backends | cache | experiments (list | report NAME)`."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

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
    url = args.url or _admin_url(config)
    report = _fetch_report(url)
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


def _admin_url(config: GatewayConfig, path: str = "/admin/backends") -> str:
    """Where the gateway of `config` serves `path` (a wildcard host is reached on loopback)."""
    host = config.server.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{config.server.port}{path}"


def admin_request(url: str, method: str = "GET") -> Any:
    """A request to the running gateway's admin API, with `$GATEWAY_ADMIN_KEY` as its bearer key when set
    (a gateway with `auth` configured answers /admin/* only to an admin key)."""
    import urllib.request

    request = urllib.request.Request(url, method=method)
    key = os.environ.get("GATEWAY_ADMIN_KEY")
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    return request


def cmd_keys(args: argparse.Namespace) -> int:
    """`keys new`: a fresh random key and its config lines; `keys hash`: a key's digest (read from stdin)."""
    import secrets

    from gateway.auth.keys import key_digest

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


def _fetch_report(url: str) -> dict[str, Any] | None:
    """The running gateway's report, or None when nothing answers there."""
    import urllib.error
    import urllib.request

    import msgspec

    try:
        with urllib.request.urlopen(admin_request(url), timeout=2.0) as response:
            report: dict[str, Any] = msgspec.json.decode(response.read())
            return report
    except (urllib.error.URLError, OSError, msgspec.DecodeError):
        return None


def cmd_cache(args: argparse.Namespace) -> int:
    """`cache stats`: the running gateway's cache table; `cache clear`: drop entries through it."""
    import urllib.error
    import urllib.parse
    import urllib.request

    import msgspec

    try:
        config = _load(args.config)
    except (ConfigError, PluginError) as err:
        print(err, file=sys.stderr)
        return 1
    url = args.url or _admin_url(config, "/admin/cache")
    if args.action == "stats":
        stats = _fetch_report(url)
        if stats is None:
            print(f"no gateway answering at {url}: start it, or pass --url", file=sys.stderr)
            return 1
        from gateway.cache.report import format_cache_stats

        print(f"response cache of the gateway at {url}:")
        print(format_cache_stats(stats))
        return 0
    query = urllib.parse.urlencode({k: v for k, v in (("model", args.model), ("tenant", args.tenant)) if v})
    request = admin_request(url + (f"?{query}" if query else ""), method="DELETE")
    try:
        with urllib.request.urlopen(request, timeout=60.0) as response:
            result = msgspec.json.decode(response.read())
    except urllib.error.HTTPError as err:
        print(f"error: {err.code} {err.read().decode(errors='replace')}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as err:
        print(f"no gateway answering at {url}: {err}", file=sys.stderr)
        return 1
    scope = " and ".join(f"{k} {v}" for k, v in (("model", args.model), ("tenant", args.tenant)) if v) or "all"
    print(f"deleted {result['deleted']} cached answer(s) ({scope})")
    return 0


class _AdminError(Exception):
    """A request to the gateway's admin API failed; the message says why, for the terminal."""


def _admin_get(url: str) -> Any:
    """GET `url` from the running gateway and decode its JSON; `_AdminError` when that fails."""
    import urllib.error
    import urllib.request

    import msgspec

    try:
        with urllib.request.urlopen(admin_request(url), timeout=10.0) as response:
            return msgspec.json.decode(response.read())
    except urllib.error.HTTPError as err:
        body = err.read()
        try:
            # An OpenAI-style error body: {"error": {"message": ...}}.
            message = msgspec.json.decode(body)["error"]["message"]
        except (msgspec.DecodeError, KeyError, TypeError):
            message = body.decode(errors="replace").strip() or err.reason
        raise _AdminError(f"{err.code}: {message}") from err
    except (urllib.error.URLError, OSError) as err:
        raise _AdminError(f"no gateway answering at {url}: start it, or pass --url ({err})") from err
    except msgspec.DecodeError as err:
        raise _AdminError(f"{url} did not answer with JSON: {err}") from err


def _experiments_url(args: argparse.Namespace) -> str:
    """The gateway's /admin/experiments URL: from --url (the gateway's base URL), else from the config."""
    if args.url:
        base = args.url.rstrip("/")
        # Accept the endpoint itself too, as `cache --url` takes its endpoint.
        return base if base.endswith("/admin/experiments") else base + "/admin/experiments"
    return _admin_url(_load(args.config), "/admin/experiments")


def cmd_experiments(args: argparse.Namespace) -> int:
    """`experiments list`: the running gateway's experiments; `experiments report NAME`: one's report."""
    import urllib.parse

    import msgspec

    try:
        url = _experiments_url(args)
    except (ConfigError, PluginError) as err:
        print(err, file=sys.stderr)
        return 1
    if args.action == "list":
        try:
            listing = _admin_get(url)
        except _AdminError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        experiments = listing.get("experiments") or []
        if not experiments:
            print(f"no experiments on the gateway at {url}")
            return 0
        print(f"{'name':<28} {'kind':<7} {'route':<24} state")
        for exp in experiments:
            stopped = exp.get("stopped")
            state = (f"stopped, serving {stopped.get('serve')}" if isinstance(stopped, dict)
                     else "stopped" if stopped else "active" if exp.get("active") else "inactive")
            print(f"{exp.get('name', '?'):<28} {exp.get('kind', '?'):<7} {exp.get('route', '?'):<24} {state}")
        return 0
    try:
        report = _admin_get(f"{url}/{urllib.parse.quote(args.name, safe='')}")
    except _AdminError as err:
        print(f"error: experiment {args.name!r}: {err}", file=sys.stderr)
        return 1
    if args.json:
        print(msgspec.json.format(msgspec.json.encode(report), indent=2).decode())
    else:
        from gateway.experiments.report_table import format_report

        print(format_report(report))
    if args.plot:
        from gateway.experiments.plot import PlotUnavailable, plot_report

        try:
            plot_report(report, args.plot)
        except PlotUnavailable as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        # On stderr with --json, so stdout stays one JSON document.
        print(f"plot written to {args.plot}", file=sys.stderr if args.json else sys.stdout)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from gateway.observability import configure_logging

    configure_logging(args.log_level)
    try:
        config = _load(args.config)
    except (ConfigError, PluginError) as err:
        print(err, file=sys.stderr)
        return 1
    host = args.host or config.server.host
    port = args.port if args.port is not None else config.server.port
    print(f"gateway: serving {args.config} on http://{host}:{port} ({args.server})", file=sys.stderr, flush=True)
    if args.server == "granian":
        from granian import Granian  # optional extra: pip install '.[granian]'
        from granian.constants import Interfaces, Loops

        os.environ["GATEWAY_CONFIG"] = str(Path(args.config).resolve())
        Granian(
            "gateway.app:app_from_env", factory=True, address=host, port=port, interface=Interfaces.ASGI,
            workers=1, loop=Loops.uvloop, log_level=args.log_level,
        ).serve()
        return 0
    import uvicorn

    from gateway.app import build_state, create_app

    app = create_app(build_state(args.config))
    uvicorn.run(
        app, host=host, port=port, loop="uvloop", http="httptools", lifespan="on",
        access_log=False, log_level=args.log_level, timeout_graceful_shutdown=10,
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="OpenAI-compatible gateway for self-hosted LLMs")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", default=_default_config(), help="YAML config (default: %(default)s)")
    serve.add_argument("--host", default=None, help="overrides server.host")
    serve.add_argument("--port", type=int, default=None, help="overrides server.port")
    serve.add_argument("--server", choices=("uvicorn", "granian"), default="uvicorn",
                       help="ASGI server (default: %(default)s; see README for the measurement)")
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
    keys.add_argument("action", choices=("new", "hash"))
    keys.add_argument("--name", default=None, help="new: the key's name in the printed config line")
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
