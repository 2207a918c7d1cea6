"""The operator commands on seeded data, including everything they must not touch."""

from __future__ import annotations

import datetime as dt
import io
import os
import time
import uuid

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone

from chat.models import ChatMessage, ChatSession, ChatTurn, RateLimitRecord, TokenUsage
from chat.ops import parse_duration
from tests.conftest import require_services
from tests.ops.conftest import dead_worker, live_worker, plant_lock, seed_session, seed_turn

E, R, N = ChatMessage.Kind.ERROR, ChatMessage.Kind.RETRYABLE_ERROR, ChatMessage.Kind.NORMAL


def run(name: str, *args: str) -> str:
    out = io.StringIO()
    call_command(name, *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def kinds(session) -> list[str]:
    return list(
        ChatMessage.objects.filter(session=session).order_by("sequence").values_list("kind", flat=True)
    )


def test_parse_duration():
    assert parse_duration("90m") == dt.timedelta(minutes=90)
    assert parse_duration("12h") == dt.timedelta(hours=12)
    assert parse_duration("30d") == dt.timedelta(days=30)
    assert parse_duration("2w") == dt.timedelta(weeks=2)
    for bad in ("", "12", "h", "12x", "-1d", "0h", "1 day"):
        with pytest.raises(ValueError, match="invalid duration"):
            parse_duration(bad)


@pytest.mark.django_db
@pytest.mark.parametrize(
    "command,args",
    [
        ("cleanup_workspaces", ["--older-than", "12 hours"]),
        ("purge_sessions", ["--older-than", "soon"]),
        ("purge_rate_limit_records", ["--older-than", "30"]),
        ("clear_error_markers", []),
        ("clear_error_markers", ["--session", "not-a-uuid"]),
        ("clear_error_markers", ["--session", str(uuid.UUID(int=1))]),
    ],
)
def test_bad_arguments_fail(command, args):
    with pytest.raises(CommandError):
        call_command(command, *args, stdout=io.StringIO())


# --- cleanup_workspaces --------------------------------------------------------------------------


def _age(path, hours: float) -> None:
    old = time.time() - hours * 3600
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (old, old), follow_symlinks=False)
    os.utime(path, (old, old), follow_symlinks=False)


@pytest.mark.django_db
def test_cleanup_workspaces(settings, tmp_path, user):
    root = tmp_path / "workspaces"
    root.mkdir()
    settings.AGENT_WORKSPACE_ROOT = root
    old_activity = timezone.now() - dt.timedelta(days=2)

    def workspace(session, hours: float):
        path = root / str(session.pk)
        (path / "home").mkdir(parents=True)
        (path / "notes.txt").write_text("x")
        _age(path, hours)
        return path

    idle = seed_session(user, title="idle")
    busy = seed_session(user, title="busy")
    fresh = seed_session(user, title="fresh")
    recent_session = seed_session(user, title="recently active")
    ChatSession.objects.filter(pk__in=[idle.pk, busy.pk, fresh.pk]).update(last_activity_at=old_activity)
    seed_turn(busy)  # a running turn: never removed, however old its files
    idle_ws, busy_ws, fresh_ws = workspace(idle, 20), workspace(busy, 20), workspace(fresh, 1)
    recent_ws = workspace(recent_session, 20)  # old files, but the session was active just now
    orphan_ws = root / str(uuid.uuid4())  # a workspace whose session was purged
    orphan_ws.mkdir()
    _age(orphan_ws, 20)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    _age(outside, 100)
    link = root / str(uuid.uuid4())
    link.symlink_to(outside, target_is_directory=True)
    stray = root / "not-a-session"
    stray.mkdir()
    _age(stray, 100)

    dry = run("cleanup_workspaces", "--older-than", "12h", "--dry-run")
    assert "would remove 2 workspace(s)" in dry and "dry run" in dry
    assert idle_ws.exists() and orphan_ws.exists()

    out = run("cleanup_workspaces", "--older-than", "12h")
    assert "removed 2 workspace(s)" in out, out
    assert not idle_ws.exists() and not orphan_ws.exists()
    assert busy_ws.exists() and fresh_ws.exists() and recent_ws.exists() and stray.exists()
    assert link.is_symlink() and (outside / "precious.txt").read_text() == "keep me"
    assert (
        "1 active turn" in out
        and "1 symlink" in out
        and "2 recent" in out
        and "1 not a session workspace" in out
    )


