"""Prometheus metrics (docs/operations.md "Metrics"): every definition, the small functions the
runtime calls, who may read ``GET /metrics``, and its text.

The runtime calls ``turn_started`` / ``turn_first_token`` / ``turn_ended`` (chat.runtime.runner),
``refusals_counted`` (chat.runtime.start), ``usage_counted`` (chat.usage), ``websocket_opened`` /
``websocket_closed`` (chat.consumers); the sdk backend reports its CLI processes through
``agents.backends.sdk.cli_observer_add``. Nothing runs per chunk: a turn's chunks and bytes are
added once, when it ends.

**Several daphne workers.** With ``PROMETHEUS_MULTIPROC_DIR`` in the environment when the process
starts, prometheus_client keeps each value in memory-mapped files in that directory, one set per
process, and ``/metrics`` of any worker sums the files of all of them (``MultiProcessCollector``).
Every worker of a host must get the same directory, and it must be emptied before the workers
start (at each deploy / restart of the whole set): counters of processes that are gone stay in it
on purpose (a counter must not go down when a worker restarts). The gauges (running turns,
websockets, CLI processes) count live processes only (mode ``livesum``): the files of a process
that has died are removed at the next scrape (``dead_processes_forget``). Without the variable:
this process's own registry (plus the ``process_*`` and ``python_*`` metrics).
"""

from __future__ import annotations

import functools
import hmac
import os
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from django.conf import settings
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)

from agents.backends.sdk import cli_observer_add
from chat.proxies import Network, is_trusted, networks_cached, parse_address, parse_networks

MULTIPROC_DIR = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")

disable_created_metrics()  # no ``*_created`` series: they double the output and nobody graphs them

if MULTIPROC_DIR:
    # A live gauge file left under this pid by a dead process would be read as this one's.
    multiprocess.mark_process_dead(os.getpid(), MULTIPROC_DIR)

FIRST_TOKEN_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0)
DURATION_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
TOKEN_TYPES = ("input", "output", "cache_read", "cache_write")

TURNS_STARTED = Counter("copilot_turns_started", "Turns started, by backend.", ["backend"])
TURNS_ENDED = Counter(
    "copilot_turns_ended",
    "Turns ended, by backend and status (finished, stopped, failed, interrupted).",
    ["backend", "status"],
)
TURNS_RUNNING = Gauge(
    "copilot_turns_running", "Turns running now, by backend.", ["backend"], multiprocess_mode="livesum"
)
FIRST_TOKEN_SECONDS = Histogram(
    "copilot_turn_first_token_seconds",
    "Seconds from a turn's start (its row) to the model's first output (text, reasoning or a tool call).",
    ["backend"],
    buckets=FIRST_TOKEN_BUCKETS,
)
TURN_SECONDS = Histogram(
    "copilot_turn_duration_seconds",
    "Seconds from a turn's start to its recorded end.",
    ["backend"],
    buckets=DURATION_BUCKETS,
)
CHUNKS_RELAYED = Counter(
    "copilot_relayed_chunks", "Stream chunks turns produced for their listeners, by backend.", ["backend"]
)
BYTES_RELAYED = Counter(
    "copilot_relayed_bytes",
    "Bytes of those chunks (their JSON, UTF-8), by backend; each listener receives them once.",
    ["backend"],
)
TOKENS = Counter(
    "copilot_tokens",
    "Model tokens recorded (turns and chat titles), by model and type (input, output, cache_read, "
    "cache_write).",
    ["model", "type"],
)
COST_USD = Counter("copilot_cost_usd", "Model cost recorded in USD, by model.", ["model"])
TURN_ERRORS = Counter(
    "copilot_turn_errors",
    "Turns that ended with an error, by kind (the turn's error code: rate_limited, overloaded, "
    "server, connection, server_shutdown, ...).",
    ["kind"],
)
TURN_REFUSALS = Counter(
    "copilot_turn_refusals",
    "Turns refused before starting, by code (stream_already_active, too_many_turns, budget_exceeded, "
    "rate_limited, unavailable, invalid_request, ...).",
    ["code"],
)
WEBSOCKETS_OPEN = Gauge(
    "copilot_websocket_connections", "Open /ws/chat/ connections.", multiprocess_mode="livesum"
)
CLI_PROCESSES = Gauge(
    "copilot_cli_processes",
    "Claude Code CLI processes of the sdk backend (busy and kept idle).",
    multiprocess_mode="livesum",
)
CLI_STARTED = Counter("copilot_cli_processes_started", "Claude Code CLI processes started (sdk backend).")


# ---------------------------------------------------------------------------------------------
# What the runtime calls
# ---------------------------------------------------------------------------------------------


def turn_started(backend: str) -> None:
    TURNS_STARTED.labels(backend).inc()
    TURNS_RUNNING.labels(backend).inc()


def turn_first_token(backend: str, seconds: float) -> None:
    FIRST_TOKEN_SECONDS.labels(backend).observe(max(0.0, seconds))


