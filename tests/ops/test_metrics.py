"""GET /metrics (chat.metrics, chat.probes; docs/operations.md "Metrics"), in-process: who may
read it, and real turns through both backends moving the counters. Values are compared before
and after (the process registry is shared by the whole test run)."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import pytest
from django.test import AsyncClient, Client
from prometheus_client.parser import text_string_to_metric_families

from chat.runtime import turn_wait_idle
from tests.chat.conftest import (  # noqa: F401 - fixture re-exports
    backend_api,
    backend_sdk,
    connect,
    fast_retries_settings,
    scripted_model,
    send_frame,
)

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "metrics-token-0123456789abcdef"
ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` of a Prometheus text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(data, name: str, **labels: str) -> float:
    return data.get((name, tuple(sorted(labels.items()))), 0.0)


def total(data, name: str, **labels: str) -> float:
    """Sum of every series of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lbls), v in data.items() if n == name and want <= set(lbls))


@pytest.fixture
def metrics_token(settings):
    settings.METRICS_TOKEN = TOKEN
    settings.METRICS_ALLOW_IPS = []
    return TOKEN


async def scrape() -> dict:
    response = await AsyncClient().get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.content[:200]
    return samples(response.content.decode())


# -- who may read it ----------------------------------------------------------------------------


def test_token_required_and_compared(metrics_token):
    client = Client()
    missing = client.get("/metrics")
    assert missing.status_code == 401 and missing["WWW-Authenticate"].startswith("Bearer")
    assert b"copilot_" not in missing.content
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": f"Basic {TOKEN}"}).status_code == 401
    assert client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}x"}).status_code == 401
    ok = client.get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and ok["Content-Type"].startswith("text/plain")
    assert ok["Cache-Control"] == "no-store"
    names = {family.name for family in text_string_to_metric_families(ok.content.decode())}
    assert {
        "copilot_turns_started",
        "copilot_turn_first_token_seconds",
        "copilot_websocket_connections",
    } <= names
    assert client.post("/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 405


def test_allow_list(settings):
    settings.METRICS_TOKEN = ""
    settings.METRICS_ALLOW_IPS = ["10.0.0.0/8", "127.0.0.1"]
    client = Client()
    assert client.get("/metrics").status_code == 200  # the test client is 127.0.0.1
    assert client.get("/metrics", REMOTE_ADDR="10.2.3.4").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="192.168.1.9").status_code == 403
    assert client.get("/metrics", REMOTE_ADDR="::ffff:10.9.9.9").status_code == 200
    # Both set: both must hold.
    settings.METRICS_TOKEN = TOKEN
    assert client.get("/metrics", REMOTE_ADDR="10.2.3.4").status_code == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert client.get("/metrics", REMOTE_ADDR="10.2.3.4", headers=auth).status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="192.168.1.9", headers=auth).status_code == 403


def test_never_open_by_default_in_production(settings):
    settings.METRICS_TOKEN = ""
    settings.METRICS_ALLOW_IPS = []
    settings.DEBUG = False
    assert Client().get("/metrics").status_code == 404
    settings.DEBUG = True  # development: loopback clients only
    assert Client().get("/metrics").status_code == 200
    assert Client().get("/metrics", REMOTE_ADDR="10.1.1.1").status_code == 403


# -- real turns move the counters -----------------------------------------------------------------


