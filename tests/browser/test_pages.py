"""The chat page views (Django test client; no browser): auth, ownership, embedded config."""

from __future__ import annotations

import json
import re

import pytest

from chat.services import session_create

pytestmark = pytest.mark.django_db


def page_config(response) -> dict:
    match = re.search(
        r'<script id="page-config" type="application/json">(.*?)</script>', response.content.decode(), re.S
    )
    assert match, "page config missing"
    return json.loads(match.group(1))


def test_pages_need_login(client, user):
    session = session_create(owner=user)
    for url in ("/", f"/c/{session.pk}/"):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith("/accounts/login/")


def test_owner_sees_the_chat_and_others_get_404(client, user, other_user):
    session = session_create(owner=user, title="Mine")
    client.force_login(user)
    response = client.get(f"/c/{session.pk}/")
    assert response.status_code == 200
    config = page_config(response)
    assert config["chatId"] == str(session.pk)
    assert config["wsPath"] == "/ws/chat/"
    assert config["user"] == {"username": "alice"}
    assert config["limits"]["maxFiles"] == 4 and config["limits"]["maxBytes"] == 5 * 1024 * 1024
    assert b"Mine" in response.content
    client.force_login(other_user)
    assert client.get(f"/c/{session.pk}/").status_code == 404


def test_client_chosen_id_redirects_to_the_canonical_url(client, user):
    import uuid

    chosen = str(uuid.uuid4())
    session = session_create(owner=user, client_id=chosen)
    client.force_login(user)
    response = client.get(f"/c/{chosen}/")
    assert response.status_code == 302 and response["Location"] == f"/c/{session.pk}/"


def test_offline_banner_config(client, user, settings):
    settings.ANTHROPIC_API_KEY = ""
    settings.ANTHROPIC_BASE_URL = "http://127.0.0.1:9"  # "already running": nothing is started
    client.force_login(user)
    config = page_config(client.get("/"))
    assert config["chatId"] is None
    assert config["offline"] is True
    assert any(d["example"].startswith("/tool bash") for d in config["directives"])
    settings.ANTHROPIC_API_KEY = "sk-ant-real-key-for-test"
    config = page_config(client.get("/"))
    assert config["offline"] is False and config["directives"] == []
    assert "sk-ant-real" not in json.dumps(config)


def test_user_text_in_titles_is_escaped(client, user):
    session = session_create(owner=user, title="<script>alert(1)</script>")
    client.force_login(user)
    body = client.get(f"/c/{session.pk}/").content.decode()
    assert "<script>alert(1)</script>" not in body
