"""One measured fix to the websocket server's hot path (docs/performance.md).

autobahn's ``WebSocketProtocol.sendData`` — run once for every frame daphne sends — builds the
arguments of a *debug* log line eagerly: ``hltype(self.sendData)`` (an ``inspect`` lookup and two
``click.style`` calls) and two ``hlval`` (one ``click.style`` each), whether or not debug logging
is on. That was ~8-10 % of daphne's samples while replaying a 5,000-chunk backlog. ``install()``
replaces the two helpers *in autobahn's protocol module only* with plain, uncoloured formatting;
the log lines autobahn writes (when its debug level is on) keep their text, without ANSI colours.
"""

from __future__ import annotations

from typing import Any


def _plain_type(obj: Any) -> str:
    return f"<{getattr(obj, '__qualname__', type(obj).__qualname__)}>"


def _plain_value(value: Any, color: str = "", bold: bool = True) -> Any:
    return value  # formatted by the logger, only if the line is ever written


def install() -> None:
    try:
        from autobahn.websocket import protocol
    except ImportError:  # pragma: no cover - not served by daphne
        return
    protocol.hltype = _plain_type
    protocol.hlval = _plain_value
