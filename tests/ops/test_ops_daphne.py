"""Health, metrics and logs of real daphne processes (docs/operations.md): two workers sharing
PROMETHEUS_MULTIPROC_DIR add up in /metrics (and a killed one's gauges drop out), /readyz turns
503 when SIGTERM arrives while a turn drains and when the configured Redis is down, and
LOG_FORMAT=json makes every line JSON with the request, session and turn ids."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.request import Request, urlopen

import psycopg
import pytest
import websockets
from asgiref.sync import sync_to_async
from django.db import connection
from prometheus_client.parser import text_string_to_metric_families

from chat.models import ChatMessage, ChatTurn
from tests.chat.conftest import scripted_model, send_frame, session_cookie, ws_recv_until  # noqa: F401
from tests.servers import DaphneServer, daphne_env, database_url_for_tests, free_port

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "daphne-metrics-token-0123456789"


def get(url: str, *, headers: dict[str, str] | None = None, timeout: float = 5.0) -> tuple[int, bytes, Any]:
    """(status, body, headers) of a GET; HTTP errors are answers too."""
    try:
        with urlopen(Request(url, headers=headers or {}), timeout=timeout) as response:
            return response.status, response.read(), response.headers
    except HTTPError as exc:
        return exc.code, exc.read(), exc.headers


def scrape(server: DaphneServer) -> dict[tuple[str, tuple], float]:
    status, body, _ = get(f"{server.url}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200, body[:300]
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(data, name: str, **labels: str) -> float:
    return data.get((name, tuple(sorted(labels.items()))), 0.0)


def scrape_until(server: DaphneServer, name: str, expected: float, timeout: float = 10.0, **labels: str):
    """Scrape until ``name{labels}`` reads ``expected`` (or the timeout: the last scrape)."""
    deadline = time.monotonic() + timeout
    while True:
        data = scrape(server)
        if value(data, name, **labels) == expected or time.monotonic() > deadline:
            return data
        time.sleep(0.05)


async def connect_ws(server: DaphneServer, user):
    cookie = await sync_to_async(session_cookie)(user)
    return websockets.connect(
        server.ws_url, additional_headers={"Cookie": cookie}, origin=f"http://127.0.0.1:{server.port}"
    )


async def run_turn(ws, text: str = "/long 6") -> list[dict]:
    frame = send_frame(str(uuid.uuid4()), text)
    await ws.send(json.dumps(frame))
    frames = await ws_recv_until(ws, frame["requestId"], lambda f: False, timeout=60)
    assert frames[-1]["type"] == "end", frames[-3:]
    return frames


@pytest.fixture
def servers():
    started: list[DaphneServer] = []
    yield started
    for server in started:
        server.stop(signal.SIGKILL)


def start(
    servers: list[DaphneServer], env: dict[str, str], *, count: int = 1, **kwargs
) -> list[DaphneServer]:
    new = [DaphneServer(env, timeout=60, **kwargs) for _ in range(count)]
    servers.extend(new)
    for server in new:
        server.launch()
    for server in new:
        server.wait_ready()
    return new


# -- several workers ------------------------------------------------------------------------------


async def test_two_workers_add_up_and_a_killed_one_drops_out_of_the_gauges(
    scripted_model, servers, tmp_path, user
):
    shared = tmp_path / "prometheus"  # emptied before the workers start, as at a deploy
    env = daphne_env(
        workspaces=tmp_path / "ws",
        scripted_url=scripted_model.url,
        PROMETHEUS_MULTIPROC_DIR=str(shared),
        METRICS_TOKEN=TOKEN,
    )
    a, b = await asyncio.to_thread(start, servers, env, count=2, name="metrics-mp", ready_path="/readyz")
    async with await connect_ws(a, user) as ws_a, await connect_ws(b, user) as ws_b:
        await run_turn(ws_a)
        await run_turn(ws_b)
        for server in (a, b):  # either worker answers for both
            # (a turn's end is counted just after its last chunk went out: give it a moment)
            data = await asyncio.to_thread(scrape_until, server, "copilot_turns_running", 0, backend="api")
            assert value(data, "copilot_turns_started_total", backend="api") == 2
            assert value(data, "copilot_turns_ended_total", backend="api", status="finished") == 2
            assert value(data, "copilot_turn_first_token_seconds_count", backend="api") == 2
            assert value(data, "copilot_turns_running", backend="api") == 0
            assert value(data, "copilot_websocket_connections") == 2
            assert sum(v for (n, lbl), v in data.items() if n == "copilot_tokens_total") > 0

        b.stop(signal.SIGKILL)  # its socket and gauges are gone; its counters stay
        data = await asyncio.to_thread(scrape, a)
        assert value(data, "copilot_websocket_connections") == 1
        assert value(data, "copilot_turns_started_total", backend="api") == 2
        assert not any(
            path.name.endswith(f"_{b.pid}.db") and "live" in path.name for path in shared.iterdir()
        )


# -- readiness ------------------------------------------------------------------------------------


class ReadyzPoller(threading.Thread):
    """GET /readyz as fast as it answers until the server stops answering (or ``stop``)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.answers: list[tuple[float, float, int, dict]] = []  # (sent, answered, status, body)
        self.halt = threading.Event()

    def run(self) -> None:
        failures = 0
        while not self.halt.is_set() and failures < 20:
            sent = time.monotonic()
            try:
                status, body, _ = get(f"{self.url}/readyz", timeout=2)
            except (URLError, ConnectionError, OSError):
                failures += 1
                time.sleep(0.01)
                continue
            failures = 0
            self.answers.append((sent, time.monotonic(), status, json.loads(body)))
            time.sleep(0.005)


