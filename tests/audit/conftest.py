"""Fixtures of the audit and supervision tests: the operator fixtures of tests/ops."""

from __future__ import annotations

from tests.chat.conftest import backend_sdk  # noqa: F401 - fixture re-export
from tests.ops.conftest import (  # noqa: F401 - fixture re-exports
    backend_api,
    locks_cleanup,
    scripted_model,
    staff,
    staff_client,
    user_client,
)
