"""Conversations leaving and entering the server: export (Markdown, AI SDK ``UIMessage[]``),
import, and read-only shares (docs/api.md "Export, import and share").

- Export: the session's normal user/assistant/system messages in sequence order. Markers
  (error, stopped, …) are no AI SDK messages: the JSON leaves them out; the Markdown notes them.
- Import: the JSON an export gives (a ``UIMessage[]`` list, or ``{"title", "messages"}``),
  validated (``conversation_import_parse``), becomes a new chat of the caller.
- Shares: a ``Share`` row holds a snapshot of the chat's messages at the time it was shared
  (tool outputs removed unless the owner chose to include them) and a random nonce; the public
  token is ``django.core.signing`` over (share id, nonce). Deleting or revoking the row, or its
  expiry, makes the token worthless.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import uuid
from dataclasses import dataclass
from typing import Any

from django.core import signing
from django.db import connection, transaction
from django.utils import timezone

from chat.models import ChatMessage, ChatSession, Share
from chat.protocol import MAX_ID_CHARS, text_problem
from chat.selectors import message_active_path_queryset
from chat.services import session_active_leaf_set, session_create

IMPORT_MAX_BYTES = 10 * 1024 * 1024
IMPORT_MAX_MESSAGES = 1000
IMPORT_MAX_PARTS = 200  # per message
IMPORT_TITLE_CHARS = 200
IMPORT_DEFAULT_TITLE = "Imported chat"
EXPORT_ROLES = (ChatMessage.Role.USER, ChatMessage.Role.ASSISTANT, ChatMessage.Role.SYSTEM)
IMPORT_ROLES = frozenset({"user", "assistant", "system"})
# AI SDK UI part types (``tool-<name>`` and ``data-<name>`` by prefix).
PART_TYPES = frozenset(
    {"text", "reasoning", "file", "step-start", "source-url", "source-document", "dynamic-tool"}
)
PART_PREFIXES = ("tool-", "data-")
SHARE_SALT = "chat.share"
SHARE_MAX_DAYS = 365
TOOL_OUTPUT_KEYS = ("output", "errorText", "result")
MARKDOWN_OUTPUT_CHARS = 4000  # a tool output in a Markdown export is cut after this many characters


class ConversationInvalid(Exception):
    """An import that cannot be accepted; ``message`` says why."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- export ------------------------------------------------------------------------------------


def session_export_messages(*, session: ChatSession) -> list[dict[str, Any]]:
    """The chat as AI SDK ``UIMessage[]``: ``{id, role, parts, metadata}`` (metadata:
    ``sequence``, ``createdAt``): its active path (the branch it shows, docs/api.md "Branches").
    Markers are left out."""
    rows = message_active_path_queryset(session=session).filter(
        kind=ChatMessage.Kind.NORMAL, role__in=EXPORT_ROLES
    )
    out: list[dict[str, Any]] = []
    for message in rows:
        parts = [p for p in (message.parts or []) if isinstance(p, dict)]
        if not parts and message.text:
            parts = [{"type": "text", "text": message.text}]
        out.append(
            {
                "id": message.ui_id,  # user: the client's id; reply: its stream's ``msg-<turn id>``
                "role": message.role,
                "parts": parts,
                "metadata": {"sequence": message.sequence, "createdAt": message.created_at.isoformat()},
            }
        )
    return out


def _fence(text: str, lang: str = "") -> str:
    """``text`` in a code fence longer than any backtick run inside it."""
    longest, run = 0, 0
    for ch in text:
        run = run + 1 if ch == "`" else 0
        longest = max(longest, run)
    ticks = "`" * max(3, longest + 1)
    return f"{ticks}{lang}\n{text}\n{ticks}"


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, indent=2, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)


