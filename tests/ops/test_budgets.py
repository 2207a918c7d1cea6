"""Token budgets: weights, daily/weekly windows and their reset, refusals recorded, reservations,
step checks, upstream rate limits, and the check-and-reserve racing across real threads."""

from __future__ import annotations

import datetime as dt
import threading

import pytest

from agents.errors import AgentError, ErrorKind
from agents.turn import Usage
from chat.models import ChatTurn, RateLimitRecord, TokenUsage, UserBudget
from chat.usage import (
    budget_status,
    budget_step_check,
    day_window,
    rate_limit_record_upstream,
    usage_record,
    week_window,
)
from tests.conftest import run_threads
from tests.ops.conftest import budget_reserve, reservations_of, seed_usage

MODEL = "claude-test"


@pytest.fixture
def budgets(settings):
    settings.USER_TOKEN_BUDGET_DAILY = 10_000
    settings.USER_TOKEN_BUDGET_WEEKLY = 50_000
    settings.TURN_RESERVE_TOKENS = 1_000
    settings.USAGE_WEIGHT_INPUT = 1.0
    settings.USAGE_WEIGHT_OUTPUT = 5.0
    settings.USAGE_WEIGHT_CACHE_READ = 0.1
    settings.USAGE_WEIGHT_CACHE_WRITE = 1.25
    return settings


def refusal(user, model: str = MODEL) -> AgentError:
    with pytest.raises(AgentError) as info:
        budget_reserve(user, model=model)
    return info.value


def turn_end(turn: ChatTurn) -> None:
    """The write that records a turn's end releases its reservation (chat.runtime.runner)."""
    ChatTurn.objects.filter(pk=turn.pk).update(status=ChatTurn.Status.FINISHED, reserved_tokens=0)


@pytest.mark.django_db
def test_usage_record_weights_tokens_and_the_turn_end_releases_the_reservation(budgets, user):
    turn = budget_reserve(user, model=MODEL)
    assert reservations_of(user) == 1 and turn.reserved_tokens == 1_000
    row = usage_record(
        user=user,
        session=turn.session,
        turn=turn,
        model=MODEL,
        backend="api",
        usage=Usage(
            input_tokens=1000,
            output_tokens=100,
            cache_read_tokens=2000,
            cache_write_tokens=400,
            cost_usd=0.0123456789,
        ),
    )
    assert row.weighted_tokens == 1000 + 500 + 200 + 500
    assert float(row.cost_usd) == pytest.approx(0.012346)
    # A title call's usage counts but does not release a turn's reservation.
    usage_record(
        user=user,
        session=None,
        turn=None,
        model=MODEL,
        backend="api",
        usage=Usage(input_tokens=5),
        purpose="title",
    )
    assert reservations_of(user) == 1
    turn_end(turn)
    assert reservations_of(user) == 0


@pytest.mark.django_db
def test_daily_budget_refused_with_reset_time_and_recorded(budgets, user):
    seed_usage(user, weighted=10_000)
    error = refusal(user)
    _, day_reset = day_window()
    assert error.kind == ErrorKind.BUDGET
    assert error.resets_at == day_reset
    assert "daily" in error.message and f"{day_reset:%Y-%m-%d %H:%M} UTC" in error.message
    record = RateLimitRecord.objects.get(user=user)
    assert (
        record.source == RateLimitRecord.Source.BUDGET
        and record.resets_at == day_reset
        and record.model == MODEL
    )
    assert reservations_of(user) == 0, "a refused turn reserves nothing"
    assert not ChatTurn.objects.filter(session__owner=user).exists()


@pytest.mark.django_db
def test_daily_window_resets_at_utc_midnight(budgets, user):
    day_start, _ = day_window()
    row = seed_usage(user, weighted=10_000, at=day_start - dt.timedelta(seconds=1))
    turn_end(budget_reserve(user, model=MODEL))  # yesterday's usage does not count today
    TokenUsage.objects.filter(pk=row.pk).update(created_at=day_start)
    assert refusal(user).kind == ErrorKind.BUDGET  # the same usage at 00:00 today does


@pytest.mark.django_db
def test_weekly_window_resets_on_monday(budgets, user):
    budgets.USER_TOKEN_BUDGET_DAILY = 10**9
    week_start, week_reset = week_window()
    assert week_start.weekday() == 0 and week_start.hour == 0
    row = seed_usage(user, weighted=50_000, at=week_start - dt.timedelta(seconds=1))
    turn_end(budget_reserve(user, model=MODEL))  # last week's usage does not count
    TokenUsage.objects.filter(pk=row.pk).update(created_at=week_start + dt.timedelta(seconds=1))
    error = refusal(user)
    assert error.resets_at == week_reset and "weekly" in error.message


