"""Two real daphne processes sharing PostgreSQL and Redis: a turn started through one is
resumed (and stopped) through the other."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest

from tests.chat.conftest import answer_frame, send_frame, session_cookie
from tests.chat.conftest import ws_recv_until as recv_until
from tests.conftest import require_services
from tests.servers import DaphneServer, daphne_env

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.services]


@pytest.fixture
def daphnes(scripted_model, tmp_path):
    require_services(postgres=True, redis=True)
    env = daphne_env(workspaces=tmp_path / "ws", scripted_url=scripted_model.url)
    servers = [DaphneServer(env, name="multiprocess") for _ in range(2)]
    try:
        for server in servers:
            server.launch()
        for server in servers:
            server.wait_ready()
        yield [server.port for server in servers]
    finally:
        for server in servers:
            server.stop()


def is_delta(frame) -> bool:
    return frame["type"] == "chunk" and frame["chunk"]["type"] == "text-delta"


async def test_turn_started_on_one_process_resumed_and_stopped_on_another(daphnes, user):
    import websockets
    from asgiref.sync import sync_to_async

    cookie = await sync_to_async(session_cookie)(user)
    headers = {"Cookie": cookie}
    port_a, port_b = daphnes
    chat_id = str(uuid.uuid4())
    async with (
        websockets.connect(
            f"ws://127.0.0.1:{port_a}/ws/chat/",
            additional_headers=headers,
            origin=f"http://127.0.0.1:{port_a}",
        ) as a,
        websockets.connect(
            f"ws://127.0.0.1:{port_b}/ws/chat/",
            additional_headers=headers,
            origin=f"http://127.0.0.1:{port_b}",
        ) as b,
    ):
        # 1. Started through A, resumed mid-turn through B from a sequence: the rest, in order.
        frame = send_frame(chat_id, "/slow 30 30")
        await a.send(json.dumps(frame))
        seen = await recv_until(a, frame["requestId"], is_delta)
        last = seen[-1]["sequence"]
        await b.send(json.dumps({"type": "resume", "requestId": "rb", "id": chat_id, "lastSequence": last}))
        from_b = await recv_until(b, "rb", lambda f: f["type"] == "end")
        from_a = seen + await recv_until(a, frame["requestId"], lambda f: f["type"] == "end")
        chunks_a = [(f["sequence"], f["chunk"]) for f in from_a if f["type"] == "chunk"]
        chunks_b = [(f["sequence"], f["chunk"]) for f in from_b if f["type"] == "chunk"]
        assert from_b[0]["type"] == "start" and from_b[-1]["type"] == "end"
        assert chunks_b == [c for c in chunks_a if c[0] > last]
        assert chunks_b[-1][1]["type"] == "finish"
        text = "".join(c["delta"] for _, c in chunks_a if c["type"] == "text-delta")
        assert text == "".join(f"w{i} " for i in range(30))

        # 2. A second turn through A, followed through B from its start, stopped through B.
        frame = send_frame(chat_id, "/slow 50 400")
        await a.send(json.dumps(frame))
        await recv_until(a, frame["requestId"], is_delta)
        await b.send(json.dumps({"type": "resume", "requestId": "rb2", "id": chat_id}))
        got_b = await recv_until(b, "rb2", is_delta)
        assert got_b[0]["type"] == "start" and got_b[1]["sequence"] == 0
        # B refuses a concurrent send: the lock is shared.
        clash = send_frame(chat_id, "me too")
        await b.send(json.dumps(clash))
        refused = await recv_until(b, clash["requestId"], lambda f: False)
        assert refused[-1]["type"] == "error" and "stream_already_active" in refused[-1]["errorText"]
        await b.send(json.dumps({"type": "abort", "requestId": "rb2"}))
        rest_b = await recv_until(b, "rb2", lambda f: f["type"] == "end", timeout=15)
        rest_a = await recv_until(a, frame["requestId"], lambda f: f["type"] == "end", timeout=15)
        stopped = {"type": "finish", "finishReason": "stop", "messageMetadata": {"stopped": True}}
        assert [f for f in rest_b if f["type"] == "chunk"][-1]["chunk"] == stopped
        assert [f for f in rest_a if f["type"] == "chunk"][-1]["chunk"] == stopped

        # 3. The session is free again everywhere: B starts the next turn.
        nxt = send_frame(chat_id, "after the stop")
        await b.send(json.dumps(nxt))
        done = await recv_until(b, nxt["requestId"], lambda f: f["type"] == "end")
        assert done[-1]["type"] == "end"

    from chat.models import ChatMessage, ChatSession

    session = await ChatSession.objects.aget(owner=user, client_id=chat_id)
    kinds = [
        tuple(row)
        async for row in ChatMessage.objects.filter(session=session)
        .order_by("sequence")
        .values_list("role", "kind")
    ]
    assert kinds == [
        ("user", "normal"),
        ("assistant", "normal"),
        ("user", "normal"),
        ("assistant", "normal"),
        ("assistant", "stopped"),
        ("user", "normal"),
        ("assistant", "normal"),
    ]


async def test_an_approval_asked_on_one_process_is_answered_through_another(daphnes, user):
    """The turn waits on A; the user's answer arrives on B (Redis: the record, the pub/sub
    control message, the stored answer) and B's request streams the rest of the same turn."""
    import websockets
    from asgiref.sync import sync_to_async

    from chat.models import ChatSession

    cookie = await sync_to_async(session_cookie)(user)
    headers = {"Cookie": cookie}
    port_a, port_b = daphnes
    chat_id = str(uuid.uuid4())
    await ChatSession.objects.acreate(owner=user, client_id=chat_id, tool_mode="ask")
    async with (
        websockets.connect(
            f"ws://127.0.0.1:{port_a}/ws/chat/",
            additional_headers=headers,
            origin=f"http://127.0.0.1:{port_a}",
        ) as a,
        websockets.connect(
            f"ws://127.0.0.1:{port_b}/ws/chat/",
            additional_headers=headers,
            origin=f"http://127.0.0.1:{port_b}",
        ) as b,
    ):
        frame = send_frame(chat_id, "/tool bash echo answered-on-b")
        await a.send(json.dumps(frame))
        from_a = await recv_until(a, frame["requestId"], lambda f: f["type"] == "end", timeout=60)
        request = from_a[-2]["chunk"]
        assert request["type"] == "tool-approval-request"
        # B's resume replays up to the pending request and ends there
        await b.send(json.dumps({"type": "resume", "requestId": "rb", "id": chat_id}))
        replay = await recv_until(b, "rb", lambda f: f["type"] == "end")
        assert replay[-2]["chunk"] == request
        # B also follows the waiting turn live (a remote listener, XREAD BLOCK over Redis) through
        # more than a Redis socket timeout of silence
        after = from_a[-2]["sequence"]
        await b.send(
            json.dumps({"type": "resume", "requestId": "follow", "id": chat_id, "lastSequence": after})
        )
        await asyncio.sleep(6.5)
        answer = answer_frame(chat_id, request, approved=True)
        await b.send(json.dumps(answer))
        frames: list[dict] = []
        ended: set[str] = set()
        async with asyncio.timeout(60):
            while ended != {"follow", answer["requestId"]}:
                frame = json.loads(await b.recv())
                frames.append(frame)
                if frame["type"] in ("end", "error"):
                    ended.add(frame.get("requestId"))
        rest = [f for f in frames if f.get("requestId") == answer["requestId"]]
        chunks = [f["chunk"] for f in rest if f["type"] == "chunk"]
        assert rest[1]["sequence"] == 0  # a send's frames count from 0…
        assert rest[1]["turnSequence"] == from_a[-2]["sequence"] + 1  # …and continue the same turn's log
        first = next(c for c in chunks if not c["type"].startswith("data-"))  # the title may come first
        assert first["type"] == "tool-approval-response" and first["approved"] is True
        output = next(c for c in chunks if c["type"] == "tool-output-available")
        assert "answered-on-b" in str(output["output"])
        assert chunks[-1]["type"] == "finish"
        followed = [f for f in frames if f.get("requestId") == "follow"]
        assert followed[-1]["type"] == "end", followed[-2:]
        assert [f["chunk"] for f in followed if f["type"] == "chunk"] == chunks
