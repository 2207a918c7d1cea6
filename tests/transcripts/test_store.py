"""DjangoSessionStore: the SDK's own conformance harness plus the details it does not pin down.

Runs on whatever DATABASES says (SQLite by default, PostgreSQL with DATABASE_URL); the store's
ORM calls run in asgiref's worker thread, hence ``transaction=True``.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from asgiref.sync import sync_to_async
from claude_agent_sdk.testing import run_session_store_conformance, session_store_conformance
from claude_agent_sdk.types import SessionStore

from transcripts.models import Transcript, TranscriptEntry
from transcripts.store import DjangoSessionStore

pytestmark = pytest.mark.django_db(transaction=True)

KEY = {"project_key": "-srv-ws-abc", "session_id": "11111111-1111-4111-8111-111111111111"}


def e(uuid: str | None = None, **fields):
    entry = {"type": "user", **fields}
    if uuid is not None:
        entry["uuid"] = uuid
    return entry


async def _fresh_store() -> DjangoSessionStore:
    # The harness expects each store it makes to start empty; ours is the shared database.
    await Transcript.objects.all().adelete()
    return DjangoSessionStore()


async def test_sdk_conformance_nothing_skipped():
    store = DjangoSessionStore()
    for method in ("list_sessions", "list_session_summaries", "delete", "list_subkeys"):
        assert session_store_conformance._has_optional(store, method, frozenset()), method
    assert SessionStore in type(store).__mro__
    await run_session_store_conformance(_fresh_store)


async def test_constructible_without_arguments_and_stateless():
    await DjangoSessionStore().append(KEY, [e("a", n=1)])
    # A different instance (another process in production) sees the same data.
    assert await DjangoSessionStore().load(KEY) == [e("a", n=1)]


async def test_dedupe_by_uuid_across_and_within_batches_keeps_first_and_order():
    store = DjangoSessionStore()
    await store.append(KEY, [e("a", n=1), e("b", n=2)])
    # A retried batch overlapping the first one, a duplicate inside the batch, and entries
    # without uuid (always appended, even when identical).
    await store.append(KEY, [e("b", n=99), e("c", n=3), e("c", n=98), e(None, n=4), e(None, n=4)])
    assert await store.load(KEY) == [e("a", n=1), e("b", n=2), e("c", n=3), e(None, n=4), e(None, n=4)]
    # The same uuid under another key (sub-agent, other project) is a different entry.
    sub = {**KEY, "subpath": "subagents/agent-1"}
    await store.append(sub, [e("a", n=5)])
    await store.append({**KEY, "project_key": "other"}, [e("a", n=6)])
    assert await store.load(sub) == [e("a", n=5)]
    assert await store.load({**KEY, "project_key": "other"}) == [e("a", n=6)]
    row = await Transcript.objects.aget(subpath="", **KEY)
    assert (row.entry_count, row.next_seq) == (5, 5)
    seqs = [
        s
        async for s in TranscriptEntry.objects.filter(transcript=row)
        .order_by("seq")
        .values_list("seq", flat=True)
    ]
    assert seqs == [0, 1, 2, 3, 4]


async def test_all_duplicate_batch_changes_nothing():
    store = DjangoSessionStore()
    await store.append(KEY, [e("a", n=1, customTitle="first")])
    before = await Transcript.objects.aget(subpath="", **KEY)
    await store.append(KEY, [e("a", n=1, customTitle="changed")])
    after = await Transcript.objects.aget(subpath="", **KEY)
    assert (after.mtime, after.summary, after.entry_count) == (before.mtime, before.summary, 1)


async def test_mtime_strictly_increasing_epoch_ms_and_shared_with_summaries():
    store = DjangoSessionStore()
    mtimes = []
    for i in range(12):  # back-to-back appends land within the same millisecond
        await store.append(KEY, [e(f"u{i}", n=i)])
        (listed,) = await store.list_sessions(KEY["project_key"])
        mtimes.append(listed["mtime"])
        (summary,) = await store.list_session_summaries(KEY["project_key"])
        assert summary["mtime"] == listed["mtime"]
    assert all(b > a for a, b in zip(mtimes, mtimes[1:])), mtimes
    assert 1e12 < mtimes[0] < 1e13


async def test_values_postgres_jsonb_would_reject_round_trip():
    store = DjangoSessionStore()
    weird = e(
        "w",
        text="nul:\u0000 ctrl:\x1b[31m emoji:\U0001f600 cjk:漢字 lone:\ud800",
        big=2**70,
        floats=[0.1, 1e308, -0.0],
        nested={"z": 1, "a": [None, True, {"": ""}]},
    )
    await store.append(KEY, [weird])
    (loaded,) = await store.load(KEY)
    assert loaded == weird
    assert list(loaded["nested"]) == ["z", "a"]  # key order kept too (stored as text)


async def test_large_batch_is_batched_and_ordered():
    store = DjangoSessionStore()
    entries = [e(f"id-{i:04d}", n=i) for i in range(650)]
    await store.append(KEY, entries[:400])
    await store.append(KEY, entries[300:])  # 100 overlapping, > one IN (…) chunk
    assert await store.load(KEY) == entries


async def test_concurrent_appends_to_one_key_never_lose_or_duplicate():
    async def writer(prefix: str):
        store = DjangoSessionStore()
        for i in range(5):
            # Every writer also re-sends one shared uuid: exactly one copy may survive.
            await store.append(KEY, [e(f"{prefix}-{i}", n=i), e("shared", n=-1)])

    await asyncio.gather(*(writer(p) for p in "abc"))
    loaded = await DjangoSessionStore().load(KEY)
    uuids = [x["uuid"] for x in loaded]
    assert sorted(uuids) == sorted(["shared"] + [f"{p}-{i}" for p in "abc" for i in range(5)])
    for p in "abc":  # per-writer call order preserved
        mine = [u for u in uuids if u.startswith(f"{p}-")]
        assert mine == [f"{p}-{i}" for i in range(5)]


async def test_concurrent_appends_from_threads_with_own_connections():
    """Two sync writers on separate DB connections (as two processes would be)."""
    store = DjangoSessionStore()

    def write(prefix: str):
        from django.db import connection

        try:
            for i in range(5):
                store._append_sync(KEY, [e(f"{prefix}-{i}"), e("shared")])
        finally:
            connection.close()

    await asyncio.gather(asyncio.to_thread(write, "x"), asyncio.to_thread(write, "y"))
    loaded = await store.load(KEY)
    assert len(loaded) == 11
    assert len({x["uuid"] for x in loaded}) == 11


async def test_subkeys_and_delete_cascade_and_targeted_delete():
    store = DjangoSessionStore()
    subs = [{**KEY, "subpath": f"subagents/agent-{i}"} for i in (2, 1)]
    await store.append(KEY, [e("m")])
    for sub in subs:
        await store.append(sub, [e("s")])
    other_session = {**KEY, "session_id": "22222222-2222-4222-8222-222222222222"}
    await store.append({**other_session, "subpath": "subagents/agent-9"}, [e("x")])
    assert await store.list_subkeys(KEY) == ["subagents/agent-1", "subagents/agent-2"]
    assert await store.list_sessions(KEY["project_key"]) == [
        {"session_id": KEY["session_id"], "mtime": (await Transcript.objects.aget(subpath="", **KEY)).mtime}
    ]  # the sub-agent-only session has no main transcript, and subpaths are not sessions

    await store.delete(subs[0])
    assert await store.list_subkeys(KEY) == ["subagents/agent-1"]
    assert await store.load(KEY) == [e("m")]

    await store.delete(KEY)
    assert await store.load(KEY) is None
    assert await store.load(subs[1]) is None
    assert await TranscriptEntry.objects.filter(transcript__session_id=KEY["session_id"]).acount() == 0
    assert await store.list_subkeys(other_session) == ["subagents/agent-9"]
    await store.delete({"project_key": "nope", "session_id": "nope"})  # no error


async def test_summary_folded_from_main_only_and_persisted_verbatim():
    store = DjangoSessionStore()
    await store.append(
        KEY,
        [
            {
                "type": "user",
                "uuid": "u1",
                "timestamp": "2025-01-01T00:00:00.000Z",
                "cwd": "/srv/ws/abc",
                "message": {"role": "user", "content": "how big is the repo?"},
            },
        ],
    )
    await store.append({**KEY, "subpath": "subagents/agent-1"}, [{"type": "x", "customTitle": "sub"}])
    (summary,) = await store.list_session_summaries(KEY["project_key"])
    assert summary["data"]["first_prompt"] == "how big is the repo?"
    assert summary["data"]["cwd"] == "/srv/ws/abc"
    assert "custom_title" not in summary["data"]
    assert await store.list_session_summaries("elsewhere") == []


async def test_empty_append_creates_nothing():
    store = DjangoSessionStore()
    await store.append(KEY, [])
    assert await store.load(KEY) is None
    assert await store.list_sessions(KEY["project_key"]) == []


async def test_stored_rows_carry_type_size_and_raw_line():
    store = DjangoSessionStore()
    await store.append(KEY, [e("a", text="héllo")])
    row = await TranscriptEntry.objects.aget(uuid="a")
    assert row.type == "user"
    assert json.loads(row.data) == e("a", text="héllo")
    assert row.size_bytes == len(row.data.encode()) and "héllo" in row.data
    key_row = await sync_to_async(lambda: row.transcript)()
    assert key_row.size_bytes == row.size_bytes and key_row.entry_count == 1


async def test_pinned_project_key_maps_every_key_to_one_project():
    pinned = DjangoSessionStore(project_key="copilot")
    await pinned.append({"project_key": "-host-a-ws", "session_id": "s1"}, [e("a")])
    await pinned.append({"project_key": "-host-b-ws", "session_id": "s1"}, [e("a"), e("b")])
    await pinned.append(
        {"project_key": "-host-b-ws", "session_id": "s1", "subpath": "subagents/agent-1"}, [e("c")]
    )
    assert await pinned.load({"project_key": "-anything", "session_id": "s1"}) == [e("a"), e("b")]
    assert [s["session_id"] for s in await pinned.list_sessions("-whatever")] == ["s1"]
    assert [s["session_id"] for s in await pinned.list_session_summaries("-whatever")] == ["s1"]
    assert await pinned.list_subkeys({"project_key": "-x", "session_id": "s1"}) == ["subagents/agent-1"]
    assert await DjangoSessionStore().load({"project_key": "-host-a-ws", "session_id": "s1"}) is None
    await pinned.delete({"project_key": "-y", "session_id": "s1"})
    assert await Transcript.objects.acount() == 0
    with pytest.raises(ValueError):
        DjangoSessionStore(project_key="")


async def test_summary_survives_a_prompt_with_nul():
    store = DjangoSessionStore()
    await store.append(
        KEY, [{"type": "user", "uuid": "n", "message": {"role": "user", "content": "a\u0000b"}}]
    )
    (summary,) = await store.list_session_summaries(KEY["project_key"])
    assert summary["data"]["first_prompt"] == "a\u0000b"
