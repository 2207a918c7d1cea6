"""Per-chat settings through the REST API (CONTRACT §6, docs/api.md "Per-chat settings"):
``GET /api/v1/models/`` lists the operator's allow-list, ``GET``/``PATCH /api/v1/sessions/<id>/``
show and change ``model``, ``instructions``, ``tool_mode`` and ``max_steps``; bad values are a
400 ``invalid_request`` that says why and changes nothing."""

from __future__ import annotations

import json

import pytest
from rest_framework.test import APIClient

from chat.models import ChatSession
from chat.services import session_create

pytestmark = pytest.mark.django_db

MODELS_JSON = json.dumps(
    [
        {"id": "claude-sonnet-5-5", "name": "Claude Sonnet 5.5", "prices": [3, 15, 0.3, 3.75]},
        {"id": "claude-opus-5", "name": "Claude Opus 5", "prices": {"input": 5, "output": 25}},
        {"id": "claude-haiku-5"},
    ]
)


@pytest.fixture
def models(settings):
    settings.AGENT_MODEL = "claude-sonnet-5-5"
    settings.AGENT_MODELS = MODELS_JSON
    settings.AGENT_MAX_TURNS = 40
    settings.AGENT_INSTRUCTIONS_MAX_CHARS = 100
    return settings


@pytest.fixture
def chat(user):
    return session_create(owner=user, title="settings")


def url(session: ChatSession) -> str:
    return f"/api/v1/sessions/{session.pk}/"


def test_models_lists_the_allow_list_with_the_default_and_prices(api, models):
    resp = api.get("/api/v1/models/")
    assert resp.status_code == 200
    assert resp.json() == [
        {
            "id": "claude-sonnet-5-5",
            "name": "Claude Sonnet 5.5",
            "default": True,
            "prices": {"input": 3.0, "output": 15.0, "cache_read": 0.3, "cache_write": 3.75},
        },
        {
            "id": "claude-opus-5",
            "name": "Claude Opus 5",
            "default": False,
            # cache prices derived from the input price (reads 0.1x, writes 1.25x)
            "prices": {"input": 5.0, "output": 25.0, "cache_read": 0.5, "cache_write": 6.25},
        },
        {"id": "claude-haiku-5", "name": "claude-haiku-5", "default": False, "prices": None},
    ]


def test_models_default_is_agent_model_alone_and_always_listed(api, settings):
    settings.AGENT_MODEL = "claude-default-1"
    settings.AGENT_MODELS = ""
    assert api.get("/api/v1/models/").json() == [
        {"id": "claude-default-1", "name": "claude-default-1", "default": True, "prices": None}
    ]
    settings.AGENT_MODELS = "claude-a=Model A, claude-b"  # the comma form; the default not listed
    rows = api.get("/api/v1/models/").json()
    assert [(r["id"], r["name"], r["default"]) for r in rows] == [
        ("claude-default-1", "claude-default-1", True),
        ("claude-a", "Model A", False),
        ("claude-b", "claude-b", False),
    ]


def test_models_needs_authentication(models):
    resp = APIClient().get("/api/v1/models/")
    assert resp.status_code == 401 and resp.json()["error"]["code"] == "not_authenticated"


def test_session_shows_its_settings_with_the_effective_model(api, models, chat):
    body = api.get(url(chat)).json()
    assert body["model"] == "claude-sonnet-5-5"  # blank: the default
    assert body["instructions"] == "" and body["tool_mode"] == "auto" and body["max_steps"] == 0
    assert body["instructions_max_chars"] == 100  # AGENT_INSTRUCTIONS_MAX_CHARS, for the UI's counter
    ChatSession.objects.filter(pk=chat.pk).update(model="claude-retired")  # taken off the list
    assert api.get(url(chat)).json()["model"] == "claude-sonnet-5-5"
    listed = api.get("/api/v1/sessions/").json()["results"][0]
    assert listed["model"] == "claude-sonnet-5-5" and listed["tool_mode"] == "auto"


