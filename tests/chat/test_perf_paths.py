"""Guards for the chat side's performance work (docs/performance.md, D/E/G): the number of
database writes per turn, the budget reservation held by the running turn's row, chunk JSON
encoded once and reused for replay, the loop-pass coalescer, and the Redis mirror's retry."""

from __future__ import annotations

import asyncio
import json
import re
import uuid

import pytest

from agents import events
from agents.errors import AgentError
from chat import runtime
from chat.models import ChatMessage, ChatSession, ChatTurn, TokenUsage
from chat.runtime import streams
from chat.runtime.streams import Coalescer
from chat.usage import budget_check, budget_status

pytestmark = pytest.mark.django_db(transaction=True)

_WRITE = re.compile(r"^\s*(INSERT|UPDATE|DELETE|REPLACE)\b(?:\s+INTO|\s+FROM)?\s+\"?(\w+)\"?", re.IGNORECASE)


class _Writes:
    """Counts write statements on every connection (the turn's DB thread has its own)."""

    def __init__(self) -> None:
        self.writes: list[str] = []

    def __call__(self, execute, sql, params, many, context):
        m = _WRITE.match(sql)
        if m:
            self.writes.append(f"{m.group(1).upper()} {m.group(2)}")
        return execute(sql, params, many, context)


@pytest.fixture
def count_writes():
    from django.db.backends.signals import connection_created

    counter = _Writes()

    def install(sender, connection, **kwargs):
        if counter not in connection.execute_wrappers:
            connection.execute_wrappers.append(counter)

    connection_created.connect(install, weak=False)
    from django.db import connections

    for conn in connections.all(initialized_only=True):
        install(None, conn)
    try:
        yield counter
    finally:
        connection_created.disconnect(install)
        for conn in connections.all(initialized_only=True):
            if counter in conn.execute_wrappers:
                conn.execute_wrappers.remove(counter)


async def _in_thread(fn):
    """Run a sync check in a fresh thread (like another worker) and close its DB connection."""
    from django.db import connection as conn

    def call():
        try:
            return fn()
        finally:
            conn.close()

    return await asyncio.to_thread(call)


async def _run(user, chat_id: str, text: str) -> list[dict]:
    handle = await runtime.turn_start(user=user, chat_id=chat_id, text=text)
    chunks = [json.loads(raw) async for _seq, raw, _t in runtime.turn_listen(handle=handle)]
    await runtime.turn_wait_idle(30)
    return chunks


async def test_a_text_turn_writes_at_most_six_rows(backend_api, user, count_writes, settings):
    settings.USER_TOKEN_BUDGET_DAILY = 10**12
    settings.USER_TOKEN_BUDGET_WEEKLY = 10**13
    chat_id = str(uuid.uuid4())
    await _run(user, chat_id, "hello")  # first turn: creates the chat, gets a title
    count_writes.writes.clear()
    chunks = await _run(user, chat_id, "/long 500")
    assert chunks[-1]["type"] == "finish"
    writes = sorted(count_writes.writes)
    # turn insert + end update, user message (with its turn id), assistant message (once: the
    # turn is shorter than the flush interval), token usage, session update.
    assert len(writes) <= 6, writes
    assert not [w for w in writes if "budgetreservation" in w], writes
    session = await ChatSession.objects.aget(owner=user, client_id=chat_id)
    msgs = [m async for m in ChatMessage.objects.filter(session=session).order_by("sequence")]
    assert [(m.role, m.turn_id is not None) for m in msgs] == [("user", True), ("assistant", True)] * 2
    assert msgs[-1].text == "".join(f"w{i} " for i in range(500))
    assert session.title  # the title was written with the first turn's end


async def test_the_running_turn_holds_the_budget_reservation(backend_api, user, settings):
    """The reservation is a column of the running turn: it counts against the budget while the
    turn runs (another check at the limit is refused) and is released by the turn's end."""
    settings.USER_TOKEN_BUDGET_DAILY = 1_000
    settings.USER_TOKEN_BUDGET_WEEKLY = 10**9
    settings.TURN_RESERVE_TOKENS = 1_000
    chat_id = str(uuid.uuid4())
    handle = await runtime.turn_start(user=user, chat_id=chat_id, text="/slow 30 40")
    turn = await ChatTurn.objects.aget(pk=handle.turn_id)
    assert turn.status == "running" and turn.reserved_tokens == 1_000
    status = await _in_thread(lambda: budget_status(user=user))
    assert status["day"]["reserved"] == 1_000
    with pytest.raises(AgentError):  # the running turn's 1 000 reserved use up the 1 000
        await _in_thread(lambda: budget_check(user=user, model="m", reserve=[].append))
    await runtime.turn_stop_session(session_id=handle.session_id)
    async for _ in runtime.turn_listen(handle=handle):
        pass
    await runtime.turn_wait_idle(30)
    turn = await ChatTurn.objects.aget(pk=handle.turn_id)
    assert turn.status == "stopped" and turn.reserved_tokens == 0
    assert not await ChatTurn.objects.filter(session__owner=user, reserved_tokens__gt=0).aexists()
    assert await TokenUsage.objects.filter(turn_id=handle.turn_id, purpose="turn").acount() == 1
    status = await _in_thread(lambda: budget_status(user=user))
    assert status["day"]["reserved"] == 0


