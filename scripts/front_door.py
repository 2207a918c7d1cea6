"""The front door under test (docs/operations.md, "Deploying behind nginx"): render the shipped
``deploy/nginx.conf`` for a test run, and check a running nginx + daphne deployment from outside.

Standard library only (it runs with whichever Python the production lane has).

``render``: writes into ``--dir``
  - ``site.conf``: ``deploy/nginx.conf`` with only the listen addresses/ports, the upstream
    worker ports, the static root, the access log and the certificate paths replaced. Every
    replacement must match the shipped file exactly as expected, so a change to its shape fails
    the lane loudly instead of testing something else;
  - ``nginx.conf``: a main configuration like Debian's ``/etc/nginx/nginx.conf`` (mime types,
    ``gzip on``, ``include`` of the site) with its pid, logs and temp paths under ``--dir``, and
    deliberately hostile defaults (gzip for ``text/event-stream`` too) that the site must override;
  - ``cert.pem`` / ``key.pem``: a self-signed certificate for 127.0.0.1 and localhost (clients
    trust it through ``--ca`` / ``NODE_EXTRA_CA_CERTS``).
  Run it with ``nginx -p DIR -c DIR/nginx.conf -g 'daemon off;'``.

``check``: through the front door (``--url https://127.0.0.1:PORT``), with an API key:
  the HTTP port redirects to HTTPS; a file only in STATIC_ROOT is served (by nginx: the workers
  serve /static/ from the finders, never STATIC_ROOT); the readiness probe answers; a websocket
  upgrades (frames both ways; a foreign Origin is refused, the site's own is not: Host and
  X-Forwarded-Proto reach Django); SSE arrives unbuffered and uncompressed (the first delta long
  before the end); a body over AGENT_UPLOAD_MAX_MB gets the application's JSON 413, one over
  client_max_body_size nginx's; the client address reaches the throttles (failed keys from
  127.0.0.2 block 127.0.0.2, not 127.0.0.3, and a spoofed X-Forwarded-For does not help);
  /metrics is refused by nginx to any address but 127.0.0.1.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import time
import urllib.parse
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "deploy" / "nginx.conf"
PROBE_NAME = "front-door-probe.txt"
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
REAL_CLIENT, OTHER_CLIENT = "127.0.0.2", "127.0.0.3"  # loopback sources other than nginx's own


def log(message: str) -> None:
    print(f"front-door: {message}", flush=True)


class CheckFailed(AssertionError):
    pass


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


# --- render ----------------------------------------------------------------------------------------


def replace_exactly(text: str, pattern: str, replacement: str, count: int, what: str) -> str:
    """``re.subn`` that insists on ``count`` matches (the shipped file's shape)."""
    new, found = re.subn(pattern, replacement, text, flags=re.M)
    if found != count:
        raise SystemExit(f"render: expected {count} {what} in {SITE}, found {found}")
    return new


def render_site(
    text: str,
    *,
    http_port: int,
    https_port: int,
    workers: list[int],
    static_root: Path,
    cert: Path,
    key: Path,
    access_log: Path,
    ipv6: bool = True,
) -> str:
    text = replace_exactly(text, r"^(\s*)listen 80;$", rf"\g<1>listen 127.0.0.1:{http_port};", 1, "listen 80")
    # The IPv6 listens go to ::1, or become comments on a machine without IPv6 loopback.
    v6 = "" if ipv6 else "# (no IPv6 loopback here) "
    text = replace_exactly(
        text, r"^(\s*)listen \[::\]:80;$", rf"\g<1>{v6}listen [::1]:{http_port};", 1, "listen [::]:80"
    )
    text = replace_exactly(
        text,
        r"^(\s*)listen 443 ssl http2;$",
        rf"\g<1>listen 127.0.0.1:{https_port} ssl http2;",
        1,
        "listen 443",
    )
    text = replace_exactly(
        text,
        r"^(\s*)listen \[::\]:443 ssl http2;$",
        rf"\g<1>{v6}listen [::1]:{https_port} ssl http2;",
        1,
        "listen [::]:443",
    )
    servers = re.findall(r"^(\s*)server 127\.0\.0\.1:\d+( [^;\n]*)?;\n", text, flags=re.M)
    if len(servers) < 1:
        raise SystemExit(f"render: no 'server 127.0.0.1:PORT' lines in {SITE}'s upstream")
    indent, params = servers[0]
    lines = "".join(f"{indent}server 127.0.0.1:{port}{params};\n" for port in workers)
    text = re.sub(
        r"(^\s*server 127\.0\.0\.1:\d+(?: [^;\n]*)?;\n)+", lambda _m: lines, text, count=1, flags=re.M
    )
    text = replace_exactly(
        text, r"^(\s*)alias /srv/copilot/staticfiles/;$", rf"\g<1>alias {static_root}/;", 1, "alias"
    )
    text = replace_exactly(
        text,
        r"^(\s*access_log )/var/log/nginx/copilot\.access\.log( copilot;)$",
        rf"\g<1>{access_log}\g<2>",
        1,
        "access_log",
    )
    text = replace_exactly(text, r"^(\s*ssl_certificate\s+)\S+;$", rf"\g<1>{cert};", 1, "ssl_certificate")
    text = replace_exactly(
        text, r"^(\s*ssl_certificate_key\s+)\S+;$", rf"\g<1>{key};", 1, "ssl_certificate_key"
    )
    return text


def main_config(workdir: Path, site: Path) -> str:
    user = "user www-data;\n" if os.geteuid() == 0 else ""
    tmp = workdir / "tmp"
    return f"""# Rendered by scripts/front_door.py: Debian's nginx.conf, with paths under {workdir}.
{user}worker_processes 2;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log info;

events {{
    worker_connections 1024;
}}

http {{
    sendfile on;
    tcp_nopush on;
    types_hash_max_size 2048;
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_prefer_server_ciphers on;
    access_log {workdir}/access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    # Hostile on purpose: the site must keep event streams uncompressed and unbuffered itself.
    gzip on;
    gzip_min_length 1;
    gzip_proxied any;
    gzip_types text/plain text/css application/json application/javascript text/event-stream;
    proxy_buffering on;

    include {site};
}}
"""


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


def make_certificate(cert: Path, key: Path) -> None:
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip


def render(args: argparse.Namespace) -> int:
    workdir = Path(args.dir).resolve()
    (workdir / "tmp").mkdir(parents=True, exist_ok=True)
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    if not cert.exists():
        make_certificate(cert, key)
    site = workdir / "site.conf"
    site.write_text(
        render_site(
            SITE.read_text(),
            http_port=args.http_port,
            https_port=args.https_port,
            workers=[int(p) for p in args.workers.split(",")],
            static_root=Path(args.static_root).resolve(),
            cert=cert,
            key=key,
            access_log=workdir / "copilot.access.log",
            ipv6=ipv6_loopback(),
        )
    )
    (workdir / "nginx.conf").write_text(main_config(workdir, site))
    log(f"rendered {site} and {workdir / 'nginx.conf'} from {SITE}")
    return 0


# --- check: plain HTTP(S) through the front door ------------------------------------------------


class Front:
    def __init__(self, url: str, ca: str, key: str) -> None:
        parsed = urllib.parse.urlsplit(url)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 443
        self.origin = f"https://{parsed.netloc}"
        self.context = ssl.create_default_context(cafile=ca)
        self.key = key

    def connection(self, source: str | None = None, timeout: float = 30) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            self.host,
            self.port,
            context=self.context,
            timeout=timeout,
            source_address=(source, 0) if source else None,
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        source: str | None = None,
        key: str | None = "",
    ) -> tuple[int, dict[str, str], bytes]:
        all_headers = dict(headers or {})
        key = self.key if key == "" else key
        if key:
            all_headers["Authorization"] = f"Bearer {key}"
        conn = self.connection(source)
        try:
            conn.request(method, path, body=body, headers=all_headers)
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            conn.close()


