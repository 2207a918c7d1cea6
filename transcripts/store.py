"""``DjangoSessionStore``: claude-agent-sdk's ``SessionStore`` protocol on the Django ORM.

The SDK mirrors every transcript line the Claude Code CLI writes into ``append`` (batched, ~once
per turn) and, for ``resume``, materialises the session from ``load`` (+ ``list_subkeys``) into a
temporary ``CLAUDE_CONFIG_DIR`` — so any process with database access can resume any chat.

Guarantees (checked by ``claude_agent_sdk.testing.run_session_store_conformance`` and
tests/transcripts):

- entries with a ``uuid`` are idempotent per key (a retried batch never duplicates);
  entries without one are always appended;
- ``load`` returns entries in append order (a per-key ``seq``), deep-equal to what was appended;
- ``mtime`` is epoch milliseconds, strictly increasing per key, shared by ``list_sessions``
  and the summary sidecar;
- projects and sub-agent subpaths are isolated; deleting a main key cascades to its subkeys.

Each method is one short transaction run through ``sync_to_async`` (the ORM is sync); an append
is: lock/create the key row, drop already-stored uuids, one batched INSERT, update the key row.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import time
from collections.abc import Iterable
from typing import Any

from asgiref.sync import sync_to_async
from claude_agent_sdk.types import (
    SessionKey,
    SessionListSubkeysKey,
    SessionStore,
    SessionStoreEntry,
    SessionStoreListEntry,
    SessionSummaryEntry,
)
from django.db import transaction
from django.utils import timezone

from transcripts.models import Transcript, TranscriptEntry

__all__ = ["DjangoSessionStore", "entry_dumps"]

# Rows per INSERT and uuids per IN (…) lookup: well under SQLite's bound-variable limit.
BATCH_SIZE = 200
UUID_MAX = 255


def entry_dumps(entry: Any) -> str:
    """Serialise one entry to its JSONL line (compact; UTF-8 safe even with lone surrogates)."""
    text = json.dumps(entry, ensure_ascii=False, separators=(",", ":"))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(entry, ensure_ascii=True, separators=(",", ":"))
    return text


def _subpath(key: SessionKey | SessionListSubkeysKey) -> str:
    return key.get("subpath") or ""  # type: ignore[return-value]


def _now_ms() -> int:
    return int(time.time() * 1000)


def _chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class DjangoSessionStore(SessionStore):
    """Transcript storage in the project database. Stateless: construct one wherever needed.

    ``project_key``: pin every key to this project instead of the one the SDK derives from the
    CLI's cwd (``project_key_for_directory(cwd)``). CLI session ids are UUIDs, so one namespace per
    deployment is safe, and resume then survives a workspace that moved (another host with a
    different ``AGENT_WORKSPACE_ROOT``, a renamed directory). Default ``None``: the SDK's keys
    are used as given (what the conformance harness checks).
    """

    def __init__(self, *, project_key: str | None = None) -> None:
        if project_key is not None and not project_key:
            raise ValueError("project_key must be a non-empty string or None")
        self.project_key = project_key

    def _pin(self, key: Any) -> Any:
        if self.project_key is None or key.get("project_key") == self.project_key:
            return key
        return {**key, "project_key": self.project_key}

    # --- required ---------------------------------------------------------------------------

    async def append(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        if not entries:
            return
        await sync_to_async(self._append_sync, thread_sensitive=True)(self._pin(key), list(entries))

    async def load(self, key: SessionKey) -> list[SessionStoreEntry] | None:
        return await sync_to_async(self._load_sync, thread_sensitive=True)(self._pin(key))

    # --- optional ---------------------------------------------------------------------------

    async def list_sessions(self, project_key: str) -> list[SessionStoreListEntry]:
        return await sync_to_async(self._list_sessions_sync, thread_sensitive=True)(
            self.project_key or project_key
        )

    async def list_session_summaries(self, project_key: str) -> list[SessionSummaryEntry]:
        return await sync_to_async(self._list_summaries_sync, thread_sensitive=True)(
            self.project_key or project_key
        )

    async def delete(self, key: SessionKey) -> None:
        await sync_to_async(self._delete_sync, thread_sensitive=True)(self._pin(key))

    async def list_subkeys(self, key: SessionListSubkeysKey) -> list[str]:
        return await sync_to_async(self._list_subkeys_sync, thread_sensitive=True)(self._pin(key))

    # --- sync implementations (also usable from sync code) ----------------------------------

    def _append_sync(self, key: SessionKey, entries: list[SessionStoreEntry]) -> None:
        project_key, session_id, subpath = key["project_key"], key["session_id"], _subpath(key)
        with transaction.atomic():
            # Create the key row if missing without a race (ON CONFLICT DO NOTHING), then lock it:
            # concurrent appends to one key (other processes, a retried batch still in flight)
            # queue here, so seq allocation and the dedupe check below are serialised.
            Transcript.objects.bulk_create(
                [
                    Transcript(
                        project_key=project_key,
                        session_id=session_id,
                        subpath=subpath,
                        updated_at=timezone.now(),
                    )
                ],
                ignore_conflicts=True,
            )
            row = Transcript.objects.select_for_update().get(
                project_key=project_key, session_id=session_id, subpath=subpath
            )

            # De-duplicate by uuid: against what is stored and within this batch.
            batch_uuids = [u for u in (_entry_uuid(e) for e in entries) if u is not None]
            seen: set[str] = set()
            if batch_uuids and row.entry_count:
                for chunk in _chunks(list(dict.fromkeys(batch_uuids)), BATCH_SIZE):
                    seen.update(
                        TranscriptEntry.objects.filter(transcript=row, uuid__in=chunk).values_list(
                            "uuid", flat=True
                        )
                    )
            fresh: list[SessionStoreEntry] = []
            for entry in entries:
                uid = _entry_uuid(entry)
                if uid is not None:
                    if uid in seen:
                        continue
                    seen.add(uid)
                fresh.append(entry)
            if not fresh:
                return

            now_ms = max(_now_ms(), row.mtime + 1)
            rows: list[TranscriptEntry] = []
            total = 0
            for offset, entry in enumerate(fresh):
                text = entry_dumps(entry)
                size = len(text.encode("utf-8"))
                total += size
                etype = entry.get("type") if isinstance(entry, dict) else None
                rows.append(
                    TranscriptEntry(
                        transcript=row,
                        seq=row.next_seq + offset,
                        uuid=_entry_uuid(entry),
                        type=(etype if isinstance(etype, str) else "")[:50],
                        data=text,
                        size_bytes=size,
                        stored_ms=now_ms,
                    )
                )
            TranscriptEntry.objects.bulk_create(rows, batch_size=BATCH_SIZE)

            row.next_seq += len(rows)
            row.entry_count += len(rows)
            row.size_bytes += total
            row.mtime = now_ms
            row.updated_at = dt.datetime.fromtimestamp(now_ms / 1000, tz=dt.UTC)
            update_fields = ["next_seq", "entry_count", "size_bytes", "mtime", "updated_at"]
            if not subpath:
                # Sub-agent transcripts never contribute to the main session's summary.
                from claude_agent_sdk._internal.session_summary import fold_session_summary

                prev: SessionSummaryEntry | None = (
                    {"session_id": session_id, "mtime": row.mtime, "data": json.loads(row.summary)}
                    if row.summary is not None
                    else None
                )
                row.summary = entry_dumps(fold_session_summary(prev, key, fresh)["data"])
                update_fields.append("summary")
            row.save(update_fields=update_fields)

    def _load_sync(self, key: SessionKey) -> list[SessionStoreEntry] | None:
        row = (
            Transcript.objects.filter(
                project_key=key["project_key"], session_id=key["session_id"], subpath=_subpath(key)
            )
            .only("pk")
            .first()
        )
        if row is None:
            return None
        texts = (
            TranscriptEntry.objects.filter(transcript_id=row.pk)
            .order_by("seq")
            .values_list("data", flat=True)
            .iterator(chunk_size=2000)
        )
        return [json.loads(text) for text in texts]

    def _list_sessions_sync(self, project_key: str) -> list[SessionStoreListEntry]:
        return [
            {"session_id": session_id, "mtime": mtime}
            for session_id, mtime in Transcript.objects.filter(
                project_key=project_key, subpath=""
            ).values_list("session_id", "mtime")
        ]

    def _list_summaries_sync(self, project_key: str) -> list[SessionSummaryEntry]:
        return [
            {"session_id": session_id, "mtime": mtime, "data": json.loads(summary) if summary else {}}
            for session_id, mtime, summary in Transcript.objects.filter(
                project_key=project_key, subpath=""
            ).values_list("session_id", "mtime", "summary")
        ]

    def _delete_sync(self, key: SessionKey) -> None:
        qs = Transcript.objects.filter(project_key=key["project_key"], session_id=key["session_id"])
        subpath = _subpath(key)
        if subpath:
            qs = qs.filter(subpath=subpath)
        # Entries go with their key rows (ON DELETE CASCADE emulated as one DELETE … IN).
        qs.delete()

    def _list_subkeys_sync(self, key: SessionListSubkeysKey) -> list[str]:
        return list(
            Transcript.objects.filter(project_key=key["project_key"], session_id=key["session_id"])
            .exclude(subpath="")
            .order_by("subpath")
            .values_list("subpath", flat=True)
        )


def _entry_uuid(entry: Any) -> str | None:
    uid = entry.get("uuid") if isinstance(entry, dict) else None
    if not isinstance(uid, str) or not uid:
        return None
    if len(uid) > UUID_MAX:  # never seen from the CLI; keep the idempotency key indexable
        return "sha256:" + hashlib.sha256(uid.encode("utf-8", "surrogatepass")).hexdigest()
    return uid
