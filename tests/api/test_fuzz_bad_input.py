"""Bad input never becomes a 500 (issue "Production fidelity", part 3).

Each body below once answered 500 on at least one write route: a body over
DATA_UPLOAD_MAX_MEMORY_SIZE (``RequestDataTooBig``), JSON nested thousands deep
(``RecursionError``), a lone surrogate (``"\\ud800"``: SQLite/PostgreSQL cannot store it and the
JSON renderer cannot encode it) and NUL characters. Every one must get a clear 4xx with the API
error body, and nothing may be persisted. Checked in-process (DRF test client) and through a real
daphne (the ASGI request path production uses)."""

from __future__ import annotations

import json

import httpx
import pytest

from chat.models import ApiKey, ChatMessage, ChatSession
from chat.services import session_create

pytestmark = pytest.mark.django_db(transaction=True)

DEEP = "[" * 50_000 + "]" * 50_000
DEEP_IN_FIELD = '{"name": ' + "[" * 50_000 + "]" * 50_000 + "}"
SURROGATE = r"\ud800"


def _routes(session_id: str) -> list[tuple[str, str, dict]]:
    """(method, path, a valid body) for every JSON write route."""
    return [
        (
            "post",
            "/api/v1/chat/",
            {
                "id": "fuzz-chat",
                "messages": [{"id": "m", "role": "user", "parts": [{"type": "text", "text": "hi"}]}],
            },
        ),
        ("post", "/api/v1/sessions/", {"title": "t", "client_id": "fuzz-new"}),
        ("patch", f"/api/v1/sessions/{session_id}/", {"title": "t"}),
        ("post", "/api/v1/keys/", {"name": "n"}),
    ]


def _bad_bodies(valid: dict) -> dict[str, str]:
    """Raw JSON texts derived from a route's valid body."""
    first_string = next(k for k, v in valid.items() if isinstance(v, str))
    bodies = {
        "deep-array": DEEP,
        "deep-in-field": f'{{"{first_string}": {"[" * 50_000 + "]" * 50_000}}}',
        "deep-object": '{"a":' * 20_000 + "1" + "}" * 20_000,
    }

    # A lone surrogate / a NUL in every string the route reads, one at a time.
    def strings(obj, path=()):
        if isinstance(obj, str):
            yield path
        elif isinstance(obj, dict):
            for k, v in obj.items():
                yield from strings(v, path + (k,))
        elif isinstance(obj, list):
            for i, v in enumerate(obj):
                yield from strings(v, path + (i,))

    for where in strings(valid):
        for label, bad in (("surrogate", "\ud800"), ("low-surrogate", "x\udfffy"), ("nul", "a\x00b")):
            body = json.loads(json.dumps(valid))
            node = body
            for step in where[:-1]:
                node = node[step]
            node[where[-1]] = bad
            # json.dumps escapes both as \\uXXXX: exactly what a client sends on the wire.
            bodies[f"{label}@{'.'.join(map(str, where))}"] = json.dumps(body)
    # A surrogate as an object key too.
    bodies["surrogate-key"] = json.dumps({**valid, "\ud800": 1})
    return bodies


def _snapshot() -> tuple[int, int, int]:
    return ChatSession.objects.count(), ChatMessage.objects.count(), ApiKey.objects.count()


def _assert_clear_4xx(status: int, body: bytes, where: str) -> None:
    assert 400 <= status < 500, f"{where}: {status} {body[:300]!r}"
    data = json.loads(body)
    assert set(data) == {"error"} and {"code", "message"} <= set(data["error"]), f"{where}: {data}"


def test_bad_bodies_get_a_clear_4xx_and_persist_nothing(api, user):
    session = session_create(owner=user, client_id="mine", title="mine")
    before = _snapshot()
    for method, path, valid in _routes(str(session.pk)):
        for label, raw in _bad_bodies(valid).items():
            resp = getattr(api, method)(path, data=raw, content_type="application/json")
            _assert_clear_4xx(resp.status_code, resp.content, f"{method.upper()} {path} {label}")
            assert resp.json()["error"]["code"] in {"invalid_request", "parse_error"}, (
                path,
                label,
                resp.json(),
            )
    assert _snapshot() == before
    session.refresh_from_db()
    assert session.title == "mine"