def _part_markdown(part: dict[str, Any]) -> str:
    kind = str(part.get("type", ""))
    if kind == "text":
        return str(part.get("text", ""))
    if kind == "reasoning":
        text = str(part.get("text", "")).strip()
        return "> *Reasoning:*\n" + "\n".join(f"> {line}" for line in text.splitlines()) if text else ""
    if kind == "file":
        return f"*Attachment: {part.get('filename') or part.get('mediaType') or 'file'}*"
    if kind.startswith("tool-") or kind == "dynamic-tool":
        name = part.get("toolName") if kind == "dynamic-tool" else kind[len("tool-") :]
        lines = [f"**Tool call: `{name}`**"]
        if "input" in part:
            lines += ["", "Input:", "", _fence(_as_text(part.get("input")), "json")]
        for key in TOOL_OUTPUT_KEYS:
            if part.get(key) is not None:
                output = _as_text(part.get(key))
                if len(output) > MARKDOWN_OUTPUT_CHARS:
                    output = output[:MARKDOWN_OUTPUT_CHARS] + "\n… (cut)"
                label = "Error" if key == "errorText" else "Output"
                lines += ["", f"{label}:", "", _fence(output)]
                break
        return "\n".join(lines)
    return ""


def session_export_markdown(*, session: ChatSession) -> str:
    """A readable transcript of the active path: the title, then each message under its role;
    tool calls with their input and output in fenced blocks; markers as notes."""
    lines = [f"# {session.title or 'Untitled chat'}", ""]
    rows = message_active_path_queryset(session=session)
    for message in rows:
        if message.kind != ChatMessage.Kind.NORMAL:
            note = (message.text or message.kind).strip().replace("\n", " ")
            lines += [f"> *{message.kind}: {note}*", ""]
            continue
        lines += [f"## {message.role.capitalize()}", ""]
        parts = [p for p in (message.parts or []) if isinstance(p, dict)]
        blocks = [b for b in (_part_markdown(p) for p in parts) if b.strip()]
        if not blocks and message.text:
            blocks = [message.text]
        for block in blocks:
            lines += [block, ""]
    return "\n".join(lines).rstrip() + "\n"


# --- import ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportedMessage:
    id: str
    role: str
    parts: list[dict[str, Any]]
    metadata: dict[str, Any]
    text: str


@dataclass(frozen=True)
class ImportedConversation:
    title: str
    messages: list[ImportedMessage]


