"""The CLI commands that talk to a running gateway's admin API: `cache`, `experiments`, `keys add |
revoke | list`, and the live half of `backends`. Each sends `$GATEWAY_ADMIN_KEY` as its bearer key
when it is set (a gateway with `auth` answers /admin/* only to an admin key)."""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable
from typing import Any

from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.plugins import PluginError, load_backend_registry


def _load(path: str) -> GatewayConfig:
    registry = load_backend_registry()
    return load_config(path, validators=registry.validators())


def admin_url(config: GatewayConfig, path: str = "/admin/backends") -> str:
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


def _admin_command(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """`run`, with a config that does not load or an admin call that fails printed as one line on
    stderr and exit status 1."""

    @functools.wraps(run)
    def command(args: argparse.Namespace) -> int:
        try:
            return run(args)
        except (ConfigError, PluginError) as err:
            print(err, file=sys.stderr)
        except _AdminError as err:
            print(f"error: {err}", file=sys.stderr)
        return 1

    return command


@_admin_command
def keys_admin(args: argparse.Namespace) -> int:
    """`keys add | revoke | list` through the running gateway's /admin/keys (`auth.store: redis`)."""
    import urllib.parse

    import msgspec

    url = _endpoint_url(args, "/admin/keys")
    if args.action in ("add", "revoke") and not args.name:
        raise _AdminError(f"keys {args.action} needs --name")
    if args.action == "list":
        listing = _admin_get(url)
        print(f"{'name':<24} {'tenant':<20} {'source':<7} {'revoked':<8} models")
        for key in listing.get("keys", []):
            print(f"{key['name']:<24} {key['tenant']:<20} {key['source']:<7} {key['revoked']!s:<8} "
                  f"{','.join(key['models'])}")
        return 0
    if args.action == "add":
        models = [m.strip() for m in (args.models or "*").split(",") if m.strip()]
        payload = msgspec.json.encode({"name": args.name, "tenant": args.tenant, "models": models})
        request = admin_request(url, method="POST")
        request.data = payload
        request.add_header("Content-Type", "application/json")
    else:
        request = admin_request(f"{url}/{urllib.parse.quote(args.name, safe='')}", method="DELETE")
    answer = _admin_call(request)
    if args.action == "add":
        print(f"key (shown once; give it to the caller): {answer['key']}", file=sys.stderr)
        print(answer["key"])
    else:
        print(f"revoked {answer['revoked']} (every replica refuses it within {answer['refresh_s']}s)")
    return 0


def fetch_report(url: str) -> dict[str, Any] | None:
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


@_admin_command
def cmd_cache(args: argparse.Namespace) -> int:
    """`cache stats`: the running gateway's cache table; `cache clear`: drop entries through it."""
    import urllib.parse

    url = args.url or admin_url(_load(args.config), "/admin/cache")
    if args.action == "stats":
        stats = fetch_report(url)
        if stats is None:
            raise _AdminError(f"no gateway answering at {url}: start it, or pass --url")
        from gateway.cache.report import format_cache_stats

        print(f"response cache of the gateway at {url}:")
        print(format_cache_stats(stats))
        return 0
    query = urllib.parse.urlencode({k: v for k, v in (("model", args.model), ("tenant", args.tenant)) if v})
    result = _admin_call(admin_request(url + (f"?{query}" if query else ""), method="DELETE"), timeout_s=60.0)
    scope = " and ".join(f"{k} {v}" for k, v in (("model", args.model), ("tenant", args.tenant)) if v) or "all"
    print(f"deleted {result['deleted']} cached answer(s) ({scope})")
    return 0


class _AdminError(Exception):
    """A request to the gateway's admin API failed; the message says why, for the terminal."""


def _admin_get(url: str) -> Any:
    """GET `url` from the running gateway and decode its JSON; `_AdminError` when that fails."""
    return _admin_call(admin_request(url))


def _admin_call(request: Any, *, timeout_s: float = 10.0) -> Any:
    """Send `request` (a urllib Request) to the running gateway and decode its JSON answer; `_AdminError`
    naming the gateway's own error message when that fails."""
    import urllib.error
    import urllib.request

    import msgspec

    url = request.full_url
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
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


def _endpoint_url(args: argparse.Namespace, path: str) -> str:
    """The gateway's admin endpoint `path`: from --url (the gateway's base URL, or the endpoint itself, as
    `cache --url` takes its endpoint), else from the config's server.host and server.port."""
    if args.url:
        base = args.url.rstrip("/")
        return base if base.endswith(path) else base + path
    return admin_url(_load(args.config), path)


@_admin_command
def cmd_experiments(args: argparse.Namespace) -> int:
    """`experiments list`: the running gateway's experiments; `experiments report NAME`: one's report."""
    import urllib.parse

    import msgspec

    url = _endpoint_url(args, "/admin/experiments")
    if args.action == "list":
        experiments = _admin_get(url).get("experiments") or []
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
        raise _AdminError(f"experiment {args.name!r}: {err}") from err
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
            raise _AdminError(str(err)) from err
        # On stderr with --json, so stdout stays one JSON document.
        print(f"plot written to {args.plot}", file=sys.stderr if args.json else sys.stdout)
    return 0
