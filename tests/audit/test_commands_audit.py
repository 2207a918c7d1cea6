"""The operator commands: each destructive one has ``--dry-run`` (reports, changes nothing, audits
nothing), prints one summary line when its output is not a terminal, draws a progress bar on a
terminal (a real pseudo-terminal here), and a run that changed data writes an audit event whose
actor label names the command and the OS user."""

from __future__ import annotations

import datetime as dt
import io
import os
import select
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.utils import timezone

from audit.commands import command_actor_label, os_user
from audit.models import AuditEvent
from chat.models import ApiKey, ChatMessage, ChatSession, ChatTurn, RateLimitRecord
from tests.ops.conftest import dead_worker, seed_session, seed_turn
from transcripts.models import Transcript

E, N = ChatMessage.Kind.ERROR, ChatMessage.Kind.NORMAL
pytestmark = pytest.mark.django_db


def run(name: str, *args: str, stderr=None) -> str:
    out = io.StringIO()
    call_command(name, *args, stdout=out, stderr=stderr or io.StringIO())
    return out.getvalue()


def old_session(owner, *, days: int = 60, kinds=(N,)) -> ChatSession:
    session = seed_session(owner, kinds=list(kinds))
    ChatSession.objects.filter(pk=session.pk).update(
        last_activity_at=timezone.now() - dt.timedelta(days=days)
    )
    return session


def old_transcript(session_id: str, *, days: int = 60) -> None:
    Transcript.objects.create(
        project_key="-ws", session_id=session_id, updated_at=timezone.now() - dt.timedelta(days=days)
    )


def old_workspace(root, session_id) -> None:
    path = root / str(session_id)
    path.mkdir(parents=True)
    (path / "notes.txt").write_text("x")
    old = (timezone.now() - dt.timedelta(days=2)).timestamp()
    for item in (path / "notes.txt", path):
        os.utime(item, (old, old))


@dataclass
class Case:
    """A destructive command: ``seed`` makes one thing for it to act on; ``state`` reads what it
    would change; ``expect`` is part of its summary line."""

    command: str
    args: tuple[str, ...]
    seed: Callable[..., None]
    state: Callable[[], object]
    expect: str


def workspace_names() -> list[str]:
    return sorted(path.name for path in Path(settings.AGENT_WORKSPACE_ROOT).iterdir())


def seed_purge(user, tmp_path, settings) -> None:
    old_session(user)
    old_session(user)


def seed_markers(user, tmp_path, settings) -> None:
    seed_session(user, kinds=[N, E, E])


def seed_workspaces(user, tmp_path, settings) -> None:
    settings.AGENT_WORKSPACE_ROOT = tmp_path / "workspaces"
    old_workspace(tmp_path / "workspaces", old_session(user).pk)


def seed_dead_turn(user, tmp_path, settings) -> None:
    seed_turn(seed_session(user, kinds=[N]), heartbeat_age=600, worker=dead_worker())


def seed_rate_limits(user, tmp_path, settings) -> None:
    record = RateLimitRecord.objects.create(user=user, source="upstream", model="m")
    RateLimitRecord.objects.filter(pk=record.pk).update(created_at=timezone.now() - dt.timedelta(days=60))


def seed_transcripts(user, tmp_path, settings) -> None:
    old_transcript("orphan-cli-session")


CASES = [
    Case(
        "purge_sessions",
        ("--older-than", "30d"),
        seed_purge,
        lambda: ChatSession.objects.count(),
        "delete 2 session(s)",
    ),
    Case(
        "clear_error_markers",
        ("--all-stale",),
        seed_markers,
        lambda: ChatMessage.objects.filter(kind=E).count(),
        "clear 2 error marker(s) in 1 session(s)",
    ),
    Case(
        "cleanup_workspaces",
        ("--older-than", "1h"),
        seed_workspaces,
        workspace_names,
        "remove 1 workspace(s)",
    ),
    Case(
        "expire_stream_locks",
        (),
        seed_dead_turn,
        lambda: list(ChatTurn.objects.values_list("status", flat=True)),
        "mark 1 dead turn(s) interrupted",
    ),
    Case(
        "purge_rate_limit_records",
        ("--older-than", "30d"),
        seed_rate_limits,
        lambda: RateLimitRecord.objects.count(),
        "delete 1 rate-limit record(s)",
    ),
    Case(
        "prune_transcripts",
        ("--older-than", "30d"),
        seed_transcripts,
        lambda: Transcript.objects.count(),
        "delete 1 session transcript(s)",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.command for c in CASES])