class DatabaseWriteLock:
    """Holds the write lock of the test database from another connection, so a daphne's writes
    wait (SQLite: BEGIN IMMEDIATE; PostgreSQL: the message and turn tables locked EXCLUSIVE,
    which still lets plain reads through) — a turn that drains then stays draining for as
    long as the test needs to look at it."""

    def __enter__(self) -> DatabaseWriteLock:
        if connection.vendor == "sqlite":
            self.conn = sqlite3.connect(
                str(connection.settings_dict["NAME"]), timeout=30, isolation_level=None
            )
            self.conn.execute("BEGIN IMMEDIATE")
        else:
            self.conn = psycopg.connect(database_url_for_tests())
            tables = ", ".join(model._meta.db_table for model in (ChatMessage, ChatTurn))
            self.conn.execute(f"LOCK TABLE {tables} IN EXCLUSIVE MODE")
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.rollback()
        self.conn.close()


def answers_503_after(poller: ReadyzPoller, since: float, count: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(1 for sent, _, status, _ in poller.answers if sent >= since and status == 503) >= count:
            return True
        time.sleep(0.05)
    return False


async def test_readyz_is_503_from_sigterm_while_a_turn_drains(scripted_model, servers, tmp_path, user):
    env = daphne_env(
        workspaces=tmp_path / "ws", scripted_url=scripted_model.url, TURN_SHUTDOWN_GRACE_SECONDS="3"
    )
    (server,) = await asyncio.to_thread(start, servers, env, name="readyz-drain", ready_path="/readyz")
    async with await connect_ws(server, user) as ws:
        frame = send_frame(str(uuid.uuid4()), "/slow 100 200")
        await ws.send(json.dumps(frame))
        await ws_recv_until(
            ws, frame["requestId"], lambda f: f["type"] == "chunk" and f["chunk"]["type"] == "text-delta"
        )
        poller = ReadyzPoller(server.url)
        poller.start()
        await asyncio.sleep(0.3)
        # The turn's writes wait for the lock: its drain (interrupted, final save) takes a while.
        with DatabaseWriteLock():
            signalled = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            seen = await asyncio.to_thread(answers_503_after, poller, signalled, 5, 8.0)
        try:
            frames = await ws_recv_until(ws, frame["requestId"], lambda f: False, timeout=20)
        except Exception:  # noqa: BLE001 - the socket may close first; the turn's end is checked below
            frames = []
    await asyncio.to_thread(server.proc.wait, 30)
    poller.halt.set()
    await asyncio.to_thread(poller.join, 5)

    before = [status for _, answered, status, _ in poller.answers if answered < signalled]
    after = [(status, body) for sent, _, status, body in poller.answers if sent >= signalled]
    assert before and set(before) == {200}, before
    assert seen, f"no 503 after SIGTERM: {after}"
    draining = [body for status, body in after if status == 503]
    assert all(body["checks"]["draining"]["status"] == "fail" for body in draining), draining
    first = next(i for i, (status, _) in enumerate(after) if status == 503)
    assert all(status == 503 for status, _ in after[first:]), after  # never ready again
    assert first <= 3, after  # (a request sent as the signal arrived may still be answered 200)
    if frames:
        assert frames[-1]["type"] in ("end", "error"), frames[-3:]


async def test_readyz_is_503_when_the_configured_redis_is_down(scripted_model, servers, tmp_path):
    dead_port = free_port()  # nothing listens there
    env = daphne_env(
        workspaces=tmp_path / "ws",
        scripted_url=scripted_model.url,
        REDIS_URL=f"redis://127.0.0.1:{dead_port}/0",
    )
    (server,) = await asyncio.to_thread(start, servers, env, name="readyz-redis", ready_path="/livez")
    status, body, _ = await asyncio.to_thread(get, f"{server.url}/livez")
    assert status == 200
    status, body, _ = await asyncio.to_thread(get, f"{server.url}/readyz", timeout=15)
    assert status == 503, body
    checks = json.loads(body)["checks"]
    assert checks["database"]["status"] == "ok" and checks["draining"]["status"] == "ok"
    assert checks["redis"]["status"] == "fail" and checks["channel_layer"]["status"] == "fail", checks
    status, _body, _ = await asyncio.to_thread(get, f"{server.url}/healthz", timeout=15)
    assert status == 503


# -- JSON logs ------------------------------------------------------------------------------------


async def test_json_logs_carry_request_session_and_turn_ids(scripted_model, servers, tmp_path, user):
    env = daphne_env(
        workspaces=tmp_path / "ws", scripted_url=scripted_model.url, LOG_FORMAT="json", LOG_LEVEL="INFO"
    )
    log = tmp_path / "daphne-json.log"
    (server,) = await asyncio.to_thread(start, servers, env, name="json-logs", ready_path="/readyz", log=log)
    async with await connect_ws(server, user) as ws:
        frames = await run_turn(ws)
    start_chunk = next(f["chunk"] for f in frames if f["type"] == "chunk" and f["chunk"]["type"] == "start")
    turn_id = start_chunk["messageId"].removeprefix("msg-")
    status, _body, headers = await asyncio.to_thread(
        get, f"{server.url}/no-such-page/", headers={"X-Request-ID": "req-json-404"}
    )
    assert status == 404 and headers["X-Request-ID"] == "req-json-404"
    await asyncio.to_thread(server.stop)

    records = json_lines(log)
    turn_lines = [r for r in records if r.get("logger") == "copilot.turns" and r.get("turn_id") == turn_id]
    assert turn_lines, [r for r in records if r.get("logger") == "copilot.turns"]
    line = turn_lines[0]
    assert line["level"] == "INFO" and line["message"].startswith("turn ")
    assert line["session_id"] == line["copilot"]["session"] and line["copilot"]["turn"] == turn_id
    assert line["request_id"]  # the websocket request that started the turn
    not_found = [r for r in records if r.get("logger") == "django.request" and "no-such-page" in r["message"]]
    assert not_found and not_found[0]["request_id"] == "req-json-404", not_found
    access = [r for r in records if r.get("logger") == "daphne.access"]
    assert any(r.get("status") == 404 and "/no-such-page/" in r.get("request", "") for r in access), access[
        -5:
    ]
    assert all("timestamp" in r and "level" in r for r in records)


def json_lines(path: Path) -> list[dict]:
    """Every non-empty line of the log, each parsed as one JSON object (fails on any other line)."""
    records = []
    for number, text in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except ValueError:
            pytest.fail(f"line {number} of the daphne log is not JSON: {text!r}")
        assert isinstance(record, dict), text
        records.append(record)
    assert records
    return records
