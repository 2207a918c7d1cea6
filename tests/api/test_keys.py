"""API keys: creation (full key once), salted hashes, Bearer auth, revocation, throttled last_used."""

from __future__ import annotations

import datetime as dt
import hashlib

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from chat.apikeys import api_key_authenticate, api_key_create, api_key_hash, api_key_parse
from chat.models import ApiKey
from tests.api.conftest import bearer_client

pytestmark = pytest.mark.django_db


def test_create_returns_full_key_once_and_stores_only_a_salted_hash(api, user):
    resp = api.post("/api/v1/keys/", {"name": "ci"}, format="json")
    assert resp.status_code == 201, resp.content
    body = resp.json()
    full_key = body["key"]
    assert full_key.startswith(f"cps_{body['prefix']}_")
    row = ApiKey.objects.get(pk=body["id"])
    secret = api_key_parse(full_key)[1]
    assert secret not in (row.hashed_key, row.salt, row.prefix)
    assert row.hashed_key == hashlib.sha256((row.salt + secret).encode()).hexdigest()
    assert row.hashed_key != hashlib.sha256(secret.encode()).hexdigest()  # salted
    # Never shown again: the list has no key and no hash.
    listed = api.get("/api/v1/keys/").json()
    entry = next(k for k in listed if k["id"] == body["id"])
    assert set(entry) == {"id", "name", "prefix", "created_at", "last_used_at", "revoked", "revoked_at"}
    assert full_key not in resp.content.decode().replace(full_key, "", 1)
    assert full_key not in str(listed) and row.hashed_key not in str(listed)
    # And the new key works.
    assert bearer_client(full_key).get("/api/v1/usage/").status_code == 200


def test_same_secret_with_two_salts_gives_two_hashes(user):
    a, key_a = api_key_create(owner=user, name="a")
    b, key_b = api_key_create(owner=user, name="b")
    assert a.salt != b.salt and a.hashed_key != b.hashed_key
    secret = "the-same-secret"
    assert api_key_hash(secret=secret, salt=a.salt) != api_key_hash(secret=secret, salt=b.salt)


def test_create_validation_error(api):
    resp = api.post("/api/v1/keys/", {"name": ""}, format="json")
    assert resp.status_code == 400
    err = resp.json()["error"]
    assert err["code"] == "invalid_request" and "name" in err["details"]
    assert api.post("/api/v1/keys/", {"name": "x" * 101}, format="json").status_code == 400


def test_bearer_wrong_secret_unknown_prefix_and_garbage_are_401(user, api_key):
    prefix, secret = api_key_parse(api_key)
    for bad in (f"cps_{prefix}_{secret}x", f"cps_{'0' * 12}_{secret}", "garbage", ""):
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {bad}")
        resp = client.get("/api/v1/sessions/")
        assert resp.status_code == 401, bad
        assert resp.json()["error"]["code"] == "authentication_failed"
        assert resp["WWW-Authenticate"].startswith("Bearer")


def test_revoke_then_401(api, user, key_for):
    victim = key_for(user, "to revoke")
    victim_id = ApiKey.objects.get(prefix=api_key_parse(victim)[0]).pk
    assert bearer_client(victim).get("/api/v1/sessions/").status_code == 200
    assert api.delete(f"/api/v1/keys/{victim_id}/").status_code == 204
    resp = bearer_client(victim).get("/api/v1/sessions/")
    assert resp.status_code == 401
    assert resp.json() == {
        "error": {"code": "authentication_failed", "message": "Invalid or revoked API key."}
    }
    listed = {k["id"]: k for k in api.get("/api/v1/keys/").json()}
    assert listed[victim_id]["revoked"] is True
    assert api_key_authenticate(raw_key=victim) is None
    # Revoking again is idempotent.
    assert api.delete(f"/api/v1/keys/{victim_id}/").status_code == 204


def test_revoking_another_users_key_is_the_same_404_as_a_missing_one(api, other_user, key_for):
    theirs = key_for(other_user)
    their_id = ApiKey.objects.get(prefix=api_key_parse(theirs)[0]).pk
    foreign = api.delete(f"/api/v1/keys/{their_id}/")
    missing = api.delete("/api/v1/keys/999999/")
    assert foreign.status_code == missing.status_code == 404
    assert foreign.content == missing.content
    assert bearer_client(theirs).get("/api/v1/sessions/").status_code == 200  # untouched


def test_keys_unauthenticated_and_revoked(user, api_key):
    for method, url in (("get", "/api/v1/keys/"), ("post", "/api/v1/keys/"), ("delete", "/api/v1/keys/1/")):
        resp = getattr(APIClient(), method)(url)
        assert resp.status_code == 401
        assert resp.json()["error"]["code"] == "not_authenticated"
    ApiKey.objects.update(revoked_at=timezone.now())
    assert bearer_client(api_key).post("/api/v1/keys/", {"name": "x"}, format="json").status_code == 401


