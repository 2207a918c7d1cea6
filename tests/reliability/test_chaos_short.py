"""The short chaos run of CI: ``bench/chaos.py`` with 30 sessions against two real daphne
processes + PostgreSQL + Redis, then its invariant checker (docs/reliability.md). ``make chaos``
runs the full 300."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from django.conf import settings

from tests.conftest import require_services
from tests.servers import ROOT

pytestmark = [pytest.mark.services]


def test_chaos_short():
    require_services(postgres=True, redis=True)
    db = settings.DATABASES["default"]
    pg = (
        f"postgres://{db['USER']}:{db.get('PASSWORD') or ''}@{db['HOST'] or '127.0.0.1'}:"
        f"{db['PORT'] or 5432}/postgres"
    )
    suffix = re.sub(r"\W", "", os.environ.get("TEST_DB_SUFFIX", ""))
    env = {**os.environ, "CHAOS_PG_URL": pg, "CHAOS_REDIS_URL": settings.REDIS_URL, "CI": "true"}
    for name in ("DATABASE_URL", "REDIS_URL", "REDIS_KEY_PREFIX"):
        env.pop(name, None)
    # A fixed seed: the CI run replays the same scenario so its coverage floors below are stable;
    # `make chaos` draws a new seed each time (printed, for replay).
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.chaos",
            "--sessions",
            "30",
            "--concurrency",
            "10",
            "--database",
            f"copilot_chaos_ci{suffix}",
            "--drop",
            "--seed",
            "20261120",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=150,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    counts = {
        m.group(1).strip(): int(m.group(2))
        for m in re.finditer(r"^  ([a-z][^\n]*?)\s+(\d+)$", proc.stdout, re.M)
    }
    assert counts["invariant violations"] == 0, out[-6000:]
    assert counts["sessions"] == 30
    assert counts["turns fully observed"] >= 20, counts
    assert counts["messages compared with the stream"] >= 10, counts
    assert counts["usage rows"] == counts["turns in the database"], counts
    assert counts.get("double sends refused", 0) + counts.get("resumes", 0) + counts.get("aborts", 0) > 0, (
        counts
    )
