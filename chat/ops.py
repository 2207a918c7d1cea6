"""Operator services shared by the admin actions and the management commands: durations, stuck
locks and dead turns, idle workspaces. Writes go through chat.services; locks through chat.runtime.locks.

Cross-process visibility: with ``REDIS_URL`` the session locks live in Redis and every process
sees them. Without it they live inside the serving process, so a cron job (another process) cannot
see them and judges a turn by its ``heartbeat_at`` alone; the admin runs inside the serving process
and sees both.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import socket
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.utils import timezone

from chat.config import chat_config
from chat.models import ChatSession, ChatTurn
from chat.runtime import locks
from chat.selectors import session_has_running_turn_row, turn_list_stale, turn_running_queryset
from chat.services import turn_mark_interrupted

# A running turn whose lock vanished is only judged dead after this long without a heartbeat
# (a turn that is finishing releases its lock a moment before it writes its final status).
LOCK_GONE_GRACE_SECONDS = 5.0

_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> dt.timedelta:
    """``"90m"``, ``"12h"``, ``"30d"`` (also ``s`` and ``w``) as a timedelta; ValueError otherwise."""
    match = _DURATION_RE.match(text or "")
    if not match:
        raise ValueError(
            f"invalid duration {text!r}: use a number followed by s, m, h, d or w (for example 90m, 12h, 30d)"
        )
    value = float(match.group(1))
    if value <= 0:
        raise ValueError(f"invalid duration {text!r}: must be greater than zero")
    return dt.timedelta(**{_UNITS[match.group(2).lower()]: value})


def lease_seconds() -> float:
    return chat_config().turn_lease_seconds


def locks_shared() -> bool:
    """Whether this process sees every process's locks (Redis) rather than only its own."""
    return bool(settings.REDIS_URL)


def worker_is_gone(worker: str) -> bool | None:
    """True when ``worker`` ("host:pid") is a process on this host that no longer exists; None when
    that cannot be known (another host, or an unparsable id)."""
    host, _, pid = (worker or "").rpartition(":")
    if not host or not pid.isdigit():
        return None
    if host != socket.gethostname():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    except OSError:
        return None
    return False


def session_lock_key(session_id: Any) -> str:
    return locks.session_key(session_id)


@dataclass
class LockState:
    session_id: str
    holder: Any = None  # chat.runtime.locks.LockInfo | None
    expired: bool = False
    worker_gone: bool | None = None
    running_turns: list[ChatTurn] = field(default_factory=list)

    @property
    def stuck(self) -> bool:
        """Safe to force: the lease is gone/expired (with a turn still marked running) or its
        owner process is gone."""
        if self.holder is None:
            return bool(self.running_turns)
        return self.expired or self.worker_gone is True

    def describe(self) -> str:
        if self.holder is None:
            return "no lock held" + (
                f", {len(self.running_turns)} turn(s) still marked running" if self.running_turns else ""
            )
        until = dt.datetime.fromtimestamp(self.holder.expires_at, dt.UTC)
        state = "expired" if self.expired else ("owner gone" if self.worker_gone else "live")
        return f"lock held by {self.holder.worker or '?'} until {until:%H:%M:%S} UTC ({state})"


def lock_state(*, session_id: Any) -> LockState:
    holder = locks.lock_holder(session_lock_key(session_id))
    state = LockState(
        session_id=str(session_id),
        holder=holder,
        running_turns=list(turn_running_queryset().filter(session_id=session_id).order_by("started_at")),
    )
    if holder is not None:
        state.expired = holder.expires_at <= timezone.now().timestamp()
        state.worker_gone = worker_is_gone(holder.worker)
    return state


def session_release_stuck_lock(*, session_id: Any) -> tuple[bool, str]:
    """Release a session's stuck lock and mark its running turn(s) interrupted (with a persisted
    marker). Refuses (False, reason) while the lock is live and its owner may be alive."""
    state = lock_state(session_id=session_id)
    if not state.stuck:
        return False, f"not stuck: {state.describe()}"
    released = False
    if state.holder is not None:
        released = locks.lock_force_release(session_lock_key(session_id))
    interrupted = sum(
        turn_mark_interrupted(turn_id=turn.pk, reason="interrupted") for turn in state.running_turns
    )
    return (
        True,
        f"{'lock released' if released else 'no lock to release'}, {interrupted} turn(s) marked interrupted",
    )


@dataclass
class ExpireResult:
    interrupted: list[str] = field(default_factory=list)  # turn ids
    locks_released: int = 0
    skipped_live_lock: list[str] = field(default_factory=list)


def untracked(items: Iterable[Any]) -> Iterable[Any]:
    return items


# ``track`` (the long loops below): wraps the items, e.g. in a command's progress bar.
Track = Callable[[Iterable[Any]], Iterable[Any]]