def chat_body(chat_id: str, text: str) -> bytes:
    message = {"id": uuid.uuid4().hex, "role": "user", "parts": [{"type": "text", "text": text}]}
    return json.dumps({"id": chat_id, "messages": [message], "trigger": "submit-message"}).encode()


def check_redirect(http_url: str) -> None:
    parsed = urllib.parse.urlsplit(http_url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=10)
    try:
        conn.request("GET", "/c/some-chat/?x=1")
        response = conn.getresponse()
        location = response.getheader("Location", "")
    finally:
        conn.close()
    expect(response.status == 301, f"the HTTP port answers {response.status}, not 301")
    expect(
        location.startswith("https://") and location.endswith("/c/some-chat/?x=1"),
        f"redirect to {location!r}",
    )
    log(f"HTTP redirects to HTTPS ({location})")


def check_static(front: Front, static_root: Path) -> None:
    probe = static_root / PROBE_NAME
    marker = f"served by nginx {uuid.uuid4().hex}\n"
    probe.write_text(marker)
    probe.chmod(0o644)
    try:
        status, headers, body = front.request("GET", f"/static/{PROBE_NAME}", key=None)
    finally:
        probe.unlink()
    expect(status == 200 and body.decode() == marker, f"/static/{PROBE_NAME}: {status} {body[:200]!r}")
    expect(
        "public" in headers.get("cache-control", ""), f"static Cache-Control {headers.get('cache-control')!r}"
    )
    # The application's own static files, from collectstatic, with their types.
    status, headers, body = front.request("GET", "/static/chat/style.css", key=None)
    if status == 404:
        candidates = sorted(p for p in static_root.rglob("*.js") if p.is_file())
        expect(bool(candidates), f"no .js file in {static_root}: did collectstatic run?")
        path = "/static/" + str(candidates[0].relative_to(static_root))
        status, headers, body = front.request("GET", path, key=None)
    expect(status == 200 and body, f"an app static file: {status}")
    expect(
        headers.get("content-type", "").split(";")[0] in {"text/css", "application/javascript"}, str(headers)
    )
    log("static files come from STATIC_ROOT through nginx (a file the workers cannot serve is served)")