def test_last_used_is_written_at_most_once_per_interval(user, api_key, settings):
    settings.API_KEY_TOUCH_INTERVAL = 60
    client = bearer_client(api_key)
    row = ApiKey.objects.get(prefix=api_key_parse(api_key)[0])
    assert row.last_used_at is None
    assert client.get("/api/v1/usage/").status_code == 200
    row.refresh_from_db()
    first = row.last_used_at
    assert first is not None
    with CaptureQueriesContext(connection) as queries:
        for _ in range(3):
            assert client.get("/api/v1/usage/").status_code == 200
    assert not [
        q for q in queries.captured_queries if q["sql"].startswith("UPDATE") and "apikey" in q["sql"].lower()
    ]
    row.refresh_from_db()
    assert row.last_used_at == first
    # Once the interval has passed, the next request records the use again.
    ApiKey.objects.filter(pk=row.pk).update(last_used_at=first - dt.timedelta(seconds=61))
    assert client.get("/api/v1/usage/").status_code == 200
    row.refresh_from_db()
    assert row.last_used_at > first - dt.timedelta(seconds=1)


def test_session_auth_writes_need_csrf_bearer_writes_do_not(user, api_key):
    browser = APIClient(enforce_csrf_checks=True)
    browser.force_login(user)
    assert browser.get("/api/v1/keys/").status_code == 200  # reads are fine
    resp = browser.post("/api/v1/keys/", {"name": "x"}, format="json")
    assert resp.status_code == 403
    assert resp.json()["error"]["code"] == "permission_denied"
    assert "CSRF" in resp.json()["error"]["message"]
    # With the CSRF cookie + header (what the browser page does) it works.
    browser.get("/accounts/login/")
    token = browser.cookies["csrftoken"].value
    assert (
        browser.post("/api/v1/keys/", {"name": "x"}, format="json", HTTP_X_CSRFTOKEN=token).status_code == 201
    )
    bearer = bearer_client(api_key)
    bearer.handler.enforce_csrf_checks = True
    assert bearer.post("/api/v1/keys/", {"name": "y"}, format="json").status_code == 201


def test_keys_throttled(api, settings):
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"chat": "1/min", "writes": "2/min"},
    }
    assert api.post("/api/v1/keys/", {"name": "a"}, format="json").status_code == 201
    assert api.post("/api/v1/keys/", {"name": "b"}, format="json").status_code == 201
    resp = api.post("/api/v1/keys/", {"name": "c"}, format="json")
    assert resp.status_code == 429
    assert resp.json()["error"]["code"] == "throttled"
    assert 1 <= int(resp["Retry-After"]) <= 60
    assert api.get("/api/v1/keys/").status_code == 200  # reads are not throttled


# --- failed key attempts are throttled per client IP ---------------------------------------------


def _bearer(key: str, ip: str) -> APIClient:
    client = APIClient(REMOTE_ADDR=ip)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client


def test_failed_key_attempts_are_throttled_per_ip(user, api_key, settings):
    """Until the 'production fidelity' issue (item 3) 300 bad keys in a row all got 401 and never 429."""
    settings.API_KEY_FAILURE_LIMIT = 5
    settings.API_KEY_FAILURE_WINDOW = 60
    attacker, neighbour = "203.0.113.7", "203.0.113.8"
    for n in range(5):
        resp = _bearer(f"cps_{'0' * 12}_{n:040d}", attacker).get("/api/v1/sessions/")
        assert resp.status_code == 401, n
    for bad in (f"cps_{'0' * 12}_{'1' * 40}", "garbage", ""):
        resp = _bearer(bad, attacker).get("/api/v1/sessions/")
        assert resp.status_code == 429, bad
        assert resp.json()["error"]["code"] == "throttled"
        assert 1 <= int(resp["Retry-After"]) <= 60
    # While blocked, a valid key from that address waits too (no oracle for a guessed key) ...
    assert _bearer(api_key, attacker).get("/api/v1/sessions/").status_code == 429
    assert _bearer(api_key, attacker).post("/api/v1/sessions/", {}, format="json").status_code == 429
    # ... other addresses are unaffected, and so is a cookie session from the blocked address.
    assert _bearer(api_key, neighbour).get("/api/v1/sessions/").status_code == 200
    assert _bearer("garbage", neighbour).get("/api/v1/sessions/").status_code == 401
    browser = APIClient(REMOTE_ADDR=attacker)
    browser.force_login(user)
    assert browser.get("/api/v1/sessions/").status_code == 200


def test_a_burst_of_bad_keys_is_cut_short_with_the_defaults(user):
    codes = [
        _bearer(f"cps_{'0' * 12}_{n:040d}", "198.51.100.9").get("/api/v1/usage/").status_code
        for n in range(300)
    ]
    assert set(codes) == {401, 429}
    assert codes.count(401) <= 30 and codes[-1] == 429


def test_successful_key_use_does_not_count(api_key, settings):
    settings.API_KEY_FAILURE_LIMIT = 3
    client = _bearer(api_key, "192.0.2.44")
    for _ in range(10):
        assert client.get("/api/v1/sessions/").status_code == 200