def _strings_problem(obj: Any) -> str | None:
    """The first string (or key) the server cannot store (NUL, lone surrogate); iterative."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            problem = text_problem(item)
            if problem:
                return problem
        elif isinstance(item, dict):
            for key, value in item.items():
                problem = text_problem(key) if isinstance(key, str) else None
                if problem:
                    return problem
                stack.append(value)
        elif isinstance(item, list):
            stack.extend(item)
    return None


def _part_known(part: Any) -> bool:
    if not isinstance(part, dict):
        return False
    kind = part.get("type")
    if not isinstance(kind, str):
        return False
    if kind in ("text", "reasoning") and not isinstance(part.get("text"), str):
        return False
    return kind in PART_TYPES or (kind.startswith(PART_PREFIXES) and len(kind) > 5)


def conversation_import_parse(data: Any) -> ImportedConversation:
    """An export's JSON (``UIMessage[]``, or ``{"title"?, "messages"}``) checked; raises
    ConversationInvalid."""
    title = ""
    if isinstance(data, dict):
        title = data.get("title", "")
        if not isinstance(title, str) or len(title) > IMPORT_TITLE_CHARS:
            raise ConversationInvalid(f"title must be a string of at most {IMPORT_TITLE_CHARS} characters.")
        data = data.get("messages")
    if not isinstance(data, list):
        raise ConversationInvalid("Expected a list of AI SDK UI messages (or {title, messages}).")
    if not data:
        raise ConversationInvalid("The conversation has no messages.")
    if len(data) > IMPORT_MAX_MESSAGES:
        raise ConversationInvalid(f"At most {IMPORT_MAX_MESSAGES} messages can be imported.")
    problem = _strings_problem(data) or (text_problem(title) if title else None)
    if problem:
        raise ConversationInvalid(problem)
    messages: list[ImportedMessage] = []
    for index, item in enumerate(data):
        where = f"messages[{index}]"
        if not isinstance(item, dict):
            raise ConversationInvalid(f"{where} must be an object.")
        role = item.get("role")
        if not isinstance(role, str) or role not in IMPORT_ROLES:
            raise ConversationInvalid(f"{where}.role must be user, assistant or system.")
        message_id = item.get("id", "")
        if not isinstance(message_id, str) or len(message_id) > MAX_ID_CHARS:
            raise ConversationInvalid(f"{where}.id must be a string of at most {MAX_ID_CHARS} characters.")
        parts = item.get("parts")
        if not isinstance(parts, list) or len(parts) > IMPORT_MAX_PARTS:
            raise ConversationInvalid(f"{where}.parts must be a list of at most {IMPORT_MAX_PARTS} parts.")
        for n, part in enumerate(parts):
            if not _part_known(part):
                raise ConversationInvalid(f"{where}.parts[{n}] is not an AI SDK UI part of a known type.")
        metadata = item.get("metadata", {})
        if not isinstance(metadata, dict):
            raise ConversationInvalid(f"{where}.metadata must be an object.")
        text = "\n\n".join(p["text"] for p in parts if p.get("type") == "text")
        messages.append(
            ImportedMessage(
                id=message_id or "", role=role, parts=parts, metadata=dict(metadata or {}), text=text
            )
        )
    if not title:
        first = next((m.text for m in messages if m.role == "user" and m.text.strip()), "")
        title = " ".join(first.split())[:80] or IMPORT_DEFAULT_TITLE
    return ImportedConversation(title=title, messages=messages)


def session_import(*, user: Any, conversation: ImportedConversation) -> ChatSession:
    """A new chat of ``user`` holding the conversation (sequences 0..n-1), one linear branch:
    each message follows the one before, the last is the chat's leaf. A user message's id
    becomes its client message id (unique per chat: a repeated id is dropped)."""
    seen: set[str] = set()
    with transaction.atomic():
        session = session_create(owner=user, title=conversation.title)
        rows: list[ChatMessage] = []
        for sequence, message in enumerate(conversation.messages):
            client_id = (
                message.id if message.role == "user" and message.id and message.id not in seen else None
            )
            if client_id:
                seen.add(client_id)
            metadata = {k: v for k, v in message.metadata.items() if k not in ("sequence", "createdAt")}
            if client_id:
                metadata["messageId"] = client_id
            rows.append(
                ChatMessage(
                    session=session,
                    sequence=sequence,
                    role=message.role,
                    text=message.text,
                    parts=message.parts,
                    metadata=metadata,
                    client_message_id=client_id,
                )
            )
        ChatMessage.objects.bulk_create(rows)
        if connection.features.can_return_rows_from_bulk_insert:
            created = rows
        else:  # no pks from the bulk INSERT: read them back (a new chat: sequence order)
            created = list(ChatMessage.objects.filter(session=session).order_by("sequence"))
        for previous, message in zip(created, created[1:], strict=False):
            message.parent_id = previous.pk
        ChatMessage.objects.bulk_update(created[1:], ["parent"], batch_size=500)
        if created:
            session_active_leaf_set(session=session, leaf_id=created[-1].pk)
    return session


# --- shares ------------------------------------------------------------------------------------


def _share_parts(parts: list[dict[str, Any]], *, include_tool_outputs: bool) -> list[dict[str, Any]]:
    out = []
    for part in parts:
        kind = str(part.get("type", ""))
        if kind == "file":
            # Attachments (data: URLs) stay private: the page names them only.
            out.append({"type": "file", "filename": part.get("filename"), "mediaType": part.get("mediaType")})
        elif kind.startswith("tool-") or kind == "dynamic-tool":
            tool = {k: v for k, v in part.items() if k not in TOOL_OUTPUT_KEYS or include_tool_outputs}
            out.append(tool)
        elif kind in ("text", "reasoning"):
            out.append(part)
    return out


def share_snapshot(*, session: ChatSession, include_tool_outputs: bool) -> list[dict[str, Any]]:
    """The chat's user and assistant messages now, as a share stores them."""
    snapshot = []
    for message in session_export_messages(session=session):
        if message["role"] not in ("user", "assistant"):
            continue
        parts = _share_parts(message["parts"], include_tool_outputs=include_tool_outputs)
        if parts:
            snapshot.append({"role": message["role"], "parts": parts})
    return snapshot


