"""Validation of the AI SDK ``WebSocketChatTransport`` client frames (CONTRACT §4) and of the
user message they carry. Pure functions: the consumer (and the HTTP door, for
``user_message_parse``) turns ``ProtocolError`` into an ``error`` frame / 400 for that request.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass, field
from typing import Any

from agents.turn import Attachment
from chat.preferences import model_problem

MAX_FRAME_BYTES = 32 * 1024 * 1024  # 4 files of 5 MiB in base64 plus text fit
MAX_TEXT_CHARS = 100_000
MAX_ID_CHARS = 200
MAX_ATTACHMENTS = 4
MAX_ATTACHMENT_BYTES = 5 * 1024 * 1024
IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
DOCUMENT_TYPES = frozenset({"application/json", "application/pdf", "text/csv"})
TRIGGERS = frozenset({"submit-message", "regenerate-message"})

_DATA_URL = re.compile(r"^data:([\w.+-]+/[\w.+-]+)(?:;[\w-]+=[^;,]*)*;base64,(.*)$", re.DOTALL)


class ProtocolError(Exception):
    """An invalid frame. ``code``: "invalid_request", or "frame_too_large" for an oversized frame."""

    def __init__(self, message: str, *, request_id: str | None = None, code: str = "invalid_request") -> None:
        super().__init__(message)
        self.message = message
        self.request_id = request_id
        self.code = code


@dataclass(frozen=True)
class UserMessage:
    text: str
    attachments: list[Attachment] = field(default_factory=list)
    file_parts: list[dict[str, Any]] = field(default_factory=list)
    client_message_id: str | None = None


@dataclass(frozen=True)
class ApprovalReply:
    """The user's answer to a ``tool-approval-request`` (AI SDK ``addToolApprovalResponse``)."""

    approval_id: str
    approved: bool
    reason: str = ""


@dataclass(frozen=True)
class SendFrame:
    request_id: str
    chat_id: str
    trigger: str
    # AI SDK ``messageId``: with submit-message, the user message an edit replaces; with
    # regenerate-message, the reply to answer again (docs/api.md "Branches").
    message_id: str | None
    message: UserMessage | None  # None for regenerate-message or for approval replies
    # Answers to tool approval requests: the request continues the waiting turn (no new message).
    approvals: tuple[ApprovalReply, ...] = ()
    model: str | None = None  # ``body.model``: one of AGENT_MODELS (chat.preferences)


@dataclass(frozen=True)
class ResumeFrame:
    request_id: str
    chat_id: str
    last_sequence: int | None


@dataclass(frozen=True)
class AbortFrame:
    request_id: str


Frame = SendFrame | ResumeFrame | AbortFrame


BAD_UNICODE = "Strings must be valid Unicode (a lone surrogate such as \\ud800 is not)."
NUL_CHARACTER = "Strings must not contain NUL (\\u0000) characters."


def _is_unencodable(text: str) -> bool:
    """True when ``text`` holds a lone UTF-16 surrogate (``"\\ud800"`` in JSON): it is no
    character, cannot be encoded as UTF-8 (database, renderer, socket), and is never sent by a
    real client."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def json_text_problem(obj: Any) -> str | None:
    """Why a parsed JSON value cannot be accepted, or None: a lone surrogate in any string or
    key. Iterative (no recursion on deep input); one C-level encode per string."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _is_unencodable(item):
                return BAD_UNICODE
        elif isinstance(item, dict):
            for key, value in item.items():
                if isinstance(key, str) and _is_unencodable(key):
                    return BAD_UNICODE
                stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)
    return None


def text_problem(text: str) -> str | None:
    """Why a string the server stores cannot be accepted: a NUL character (PostgreSQL stores
    none, in text or jsonb) or a lone surrogate."""
    if "\x00" in text:
        return NUL_CHARACTER
    if _is_unencodable(text):
        return BAD_UNICODE
    return None


def allowed_media_type(media_type: str) -> bool:
    return media_type in IMAGE_TYPES or media_type in DOCUMENT_TYPES or media_type.startswith("text/")


def _id(value: Any, name: str, request_id: str | None) -> str:
    if not isinstance(value, str) or not value or len(value) > MAX_ID_CHARS:
        raise ProtocolError(
            f"Field '{name}' must be a non-empty string of at most {MAX_ID_CHARS} characters.",
            request_id=request_id,
        )
    problem = text_problem(value)
    if problem is not None:
        raise ProtocolError(f"Field '{name}': {problem}", request_id=request_id)
    return value


