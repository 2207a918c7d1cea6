"""/livez, /readyz, /healthz (chat.probes, chat.health; docs/operations.md "Health checks") and the
request id / log context (chat.logcontext), in-process. The real-daphne cases (SIGTERM, Redis
down, two workers' metrics, JSON logs) are in test_ops_daphne.py."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from contextvars import copy_context

import pytest
from django.conf import settings as django_settings
from django.test import AsyncClient, Client

from chat.logcontext import LogContextFilter, log_context, log_context_bind
from chat.runtime import turns_interrupt_all
from chat.runtime.shutdown import shutdown_reset
from tests.servers import ROOT

pytestmark = pytest.mark.django_db(transaction=True)


def expected_checks() -> set[str]:
    names = {"draining", "database"}
    if django_settings.REDIS_URL:
        names |= {"redis", "channel_layer"}
    return names


def test_livez_answers_without_the_database(django_assert_num_queries):
    with django_assert_num_queries(0):
        response = Client().get("/livez")
    assert response.status_code == 200 and response.json() == {"status": "ok"}
    assert response["Cache-Control"] == "no-store"


@pytest.mark.parametrize("path", ["/readyz", "/healthz"])
def test_readyz_checks_database_and_redis(path):
    response = Client().get(path)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "ok"
    assert set(body["checks"]) == expected_checks()
    assert all(check["status"] == "ok" for check in body["checks"].values()), body


def test_probes_skip_host_check_https_redirect_and_auth(settings):
    settings.SECURE_SSL_REDIRECT = True
    client = Client(HTTP_HOST="10.1.2.3:8001")  # a load balancer probing the worker's address
    assert client.get("/livez").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert client.head("/readyz").status_code == 200
    assert client.post("/readyz").status_code == 405
    assert client.get("/accounts/login/").status_code == 400  # elsewhere the host check holds
    assert Client().get("/accounts/login/").status_code == 301  # and the HTTPS redirect


async def test_readyz_fails_while_draining():
    try:
        await turns_interrupt_all(grace=0.1)  # what SIGTERM runs (no turn is running here)
        response = await AsyncClient().get("/readyz")
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "fail"
        assert body["checks"]["draining"] == {"status": "fail", "ms": 0.0, "error": "shutting down"}
        assert body["checks"]["database"]["status"] == "ok"
        assert (await AsyncClient().get("/livez")).status_code == 200  # alive, just not ready
    finally:
        shutdown_reset()
    assert (await AsyncClient().get("/readyz")).status_code == 200


def test_request_id_is_kept_when_sane_else_made():
    client = Client()
    page = client.get("/accounts/login/", headers={"X-Request-ID": "lb-7f3a.42"})
    assert page["X-Request-ID"] == "lb-7f3a.42"
    made = client.get("/accounts/login/", headers={"X-Request-ID": "<script>alert(1)</script>"})
    assert re.fullmatch(r"[0-9a-f]{32}", made["X-Request-ID"])
    assert re.fullmatch(r"[0-9a-f]{32}", client.get("/accounts/login/")["X-Request-ID"])
    too_long = client.get("/accounts/login/", headers={"X-Request-ID": "a" * 200})
    assert too_long["X-Request-ID"] != "a" * 200


def test_log_records_carry_the_bound_ids():
    # (asgiref copies an async view's context back to a sync caller: earlier tests may have left
    # ids in this thread's context; what matters is that ``inside`` changes nothing here.)
    before = log_context()
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", (), None)

    def inside() -> dict:
        log_context_bind(request_id="r-1", session_id="s-1", turn_id="t-1")
        LogContextFilter().filter(record)
        return log_context()

    assert copy_context().run(inside) == {"request_id": "r-1", "session_id": "s-1", "turn_id": "t-1"}
    assert (record.request_id, record.session_id, record.turn_id) == ("r-1", "s-1", "t-1")
    assert log_context() == before  # bound in that context only


@pytest.mark.parametrize(
    ("variable", "bad"), [("LOG_FORMAT", "yaml"), ("METRICS_ALLOW_IPS", "10.0.0.0/8,not-a-network")]
)
def test_bad_setting_is_a_clear_startup_error(tmp_path, variable, bad):
    env = {"PATH": "/usr/bin:/bin", "ENV_FILE": "", "DEBUG": "true", "VAR_DIR": str(tmp_path), variable: bad}
    done = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert (
        "ImproperlyConfigured" in done.stderr
        and variable in done.stderr
        and bad.split(",")[-1] in done.stderr
    )