@pytest.mark.django_db
def test_per_user_override(budgets, user, other_user):
    UserBudget.objects.create(user=user, daily_limit=500)
    seed_usage(user, weighted=600)
    seed_usage(other_user, weighted=600)
    assert refusal(user).kind == ErrorKind.BUDGET
    budget_reserve(other_user, model=MODEL)  # the default (10 000) applies to bob


@pytest.mark.django_db
def test_reservations_bound_concurrent_turns_and_are_released(budgets, user):
    budgets.USER_TOKEN_BUDGET_DAILY = 3_000
    turns = [budget_reserve(user, model=MODEL) for _ in range(3)]
    assert refusal(user).kind == ErrorKind.BUDGET
    turn_end(turns[0])
    budget_reserve(user, model=MODEL)
    assert refusal(user).kind == ErrorKind.BUDGET
    # A reservation whose turn never reported expires.
    ChatTurn.objects.filter(session__owner=user).update(
        started_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=budgets.TURN_RESERVE_TTL_SECONDS + 60)
    )
    budget_reserve(user, model=MODEL)


@pytest.mark.django_db
def test_step_check_stops_a_long_turn(budgets, user):
    seed_usage(user, weighted=8_000)
    budget_step_check(user=user, model=MODEL, usage_so_far=Usage(input_tokens=1_000, output_tokens=100))
    with pytest.raises(AgentError) as info:
        budget_step_check(user=user, model=MODEL, usage_so_far=Usage(input_tokens=1_500, output_tokens=100))
    assert info.value.kind == ErrorKind.BUDGET and info.value.resets_at == day_window()[1]
    assert RateLimitRecord.objects.filter(user=user, source="budget").count() == 1


@pytest.mark.django_db
def test_upstream_rate_limit_blocks_the_model_until_it_resets(budgets, user, other_user):
    from django.utils import timezone

    resets_at = timezone.now() + dt.timedelta(minutes=5)
    record = rate_limit_record_upstream(
        user=user,
        session=None,
        model=MODEL,
        error=AgentError(ErrorKind.RATE_LIMITED, detail="HTTP 429: slow down", resets_at=resets_at),
    )
    assert record.source == "upstream" and record.raw_message == "HTTP 429: slow down"
    for who in (user, other_user):  # the server's account is limited, for everyone
        error = refusal(who)
        assert error.kind == ErrorKind.RATE_LIMITED and error.resets_at == resets_at
        assert f"{resets_at.astimezone(dt.UTC):%H:%M} UTC" in error.message
    turn_end(budget_reserve(user, model="another-model"))
    RateLimitRecord.objects.filter(pk=record.pk).update(resets_at=timezone.now() - dt.timedelta(seconds=1))
    budget_reserve(user, model=MODEL)


@pytest.mark.django_db
def test_upstream_retry_after_without_reset_time(budgets, user):
    record = rate_limit_record_upstream(
        user=user,
        session=None,
        model=MODEL,
        error=AgentError(ErrorKind.RATE_LIMITED, detail="429", retry_after=30),
    )
    assert record.resets_at is not None
    assert refusal(user).kind == ErrorKind.RATE_LIMITED


@pytest.mark.django_db
def test_budget_status(budgets, user):
    seed_usage(user, weighted=2_000)
    seed_usage(user, weighted=7_000, at=day_window()[0] - dt.timedelta(seconds=1))
    budget_reserve(user, model=MODEL)
    status = budget_status(user=user)
    assert status["day"]["used"] == 2_000 and status["day"]["reserved"] == 1_000
    assert status["day"]["limit"] == 10_000 and status["day"]["remaining"] == 7_000
    assert status["day"]["resets_at"] == day_window()[1] and status["week"]["resets_at"] == week_window()[1]
    expected_week = 9_000 if week_window()[0] < day_window()[0] else 2_000
    assert status["week"]["used"] == expected_week


THREADS = 6


@pytest.mark.django_db(transaction=True)
def test_concurrent_turns_of_one_user_race_the_budget(budgets, user):
    """Real threads with their own connections: exactly the number of turns that fit pass."""
    budgets.USER_TOKEN_BUDGET_DAILY = 2_500
    seed_usage(user, weighted=1_000)
    # A turn passes while used + reserved < limit, then reserves 1 000: at 1 000 and 2 000 it passes,
    # at 3 000 it is refused, so exactly two of the six pass, whatever the interleaving.
    barrier = threading.Barrier(THREADS)
    passed: list[int] = []
    refused: list[ErrorKind] = []

    def turn(n: int) -> None:
        barrier.wait(timeout=30)
        try:
            budget_reserve(user, model=MODEL)
            passed.append(n)
        except AgentError as exc:
            refused.append(exc.kind)

    errors = run_threads(turn, THREADS)
    assert not errors, errors
    assert len(passed) == 2, (passed, refused)
    assert refused == [ErrorKind.BUDGET] * (THREADS - 2)
    assert reservations_of(user) == 2
    assert RateLimitRecord.objects.filter(user=user, source="budget").count() == THREADS - 2
