"""One ``anthropic.AsyncAnthropic`` per (event loop, endpoint), shared by every model call.

Creating a client builds an HTTPS-capable transport (``ssl.create_default_context`` loads the CA
bundle: milliseconds of CPU) and a new connection pool, so a client per call cost 12-37 % of the
server's CPU in the TTFT profile (docs/performance.md, cause B) and threw away keep-alive
connections. ``model_client()`` returns the shared client of the running loop for
``agents.config.model_endpoint()``; per-call settings go through ``client.with_options(...)``,
which shares the underlying HTTP client.

The clients of a loop are closed when the loop shuts its async generators down
(``asyncio.run`` / ``asyncio.Runner`` / asgiref's loops do): each loop's registry holds a parked
async generator whose ``finally`` closes them. The registry is weak-keyed by loop, so a loop that
is simply dropped takes its clients with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import AsyncIterator
from typing import Any

import anthropic

from agents.config import model_endpoint

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 600.0


class _LoopClients:
    def __init__(self) -> None:
        self.clients: dict[tuple[str, str], Any] = {}
        self.closer: Any = None  # the parked async generator that closes them at loop shutdown


_registry: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopClients] = weakref.WeakKeyDictionary()


async def _close_at_shutdown(entry: _LoopClients) -> AsyncIterator[None]:
    try:
        yield
    finally:
        clients, entry.clients = list(entry.clients.values()), {}
        for client in clients:
            with contextlib.suppress(Exception):
                await client.close()


def _park_closer(entry: _LoopClients) -> None:
    """Start the closer generator up to its ``yield`` (synchronously): the loop's asyncgen hooks
    register it, and ``loop.shutdown_asyncgens()`` later runs its ``finally``."""
    gen = _close_at_shutdown(entry)
    step = gen.__anext__()
    try:
        step.send(None)
    except StopIteration:
        entry.closer = gen
    else:  # pragma: no cover - the generator never awaits before its yield
        step.close()


def model_client() -> Any:
    """The shared ``AsyncAnthropic`` of the running loop for the configured endpoint."""
    loop = asyncio.get_running_loop()
    entry = _registry.get(loop)
    if entry is None:
        entry = _registry[loop] = _LoopClients()
        _park_closer(entry)
    endpoint = model_endpoint()
    key = (endpoint.base_url, endpoint.api_key)
    client = entry.clients.get(key)
    if client is None or client.is_closed():
        client = anthropic.AsyncAnthropic(
            api_key=endpoint.api_key, base_url=endpoint.base_url, max_retries=0, timeout=DEFAULT_TIMEOUT
        )
        entry.clients[key] = client
    return client


async def close_model_clients() -> None:
    """Close the running loop's clients now (tests, shutdown hooks); the next call makes new ones."""
    entry = _registry.get(asyncio.get_running_loop())
    if entry is None:
        return
    clients, entry.clients = list(entry.clients.values()), {}
    for client in clients:
        with contextlib.suppress(Exception):
            await client.close()
