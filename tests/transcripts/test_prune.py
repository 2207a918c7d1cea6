"""manage.py prune_transcripts: deletes transcripts of deleted and long-idle chat sessions only."""

from __future__ import annotations

import datetime as dt
from io import StringIO

import pytest
from asgiref.sync import async_to_sync
from django.core.management import CommandError, call_command
from django.utils import timezone

from chat.models import ChatSession
from transcripts.models import Transcript, TranscriptEntry
from transcripts.store import DjangoSessionStore

pytestmark = pytest.mark.django_db


def _transcript(session_id: str, *, age: dt.timedelta, project: str = "-ws", subagent: bool = True) -> None:
    store = DjangoSessionStore()
    key = {"project_key": project, "session_id": session_id}
    async_to_sync(store.append)(
        key, [{"type": "user", "uuid": f"{session_id}-1", "message": {"content": "hi"}}]
    )
    if subagent:
        async_to_sync(store.append)({**key, "subpath": "subagents/agent-1"}, [{"type": "user", "uuid": "s"}])
    Transcript.objects.filter(session_id=session_id).update(updated_at=timezone.now() - age)


def _chat(owner, session_id: str, *, idle: dt.timedelta) -> ChatSession:
    chat = ChatSession.objects.create(owner=owner, client_id=session_id, agent_session_id=session_id)
    ChatSession.objects.filter(pk=chat.pk).update(last_activity_at=timezone.now() - idle)
    return chat


@pytest.fixture
def world(user):
    days = dt.timedelta(days=1)
    _transcript("idle-old", age=40 * days)
    _chat(user, "idle-old", idle=40 * days)
    _transcript("recent", age=2 * days)
    _chat(user, "recent", idle=2 * days)
    # transcript untouched for long, but the chat was used yesterday (e.g. via the api backend)
    _transcript("chat-active", age=40 * days)
    _chat(user, "chat-active", idle=1 * days)
    # chat deleted: orphaned transcript, old enough
    _transcript("orphan-old", age=3 * days)
    # no chat row yet, written minutes ago: a turn may still be running
    _transcript("orphan-fresh", age=dt.timedelta(minutes=5))
    return user


def _run(*args) -> str:
    out = StringIO()
    call_command("prune_transcripts", *args, stdout=out)
    return out.getvalue()


def _remaining() -> set[str]:
    return set(Transcript.objects.values_list("session_id", flat=True))


ALL = {"idle-old", "recent", "chat-active", "orphan-old", "orphan-fresh"}


def test_dry_run_reports_and_deletes_nothing(world):
    entries_before = TranscriptEntry.objects.count()
    out = _run("--older-than", "30d", "--dry-run")
    assert "would delete idle-old project=-ws reason=idle" in out
    assert "would delete orphan-old project=-ws reason=orphaned" in out
    for kept in ("recent", "chat-active", "orphan-fresh"):
        assert kept not in out
    assert "Dry run: would delete 2 session transcript(s), 4 entries" in out
    assert _remaining() == ALL and TranscriptEntry.objects.count() == entries_before


def test_real_run_deletes_main_and_subagent_transcripts_only_of_targets(world):
    out = _run("--older-than", "30d")
    assert "deleted idle-old" in out and "deleted orphan-old" in out
    assert "Deleted 2 session transcript(s), 4 entries" in out
    assert _remaining() == {"recent", "chat-active", "orphan-fresh"}
    assert not TranscriptEntry.objects.filter(transcript__session_id__in=["idle-old", "orphan-old"]).exists()
    assert Transcript.objects.filter(session_id="recent").count() == 2  # main + sub-agent kept
    assert ChatSession.objects.filter(agent_session_id="idle-old").exists()  # chat rows untouched
    # idempotent
    assert "Deleted 0 session transcript(s)" in _run("--older-than", "30d")


def test_shorter_age_prunes_more(world):
    out = _run("--older-than", "36h")
    assert "deleted recent project=-ws reason=idle" in out
    assert _remaining() == {"chat-active", "orphan-fresh"}


@pytest.mark.parametrize("bad", ["", "30", "d", "-3d", "0d", "3y", "30 days"])
def test_bad_age_is_an_error(world, bad):
    with pytest.raises(CommandError):
        call_command("prune_transcripts", "--older-than", bad, stdout=StringIO())
    assert _remaining() == ALL


def test_bad_age_exits_non_zero_from_the_shell():
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "manage.py", "prune_transcripts", "--older-than", "soon"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**__import__("os").environ, "DEBUG": "true"},
    )
    assert proc.returncode != 0 and "--older-than" in proc.stderr
