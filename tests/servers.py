"""Real server processes for the tests: ``DaphneServer`` — a real daphne serving
``copilot_project.asgi`` as a subprocess, on the pytest test database, with its log in
``test-results/daphne/``. The process helpers (a free loopback port, waiting for a port, stopping a
process) are ``bench/processes.py``'s, shared with the benchmarks (which import nothing from tests/).

Plain library code: no pytest import, and Django is imported only inside the functions that read
the test settings (``database_url_for_tests``, ``daphne_env``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.error import URLError
from urllib.parse import quote
from urllib.request import urlopen

from bench.processes import HOST, free_port, stop_process, wait_port

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "test-results"

__all__ = ["HOST", "RESULTS", "ROOT", "DaphneServer", "daphne_env", "free_port", "stop_process", "wait_port"]


def database_url_for_tests() -> str:
    """The test database pytest-django created (SQLite file or PostgreSQL) as a ``DATABASE_URL``
    for subprocesses. Call it once the test database is set up."""
    from django.db import connection

    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{Path(db['NAME']).resolve()}"
    user = quote(db.get("USER") or "")
    password = quote(db.get("PASSWORD") or "")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    return f"postgres://{auth}{db.get('HOST') or HOST}:{db.get('PORT') or 5432}/{db['NAME']}"


def daphne_env(
    *,
    workspaces: Path,
    scripted_url: str | None,
    database_url: str | None = None,
    var_dir: Path | None = None,
    **extra: str,
) -> dict[str, str]:
    """The environment of a test daphne: this process's, on the test database (default
    ``database_url_for_tests()``) and the configured Redis (or the in-memory layer), the ``api``
    backend, workspaces under ``workspaces``. ``scripted_url``: the scripted model to talk to
    (no API key); None: the server starts its own offline one (``agents.config.model_endpoint``).
    ``extra`` overrides anything."""
    from django.conf import settings

    drop = {"ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL", "DJANGO_ALLOW_ASYNC_UNSAFE"}
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(
        DEBUG="true",
        DATABASE_URL=database_url or database_url_for_tests(),
        REDIS_URL=settings.REDIS_URL,
        REDIS_KEY_PREFIX=settings.REDIS_KEY_PREFIX,
        AGENT_BACKEND="api",
        AGENT_WORKSPACE_ROOT=str(workspaces),
        DJANGO_SETTINGS_MODULE="copilot_project.settings",
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    if scripted_url is not None:
        env.update(ANTHROPIC_BASE_URL=scripted_url, ANTHROPIC_API_KEY="")
    if var_dir is not None:
        env["VAR_DIR"] = str(var_dir)
    env.update(extra)
    return env


def _daphne_argv() -> list[str]:
    script = Path(sys.executable).parent / "daphne"
    return [str(script)] if script.exists() else [sys.executable, "-m", "daphne"]


class DaphneServer:
    """A daphne subprocess serving the app on ``127.0.0.1:<port>``.

    ``start()`` launches it and waits until it listens (and, with ``ready_path``, answers 200
    there); if it exits or does not come up within ``timeout`` it is killed and RuntimeError
    carries the tail of its log. Its stdout+stderr are appended to ``log`` (default
    ``test-results/daphne/<name>-<port>.log``). ``stop()`` sends SIGTERM (or ``sig``) and kills
    it after ``timeout``. Also a context manager (``with DaphneServer(env) as server:``);
    ``launch()`` then ``wait_ready()`` start several in parallel.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        *,
        port: int | None = None,
        name: str = "test",
        log: Path | None = None,
        ready_path: str | None = None,
        timeout: float = 30.0,
        args: Sequence[str] = (),
    ) -> None:
        self.env = dict(env)
        self.port = port or free_port()
        self.log_path = log or RESULTS / "daphne" / f"{name}-{self.port}.log"
        self.ready_path = ready_path
        self.timeout = timeout
        self.args = list(args)
        self.proc: subprocess.Popen | None = None
        self._log: Any = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{HOST}:{self.port}/ws/chat/"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def launch(self) -> DaphneServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [
                *_daphne_argv(),
                "-b",
                HOST,
                "-p",
                str(self.port),
                *self.args,
                "copilot_project.asgi:application",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self

    def wait_ready(self) -> DaphneServer:
        assert self.proc is not None, "launch() first"
        deadline = time.monotonic() + self.timeout
        try:
            wait_port(self.port, self.proc, timeout=self.timeout)
            while self.ready_path and not self._answers(self.ready_path):
                if self.proc.poll() is not None:
                    raise RuntimeError(f"exited with {self.proc.returncode}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.ready_path} did not answer 200 within {self.timeout}s")
                time.sleep(0.1)
        except (RuntimeError, TimeoutError) as exc:
            self.stop(signal.SIGKILL)
            raise RuntimeError(f"daphne did not start ({exc}):\n{self.log_tail()}") from None
        return self

    def start(self) -> DaphneServer:
        return self.launch().wait_ready()

    def _answers(self, path: str) -> bool:
        try:
            with urlopen(f"{self.url}{path}", timeout=2) as response:
                return response.status == 200
        except (URLError, ConnectionError, OSError):
            return False

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.proc is not None:
            stop_process(self.proc, sig, timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def __enter__(self) -> DaphneServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