@pytest.mark.parametrize("backend", ["api", "sdk"])
async def test_a_turn_moves_the_counters(backend, request, scripted_model, metrics_token, connect):
    # scripted_model before any settings override: it sets ANTHROPIC_BASE_URL for the whole run.
    request.getfixturevalue(f"backend_{backend}")
    before = await scrape()
    ws = await connect()
    during = await scrape()
    sockets = value(before, "copilot_websocket_connections")
    assert value(during, "copilot_websocket_connections") == sockets + 1
    frame = send_frame(str(uuid.uuid4()), "/long 12")
    await ws.send(frame)
    frames = await ws.frames_until_done(frame["requestId"], timeout=90)
    assert frames[-1]["type"] == "end", frames[-3:]
    chunks = [f for f in frames if f["type"] == "chunk"]
    await ws.close()
    await turn_wait_idle(timeout=20)
    after = await scrape()

    def grew(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert grew("copilot_turns_started_total", backend=backend) == 1
    assert grew("copilot_turns_ended_total", backend=backend, status="finished") == 1
    assert value(after, "copilot_turns_running", backend=backend) == value(
        before, "copilot_turns_running", backend=backend
    )
    assert grew("copilot_turn_first_token_seconds_count", backend=backend) == 1
    assert grew("copilot_turn_duration_seconds_count", backend=backend) == 1
    assert grew("copilot_relayed_chunks_total", backend=backend) == len(chunks)
    relayed = sum(
        len(json.dumps(f["chunk"], separators=(",", ":"), ensure_ascii=False).encode()) for f in chunks
    )
    assert grew("copilot_relayed_bytes_total", backend=backend) == relayed
    assert grew("copilot_tokens_total", type="input") > 0 and grew("copilot_tokens_total", type="output") > 0
    assert grew("copilot_cost_usd_total") >= 0
    assert value(after, "copilot_websocket_connections") == sockets
    if backend == "sdk":
        assert grew("copilot_cli_processes_started_total") >= 1
        assert value(after, "copilot_cli_processes") >= 1  # kept for the chat's next turn


async def test_errors_and_refusals_are_counted(
    backend_api, fast_retries_settings, settings, metrics_token, connect
):
    before = await scrape()
    ws = await connect()
    failing = send_frame(str(uuid.uuid4()), "/error 401")
    await ws.send(failing)
    frames = await ws.frames_until_done(failing["requestId"], timeout=60)
    assert frames[-1]["type"] == "end" and frames[-2]["chunk"]["type"] == "error", frames[-3:]

    chat_id = str(uuid.uuid4())
    slow = send_frame(chat_id, "/slow 50 400")
    await ws.send(slow)
    await ws.frames_until(
        slow["requestId"], lambda f: f["type"] == "chunk" and f["chunk"]["type"] == "text-delta"
    )
    again = send_frame(chat_id, "a second turn in the same chat")
    await ws.send(again)
    assert (await ws.frames_until_done(again["requestId"]))[-1]["code"] == "stream_already_active"
    settings.AGENT_MAX_TURNS_PER_WORKER = 1  # the slow turn fills this worker
    other = send_frame(str(uuid.uuid4()), "another chat while the worker is full")
    await ws.send(other)
    assert (await ws.frames_until_done(other["requestId"]))[-1]["code"] == "too_many_turns"
    await ws.send({"type": "abort", "requestId": slow["requestId"]})
    await ws.frames_until_done(slow["requestId"], timeout=30)
    await turn_wait_idle(timeout=20)
    after = await scrape()

    def grew(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert grew("copilot_turn_errors_total", kind="authentication") == 1
    assert grew("copilot_turns_ended_total", backend="api", status="failed") == 1
    assert grew("copilot_turns_ended_total", backend="api", status="stopped") == 1
    assert grew("copilot_turn_refusals_total", code="stream_already_active") == 1
    assert grew("copilot_turn_refusals_total", code="too_many_turns") == 1


# -- the sample dashboard -------------------------------------------------------------------------

_SUFFIXES = re.compile(r"_(bucket|count|sum|total)$")


def is_delta(frame) -> bool:
    return frame["type"] == "chunk" and frame["chunk"]["type"] == "text-delta"


def dashboard_metric_names() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [
        target["expr"]
        for panel in dashboard["panels"]
        for target in panel.get("targets", [])
        if "expr" in target
    ]
    assert exprs, "the dashboard queries nothing"
    return {name for expr in exprs for name in re.findall(r"\bcopilot_[a-z_]+", expr)}


def test_dashboard_queries_only_metrics_that_exist(metrics_token):
    response = Client().get("/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
    families = {family.name for family in text_string_to_metric_families(response.content.decode())}
    names = dashboard_metric_names()
    required = {
        "copilot_turns_started",
        "copilot_turns_ended",
        "copilot_turns_running",
        "copilot_turn_first_token_seconds",
        "copilot_turn_duration_seconds",
        "copilot_relayed_chunks",
        "copilot_relayed_bytes",
        "copilot_tokens",
        "copilot_cost_usd",
        "copilot_turn_errors",
        "copilot_turn_refusals",
        "copilot_websocket_connections",
        "copilot_cli_processes",
    }
    queried = {_SUFFIXES.sub("", name) for name in names}
    assert queried <= families, queried - families
    assert required <= queried, required - queried
