"""Process helpers for the benchmarks and the tests (plain library code: no Django, no pytest):
a free loopback port, waiting for a port to listen, stopping a process."""

from __future__ import annotations

import signal
import socket
import subprocess
import time

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port nothing listens on right now (the OS's pick, on loopback)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen | None = None, timeout: float = 30.0) -> None:
    """Return once something accepts connections on ``port``; RuntimeError when ``proc`` exits
    first (with the tail of its stderr when that is a pipe), TimeoutError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace")[-3000:] if proc.stderr else ""
            raise RuntimeError(f"process {proc.args!r} exited early with {proc.returncode}: {err}")
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout}s")


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
    """Send ``sig`` (if it still runs), wait up to ``timeout``, then kill it."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