@pytest.mark.django_db
def test_cleanup_workspaces_missing_root(settings, tmp_path):
    settings.AGENT_WORKSPACE_ROOT = tmp_path / "nowhere"
    assert "removed 0 workspace(s)" in run("cleanup_workspaces")


# --- clear_error_markers -------------------------------------------------------------------------


@pytest.mark.django_db
def test_clear_error_markers(user):
    trailing = seed_session(user, kinds=[N, N, R, E])
    middle = seed_session(user, kinds=[N, E, N, N])  # a marker followed by messages: not trailing
    busy = seed_session(user, kinds=[N, E])
    seed_turn(busy)
    stopped = seed_session(user, kinds=[N, ChatMessage.Kind.STOPPED])

    assert "would clear 2 error marker(s) in 1 session(s)" in run(
        "clear_error_markers", "--all-stale", "--dry-run"
    )
    assert kinds(trailing) == [N, N, R, E]
    out = run("clear_error_markers", "--all-stale")
    assert "cleared 2 error marker(s) in 1 session(s); skipped 1 session(s) with an active turn" in out
    assert kinds(trailing) == [N, N]
    assert kinds(middle) == [N, E, N, N]
    assert kinds(busy) == [N, E]
    assert kinds(stopped) == [N, ChatMessage.Kind.STOPPED]

    single = seed_session(user, kinds=[N, E])
    other = seed_session(user, kinds=[N, E])
    assert "cleared 1 error marker(s)" in run("clear_error_markers", "--session", str(single.pk))
    assert kinds(single) == [N] and kinds(other) == [N, E]
    assert "cleared 0" in run("clear_error_markers", "--session", str(busy.pk))
    assert kinds(busy) == [N, E]


# --- expire_stream_locks -------------------------------------------------------------------------


@pytest.mark.django_db
def test_expire_stream_locks(user, settings, locks_cleanup):
    settings.TURN_LEASE_SECONDS = 30
    dead = seed_session(user, kinds=[N])
    dead_turn = seed_turn(dead, heartbeat_age=120)
    never_beat = seed_session(user, kinds=[N])
    never_beat_turn = seed_turn(never_beat, heartbeat_age=None)  # started an hour ago, no heartbeat
    alive = seed_session(user, kinds=[N])
    alive_turn = seed_turn(alive, heartbeat_age=2)
    done = seed_session(user, kinds=[N])
    done_turn = seed_turn(done, status=ChatTurn.Status.FINISHED, heartbeat_age=3600)
    plant_lock(dead.pk, worker=dead_worker())
    plant_lock(alive.pk, worker=live_worker())
    locks_cleanup.extend([dead.pk, alive.pk])

    assert "would mark 2 dead turn(s) interrupted" in run("expire_stream_locks", "--dry-run")
    assert ChatTurn.objects.get(pk=dead_turn.pk).status == "running"

    out = run("expire_stream_locks")
    assert "marked 2 dead turn(s) interrupted" in out, out
    for turn, session in ((dead_turn, dead), (never_beat_turn, never_beat)):
        turn.refresh_from_db()
        assert turn.status == ChatTurn.Status.INTERRUPTED and turn.ended_at is not None
        marker = ChatMessage.objects.filter(session=session).order_by("-sequence").first()
        assert marker.kind == ChatMessage.Kind.RETRYABLE_ERROR and marker.text.startswith(
            "The server stopped while answering"
        )
        assert marker.metadata["retryable"] is True and marker.turn_id == turn.pk
    from chat.ops import locks_shared
    from chat.runtime import locks

    if locks_shared():  # with Redis this process sees (and frees) the dead worker's lock
        assert locks.lock_holder(locks.session_key(dead.pk)) is None
    assert locks.lock_holder(locks.session_key(alive.pk)) is not None
    assert ChatTurn.objects.get(pk=alive_turn.pk).status == "running"
    assert ChatTurn.objects.get(pk=done_turn.pk).status == "finished"
    assert kinds(alive) == [N] and kinds(done) == [N]
    assert "marked 0 dead turn(s)" in run("expire_stream_locks"), "a second run finds nothing"


