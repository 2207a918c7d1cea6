"""MCP servers in the REST API and the admin (docs/api.md "MCP servers"): ``GET
/api/v1/mcp-servers/`` lists the enabled ones; a session's ``mcp_servers`` (names) is shown and
changed with ``GET``/``PATCH /api/v1/sessions/<id>/``; unknown or disabled names are a 400
``invalid_request`` that changes nothing; a turn gets the chat's enabled servers' configs."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from agents.mcp_config import McpServerConfig
from chat.admin import McpServerForm
from chat.models import ChatSession, McpServer
from chat.runtime.start import turn_input_build
from chat.services import session_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def servers():
    notes = McpServer.objects.create(
        name="notes", transport="stdio", command=["python", "-m", "agents.mcp_notes"], description="Notes"
    )
    web = McpServer.objects.create(
        name="web",
        transport="http",
        url="https://mcp.example.com/mcp",
        headers={"Authorization": "Bearer ${WEB_MCP_TOKEN}"},
        timeout_seconds=12,
    )
    off = McpServer.objects.create(name="off", transport="stdio", command=["true"], enabled=False)
    return notes, web, off


@pytest.fixture
def chat(user):
    return session_create(owner=user, title="mcp")


def url(session: ChatSession) -> str:
    return f"/api/v1/sessions/{session.pk}/"


def test_the_list_shows_the_enabled_servers_only(api, servers):
    resp = api.get("/api/v1/mcp-servers/")
    assert resp.status_code == 200
    assert resp.json() == [
        {"name": "notes", "description": "Notes", "transport": "stdio"},
        {"name": "web", "description": "", "transport": "http"},
    ]
    assert "WEB_MCP_TOKEN" not in resp.content.decode()  # the configuration is the operator's


def test_the_list_needs_credentials(servers):
    assert APIClient().get("/api/v1/mcp-servers/").status_code == 401


def test_a_chat_enables_servers_by_name(api, servers, chat):
    assert api.get(url(chat)).json()["mcp_servers"] == []
    resp = api.patch(url(chat), {"mcp_servers": ["web", "notes"]}, format="json")
    assert resp.status_code == 200, resp.content
    assert resp.json()["mcp_servers"] == ["notes", "web"]
    assert api.get(url(chat)).json()["mcp_servers"] == ["notes", "web"]
    listed = api.get("/api/v1/sessions/").json()["results"]
    assert listed[0]["mcp_servers"] == ["notes", "web"]
    resp = api.patch(url(chat), {"mcp_servers": []}, format="json")
    assert resp.json()["mcp_servers"] == []
    assert not chat.mcp_servers.exists()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (["nope"], "mcp_servers: Unknown MCP server 'nope': choose from GET /api/v1/mcp-servers/."),
        (["notes", "off"], "mcp_servers: Unknown MCP server 'off': choose from GET /api/v1/mcp-servers/."),
        ("notes", 'mcp_servers: Expected a list of items but got type "str".'),
        ([1], "mcp_servers: Not a valid string."),
        (None, "mcp_servers: This field may not be null."),
    ],
)
def test_unknown_or_disabled_names_are_refused_and_change_nothing(api, servers, chat, value, message):
    chat.mcp_servers.set([servers[0]])
    resp = api.patch(url(chat), {"mcp_servers": value, "title": "renamed"}, format="json")
    assert resp.status_code == 400, resp.content
    error = resp.json()["error"]
    assert error["code"] == "invalid_request"
    assert error["message"] == message
    chat.refresh_from_db()
    assert chat.title == "mcp"
    assert [s.name for s in chat.mcp_servers.all()] == ["notes"]


def test_a_turn_gets_the_enabled_servers_configs(servers, chat, user):
    notes, web, off = servers
    chat.mcp_servers.set([notes, web, off])
    inp = turn_input_build(session=chat, user=user, text="hi", attachments=[], history=[], message_id="m")
    assert inp.mcp_servers == [
        McpServerConfig(
            "notes",
            "stdio",
            command=("python", "-m", "agents.mcp_notes"),
            timeout_seconds=30.0,
            description="Notes",
        ),
        McpServerConfig(
            "web",
            "http",
            url="https://mcp.example.com/mcp",
            headers=(("Authorization", "Bearer ${WEB_MCP_TOKEN}"),),  # expanded only when connecting
            timeout_seconds=12.0,
        ),
    ]


def test_the_admin_edits_the_command_as_a_shell_line(servers):
    notes = servers[0]
    form = McpServerForm(instance=notes)
    assert form.initial["command"] == "python -m agents.mcp_notes"
    data = {
        "name": "notes2",
        "transport": "stdio",
        "command": "python -m agents.mcp_notes --dir 'my notes'",
        "url": "",
        "headers": "{}",
        "enabled": "on",
        "timeout_seconds": "30",
        "description": "",
    }
    form = McpServerForm(data=data)
    assert form.is_valid(), form.errors
    assert form.save().command == ["python", "-m", "agents.mcp_notes", "--dir", "my notes"]
    bad = McpServerForm(data={**data, "name": "a__b", "command": ""})
    assert not bad.is_valid()
    assert set(bad.errors) == {"name", "command"}
    unquoted = McpServerForm(data={**data, "name": "x", "command": "python 'oops"})
    assert not unquoted.is_valid() and "command" in unquoted.errors
    http = McpServerForm(data={**data, "name": "h", "transport": "http", "command": "", "url": ""})
    assert not http.is_valid() and "url" in http.errors


def test_without_servers_only_the_empty_list_is_accepted(api, chat):
    assert api.get("/api/v1/mcp-servers/").json() == []
    assert api.patch(url(chat), {"mcp_servers": []}, format="json").status_code == 200
    resp = api.patch(url(chat), {"mcp_servers": ["notes"]}, format="json")
    assert resp.status_code == 400
    assert resp.json()["error"]["message"] == (
        "mcp_servers: Unknown MCP server 'notes': choose from GET /api/v1/mcp-servers/."
    )
