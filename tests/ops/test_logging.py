"""One structured line per turn and per error on ``copilot.turns``; no content unless enabled."""

from __future__ import annotations

import logging

from agents.turn import Usage
from chat.turnlog import log_error, log_turn


def lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "copilot.turns"]


def test_turn_line_has_the_fields(caplog, settings):
    settings.LOG_MESSAGE_CONTENT = False
    settings.USAGE_WEIGHT_OUTPUT = 5.0
    caplog.set_level(logging.INFO, logger="copilot.turns")
    log_turn(
        session_id="s-1",
        user_id=7,
        backend="api",
        model="claude-x",
        duration_s=1.23456,
        usage=Usage(input_tokens=100, output_tokens=10, cost_usd=0.0042),
        cost_usd=None,
        finish_reason="stop",
        error_code="",
        text="my secret plans",
    )
    (record,) = lines(caplog)
    message = record.getMessage()
    assert message.startswith("turn ") and record.levelno == logging.INFO
    for part in (
        "session=s-1",
        "user=7",
        "backend=api",
        "model=claude-x",
        "duration_s=1.235",
        "input_tokens=100",
        "output_tokens=10",
        "weighted_tokens=150",
        "cost_usd=0.0042",
        "finish_reason=stop",
        "error=-",
    ):
        assert part in message, (part, message)
    assert "secret plans" not in message and "text" not in record.copilot
    assert record.copilot["session"] == "s-1" and record.copilot["weighted_tokens"] == 150


def test_content_only_when_enabled_and_secrets_scrubbed(caplog, settings):
    settings.LOG_MESSAGE_CONTENT = True
    settings.ANTHROPIC_API_KEY = "sk-ant-test-very-secret-key-123456"
    caplog.set_level(logging.INFO, logger="copilot.turns")
    log_turn(
        session_id="s",
        user_id=1,
        backend="sdk",
        model="m",
        duration_s=0.5,
        usage=None,
        cost_usd=0.0,
        finish_reason="stop",
        error_code="",
        text="hello there",
    )
    log_error(
        session_id="s",
        user_id=1,
        backend="sdk",
        model="m",
        error_code="authentication",
        detail="HTTP 401: bad key sk-ant-test-very-secret-key-123456",
    )
    turn, error = lines(caplog)
    assert 'text="hello there"' in turn.getMessage()
    assert error.getMessage().startswith("error ") and error.levelno == logging.WARNING
    assert "error=authentication" in error.getMessage()
    assert "very-secret" not in error.getMessage() and "[redacted]" in error.getMessage()


def test_failed_turn_logs_at_warning(caplog):
    caplog.set_level(logging.INFO, logger="copilot.turns")
    log_turn(
        session_id="s",
        user_id=1,
        backend="api",
        model="m",
        duration_s=2,
        usage={"input_tokens": 3},
        cost_usd=None,
        finish_reason="error",
        error_code="rate_limited",
    )
    (record,) = lines(caplog)
    assert record.levelno == logging.WARNING and "error=rate_limited" in record.getMessage()
