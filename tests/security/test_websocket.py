"""Websocket hardening (issue 10 item 5): handshakes, size limits, per-connection flood
control, and fuzzed frames — never an exception out of the consumer, never another user's
socket affected."""

from __future__ import annotations

import json
import uuid

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from chat import protocol
from chat.apikeys import api_key_create
from chat.protocol import ProtocolError, frame_parse
from chat.ratelimit import TokenBucket
from tests.chat.conftest import send_frame, session_cookie, session_cookie_async
from tests.servers import DaphneServer, daphne_env

pytestmark = pytest.mark.django_db(transaction=True)


async def _handshake(headers):
    from copilot_project.asgi import application

    comm = WebsocketCommunicator(application, "/ws/chat/", headers=headers)
    connected, code = await comm.connect(timeout=10)
    await comm.disconnect()
    return connected, code


async def _drain(ws, quiet: float = 0.5) -> list[dict]:
    """Every frame until the socket has been quiet for ``quiet`` seconds (receive_nothing does
    not cancel the application, unlike a receive timeout)."""
    out = []
    while not await ws.comm.receive_nothing(timeout=quiet):
        out.append(await ws.recv())
    return out


# --- handshakes ---------------------------------------------------------------------------------


async def test_unauthenticated_and_cross_origin_handshakes_are_refused(connect, user):
    assert (await connect(cookie=False, expect_ok=False))[0] is False  # no credentials at all
    for origin in (b"https://evil.example", b"null", b"http://127.0.0.1.evil.example", None):
        connected, _, _ = await connect(origin=origin, expect_ok=False)
        assert not connected, origin
    # A forged/garbage session cookie is anonymous: refused.
    connected, _ = await _handshake([(b"cookie", b"sessionid=forged"), (b"origin", b"http://127.0.0.1")])
    assert not connected
    # A Bearer handshake from a browser-like foreign origin is refused; a bad key too.
    _, key = await sync_to_async(api_key_create)(owner=user, name="ws")
    connected, _ = await _handshake(
        [(b"authorization", f"Bearer {key}".encode()), (b"origin", b"https://evil.example")]
    )
    assert not connected
    connected, _ = await _handshake([(b"authorization", b"Bearer cps_aaaaaaaaaaaa_wrong")])
    assert not connected


# Origin judged the way Django's CSRF judges a request's Origin (scheme and port included).
# (scheme of the handshake, Host, X-Forwarded-Proto or None, Origin)
_ORIGIN_CASES = [
    ("wss", "copilot.example.com", None, "https://copilot.example.com"),  # own origin
    ("wss", "copilot.example.com", None, "http://copilot.example.com"),  # downgraded scheme
    ("wss", "copilot.example.com", None, "https://copilot.example.com:8443"),  # another port
    ("wss", "copilot.example.com:8443", None, "https://copilot.example.com:8443"),  # own port
    ("wss", "copilot.example.com:8443", None, "https://copilot.example.com"),
    ("ws", "copilot.example.com", None, "http://copilot.example.com"),  # plain-http deployment
    ("ws", "copilot.example.com", None, "https://copilot.example.com"),
    ("ws", "copilot.example.com", "https", "https://copilot.example.com"),  # TLS ends at the proxy
    ("ws", "copilot.example.com", "https", "http://copilot.example.com"),
    ("wss", "evil.example", None, "https://evil.example"),  # Host not allowed
    ("wss", "copilot.example.com", None, "https://app.example.org"),  # trusted wildcard
    ("wss", "copilot.example.com", None, "https://example.org"),
    ("wss", "copilot.example.com", None, "http://app.example.org"),
    ("wss", "copilot.example.com", None, "https://partner.example.net:8443"),  # trusted exact
    ("wss", "copilot.example.com", None, "https://partner.example.net"),
    ("wss", "copilot.example.com", None, "https://copilot.example.com.evil.example"),
    ("wss", "copilot.example.com", None, "null"),
]


def _csrf_origin_verdict(scheme: str, host: str, forwarded: str | None, origin: str) -> bool:
    """Django's own judgement of the same request (the oracle)."""
    from django.http import HttpResponse
    from django.middleware.csrf import CsrfViewMiddleware
    from django.test import RequestFactory

    extra = {"HTTP_ORIGIN": origin, "HTTP_HOST": host}
    if forwarded:
        extra["HTTP_X_FORWARDED_PROTO"] = forwarded
    request = RequestFactory().post("/api/v1/sessions/", secure=scheme == "wss", **extra)
    return CsrfViewMiddleware(lambda r: HttpResponse())._origin_verified(request)