def test_a_body_over_the_size_limit_gets_413(api, user, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2000
    session = session_create(owner=user, client_id="mine", title="mine")
    before = _snapshot()
    for method, path, valid in _routes(str(session.pk)):
        body = dict(valid)
        key = next(k for k, v in body.items() if isinstance(v, str))
        body[key] = "x" * 3000
        resp = getattr(api, method)(path, data=json.dumps(body), content_type="application/json")
        _assert_clear_4xx(resp.status_code, resp.content, f"{method.upper()} {path}")
        assert resp.status_code == 413 and resp.json()["error"]["code"] == "request_too_large", resp.json()
    assert _snapshot() == before


@pytest.mark.parametrize("field,value", [("name", 0), ("name", True), ("name", ["x"]), ("name", {"a": 1})])
def test_wrong_types_are_refused_not_coerced(api, field, value):
    resp = api.post("/api/v1/keys/", data={field: value}, format="json")
    assert resp.status_code == 400, resp.content
    assert resp.json()["error"]["code"] == "invalid_request"
    assert not ApiKey.objects.filter(name=str(value)).exists()


def test_wrong_types_on_sessions_are_refused(api, user):
    session = session_create(owner=user, client_id="mine", title="mine")
    for body in ({"title": 0}, {"client_id": 12}, {"title": ["a"]}):
        resp = api.post("/api/v1/sessions/", data=body, format="json")
        assert resp.status_code == 400, (body, resp.content)
    for body in ({"title": 0}, {"archived": "yes"}, {"archived": 1}):
        resp = api.patch(f"/api/v1/sessions/{session.pk}/", data=body, format="json")
        assert resp.status_code == 400, (body, resp.content)
    for body in ({"id": 5, "messages": []}, {"id": "x", "messages": [], "trigger": 3}):
        resp = api.post("/api/v1/chat/", data=body, format="json")
        assert resp.status_code == 400, (body, resp.content)
    assert ChatSession.objects.count() == 1


def test_query_and_path_parameters_with_surrogates_or_nul(api, user):
    session_create(owner=user, client_id="mine", title="mine")
    for path in (
        "/api/v1/sessions/?search=a%00b",
        "/api/v1/sessions/a%00b/",
        "/api/v1/sessions/%ED%A0%80/",  # the (invalid) UTF-8 bytes of a lone surrogate
        "/api/v1/sessions/a%00b/messages/",
        "/api/v1/chat/a%00b/stream/",
    ):
        resp = api.get(path)
        assert resp.status_code in {400, 404}, (path, resp.status_code, resp.content[:200])
        _assert_clear_4xx(resp.status_code, resp.content, path)


# --- the same through a real daphne (the ASGI request path) -------------------------------------


def test_bad_bodies_through_daphne(live_daphne, user, key_for):
    key = key_for(user)
    session = session_create(owner=user, client_id="mine", title="mine")
    before = _snapshot()
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    with httpx.Client(base_url=live_daphne.url, headers=headers, timeout=60) as client:
        for method, path, valid in _routes(str(session.pk)):
            for label, raw in _bad_bodies(valid).items():
                resp = client.request(method.upper(), path, content=raw.encode("utf-8", "surrogatepass"))
                _assert_clear_4xx(resp.status_code, resp.content, f"{method.upper()} {path} {label}")
        # Over DATA_UPLOAD_MAX_MEMORY_SIZE (32 MiB by default) on the real server.
        big = b'{"name": "' + b"x" * (33 * 1024 * 1024) + b'"}'
        for path in ("/api/v1/keys/", "/api/v1/chat/"):
            resp = client.post(path, content=big)
            _assert_clear_4xx(resp.status_code, resp.content, f"POST {path} 33 MiB")
            assert resp.status_code == 413, resp.status_code
    assert _snapshot() == before
