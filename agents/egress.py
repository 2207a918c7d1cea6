"""The jail's only way to the network: an HTTPS (``CONNECT``) proxy for the hosts an operator names
in ``AGENT_NETWORK_ALLOW`` (docs/security.md "The jail"). Empty (the default): no proxy, and a
jail reaches nothing.

It listens on a unix socket in the worker process; a jail that may go out gets that socket's
directory bound in, a ``socat`` bridge on a loopback port and ``HTTPS_PROXY``/``HTTP_PROXY``
pointing at it (``agents/jail.py``). Requests are parsed with ``h11``. A ``CONNECT host:port`` is
tunnelled when the rule list allows it and no address the name resolves to is on this host (its
loopback services are never a target, unless a rule names that address and port exactly); the
connection goes to the address that was checked. Anything else gets a short error: 403 for a host
not allowed, 405 for plain HTTP (only tunnels are proxied: use https, or ``curl -p``), 502 when
the host cannot be reached.

Rules: ``example.com`` (ports 443 and 80), ``*.example.com`` (its subdomains, same ports),
``example.com:8443`` or ``203.0.113.7:8443`` (that port).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import h11

from agents.config import agent_config
from agents.loopserver import LoopThreadServer

log = logging.getLogger(__name__)

DEFAULT_PORTS = frozenset({80, 443})
CONNECT_TIMEOUT_SECONDS = 10.0
MAX_HEAD_BYTES = 16 * 1024
PIPE_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Rule:
    host: str  # lower case; "*.example.com" for subdomains
    port: int | None  # None: DEFAULT_PORTS

    @classmethod
    def parse(cls, text: str) -> Rule:
        text = text.strip().lower()
        host, sep, port = text.rpartition(":")
        if sep and port.isdigit() and "]" not in port:
            return cls(host.strip("[]"), int(port))
        return cls(text.strip("[]"), None)

    def matches(self, host: str, port: int) -> bool:
        if (port not in DEFAULT_PORTS) if self.port is None else (port != self.port):
            return False
        if self.host.startswith("*."):
            return host.endswith(self.host[1:]) and host != self.host[2:]
        return host == self.host


def rules() -> tuple[Rule, ...]:
    return tuple(Rule.parse(entry) for entry in agent_config().network_allow if entry.strip())


def _is_this_host(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    return ip.is_loopback or ip.is_unspecified or ip.is_link_local or ip.is_multicast


async def resolve_allowed(host: str, port: int, allowed: tuple[Rule, ...]) -> tuple[str | None, str]:
    """(the address to connect to, "") when ``host:port`` may be reached, else (None, why)."""
    host = host.lower().strip("[]")
    rule = next((r for r in allowed if r.matches(host, port)), None)
    if rule is None:
        return None, f"{host}:{port} is not in AGENT_NETWORK_ALLOW"
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return None, f"{host} does not resolve"
    addresses = [info[4][0] for info in infos]
    explicit = rule.port is not None and rule.host == host
    if any(_is_this_host(a) for a in addresses) and not (explicit and _is_ip(host)):
        return None, f"{host} is this machine; its services are never reachable from the jail"
    return addresses[0], ""


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


class EgressProxy(LoopThreadServer):
    thread_name = "egress-proxy"

    def __init__(self) -> None:
        super().__init__()
        self.socket_path: Path | None = None
        self._server: asyncio.base_events.Server | None = None

    async def _listen(self) -> None:
        directory = Path(tempfile.mkdtemp(prefix="copilot-egress-"))
        os.chmod(directory, 0o755)
        self.socket_path = directory / "egress.sock"
        self._server = await asyncio.start_unix_server(self._handle, path=str(self.socket_path), backlog=256)
        os.chmod(self.socket_path, 0o666)  # the jails' uids connect

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=2)
        if self.socket_path is not None:
            shutil.rmtree(self.socket_path.parent, ignore_errors=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        try:
            request = await _read_request(conn, reader)
            if request is None:
                return
            if request.method != b"CONNECT":
                await _refuse(
                    conn, writer, 405, "Only HTTPS tunnels (CONNECT) are proxied; use https, or curl -p."
                )
                return
            host, _, port_text = request.target.decode("ascii", "replace").rpartition(":")
            if not host or not port_text.isdigit():
                await _refuse(conn, writer, 400, "CONNECT needs host:port.")
                return
            address, why = await resolve_allowed(host, int(port_text), rules())
            if address is None:
                log.info("egress refused: %s", why)
                await _refuse(conn, writer, 403, f"Refused: {why}.")
                return
            try:
                up_reader, up_writer = await asyncio.wait_for(
                    asyncio.open_connection(address, int(port_text)), timeout=CONNECT_TIMEOUT_SECONDS
                )
            except (OSError, TimeoutError):
                await _refuse(conn, writer, 502, f"{host}:{port_text} cannot be reached.")
                return
            writer.write(
                conn.send(h11.Response(status_code=200, headers=[], reason=b"Connection established"))
            )
            await writer.drain()
            early = conn.trailing_data[0]
            if early:
                up_writer.write(early)
            await _pipe_both(reader, writer, up_reader, up_writer)
        except (ConnectionError, h11.ProtocolError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("egress proxy: request failed")
        finally:
            with contextlib.suppress(Exception):
                writer.close()


async def _read_request(conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Request | None:
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(8192)
            conn.receive_data(data)
            if not data and conn.their_state is h11.IDLE:
                return None
            continue
        return event if isinstance(event, h11.Request) else None


async def _refuse(conn: h11.Connection, writer: asyncio.StreamWriter, status: int, text: str) -> None:
    body = (text + "\n").encode()
    headers = [
        ("content-type", "text/plain; charset=utf-8"),
        ("content-length", str(len(body))),
        ("connection", "close"),
    ]
    writer.write(
        conn.send(h11.Response(status_code=status, headers=headers)) + conn.send(h11.Data(data=body))
    )
    with contextlib.suppress(Exception):
        writer.write(conn.send(h11.EndOfMessage()))
    await writer.drain()


async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
    try:
        while data := await src.read(PIPE_CHUNK):
            dst.write(data)
            await dst.drain()
    finally:
        with contextlib.suppress(Exception):
            dst.write_eof()


async def _pipe_both(reader, writer, up_reader, up_writer) -> None:
    tasks = [asyncio.ensure_future(_pipe(reader, up_writer)), asyncio.ensure_future(_pipe(up_reader, writer))]
    try:
        await asyncio.gather(*tasks, return_exceptions=True)
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            up_writer.close()


def egress_proxy() -> EgressProxy:
    """The process's egress proxy (started on first use)."""
    return EgressProxy.shared()
