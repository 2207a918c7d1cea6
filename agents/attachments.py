"""User attachments: images go to the model as image blocks, other allowed files are saved into the
workspace's ``uploads/`` directory and named in the prompt so the agent can read them.

Limits: MAX_ATTACHMENTS files per message, MAX_ATTACHMENT_BYTES each. Anything else is refused
with ``AgentError(INVALID_REQUEST)`` and a message that says what was wrong.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path
from typing import Any

from agents.errors import AgentError, ErrorKind
from agents.sandbox import resolve_in_workspace
from agents.turn import Attachment

MAX_ATTACHMENTS = 4
MAX_ATTACHMENT_BYTES = 5 * 1024 * 1024
IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
FILE_TYPES = frozenset({"application/json", "application/pdf", "text/csv"})  # plus any text/*
UPLOAD_DIR = "uploads"


def _normal_type(media_type: str) -> str:
    media_type = (media_type or "").split(";", 1)[0].strip().lower()
    return "image/jpeg" if media_type == "image/jpg" else media_type


def is_allowed_type(media_type: str) -> bool:
    media_type = _normal_type(media_type)
    return media_type in IMAGE_TYPES or media_type in FILE_TYPES or media_type.startswith("text/")


def _image_matches(media_type: str, data: bytes) -> bool:
    if media_type == "image/png":
        return data.startswith(b"\x89PNG\r\n\x1a\n")
    if media_type == "image/jpeg":
        return data.startswith(b"\xff\xd8\xff")
    if media_type == "image/gif":
        return data.startswith((b"GIF87a", b"GIF89a"))
    if media_type == "image/webp":
        return data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    return False


def safe_filename(name: str) -> str:
    base = Path(str(name or "")).name
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "file"
    return base[:100]


def validate_attachments(attachments: list[Attachment]) -> None:
    if len(attachments) > MAX_ATTACHMENTS:
        raise AgentError(
            ErrorKind.INVALID_REQUEST,
            detail=f"{len(attachments)} attachments",
            message=f"At most {MAX_ATTACHMENTS} files can be attached to one message.",
        )
    for att in attachments:
        media_type = _normal_type(att.media_type)
        label = att.name or "attachment"
        if not is_allowed_type(media_type):
            raise AgentError(
                ErrorKind.INVALID_REQUEST,
                detail=f"type {media_type!r}",
                message=f"{label}: files of type {media_type or 'unknown'} cannot be attached. "
                "Allowed: PNG, JPEG, GIF and WebP images, text, CSV, JSON and PDF files.",
            )
        if len(att.data) > MAX_ATTACHMENT_BYTES:
            raise AgentError(
                ErrorKind.INVALID_REQUEST,
                detail=f"{len(att.data)} bytes",
                message=f"{label} is too large ({len(att.data) / 1048576:.1f} MiB); "
                f"the limit is {MAX_ATTACHMENT_BYTES // 1048576} MiB per file.",
            )
        if not att.data:
            raise AgentError(
                ErrorKind.INVALID_REQUEST, detail="empty attachment", message=f"{label} is empty."
            )
        if media_type in IMAGE_TYPES and not _image_matches(media_type, att.data):
            raise AgentError(
                ErrorKind.INVALID_REQUEST,
                detail=f"content does not match {media_type}",
                message=f"{label} is not a valid {media_type.split('/')[1].upper()} image.",
            )


def _unique_path(directory: Path, name: str) -> Path:
    candidate = directory / name
    stem, suffix = candidate.stem, candidate.suffix
    n = 1
    while candidate.exists():
        candidate = directory / f"{stem}-{n}{suffix}"
        n += 1
    return candidate


def prepare_attachments(workspace: Path, attachments: list[Attachment]) -> tuple[list[dict[str, Any]], str]:
    """(image content blocks for the Messages API, a note naming the files saved into
    ``<workspace>/uploads/``). Raises ``AgentError(INVALID_REQUEST)`` for a bad attachment."""
    validate_attachments(attachments)
    blocks: list[dict[str, Any]] = []
    saved: list[str] = []
    upload_dir: Path | None = None
    for att in attachments:
        media_type = _normal_type(att.media_type)
        if media_type in IMAGE_TYPES:
            blocks.append(
                {
                    "type": "image",
                    "source": {
                        "type": "base64",
                        "media_type": media_type,
                        "data": base64.b64encode(att.data).decode("ascii"),
                    },
                }
            )
            continue
        if upload_dir is None:
            upload_dir = resolve_in_workspace(workspace, UPLOAD_DIR)
            upload_dir.mkdir(parents=True, exist_ok=True)
        target = _unique_path(upload_dir, safe_filename(att.name))
        resolve_in_workspace(workspace, str(target))  # never write through a planted symlink
        target.write_bytes(att.data)
        saved.append(f"{UPLOAD_DIR}/{target.name} ({media_type}, {len(att.data)} bytes)")
    note = ""
    if saved:
        note = (
            "The user attached these files; they are saved in the working directory: "
            + "; ".join(saved)
            + "."
        )
    return blocks, note
