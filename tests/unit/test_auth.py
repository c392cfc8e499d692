"""API keys (issue 8, item 1): keys stored as digests and mapped to tenants and allowed models, admin
endpoints behind admin keys, OpenAI-style 401/403 errors, keys never echoed or logged."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
import pytest

from gateway.auth.keys import KeyRing, key_digest
from gateway.auth.settings import AuthConfig
from gateway.cli import main as cli_main
from gateway.config import ConfigError, parse_config

from .conftest import running_gateway
from .fakes import BACKEND_MODEL, assert_error_shape, fake_registry

TEAM_A, TEAM_B, REVOKED, ADMIN = "gw-team-a-secret", "gw-team-b-secret", "gw-old-secret", "gw-admin-secret"
CONFIG: dict[str, Any] = {
    "backends": [{"name": "f1", "plugin": "fake", "model": BACKEND_MODEL,
                  "cost": {"input_per_mtok": 1.0, "output_per_mtok": 1.0}}],
    "routes": [{"model": "chat", "backends": ["f1"]}, {"model": "coder-small", "backends": ["f1"]},
               {"model": "secret", "backends": ["f1"]}],
    "auth": {
        "keys": [
            {"name": "team-a", "sha256": key_digest(TEAM_A), "tenant": "acme", "models": ["chat", "coder-*"]},
            {"name": "team-b", "sha256": key_digest(TEAM_B)},
            {"name": "old", "sha256": key_digest(REVOKED), "revoked": True},
        ],
        "admin_keys": [key_digest(ADMIN)],
    },
}
CHAT = {"model": "chat", "messages": [{"role": "user", "content": "hi"}]}


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def error_of(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.content
    error = assert_error_shape(msgspec.json.decode(response.content))
    assert error["code"] == code, error
    return error


@pytest.mark.parametrize(("headers", "code", "words"), [
    ({}, "invalid_api_key", "missing API key"),
    ({"authorization": "Basic Zm9vOmJhcg=="}, "invalid_api_key", "missing API key"),
    (bearer("gw-wrong"), "invalid_api_key", "invalid API key"),
    (bearer(REVOKED), "invalid_api_key", "'old' has been revoked"),
])
async def test_missing_bad_and_revoked_keys_get_a_401_that_never_echoes_the_key(
    headers: dict[str, str], code: str, words: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with running_gateway(CONFIG) as gw:
        response = await gw.client.post("/v1/chat/completions", json=CHAT, headers=headers)
        error = error_of(response, 401, code)
        assert words in error["message"]
        assert gw.backend().calls == []  # refused before anything reached a backend
    for secret in ("gw-wrong", REVOKED, "Zm9vOmJhcg=="):
        assert secret not in response.text and secret not in caplog.text


async def test_a_key_reaches_only_its_models_and_counts_to_its_tenant() -> None:
    async with running_gateway(CONFIG) as gw:
        ok = await gw.client.post("/v1/chat/completions", json=CHAT, headers=bearer(TEAM_A))
        assert ok.status_code == 200
        assert (await gw.client.post("/v1/chat/completions", json={**CHAT, "model": "coder-small"},
                                     headers=bearer(TEAM_A))).status_code == 200
        refused = await gw.client.post("/v1/chat/completions", json={**CHAT, "model": "secret"},
                                       headers=bearer(TEAM_A))
        error = error_of(refused, 403, "model_not_allowed")
        assert error["param"] == "model" and "'team-a' may not use model 'secret'" in error["message"]
        # A key without a models list may use every route.
        assert (await gw.client.post("/v1/chat/completions", json={**CHAT, "model": "secret"},
                                     headers=bearer(TEAM_B))).status_code == 200
        listed = (await gw.client.get("/v1/models", headers=bearer(TEAM_A))).json()
        assert sorted(m["id"] for m in listed["data"]) == ["chat", "coder-small"]
        metrics = (await gw.client.get("/metrics")).text  # open to scrapers
        # Spend is accounted to the key's tenant, never to a label made from the key.
        assert 'gateway_cost_usd_total{backend="f1",route="chat",tenant="acme"}' in metrics
        assert 'route="secret",tenant="team-b"' in metrics and "key-" not in metrics


async def test_admin_endpoints_need_an_admin_key() -> None:
    async with running_gateway(CONFIG) as gw:
        for path in ("/admin/backends", "/admin/cache", "/admin/experiments", "/admin/speculative"):
            error_of(await gw.client.get(path), 401, "invalid_api_key")
            error_of(await gw.client.get(path, headers=bearer("gw-wrong")), 401, "invalid_api_key")
            error_of(await gw.client.get(path, headers=bearer(TEAM_A)), 403, "admin_key_required")
            assert (await gw.client.get(path, headers=bearer(ADMIN))).status_code == 200, path
        error_of(await gw.client.delete("/admin/cache", headers=bearer(TEAM_B)), 403, "admin_key_required")
        assert (await gw.client.get("/health")).status_code == 200
        assert (await gw.client.get("/metrics")).status_code == 200
        error_of(await gw.client.get("/v1/models"), 401, "invalid_api_key")
        assert (await gw.client.get("/v1/models", headers=bearer(ADMIN))).status_code == 200
        error_of(await gw.client.post("/v1/feedback", json={"request_id": "x", "score": 1}), 401, "invalid_api_key")


async def test_without_an_auth_section_everyone_is_served() -> None:
    open_config = {key: value for key, value in CONFIG.items() if key != "auth"}
    async with running_gateway(open_config) as gw:
        assert (await gw.client.post("/v1/chat/completions", json=CHAT)).status_code == 200
        assert (await gw.client.get("/admin/backends")).status_code == 200


def test_keys_compare_by_digest_and_the_ring_answers_each_case() -> None:
    ring = KeyRing(msgspec.convert(CONFIG["auth"], AuthConfig))
    assert ring.authenticate(b"Bearer " + TEAM_A.encode()).tenant == "acme"
    assert ring.authenticate(b"bearer   " + TEAM_B.encode()).tenant == "team-b"  # scheme case, spaces
    ring.authenticate_admin(b"Bearer " + ADMIN.encode())
    with pytest.raises(Exception, match="admin"):
        ring.authenticate_admin(b"Bearer " + TEAM_A.encode())
    assert not KeyRing(None).enabled


class _Stored:
    def __init__(self, name: str, *, revoked: bool = False, models: list[str] | None = None) -> None:
        self.name, self.tenant, self.models, self.revoked = name, f"t-{name}", models or ["*"], revoked


def test_stored_keys_join_the_configured_ones_and_never_override_them() -> None:
    ring = KeyRing(msgspec.convert(CONFIG["auth"], AuthConfig))
    ring.use_stored({key_digest("sk-bot"): _Stored("bot", models=["m1"]),
                     key_digest(TEAM_A): _Stored("hijack"),  # a configured key's digest: the config wins
                     key_digest("sk-dup"): _Stored("team-a")})  # a configured key's name: ignored
    bot = ring.authenticate(b"Bearer sk-bot")
    assert (bot.name, bot.tenant, bot.allows("m1"), bot.allows("m2")) == ("bot", "t-bot", True, False)
    assert ring.authenticate(b"Bearer " + TEAM_A.encode()).tenant == "acme"
    with pytest.raises(Exception, match="invalid API key"):
        ring.authenticate(b"Bearer sk-dup")
    # A later read replaces the earlier one whole: revoked, and a key gone from Redis is gone here.
    ring.use_stored({key_digest("sk-bot"): _Stored("bot", revoked=True)})
    with pytest.raises(Exception, match="revoked"):
        ring.authenticate(b"Bearer sk-bot")
    ring.use_stored({})
    with pytest.raises(Exception, match="invalid API key"):
        ring.authenticate(b"Bearer sk-bot")
    listing = ring.describe()
    assert {k["name"] for k in listing} == {"team-a", "team-b", "old"} and "sha256" not in str(listing)


@pytest.mark.parametrize(("auth", "expected"), [
    ({"keys": [{"name": "a", "sha256": "abc"}]}, "auth.keys[0].sha256: not a SHA-256 hex digest"),
    ({"keys": [{"name": "a", "sha256": key_digest("x")}, {"name": "a", "sha256": key_digest("y")}]},
     "auth.keys[1].name: duplicate key name 'a'"),
    ({"keys": [{"name": "a", "sha256": key_digest("x")}, {"name": "b", "sha256": key_digest("x")}]},
     "auth.keys[1].sha256: the same key is listed twice"),
    ({"keys": [{"name": "a", "sha256": key_digest("x"), "models": []}]}, "auth.keys[0].models: an empty list"),
    ({"admin_keys": ["nope"]}, "auth.admin_keys[0]: not a SHA-256 hex digest"),
    ({}, "auth: no keys and no admin_keys"),
    ({"keys": [{"name": "a", "key": "plain"}]}, "auth.keys[0]"),
    ({"admin_keys": [key_digest("x")], "store": "redis"}, "auth.store: 'redis' needs a redis section"),
    ({"admin_keys": [key_digest("x")], "refresh_s": 0}, "auth.refresh_s: must be positive"),
    ({"admin_keys": [key_digest("x")], "store": "file"}, "auth"),
])
def test_bad_auth_sections_are_refused_with_the_path(auth: dict[str, Any], expected: str) -> None:
    raw = {**{k: v for k, v in CONFIG.items() if k != "auth"}, "auth": auth}
    with pytest.raises(ConfigError) as err:
        parse_config(raw, env={}, validators=fake_registry().validators())
    assert any(p.startswith(expected) for p in err.value.problems), err.value.problems


def test_the_cli_makes_and_hashes_keys(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli_main(["keys", "new", "--name", "team-c"]) == 0
    out, err = capsys.readouterr()
    key = err.split(": ")[-1].strip()
    assert key.startswith("gw-") and len(key) > 40
    assert f"{{name: team-c, sha256: {key_digest(key)}}}" in out and key not in out
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(key + "\n"))
    assert cli_main(["keys", "hash"]) == 0
    assert capsys.readouterr().out.strip() == key_digest(key)
