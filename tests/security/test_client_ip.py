"""The client's address behind a reverse proxy (chat.proxies, TRUSTED_PROXIES): forwarded headers
count only from a trusted peer, and then only past the trusted hops, so a spoofed
X-Forwarded-For never moves a client's throttles to somebody else's address."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from rest_framework.test import APIClient, APIRequestFactory

from chat import ratelimit
from chat.api.throttles import WriteRateThrottle
from chat.apikeys import api_key_create
from chat.proxies import client_address, parse_networks, request_client_ip, scope_client_ip
from tests.servers import ROOT

NGINX = parse_networks(["127.0.0.1/32", "::1/128"])
CHAIN = parse_networks(["127.0.0.1/32", "10.0.0.0/8"])  # nginx behind a load balancer on 10/8


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "real_ip", "trusted", "expected"),
    [
        # No trusted proxies (the default): the peer, whatever the headers say.
        ("203.0.113.5", "198.51.100.1", "198.51.100.2", (), "203.0.113.5"),
        # An untrusted peer's headers are ignored.
        ("203.0.113.5", "198.51.100.1", "198.51.100.2", NGINX, "203.0.113.5"),
        # Through nginx: the address nginx appended.
        ("127.0.0.1", "198.51.100.1", "198.51.100.1", NGINX, "198.51.100.1"),
        # A client's own X-Forwarded-For is kept by $proxy_add_x_forwarded_for, but only the
        # rightmost untrusted entry (nginx's) counts.
        ("127.0.0.1", "6.6.6.6, 198.51.100.1", "198.51.100.1", NGINX, "198.51.100.1"),
        ("127.0.0.1", "127.0.0.1, 198.51.100.1", None, NGINX, "198.51.100.1"),
        # Several trusted hops are walked past.
        ("127.0.0.1", "6.6.6.6, 198.51.100.1, 10.1.2.3", None, CHAIN, "198.51.100.1"),
        # Every hop trusted: the leftmost is the client (an internal caller).
        ("127.0.0.1", "10.9.9.9, 10.1.2.3", None, CHAIN, "10.9.9.9"),
        # A malformed entry stops the walk at the last trusted hop (never a made-up value).
        ("127.0.0.1", "198.51.100.1, not-an-ip", None, NGINX, "127.0.0.1"),
        ("127.0.0.1", "not-an-ip, 10.1.2.3", None, CHAIN, "10.1.2.3"),
        # Without X-Forwarded-For: X-Real-IP from a trusted peer, else the peer.
        ("127.0.0.1", None, "198.51.100.7", NGINX, "198.51.100.7"),
        ("127.0.0.1", None, "bogus", NGINX, "127.0.0.1"),
        ("127.0.0.1", None, None, NGINX, "127.0.0.1"),
        # IPv6 (brackets allowed), and IPv4-mapped peers count as their IPv4 address.
        ("::1", "[2001:db8::5]", None, NGINX, "2001:db8::5"),
        ("::ffff:127.0.0.1", "198.51.100.1", None, NGINX, "198.51.100.1"),
        # No peer at all (a unix socket): unknown; a peer that is not an address is kept as is.
        (None, "198.51.100.1", None, NGINX, "unknown"),
        ("", None, None, NGINX, "unknown"),
    ],
)
def test_client_address(peer, forwarded_for, real_ip, trusted, expected):
    assert (
        client_address(peer=peer, forwarded_for=forwarded_for, real_ip=real_ip, trusted=trusted) == expected
    )


def test_trusted_proxies_must_be_networks():
    assert parse_networks([" 127.0.0.1 ", "", "10.0.0.0/8", "::1"]) == parse_networks(
        ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]
    )
    with pytest.raises(ValueError, match="TRUSTED_PROXIES: 'nginx'"):
        parse_networks(["nginx"])


def test_settings_refuse_a_bad_trusted_proxy():
    """copilot_project.settings fails fast on a malformed TRUSTED_PROXIES (read at start-up)."""
    env = {**os.environ, "ENV_FILE": "", "DEBUG": "true", "TRUSTED_PROXIES": "127.0.0.1/32,localhost"}
    code = "import copilot_project.settings"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "TRUSTED_PROXIES: 'localhost'" in proc.stderr, proc.stderr[-2000:]
    env["TRUSTED_PROXIES"] = "127.0.0.1/32, ::1/128"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_request_and_scope_use_the_setting(settings):
    factory = APIRequestFactory()
    request = factory.get("/", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="6.6.6.6, 198.51.100.1")
    scope = {
        "client": ("127.0.0.1", 50000),
        "headers": [(b"x-forwarded-for", b"6.6.6.6"), (b"X-Forwarded-For", b"198.51.100.1")],
    }
    settings.TRUSTED_PROXIES = []
    assert request_client_ip(request) == "127.0.0.1"
    assert scope_client_ip(scope) == "127.0.0.1"
    settings.TRUSTED_PROXIES = ["127.0.0.1/32"]
    assert request_client_ip(request) == "198.51.100.1"
    assert scope_client_ip(scope) == "198.51.100.1"
    assert scope_client_ip({"client": None, "headers": []}) == "unknown"


def test_drf_throttle_ident_ignores_a_spoofed_header(settings):
    """DRF's own get_ident believes X-Forwarded-For from anybody (NUM_PROXIES unset)."""
    factory = APIRequestFactory()
    spoofed = factory.post("/", REMOTE_ADDR="203.0.113.5", HTTP_X_FORWARDED_FOR="198.51.100.1")
    settings.TRUSTED_PROXIES = ["127.0.0.1/32"]
    assert WriteRateThrottle().get_ident(spoofed) == "203.0.113.5"
    proxied = factory.post("/", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="198.51.100.1")
    assert WriteRateThrottle().get_ident(proxied) == "198.51.100.1"


