"""Error classification (HTTP statuses, real anthropic/httpx exceptions, CLI texts), scrubbing and
the retry matrix."""

from __future__ import annotations

import datetime as dt
import zoneinfo

import anthropic
import httpx2
import pytest

from agents.errors import (
    AgentError,
    ErrorKind,
    classify_exception,
    classify_status,
    classify_text,
    parse_reset_time,
    scrub,
)
from agents.retry import retry_delay


def _status_error(status: int, body: dict, headers: dict | None = None) -> anthropic.APIStatusError:
    request = httpx2.Request("POST", "http://127.0.0.1/v1/messages")
    response = httpx2.Response(status, headers=headers or {}, json=body, request=request)
    client = anthropic.Anthropic(api_key="sk-ant-unit-test-key", base_url="http://127.0.0.1")
    return client._make_status_error_from_response(response)


@pytest.mark.parametrize(
    ("status", "message", "kind"),
    [
        (401, "invalid x-api-key", ErrorKind.AUTHENTICATION),
        (402, "payment required", ErrorKind.BILLING),
        (403, "forbidden", ErrorKind.BILLING),
        (400, "Your credit balance is too low to access the Anthropic API.", ErrorKind.BILLING),
        (400, "prompt is too long: 250000 tokens > 200000 maximum", ErrorKind.PROMPT_TOO_LONG),
        (400, "messages.0: bad", ErrorKind.INVALID_REQUEST),
        (404, "model not found", ErrorKind.INVALID_REQUEST),
        (500, "boom", ErrorKind.SERVER),
        (502, "bad gateway", ErrorKind.SERVER),
        (503, "unavailable", ErrorKind.SERVER),
        (529, "Overloaded", ErrorKind.OVERLOADED),
    ],
)
def test_classify_status(status, message, kind):
    error = classify_status(status, message, None)
    assert error.kind == kind
    assert error.status_code == status
    assert error.message  # a user-facing text from the kind


def test_classify_status_429_reset_from_retry_after_and_headers():
    reset = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=120)).replace(microsecond=0)
    headers = {
        "retry-after": "30",
        "anthropic-ratelimit-tokens-remaining": "0",
        "anthropic-ratelimit-tokens-reset": reset.isoformat().replace("+00:00", "Z"),
        "anthropic-ratelimit-requests-remaining": "10",
        "anthropic-ratelimit-requests-reset": (reset + dt.timedelta(hours=1)).isoformat(),
    }
    error = classify_status(429, "rate limited", headers)
    assert error.kind == ErrorKind.RATE_LIMITED
    assert error.retry_after == 30
    # the exhausted limit's reset (later than retry-after), not the one with requests remaining
    assert error.resets_at == reset
    assert "resets at" in error.message

    only_retry_after = classify_status(429, "", {"Retry-After": "5"})
    assert only_retry_after.retry_after == 5
    assert only_retry_after.resets_at is not None


def test_classify_exception_real_client_errors():
    rate = classify_exception(
        _status_error(
            429,
            {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}},
            {"retry-after": "2"},
        )
    )
    assert rate.kind == ErrorKind.RATE_LIMITED and rate.retry_after == 2 and rate.resets_at is not None
    assert (
        classify_exception(
            _status_error(401, {"error": {"type": "authentication_error", "message": "bad key"}})
        ).kind
        == ErrorKind.AUTHENTICATION
    )
    assert (
        classify_exception(
            _status_error(529, {"error": {"type": "overloaded_error", "message": "Overloaded"}})
        ).kind
        == ErrorKind.OVERLOADED
    )
    too_long = _status_error(
        400, {"error": {"type": "invalid_request_error", "message": "prompt is too long: 1 > 0"}}
    )
    assert classify_exception(too_long).kind == ErrorKind.PROMPT_TOO_LONG
    request = httpx2.Request("POST", "http://127.0.0.1/v1/messages")
    assert classify_exception(anthropic.APIConnectionError(request=request)).kind == ErrorKind.CONNECTION
    assert classify_exception(anthropic.APITimeoutError(request=request)).kind == ErrorKind.CONNECTION
    assert (
        classify_exception(httpx2.RemoteProtocolError("peer closed connection")).kind == ErrorKind.CONNECTION
    )
    assert classify_exception(httpx2.ReadError("")).kind == ErrorKind.CONNECTION
    passthrough = AgentError(ErrorKind.BUDGET)
    assert classify_exception(passthrough) is passthrough


def test_classify_exception_unknown_is_scrubbed(settings):
    settings.ANTHROPIC_API_KEY = "sk-ant-api03-secret-value-123456"
    error = classify_exception(ValueError("failed with key sk-ant-api03-secret-value-123456 inside"))
    assert error.kind == ErrorKind.UNKNOWN
    assert "secret-value" not in error.detail
    assert "secret" not in error.message