def check_ready(front: Front) -> str:
    for path in ("/readyz", "/healthz"):
        status, _headers, body = front.request("GET", path, key=None)
        if status != 404:
            expect(status == 200, f"{path}: {status} {body[:200]!r}")
            log(f"{path} answers 200 through nginx")
            return path
    raise CheckFailed("neither /readyz nor /healthz answers")


def check_sse(front: Front, chat_id: str, *, deltas: int = 6, spacing_ms: int = 400) -> None:
    """A turn that streams ``deltas`` text deltas ``spacing_ms`` apart: the first must arrive
    long before the last (nginx buffering would deliver them all at the end), uncompressed."""
    conn = front.connection(timeout=60)
    try:
        conn.request(
            "POST",
            "/api/v1/chat/",
            body=chat_body(chat_id, f"/stamp {deltas} {spacing_ms}"),
            headers={
                "Authorization": f"Bearer {front.key}",
                "Content-Type": "application/json",
                "Accept-Encoding": "gzip",
            },
        )
        response = conn.getresponse()
        if response.status != 200:  # (the message must not read the body of a good answer)
            raise CheckFailed(f"POST /api/v1/chat/: {response.status} {response.read()[:300]!r}")
        expect(
            response.getheader("Content-Type", "").startswith("text/event-stream"), "not text/event-stream"
        )
        expect(response.getheader("Content-Encoding") is None, "the event stream was compressed")
        arrivals: list[float] = []
        seen: list[str] = []
        done_at = None
        while True:
            line = response.readline()
            if not line:
                break
            text = line.decode().strip()
            seen.append(text)
            if text == "data: [DONE]":
                done_at = time.monotonic()
                break
            if text.startswith("data: ") and json.loads(text[6:]).get("type") == "text-delta":
                arrivals.append(time.monotonic())
    finally:
        conn.close()
    expect(done_at is not None, f"the stream did not end with [DONE]: {[t for t in seen if t][-4:]}")
    expect(len(arrivals) >= deltas, f"{len(arrivals)} text deltas, expected {deltas}")
    ahead = done_at - arrivals[0]
    needed = 0.6 * (deltas - 1) * spacing_ms / 1000
    expect(ahead >= needed, f"the first delta arrived only {ahead:.2f} s before the end (buffered?)")
    log(f"SSE is unbuffered: the first delta arrived {ahead:.2f} s before the end of a {deltas}-delta turn")