def attachment_from_file_part(part: dict[str, Any]) -> tuple[Attachment, dict[str, Any]]:
    """An AI SDK ``file`` part with a base64 data URL -> Attachment (raises ProtocolError)."""
    url = part.get("url")
    if not isinstance(url, str):
        raise ProtocolError("A file part needs a data: URL.")
    match = _DATA_URL.match(url)
    if match is None:
        raise ProtocolError("Files must be sent as base64 data: URLs.")
    media_type = str(part.get("mediaType") or match.group(1)).lower()
    if not allowed_media_type(media_type):
        raise ProtocolError(f"Files of type {media_type} are not accepted.")
    payload = match.group(2)
    if len(payload) > (MAX_ATTACHMENT_BYTES * 4) // 3 + 8:
        raise ProtocolError("A file is larger than 5 MiB.")
    try:
        data = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("A file's data: URL is not valid base64.") from None
    if len(data) > MAX_ATTACHMENT_BYTES:
        raise ProtocolError("A file is larger than 5 MiB.")
    name = str(part.get("filename") or "attachment")[:200]
    for value in (name, media_type):
        problem = text_problem(value)
        if problem is not None:
            raise ProtocolError(problem)
    clean = {"type": "file", "mediaType": media_type, "filename": name, "url": url}
    return Attachment(name=name, media_type=media_type, data=data), clean


def user_message_parse(message: Any, *, request_id: str | None = None) -> UserMessage:
    """A UIMessage (``{id, role: "user", parts: [...]}``) -> text + attachments."""
    if not isinstance(message, dict) or message.get("role") != "user":
        raise ProtocolError("The newest message must be a user message.", request_id=request_id)
    parts = message.get("parts")
    if not isinstance(parts, list):
        raise ProtocolError("The user message needs a 'parts' list.", request_id=request_id)
    texts: list[str] = []
    attachments: list[Attachment] = []
    file_parts: list[dict[str, Any]] = []
    for part in parts:
        if not isinstance(part, dict):
            raise ProtocolError("Message parts must be objects.", request_id=request_id)
        kind = part.get("type")
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise ProtocolError("A text part needs a string 'text'.", request_id=request_id)
            problem = text_problem(part["text"])
            if problem is not None:
                raise ProtocolError(problem, request_id=request_id)
            texts.append(part["text"])
        elif kind == "file":
            if len(attachments) >= MAX_ATTACHMENTS:
                raise ProtocolError(f"At most {MAX_ATTACHMENTS} files per message.", request_id=request_id)
            try:
                attachment, clean = attachment_from_file_part(part)
            except ProtocolError as exc:
                raise ProtocolError(exc.message, request_id=request_id) from None
            attachments.append(attachment)
            file_parts.append(clean)
        # other part types (step-start, data-*, …) carry nothing for the model: ignored
    text = "\n\n".join(t for t in texts if t)
    if len(text) > MAX_TEXT_CHARS:
        raise ProtocolError(f"The message is longer than {MAX_TEXT_CHARS} characters.", request_id=request_id)
    if not text.strip() and not attachments:
        raise ProtocolError("The message is empty.", request_id=request_id)
    client_id = message.get("id")
    if isinstance(client_id, str) and text_problem(client_id) is not None:
        raise ProtocolError(f"The message id: {text_problem(client_id)}", request_id=request_id)
    return UserMessage(
        text=text,
        attachments=attachments,
        file_parts=file_parts,
        client_message_id=client_id if isinstance(client_id, str) and client_id else None,
    )


MAX_REASON_CHARS = 2_000


def approval_replies_parse(messages: Any, *, request_id: str | None = None) -> tuple[ApprovalReply, ...]:
    """The approval answers of a request, the way a stock AI SDK ``Chat`` sends them: its last
    message is the assistant message whose tool parts have ``state: "approval-responded"`` and
    ``approval: {id, approved, reason?}``. Empty when the request carries none (a new message)."""
    last = messages[-1] if isinstance(messages, list) and messages else None
    if (
        not isinstance(last, dict)
        or last.get("role") != "assistant"
        or not isinstance(last.get("parts"), list)
    ):
        return ()
    replies: list[ApprovalReply] = []
    for part in last["parts"]:
        if not isinstance(part, dict) or part.get("state") != "approval-responded":
            continue
        approval = part.get("approval")
        if not isinstance(approval, dict):
            raise ProtocolError(
                "An approval-responded tool part needs an 'approval' object.", request_id=request_id
            )
        approval_id = _id(approval.get("id"), "approval.id", request_id)
        approved = approval.get("approved")
        if not isinstance(approved, bool):
            raise ProtocolError("Field 'approval.approved' must be true or false.", request_id=request_id)
        reason = approval.get("reason")
        if reason is None:
            reason = ""
        if not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS or text_problem(reason) is not None:
            raise ProtocolError(
                f"Field 'approval.reason' must be a string of at most {MAX_REASON_CHARS} characters.",
                request_id=request_id,
            )
        replies.append(ApprovalReply(approval_id=approval_id, approved=approved, reason=reason.strip()))
    return tuple(replies)