def test_dry_run_changes_nothing_and_prints_its_summary(case, user, tmp_path, settings):
    case.seed(user, tmp_path, settings)
    before = case.state()
    out = run(case.command, *case.args, "--dry-run")
    assert case.state() == before
    assert f"would {case.expect}" in out
    assert "dry run" in out.lower()
    assert not AuditEvent.objects.exists()  # a dry run changes nothing, the audit log included


@pytest.mark.parametrize("case", CASES, ids=[c.command for c in CASES])
def test_a_real_run_prints_one_summary_line_and_is_audited(case, user, tmp_path, settings):
    case.seed(user, tmp_path, settings)
    before = case.state()
    stderr = io.StringIO()
    out = run(case.command, *case.args, stderr=stderr)
    assert case.state() != before
    lines = out.splitlines()
    assert len(lines) == 1 or case.command == "prune_transcripts", out  # it lists each session first
    assert case.expect.split(" ", 1)[1] in lines[-1]
    assert stderr.getvalue() == ""  # not a terminal: no progress bar
    event = AuditEvent.objects.get()
    assert event.action == f"command.{case.command}" and event.source == AuditEvent.Source.COMMAND
    assert event.actor is None
    assert event.actor_label == f"command:{case.command} by os user {os_user()}"
    assert event.details


def test_purge_sessions_audit_lists_the_sessions(user):
    doomed = [old_session(user).pk for _ in range(3)]
    kept = seed_session(user).pk
    run("purge_sessions", "--older-than", "30d")
    details = AuditEvent.objects.get(action="command.purge_sessions").details
    assert sorted(details["sessions"]) == sorted(str(pk) for pk in doomed)
    assert details["deleted"] == 3 and details["older_than"] == "30d"
    assert ChatSession.objects.filter(pk=kept).exists()


@pytest.mark.parametrize("case", CASES, ids=[c.command for c in CASES])
def test_a_run_with_nothing_to_do_reports_and_audits_nothing(case, tmp_path, settings):
    settings.AGENT_WORKSPACE_ROOT = tmp_path / "workspaces"
    (tmp_path / "workspaces").mkdir()
    out = run(case.command, *case.args)
    assert out.splitlines()[-1].startswith((f"{case.command}: ", "Deleted 0"))
    assert " 0 " in out.splitlines()[-1]
    assert not AuditEvent.objects.exists()  # a cron job that found nothing leaves no trace


def test_the_actor_label_prefers_the_sudo_caller(monkeypatch):
    monkeypatch.setenv("SUDO_USER", "alice")
    assert command_actor_label("purge_sessions") == "command:purge_sessions by os user alice"


def read_all(fd: int) -> str:
    """Everything written to a pseudo-terminal so far (it hands it out in pieces)."""
    data = b""
    while select.select([fd], [], [], 0.5)[0]:
        piece = os.read(fd, 65536)
        if not piece:
            break
        data += piece
    return data.decode(errors="replace")


def test_progress_bar_on_a_terminal(user):
    """stderr is a real pseudo-terminal: the command draws its progress bar there; stdout keeps
    the summary line."""
    for _ in range(3):
        seed_session(user, kinds=[N, E])
    master, slave = os.openpty()
    try:
        with os.fdopen(os.dup(slave), "w") as terminal:
            out = run("clear_error_markers", "--all-stale", stderr=terminal)
            terminal.flush()
        drawn = read_all(master)
    finally:
        os.close(master)
        os.close(slave)
    assert "sessions" in drawn and "3/3" in drawn, drawn
    assert out.splitlines() == [
        "clear_error_markers: cleared 3 error marker(s) in 3 session(s); "
        "skipped 0 session(s) with an active turn"
    ]


def test_ensure_demo_user_dry_run(settings, django_user_model):
    settings.DEBUG = True
    out = run("ensure_demo_user", "--dry-run")
    assert "would create the demo login 'demo'" in out and "dry run" in out
    assert not django_user_model.objects.filter(username="demo").exists()
    run("ensure_demo_user")
    assert AuditEvent.objects.get().action == "command.ensure_demo_user"


def test_create_api_key_is_audited_without_the_key(user):
    raw = run("create_api_key", user.username, "--name", "nightly", "--quiet").strip()
    key = ApiKey.objects.get(name="nightly")
    event = AuditEvent.objects.get(action="command.create_api_key")
    assert event.target_id == str(key.pk) and event.details["owner"] == user.username
    assert event.actor_label.startswith("command:create_api_key by os user ")
    assert raw not in str(event.details) and raw not in event.target_repr