def check_body_limits(front: Front, chat_id: str, upload_max_mb: int) -> None:
    path = f"/api/v1/sessions/{chat_id}/files/front-door.bin"
    over_app = b"x" * ((upload_max_mb + 1) * 1024 * 1024)
    status, headers, body = front.request(
        "PUT", path, body=over_app, headers={"Content-Type": "application/octet-stream"}
    )
    expect(
        status == 413 and headers.get("content-type", "").startswith("application/json"),
        f"{status} {body[:200]!r}",
    )
    expect(json.loads(body)["error"]["code"] == "request_too_large", body[:300].decode(errors="replace"))
    over_nginx = b"x" * (34 * 1024 * 1024)
    status, headers, body = front.request(
        "PUT", path, body=over_nginx, headers={"Content-Type": "application/octet-stream"}
    )
    expect(status == 413 and b"nginx" in body, f"{status} {body[:200]!r}")
    log(f"a {upload_max_mb + 1} MB upload gets the application's 413 request_too_large, 34 MB nginx's 413")


def check_client_address(front: Front) -> None:
    """Failed API keys count against the address nginx saw (X-Forwarded-For reaches the throttle)."""
    bad = f"cps_{'0' * 12}_{uuid.uuid4().hex}{uuid.uuid4().hex[:8]}"
    codes = []
    for _ in range(120):
        status, _headers, _body = front.request("GET", "/api/v1/sessions/", source=REAL_CLIENT, key=bad)
        codes.append(status)
        if status == 429:
            break
    expect(codes[-1] == 429, f"{len(codes)} bad keys from {REAL_CLIENT} were never throttled: {set(codes)}")
    blocked, _h, _b = front.request("GET", "/api/v1/sessions/", source=REAL_CLIENT)
    spoofed, _h, _b = front.request(
        "GET", "/api/v1/sessions/", source=REAL_CLIENT, headers={"X-Forwarded-For": OTHER_CLIENT}
    )
    neighbour, _h, _b = front.request("GET", "/api/v1/sessions/", source=OTHER_CLIENT)
    expect(blocked == 429, f"a valid key from the blocked {REAL_CLIENT}: {blocked}")
    expect(
        spoofed == 429, f"{REAL_CLIENT} claiming X-Forwarded-For {OTHER_CLIENT} escaped the block: {spoofed}"
    )
    expect(neighbour == 200, f"{OTHER_CLIENT} (another client of the same nginx) got {neighbour}")
    log(
        f"the client address reaches the throttle: {len(codes) - 1} bad keys from {REAL_CLIENT} block it "
        f"(a spoofed X-Forwarded-For too), {OTHER_CLIENT} behind the same nginx is unaffected"
    )


def check_metrics(front: Front, token: str | None) -> None:
    status, _headers, body = front.request("GET", "/metrics", source=REAL_CLIENT, key=None)
    expect(status == 403 and b"nginx" in body, f"/metrics from {REAL_CLIENT}: {status} {body[:200]!r}")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    status, _headers, body = front.request("GET", "/metrics", headers=headers, key=None)
    expect(not (status == 403 and b"nginx" in body), "nginx refused /metrics from 127.0.0.1")
    if token:
        expect(status == 200 and b"copilot_turns_started" in body, f"/metrics with the token: {status}")
        log("/metrics: refused by nginx from 127.0.0.2, served with the token from 127.0.0.1")
    else:
        log(
            f"/metrics: refused by nginx from 127.0.0.2; from 127.0.0.1 it reaches the application ({status})"
        )


# --- check: the websocket ------------------------------------------------------------------------


def ws_handshake(front: Front, origin: str | None) -> tuple[int, socket.socket | None, bytes]:
    raw = socket.create_connection((front.host, front.port), timeout=15)
    sock = front.context.wrap_socket(raw, server_hostname=front.host)
    nonce = base64.b64encode(os.urandom(16)).decode()
    lines = [
        "GET /ws/chat/ HTTP/1.1",
        f"Host: {front.host}:{front.port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {nonce}",
        "Sec-WebSocket-Version: 13",
        f"Authorization: Bearer {front.key}",
    ]
    if origin:
        lines.append(f"Origin: {origin}")
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    header, _, rest = head.partition(b"\r\n\r\n")
    status = int(header.split(b" ", 2)[1]) if header.startswith(b"HTTP/1.1 ") else 0
    if status != 101:
        sock.close()
        return status, None, header
    accept = base64.b64encode(hashlib.sha1((nonce + WS_GUID).encode()).digest()).decode()
    fields = dict(line.decode("latin-1").split(":", 1) for line in header.split(b"\r\n")[1:] if b":" in line)
    given = {name.strip().lower(): value.strip() for name, value in fields.items()}.get(
        "sec-websocket-accept"
    )
    expect(given == accept, f"Sec-WebSocket-Accept {given!r}, expected {accept!r}")
    expect(not rest, "unexpected bytes after the handshake")
    return status, sock, header