async def test_budget_refusal_at_start_is_recorded_and_leaves_no_turn(backend_api, user, settings):
    settings.USER_TOKEN_BUDGET_DAILY = 0
    chat_id = str(uuid.uuid4())
    with pytest.raises(runtime.TurnRefused) as info:
        await runtime.turn_start(user=user, chat_id=chat_id, text="hi")
    assert info.value.code == "budget_exceeded"
    session = await ChatSession.objects.aget(owner=user, client_id=chat_id)
    assert not await ChatTurn.objects.filter(session=session).aexists()
    assert not await ChatMessage.objects.filter(session=session).aexists()
    from chat.runtime.locks import lock_holder_async, session_key

    assert await lock_holder_async(session_key(session.pk)) is None  # the lock was given back
    from chat.models import RateLimitRecord

    assert await RateLimitRecord.objects.filter(user=user, source="budget").acount() == 1


async def test_replay_reuses_the_chunk_json_encoded_once(backend_api, user):
    chat_id = str(uuid.uuid4())
    handle = await runtime.turn_start(user=user, chat_id=chat_id, text="/long 50")
    live = [json.loads(raw) async for _seq, raw, _t in runtime.turn_listen(handle=handle)]
    stream = streams.stream_get_local(handle.turn_id)
    raw = [item async for item in runtime.turn_listen(handle=handle)]
    assert [seq for seq, _r, _t in raw] == list(range(len(live)))
    assert [json.loads(r) for _s, r, _t in raw] == live
    assert [t for _s, _r, t in raw] == [False] * (len(live) - 1) + [True]
    assert all(r is e for (_s, r, _t), e in zip(raw, stream.encoded))  # the very same strings
    await runtime.turn_wait_idle(30)


async def test_loop_pass_coalescer_merges_a_burst_without_timers():
    out: list[dict] = []
    co = Coalescer(out.append, window=0)
    co.push(events.text_start("t"))
    for i in range(20):
        co.push(events.text_delta("t", f"{i},"))
    assert [c["type"] for c in out] == ["text-start", "text-delta"]  # the first at once
    assert not isinstance(co.handle, asyncio.TimerHandle)
    await asyncio.sleep(0)  # end of this loop pass: the rest goes out, merged
    assert [c["type"] for c in out] == ["text-start", "text-delta", "text-delta"]
    assert "".join(c.get("delta", "") for c in out) == "".join(f"{i}," for i in range(20))
    await asyncio.sleep(0)
    assert co.handle is None  # nothing pending: the window closed
    co.push(events.text_delta("t", "x"))
    assert out[-1] == events.text_delta("t", "x")  # paced deltas: no added latency
    co.close()


async def test_redis_mirror_retries_a_failed_batch(backend_api, user, settings, monkeypatch):
    """A failed mirror round is retried (the pipeline rebuilt), so a remote reader gets every
    chunk exactly once; the whole turn goes through the per-process mirror (docs/performance.md, G)."""
    if not settings.REDIS_URL:
        pytest.skip("needs Redis (REDIS_URL)")
    from redis.asyncio.client import Pipeline
    from redis.exceptions import ConnectionError as RedisConnectionError

    real_execute = Pipeline.execute
    failures = {"left": 2}

    async def flaky_execute(self, raise_on_error: bool = True):
        if failures["left"] > 0 and any(cmd[0][0] == "XADD" for cmd in self.command_stack):
            failures["left"] -= 1
            await self.reset()
            raise RedisConnectionError("injected")
        return await real_execute(self, raise_on_error=raise_on_error)

    monkeypatch.setattr(Pipeline, "execute", flaky_execute)
    chat_id = str(uuid.uuid4())
    handle = await runtime.turn_start(user=user, chat_id=chat_id, text="/long 200")
    live = [json.loads(raw) async for _seq, raw, _t in runtime.turn_listen(handle=handle)]
    await runtime.turn_wait_idle(30)
    assert failures["left"] == 0
    remote = [(seq, json.loads(raw)) async for seq, raw, _t in streams._read_redis(handle.turn_id, -1, None)]
    assert [seq for seq, _c in remote] == list(range(len(live)))
    assert [c for _s, c in remote] == live