def turns_expire_stale(
    *, lease: float | None = None, dry_run: bool = False, track: Track = untracked
) -> ExpireResult:
    """Running turns whose worker died: heartbeat older than the lease, or (when locks are shared)
    their session lock gone. Each becomes ``interrupted`` with a marker; a dead lock is released."""
    lease = lease_seconds() if lease is None else lease
    shared = locks_shared()
    now = timezone.now()
    candidates: dict[Any, ChatTurn] = {
        turn.pk: turn for turn in turn_list_stale(lease_seconds=lease, now=now)
    }
    if shared:
        grace = min(lease, LOCK_GONE_GRACE_SECONDS)
        for turn in turn_list_stale(lease_seconds=grace, now=now):
            candidates.setdefault(turn.pk, turn)
    result = ExpireResult()
    for turn in track(list(candidates.values())):
        state = lock_state(session_id=turn.session_id) if shared else None
        if (
            state is not None
            and state.holder is not None
            and not state.expired
            and state.worker_gone is not True
        ):
            # The lease is still being refreshed by a live worker: not dead, whatever the row says.
            result.skipped_live_lock.append(str(turn.pk))
            continue
        if dry_run:
            result.interrupted.append(str(turn.pk))
            continue
        if turn_mark_interrupted(turn_id=turn.pk, reason="interrupted"):
            result.interrupted.append(str(turn.pk))
        if state is not None and state.holder is not None:
            result.locks_released += int(locks.lock_force_release(session_lock_key(turn.session_id)))
    return result


# --- Workspaces ----------------------------------------------------------------------------------


@dataclass
class WorkspaceResult:
    removed: list[Path] = field(default_factory=list)
    skipped: dict[str, list[Path]] = field(default_factory=dict)
    failed: list[tuple[Path, str]] = field(default_factory=list)

    def skip(self, reason: str, path: Path) -> None:
        self.skipped.setdefault(reason, []).append(path)


def _newest_mtime(path: Path) -> float:
    """The newest mtime in a directory tree, never following symlinks."""
    newest = path.lstat().st_mtime
    for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
        for name in dirnames + filenames:
            try:
                newest = max(newest, os.lstat(os.path.join(dirpath, name)).st_mtime)
            except OSError:
                continue
    return newest


def workspace_root_path() -> Path:
    return Path(settings.AGENT_WORKSPACE_ROOT).resolve()


def workspaces_cleanup(
    *, older_than: dt.timedelta, dry_run: bool = False, track: Track = untracked
) -> WorkspaceResult:
    """Remove session workspaces idle for longer than ``older_than``.

    Never a workspace whose session has a running turn (or, with shared locks, a held lock) or was
    active within the window; never a symlink or anything that resolves outside the root; never a
    directory whose name is not a session id."""
    root = workspace_root_path()
    result = WorkspaceResult()
    if not root.is_dir():
        return result
    if root == Path(root.anchor):
        raise ValueError(f"refusing to clean the filesystem root ({root})")
    cutoff = timezone.now() - older_than
    shared = locks_shared()

    for entry in track(sorted(root.iterdir())):
        if entry.is_symlink():
            result.skip("symlink", entry)
            continue
        if not entry.is_dir():
            result.skip("not a directory", entry)
            continue
        resolved = entry.resolve()
        if resolved.parent != root:
            result.skip("outside the root", entry)
            continue
        try:
            session_id = uuid.UUID(entry.name)
        except ValueError:
            result.skip("not a session workspace", entry)
            continue
        if session_has_running_turn_row(session_id=session_id):
            result.skip("active turn", entry)
            continue
        if shared and locks.lock_holder(session_lock_key(session_id)) is not None:
            result.skip("active turn", entry)
            continue
        last_activity = (
            ChatSession.objects.filter(pk=session_id).values_list("last_activity_at", flat=True).first()
        )
        if last_activity is not None and last_activity >= cutoff:
            result.skip("recent", entry)
            continue
        if dt.datetime.fromtimestamp(_newest_mtime(resolved), dt.UTC) >= cutoff:
            result.skip("recent", entry)
            continue
        if dry_run:
            result.removed.append(entry)
            continue
        # Last look right before deleting: a turn may have started meanwhile.
        if session_has_running_turn_row(session_id=session_id):
            result.skip("active turn", entry)
            continue
        try:
            shutil.rmtree(resolved)  # does not follow symlinks inside the tree
        except OSError as exc:
            result.failed.append((entry, str(exc)))
            continue
        result.removed.append(entry)
    return result


def workspace_remove_for_session(*, session_id: Any) -> bool:
    """Remove a (purged) session's workspace if it is a real directory under the root."""
    root = workspace_root_path()
    try:
        entry = root / str(uuid.UUID(str(session_id)))
    except ValueError:
        return False
    if entry.is_symlink() or not entry.is_dir() or entry.resolve().parent != root:
        return False
    shutil.rmtree(entry, ignore_errors=True)
    return not entry.exists()