def ws_send_text(sock: socket.socket, text: str) -> None:
    payload = text.encode()
    expect(len(payload) < 126, "only short frames")
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(bytes([0x81, 0x80 | len(payload)]) + mask + masked)


def ws_recv_text(sock: socket.socket) -> str:
    def exactly(n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            expect(bool(chunk), "the websocket closed")
            data += chunk
        return data

    while True:
        first, second = exactly(2)
        length = second & 0x7F
        if length == 126:
            length = int.from_bytes(exactly(2), "big")
        elif length == 127:
            length = int.from_bytes(exactly(8), "big")
        payload = exactly(length)
        if first & 0x0F == 0x1:
            return payload.decode()
        expect(first & 0x0F != 0x8, f"the server closed the websocket: {payload!r}")


def check_websocket(front: Front) -> None:
    status, sock, header = ws_handshake(front, origin=None)
    expect(status == 101 and sock is not None, f"websocket handshake through nginx: {header[:200]!r}")
    try:
        chat_id = str(uuid.uuid4())
        ws_send_text(sock, json.dumps({"type": "resume", "requestId": "fd", "id": chat_id}))
        frame = json.loads(ws_recv_text(sock))
    finally:
        sock.close()
    expect(frame.get("type") in {"no-active", "error"} and frame.get("requestId") == "fd", f"frame {frame}")
    status, sock, _ = ws_handshake(front, origin=front.origin)
    expect(
        status == 101,
        f"the site's own Origin {front.origin} was refused ({status}): Host or X-Forwarded-Proto lost",
    )
    sock.close()
    status, sock, _ = ws_handshake(front, origin="https://evil.example")
    expect(status == 403 and sock is None, f"a foreign Origin got {status}")
    log(
        "websocket upgrade through nginx (frames both ways; "
        f"Origin {front.origin} accepted, a foreign one refused)"
    )


def check(args: argparse.Namespace) -> int:
    front = Front(args.url, args.ca, args.key)
    chat_id = str(uuid.uuid4())
    steps = [
        lambda: check_redirect(args.http_url),
        lambda: check_static(front, Path(args.static_root)),
        lambda: check_ready(front),
        lambda: check_websocket(front),
        lambda: check_sse(front, chat_id),
        lambda: check_body_limits(front, chat_id, args.upload_max_mb),
        lambda: check_client_address(front),
        lambda: check_metrics(front, os.environ.get("METRICS_TOKEN") or None),
    ]
    failed = 0
    for step in steps:
        try:
            step()
        except (CheckFailed, OSError, ValueError, KeyError) as exc:
            failed += 1
            log(f"FAIL: {type(exc).__name__}: {exc}")
    log("all checks passed" if not failed else f"{failed} check(s) failed")
    return 1 if failed else 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("render", help="render deploy/nginx.conf and a main config into --dir")
    r.add_argument("--dir", required=True)
    r.add_argument("--http-port", type=int, required=True)
    r.add_argument("--https-port", type=int, required=True)
    r.add_argument("--workers", required=True, help="comma-separated daphne ports on 127.0.0.1")
    r.add_argument("--static-root", required=True)
    c = sub.add_parser("check", help="check a running front door")
    c.add_argument("--url", required=True, help="https://127.0.0.1:PORT")
    c.add_argument("--http-url", required=True, help="http://127.0.0.1:PORT (the redirecting server)")
    c.add_argument("--ca", required=True, help="the certificate to trust (render's cert.pem)")
    c.add_argument("--key", required=True, help="an API key")
    c.add_argument("--static-root", required=True)
    c.add_argument("--upload-max-mb", type=int, default=25, help="the workers' AGENT_UPLOAD_MAX_MB")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return render(args) if args.command == "render" else check(args)


if __name__ == "__main__":
    sys.exit(main())
