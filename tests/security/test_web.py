"""Web hardening (issue 10 item 7): production checks, CSRF, headers, login throttling, staff-only admin."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import uuid

import pytest
from django.conf import settings as django_settings
from django.test import Client

from chat.services import session_create

pytestmark = pytest.mark.django_db


def test_check_deploy_is_clean_with_production_settings(tmp_path):
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "SECURE_", "SESSION_", "CSRF_"))
    }
    env.update(
        DEBUG="false",
        SECRET_KEY=secrets.token_urlsafe(64),
        ALLOWED_HOSTS="copilot.example.com",
        CSRF_TRUSTED_ORIGINS="https://copilot.example.com",
        VAR_DIR=str(tmp_path),
        ENV_FILE="",  # a developer's .env (make run writes one) must not lend its SECRET_KEY
        # A production server names its model (agents.E002 otherwise: no scripted model under DEBUG=false).
        ANTHROPIC_API_KEY="sk-ant-" + secrets.token_hex(24),
    )
    proc = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=django_settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no issues" in proc.stdout
    # Without a model (no key, no base URL) production does not fall back to the scripted model.
    no_model = {k: v for k, v in env.items() if k not in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL")}
    proc = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=django_settings.BASE_DIR,
        env=no_model,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "agents.E002" in proc.stderr and "ANTHROPIC_API_KEY" in proc.stderr
    # And production refuses to start without a secret key (never the dev default).
    env.pop("SECRET_KEY")
    proc = subprocess.run(
        [sys.executable, "manage.py", "check"],
        cwd=django_settings.BASE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "SECRET_KEY" in proc.stderr


# --- CSRF ---------------------------------------------------------------------------------------


def _csrf_client(user) -> Client:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user)
    client.get("/")  # sets the csrftoken cookie
    return client


@pytest.mark.parametrize(
    "method,path,body",
    [
        ("post", "/api/v1/sessions/", {"title": "x"}),
        ("post", "/api/v1/keys/", {"name": "k"}),
        (
            "post",
            "/api/v1/chat/",
            {
                "id": "csrf-chat",
                "messages": [{"id": "m", "role": "user", "parts": [{"type": "text", "text": "hi"}]}],
            },
        ),
        (
            "post",
            "/api/v1/chat",
            {
                "id": "csrf-chat",
                "messages": [{"id": "m", "role": "user", "parts": [{"type": "text", "text": "hi"}]}],
            },
        ),
        ("patch", "/api/v1/sessions/{sid}/", {"title": "renamed"}),
        ("delete", "/api/v1/sessions/{sid}/", None),
        ("post", "/api/v1/sessions/{sid}/cancel/", None),
        ("delete", "/api/v1/keys/{kid}/", None),
    ],
)
def test_session_authenticated_writes_need_the_csrf_token(user, method, path, body):
    from chat.apikeys import api_key_create

    session = session_create(owner=user, title="mine")
    api_key, _ = api_key_create(owner=user, name="k")
    client = _csrf_client(user)
    url = path.format(sid=session.pk, kid=api_key.pk)
    payload = json.dumps(body) if body is not None else ""
    response = getattr(client, method)(url, payload, content_type="application/json")
    assert response.status_code == 403, response.content
    assert "CSRF" in response.json()["error"]["message"]
    session.refresh_from_db()
    api_key.refresh_from_db()
    assert session.title == "mine" and api_key.revoked_at is None
    # With the token the same request passes the CSRF check (whatever it answers then).
    token = client.cookies["csrftoken"].value
    response = getattr(client, method)(
        url, payload, content_type="application/json", headers={"X-CSRFToken": token}
    )
    assert response.status_code != 403, response.content


def test_every_async_api_view_is_marked_async():
    """An async handler hidden behind a sync view answers 500 ("unawaited coroutine") under ASGI
    (it happened to the no-slash aliases when a schema decorator wrapped their handlers)."""
    from asgiref.sync import iscoroutinefunction

    from chat.api import urls
    from chat.api.base import AsyncAPIView

    for pattern in urls.urlpatterns:
        cls = getattr(pattern.callback, "cls", None)
        if cls is not None and issubclass(cls, AsyncAPIView):
            assert iscoroutinefunction(pattern.callback), (
                f"{pattern.pattern} ({cls.__name__}) is not marked async"
            )


def test_logout_and_login_forms_need_the_csrf_token(user):
    client = _csrf_client(user)
    assert client.post("/accounts/logout/").status_code == 403
    anon = Client(enforce_csrf_checks=True)
    assert (
        anon.post("/accounts/login/", {"username": "alice", "password": "alice-password-1"}).status_code
        == 403
    )


# --- headers ------------------------------------------------------------------------------------


def test_security_headers_on_the_chat_page_and_api(client, user):
    client.force_login(user)
    session = session_create(owner=user)
    for url in ("/", f"/c/{session.pk}/", "/accounts/login/"):
        response = client.get(url)
        assert response.status_code == 200, url
        assert response["X-Content-Type-Options"] == "nosniff"
        assert response["Referrer-Policy"] == "same-origin"
        assert response["X-Frame-Options"] == "DENY"
        assert response["Cross-Origin-Opener-Policy"] == "same-origin"
        csp = response["Content-Security-Policy"]
        for directive in (
            "default-src 'self'",
            "script-src 'self'",
            "object-src 'none'",
            "frame-ancestors 'none'",
            "base-uri 'none'",
        ):
            assert directive in csp, (url, csp)
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    api = client.get("/api/v1/sessions/")
    assert api["X-Content-Type-Options"] == "nosniff" and api["X-Frame-Options"] == "DENY"
    assert "Content-Security-Policy" not in api  # JSON, not a page


# --- login throttling ---------------------------------------------------------------------------


def test_login_is_throttled_per_username_and_ip(client, user, settings):
    settings.LOGIN_FAILURE_LIMIT = 3
    settings.LOGIN_FAILURE_WINDOW = 600
    for _ in range(2):
        response = client.post("/accounts/login/", {"username": "alice", "password": "wrong"})
        assert response.status_code == 200 and b"didn't match" in response.content
    response = client.post("/accounts/login/", {"username": "alice", "password": "wrong"})
    assert b"Too many failed sign-in attempts" in response.content and b"10 minutes" in response.content
    # Locked: even the right password is refused, with the same clear message.
    response = client.post("/accounts/login/", {"username": "alice", "password": "alice-password-1"})
    assert b"Too many failed sign-in attempts" in response.content
    assert "_auth_user_id" not in client.session
    # The admin login goes through the same backend: refused too.
    user.is_staff = True
    user.save()
    response = client.post(
        "/admin/login/", {"username": "alice", "password": "alice-password-1", "next": "/admin/"}
    )
    assert response.status_code == 200 and "_auth_user_id" not in client.session
    # Another address is not locked out (per username + IP), nor is another username.
    other_ip = Client(REMOTE_ADDR="10.9.8.7")
    assert (
        other_ip.post("/accounts/login/", {"username": "alice", "password": "alice-password-1"}).status_code
        == 302
    )
    # The window ends: the pair may try again.
    from django.core.cache import cache

    cache.clear()
    assert (
        client.post("/accounts/login/", {"username": "alice", "password": "alice-password-1"}).status_code
        == 302
    )


def test_a_successful_login_resets_the_counter(client, user, settings):
    settings.LOGIN_FAILURE_LIMIT = 3
    for _ in range(2):
        client.post("/accounts/login/", {"username": "ALICE", "password": "wrong"})  # case-insensitive key
    assert (
        client.post("/accounts/login/", {"username": "alice", "password": "alice-password-1"}).status_code
        == 302
    )
    client.logout()
    for _ in range(2):
        client.post("/accounts/login/", {"username": "alice", "password": "wrong"})
    assert (
        client.post("/accounts/login/", {"username": "alice", "password": "alice-password-1"}).status_code
        == 302
    )


# --- admin --------------------------------------------------------------------------------------


def test_the_admin_requires_staff(client, user, django_user_model):
    session = session_create(owner=user, title="secret title")
    client.force_login(user)  # an ordinary user
    for url in (
        "/admin/",
        f"/admin/chat/chatsession/{session.pk}/change/",
        f"/admin/chat/chatsession/{uuid.uuid4()}/change/",
        "/admin/chat/chatsession/",
        f"/admin/transcripts/session/{uuid.uuid4()}/",
    ):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith("/admin/login/"), url
    staff = django_user_model.objects.create_user(username="op", password="op-password-1", is_staff=True)
    client.force_login(staff)  # staff without model permissions: no data either
    response = client.get(f"/admin/chat/chatsession/{session.pk}/change/")
    assert response.status_code == 403 and b"secret title" not in response.content
    response = client.get(f"/admin/transcripts/session/{uuid.uuid4()}/")
    assert response.status_code == 403
