from __future__ import annotations

from typing import Any

from chat.api.exceptions import NotFoundError
from chat.models import ChatSession
from chat.selectors import session_get_for_user


def get_session_or_404(*, user: Any, chat_id: str) -> ChatSession:
    """The caller's session by UUID or client id. A missing and a foreign session give the same 404."""
    session = session_get_for_user(user=user, chat_id=chat_id)
    if session is None:
        raise NotFoundError()
    return session