@pytest.mark.parametrize("scheme,host,forwarded,origin", _ORIGIN_CASES)
async def test_websocket_origin_is_judged_like_csrf(settings, user, scheme, host, forwarded, origin):
    """Until the 'production fidelity' issue (item 2) the handshake checked the Origin's host against
    ALLOWED_HOSTS only: http://copilot.example.com and https://copilot.example.com:8443 opened a
    cookie socket of an https deployment that REST's CSRF check refuses."""
    from copilot_project.asgi import application

    settings.ALLOWED_HOSTS = ["copilot.example.com"]
    settings.CSRF_TRUSTED_ORIGINS = ["https://*.example.org", "https://partner.example.net:8443"]
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    expected = await sync_to_async(_csrf_origin_verdict)(scheme, host, forwarded, origin)
    headers = [
        (b"cookie", (await session_cookie_async(user)).encode()),
        (b"host", host.encode()),
        (b"origin", origin.encode()),
    ]
    if forwarded:
        headers.append((b"x-forwarded-proto", forwarded.encode()))
    comm = WebsocketCommunicator(application, "/ws/chat/", headers=headers)
    comm.scope["scheme"] = scheme
    connected, _ = await comm.connect(timeout=10)
    await comm.disconnect()
    assert connected is expected, (scheme, host, forwarded, origin, "CSRF says", expected)


async def test_websocket_origin_without_a_proxy_header_setting(settings, user):
    """Without SECURE_PROXY_SSL_HEADER a forwarded proto is not believed (as in Django)."""
    from copilot_project.asgi import application

    settings.ALLOWED_HOSTS = ["copilot.example.com"]
    settings.CSRF_TRUSTED_ORIGINS = []
    settings.SECURE_PROXY_SSL_HEADER = None
    cookie = (await session_cookie_async(user)).encode()
    for origin, ok in (("https://copilot.example.com", False), ("http://copilot.example.com", True)):
        headers = [
            (b"cookie", cookie),
            (b"host", b"copilot.example.com"),
            (b"origin", origin.encode()),
            (b"x-forwarded-proto", b"https"),
        ]
        comm = WebsocketCommunicator(application, "/ws/chat/", headers=headers)
        connected, _ = await comm.connect(timeout=10)
        await comm.disconnect()
        assert connected is ok, origin


# --- sizes --------------------------------------------------------------------------------------


def test_daphne_limits_sit_just_above_the_application_limit():
    """daphne (autobahn) buffers a whole message before the app sees it: its cap must exist
    (not 0 = unlimited) and leave room for the app's own, clearer, 32 MiB frame error."""
    assert (
        protocol.MAX_FRAME_BYTES
        < settings.DAPHNE_WEBSOCKET_MAX_MESSAGE_SIZE
        <= protocol.MAX_FRAME_BYTES + 2 * 1024 * 1024
    )
    assert 0 < settings.DAPHNE_WEBSOCKET_MAX_FRAME_SIZE <= settings.DAPHNE_WEBSOCKET_MAX_MESSAGE_SIZE


def test_frame_size_counts_utf8_bytes(monkeypatch):
    monkeypatch.setattr(protocol, "MAX_FRAME_BYTES", 4000)
    with pytest.raises(ProtocolError) as exc:
        frame_parse(json.dumps({"type": "abort", "requestId": "r", "pad": "€" * 1500}, ensure_ascii=False))
    assert exc.value.code == "frame_too_large" and "4000 bytes" in exc.value.message
    assert frame_parse(json.dumps({"type": "abort", "requestId": "r", "pad": "e" * 1500})).request_id == "r"


async def test_oversized_frame_and_message_get_clear_errors_and_the_socket_lives(
    backend_api, connect, monkeypatch
):
    monkeypatch.setattr(protocol, "MAX_FRAME_BYTES", 64 * 1024)
    ws = await connect()
    await ws.send(json.dumps({**send_frame("c", "x"), "requestId": "big", "pad": "y" * (65 * 1024)}))
    frame = await ws.recv()
    assert (
        frame["type"] == "error" and frame["code"] == "frame_too_large" and "too large" in frame["errorText"]
    )
    too_long = send_frame("c", "z" * (protocol.MAX_TEXT_CHARS + 1), request_id="long")
    monkeypatch.setattr(protocol, "MAX_FRAME_BYTES", 32 * 1024 * 1024)
    await ws.send(too_long)
    frame = await ws.recv()
    assert frame == {
        "type": "error",
        "requestId": "long",
        "code": "invalid_request",
        "errorText": f"The message is longer than {protocol.MAX_TEXT_CHARS} characters.",
    }
    ok = send_frame(str(uuid.uuid4()), "still here")
    await ws.send(ok)
    assert (await ws.frames_until_done(ok["requestId"]))[-1]["type"] == "end"