def _bearer(key: str, peer: str, forwarded_for: str | None = None) -> APIClient:
    extra = {"REMOTE_ADDR": peer}
    if forwarded_for:
        extra["HTTP_X_FORWARDED_FOR"] = forwarded_for
    client = APIClient(**extra)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client


@pytest.mark.django_db
def test_failed_keys_count_against_the_forwarded_client(user, key_for, settings):
    """Behind nginx (a trusted peer) failed API keys block the client nginx names, not nginx
    itself: other clients behind the same nginx are unaffected. From an untrusted peer a spoofed
    X-Forwarded-For neither shifts the block elsewhere nor escapes it."""
    api_key = key_for(user)
    settings.TRUSTED_PROXIES = ["127.0.0.1/32"]
    settings.API_KEY_FAILURE_LIMIT = 3
    settings.API_KEY_FAILURE_WINDOW = 60
    bad = f"cps_{'0' * 12}_{'1' * 40}"
    # Through nginx: client A's bad keys block A only.
    for _ in range(3):
        assert _bearer(bad, "127.0.0.1", "198.51.100.10").get("/api/v1/sessions/").status_code == 401
    assert _bearer(api_key, "127.0.0.1", "198.51.100.10").get("/api/v1/sessions/").status_code == 429
    assert _bearer(api_key, "127.0.0.1", "198.51.100.11").get("/api/v1/sessions/").status_code == 200
    # A claims to be somebody else in its own header: nginx appends A's address, A stays blocked.
    spoof = "198.51.100.11, 198.51.100.10"
    assert _bearer(api_key, "127.0.0.1", spoof).get("/api/v1/sessions/").status_code == 429
    # An untrusted peer: its header is ignored both ways.
    attacker = "203.0.113.66"
    for n in range(3):
        resp = _bearer(bad, attacker, f"198.51.100.{20 + n}").get("/api/v1/sessions/")
        assert resp.status_code == 401
    assert _bearer(api_key, attacker, "198.51.100.30").get("/api/v1/sessions/").status_code == 429
    assert _bearer(api_key, "127.0.0.1", "198.51.100.20").get("/api/v1/sessions/").status_code == 200


@pytest.mark.django_db
def test_login_throttle_keys_on_the_forwarded_client(user, settings):
    settings.TRUSTED_PROXIES = ["127.0.0.1/32"]
    request = APIRequestFactory().post("/", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="198.51.100.40")
    assert ratelimit.client_ip(request) == "198.51.100.40"


@pytest.mark.django_db(transaction=True)
async def test_websocket_handshake_failures_count_against_the_forwarded_client(user, settings):
    from copilot_project.asgi import application

    settings.TRUSTED_PROXIES = ["127.0.0.1/32"]
    settings.API_KEY_FAILURE_LIMIT = 2
    settings.API_KEY_FAILURE_WINDOW = 60
    settings.API_KEY_CACHE_SECONDS = 0
    _, key = await sync_to_async(api_key_create)(owner=user, name="ws proxied")
    mine, other = f"198.51.100.{uuid.uuid4().int % 200 + 50}", "198.51.100.49"

    async def handshake(token: str, peer: str, forwarded_for: str | None) -> bool:
        headers = [(b"authorization", f"Bearer {token}".encode())]
        if forwarded_for:
            headers.append((b"x-forwarded-for", forwarded_for.encode()))
        comm = WebsocketCommunicator(application, "/ws/chat/", headers=headers)
        comm.scope["client"] = (peer, 50000)
        connected, _ = await comm.connect(timeout=10)
        await comm.disconnect()
        return connected

    for n in range(2):
        assert not await handshake(f"cps_{'0' * 12}_{n:040d}", "127.0.0.1", mine)
    assert not await handshake(key, "127.0.0.1", mine), "the forwarded client is blocked"
    assert await handshake(key, "127.0.0.1", other), "another client behind the same proxy is not"
    assert not await handshake(key, "127.0.0.1", f"{other}, {mine}"), "its own header does not help it"