def turn_ended(
    *, backend: str, status: str, duration_s: float, chunks: int, nbytes: int, error_kind: str = ""
) -> None:
    """Once per turn, after its end is recorded."""
    TURNS_RUNNING.labels(backend).dec()
    TURNS_ENDED.labels(backend, status).inc()
    TURN_SECONDS.labels(backend).observe(max(0.0, duration_s))
    CHUNKS_RELAYED.labels(backend).inc(chunks)
    BYTES_RELAYED.labels(backend).inc(nbytes)
    if error_kind:
        TURN_ERRORS.labels(error_kind).inc()


def usage_counted(rows: Iterable[Any]) -> None:
    """Token usage rows just written (``chat.models.TokenUsage``): tokens and cost by model."""
    for row in rows:
        model = row.model or "unknown"
        for kind in TOKEN_TYPES:
            count = getattr(row, f"{kind}_tokens", 0) or 0
            if count:
                TOKENS.labels(model, kind).inc(count)
        if row.cost_usd:
            COST_USD.labels(model).inc(float(row.cost_usd))


def turn_refused(code: str) -> None:
    TURN_REFUSALS.labels(code or "unknown").inc()


R = TypeVar("R")


def refusals_counted(
    refusal: type[Exception],
) -> Callable[[Callable[..., Awaitable[R]]], Callable[..., Awaitable[R]]]:
    """Decorate an async function: each ``refusal`` it raises is counted by its ``code``."""

    def decorate(func: Callable[..., Awaitable[R]]) -> Callable[..., Awaitable[R]]:
        @functools.wraps(func)
        async def counted(*args: Any, **kwargs: Any) -> R:
            try:
                return await func(*args, **kwargs)
            except refusal as exc:
                turn_refused(str(getattr(exc, "code", "") or ""))
                raise

        return counted

    return decorate


def websocket_opened() -> None:
    WEBSOCKETS_OPEN.inc()


def websocket_closed() -> None:
    WEBSOCKETS_OPEN.dec()


def cli_processes_changed(delta: int) -> None:
    CLI_PROCESSES.inc(delta)
    if delta > 0:
        CLI_STARTED.inc(delta)


cli_observer_add(cli_processes_changed)


def chunks_nbytes(encoded: list[str], total: int) -> int:
    """UTF-8 bytes of a turn's chunks from the JSON texts its log still holds (``encoded``, all of
    them unless the log was trimmed past ``MAX_LOG_CHUNKS``: then scaled up to ``total`` chunks).
    Run once per turn, at its end."""
    kept = sum(len(text) if text.isascii() else len(text.encode()) for text in encoded)
    if encoded and total > len(encoded):
        return kept * total // len(encoded)
    return kept


# ---------------------------------------------------------------------------------------------
# GET /metrics
# ---------------------------------------------------------------------------------------------

_LIVE_GAUGE_FILE = re.compile(r"^gauge_live[a-z]*_(\d+)\.db$")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def dead_processes_forget(path: str) -> list[int]:
    """Remove the live gauges' files of processes that no longer exist (killed workers): their
    running turns and open sockets are gone with them. Returns those pids."""
    dead = set()
    for name in os.listdir(path):
        match = _LIVE_GAUGE_FILE.match(name)
        if match and not pid_alive(int(match.group(1))):
            dead.add(int(match.group(1)))
    for pid in dead:
        multiprocess.mark_process_dead(pid, path)
    return sorted(dead)


def metrics_text() -> bytes:
    """The Prometheus text exposition: every worker's values with PROMETHEUS_MULTIPROC_DIR,
    this process's otherwise."""
    if not MULTIPROC_DIR:
        return generate_latest(REGISTRY)
    dead_processes_forget(MULTIPROC_DIR)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=MULTIPROC_DIR)
    return generate_latest(registry)


METRICS_CONTENT_TYPE = CONTENT_TYPE_LATEST


def metrics_networks() -> tuple[Network, ...]:
    """METRICS_ALLOW_IPS as networks (validated at start by copilot_project/settings.py)."""
    return networks_cached(tuple(settings.METRICS_ALLOW_IPS))


def address_allowed(address: str, networks: tuple[Network, ...]) -> bool:
    return is_trusted(parse_address(address), networks)


LOOPBACK = parse_networks(("127.0.0.0/8", "::1/128"))


def metrics_access(*, remote_addr: str, authorization: str) -> int:
    """Who may read /metrics: the HTTP status to answer (200: allowed).

    - METRICS_TOKEN set: ``Authorization: Bearer <token>`` (compared in constant time), else 401;
    - METRICS_ALLOW_IPS set: the client address (``chat.proxies.request_client_ip``: the peer, or
      behind TRUSTED_PROXIES the client they name) in one of its networks, else 403;
    - both set: both must hold;
    - neither: 404 (no such endpoint) with DEBUG=false; under DEBUG, loopback clients only (403).
    """
    token, networks = settings.METRICS_TOKEN, metrics_networks()
    if not token and not networks:
        if not settings.DEBUG:
            return 404
        return 200 if address_allowed(remote_addr, LOOPBACK) else 403
    if networks and not address_allowed(remote_addr, networks):
        return 403
    if token:
        scheme, _, given = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode("utf-8", "surrogateescape"), token.encode("utf-8", "surrogateescape")
        ):
            return 401
    return 200