def body_model_parse(body: Any, *, request_id: str | None = None) -> str | None:
    """The model an AI SDK request asks for (``body.model``, CONTRACT §6), checked against the
    allow-list (AGENT_MODELS): ProtocolError ``invalid_request`` for any other; None when the
    request names none (no body, no ``model``, or an empty one)."""
    model = body.get("model") if isinstance(body, dict) else None
    if model is None or model == "":
        return None
    problem = model_problem(model)
    if problem is not None:
        raise ProtocolError(problem, request_id=request_id)
    return model


def _size_text(n: int) -> str:
    return f"{n / (1024 * 1024):g} MiB" if n >= 1024 * 1024 else f"{n} bytes"


def frame_size(raw: str | bytes) -> int:
    """The frame's size in bytes (UTF-8 for text; encoded only when it could matter)."""
    if isinstance(raw, (bytes, bytearray)) or len(raw) * 4 <= MAX_FRAME_BYTES or len(raw) > MAX_FRAME_BYTES:
        return len(raw)
    return len(raw.encode("utf-8", "surrogatepass"))


def frame_parse(raw: str | bytes | None) -> Frame:
    """Parse and validate one client frame (raises ProtocolError, with request_id when known)."""
    if raw is None:
        raise ProtocolError("Empty frame.")
    if frame_size(raw) > MAX_FRAME_BYTES:
        raise ProtocolError(
            f"Frame too large: at most {_size_text(MAX_FRAME_BYTES)} per frame.", code="frame_too_large"
        )
    try:
        obj = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ProtocolError("Frame is not valid JSON.") from None
    except RecursionError:  # absurdly deep nesting
        raise ProtocolError("Frame is nested too deeply.") from None
    if not isinstance(obj, dict):
        raise ProtocolError("Frame must be a JSON object.")
    request_id = obj.get("requestId")
    request_id = (
        request_id
        if isinstance(request_id, str)
        and 0 < len(request_id) <= MAX_ID_CHARS
        and text_problem(request_id) is None
        else None
    )  # a requestId that cannot be echoed back (NUL, lone surrogate) is no requestId
    kind = obj.get("type")
    if request_id is None:
        raise ProtocolError("Field 'requestId' must be a non-empty string of valid Unicode without NUL.")
    if kind == "abort":
        return AbortFrame(request_id=request_id)  # reads nothing but its requestId
    problem = json_text_problem(obj)  # a lone surrogate anywhere in a send/resume
    if problem is not None:
        raise ProtocolError(problem, request_id=request_id)
    if kind == "resume":
        chat_id = _id(obj.get("id"), "id", request_id)
        last = obj.get("lastSequence")
        if last is not None and (isinstance(last, bool) or not isinstance(last, int) or last < -1):
            raise ProtocolError("Field 'lastSequence' must be an integer ≥ -1.", request_id=request_id)
        return ResumeFrame(request_id=request_id, chat_id=chat_id, last_sequence=last)
    if kind == "send":
        chat_id = _id(obj.get("id"), "id", request_id)
        trigger = obj.get("trigger") or "submit-message"
        if not isinstance(trigger, str) or trigger not in TRIGGERS:
            raise ProtocolError(f"Unknown trigger {str(trigger)[:40]!r}.", request_id=request_id)
        message_id = obj.get("messageId")
        message_id = message_id if isinstance(message_id, str) and message_id else None
        if message_id is not None:  # it names a stored message (an edit, a regenerate): checked
            message_id = _id(message_id, "messageId", request_id)
        messages = obj.get("messages")
        if not isinstance(messages, list):
            raise ProtocolError("Field 'messages' must be a list.", request_id=request_id)
        newest = next(
            (m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), None
        )
        approvals = (
            approval_replies_parse(messages, request_id=request_id) if trigger == "submit-message" else ()
        )
        if trigger == "regenerate-message" or approvals:
            message = None
        else:
            if newest is None:
                raise ProtocolError("The request has no user message.", request_id=request_id)
            message = user_message_parse(newest, request_id=request_id)
        return SendFrame(
            request_id=request_id,
            chat_id=chat_id,
            trigger=trigger,
            message_id=message_id,
            message=message,
            approvals=approvals,
            model=body_model_parse(obj.get("body"), request_id=request_id),
        )
    raise ProtocolError(f"Unknown frame type {str(kind)[:40]!r}.", request_id=request_id)
