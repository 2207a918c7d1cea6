"""The shipped deployment files (deploy/, docs/operations.md "Deploying behind nginx"): nginx
accepts deploy/nginx.conf as rendered for a test run, systemd accepts the units, and both agree
with the application's settings. The production lane (scripts/prod-lane.sh) runs nginx with that
file in front of real workers; these are the fast checks."""

from __future__ import annotations

import difflib
import importlib.util
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import get_commands, load_command_class

from chat.runtime.shutdown import SHUTDOWN_EXIT_MARGIN
from tests.conftest import IN_CI
from tests.servers import ROOT

DEPLOY = ROOT / "deploy"
SYSTEMD = DEPLOY / "systemd"
UNITS = sorted(p.name for p in SYSTEMD.iterdir() if p.suffix in {".service", ".timer", ".target"})
INSTALL_DIR = "/srv/copilot"


def front_door_module():
    spec = importlib.util.spec_from_file_location("front_door", ROOT / "scripts" / "front_door.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def need(program: str, package: str) -> str:
    path = shutil.which(program)
    if path is None:
        if IN_CI:
            pytest.fail(f"{program} is missing (scripts/test-prereqs.sh installs Debian's {package})")
        pytest.skip(f"{program} is not installed (apt-get install {package})")
    return path


def unit(name: str) -> str:
    return (SYSTEMD / name).read_text()


def directive(text: str, name: str) -> list[str]:
    """Every value of ``name=`` in a unit, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [m.group(1).strip() for m in re.finditer(rf"^{re.escape(name)}=(.*)$", joined, flags=re.M)]


# --- nginx ----------------------------------------------------------------------------------------


def test_nginx_accepts_the_rendered_site(tmp_path):
    nginx = need("nginx", "nginx")
    front_door = front_door_module()
    static = tmp_path / "static"
    static.mkdir()
    assert front_door.main(
        ["render", "--dir", str(tmp_path), "--http-port", "18080", "--https-port", "18443",
         "--workers", "18001,18002,18003", "--static-root", str(static)]
    ) == 0  # fmt: skip
    site = (tmp_path / "site.conf").read_text()
    # Only ports and paths changed: the rest is the shipped file line for line.
    shipped = (DEPLOY / "nginx.conf").read_text()
    changed = [
        line[2:]
        for line in difflib.ndiff(shipped.splitlines(), site.splitlines())
        if line.startswith(("- ", "+ "))
    ]
    allowed = re.compile(
        r"^\s*(# \(no IPv6 loopback here\) )?(listen|server 127\.0\.0\.1:|alias|ssl_certificate|access_log)"
    )
    assert changed and all(allowed.search(line) for line in changed), changed
    assert re.findall(r"server 127\.0\.0\.1:(\d+)", site) == ["18001", "18002", "18003"]
    proc = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


def test_render_refuses_a_file_of_another_shape():
    front_door = front_door_module()
    shipped = (DEPLOY / "nginx.conf").read_text()
    with pytest.raises(SystemExit, match="listen 443"):
        front_door.render_site(
            shipped.replace("listen 443 ssl http2;", "listen 443 ssl;"),
            http_port=1, https_port=2, workers=[3], static_root=Path("/s"), cert=Path("/c"), key=Path("/k"),
            access_log=Path("/a"),
        )  # fmt: skip


def test_nginx_body_limit_lets_the_application_answer_first():
    """client_max_body_size sits above both application limits, so an oversized upload or chat
    body gets the application's JSON error (request_too_large), not nginx's HTML page."""
    match = re.search(r"^\s*client_max_body_size (\d+)m;$", (DEPLOY / "nginx.conf").read_text(), flags=re.M)
    limit = int(match.group(1)) * 1024 * 1024
    assert limit > settings.AGENT_UPLOAD_MAX_MB * 1024 * 1024
    assert limit > settings.DATA_UPLOAD_MAX_MEMORY_SIZE


def test_nginx_streams_unbuffered_with_long_timeouts():
    text = (DEPLOY / "nginx.conf").read_text()
    for location in ("^~ /ws/", "^~ /api/v1/chat/"):
        block = text.split(f"location {location} {{", 1)[1].split("}", 1)[0]
        assert "proxy_buffering off;" in block and "proxy_read_timeout 1h;" in block, location
    assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in text
    metrics = text.split("location = /metrics {", 1)[1].split("}", 1)[0]
    assert "allow 127.0.0.1;" in metrics and "deny all;" in metrics


# --- systemd --------------------------------------------------------------------------------------


def test_systemd_accepts_the_units(tmp_path):
    """systemd-analyze verify, with the install directory pointed at this checkout (it checks
    that ExecStart= programs exist). systemd is not PID 1 here: the units are verified, not run."""
    analyze = need("systemd-analyze", "systemd")
    if not (ROOT / ".venv" / "bin" / "daphne").exists():
        pytest.skip("no .venv/bin/daphne in this checkout")
    for name in UNITS + ["copilot.env"]:
        (tmp_path / name).write_text(
            unit(name).replace(INSTALL_DIR, str(ROOT)).replace("/etc/copilot/", f"{tmp_path}/")
        )
    names = [n.replace("@.service", "@8001.service") for n in UNITS]
    proc = subprocess.run(
        [analyze, "verify", *(str(tmp_path / n) for n in names)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    # Units referring to ones that are not installed (postgresql.service) are fine; nothing else.
    problems = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 0 and not problems, proc.stderr


def test_worker_stop_timeout_covers_the_drain():
    text = unit("copilot-daphne@.service")
    assert directive(text, "KillSignal") == ["SIGTERM"]
    assert directive(text, "KillMode") == ["mixed"]
    (timeout,) = directive(text, "TimeoutStopSec")
    assert int(timeout) > settings.TURN_SHUTDOWN_GRACE_SECONDS + SHUTDOWN_EXIT_MARGIN


def test_worker_websocket_limits_match_the_readme():
    (exec_start,) = directive(unit("copilot-daphne@.service"), "ExecStart")
    args = shlex.split(exec_start)
    readme = (ROOT / "README.md").read_text()
    for flag in ("--websocket-max-message-size", "--websocket-max-frame-size"):
        value = args[args.index(flag) + 1]
        assert f"{flag} {value}" in readme


def test_workers_share_a_metrics_directory_emptied_with_the_group():
    worker, runtime = unit("copilot-daphne@.service"), unit("copilot-runtime.service")
    (multiproc,) = [v for v in directive(worker, "Environment") if v.startswith("PROMETHEUS_MULTIPROC_DIR=")]
    path = multiproc.split("=", 1)[1]
    (runtime_dir,) = directive(runtime, "RuntimeDirectory")
    assert path.startswith(f"/run/{runtime_dir}/")
    assert directive(worker, "Requires") == ["copilot-runtime.service"]
    assert directive(runtime, "PartOf") == ["copilot.target"] and directive(worker, "PartOf") == [
        "copilot.target"
    ]


@pytest.mark.parametrize("name", ["copilot-cleanup.service", "copilot-purge.service"])
def test_maintenance_units_run_real_commands_with_valid_options(name):
    commands = get_commands()
    runs = directive(unit(name), "ExecStart")
    assert runs
    for line in runs:
        args = shlex.split(line)
        assert args[:2] == [f"{INSTALL_DIR}/.venv/bin/python", "manage.py"], line
        command, options = args[2], args[3:]
        assert command in commands, line
        parser = load_command_class(commands[command], command).create_parser("manage.py", command)
        parser.parse_args(options)  # SystemExit / CommandError on an unknown or malformed option


def test_every_unit_reads_the_same_settings():
    for name in ("copilot-daphne@.service", "copilot-cleanup.service", "copilot-purge.service"):
        assert directive(unit(name), "EnvironmentFile") == ["/etc/copilot/copilot.env"], name
    env = dict(
        line.split("=", 1) for line in unit("copilot.env").splitlines() if line and not line.startswith("#")
    )
    assert env["DEBUG"] == "false" and "127.0.0.1/32" in env["TRUSTED_PROXIES"]
    assert "ANTHROPIC_BASE_URL" not in env  # a real model, never the scripted one
