"""Where the model lives (``agents.config.model_endpoint``) and the ``agents.E002`` system check:
the scripted model starts by itself only under DEBUG=true; a production server (DEBUG=false)
without ANTHROPIC_API_KEY or ANTHROPIC_BASE_URL refuses, and ``manage.py check`` says so."""

from __future__ import annotations

import pytest

import scripted_model.server
from agents.checks import model_check
from agents.config import OFFLINE_API_KEY, model_endpoint
from agents.errors import AgentError

from .conftest import run_turn_chunks, turn_input


@pytest.fixture
def no_model(settings, monkeypatch):
    """No key, no base URL; starting the scripted model would fail the test."""
    settings.ANTHROPIC_API_KEY = ""
    settings.ANTHROPIC_BASE_URL = ""

    def never() -> str:
        raise AssertionError("the scripted model was started")

    monkeypatch.setattr(scripted_model.server, "ensure_scripted_model", never)
    return settings


def test_production_without_a_model_raises_a_clear_error(no_model):
    no_model.DEBUG = False
    with pytest.raises(AgentError) as caught:
        model_endpoint()
    assert "ANTHROPIC_API_KEY" in caught.value.message and "ANTHROPIC_BASE_URL" in caught.value.message
    assert not caught.value.user_may_retry


def test_production_check_reports_a_missing_model(no_model):
    no_model.DEBUG = False
    [error] = model_check()
    assert error.id == "agents.E002" and "ANTHROPIC_API_KEY" in error.msg


@pytest.mark.parametrize("setting", ["ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"])
def test_production_with_a_key_or_a_base_url_is_fine(no_model, setting):
    no_model.DEBUG = False
    setattr(
        no_model,
        setting,
        "sk-ant-configured-1234" if setting == "ANTHROPIC_API_KEY" else "http://127.0.0.1:9",
    )
    assert model_check() == []
    endpoint = model_endpoint()
    assert endpoint.offline == (setting == "ANTHROPIC_BASE_URL")


def test_debug_starts_the_scripted_model_in_process(no_model, monkeypatch):
    no_model.DEBUG = True
    assert model_check() == []
    monkeypatch.setattr(scripted_model.server, "ensure_scripted_model", lambda: "http://127.0.0.1:1")
    endpoint = model_endpoint()
    assert (endpoint.base_url, endpoint.api_key, endpoint.offline) == (
        "http://127.0.0.1:1",
        OFFLINE_API_KEY,
        True,
    )


async def test_a_production_turn_without_a_model_ends_with_that_error(no_model, workspace):
    no_model.DEBUG = False
    chunks, result = await run_turn_chunks(turn_input(workspace, "hello"))
    [error] = [c for c in chunks if c["type"] == "error"]
    assert "ANTHROPIC_API_KEY" in error["errorText"] and result.error is not None