def test_scrub_removes_configured_secrets_and_key_shapes(settings):
    settings.ANTHROPIC_API_KEY = "my-very-own-secret-key"
    text = scrub("key=my-very-own-secret-key other=sk-ant-abcdefghijklmnop SECRET=" + settings.SECRET_KEY)
    assert "my-very-own-secret-key" not in text
    assert "sk-ant-abcdefghijklmnop" not in text
    assert settings.SECRET_KEY not in text
    assert text.count("[redacted]") == 3


def test_classify_text_cli_limit_message_parses_reset_in_its_zone():
    la = zoneinfo.ZoneInfo("America/Los_Angeles")
    now = dt.datetime(2025, 6, 1, 10, 30, tzinfo=la)
    error = classify_text("You've hit your limit · resets 4pm (America/Los_Angeles)", now=now)
    assert error is not None and error.kind == ErrorKind.RATE_LIMITED
    assert error.resets_at == dt.datetime(2025, 6, 1, 16, 0, tzinfo=la)
    assert error.retry_after == pytest.approx(5.5 * 3600)
    # already past today: the next day
    later = dt.datetime(2025, 6, 1, 17, 0, tzinfo=la)
    assert parse_reset_time("resets 4pm (America/Los_Angeles)", now=later) == dt.datetime(
        2025, 6, 2, 16, 0, tzinfo=la
    )
    assert parse_reset_time(
        "resets 4:30am (UTC)", now=dt.datetime(2025, 6, 1, 1, 0, tzinfo=dt.UTC)
    ) == dt.datetime(2025, 6, 1, 4, 30, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("Prompt is too long", ErrorKind.PROMPT_TOO_LONG),
        ("Credit balance is too low", ErrorKind.BILLING),
        ("Invalid API key · Please run /login", ErrorKind.AUTHENTICATION),
        (
            'API Error: 529 {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}',
            ErrorKind.OVERLOADED,
        ),
        ("API Error: 500 Internal server error", ErrorKind.SERVER),
        ("API Error: 401 unauthorized", ErrorKind.AUTHENTICATION),
        ("API Error: 429 too many", ErrorKind.RATE_LIMITED),
        ("Overloaded", ErrorKind.OVERLOADED),
        ("Claude's response exceeded the 32000 output token maximum", ErrorKind.MAX_OUTPUT_TOKENS),
        ("API Error: Request timed out.", ErrorKind.CONNECTION),
    ],
)
def test_classify_text(text, kind):
    error = classify_text(text)
    assert error is not None and error.kind == kind


def test_classify_text_ignores_ordinary_answers():
    assert classify_text("Here is the summary you asked for.") is None
    assert classify_text("") is None


def test_retry_matrix(settings):
    settings.AGENT_MAX_RETRIES = 3
    settings.AGENT_RETRY_BASE_DELAY = 1.0
    settings.AGENT_RETRY_MAX_DELAY = 10.0
    for kind in (ErrorKind.SERVER, ErrorKind.OVERLOADED, ErrorKind.CONNECTION):
        delays = [retry_delay(AgentError(kind), attempt) for attempt in range(4)]
        assert delays[3] is None  # AGENT_MAX_RETRIES reached
        for attempt, delay in enumerate(delays[:3]):
            assert 2**attempt / 2 <= delay <= 2**attempt  # exponential with jitter
    for kind in (
        ErrorKind.AUTHENTICATION,
        ErrorKind.BILLING,
        ErrorKind.INVALID_REQUEST,
        ErrorKind.PROMPT_TOO_LONG,
        ErrorKind.BUDGET,
        ErrorKind.POLICY,
        ErrorKind.UNKNOWN,
    ):
        assert retry_delay(AgentError(kind), 0) is None
    assert retry_delay(AgentError(ErrorKind.MAX_OUTPUT_TOKENS), 0) == 0.0
    assert retry_delay(AgentError(ErrorKind.MAX_OUTPUT_TOKENS), 1) is None
    # retry-after honoured, capped; a rate limit resetting beyond the cap is not retried
    assert retry_delay(AgentError(ErrorKind.RATE_LIMITED, retry_after=7), 0) == 7
    assert retry_delay(AgentError(ErrorKind.RATE_LIMITED, retry_after=3600), 0) is None
    assert retry_delay(AgentError(ErrorKind.OVERLOADED, retry_after=3600), 0) == 10.0
    settings.AGENT_RETRY_BASE_DELAY = 100.0
    assert retry_delay(AgentError(ErrorKind.SERVER), 2) == 10.0
