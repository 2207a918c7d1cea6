"""Websocket frames that once broke a request (issue "Production fidelity", part 3), and the
hypothesis fuzzing that would have found them.

- ``resume`` with a lone surrogate in ``id`` (``"\\ud800"``) answered ``server_error`` (the
  database cannot take the string);
- ``resume`` with one in ``requestId`` got no reply at all: the error frame echoing it could not
  be encoded as UTF-8 by daphne ("Task exception was never retrieved").

Now every such frame gets ``error`` / ``invalid_request`` (``requestId: null`` when the requestId
itself is unusable), nothing is persisted, and every frame the server sends is valid UTF-8.
The in-process communicator does not encode frames, so the tests assert encodability
themselves; one test goes through a real daphne, where an unencodable frame is lost."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
import websockets
from asgiref.sync import sync_to_async
from hypothesis import HealthCheck, Phase, given, seed
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from chat.apikeys import api_key_create
from chat.models import ChatMessage, ChatSession
from tests.chat.conftest import send_frame
from tests.servers import DaphneServer, daphne_env

pytestmark = pytest.mark.django_db(transaction=True)

FUZZ_SEED = 20240611

BAD_STRINGS = ["\ud800", "\udfff", "a\ud800b", "\udc00\ud800", "a\x00b", "\x00", "ok\ud83d"]


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


async def _recv_raw(ws, timeout: float = 30.0) -> str:
    return await ws.comm.receive_from(timeout=timeout)


async def _persisted() -> tuple[int, int]:
    return await ChatSession.objects.acount(), await ChatMessage.objects.acount()


@pytest.mark.parametrize("bad", BAD_STRINGS)
async def test_resume_and_send_with_a_bad_chat_id_are_invalid_request(backend_api, connect, bad):
    ws = await connect()
    before = await _persisted()
    for frame in (
        {"type": "resume", "requestId": "r1", "id": bad},
        {"type": "resume", "requestId": "r2", "id": bad, "lastSequence": 3},
        {**send_frame(bad, "hello"), "requestId": "s1"},
    ):
        await ws.send(json.dumps(frame))  # ASCII on the wire: \ud800 / \u0000 escapes
        raw = await _recv_raw(ws)
        assert _encodable(raw), raw.encode("utf-8", "backslashreplace")
        answer = json.loads(raw)
        assert answer["type"] == "error" and answer["requestId"] == frame["requestId"], answer
        assert answer["code"] == "invalid_request", answer
    assert await _persisted() == before


@pytest.mark.parametrize("bad", BAD_STRINGS)
async def test_a_bad_request_id_still_gets_an_answer(backend_api, connect, bad):
    ws = await connect()
    for frame in (
        {"type": "resume", "requestId": bad, "id": "chat"},
        {**send_frame("chat", "hello"), "requestId": bad},
        {"type": "abort", "requestId": bad},
    ):
        await ws.send(json.dumps(frame))
        raw = await _recv_raw(ws)
        assert _encodable(raw), raw.encode("utf-8", "backslashreplace")
        answer = json.loads(raw)
        assert answer == {**answer, "type": "error", "requestId": None, "code": "invalid_request"}, answer
    assert await _persisted() == (0, 0)


@pytest.mark.parametrize("where", ["text", "message-id", "filename", "deep-extra", "extra-key"])
async def test_bad_strings_inside_a_send_are_invalid_request(backend_api, connect, where):
    ws = await connect()
    frame = send_frame(str(uuid.uuid4()), "hello", request_id="s")
    user_message = frame["messages"][-1]
    if where == "text":
        user_message["parts"][0]["text"] = "hi \ud800"
    elif where == "message-id":
        user_message["id"] = "m\x00"
    elif where == "filename":
        user_message["parts"].append(
            {
                "type": "file",
                "mediaType": "text/plain",
                "filename": "a\x00.txt",
                "url": "data:text/plain;base64,aGk=",
            }
        )
    elif where == "deep-extra":
        frame["metadata"] = {"a": [{"b": "\udfff"}]}
    else:
        frame["body"] = {"\ud800": 1}
    await ws.send(json.dumps(frame))
    raw = await _recv_raw(ws)
    assert _encodable(raw)
    answer = json.loads(raw)
    assert answer["type"] == "error" and answer["requestId"] == "s" and answer["code"] == "invalid_request", (
        answer
    )
    assert await _persisted() == (0, 0)


@pytest.fixture
def own_daphne(tmp_path):
    """A daphne of this test's own, started after the in-process tests' worker-thread database
    connection is closed (an open SQLite connection there can block the server's start-up)."""
    from asgiref.sync import SyncToAsync
    from django.db import connections

    SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=30)
    env = daphne_env(workspaces=tmp_path / "workspaces", var_dir=tmp_path / "var", scripted_url=None)
    with DaphneServer(env, name="ws-fuzz", ready_path="/healthz", timeout=60) as server:
        yield server