# --- flood control ------------------------------------------------------------------------------


def test_token_bucket():
    now = [0.0]
    bucket = TokenBucket(rate=2, burst=3, clock=lambda: now[0])
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.5  # one token back
    assert bucket.take() and not bucket.take()
    now[0] += 100
    assert sum(bucket.take() for _ in range(10)) == 3  # never above the burst


async def test_a_flood_is_rate_limited_per_connection_without_starving_others(
    backend_api, connect, user, other_user, settings
):
    settings.WS_FRAME_BURST = 5
    settings.WS_FRAME_RATE = 0.001  # effectively no refill during the test
    flooder = await connect(user)
    victim = await connect(other_user)
    n = 40
    for i in range(n):
        await flooder.send({"type": "abort", "requestId": f"f{i}"})
    errors = await _drain(flooder)
    # Aborts of unknown requests are silent; every frame past the burst got a rate_limited error
    # naming its request, and nothing else happened.
    assert len(errors) == n - 5
    assert all(e["type"] == "error" and e["code"] == "rate_limited" for e in errors)
    assert [e["requestId"] for e in errors] == [f"f{i}" for i in range(5, n)]
    # The flooder's socket is still open (it can still be told things) ...
    await flooder.send({"type": "abort", "requestId": "after"})
    assert (await flooder.recv())["code"] == "rate_limited"
    # ... and the other connection has its whole budget: a full turn streams normally.
    ok = send_frame(str(uuid.uuid4()), "hello from the victim")
    await victim.send(ok)
    frames = await victim.frames_until_done(ok["requestId"])
    assert frames[-1]["type"] == "end"
    assert not any(f.get("code") == "rate_limited" for f in frames)


# --- fuzzing ------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=30,
)
frame_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["send", "resume", "abort", "bogus"]) | json_values},
    optional={
        "requestId": st.text(max_size=300) | json_values,
        "id": st.text(max_size=300) | json_values,
        "trigger": st.sampled_from(["submit-message", "regenerate-message"]) | json_values,
        "lastSequence": st.integers() | json_values,
        "messages": st.lists(
            st.fixed_dictionaries(
                {"role": st.sampled_from(["user", "assistant"]) | json_values},
                optional={
                    "id": json_values,
                    "parts": st.lists(
                        st.fixed_dictionaries(
                            {"type": st.sampled_from(["text", "file", "x"]) | json_values},
                            optional={
                                "text": json_values,
                                "url": st.text(max_size=80) | json_values,
                                "mediaType": json_values,
                                "filename": json_values,
                            },
                        ),
                        max_size=6,
                    )
                    | json_values,
                },
            ),
            max_size=4,
        )
        | json_values,
    },
)
raw_frames = (
    frame_like.map(json.dumps)
    | json_values.map(json.dumps)
    | st.text(max_size=200)
    | st.binary(max_size=200)
    | st.integers(1, 50_000).map(lambda n: "[" * n + "]" * n)  # nesting depth
    | st.integers(1, 50_000).map(lambda n: '{"a":' * n + "1" + "}" * n)
)


@hsettings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=raw_frames)
def test_frame_parse_only_ever_raises_protocol_error(raw):
    try:
        frame = frame_parse(raw)
    except ProtocolError as exc:
        assert isinstance(exc.message, str) and exc.message
        assert exc.request_id is None or isinstance(exc.request_id, str)
        return
    assert isinstance(frame, (protocol.SendFrame, protocol.ResumeFrame, protocol.AbortFrame))


def test_frame_parse_huge_and_deep_inputs():
    for raw in (
        "[" * 200_000,
        "[" * 100_000 + "]" * 100_000,
        '{"type":"send","requestId":"r","id":"' + "x" * 5_000_000 + '"}',
    ):
        with pytest.raises(ProtocolError):
            frame_parse(raw)


