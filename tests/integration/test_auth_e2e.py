"""API keys end to end: two gateway processes sharing one Redis, the openai SDK as the client.

Keys in the config file and keys created through /admin/keys (kept in Redis as digests) both work
on both replicas; a revocation made on one replica is refused by the other within auth.refresh_s;
every refusal is an OpenAI-style error and the gateways keep serving.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fake_openai_server import FakeOpenAIServer
from gateway_process import REPO_ROOT, GatewayProcess, running
from redis_server import RedisServer

from gateway.auth.keys import key_digest

TEAM_KEY = "sk-team-a-0123456789"
REVOKED_KEY = "sk-old-0123456789"
ADMIN_KEY = "sk-admin-0123456789"
REFRESH_S = 0.3


def config(fake_url: str, redis_url: str) -> dict[str, Any]:
    return {
        "server": {"health_interval_s": 1.0},
        "redis": {"url": redis_url},
        "auth": {
            "store": "redis",
            "refresh_s": REFRESH_S,
            "keys": [
                {"name": "team-a", "sha256": key_digest(TEAM_KEY), "tenant": "team-a", "models": ["ok"]},
                {"name": "old", "sha256": key_digest(REVOKED_KEY), "revoked": True},
            ],
            "admin_keys": [key_digest(ADMIN_KEY)],
        },
        "backends": [{"name": "ok", "plugin": "openai_compat", "model": "ok", "url": fake_url},
                     {"name": "other", "plugin": "openai_compat", "model": "other", "url": fake_url}],
        "routes": [{"model": "ok", "backends": ["ok"]}, {"model": "other", "backends": ["other"]}],
    }


@pytest.fixture
def replicas(tmp_path: Path, fake: FakeOpenAIServer, redis_server: RedisServer) -> Iterator[list[GatewayProcess]]:
    raw = config(fake.url, redis_server.url)
    first = GatewayProcess(raw, tmp_path, name="auth-a")
    second = GatewayProcess(raw, tmp_path, name="auth-b")
    with running(first), running(second):
        first.wait_ready()
        second.wait_ready()
        yield [first, second]


def chat(gateway: GatewayProcess, key: str, model: str = "ok") -> Any:
    client = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0, timeout=30.0)
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])


def refused(gateway: GatewayProcess, key: str | None, model: str = "ok") -> tuple[int, dict[str, Any]]:
    headers = {"authorization": f"Bearer {key}"} if key is not None else {}
    with gateway.http() as client:
        response = client.post("/v1/chat/completions", headers=headers,
                               json={"model": model, "messages": [{"role": "user", "content": "hi"}]})
    return response.status_code, response.json().get("error", {})  # {} for an answer (status 200)


def admin(gateway: GatewayProcess, method: str, path: str, key: str | None = ADMIN_KEY,
          **kwargs: Any) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key is not None else {}
    with gateway.http() as client:
        return client.request(method, path, headers=headers, **kwargs)


def test_auth_cases_through_the_sdk(replicas: list[GatewayProcess]) -> None:
    gateway = replicas[0]
    assert chat(gateway, TEAM_KEY).choices[0].message.content == "Hello, world!"
    with pytest.raises(openai.AuthenticationError) as wrong:
        chat(gateway, "sk-not-a-key")
    assert wrong.value.status_code == 401 and wrong.value.code == "invalid_api_key"
    status, error = refused(gateway, None)
    assert (status, error["code"]) == (401, "invalid_api_key") and "missing API key" in error["message"]
    status, error = refused(gateway, "sk-wrong")
    assert (status, error["code"]) == (401, "invalid_api_key") and "sk-wrong" not in error["message"]
    status, error = refused(gateway, REVOKED_KEY)
    assert (status, error["code"]) == (401, "invalid_api_key") and "revoked" in error["message"]
    with pytest.raises(openai.PermissionDeniedError) as denied:
        chat(gateway, TEAM_KEY, model="other")
    assert denied.value.status_code == 403 and denied.value.code == "model_not_allowed"
    # The admin API: no key, an API key, the admin key.
    assert admin(gateway, "GET", "/admin/backends", key=None).status_code == 401
    response = admin(gateway, "GET", "/admin/backends", key=TEAM_KEY)
    assert response.status_code == 403 and response.json()["error"]["code"] == "admin_key_required"
    assert admin(gateway, "GET", "/admin/backends").status_code == 200
    # Probes and scrapes stay open.
    with gateway.http() as client:
        assert client.get("/ready").status_code == 200
        assert client.get("/metrics").status_code == 200
    # Nothing of a key reaches the logs.
    log = gateway.log_text()
    for secret in (TEAM_KEY, REVOKED_KEY, ADMIN_KEY, "sk-wrong"):
        assert secret not in log
    assert chat(gateway, TEAM_KEY).choices[0].message.content == "Hello, world!"  # still serving


def test_keys_made_on_one_replica_work_and_are_revoked_on_both(replicas: list[GatewayProcess]) -> None:
    first, second = replicas
    response = admin(first, "POST", "/admin/keys", json={"name": "ci-bot", "tenant": "ci", "models": ["ok"]})
    assert response.status_code == 201, response.text
    made = response.json()
    key = made["key"]
    assert made["name"] == "ci-bot" and made["tenant"] == "ci" and key.startswith("gw-")
    assert chat(first, key).choices[0].message.content == "Hello, world!"  # at once on the replica that made it
    deadline = time.monotonic() + 10 * REFRESH_S + 5
    while time.monotonic() < deadline and refused(second, key)[0] == 401:
        time.sleep(0.1)
    assert chat(second, key).choices[0].message.content == "Hello, world!"
    assert refused(second, key, model="other")[0] == 403  # its models travel with it
    # The same name twice is refused; the listing never shows key material.
    assert admin(second, "POST", "/admin/keys", json={"name": "ci-bot"}).status_code == 409
    listing = admin(second, "GET", "/admin/keys").json()["keys"]
    by_name = {k["name"]: k for k in listing}
    assert by_name["ci-bot"]["source"] == "redis" and by_name["team-a"]["source"] == "config"
    assert key not in str(listing) and key_digest(key) not in str(listing)
    # Revoked on the second replica: the first refuses it within refresh_s.
    revoked = admin(second, "DELETE", "/admin/keys/ci-bot")
    assert revoked.status_code == 200 and revoked.json()["revoked"] == "ci-bot"
    assert refused(second, key)[0] == 401
    deadline = time.monotonic() + 10 * REFRESH_S + 5
    while time.monotonic() < deadline and refused(first, key)[0] != 401:
        time.sleep(0.1)
    status, error = refused(first, key)
    assert status == 401 and "revoked" in error["message"]
    assert admin(first, "DELETE", "/admin/keys/nobody").status_code == 404
    assert admin(first, "DELETE", "/admin/keys/team-a").json()["error"]["message"].startswith(
        "key 'team-a' is in the config file")
    assert chat(first, TEAM_KEY).choices[0].message.content == "Hello, world!"


def test_the_cli_adds_lists_and_revokes(replicas: list[GatewayProcess]) -> None:
    gateway = replicas[0]

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "gateway.cli", "keys", *argv, "--url", gateway.url],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                              env={**_env(), "GATEWAY_ADMIN_KEY": ADMIN_KEY})

    added = cli("add", "--name", "from-cli", "--models", "ok")
    assert added.returncode == 0, added.stderr
    key = added.stdout.strip()
    assert chat(gateway, key).choices[0].message.content == "Hello, world!"
    listed = cli("list")
    assert "from-cli" in listed.stdout and key not in listed.stdout
    assert cli("revoke", "--name", "from-cli").returncode == 0
    assert refused(gateway, key)[0] == 401
    no_admin = subprocess.run([sys.executable, "-m", "gateway.cli", "keys", "list", "--url", gateway.url],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                              env={k: v for k, v in _env().items() if k != "GATEWAY_ADMIN_KEY"})
    assert no_admin.returncode == 1 and "401" in no_admin.stderr


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)