@pytest.mark.django_db
@pytest.mark.services
def test_expire_stream_locks_skips_turn_with_live_shared_lock(user, settings, locks_cleanup):

    require_services(redis=True)  # only Redis locks are visible across processes
    session = seed_session(user, kinds=[N])
    turn = seed_turn(session, heartbeat_age=120)  # stale row, but its worker still refreshes the lock
    plant_lock(session.pk, worker="another-host:42")
    locks_cleanup.append(session.pk)
    assert "left 1 with a live lock" in run("expire_stream_locks")
    assert ChatTurn.objects.get(pk=turn.pk).status == "running"


# --- purge_sessions ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_purge_sessions(user, settings, tmp_path):
    settings.AGENT_WORKSPACE_ROOT = tmp_path / "ws"
    long_ago = timezone.now() - dt.timedelta(days=100)
    old_archived = seed_session(user, title="old archived", kinds=[N, N])
    old_open = seed_session(user, title="old open", kinds=[N])
    old_busy = seed_session(user, title="old busy", kinds=[N])
    recent = seed_session(user, title="recent", kinds=[N])
    ChatSession.objects.filter(pk__in=[old_archived.pk, old_open.pk, old_busy.pk]).update(
        last_activity_at=long_ago
    )
    ChatSession.objects.filter(pk__in=[old_archived.pk, old_busy.pk]).update(archived=True)
    seed_turn(old_busy)
    usage = TokenUsage.objects.create(
        user=user, session=old_archived, model="m", backend="api", weighted_tokens=5
    )
    workspace = settings.AGENT_WORKSPACE_ROOT / str(old_archived.pk)
    workspace.mkdir(parents=True)

    assert "would delete 1 archived session(s)" in run(
        "purge_sessions", "--older-than", "90d", "--archived-only", "--dry-run"
    )
    out = run("purge_sessions", "--older-than", "90d", "--archived-only")
    assert "deleted 1 archived session(s) inactive > 90d and 1 workspace(s)" in out, out
    assert not ChatSession.objects.filter(pk=old_archived.pk).exists() and not workspace.exists()
    assert not ChatMessage.objects.filter(session_id=old_archived.pk).exists()
    assert ChatSession.objects.filter(pk=old_open.pk).exists(), "--archived-only keeps non-archived sessions"
    assert ChatSession.objects.filter(pk=old_busy.pk).exists(), "never a session with an active turn"
    usage.refresh_from_db()
    assert usage.session_id is None and usage.weighted_tokens == 5, "usage survives, unlinked"

    assert "deleted 1 session(s)" in run("purge_sessions", "--older-than", "90d")
    assert not ChatSession.objects.filter(pk=old_open.pk).exists()
    assert set(ChatSession.objects.values_list("pk", flat=True)) == {old_busy.pk, recent.pk}


# --- purge_rate_limit_records --------------------------------------------------------------------


@pytest.mark.django_db
def test_purge_rate_limit_records(user):
    now = timezone.now()
    old_past = RateLimitRecord.objects.create(
        user=user, source="budget", resets_at=now - dt.timedelta(days=40)
    )
    old_no_reset = RateLimitRecord.objects.create(user=user, source="upstream")
    old_active = RateLimitRecord.objects.create(
        user=user, source="upstream", model="m", resets_at=now + dt.timedelta(hours=1)
    )
    recent = RateLimitRecord.objects.create(user=user, source="budget", resets_at=now - dt.timedelta(days=1))
    RateLimitRecord.objects.filter(pk__in=[old_past.pk, old_no_reset.pk, old_active.pk]).update(
        created_at=now - dt.timedelta(days=45)
    )

    assert "would delete 2 rate-limit record(s)" in run(
        "purge_rate_limit_records", "--older-than", "30d", "--dry-run"
    )
    assert RateLimitRecord.objects.count() == 4
    assert "deleted 2 rate-limit record(s) older than 30d" in run(
        "purge_rate_limit_records", "--older-than", "30d"
    )
    assert set(RateLimitRecord.objects.values_list("pk", flat=True)) == {old_active.pk, recent.pk}