async def test_fuzzed_frames_through_the_consumer_never_break_a_socket(
    backend_api, connect, user, other_user, settings
):
    """Random frames on one socket: every one is answered or ignored, no exception closes it,
    and another user's socket meanwhile serves a turn normally."""
    settings.WS_FRAME_BURST = 10_000
    fuzzer = await connect(user)
    bystander = await connect(other_user)
    examples: list = []

    @hsettings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(raw=raw_frames)
    def gather(raw):
        examples.append(raw)

    gather()
    examples += [
        "[" * 100_000,
        b"\xff\xfe\x00",
        "",
        json.dumps(
            {
                "type": "send",
                "requestId": "h",
                "id": "c",
                "messages": [{"role": "user", "parts": [{"type": "text", "text": "q" * 200_000}]}],
            }
        ),
    ]
    # Frames that would start real turns are fine too, but keep the run short: only resumes/aborts
    # and invalid sends reach chat.runtime.
    for raw in examples:
        key = "bytes" if isinstance(raw, bytes) else "text"
        await fuzzer.comm.send_input({"type": "websocket.receive", key: raw})  # empty frames too
    ok = send_frame(str(uuid.uuid4()), "bystander turn")
    await bystander.send(ok)
    frames = await bystander.frames_until_done(ok["requestId"])
    assert frames[-1]["type"] == "end"
    # Drain the fuzzer: only well-formed protocol frames, never a server_error, socket open.
    drained = await _drain(fuzzer, quiet=1.0)
    seen = 0
    for frame in drained:
        seen += 1
        assert frame["type"] in {"error", "start", "chunk", "end", "no-active"}
        assert frame.get("code") != "server_error", frame
    assert seen > 0
    probe = {"type": "resume", "requestId": "probe", "id": str(uuid.uuid4())}
    await fuzzer.send(probe)
    answer = await fuzzer.frames_until_done("probe")
    assert answer[-1]["type"] in {"error", "no-active"}


def test_real_daphne_judges_the_origin_like_csrf(tmp_path, user):
    """The same rule through a real daphne with production settings behind a TLS proxy
    (X-Forwarded-Proto: https, SECURE_PROXY_SSL_HEADER set by DEBUG=false)."""
    import socket

    cookie = session_cookie(user)
    env = daphne_env(
        workspaces=tmp_path,
        scripted_url="http://127.0.0.1:9",
        DEBUG="false",
        SECRET_KEY=settings.SECRET_KEY,  # signs the cookie's session
        ALLOWED_HOSTS="copilot.example.com",
        CSRF_TRUSTED_ORIGINS="",
        ENV_FILE="",
    )

    def handshake(port: int, origin: str) -> str:
        request = (
            "GET /ws/chat/ HTTP/1.1\r\n"
            "Host: copilot.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            f"Origin: {origin}\r\nX-Forwarded-Proto: https\r\nCookie: {cookie}\r\n\r\n"
        )
        with socket.create_connection(("127.0.0.1", port), timeout=15) as sock:
            sock.sendall(request.encode())
            return sock.recv(4096).split(b"\r\n", 1)[0].decode()

    with DaphneServer(env, name="origin") as server:
        assert " 101 " in handshake(server.port, "https://copilot.example.com")
        for origin in (
            "http://copilot.example.com",
            "https://copilot.example.com:8443",
            "https://evil.example",
        ):
            assert " 403 " in handshake(server.port, origin), origin


async def test_failed_bearer_handshakes_are_throttled_per_ip(settings, user):
    """Bad keys on the handshake count with the REST failures of that address; once blocked,
    every Bearer handshake from it is refused (a valid key too) until the window ends."""
    from copilot_project.asgi import application

    settings.API_KEY_FAILURE_LIMIT = 4
    settings.API_KEY_FAILURE_WINDOW = 60
    settings.API_KEY_CACHE_SECONDS = 5
    attacker = f"10.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}.1"
    _, key = await sync_to_async(api_key_create)(owner=user, name="ws throttle")

    async def handshake(token: str, ip: str) -> bool:
        comm = WebsocketCommunicator(
            application, "/ws/chat/", headers=[(b"authorization", f"Bearer {token}".encode())]
        )
        comm.scope["client"] = (ip, 50000)
        connected, _ = await comm.connect(timeout=10)
        await comm.disconnect()
        return connected

    assert await handshake(key, attacker)
    for n in range(4):
        assert not await handshake(f"cps_{'0' * 12}_{n:040d}", attacker)
    # Blocked: a valid key is refused too (so a guess is never confirmed) -- except a key this
    # process verified within API_KEY_CACHE_SECONDS, which answers from memory without any check.
    _, fresh = await sync_to_async(api_key_create)(owner=user, name="ws throttle 2")
    assert not await handshake(fresh, attacker), "blocked: a valid key is refused too"
    assert await handshake(fresh, attacker + "0"), "another address is unaffected"
    # REST shares the counter: the same address gets 429 there.
    from django.test import Client

    resp = await sync_to_async(
        lambda: Client(REMOTE_ADDR=attacker).get("/api/v1/sessions/", HTTP_AUTHORIZATION=f"Bearer {fresh}")
    )()
    assert resp.status_code == 429 and int(resp["Retry-After"]) >= 1