async def test_bad_frames_through_a_real_daphne_are_answered(own_daphne, user):
    """On the real server an unencodable frame is lost (daphne raises in a task): every bad frame
    must get its answer, and the socket must still serve a resume afterwards."""
    _, key = await sync_to_async(api_key_create)(owner=user, name="ws-fuzz")
    async with websockets.connect(
        own_daphne.ws_url, additional_headers={"Authorization": f"Bearer {key}"}
    ) as ws:
        for bad in BAD_STRINGS:
            for frame, rid in (
                ({"type": "resume", "requestId": "r", "id": bad}, "r"),
                ({"type": "resume", "requestId": bad, "id": "chat"}, None),
                ({**send_frame(bad, "hello"), "requestId": "s"}, "s"),
            ):
                await ws.send(json.dumps(frame))
                async with asyncio.timeout(10):
                    answer = json.loads(await ws.recv())
                assert answer["type"] == "error" and answer["requestId"] == rid, (frame, answer)
                assert answer["code"] == "invalid_request", answer
        await ws.send(json.dumps({"type": "resume", "requestId": "probe", "id": str(uuid.uuid4())}))
        async with asyncio.timeout(10):
            answer = json.loads(await ws.recv())
        assert answer["requestId"] == "probe" and answer["type"] in {"error", "no-active"}
    assert await _persisted() == (0, 0)


# --- hypothesis-generated frames through the consumer -------------------------------------------

# Strings from the whole code space, lone surrogates and NUL included (hypothesis' default text
# alphabet leaves surrogates out, which is why the earlier fuzzing missed them).
any_text = st.text(
    st.characters(codec=None) | st.characters(categories=["Cs"]) | st.just("\x00"), max_size=30
) | st.sampled_from(BAD_STRINGS)
scalars = st.none() | st.booleans() | st.integers(-2, 2**40) | st.floats(allow_nan=False) | any_text
values = st.recursive(
    scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(any_text, c, max_size=3), max_leaves=10
)
ids = any_text | st.sampled_from(["chat-1", str(uuid.UUID(int=1))]) | values
parts = st.lists(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "file", "step-start"]) | values},
        optional={
            "text": any_text | values,
            "url": st.sampled_from(["data:text/plain;base64,aGk=", "data:x", "http://e"]) | any_text,
            "mediaType": st.sampled_from(["text/plain", "image/png"]) | any_text,
            "filename": any_text,
        },
    ),
    max_size=3,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "assistant"]) | values},
        optional={"id": ids, "parts": parts | values},
    ),
    max_size=3,
)
frames = st.fixed_dictionaries(
    {"type": st.sampled_from(["resume", "abort", "send"]) | values, "requestId": ids},
    optional={
        "id": ids,
        "lastSequence": st.integers(-3, 10) | values,
        "trigger": st.sampled_from(["submit-message", "regenerate-message"]) | values,
        "messageId": ids,
        "messages": messages | values,
        "body": values,
        "metadata": values,
    },
)
# Sends that would start a turn are kept out (each is a model call); everything else goes through.
wire_frames = frames.filter(
    lambda f: (
        not (
            f.get("type") == "send"
            and isinstance(f.get("id"), str)
            and _encodable(f["id"])
            and "\x00" not in f["id"]
        )
    )
).map(json.dumps)


def _valid_request_id(frame: dict) -> str | None:
    rid = frame.get("requestId")
    return (
        rid
        if isinstance(rid, str) and 0 < len(rid) <= 200 and _encodable(rid) and "\x00" not in rid
        else None
    )


async def test_generated_frames_always_get_a_well_formed_answer(backend_api, connect, settings):
    """Fixed seed, 300 frames (a few seconds): each resume/send is answered with a well-formed,
    UTF-8-encodable frame that names its request (or ``null``), never ``server_error``; nothing
    is persisted; the socket then still works."""
    settings.WS_FRAME_BURST = 100_000
    ws = await connect()
    examples: list[str] = []

    @seed(FUZZ_SEED)
    @hsettings(
        max_examples=300,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.explicit, Phase.generate],
    )
    @given(raw=wire_frames)
    def gather(raw):
        examples.append(raw)

    gather()
    assert len(examples) >= 250
    answered = 0
    for raw in examples:
        frame = json.loads(raw)
        await ws.send(raw)
        if frame.get("type") == "abort" and _valid_request_id(frame):
            continue  # an abort of an unknown request is silently ignored
        out = await _recv_raw(ws)
        assert _encodable(out), (raw, out.encode("utf-8", "backslashreplace"))
        answer = json.loads(out)
        assert answer["type"] in {"error", "no-active"}, (raw, answer)
        assert answer["requestId"] == _valid_request_id(frame), (raw, answer)
        assert answer.get("code") != "server_error", (raw, answer)
        answered += 1
    assert answered > 100
    assert await ws.comm.receive_nothing(timeout=0.2)
    assert await _persisted() == (0, 0)
    ok = send_frame(str(uuid.uuid4()), "still alive")
    await ws.send(ok)
    assert (await ws.frames_until_done(ok["requestId"]))[-1]["type"] == "end"