def test_patch_changes_the_settings(api, models, chat):
    resp = api.patch(
        url(chat),
        {"model": "claude-opus-5", "instructions": "Answer in French.", "tool_mode": "plan", "max_steps": 7},
        format="json",
    )
    assert resp.status_code == 200, resp.content
    body = resp.json()
    assert (body["model"], body["instructions"], body["tool_mode"], body["max_steps"]) == (
        "claude-opus-5",
        "Answer in French.",
        "plan",
        7,
    )
    chat.refresh_from_db()
    assert (chat.model, chat.instructions, chat.tool_mode, chat.max_steps, chat.title) == (
        "claude-opus-5",
        "Answer in French.",
        "plan",
        7,
        "settings",  # untouched
    )
    assert api.get(url(chat)).json()["model"] == "claude-opus-5"
    # One field at a time leaves the others alone; null model = back to the server default.
    assert api.patch(url(chat), {"max_steps": 40}, format="json").json()["max_steps"] == 40
    back = api.patch(url(chat), {"model": None, "instructions": ""}, format="json").json()
    assert back["model"] == "claude-sonnet-5-5" and back["instructions"] == "" and back["tool_mode"] == "plan"
    chat.refresh_from_db()
    assert chat.model == "" and chat.max_steps == 40


@pytest.mark.parametrize(
    ("patch", "message"),
    [
        ({"model": "gpt-5"}, "Unknown model 'gpt-5': choose one of GET /api/v1/models/."),
        ({"model": ""}, "Unknown model '': choose one of GET /api/v1/models/."),
        ({"model": 5}, "Unknown model '5': choose one of GET /api/v1/models/."),
        ({"instructions": "x" * 101}, "The instructions are longer than 100 characters."),
        ({"instructions": 12}, "instructions: Not a valid string."),
        ({"instructions": "a\x00b"}, "instructions: Null characters are not allowed."),
        ({"tool_mode": "yolo"}, "Unknown tool_mode 'yolo': choose one of auto, ask, plan."),
        ({"max_steps": -1}, "max_steps must be an integer from 0 (the server default) to 40."),
        ({"max_steps": 41}, "max_steps must be an integer from 0 (the server default) to 40."),
        ({"max_steps": "5"}, "max_steps must be an integer from 0 (the server default) to 40."),
        ({"max_steps": True}, "max_steps must be an integer from 0 (the server default) to 40."),
        ({"max_steps": 2.5}, "max_steps must be an integer from 0 (the server default) to 40."),
    ],
)
def test_patch_refuses_bad_settings_with_a_clear_message(api, models, chat, patch, message):
    resp = api.patch(url(chat), {**patch, "title": "renamed"}, format="json")
    assert resp.status_code == 400, resp.content
    error = resp.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["message"] == message
    assert list(error["details"]) == list(patch)
    chat.refresh_from_db()
    assert (chat.title, chat.model, chat.instructions, chat.tool_mode, chat.max_steps) == (
        "settings",
        "",
        "",
        "auto",
        0,
    )


def test_patch_limits_follow_the_settings(api, models, chat, settings):
    settings.AGENT_MAX_TURNS = 3
    settings.AGENT_INSTRUCTIONS_MAX_CHARS = 5
    assert api.patch(url(chat), {"max_steps": 4}, format="json").status_code == 400
    assert api.patch(url(chat), {"instructions": "123456"}, format="json").status_code == 400
    ok = api.patch(url(chat), {"max_steps": 3, "instructions": "12345"}, format="json")
    assert ok.status_code == 200 and ok.json()["max_steps"] == 3


def test_patch_of_another_users_chat_is_404(api, models, other_user):
    theirs = session_create(owner=other_user, title="bob's")
    resp = api.patch(url(theirs), {"model": "claude-opus-5"}, format="json")
    assert resp.status_code == 404
    theirs.refresh_from_db()
    assert theirs.model == ""


def test_schema_documents_the_settings_and_the_models(api, models):
    schema = api.get("/api/v1/schema/?format=json").json()
    update = schema["components"]["schemas"]["PatchedSessionUpdateRequest"]["properties"]
    assert {"model", "instructions", "tool_mode", "max_steps"} <= set(update)
    assert update["max_steps"]["maximum"] == 40
    enums = [s for s in schema["components"]["schemas"].values() if "claude-opus-5" in s.get("enum", [])]
    assert enums and set(enums[0]["enum"]) == {"claude-sonnet-5-5", "claude-opus-5", "claude-haiku-5"}
    session = schema["components"]["schemas"]["Session"]["properties"]
    assert {"model", "instructions", "tool_mode", "max_steps"} <= set(session)
    assert "/api/v1/models/" in schema["paths"]
    assert "model" in schema["components"]["schemas"]["ChatRequestRequest"]["properties"]