# --- ensure_demo_user ----------------------------------------------------------------------------


@pytest.mark.django_db
def test_ensure_demo_user_refuses_without_debug(settings, django_user_model):
    """The demo login has a published password: it must never be created on a production setup."""
    settings.DEBUG = False
    with pytest.raises(CommandError, match="DEBUG"):
        call_command("ensure_demo_user", stdout=io.StringIO())
    assert not django_user_model.objects.filter(username="demo").exists()
    # An existing account named demo is not reset either.
    django_user_model.objects.create_user(username="demo", password="a-real-secret-1234")
    with pytest.raises(CommandError):
        call_command("ensure_demo_user", stdout=io.StringIO())
    assert django_user_model.objects.get(username="demo").check_password("a-real-secret-1234")


@pytest.mark.django_db
def test_ensure_demo_user_with_debug(settings, django_user_model):
    settings.DEBUG = True
    assert "Created demo login" in run("ensure_demo_user")
    user = django_user_model.objects.get(username="demo")
    assert user.is_superuser and user.check_password("demo-password")


# --- the development .env that `make run` writes -------------------------------------------------


def _clean_env(**extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in {"DEBUG", "SECRET_KEY", "ALLOWED_HOSTS", "ENV_FILE"}
    }
    return {**env, **extra}


def test_make_run_writes_a_development_env_only_when_missing(tmp_path):
    import shutil
    import subprocess
    import sys

    from django.conf import settings as dj

    base = dj.BASE_DIR
    # The Makefile's run target writes .env (via scripts/dev-env.sh) only when there is none.
    shutil.copy(base / "Makefile", tmp_path / "Makefile")
    dry = subprocess.run(["make", "-n", "run"], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert "scripts/dev-env.sh" in dry.stdout, dry.stdout + dry.stderr
    (tmp_path / ".env").write_text("DEBUG=true\n")
    dry = subprocess.run(["make", "-n", "run"], cwd=tmp_path, capture_output=True, text=True, timeout=30)
    assert "scripts/dev-env.sh" not in dry.stdout

    target = tmp_path / "fresh" / ".env"
    target.parent.mkdir()
    subprocess.run(["bash", str(base / "scripts/dev-env.sh"), str(target)], check=True, timeout=30)
    text = target.read_text()
    assert "DEBUG=true" in text.splitlines()
    key = next(line.split("=", 1)[1] for line in text.splitlines() if line.startswith("SECRET_KEY="))
    assert key.startswith("django-insecure-") and len(key) >= 66, "a generated development key"
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    # A second call keeps the file (and its key) as it is.
    subprocess.run(["bash", str(base / "scripts/dev-env.sh"), str(target)], check=True, timeout=30)
    assert target.read_text() == text

    # Without DEBUG in the environment, Django commands (createsuperuser's settings) start with that file,
    # and refuse without it (DEBUG defaults to false): the .env is what makes a fresh checkout usable.
    code = "from django.conf import settings; print(settings.DEBUG, settings.SECRET_KEY)"
    shell = [sys.executable, "manage.py", "shell", "-c", code]
    ok = subprocess.run(
        shell, cwd=base, env=_clean_env(ENV_FILE=str(target)), capture_output=True, text=True, timeout=60
    )
    assert ok.returncode == 0 and ok.stdout.split()[-2:] == ["True", key], ok.stdout + ok.stderr
    bad = subprocess.run(
        shell, cwd=base, env=_clean_env(ENV_FILE=""), capture_output=True, text=True, timeout=60
    )
    assert bad.returncode != 0 and "DEBUG is false" in bad.stderr