def share_token(*, share: Share) -> str:
    return signing.dumps([str(share.id), share.nonce], salt=SHARE_SALT)


def share_create(*, session: ChatSession, include_tool_outputs: bool, expires_in_days: int | None) -> Share:
    expires_at = None
    if expires_in_days:
        expires_at = timezone.now() + dt.timedelta(days=expires_in_days)
    return Share.objects.create(
        session=session,
        nonce=secrets.token_urlsafe(24),
        title=session.title,
        messages=share_snapshot(session=session, include_tool_outputs=include_tool_outputs),
        include_tool_outputs=include_tool_outputs,
        expires_at=expires_at,
    )


def share_list_for_session(*, session: ChatSession) -> list[Share]:
    return list(Share.objects.filter(session=session, revoked_at__isnull=True).order_by("-created_at"))


def _uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value))
    except (ValueError, TypeError, AttributeError):
        return None


def share_get_for_session(*, session: ChatSession, share_id: str) -> Share | None:
    pk = _uuid(share_id)
    if pk is None:
        return None
    return Share.objects.filter(session=session, pk=pk, revoked_at__isnull=True).first()


def share_revoke(*, share: Share) -> None:
    Share.objects.filter(pk=share.pk).update(revoked_at=timezone.now())


def share_find_by_token(*, token: str) -> Share | None:
    """The live share a token names: signature valid, nonce matching, not revoked, not expired.
    Anything else: None."""
    try:
        share_id, nonce = signing.loads(token, salt=SHARE_SALT)
    except (signing.BadSignature, ValueError, TypeError, UnicodeError):
        return None
    pk = _uuid(share_id)
    if pk is None or not isinstance(nonce, str):
        return None
    share = Share.objects.filter(pk=pk, revoked_at__isnull=True).first()
    if share is None or not secrets.compare_digest(share.nonce, nonce):
        return None
    if share.expires_at is not None and share.expires_at <= timezone.now():
        return None
    return share


def share_page_messages(*, share: Share) -> list[dict[str, Any]]:
    """The snapshot as the share page shows it: per message its role and blocks (``text``,
    ``reasoning``, ``tool`` with name, input and output, ``file`` with its name); all strings,
    escaped by the template."""
    out = []
    for message in share.messages or []:
        if not isinstance(message, dict):
            continue
        blocks = []
        for part in message.get("parts") or []:
            if not isinstance(part, dict):
                continue
            kind = str(part.get("type", ""))
            if kind in ("text", "reasoning") and str(part.get("text", "")).strip():
                blocks.append({"kind": kind, "text": str(part.get("text"))})
            elif kind == "file":
                blocks.append(
                    {"kind": "file", "text": str(part.get("filename") or part.get("mediaType") or "file")}
                )
            elif kind.startswith("tool-") or kind == "dynamic-tool":
                name = part.get("toolName") if kind == "dynamic-tool" else kind[len("tool-") :]
                output = next((part.get(k) for k in TOOL_OUTPUT_KEYS if part.get(k) is not None), None)
                blocks.append(
                    {
                        "kind": "tool",
                        "name": str(name or "tool"),
                        "input": _as_text(part.get("input")) if part.get("input") is not None else "",
                        "output": None
                        if output is None or not share.include_tool_outputs
                        else _as_text(output),
                    }
                )
        if blocks:
            out.append({"role": str(message.get("role", "")), "blocks": blocks})
    return out
